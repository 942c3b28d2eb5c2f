"""Training-free token merging inside global attention, after FastVGGT (arXiv 2509.02560).

In each global-attention block from ``start_block`` on, the sequence ``[B, S * P, C]`` is split
into destination tokens (every token of frame 0, the special tokens of every frame, one token per
``cell`` x ``cell`` patch cell of the other frames, chosen at random, and a strided ``protect``
share of all tokens) and source tokens (the rest). Each source token is matched to its most similar
destination by cosine similarity of the block's normalised input; the ``ratio`` share of sources
with the best matches is merged: their queries, keys and values are averaged into their
destination's. Attention runs on the shorter sequence, and every merged token takes its
destination's output (unmerging), so the block's output keeps the full sequence.

``ratio = 0`` (or a block before ``start_block``) is the unmodified attention, exactly.

Used as a context around any forward of a backbone (pruned or not)::

    with global_merging(backbone.aggregator, GlobalMergeConfig(ratio=0.9), frames=S):
        out = backbone(images)

The merge is computed per block, from that block's input. With pre-AA pruning the frames hold
their kept tokens in grid order; cells are then runs of ``cell**2`` consecutive kept tokens.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["GlobalMergeConfig", "MergePlan", "global_merging", "merge_config", "plan_merge"]


@dataclass(frozen=True)
class GlobalMergeConfig:
    """Knobs of global-attention merging.

    Attributes:
        ratio: share of the source tokens merged into destinations, in ``[0, 1)``; 0 is off.
        start_block: first global block that merges (0 = all).
        cell: destination cells are ``cell`` x ``cell`` patches (runs of ``cell**2`` kept tokens
            after pruning).
        protect: share of all tokens kept out of merging, at a regular stride.
        seed: seed of the random destination in each cell.
    """

    ratio: float = 0.9
    start_block: int = 0
    cell: int = 2
    protect: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"merge ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 <= self.protect < 1.0:
            raise ValueError(f"protected share must be in [0, 1), got {self.protect}")
        if self.cell < 1 or self.start_block < 0:
            raise ValueError("cell must be >= 1 and start_block >= 0")


def merge_config(ratio: object) -> GlobalMergeConfig | None:
    """The merging of a ``global_merge`` option: None for 0 (off), else a config with that ratio;
    :class:`pacegeo.errors.InputError` for anything but a number in ``[0, 1)``."""
    from pacegeo.errors import InputError, option

    try:
        if isinstance(ratio, bool):
            raise TypeError
        return GlobalMergeConfig(ratio=float(ratio)) if ratio else None
    except (TypeError, ValueError):
        raise InputError(f"{option('global_merge')} must be a number in [0, 1), got {ratio!r}") from None


@dataclass(frozen=True)
class MergePlan:
    """Which tokens a block keeps and where the merged ones go.

    Attributes:
        dst: ``[D]`` indices of the destination tokens (they keep their place in the short sequence).
        src: ``[B, M]`` indices of the merged source tokens.
        into: ``[B, M]`` position in ``dst`` each merged token goes to.
        rest: ``[B, U]`` indices of the source tokens left unmerged.
    """

    dst: torch.Tensor
    src: torch.Tensor
    into: torch.Tensor
    rest: torch.Tensor

    @property
    def kept(self) -> int:
        """Tokens in the shortened sequence."""
        return self.dst.numel() + self.rest.shape[1]


@functools.lru_cache(maxsize=16)
def _destinations(frames: int, per_frame: int, special: int, grid_w: int | None, config: GlobalMergeConfig,
                  device) -> torch.Tensor:
    """``[N]`` bool: destination (or protected) tokens of a ``frames * per_frame`` sequence. The
    same for every block and forward of a shape (seeded), so it is computed once per shape; the
    result is shared and must not be modified."""
    n = frames * per_frame
    is_dst = torch.zeros(frames, per_frame, dtype=torch.bool, device=device)
    is_dst[0] = True
    is_dst[:, :special] = True
    patches = per_frame - special
    generator = torch.Generator().manual_seed(config.seed)
    group = config.cell * config.cell
    if grid_w is not None and patches % grid_w == 0 and config.cell > 1:  # a full grid: 2-D cells
        h, w = patches // grid_w, grid_w
        cy, cx = torch.meshgrid(torch.arange(h) // config.cell, torch.arange(w) // config.cell, indexing="ij")
        cell_id = (cy * ((w + config.cell - 1) // config.cell) + cx).flatten()
    else:  # kept tokens in grid order: runs of `group`
        cell_id = torch.arange(patches) // group
    if frames > 1 and patches:
        cells = int(cell_id.max()) + 1
        ids = cell_id.expand(frames - 1, -1)
        keys = torch.rand(frames - 1, patches, generator=generator)  # one random member per cell
        lowest = torch.full((frames - 1, cells), 2.0).scatter_reduce(1, ids, keys, reduce="amin")
        is_dst[1:, special:] = (keys == lowest.gather(1, ids)).to(device)
    is_dst = is_dst.flatten()
    if config.protect > 0:
        count = int(n * config.protect)
        if count:
            is_dst[torch.arange(0, n, max(1, n // count), device=device)[:count]] = True
    return is_dst


def plan_merge(metric: torch.Tensor, frames: int, special: int, grid_w: int | None, config: GlobalMergeConfig,
               blocked: torch.Tensor | None = None) -> MergePlan:
    """The merge of one block from its normalised input ``metric`` ``[B, N, C]``; ``blocked``
    ``[B, N]`` marks tokens that must not be merged (padding slots)."""
    b, n, _ = metric.shape
    per_frame = n // frames
    is_dst = _destinations(frames, per_frame, special, grid_w, config, str(metric.device))
    dst = torch.nonzero(is_dst).flatten()
    src = torch.nonzero(~is_dst).flatten()
    unit = F.normalize(metric.float(), dim=-1)
    similarity = unit[:, src] @ unit[:, dst].transpose(1, 2)  # [B, sources, destinations]
    if blocked is not None:  # nothing merges into a padding slot
        similarity = similarity.masked_fill(blocked[:, None, dst], float("-inf"))
    score, match = similarity.max(dim=-1)
    merged = int(round(config.ratio * src.numel()))
    if blocked is not None:
        stuck = blocked[:, src]
        score = score.masked_fill(stuck, float("-inf"))
        merged = min(merged, int((~stuck).sum(dim=1).min()))
    order = score.argsort(dim=-1, descending=True)
    chosen, rest = order[:, :merged], order[:, merged:]
    return MergePlan(dst=dst, src=src[chosen], into=torch.gather(match, 1, chosen), rest=src[rest])


def _merge(x: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """``[B, H, N, D]`` -> ``[B, H, kept, D]``: destinations (mean of themselves and their merged
    sources), then the unmerged sources."""
    b, h, _, d = x.shape
    dst = x[:, :, plan.dst]
    index = plan.into[:, None, :, None].expand(b, h, -1, d)
    sources = torch.gather(x, 2, plan.src[:, None, :, None].expand(b, h, -1, d))
    dst = dst.scatter_reduce(2, index, sources, reduce="mean", include_self=True)
    rest = torch.gather(x, 2, plan.rest[:, None, :, None].expand(b, h, -1, d))
    return torch.cat([dst, rest], dim=2)


def _unmerge(y: torch.Tensor, plan: MergePlan, n: int) -> torch.Tensor:
    """``[B, H, kept, D]`` -> ``[B, H, N, D]``: merged sources take their destination's output."""
    b, h, _, d = y.shape
    nd = plan.dst.numel()
    out = y.new_empty(b, h, n, d)
    out[:, :, plan.dst] = y[:, :, :nd]
    out.scatter_(2, plan.rest[:, None, :, None].expand(b, h, -1, d), y[:, :, nd:])
    from_dst = torch.gather(y[:, :, :nd], 2, plan.into[:, None, :, None].expand(b, h, -1, d))
    out.scatter_(2, plan.src[:, None, :, None].expand(b, h, -1, d), from_dst)
    return out


