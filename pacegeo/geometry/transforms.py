"""Rigid (SE(3)) and similarity (Sim(3)) transforms: the one place pacegeo inverts, composes,
applies and fits them.

Conventions:

* a rigid transform is ``[..., 3, 4]`` ``[R | t]`` or its ``[..., 4, 4]`` completion, mapping
  ``p -> R p + t``; OpenCV world-to-camera extrinsics and camera-to-world poses are both such;
* a similarity ``(s, R, t)`` maps ``X -> s R X + t`` (:func:`sim3_matrix` gives its 4x4 matrix).

:func:`to_4x4`, :func:`invert_se3` and :func:`camera_centers` take torch tensors (result in torch,
same dtype and device, any leading dimensions) or anything numpy reads (result float64 numpy).
The rest works on one side: :func:`transform_points` and :func:`relative_to_first` in torch;
the Sim(3) helpers, :func:`rotation_angle_deg` and :func:`umeyama` in float64 numpy.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from pacegeo.errors import InputError

ArrayLike = Union[np.ndarray, torch.Tensor, list, tuple, float]

__all__ = [
    "align_trajectory",
    "apply_sim3_to_c2w",
    "apply_sim3_to_points",
    "apply_sim3_to_w2c",
    "apply_transform",
    "cam_to_world_to_extrinsics",
    "camera_centers",
    "check_last_dims",
    "extrinsics_to_cam_to_world",
    "invert_se3",
    "relative_to_first",
    "rotation_angle_deg",
    "sim3_matrix",
    "to_4x4",
    "to_homogeneous",
    "to_numpy",
    "transform_points",
    "umeyama",
]


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


def to_numpy(x: ArrayLike) -> np.ndarray:
    """``x`` as a float64 numpy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def check_last_dims(x: torch.Tensor, shapes: tuple[tuple[int, ...], ...], name: str) -> None:
    """Raise :class:`InputError` unless ``x``'s trailing dimensions match one of ``shapes``."""
    for shape in shapes:
        if x.ndim >= len(shape) and tuple(x.shape[-len(shape) :]) == shape:
            return
    wanted = " or ".join("[..., " + ", ".join(map(str, s)) + "]" for s in shapes)
    raise InputError(f"{name} must have shape {wanted}, got {list(x.shape)}")


def _points(x: ArrayLike, name: str) -> np.ndarray:
    arr = to_numpy(x)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape [N, 3], got {tuple(arr.shape)}")
    return arr


def poses_4x4(x: ArrayLike, name: str) -> np.ndarray:
    """Poses ``[S, 3|4, 4]`` (one ``[3|4, 4]`` pose becomes ``S = 1``) as float64 ``[S, 4, 4]``."""
    arr = to_numpy(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"{name} must have shape [S, 3, 4] or [S, 4, 4], got {tuple(arr.shape)}")
    return to_4x4(arr)


def to_homogeneous(points: torch.Tensor) -> torch.Tensor:
    """Append a coordinate of ones: ``[..., D] -> [..., D+1]``."""
    return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)


def to_4x4(transform: ArrayLike):
    """Complete rigid transforms ``[..., 3, 4]`` to ``[..., 4, 4]`` (``[..., 4, 4]`` passes through;
    numpy input is returned as a float64 copy)."""
    if isinstance(transform, torch.Tensor):
        check_last_dims(transform, ((3, 4), (4, 4)), "transform")
        if transform.shape[-2] == 4:
            return transform
        bottom = torch.zeros_like(transform[..., :1, :])
        bottom[..., 0, 3] = 1.0
        return torch.cat([transform, bottom], dim=-2)
    arr = to_numpy(transform)
    if arr.shape[-2:] == (4, 4):
        return arr.copy()
    if arr.shape[-2:] != (3, 4):
        raise ValueError(f"poses must end in (3, 4) or (4, 4), got {tuple(arr.shape)}")
    out = np.zeros(arr.shape[:-2] + (4, 4), dtype=np.float64)
    out[..., :3, :] = arr
    out[..., 3, 3] = 1.0
    return out


# --------------------------------------------------------------------------------------------
# SE(3)
# --------------------------------------------------------------------------------------------


