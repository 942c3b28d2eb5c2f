"""Patch embeddings: a plain convolution, or a DINOv2 ViT with register tokens.

Both map normalised images ``[N, 3, H, W]`` (H, W multiples of the patch size) to patch tokens
``[N, h*w, C]`` in row-major order (index ``y * w + x``).
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pacegeo.backbone.config import DinoConfig
from pacegeo.backbone.layers import Block


class PatchEmbed(nn.Module):
    """Non-overlapping convolutional patchify: ``[N, 3, H, W] -> [N, h*w, C]``."""

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1024) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return rearrange(self.proj(x), "n c h w -> n (h w) c")


class BlockChunk(nn.ModuleList):
    """DINOv2's chunked block list (kept only so chunked checkpoints load with their key names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x)
        return x


class DinoViT(nn.Module):
    """DINOv2 vision transformer with register tokens (inference path of ``forward_features``).

    Token order inside: ``[cls, registers, patches]``; registers get no positional embedding.
    The positional embedding, stored for a square grid of ``img_size / patch_size`` cells, is resized
    bicubically to the input's patch grid when the input is not that exact square.
    """

    def __init__(self, config: DinoConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_size = c.patch_size
        self.num_register_tokens = c.num_register_tokens
        self.patch_embed = PatchEmbed(c.patch_size, 3, c.embed_dim)
        grid = c.img_size // c.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, c.embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, c.num_register_tokens, c.embed_dim)) if c.num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, c.embed_dim), requires_grad=False)
        blocks = [Block.from_config(c, norm_eps=c.norm_eps, ffn_layer=c.ffn_layer) for _ in range(c.depth)]
        if c.block_chunks > 0:
            size = c.depth // c.block_chunks
            chunks = [[nn.Identity()] * i + blocks[i : i + size] for i in range(0, c.depth, size)]
            self.blocks = nn.ModuleList([BlockChunk(chunk) for chunk in chunks])
        else:
            self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)

    def interpolate_pos_encoding(self, num_patches: int, height: int, width: int, dtype) -> torch.Tensor:
        """Positional embedding for a ``height x width`` pixel input: ``[1, 1 + h*w, C]``."""
        stored = self.pos_embed.shape[1] - 1
        if num_patches == stored and height == width:
            return self.pos_embed
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        grid = int(math.sqrt(stored))
        h0, w0 = height // self.patch_size, width // self.patch_size
        patch_pos = rearrange(patch_pos, "1 (gh gw) c -> 1 c gh gw", gh=grid, gw=grid)
        if self.config.interpolate_offset:
            off = self.config.interpolate_offset
            kwargs = {"scale_factor": ((h0 + off) / grid, (w0 + off) / grid)}
        else:
            kwargs = {"size": (h0, w0)}
        patch_pos = F.interpolate(patch_pos, mode="bicubic", antialias=self.config.interpolate_antialias, **kwargs)
        if patch_pos.shape[-2:] != (h0, w0):
            raise ValueError(f"positional embedding resized to {tuple(patch_pos.shape[-2:])}, expected {(h0, w0)}")
        patch_pos = rearrange(patch_pos, "1 c h w -> 1 (h w) c")
        return torch.cat((cls_pos, patch_pos), dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, 1 + R + h*w, C]`` (cls, registers, patches) before the blocks."""
        height, width = x.shape[-2:]
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens.shape[1] - 1, height, width, tokens.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((tokens[:, :1], regs, tokens[:, 1:]), dim=1)
        return tokens

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``x_norm_clstoken [N,C]``, ``x_norm_regtokens [N,R,C]``, ``x_norm_patchtokens [N,h*w,C]``
        and ``x_prenorm [N,1+R+h*w,C]``."""
        tokens = self.prepare_tokens(x)
        for block in self.blocks:
            tokens = block(tokens)
        normed = self.norm(tokens)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1 : r + 1],
            "x_norm_patchtokens": normed[:, r + 1 :],
            "x_prenorm": tokens,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised patch tokens ``[N, h*w, C]``."""
        return self.forward_features(x)["x_norm_patchtokens"]
