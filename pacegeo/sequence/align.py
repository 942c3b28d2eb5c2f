"""A robust, confidence-weighted Sim(3) between the point maps two chunks predict for their shared
frames.

Both chunks see the same pixels of the shared frames, so their point maps correspond pixel by
pixel; no matching is needed. The fit is Umeyama's weighted least squares
(:func:`pacegeo.geometry.transforms.umeyama`) inside iteratively reweighted least squares: each
pixel's weight is the smaller of the two chunks' confidences times a Cauchy weight of its residual,
whose scale follows the median residual. Pixels one chunk gets badly wrong (sky, reflections,
a frame one chunk misplaced) lose their weight instead of bending the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pacegeo.geometry.transforms import apply_sim3_to_c2w, apply_sim3_to_points, invert_se3, umeyama

__all__ = ["MIN_POINTS", "PointFit", "fit_cameras_sim3", "fit_points_sim3"]

#: Fewest valid pixel pairs a fit accepts.
MIN_POINTS = 64


@dataclass(frozen=True, eq=False)
class PointFit:
    """The similarity ``X -> s R X + t`` taking one chunk's points onto the frame already placed.

    Attributes:
        scale, rotation ``[3, 3]``, translation ``[3]``: ``s``, ``R``, ``t``.
        points: pixel pairs the fit used.
        inliers: share of those pairs whose residual is within 3 robust scales at the end.
        residual: median residual divided by the median distance of the target points to their
            median (scale-free).
        ok: False when there were too few valid pairs or the fit is not finite; ``s, R, t`` are
            then NaN.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    points: int
    inliers: float
    residual: float
    ok: bool

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """``[..., 3]`` points of the chunk in the placed frame (same shape, float64)."""
        flat = np.asarray(points, np.float64).reshape(-1, 3)
        return apply_sim3_to_points(flat, self.scale, self.rotation, self.translation).reshape(np.shape(points))

    def apply_c2w(self, cam_to_world: np.ndarray) -> np.ndarray:
        """Camera-to-world poses ``[S, 3|4, 4]`` of the chunk in the placed frame ``[S, 4, 4]``."""
        return apply_sim3_to_c2w(cam_to_world, self.scale, self.rotation, self.translation)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> "PointFit":
        """The similarity of a ``[4, 4]`` matrix ``[[s R, t], [0, 1]]`` (as a successful fit)."""
        s = float(np.cbrt(np.linalg.det(matrix[:3, :3])))
        return cls(s, matrix[:3, :3] / s, matrix[:3, 3].copy(), 0, 1.0, 0.0, True)

    def move_frames(self, rec, frames: np.ndarray) -> dict[str, np.ndarray]:
        """The geometry of ``rec``'s ``frames`` moved by this similarity: ``depth`` (scaled),
        ``world_points``, ``points_from_depth`` and ``extrinsics``, float32 as a Reconstruction's."""
        c2w = self.apply_c2w(invert_se3(rec.extrinsics[frames].astype(np.float64)))
        return {
            "depth": (self.scale * rec.depth[frames]).astype(np.float32),
            "world_points": self.apply_points(rec.world_points[frames]).astype(np.float32),
            "points_from_depth": self.apply_points(rec.points_from_depth[frames]).astype(np.float32),
            "extrinsics": invert_se3(c2w)[:, :3, :4].astype(np.float32),
        }

    def to_dict(self) -> dict:
        return {"scale": self.scale, "rotation": self.rotation.tolist(), "translation": self.translation.tolist(),
                "points": self.points, "inliers": self.inliers, "residual": self.residual, "ok": self.ok}


def _failed(points: int) -> PointFit:
    return PointFit(float("nan"), np.full((3, 3), np.nan), np.full(3, np.nan), points, 0.0, float("inf"), False)


def fit_points_sim3(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    max_points: int = 50_000,
    iterations: int = 10,
    seed: int = 0,
) -> PointFit:
    """Robust weighted Sim(3) taking points ``src`` onto ``dst``.

    Args:
        src, dst: ``[..., 3]`` corresponding points (the same shape; non-finite pairs are ignored).
        weights: ``[...]`` non-negative confidence of each pair (None: equal).
        max_points: at most this many pairs, drawn with a seeded generator, enter the fit.
        iterations: reweighting rounds after the first weighted fit.
        seed: seed of the subsample.
    """
    src = np.asarray(src, np.float64).reshape(-1, 3)
    dst = np.asarray(dst, np.float64).reshape(-1, 3)
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must match, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    keep = np.isfinite(src).all(1) & np.isfinite(dst).all(1) & np.isfinite(w) & (w > 0)
    src, dst, w = src[keep], dst[keep], w[keep]
    if len(src) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(src), max_points, replace=False))
        src, dst, w = src[pick], dst[pick], w[pick]
    n = len(src)
    if n < MIN_POINTS:
        return _failed(n)
    try:
        s, R, t = umeyama(src, dst, with_scale=True, weights=w)
        robust = np.ones(n)
        for _ in range(iterations):
            r = np.linalg.norm(dst - (s * src @ R.T + t), axis=1)
            sigma = 1.4826 * float(np.median(r))
            if not np.isfinite(sigma) or sigma <= 1e-12:
                break
            robust = 1.0 / (1.0 + (r / (2.0 * sigma)) ** 2)  # Cauchy weights at twice the robust scale
            s, R, t = umeyama(src, dst, with_scale=True, weights=w * robust)
    except (ValueError, np.linalg.LinAlgError):
        return _failed(n)
    if not (np.isfinite(s) and s > 0 and np.isfinite(R).all() and np.isfinite(t).all()):
        return _failed(n)
    r = np.linalg.norm(dst - (s * src @ R.T + t), axis=1)
    sigma = 1.4826 * float(np.median(r))
    spread = float(np.median(np.linalg.norm(dst - np.median(dst, axis=0), axis=1)))
    inliers = float(np.mean(r <= 3.0 * sigma)) if sigma > 0 else 1.0
    residual = float(np.median(r)) / spread if spread > 1e-12 else 0.0
    return PointFit(float(s), R, t, n, inliers, residual, True)


def fit_cameras_sim3(src_c2w: np.ndarray, dst_c2w: np.ndarray) -> PointFit:
    """Least-squares Sim(3) taking the camera centres of ``src_c2w`` onto those of ``dst_c2w``
    (``[N, 3|4, 4]`` each): the alignment by shared cameras alone, without the point maps. It needs
    at least 3 centres that are not all at one place; ``points`` counts the cameras used."""
    src = np.asarray(src_c2w, np.float64)[:, :3, 3]
    dst = np.asarray(dst_c2w, np.float64)[:, :3, 3]
    n = len(src)
    if n < 3 or not (np.isfinite(src).all() and np.isfinite(dst).all()):
        return _failed(n)
    try:
        s, R, t = umeyama(src, dst, with_scale=True)
    except (ValueError, np.linalg.LinAlgError):
        return _failed(n)
    if not (np.isfinite(s) and s > 0):
        return _failed(n)
    r = np.linalg.norm(dst - (s * src @ R.T + t), axis=1)
    spread = float(np.sqrt(np.mean(np.sum((dst - dst.mean(0)) ** 2, axis=1))))
    return PointFit(float(s), R, t, n, 1.0, float(np.sqrt(np.mean(r**2))) / spread if spread > 1e-12 else 0.0, True)
