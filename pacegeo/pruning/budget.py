"""Token budgets: how many patch tokens each frame keeps, and how a total merge budget is split.

Pure functions, deterministic.

**Keep budget.** Every frame keeps ``k = ceil(keep * N)`` of its ``N`` patch tokens (clamped to
``[1, N]``). The reference frame 0 (the world frame of the predictions) may keep more:
``k0 = min(N, ceil(ref_boost * keep * N))``. The AA stack needs rectangular ``[B, S, P', C]``
tensors, so all frames are padded to ``K = max(k0, k)`` slots; padded slots are never attended to
(their key bias is ``-inf``, which :mod:`pacegeo.pruning.merge` produces as ``log(0)`` of an empty
group). Padding costs compute: with a boost every frame pays for ``K`` slots, so a boost of 1
(the default) is the efficient choice and small boosts (1.2-1.5) the sensible range.

**Merge budget.** Of the tokens a frame does not keep, up to ``merge_budget[s]`` are merged into
their most similar kept token and the rest are dropped. The total budget of a sequence
(``round(merge_ratio * total pruned)``) is split across frames in proportion to the importance mass
their pruned tokens carry (:func:`importance_mass`), with integer largest-remainder rounding, capped
by each frame's number of pruned tokens; the parts always sum exactly to the (capped) total.
"""

import math
import numbers

import torch

from pacegeo.errors import InputError

# keep * N is computed in floating point: 0.3 * 10 = 3.0000000000000004 must keep 3, not 4.
_CEIL_SLACK = 1e-9


def _finite_real(value, name: str, expected: str) -> float | None:
    """``value`` as a float, None when it is NaN or infinite; :class:`InputError` (``"{name} must
    be {expected}"``) when it is not a real number (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be {expected}, got {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def validate_keep(keep: float) -> float:
    """``keep`` as a float in ``(0, 1]``; anything else (0, negative, > 1, NaN, non-numbers)
    raises :class:`InputError`."""
    value = _finite_real(keep, "keep", "a number in (0, 1]")
    if value is None or not 0.0 < value <= 1.0:
        raise InputError(f"keep must be in (0, 1] (fraction of patch tokens each frame keeps), got {keep!r}")
    return value


def validate_merge_ratio(merge_ratio: float) -> float:
    """``merge_ratio`` as a float in ``[0, 1]`` or :class:`InputError`."""
    value = _finite_real(merge_ratio, "merge_ratio", "a number in [0, 1]")
    if value is None or not 0.0 <= value <= 1.0:
        raise InputError(f"merge_ratio must be in [0, 1] (fraction of pruned tokens merged, not dropped), got {merge_ratio!r}")
    return value


def validate_ref_boost(ref_boost: float) -> float:
    """``ref_boost`` as a float ``>= 1`` or :class:`InputError`."""
    value = _finite_real(ref_boost, "ref_boost", "a number >= 1")
    if value is None or value < 1.0:
        raise InputError(f"ref_boost must be >= 1 (reference-frame keep multiplier), got {ref_boost!r}")
    return value


def keep_count(keep: float, num_tokens: int) -> int:
    """Patch tokens one frame keeps: ``ceil(keep * N)`` clamped to ``[1, N]``."""
    keep = validate_keep(keep)
    if num_tokens < 1:
        raise InputError(f"a frame needs at least one patch token, got {num_tokens}")
    return int(min(num_tokens, max(1, math.ceil(keep * num_tokens - _CEIL_SLACK))))


def frame_keep_counts(keep: float, num_tokens: int, frames: int, ref_boost: float = 1.0) -> list[int]:
    """Kept patch tokens per frame, ``[k0, k, ..., k]`` (length ``frames``).

    Frame 0 keeps ``keep_count(min(1, ref_boost * keep), N)``, the others ``keep_count(keep, N)``.
    """
    keep = validate_keep(keep)
    ref_boost = validate_ref_boost(ref_boost)
    k = keep_count(keep, num_tokens)
    k0 = keep_count(min(1.0, ref_boost * keep), num_tokens)
    return [k0] + [k] * (frames - 1)


def total_merge_budget(merge_ratio: float, pruned_per_frame: list[int] | torch.Tensor) -> int:
    """Merge slots of one sequence: ``round(merge_ratio * total pruned tokens)`` (half up)."""
    merge_ratio = validate_merge_ratio(merge_ratio)
    total = int(sum(int(p) for p in pruned_per_frame))
    return int(math.floor(merge_ratio * total + 0.5 - _CEIL_SLACK)) if total else 0


def importance_mass(scores: torch.Tensor, kept_mask: torch.Tensor) -> torch.Tensor:
    """Importance carried by each frame's pruned tokens: ``sum sigmoid(score)`` over them.

    Args:
        scores: ``[B, S, N]`` importance logits.
        kept_mask: ``[B, S, N]`` bool, True where the token is kept.
    Returns:
        ``[B, S]`` float32, non-negative.
    """
    weights = torch.sigmoid(scores.float())
    return torch.where(kept_mask, torch.zeros_like(weights), weights).sum(dim=-1)


def _largest_remainder(quota: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Integer parts of non-negative ``quota [B, S]`` summing to ``total [B]``: floor, then one
    more to the frames with the largest fractional parts (ties go to the lower frame index)."""
    base = torch.floor(quota)
    short = (total - base.sum(dim=-1)).clamp(min=0).long()  # [B]
    frac = quota - base
    order = torch.sort(frac, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return base.long() + (rank < short[:, None]).long()


def split_merge_budget(mass: torch.Tensor, total: int | torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """Split a total merge budget across frames in proportion to ``mass``.

    Integer allocation by largest remainder, capped per frame by ``capacity`` (its pruned-token
    count); the surplus of capped frames is re-split over the others. The result sums exactly to
    ``min(total, capacity.sum())`` for every batch element. Frames with zero mass share equally
    when all masses are zero.

    Args:
        mass: ``[B, S]`` non-negative importance mass (:func:`importance_mass`).
        total: merge slots per sequence (int, or ``[B]`` tensor).
        capacity: ``[B, S]`` (or ``[S]``) int, the most slots each frame can use.
    Returns:
        ``[B, S]`` int64 allocation, ``0 <= alloc <= capacity``.
    """
    mass = mass.double().clamp(min=0)
    capacity = capacity.long().to(mass.device).expand_as(mass)
    b = mass.shape[0]
    total_t = torch.as_tensor(total, dtype=torch.long, device=mass.device).expand(b).clone()
    remaining = torch.minimum(total_t, capacity.sum(dim=-1))
    alloc = torch.zeros_like(capacity)
    # Each round either finishes or saturates at least one more frame: at most S rounds.
    for _ in range(mass.shape[-1] + 1):
        if not bool((remaining > 0).any()):
            break
        room = capacity - alloc
        open_ = room > 0
        weights = torch.where(open_, mass, torch.zeros_like(mass))
        # Frames with room but no mass anywhere: share equally among the open frames.
        no_mass = weights.sum(dim=-1, keepdim=True) <= 0
        weights = torch.where(no_mass & open_, torch.ones_like(weights), weights)
        quota = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-300) * remaining[:, None].double()
        add = torch.minimum(_largest_remainder(quota, remaining), room)
        alloc = alloc + add
        remaining = remaining - add.sum(dim=-1)
    return alloc
