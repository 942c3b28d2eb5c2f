"""Fidelity: how far a pruned run moves from the unpruned run of the same backbone on the same frames.

An accelerator promises the unpruned model's output for less cost, so its first measure is the
distance to that output, whatever the backbone's own accuracy:

* ``rot_dev``: relative-rotation deviation over frame pairs, the angle between the pruned and the
  unpruned relative rotation ``R_i R_j^T`` (degrees);
* ``trans_dev``: translation-direction deviation over frame pairs whose unpruned baseline is not
  tiny (at least ``min_baseline`` of the median baseline), the angle between the pruned and the
  unpruned relative translation directions, sign-folded to [0, 90] as VGGT's evaluation does;
* ``depth_dev``: per pixel ``|d_pruned - d_unpruned| / d_unpruned`` over valid pixels;
* ``points_dev``: symmetric Chamfer distance between the two runs' points unprojected from depth
  with their own cameras (both in their first camera's frame, the model's scale), divided by the
  unpruned points' median distance from their centroid (the scene size), so that it is unitless.

Every function takes world-to-camera extrinsics ``[S, 3|4, 4]`` (OpenCV) and ``[S, H, W]`` depth
maps; :func:`fidelity` gives the per-clip summary used by the evaluation scripts.
"""

from __future__ import annotations

import numpy as np

from pacegeo.geometry.transforms import ArrayLike, camera_centers, invert_se3, to_numpy
from pacegeo.metrics import relative_pose_errors

__all__ = ["camera_deviation", "depth_deviation", "fidelity", "points_deviation"]


def camera_deviation(
    extrinsics: ArrayLike, reference: ArrayLike, min_baseline: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Rotation deviation over all pairs ``i < j`` ``[M]`` and translation-direction deviation over
    the pairs whose reference baseline ``|c_i - c_j|`` is at least ``min_baseline`` times the median
    reference baseline ``[M']`` (degrees)."""
    rot, trans = relative_pose_errors(extrinsics, reference)
    centres = camera_centers(to_numpy(reference))
    i, j = np.triu_indices(len(centres), k=1)
    baseline = np.linalg.norm(centres[i] - centres[j], axis=-1)
    if baseline.size == 0:
        return rot, trans
    keep = baseline >= min_baseline * np.median(baseline)
    return rot, trans[keep]


def depth_deviation(depth: ArrayLike, reference: ArrayLike, valid: ArrayLike | None = None) -> np.ndarray:
    """``|d - d_ref| / d_ref`` over the valid pixels (finite, positive reference) ``[P]``."""
    d, r = to_numpy(depth).astype(np.float64), to_numpy(reference).astype(np.float64)
    mask = np.isfinite(d) & np.isfinite(r) & (r > 0)
    if valid is not None:
        mask &= to_numpy(valid).astype(bool)
    return np.abs(d[mask] - r[mask]) / r[mask]


def _unproject(depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """World points ``[S, H, W, 3]`` of depth maps seen by OpenCV cameras."""
    s, h, w = depth.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pix = np.stack([xs, ys, np.ones_like(xs)], axis=-1)  # [H, W, 3]
    rays = np.einsum("sij,hwj->shwi", np.linalg.inv(intrinsics), pix)
    cam = rays * depth[..., None]
    c2w = invert_se3(extrinsics)
    return np.einsum("sij,shwj->shwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]


def points_deviation(
    depth: ArrayLike,
    extrinsics: ArrayLike,
    intrinsics: ArrayLike,
    ref_depth: ArrayLike,
    ref_extrinsics: ArrayLike,
    ref_intrinsics: ArrayLike,
    valid: ArrayLike | None = None,
    max_points: int = 20000,
    seed: int = 0,
) -> float:
    """Chamfer distance (mean of both directions) between the points of two runs, in units of the
    reference scene size (see the module docstring). The same seeded subset of pixels is used for
    both runs."""
    from scipy.spatial import cKDTree

    pts = _unproject(to_numpy(depth).astype(np.float64), to_numpy(extrinsics).astype(np.float64),
                     to_numpy(intrinsics).astype(np.float64))
    ref = _unproject(to_numpy(ref_depth).astype(np.float64), to_numpy(ref_extrinsics).astype(np.float64),
                     to_numpy(ref_intrinsics).astype(np.float64))
    mask = np.isfinite(pts).all(-1) & np.isfinite(ref).all(-1)
    if valid is not None:
        mask &= to_numpy(valid).astype(bool)
    pts, ref = pts[mask], ref[mask]
    if len(ref) == 0:
        return float("nan")
    pick = np.random.default_rng(seed).choice(len(ref), size=min(max_points, len(ref)), replace=False)
    pts, ref = pts[pick], ref[pick]
    size = float(np.median(np.linalg.norm(ref - ref.mean(axis=0), axis=-1)))
    forward = cKDTree(ref).query(pts)[0].mean()
    backward = cKDTree(pts).query(ref)[0].mean()
    return float(0.5 * (forward + backward) / max(size, 1e-12))


def fidelity(
    depth: ArrayLike,
    extrinsics: ArrayLike,
    intrinsics: ArrayLike,
    ref_depth: ArrayLike,
    ref_extrinsics: ArrayLike,
    ref_intrinsics: ArrayLike,
    valid: ArrayLike | None = None,
) -> dict[str, float]:
    """Per-clip fidelity of a run to its reference (medians over pairs and pixels; see the module
    docstring): ``rot_dev_med``, ``trans_dev_med`` (degrees), ``depth_dev_med`` (fraction) and
    ``points_dev`` (fraction of the scene size). The reference against itself gives zeros."""
    rot, trans = camera_deviation(extrinsics, ref_extrinsics)
    dep = depth_deviation(depth, ref_depth, valid)
    return {
        "rot_dev_med": float(np.median(rot)) if rot.size else 0.0,
        "trans_dev_med": float(np.median(trans)) if trans.size else 0.0,
        "depth_dev_med": float(np.median(dep)) if dep.size else float("nan"),
        "points_dev": points_deviation(depth, extrinsics, intrinsics, ref_depth, ref_extrinsics, ref_intrinsics, valid),
    }
