"""The learned token scorer: one importance logit per DINO patch token.

``LayerNorm -> Linear(C, hidden) -> GELU -> depthwise k x k conv on the patch grid (residual) ->
GELU -> Linear(hidden, 1)``. The depthwise convolution gives each token a little spatial context
(its neighbours' features) at almost no cost.

Cost per patch token: ``C * hidden + hidden * k^2 + hidden`` multiply-adds. With the defaults on
VGGT-1B (``C = 1024``, ``hidden = 128``, ``k = 3``) that is 0.26 MFLOPs per token, against
2.7 GFLOPs per token for the whole VGGT-1B forward at 518 x 518 px on one frame (3.6 GFLOPs at 8
frames, 6.9 at 32): under 0.01 % of the backbone (:func:`pacegeo.pruning.flops.scorer_flops`).
"""

from dataclasses import dataclass, replace

import torch
from einops import rearrange
from torch import nn


@dataclass(frozen=True)
class ScorerConfig:
    """Architecture of :class:`TokenScorer`."""

    in_dim: int  # width C of the DINO patch features
    hidden: int = 128  # width of the scoring MLP
    kernel_size: int = 3  # depthwise spatial context on the patch grid (odd; 1 disables context)
    norm_eps: float = 1e-6

    @classmethod
    def for_backbone(cls, backbone: nn.Module, **overrides) -> "ScorerConfig":
        """The config matching a :class:`pacegeo.backbone.VGGT`'s patch-token width."""
        return replace(cls(in_dim=backbone.config.aggregator.embed_dim), **overrides)


class TokenScorer(nn.Module):
    """Importance logits of DINO patch tokens: ``[B, S, N, C] -> [B, S, N]`` (higher = keep)."""

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        if config.kernel_size < 1 or config.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {config.kernel_size}")
        self.config = config
        c = config
        self.norm = nn.LayerNorm(c.in_dim, eps=c.norm_eps)
        self.fc1 = nn.Linear(c.in_dim, c.hidden)
        self.act = nn.GELU()
        self.context = nn.Conv2d(c.hidden, c.hidden, c.kernel_size, padding=c.kernel_size // 2, groups=c.hidden)
        self.fc2 = nn.Linear(c.hidden, 1)

    def forward(self, feats: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """feats: ``[B, S, N, C]`` patch features of an ``h x w = N`` grid (row-major) -> ``[B, S, N]``."""
        b, s, n, _ = feats.shape
        h, w = grid_hw
        if h * w != n:
            raise ValueError(f"grid {h}x{w} does not hold {n} tokens")
        x = self.act(self.fc1(self.norm(feats)))
        grid = rearrange(x, "b s (h w) d -> (b s) d h w", h=h, w=w)
        x = x + rearrange(self.context(grid), "(b s) d h w -> b s (h w) d", b=b, s=s)
        return self.fc2(self.act(x)).squeeze(-1)

    def flops_per_token(self) -> int:
        """Matmul/conv FLOPs per patch token (2 per multiply-add)."""
        c = self.config
        return 2 * (c.in_dim * c.hidden + c.hidden * c.kernel_size**2 + c.hidden)
