"""Losses on in-batch descriptor similarities for distilling a place-recognition student.

A batch holds ``B`` descriptors with place labels ``[B]``; ``S = d d^T`` is its ``[B, B]`` cosine
similarity matrix (descriptors are L2-normalised). Pairs ``(i, j)`` with ``i != j`` are positives
when the labels agree and negatives otherwise.

* :func:`relation_loss`: relation distillation, the (weighted) mean squared difference between the
  student's and the teacher's similarities over all off-diagonal pairs; 0 when they agree.
* :func:`teacher_hard_pairs` / :func:`confusion_weights`: the pairs the *teacher* finds confusing,
  mined online from its similarities with the Multi-Similarity miner's rule (a negative more similar
  than the anchor's least similar positive minus ``epsilon``, a positive less similar than the
  anchor's most similar negative plus ``epsilon``), and pair weights ``1 + boost`` on them, 1 on the
  other off-diagonal pairs.
* :func:`multi_similarity_loss`: the Multi-Similarity loss with a weight per pair (a weight ``w``
  multiplies the pair's term inside the log-sum-exp; 0 leaves the pair out). With 0/1 weights from
  a miner it equals ``pytorch_metric_learning.losses.MultiSimilarityLoss`` on the mined pairs.
"""

from __future__ import annotations

import torch

from pacegeo.errors import InputError

__all__ = ["confusion_weights", "multi_similarity_loss", "pair_masks", "pairs_to_mask", "relation_loss",
           "teacher_hard_pairs"]


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B]`` labels -> (positive mask, negative mask), both ``[B, B]`` bool, diagonal excluded."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def pairs_to_mask(indices: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A miner's ``(a1, p, a2, n)`` index tuple -> (positive mask, negative mask) ``[size, size]``."""
    a1, p, a2, n = indices
    pos = torch.zeros(size, size, dtype=torch.bool, device=a1.device)
    neg = torch.zeros_like(pos)
    pos[a1, p] = True
    neg[a2, n] = True
    return pos, neg


def teacher_hard_pairs(sim: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs the teacher's similarities ``sim [B, B]`` make hard: (hard positives, hard negatives),
    ``[B, B]`` bool. Anchor ``i``: a negative ``j`` is hard when ``sim[i, j] + epsilon`` exceeds
    the smallest positive similarity of ``i``; a positive ``j`` is hard when ``sim[i, j] - epsilon``
    is below the largest negative similarity of ``i``. An anchor without positives (or without
    negatives) has no hard pairs."""
    if sim.shape != (len(labels), len(labels)):
        raise InputError(f"similarities {tuple(sim.shape)} do not match {len(labels)} labels")
    pos, neg = pair_masks(labels)
    inf = torch.finfo(sim.dtype).max
    min_pos = sim.masked_fill(~pos, inf).min(dim=1, keepdim=True).values  # [B, 1]
    max_neg = sim.masked_fill(~neg, -inf).max(dim=1, keepdim=True).values
    has_both = (pos.any(dim=1) & neg.any(dim=1))[:, None]
    hard_neg = neg & (sim + epsilon > min_pos) & has_both
    hard_pos = pos & (sim - epsilon < max_neg) & has_both
    return hard_pos, hard_neg


def confusion_weights(sim: torch.Tensor, labels: torch.Tensor, boost: float = 2.0, epsilon: float = 0.1) -> torch.Tensor:
    """``[B, B]`` pair weights: ``1 + boost`` on the teacher's hard pairs (:func:`teacher_hard_pairs`),
    1 on the other off-diagonal pairs, 0 on the diagonal."""
    hard_pos, hard_neg = teacher_hard_pairs(sim, labels, epsilon)
    eye = torch.eye(len(labels), dtype=torch.bool, device=sim.device)
    weights = torch.ones_like(sim).masked_fill(eye, 0.0)
    return weights + boost * (hard_pos | hard_neg).to(sim.dtype)


def relation_loss(student_sim: torch.Tensor, teacher_sim: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Relation distillation: ``sum_ij w_ij (S_ij - T_ij)^2 / sum_ij w_ij`` over ``i != j``
    (``weights`` None: all off-diagonal pairs count 1). Scalar."""
    if student_sim.shape != teacher_sim.shape or student_sim.shape[0] != student_sim.shape[1]:
        raise InputError(f"similarity matrices must be square and alike, got {tuple(student_sim.shape)} "
                         f"and {tuple(teacher_sim.shape)}")
    b = student_sim.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=student_sim.device)
    if weights is None:
        weights = (~eye).to(student_sim.dtype)
    else:
        weights = weights.masked_fill(eye, 0.0)
    diff = (student_sim - teacher_sim.to(student_sim.dtype)) ** 2
    return (weights * diff).sum() / weights.sum().clamp(min=1e-12)


def _weighted_lse(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``log(1 + sum_j w_j exp(x_j))`` per row of ``[B, B]`` (rows without weight give 0)."""
    logw = torch.log(weights.clamp(min=1e-30)).masked_fill(weights <= 0, float("-inf"))
    terms = torch.cat((x + logw, torch.zeros_like(x[:, :1])), dim=1)
    return torch.logsumexp(terms, dim=1)


def multi_similarity_loss(sim: torch.Tensor, labels: torch.Tensor, pos_weights: torch.Tensor, neg_weights: torch.Tensor,
                          alpha: float = 1.0, beta: float = 50.0, base: float = 0.0) -> torch.Tensor:
    """Weighted Multi-Similarity loss, mean over the ``B`` anchors:
    ``1/alpha log(1 + sum_p w_ip e^{-alpha (S_ip - base)}) + 1/beta log(1 + sum_n w_in e^{beta (S_in - base)})``.

    Args:
        sim: ``[B, B]`` similarities; labels ``[B]``.
        pos_weights, neg_weights: ``[B, B]`` non-negative weights; they count only on positive
            (resp. negative) pairs of ``labels``, and 0 leaves a pair out.
    """
    pos, neg = pair_masks(labels)
    pos_w = pos_weights.to(sim.dtype) * pos
    neg_w = neg_weights.to(sim.dtype) * neg
    pos_loss = _weighted_lse(-alpha * (sim - base), pos_w) / alpha
    neg_loss = _weighted_lse(beta * (sim - base), neg_w) / beta
    return (pos_loss + neg_loss).mean()
