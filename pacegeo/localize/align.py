"""Similarity (Sim(3)) fits between two sets of cameras, and the confidence of a localization."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from pacegeo.errors import InputError
from pacegeo.geometry.transforms import apply_sim3_to_c2w, rotation_angle_deg, sim3_matrix, to_4x4, umeyama

#: Centres count as collinear when the second singular value of the centred points is below this
#: share of the first.
MIN_SPREAD_RATIO = 0.1
#: Scales of the two fit residuals in :func:`localization_confidence`.
CONFIDENCE_CENTRE_SCALE = 0.1
CONFIDENCE_ROTATION_SCALE_DEG = 10.0
#: Weight of each fit method in :func:`localization_confidence` (fewer checks, less trust).
METHOD_WEIGHTS = {"umeyama": 1.0, "rotation-mean": 0.5, "single-frame": 0.25, "failed": 0.0}

__all__ = ["Sim3Fit", "fit_sim3", "localization_confidence", "plain"]


@dataclass(frozen=True, eq=False)
class Sim3Fit:
    """A similarity ``X -> s R X + t`` from a source frame (a reconstruction) to a target frame (the map).

    Attributes:
        scale, rotation ``[3, 3]``, translation ``[3]``: ``s``, ``R``, ``t``.
        method: ``"umeyama"`` (least squares on >= 3 non-collinear centres), ``"rotation-mean"``
            (collinear or two centres: rotation from the cameras' orientations, scale from the
            centre spreads), ``"single-frame"`` (one usable camera: rotation from it, scale from
            the median-depth ratio) or ``"failed"`` (non-finite input).
        frames: cameras the fit used.
        residual: RMS distance between the mapped source centres and the target centres, divided
            by the RMS spread of the target centres about their mean (scale-free; 0 with one frame).
        rotation_residual_deg: median angle between each target rotation and its mapped source rotation.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    method: str
    frames: int
    residual: float = 0.0
    rotation_residual_deg: float = 0.0

    @property
    def matrix(self) -> np.ndarray:
        """``[4, 4]`` ``[[s R, t], [0, 1]]``."""
        return sim3_matrix(self.scale, self.rotation, self.translation)

    def apply_c2w(self, cam_to_world: np.ndarray) -> np.ndarray:
        """Camera-to-world poses ``[S, 3|4, 4]`` of the source frame expressed in the target frame
        ``[S, 4, 4]`` (rotations ``R R_i``, centres ``s R C_i + t``; the result stays rigid)."""
        return apply_sim3_to_c2w(cam_to_world, self.scale, self.rotation, self.translation)

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """Points ``[N, 3]`` of the source frame in the target frame."""
        return np.asarray(points, np.float64) @ (self.scale * self.rotation).T + self.translation

    def to_dict(self) -> dict:
        """JSON-friendly form (non-finite numbers become None)."""
        return {
            "scale": plain(self.scale),
            "rotation": plain(self.rotation),
            "translation": plain(self.translation),
            "method": self.method,
            "frames": int(self.frames),
            "residual": plain(self.residual),
            "rotation_residual_deg": plain(self.rotation_residual_deg),
        }


def plain(value):
    """A number or array as JSON-ready Python values, with None for NaN and infinities."""
    values = np.asarray(value, dtype=np.float64)
    out = np.where(np.isfinite(values), values, None)
    return out.tolist()


def _well_spread(points: np.ndarray, min_ratio: float) -> bool:
    """True when ``points [N, 3]`` span at least a plane (second singular value >= ``min_ratio`` x first)."""
    if len(points) < 3:
        return False
    sv = np.linalg.svd(points - points.mean(0), compute_uv=False)
    if not sv[0] > 1e-12 * max(1.0, float(np.abs(points).max())):
        return False
    return bool(sv[1] >= min_ratio * sv[0])


def _rms_spread(points: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((points - points.mean(0)) ** 2, axis=1)))) if len(points) else 0.0