def invert_se3(transform: ArrayLike):
    """Closed-form inverse ``[R^T | -R^T t]`` of rigid transforms ``[..., 3|4, 4] -> [..., 4, 4]``.

    Turns world-to-camera extrinsics into camera-to-world poses and back. The rotation block is
    taken to be orthonormal.
    """
    if isinstance(transform, torch.Tensor):
        check_last_dims(transform, ((3, 4), (4, 4)), "transform")
        rotation_t = transform[..., :3, :3].transpose(-1, -2)
        translation = transform[..., :3, 3:]
        return to_4x4(torch.cat([rotation_t, -rotation_t @ translation], dim=-1))
    T = to_4x4(transform)
    Rt = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, T[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def camera_centers(extrinsics: ArrayLike):
    """World positions ``C = -R^T t`` ``[..., 3]`` of cameras with OpenCV world-to-camera
    ``extrinsics [..., 3|4, 4]``."""
    if isinstance(extrinsics, torch.Tensor):
        check_last_dims(extrinsics, ((3, 4), (4, 4)), "extrinsics")
        rotation = extrinsics[..., :3, :3]
        translation = extrinsics[..., :3, 3:]
        return -(rotation.transpose(-1, -2) @ translation).squeeze(-1)
    return invert_se3(extrinsics)[..., :3, 3]


def extrinsics_to_cam_to_world(extrinsics: torch.Tensor) -> torch.Tensor:
    """Camera-from-world extrinsics ``[..., 3|4, 4]`` to camera-to-world poses ``[..., 4, 4]``."""
    return invert_se3(extrinsics)


def cam_to_world_to_extrinsics(cam_to_world: torch.Tensor) -> torch.Tensor:
    """Camera-to-world poses ``[..., 3|4, 4]`` to OpenCV camera-from-world extrinsics ``[..., 3, 4]``."""
    return invert_se3(cam_to_world)[..., :3, :]


def transform_points(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply rigid transforms ``[..., 3|4, 4]`` to points ``[..., N, 3]`` (``R p + t``; the leading
    dimensions broadcast)."""
    check_last_dims(transform, ((3, 4), (4, 4)), "transform")
    rotation = transform[..., :3, :3]
    translation = transform[..., :3, 3]
    return points @ rotation.transpose(-1, -2) + translation.unsqueeze(-2)


def relative_to_first(extrinsics: torch.Tensor) -> torch.Tensor:
    """Re-express cameras in the frame of camera 0.

    Args:
        extrinsics: ``[..., S, 3, 4]`` (or ``[..., S, 4, 4]``) OpenCV camera-from-world.

    Returns:
        ``[..., S, 3, 4]`` with ``E_i' = E_i @ E_0^-1``, so frame 0 becomes ``[I | 0]``. World points
        move along as ``p' = E_0 p`` (``transform_points(extrinsics[..., 0, :, :], p)``).
    """
    check_last_dims(extrinsics, ((3, 4), (4, 4)), "extrinsics")
    if extrinsics.ndim < 3:
        raise InputError(f"extrinsics must have shape [..., S, 3, 4], got {list(extrinsics.shape)}")
    first_inv = invert_se3(extrinsics[..., :1, :, :])
    return (to_4x4(extrinsics) @ first_inv)[..., :3, :]


def rotation_angle_deg(R: ArrayLike) -> np.ndarray:
    """Geodesic angle in degrees of rotation matrices ``[..., 3, 3]`` (in [0, 180])."""
    mats = to_numpy(R)
    shape = mats.shape[:-2]
    ang = Rotation.from_matrix(mats.reshape(-1, 3, 3)).magnitude()
    return np.degrees(ang).reshape(shape)


# --------------------------------------------------------------------------------------------
# Sim(3)
# --------------------------------------------------------------------------------------------


def sim3_matrix(s: float, R: ArrayLike, t: ArrayLike) -> np.ndarray:
    """The 4x4 matrix ``[[s R, t], [0, 1]]`` of the similarity ``X -> s R X + t``."""
    T = np.eye(4)
    T[:3, :3] = float(s) * to_numpy(R)
    T[:3, 3] = to_numpy(t)
    return T


def apply_transform(points: ArrayLike, T: ArrayLike) -> np.ndarray:
    """Apply a 4x4 (or 3x4) affine transform to points ``[N, 3] -> [N, 3]``."""
    P = _points(points, "points")
    M = to_4x4(T)
    return P @ M[:3, :3].T + M[:3, 3]


def apply_sim3_to_points(points: ArrayLike, s: float, R: ArrayLike, t: ArrayLike) -> np.ndarray:
    """Map points ``[N, 3]`` through ``X -> s R X + t``."""
    return _points(points, "points") @ (float(s) * to_numpy(R)).T + to_numpy(t)


def apply_sim3_to_c2w(c2w: ArrayLike, s: float, R: ArrayLike, t: ArrayLike) -> np.ndarray:
    """Express camera-to-world poses ``[S, 3|4, 4]`` in a world frame changed by ``X -> s R X + t``.

    Rotations become ``R R_i`` and camera centres ``s R C_i + t``; the result ``[S, 4, 4]`` stays a
    rigid camera-to-world transform (the scale acts on the world, not on the camera axes).
    """
    P = poses_4x4(c2w, "c2w")
    R = to_numpy(R)
    out = P.copy()
    out[:, :3, :3] = R @ P[:, :3, :3]
    out[:, :3, 3] = float(s) * P[:, :3, 3] @ R.T + to_numpy(t)
    return out


def apply_sim3_to_w2c(w2c: ArrayLike, s: float, R: ArrayLike, t: ArrayLike) -> np.ndarray:
    """World-to-camera version of :func:`apply_sim3_to_c2w` (``[S, 3|4, 4] -> [S, 4, 4]``)."""
    return invert_se3(apply_sim3_to_c2w(invert_se3(poses_4x4(w2c, "w2c")), s, R, t))


def umeyama(
    src: ArrayLike, dst: ArrayLike, with_scale: bool = True, weights: ArrayLike | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) minimising ``sum w_i |dst_i - (s R src_i + t)|^2``.

    Args:
        src: ``[N, 3]`` source points.
        dst: ``[N, 3]`` corresponding target points.
        with_scale: estimate ``s`` (Sim(3)); when False ``s = 1`` (SE(3), rigid).
        weights: ``[N]`` non-negative weight of each pair (None: all equal).

    Returns:
        ``(s, R, t)``: float scale, ``[3, 3]`` rotation (det +1), ``[3]`` translation.
    """
    X = _points(src, "src")
    Y = _points(dst, "dst")
    if X.shape != Y.shape:
        raise ValueError(f"src and dst must match, got {X.shape} and {Y.shape}")
    if X.shape[0] < 2:
        raise ValueError("umeyama needs at least 2 point pairs")
    if weights is None:
        w = np.full(X.shape[0], 1.0 / X.shape[0])
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != X.shape[0] or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("umeyama weights must be N finite non-negative numbers with a positive sum")
        w = w / w.sum()
    mu_x, mu_y = w @ X, w @ Y
    Xc, Yc = X - mu_x, Y - mu_y
    cov = (Yc * w[:, None]).T @ Xc
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    if with_scale:
        var_x = float(w @ np.sum(Xc**2, axis=1))
        if var_x <= np.finfo(np.float64).tiny:
            raise ValueError("umeyama: source points are all identical, scale is undefined")
        s = float(np.sum(D * np.diag(S)) / var_x)
    else:
        s = 1.0
    t = mu_y - s * R @ mu_x
    return s, R, t


def align_trajectory(pred_c2w: ArrayLike, gt_c2w: ArrayLike, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama alignment ``(s, R, t)`` taking predicted camera centres onto ground-truth ones.

    Args:
        pred_c2w, gt_c2w: camera-to-world poses ``[S, 3|4, 4]`` (the same number).
        with_scale: Sim(3) when True, SE(3) when False.
    """
    P = poses_4x4(pred_c2w, "pred_c2w")
    G = poses_4x4(gt_c2w, "gt_c2w")
    if P.shape[0] != G.shape[0]:
        raise ValueError(f"prediction has {P.shape[0]} poses, ground truth {G.shape[0]}")
    return umeyama(P[:, :3, 3], G[:, :3, 3], with_scale=with_scale)