class _MergedAttention(nn.Module):
    """The wrapped block's own attention (same weights) with merged queries, keys and values."""

    def __init__(self, attn: nn.Module, config: GlobalMergeConfig, frames: int, special: int, grid_w: int | None):
        super().__init__()
        self.inner, self.config, self.frames, self.special, self.grid_w = attn, config, frames, special, grid_w

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        a = self.inner
        qkv = rearrange(a.qkv(x), "b n (three h d) -> three b h n d", three=3, h=a.num_heads)
        q, k, v = qkv.unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        if a.rope is not None and pos is not None:
            q, k = a.rope(q, pos), a.rope(k, pos)
        bias = None
        if attn_bias is not None:  # per-key bias [B, 1, 1, N] of pre-AA pruning: it follows the keys
            bias = attn_bias.expand(x.shape[0], 1, 1, x.shape[1])[:, 0, 0].float()
        blocked = None if bias is None else ~torch.isfinite(bias)
        plan = plan_merge(x.detach(), self.frames, self.special, self.grid_w, self.config, blocked)
        q, k, v = (_merge(t, plan) for t in (q, k, v))
        if bias is not None:
            attn_bias = _merge(bias[:, None, :, None], plan)[:, 0, :, 0][:, None, None, :].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        out = _unmerge(out, plan, x.shape[1])
        return a.proj(rearrange(out, "b h n d -> b n (h d)"))


@contextlib.contextmanager
def global_merging(aggregator: nn.Module, config: GlobalMergeConfig | None, frames: int, grid_w: int | None = None):
    """Merge tokens in the global blocks of ``aggregator`` from ``config.start_block`` on while the
    context is open, for sequences of ``frames`` frames; the blocks are restored on exit. ``grid_w``:
    patch columns of a full grid (2-D cells); None treats each frame's tokens as runs of kept tokens."""
    if config is None or config.ratio == 0.0:
        yield
        return
    special = int(getattr(aggregator, "patch_start_idx", 5))
    blocks = list(aggregator.global_blocks)[config.start_block:]
    originals = [block.attn for block in blocks]
    try:
        for block in blocks:
            block.attn = _MergedAttention(block.attn, config, frames, special, grid_w)
        yield
    finally:
        for block, attn in zip(blocks, originals):
            block.attn = attn