def fit_sim3(
    src_c2w: np.ndarray,
    dst_c2w: np.ndarray,
    src_depth: np.ndarray | None = None,
    dst_depth: np.ndarray | None = None,
    min_spread_ratio: float = MIN_SPREAD_RATIO,
) -> Sim3Fit:
    """Similarity taking cameras ``src_c2w`` onto ``dst_c2w`` (both OpenCV camera-to-world ``[N, 3|4, 4]``).

    * ``N >= 3`` and the centres of both sets span a plane (:data:`MIN_SPREAD_RATIO`): Umeyama's
      least-squares Sim(3) on the camera centres (:func:`pacegeo.geometry.transforms.umeyama`);
    * otherwise (two cameras, or collinear centres): the rotation is the mean
      (:meth:`scipy.spatial.transform.Rotation.mean`) of the per-camera offsets
      ``R_dst_i R_src_i^T`` (the first camera's offset when it is alone), the scale the ratio of
      the mean centre distances to the centroid, and the translation maps centroid onto centroid;
    * when the centres do not spread at all (one camera, or all at one place), the scale is the
      median ratio ``dst_depth / src_depth`` of the cameras' median scene depths when given, else 1.

    Args:
        src_depth, dst_depth: ``[N]`` median scene depth of each camera in its frame's units, or None.
        min_spread_ratio: collinearity threshold on the singular values of the centred centres.
    """
    src = to_4x4(np.asarray(src_c2w, np.float64))
    dst = to_4x4(np.asarray(dst_c2w, np.float64))
    if src.ndim != 3 or src.shape != dst.shape:
        raise InputError(f"fit_sim3 needs two [N, 4, 4] pose sets of one length, got {src.shape} and {dst.shape}")
    n = len(src)
    if n == 0:
        raise InputError("fit_sim3 needs at least one camera")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        return Sim3Fit(float("nan"), np.full((3, 3), np.nan), np.full(3, np.nan), "failed", n, float("inf"), float("inf"))
    cs, cd = src[:, :3, 3], dst[:, :3, 3]
    method = ""
    if n >= 3 and _well_spread(cs, min_spread_ratio) and _well_spread(cd, min_spread_ratio):
        s, R, t = umeyama(cs, cd, with_scale=True)
        if math.isfinite(s) and s > 0:
            method = "umeyama"
    if not method:
        offsets = dst[:, :3, :3] @ np.swapaxes(src[:, :3, :3], -1, -2)
        R = Rotation.from_matrix(offsets).mean().as_matrix()
        spread_s = float(np.mean(np.linalg.norm(cs - cs.mean(0), axis=1)))
        spread_d = float(np.mean(np.linalg.norm(cd - cd.mean(0), axis=1)))
        tiny_s = 1e-9 * max(1.0, float(np.abs(cs).max()))
        tiny_d = 1e-9 * max(1.0, float(np.abs(cd).max()))
        if n >= 2 and spread_s > tiny_s and spread_d > tiny_d:
            s, method = spread_d / spread_s, "rotation-mean"
        else:
            s, method = 1.0, "single-frame"
            if src_depth is not None and dst_depth is not None:
                ratio = np.asarray(dst_depth, np.float64) / np.asarray(src_depth, np.float64)
                ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
                if ratio.size:
                    s = float(np.median(ratio))
        t = cd.mean(0) - s * R @ cs.mean(0)
    mapped = s * cs @ R.T + t
    rms = float(np.sqrt(np.mean(np.sum((mapped - cd) ** 2, axis=1))))
    spread = _rms_spread(cd)
    residual = rms / spread if spread > 1e-12 else 0.0
    angles = rotation_angle_deg(np.swapaxes(R @ src[:, :3, :3], -1, -2) @ dst[:, :3, :3])
    return Sim3Fit(float(s), R, t, method, n, residual, float(np.median(angles)))


def localization_confidence(retrieval_score: float, fit: Sim3Fit) -> float:
    """Confidence in ``[0, 1]`` of a localization.

    ``confidence = clip(score_1, 0, 1) * exp(-e_c / 0.1) * exp(-e_R / 10 deg) * w_method``

    where ``score_1`` is the cosine similarity of the query to its top-1 map frame, ``e_c`` the
    scale-free centre residual of the fit (:attr:`Sim3Fit.residual`), ``e_R`` its median rotation
    residual in degrees and ``w_method`` 1 for a Umeyama fit, 0.5 for the rotation-mean fallback,
    0.25 for a single-frame fit (less redundancy to check it) and 0 for a failed one. It ranks
    localizations; it is not a calibrated probability.
    """
    weight = METHOD_WEIGHTS.get(fit.method, 0.0)
    if weight == 0.0 or not (math.isfinite(fit.residual) and math.isfinite(fit.rotation_residual_deg)):
        return 0.0
    score = float(np.clip(retrieval_score, 0.0, 1.0)) if math.isfinite(retrieval_score) else 0.0
    value = score * math.exp(-fit.residual / CONFIDENCE_CENTRE_SCALE)
    value *= math.exp(-fit.rotation_residual_deg / CONFIDENCE_ROTATION_SCALE_DEG)
    return float(value * weight)
