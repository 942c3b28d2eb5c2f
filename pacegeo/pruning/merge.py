"""Selecting, merging and un-merging patch tokens (pure functions, deterministic).

Per frame, the ``k_s`` highest-scoring patch tokens are kept (ties go to the lower grid index) and
stored in grid order, so that their RoPE positions stay meaningful. Each pruned token finds its most
similar kept token of the same frame (cosine similarity of the features, ties to the lower slot);
the ``merge_budget[b, s]`` pruned tokens with the highest such similarity are merged into it (a
size-weighted mean), the others are dropped. Frames that keep fewer tokens than the widest frame
(reference-frame boost, see :mod:`pacegeo.pruning.budget`) carry padded slots of size 0, so the
proportional-attention bias ``log(size)`` masks them out.

The reduction is recorded in a :class:`TokenReduction`; its ``assignment`` map sends every original
token to the slot holding it (or -1 if dropped), which :func:`unmerge` and :func:`scatter_to_grid`
use to go back to the dense grid.
"""

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TokenReduction:
    """The outcome of :func:`reduce_tokens` for ``B`` sequences of ``S`` frames, ``N`` patch tokens
    per frame, ``K`` slots per frame.

    Attributes:
        kept_idx: ``[B, S, K]`` int64 grid index of each slot's own token, ascending in the valid
            slots; padded slots hold ``N - 1`` (ignore them through ``valid``).
        valid: ``[B, S, K]`` bool, False for padded slots.
        tokens: ``[B, S, K, C]`` slot features: each kept token averaged with the tokens merged into
            it (size-weighted); zeros in padded slots.
        sizes: ``[B, S, K]`` float32 group sizes (1 + merged tokens, weighted by input sizes); 0 in
            padded slots.
        assignment: ``[B, S, N]`` int64 slot of every original token, -1 where it was dropped.
        kept_mask: ``[B, S, N]`` bool, True where the token itself occupies a slot.
    """

    kept_idx: torch.Tensor
    valid: torch.Tensor
    tokens: torch.Tensor
    sizes: torch.Tensor
    assignment: torch.Tensor
    kept_mask: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.assignment.shape[-1]

    @property
    def merged_mask(self) -> torch.Tensor:
        """``[B, S, N]`` bool: pruned tokens merged into a slot."""
        return (self.assignment >= 0) & ~self.kept_mask

    @property
    def dropped_mask(self) -> torch.Tensor:
        """``[B, S, N]`` bool: pruned tokens dropped."""
        return self.assignment < 0

    def attn_bias(self) -> torch.Tensor:
        """``[B, S, K]`` proportional-attention bias ``log(size)`` (``-inf`` on padded slots)."""
        return torch.log(self.sizes)

    def frames(self, start: int, stop: int) -> "TokenReduction":
        """The reduction of frames ``start:stop`` (views, same slot width ``K``)."""
        return TokenReduction(*(getattr(self, f.name)[:, start:stop] for f in fields(self)))

    @staticmethod
    def cat(parts: "list[TokenReduction]") -> "TokenReduction":
        """Concatenate reductions of consecutive frame chunks (same ``B``, ``N`` and ``K``)."""
        if len(parts) == 1:
            return parts[0]
        return TokenReduction(*(torch.cat([getattr(p, f.name) for p in parts], dim=1) for f in fields(TokenReduction)))


def _as_frame_counts(k: int | list[int] | torch.Tensor, frames: int, device) -> torch.Tensor:
    counts = torch.as_tensor(k, dtype=torch.long, device=device)
    if counts.dim() == 0:
        counts = counts.expand(frames)
    if counts.shape != (frames,):
        raise ValueError(f"expected one keep count per frame ({frames}), got shape {tuple(counts.shape)}")
    return counts


def _ranks(values: torch.Tensor, descending: bool) -> torch.Tensor:
    """Rank of every entry along the last dim (0 = first), stable: ties keep index order."""
    order = torch.sort(values, dim=-1, descending=descending, stable=True).indices
    ar = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ar)


def topk_mask(scores: torch.Tensor, k: int | list[int] | torch.Tensor) -> torch.Tensor:
    """``[B, S, N]`` bool mask of the ``k_s`` highest scores of every frame (ties: lower index).

    ``k`` is one count for all frames or one per frame (``[S]``).
    """
    counts = _as_frame_counts(k, scores.shape[1], scores.device)
    return _ranks(scores.float(), descending=True) < counts[None, :, None]


