"""Transformer building blocks shared by the DINO encoder, the aggregator and the camera head.

``Block`` is pre-norm: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``. Attention uses
:func:`torch.nn.functional.scaled_dot_product_attention`, optional LayerNorm on q and k (over the
head dimension) and optional 2D rotary position embedding (:class:`RotaryPositionEmbedding2D`).
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class LayerScale(nn.Module):
    """Per-channel learnable scale ``gamma * x``."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with exact (erf) GELU."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward of the DINOv2 giant variant (``w12`` then ``w3``)."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True):
        super().__init__()
        hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class RotaryPositionEmbedding2D(nn.Module):
    """2D rotary embedding: the first half of each head is rotated by the row (y) position and the
    second half by the column (x) position, rotate-half convention, base ``frequency``.

    Parameter-free. Positions are integers ``[B, N, 2]`` as (y, x).
    """

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.base = frequency

    def _tables(self, dim: int, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        exponents = torch.arange(0, dim, 2, device=device).float() / dim
        inv_freq = 1.0 / (self.base**exponents)
        angles = torch.outer(torch.arange(length, device=device, dtype=inv_freq.dtype), inv_freq).to(dtype)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def _rotate_1d(x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cos = F.embedding(pos, cos)[:, None]  # [B, 1, N, D]
        sin = F.embedding(pos, sin)[:, None]
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x: ``[B, heads, N, head_dim]``; pos: ``[B, N, 2]`` int64 (y, x). Returns x rotated."""
        half = x.shape[-1] // 2
        cos, sin = self._tables(half, int(pos.max()) + 1, x.device, x.dtype)
        y_part, x_part = x.chunk(2, dim=-1)
        y_part = self._rotate_1d(y_part, pos[..., 0], cos, sin)
        x_part = self._rotate_1d(x_part, pos[..., 1], cos, sin)
        return torch.cat((y_part, x_part), dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with optional qk-norm and 2D RoPE.

    ``attn_bias`` (optional, broadcastable to ``[B, heads, N, N]``) is added to the attention
    logits; pruning uses it for proportional attention (``log`` of merged group sizes on the keys).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: ``[B, N, C]`` -> ``[B, N, C]``."""
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block with optional LayerScale, qk-norm and RoPE."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = None,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
        norm_eps: float = 1e-5,
        ffn_layer: str = "mlp",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        # q/k norms always use the PyTorch default eps (1e-5), as the reference does.
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, rope)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * mlp_ratio)
        if ffn_layer == "mlp":
            self.mlp = Mlp(dim, hidden, bias=ffn_bias)
        elif ffn_layer in ("swiglu", "swiglufused"):
            self.mlp = SwiGLUFFN(dim, hidden, bias=ffn_bias)
        else:
            raise ValueError(f"unknown ffn_layer {ffn_layer!r}")
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    @classmethod
    def from_config(cls, config, **kwargs) -> "Block":
        """A block with the width, heads, MLP ratio, biases and LayerScale init of ``config`` (an
        ``AggregatorConfig`` or a ``DinoConfig``); ``kwargs`` set the remaining options."""
        c = config
        return cls(
            c.embed_dim,
            c.num_heads,
            c.mlp_ratio,
            qkv_bias=c.qkv_bias,
            proj_bias=c.proj_bias,
            ffn_bias=c.ffn_bias,
            init_values=c.init_values,
            **kwargs,
        )

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: ``[B, N, C]``; pos: ``[B, N, 2]`` or None; returns ``[B, N, C]``."""
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos, attn_bias=attn_bias))
        return x + self.ls2(self.mlp(self.norm2(x)))
