"""Importance scores without trained weights, and the selection baselines.

* :func:`distinctiveness_scores`: how much a patch differs from the rest of its frame (one minus
  its mean cosine similarity to the frame's other DINO patch features), standardised per frame,
  plus a mild spatial-coverage prior. Works on any VGGT checkpoint out of the box.
* :func:`grid_scores`: uniform grid subsampling. Positions are ranked by an ordered-dither (Bayer)
  matrix, whose top-``k`` positions are spread evenly over the grid for every ``k``
  (``keep = 1/4`` gives every other row and column, ``1/2`` a checkerboard).
* :func:`random_scores`: uniform random scores from a seeded generator (the only randomness in
  the pruning code; the same seed gives the same selection on every device).

All return importance logits ``[B, S, N]`` (higher = keep) for :func:`pacegeo.pruning.merge.reduce_tokens`.
"""

import torch
import torch.nn.functional as F
from einops import repeat


def dither_rank(height: int, width: int, device=None) -> torch.Tensor:
    """Ordered-dither rank of each cell of a ``height x width`` grid, ``[height * width]`` int64
    in row-major order: a permutation of ``0..N-1`` whose first ``k`` cells cover the grid evenly.

    The Bayer matrix of the next power-of-two size is cropped to the grid and re-ranked.
    """
    bits = max(1, (max(height, width) - 1).bit_length())
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    value = torch.zeros_like(ys)
    for bit in range(bits):  # the coarsest lattice (low coordinate bits) gets the high value bits
        pair = ((((xs ^ ys) >> bit) & 1) << 1) | ((ys >> bit) & 1)
        value = value | (pair << (2 * (bits - 1 - bit)))
    order = torch.sort(value.flatten(), stable=True).indices
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))
    return rank.to(device)


def coverage_prior(height: int, width: int, device=None) -> torch.Tensor:
    """``[N]`` float32 in ``[-1, 1]``: +1 for the first cell of the dither order, -1 for the last."""
    n = height * width
    rank = dither_rank(height, width, device).float()
    return 1.0 - 2.0 * rank / max(n - 1, 1)


def grid_scores(batch: int, frames: int, grid_hw: tuple[int, int], device=None) -> torch.Tensor:
    """Uniform-grid baseline: ``[B, S, N]`` scores, the same evenly spread order in every frame."""
    prior = coverage_prior(*grid_hw, device=device)
    return repeat(prior, "n -> b s n", b=batch, s=frames).contiguous()


def random_scores(batch: int, frames: int, num_tokens: int, seed: int = 0, device=None) -> torch.Tensor:
    """Random baseline: ``[B, S, N]`` uniform scores drawn on the CPU from ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(batch, frames, num_tokens, generator=generator).to(device)


def distinctiveness(feats: torch.Tensor) -> torch.Tensor:
    """``[B, S, N, C] -> [B, S, N]``: one minus the mean cosine similarity of each token to the
    other tokens of its frame (0 for a frame of identical tokens, up to 2)."""
    n = feats.shape[2]
    unit = F.normalize(feats.float(), dim=-1)
    total = unit.sum(dim=2, keepdim=True)  # [B, S, 1, C]
    self_sim = (unit * unit).sum(dim=-1)  # 1, or 0 for a zero vector
    mean_sim = ((unit * total).sum(dim=-1) - self_sim) / max(n - 1, 1)
    return 1.0 - mean_sim


def distinctiveness_scores(
    feats: torch.Tensor, grid_hw: tuple[int, int], coverage: float = 0.5, eps: float = 1e-6
) -> torch.Tensor:
    """Training-free importance logits ``[B, S, N]`` from DINO patch features ``[B, S, N, C]``.

    ``z(distinctiveness) + coverage * prior``: the per-frame standardised distinctiveness (mean 0,
    std 1) plus the ordered-dither prior of :func:`coverage_prior` in ``[-1, 1]``. Salient tokens win
    by their distinctiveness; among similar ones the prior spreads the kept set over the image, so it
    does not cluster on one textured region. ``coverage=0`` gives pure distinctiveness.
    """
    return standardize_with_coverage(distinctiveness(feats), grid_hw, coverage, eps)


def standardize_with_coverage(
    scores: torch.Tensor, grid_hw: tuple[int, int], coverage: float, eps: float = 1e-6
) -> torch.Tensor:
    """``[B, S, N]`` scores standardised per frame (mean 0, std 1) plus ``coverage`` times the
    ordered-dither prior of :func:`coverage_prior`; ``coverage=0`` gives the standardised scores."""
    z = (scores - scores.mean(dim=-1, keepdim=True)) / (scores.std(dim=-1, keepdim=True, unbiased=False) + eps)
    if coverage:
        z = z + coverage * coverage_prior(*grid_hw, device=scores.device)
    return z
