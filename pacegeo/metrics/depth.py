"""Depth-map metrics: AbsRel, delta<1.25 and RMSE after optional scale alignment.

Inputs are numpy arrays or torch tensors (converted with ``detach().cpu()``); computation is in
float64 and results are Python floats. Depth is in any unit shared by prediction and ground truth.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np

from pacegeo.geometry.transforms import ArrayLike, to_numpy

__all__ = ["depth_metrics"]


def _depth_scale(p: np.ndarray, g: np.ndarray, align: str) -> float:
    if align == "none":
        return 1.0
    if align == "median":
        return float(np.median(g) / np.median(p))
    if align == "lstsq":
        return float(np.dot(p, g) / np.dot(p, p))
    raise ValueError(f"align must be 'median', 'lstsq' or 'none', got {align!r}")


def _depth_errors(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p > 0, np.maximum(p / g, g / p), np.inf)
    return {
        "abs_rel": float(np.mean(np.abs(p - g) / g)),
        "delta_1_25": float(np.mean(ratio < 1.25)),
        "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
    }


def depth_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    valid: Optional[ArrayLike] = None,
    align: Literal["median", "lstsq", "none"] = "median",
    per_frame: bool = True,
) -> dict[str, float]:
    """AbsRel, delta<1.25 and RMSE of depth maps after optional scale alignment.

    Pixels are used where ``gt > 0``, both maps are finite and ``valid`` (if given) is true.
    The prediction is multiplied by a scale ``s``: ``median(gt) / median(pred)`` (``"median"``),
    the least-squares ``sum(p g) / sum(p^2)`` (``"lstsq"``) or 1 (``"none"``).

    * ``per_frame=True``: one scale per frame, metrics per frame, then the mean over frames that
      have valid pixels.
    * ``per_frame=False``: one scale for the whole sequence, metrics over all valid pixels pooled.

    delta<1.25 counts pixels with ``max(p/g, g/p) < 1.25``; a non-positive prediction fails it.

    Args:
        pred, gt: depth ``[S, H, W]`` or ``[H, W]`` (same unit; RMSE is in that unit).
        valid: optional boolean mask of the same shape.

    Returns:
        ``{"abs_rel", "delta_1_25", "rmse"}`` (NaN when no pixel is valid).
    """
    p_all = to_numpy(pred)
    g_all = to_numpy(gt)
    if p_all.shape != g_all.shape:
        raise ValueError(f"pred {p_all.shape} and gt {g_all.shape} differ in shape")
    if p_all.ndim == 2:
        p_all, g_all = p_all[None], g_all[None]
    mask = np.isfinite(g_all) & np.isfinite(p_all)
    mask &= np.where(mask, g_all, 0.0) > 0
    if valid is not None:
        mask &= to_numpy(valid).reshape(mask.shape) != 0

    nan = {"abs_rel": float("nan"), "delta_1_25": float("nan"), "rmse": float("nan")}
    if per_frame:
        frames = []
        for p_f, g_f, m_f in zip(p_all, g_all, mask):
            if not m_f.any():
                continue
            p, g = p_f[m_f], g_f[m_f]
            frames.append(_depth_errors(_depth_scale(p, g, align) * p, g))
        if not frames:
            return nan
        return {k: float(np.mean([f[k] for f in frames])) for k in nan}
    if not mask.any():
        return nan
    p, g = p_all[mask], g_all[mask]
    return _depth_errors(_depth_scale(p, g, align) * p, g)
