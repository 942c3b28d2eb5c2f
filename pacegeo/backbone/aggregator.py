"""The alternating-attention (AA) aggregator.

Per frame the token sequence is ``[camera, registers (R), patches (h*w)]`` (``P = 1 + R + h*w``).
Frame 0 of every sequence gets its own camera and register tokens; all other frames share a second
set. Blocks alternate between *frame* attention (within each frame, ``[B*S, P, C]``) and *global*
attention (across all frames, ``[B, S*P, C]``). Output entry ``i`` concatenates the state after
frame block ``i`` and after global block ``i``: ``[B, S, P, 2C]``, frame half first.

The stages are exposed separately (:meth:`Aggregator.embed`, :meth:`Aggregator.special_tokens`,
:meth:`Aggregator.patch_positions`, :meth:`Aggregator.run_blocks`) so that token pruning can shorten
the sequence between the patch embedding and the AA stack without touching the weights.
"""

import torch
from einops import rearrange, repeat
from torch import nn

from pacegeo.backbone.config import AggregatorConfig
from pacegeo.backbone.encoder import DinoViT, PatchEmbed
from pacegeo.backbone.layers import Block, RotaryPositionEmbedding2D

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Aggregator(nn.Module):
    def __init__(self, config: AggregatorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        dino = c.resolved_dino()
        self.patch_embed = PatchEmbed(c.patch_size, 3, c.embed_dim) if dino is None else DinoViT(dino)
        self.rope = RotaryPositionEmbedding2D(c.rope_freq) if c.rope_freq > 0 else None

        def make_block() -> Block:
            return Block.from_config(c, qk_norm=c.qk_norm, rope=self.rope)

        self.frame_blocks = nn.ModuleList([make_block() for _ in range(c.depth)])
        self.global_blocks = nn.ModuleList([make_block() for _ in range(c.depth)])
        if c.depth % c.aa_block_size:
            raise ValueError(f"depth {c.depth} is not a multiple of aa_block_size {c.aa_block_size}")
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, c.embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, c.num_register_tokens, c.embed_dim) * 1e-6)
        self.patch_start_idx = c.patch_start_idx
        self.register_buffer("_mean", torch.empty(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.empty(1, 1, 3, 1, 1), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Fill the non-persistent normalisation buffers (needed after ``to_empty``)."""
        if self._mean.is_meta:
            return
        with torch.no_grad():
            self._mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1))
            self._std.copy_(torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1))

    @property
    def depth(self) -> int:
        return self.config.depth

    # -- stages ---------------------------------------------------------------------------------

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens of RGB images in [0, 1]: ``[B, S, 3, H, W] -> [B, S, h*w, C]``.

        ImageNet normalisation happens here, inside the model.
        """
        b = images.shape[0]
        x = (images - self._mean) / self._std
        tokens = self.patch_embed(rearrange(x, "b s c h w -> (b s) c h w"))
        return rearrange(tokens, "(b s) n c -> b s n c", b=b)

    def special_tokens(self, batch: int, frames: int) -> torch.Tensor:
        """Camera and register tokens, ``[B, S, 1 + R, C]``; frame 0 gets the first set."""
        special = torch.cat((self.camera_token, self.register_token), dim=2)  # [1, 2, 1+R, C]
        first = repeat(special[:, 0], "1 n c -> b 1 n c", b=batch)
        rest = repeat(special[:, 1], "1 n c -> b s n c", b=batch, s=frames - 1)
        return torch.cat((first, rest), dim=1)

    def patch_positions(self, height: int, width: int, device=None) -> torch.Tensor:
        """RoPE positions of one frame, ``[P, 2]`` int64 (y, x): special tokens at (0, 0),
        patch ``(y, x)`` of the ``height x width`` patch grid at ``(y + 1, x + 1)``."""
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
        )
        grid = torch.stack((ys.flatten(), xs.flatten()), dim=-1) + 1
        special = torch.zeros(self.patch_start_idx, 2, dtype=grid.dtype, device=device)
        return torch.cat((special, grid), dim=0)

    def run_blocks(
        self,
        tokens: torch.Tensor,
        pos: torch.Tensor | None,
        attn_bias: torch.Tensor | None = None,
        keep_layers: set[int] | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> list[torch.Tensor | None]:
        """Run the AA stack, or the part of it from entry ``start`` to entry ``stop`` (exclusive).

        Args:
            tokens: ``[B, S, P, C]`` input sequence (special tokens first in every frame).
            pos: ``[B, S, P, 2]`` RoPE positions (or None when RoPE is off).
            attn_bias: optional ``[B, S, P]`` additive logit bias per *key* token (proportional
                attention for merged tokens); applied in frame and global attention.
            keep_layers: indices of output entries to keep; others are returned as None to save
                memory. None keeps all.
            start, stop: the first entry to compute and the one after the last (default: all);
                multiples of ``aa_block_size``. ``tokens`` is then the sequence after entry
                ``start - 1`` (the global half of that entry).
        Returns:
            ``depth`` entries, each ``[B, S, P, 2C]`` (frame half first) or None (entries outside
            ``[start, stop)`` are None).
        """
        b, s, p, c = tokens.shape
        k = self.config.aa_block_size
        stop = self.config.depth if stop is None else stop
        if not (0 <= start <= stop <= self.config.depth and start % k == 0 and stop % k == 0):
            raise ValueError(f"entries {start}..{stop} are not a range of whole AA blocks of this aggregator")
        frame_pos = None if pos is None or self.rope is None else rearrange(pos, "b s p two -> (b s) p two")
        global_pos = None if pos is None or self.rope is None else rearrange(pos, "b s p two -> b (s p) two")
        frame_bias = global_bias = None
        if attn_bias is not None:
            frame_bias = rearrange(attn_bias, "b s p -> (b s) 1 1 p")
            global_bias = rearrange(attn_bias, "b s p -> b 1 1 (s p)")
        outputs: list[torch.Tensor | None] = [None] * start
        frame_idx = global_idx = start
        for _ in range(start // k, stop // k):
            frame_states: list[torch.Tensor] = []
            global_states: list[torch.Tensor] = []
            for kind in self.config.aa_order:
                if kind == "frame":
                    x = rearrange(tokens, "b s p c -> (b s) p c")
                    for _ in range(k):
                        x = self.frame_blocks[frame_idx](x, pos=frame_pos, attn_bias=frame_bias)
                        frame_idx += 1
                        frame_states.append(rearrange(x, "(b s) p c -> b s p c", b=b))
                elif kind == "global":
                    x = rearrange(tokens, "b s p c -> b (s p) c")
                    for _ in range(k):
                        x = self.global_blocks[global_idx](x, pos=global_pos, attn_bias=global_bias)
                        global_idx += 1
                        global_states.append(rearrange(x, "b (s p) c -> b s p c", s=s))
                else:
                    raise ValueError(f"unknown attention type {kind!r}")
                tokens = frame_states[-1] if kind == "frame" else global_states[-1]
            for f_state, g_state in zip(frame_states, global_states):
                index = len(outputs)
                keep = keep_layers is None or index in keep_layers
                outputs.append(torch.cat((f_state, g_state), dim=-1) if keep else None)
            del f_state, g_state  # release these states before the next blocks (memory only)
        return outputs + [None] * (self.config.depth - stop)

    # -- full forward ----------------------------------------------------------------------------

    def forward(
        self, images: torch.Tensor, keep_layers: set[int] | None = None
    ) -> tuple[list[torch.Tensor | None], int]:
        """``images [B, S, 3, H, W]`` in [0, 1] -> (list of ``depth`` tensors ``[B, S, P, 2C]``,
        ``patch_start_idx``)."""
        b, s, _, h, w = images.shape
        ps = self.config.patch_size
        patches = self.embed(images)
        tokens = torch.cat((self.special_tokens(b, s).to(patches.dtype), patches), dim=2)
        pos = None
        if self.rope is not None:
            pos = repeat(self.patch_positions(h // ps, w // ps, images.device), "p two -> b s p two", b=b, s=s)
        return self.run_blocks(tokens, pos, keep_layers=keep_layers), self.patch_start_idx