def kept_indices(kept_mask: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid indices of the kept tokens, ascending, padded to ``width`` slots.

    Args:
        kept_mask: ``[B, S, N]`` bool.
        width: slots per frame (default: the largest kept count).
    Returns:
        ``(kept_idx [B, S, K] int64, valid [B, S, K] bool)``; padded slots hold ``N - 1``.
    """
    n = kept_mask.shape[-1]
    counts = kept_mask.sum(dim=-1)  # [B, S]
    width = int(counts.max()) if width is None else width
    ar = torch.arange(n, device=kept_mask.device)
    key = torch.where(kept_mask, ar, ar + n)  # kept first, each group in grid order
    idx = torch.sort(key, dim=-1, stable=True).indices[..., :width]
    valid = torch.arange(width, device=kept_mask.device) < counts[..., None]
    return torch.where(valid, idx, torch.full_like(idx, n - 1)), valid


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x [B, S, N, D]`` at ``idx [B, S, K]`` -> ``[B, S, K, D]``."""
    return torch.gather(x, 2, idx[..., None].expand(*idx.shape, x.shape[-1]))


def reduce_tokens(
    x: torch.Tensor,
    scores: torch.Tensor,
    k: int | list[int] | torch.Tensor,
    merge_budget: torch.Tensor | int = 0,
    metric: torch.Tensor | None = None,
    sizes: torch.Tensor | None = None,
    width: int | None = None,
) -> TokenReduction:
    """Keep the top-``k`` tokens of every frame and merge or drop the rest.

    Args:
        x: ``[B, S, N, C]`` token features to reduce.
        scores: ``[B, S, N]`` importance logits (higher = keep).
        k: kept tokens per frame: one int, or ``[S]`` (frames keeping fewer get padded slots).
        merge_budget: ``[B, S]`` int (or one int for every frame): pruned tokens merged per frame;
            values above a frame's pruned count merge all of them.
        metric: ``[B, S, N, D]`` features for the cosine similarity (default ``x``).
        sizes: ``[B, S, N]`` sizes of the input tokens (default all 1) for the weighted mean.
        width: slots per frame ``K`` (default ``max(k)``; larger values pad every frame), so that
            reductions of frame chunks have one width.
    Returns:
        A :class:`TokenReduction`; ``tokens`` has ``x``'s dtype.
    """
    b, s, n, c = x.shape
    counts = _as_frame_counts(k, s, x.device)
    if int(counts.min()) < 1 or int(counts.max()) > n:
        raise ValueError(f"keep counts must be in [1, {n}], got {counts.tolist()}")
    kept_mask = topk_mask(scores, counts)
    width = int(counts.max()) if width is None else int(width)
    if width < int(counts.max()):
        raise ValueError(f"width {width} is below the largest keep count {int(counts.max())}")
    kept_idx, valid = kept_indices(kept_mask, width)
    slot_of = torch.cumsum(kept_mask.long(), dim=-1) - 1  # slot of each kept token (grid order)

    budget = torch.as_tensor(merge_budget, dtype=torch.long, device=x.device)
    budget = budget.expand(b, s) if budget.dim() < 2 else budget
    assignment = torch.where(kept_mask, slot_of, torch.full_like(slot_of, -1))
    if bool((budget > 0).any()):
        metric = x if metric is None else metric
        unit = F.normalize(metric.float(), dim=-1)
        sim = unit @ gather_tokens(unit, kept_idx).transpose(-1, -2)  # [B, S, N, K]
        sim = sim.masked_fill(~valid[:, :, None, :], float("-inf"))
        best_sim, best_slot = sim.max(dim=-1)  # ties: first (lowest) slot
        candidate = torch.where(kept_mask, torch.full_like(best_sim, float("-inf")), best_sim)
        merged = ~kept_mask & (_ranks(candidate, descending=True) < budget[..., None])
        assignment = torch.where(merged, best_slot, assignment)

    in_sizes = torch.ones(b, s, n, device=x.device) if sizes is None else sizes.float()
    member = (assignment >= 0).float() * in_sizes
    target = assignment.clamp(min=0)
    group = torch.zeros(b, s, kept_idx.shape[-1], device=x.device).scatter_add_(-1, target, member)
    summed = torch.zeros(b, s, kept_idx.shape[-1], c, device=x.device).scatter_add_(
        2, target[..., None].expand(b, s, n, c), x.float() * member[..., None]
    )
    tokens = (summed / group.clamp(min=1e-12)[..., None]).to(x.dtype)
    return TokenReduction(kept_idx, valid, tokens, group, assignment, kept_mask)


def scatter_to_grid(
    values: torch.Tensor, kept_idx: torch.Tensor, num_tokens: int, valid: torch.Tensor | None = None, fill: float = 0.0
) -> torch.Tensor:
    """Put slot values back at their grid positions: ``[B, S, K, D] -> [B, S, N, D]``.

    Positions without a (valid) slot hold ``fill``.
    """
    b, s, _, d = values.shape
    out = values.new_full((b, s, num_tokens, d), fill)
    if valid is None:
        return out.scatter(2, kept_idx[..., None].expand_as(values), values)
    # Padded slots write to a scratch column N, cut off afterwards.
    idx = torch.where(valid, kept_idx, torch.full_like(kept_idx, num_tokens))
    out = torch.cat((out, out[:, :, :1]), dim=2)
    out = out.scatter(2, idx[..., None].expand_as(values), values)
    return out[:, :, :num_tokens]


def unmerge(values: torch.Tensor, assignment: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Every original token takes the value of its slot: ``[B, S, K, D] -> [B, S, N, D]``.

    Kept and merged tokens get their slot's value; dropped tokens (``assignment == -1``) ``fill``.
    """
    dense = gather_tokens(values, assignment.clamp(min=0))
    return torch.where((assignment >= 0)[..., None], dense, torch.full_like(dense, fill))


def straight_through_mask(
    scores: torch.Tensor, k: int | list[int] | torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Hard top-``k`` mask with a sigmoid straight-through gradient, ``[B, S, N]``.

    The forward value is exactly the 0/1 mask of :func:`topk_mask`; the gradient is that of
    ``sigmoid((scores - t) / temperature)`` with ``t`` (detached) halfway between each frame's
    ``k``-th and ``k+1``-th score. Multiplying kept tokens by it leaves them bit-identical while
    letting a training loss reach the scorer.
    """
    counts = _as_frame_counts(k, scores.shape[1], scores.device)
    hard = topk_mask(scores, counts).to(scores.dtype)
    ordered = torch.sort(scores.detach(), dim=-1, descending=True).values
    n = scores.shape[-1]
    lo = (counts - 1).clamp(0, n - 1)[None, :, None].expand(scores.shape[0], -1, 1)
    hi = counts.clamp(max=n - 1)[None, :, None].expand(scores.shape[0], -1, 1)
    threshold = 0.5 * (torch.gather(ordered, -1, lo) + torch.gather(ordered, -1, hi))
    soft = torch.sigmoid((scores - threshold) / temperature)
    return hard + (soft - soft.detach())
