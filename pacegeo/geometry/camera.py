"""Camera geometry in torch: pose encodings, quaternions, depth unprojection and projection.

Rigid and similarity transforms (SE(3), Sim(3)) are in :mod:`pacegeo.geometry.transforms`.

Conventions used throughout:

* **Extrinsics** are OpenCV **camera-from-world** (world-to-camera) matrices ``[..., 3, 4]``
  (``[R | t]``, so ``X_cam = R @ X_world + t``) with x right, y down, z forward.
  Functions that accept extrinsics also accept the ``[..., 4, 4]`` form.
* **Intrinsics** are pinhole matrices ``[..., 3, 3]`` in pixels.
* **Pixel coordinates**: ``u`` is the column index and ``v`` the row index, and the integer grid
  ``u = 0..W-1``, ``v = 0..H-1`` is used as-is (no +0.5 pixel-centre offset), as in VGGT.
* The pose encoding ``"absT_quaR_FoV"`` is the 9-vector
  ``[t_x, t_y, t_z, q_x, q_y, q_z, q_w, fov_h, fov_w]``: the extrinsic translation, the rotation
  as a scalar-last (XYZW) quaternion, and the vertical then horizontal field of view in radians.

All torch functions accept arbitrary leading batch dimensions.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from pacegeo.errors import InputError
from pacegeo.geometry.transforms import check_last_dims as _check_last_dims
from pacegeo.geometry.transforms import invert_se3, transform_points

_logger = logging.getLogger(__name__)

POSE_ENCODING_TYPE = "absT_quaR_FoV"
POSE_ENCODING_DIM = 9

__all__ = [
    "POSE_ENCODING_DIM",
    "POSE_ENCODING_TYPE",
    "depth_to_camera_points",
    "depth_to_world_points",
    "extri_intri_to_pose_encoding",
    "matrix_to_quaternion",
    "matrix_to_quaternion_scipy",
    "pose_encoding_to_extri_intri",
    "project_points",
    "quaternion_to_matrix",
    "standardize_quaternion",
    "unproject_depth_map_to_point_map",
]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return ``x`` as a torch tensor (numpy arrays and lists are copied)."""
    return x if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x))


# --------------------------------------------------------------------------------------------
# Quaternions (scalar-last, XYZW)
# --------------------------------------------------------------------------------------------


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """Convert scalar-last quaternions ``[..., 4]`` (XYZW) to rotation matrices ``[..., 3, 3]``.

    Uses ``s = 2 / |q|^2``, so a non-unit quaternion gives the rotation of its normalised version.
    Differentiable.
    """
    _check_last_dims(quaternions, ((4,),), "quaternions")
    i, j, k, r = torch.unbind(quaternions, dim=-1)
    s = 2.0 / (quaternions * quaternions).sum(dim=-1)
    rows = (
        1 - s * (j * j + k * k),
        s * (i * j - k * r),
        s * (i * k + j * r),
        s * (i * j + k * r),
        1 - s * (i * i + k * k),
        s * (j * k - i * r),
        s * (i * k - j * r),
        s * (j * k + i * r),
        1 - s * (i * i + j * j),
    )
    return torch.stack(rows, dim=-1).reshape(quaternions.shape[:-1] + (3, 3))


def standardize_quaternion(quaternions: torch.Tensor) -> torch.Tensor:
    """Flip the sign of XYZW quaternions ``[..., 4]`` so that the scalar part ``q_w >= 0``."""
    return torch.where(quaternions[..., 3:4] < 0, -quaternions, quaternions)


def _sqrt_positive(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with a zero (not infinite) gradient where ``x <= 0``."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), 0.0)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Convert rotation matrices ``[..., 3, 3]`` to unit XYZW quaternions ``[..., 4]`` with ``q_w >= 0``.

    Four candidate quaternions are formed, each dividing by one of ``2|q_w|, 2|q_x|, 2|q_y|,
    2|q_z|``; the candidate with the largest divisor (the best conditioned one) is kept. Works in
    torch on any device and dtype; see :func:`matrix_to_quaternion_scipy` for the scipy route.
    """
    _check_last_dims(matrix, ((3, 3),), "matrix")
    m = matrix.reshape(matrix.shape[:-2] + (9,))
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(m, dim=-1)

    # 4*q_w^2, 4*q_x^2, 4*q_y^2, 4*q_z^2 from the diagonal.
    four_sq = torch.stack(
        [
            1.0 + m00 + m11 + m22,
            1.0 + m00 - m11 - m22,
            1.0 - m00 + m11 - m22,
            1.0 - m00 - m11 + m22,
        ],
        dim=-1,
    )
    q_abs = _sqrt_positive(four_sq)  # 2|q_w|, 2|q_x|, 2|q_y|, 2|q_z|

    # Row c holds 4*q_c*[q_w, q_x, q_y, q_z] (scalar first inside this function).
    candidates = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    candidates = candidates / (2.0 * torch.clamp(q_abs, min=0.1)).unsqueeze(-1)
    best = q_abs.argmax(dim=-1, keepdim=True)
    index = best.unsqueeze(-1).expand(best.shape + (4,))
    wxyz = torch.gather(candidates, dim=-2, index=index).squeeze(-2)
    xyzw = torch.cat([wxyz[..., 1:], wxyz[..., :1]], dim=-1)
    return standardize_quaternion(xyzw)


def matrix_to_quaternion_scipy(matrix: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` to XYZW quaternions ``[..., 4]`` (``q_w >= 0``) via scipy.

    Not differentiable; the result has the input's dtype and device (numpy input gives float64 CPU).
    """
    from scipy.spatial.transform import Rotation

    tensor = _as_tensor(matrix)
    _check_last_dims(tensor, ((3, 3),), "matrix")
    flat = tensor.detach().cpu().double().numpy().reshape(-1, 3, 3)
    quats = Rotation.from_matrix(flat).as_quat() if len(flat) else np.zeros((0, 4))
    out = torch.from_numpy(quats.reshape(tensor.shape[:-2] + (4,)))
    return standardize_quaternion(out).to(dtype=tensor.dtype, device=tensor.device)


# --------------------------------------------------------------------------------------------
# Pose encoding
# --------------------------------------------------------------------------------------------


def _check_encoding_type(pose_encoding_type: str) -> None:
    if pose_encoding_type != POSE_ENCODING_TYPE:
        raise InputError(
            f"unsupported pose encoding {pose_encoding_type!r}; only {POSE_ENCODING_TYPE!r} exists"
        )


def pose_encoding_to_extri_intri(
    pose_encoding: torch.Tensor,
    image_size_hw: tuple[int, int],
    pose_encoding_type: str = POSE_ENCODING_TYPE,
    build_intrinsics: bool = True,
    intrinsics_dtype: torch.dtype | None = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode ``"absT_quaR_FoV"`` pose encodings into cameras.

    Args:
        pose_encoding: ``[..., 9]`` = ``[t(3), quat XYZW (4), fov_h, fov_w]``; the quaternion need
            not be unit length.
        image_size_hw: ``(H, W)`` of the image the intrinsics refer to (in VGGT, the model input).
        pose_encoding_type: must be ``"absT_quaR_FoV"``.
        build_intrinsics: when False, the second return value is ``None``.
        intrinsics_dtype: dtype of the intrinsics; float32 as upstream by default, ``None`` keeps
            ``pose_encoding.dtype``.

    Returns:
        ``extrinsics [..., 3, 4]`` (OpenCV camera-from-world, dtype of ``pose_encoding``) and
        ``intrinsics [..., 3, 3]`` with ``f_y = (H/2)/tan(fov_h/2)``, ``f_x = (W/2)/tan(fov_w/2)``,
        principal point ``(W/2, H/2)``, zero skew. Differentiable.
    """
    _check_encoding_type(pose_encoding_type)
    _check_last_dims(pose_encoding, ((POSE_ENCODING_DIM,),), "pose_encoding")
    translation = pose_encoding[..., :3]
    rotation = quaternion_to_matrix(pose_encoding[..., 3:7])
    extrinsics = torch.cat([rotation, translation.unsqueeze(-1)], dim=-1)
    if not build_intrinsics:
        return extrinsics, None

    height, width = image_size_hw
    dtype = pose_encoding.dtype if intrinsics_dtype is None else intrinsics_dtype
    fov_h = pose_encoding[..., 7].to(dtype)
    fov_w = pose_encoding[..., 8].to(dtype)
    f_y = (height / 2.0) / torch.tan(fov_h / 2.0)
    f_x = (width / 2.0) / torch.tan(fov_w / 2.0)
    zero = torch.zeros_like(f_x)
    one = torch.ones_like(f_x)
    entries = (f_x, zero, zero + width / 2.0, zero, f_y, zero + height / 2.0, zero, zero, one)
    intrinsics = torch.stack(entries, dim=-1).reshape(pose_encoding.shape[:-1] + (3, 3))
    return extrinsics, intrinsics


def extri_intri_to_pose_encoding(
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    image_size_hw: tuple[int, int],
    pose_encoding_type: str = POSE_ENCODING_TYPE,
) -> torch.Tensor:
    """Encode cameras as ``"absT_quaR_FoV"`` 9-vectors, the inverse of :func:`pose_encoding_to_extri_intri`.

    Args:
        extrinsics: ``[..., 3, 4]`` or ``[..., 4, 4]`` OpenCV camera-from-world.
        intrinsics: ``[..., 3, 3]``; only the focal lengths are used
            (``fov_h = 2 atan((H/2)/f_y)``, ``fov_w = 2 atan((W/2)/f_x)``).
        image_size_hw: ``(H, W)`` the intrinsics refer to.

    Returns:
        ``[..., 9]`` = ``[t(3), quat XYZW with q_w >= 0 (4), fov_h, fov_w]`` in the extrinsics' dtype.
    """
    _check_encoding_type(pose_encoding_type)
    _check_last_dims(extrinsics, ((3, 4), (4, 4)), "extrinsics")
    _check_last_dims(intrinsics, ((3, 3),), "intrinsics")
    height, width = image_size_hw
    quaternion = matrix_to_quaternion(extrinsics[..., :3, :3])
    translation = extrinsics[..., :3, 3]
    intrinsics = intrinsics.to(extrinsics.dtype)
    fov_h = 2.0 * torch.atan((height / 2.0) / intrinsics[..., 1, 1])
    fov_w = 2.0 * torch.atan((width / 2.0) / intrinsics[..., 0, 0])
    return torch.cat([translation, quaternion, fov_h.unsqueeze(-1), fov_w.unsqueeze(-1)], dim=-1)


# --------------------------------------------------------------------------------------------
# Depth unprojection and projection
# --------------------------------------------------------------------------------------------


def _pixel_grid(
    height: int, width: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row index grids ``[H, W]`` (``u = 0..W-1``, ``v = 0..H-1``)."""
    v = torch.arange(height, device=device, dtype=dtype)
    u = torch.arange(width, device=device, dtype=dtype)
    return torch.meshgrid(u, v, indexing="xy")


def _check_zero_skew(intrinsics: torch.Tensor) -> None:
    if bool((intrinsics[..., 0, 1] != 0).any()):
        raise InputError("intrinsics must have zero skew (K[0, 1] == 0) to unproject depth")


def depth_to_camera_points(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Unproject depth maps to camera-frame points.

    Args:
        depth: ``[..., H, W]`` z-depth along the optical axis.
        intrinsics: ``[..., 3, 3]`` zero-skew pinhole matrices (leading dims broadcast with ``depth``).

    Returns:
        ``[..., H, W, 3]`` points ``((u - c_x) d / f_x, (v - c_y) d / f_y, d)`` on the integer pixel
        grid ``u = 0..W-1``, ``v = 0..H-1`` (no +0.5), in the promoted dtype of the inputs.
    """
    _check_last_dims(intrinsics, ((3, 3),), "intrinsics")
    if depth.ndim < 2:
        raise InputError(f"depth must have shape [..., H, W], got {list(depth.shape)}")
    _check_zero_skew(intrinsics)
    dtype = torch.promote_types(depth.dtype, intrinsics.dtype)
    depth = depth.to(dtype)
    k = intrinsics.to(dtype)[..., None, None, :, :]
    u, v = _pixel_grid(depth.shape[-2], depth.shape[-1], depth.device, dtype)
    x = (u - k[..., 0, 2]) * depth / k[..., 0, 0]
    y = (v - k[..., 1, 2]) * depth / k[..., 1, 1]
    x, y, z = torch.broadcast_tensors(x, y, depth)
    return torch.stack([x, y, z], dim=-1)


def depth_to_world_points(
    depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor
) -> torch.Tensor:
    """Unproject depth maps to world points (torch route, differentiable).

    Args:
        depth: ``[..., H, W]``.
        extrinsics: ``[..., 3, 4]`` or ``[..., 4, 4]`` OpenCV camera-from-world.
        intrinsics: ``[..., 3, 3]`` zero-skew.

    Returns:
        ``[..., H, W, 3]`` world points ``R^T (P_cam - t)``.
    """
    _check_last_dims(extrinsics, ((3, 4), (4, 4)), "extrinsics")
    points_cam = depth_to_camera_points(depth, intrinsics)
    cam_to_world = invert_se3(extrinsics.to(points_cam.dtype))
    rotation = cam_to_world[..., None, None, :3, :3]
    translation = cam_to_world[..., None, None, :3, 3]
    return (rotation @ points_cam.unsqueeze(-1)).squeeze(-1) + translation


def unproject_depth_map_to_point_map(
    depth_map: torch.Tensor | np.ndarray,
    extrinsics: torch.Tensor | np.ndarray,
    intrinsics: torch.Tensor | np.ndarray,
    as_tensor: bool = False,
) -> np.ndarray | torch.Tensor:
    """Unproject per-frame depth maps to world point maps, reproducing VGGT's numerics.

    The dtype path follows upstream: camera points are computed in float64 and stored as float32,
    the camera-to-world transform is computed in the cameras' dtype, and the world points are
    float64.

    Args:
        depth_map: ``[S, H, W]`` or ``[S, H, W, 1]``.
        extrinsics: ``[S, 3, 4]`` OpenCV camera-from-world.
        intrinsics: ``[S, 3, 3]`` zero-skew.
        as_tensor: return a CPU float64 torch tensor instead of a numpy array.

    Returns:
        ``[S, H, W, 3]`` float64 world points (numpy by default, as upstream).
    """
    depth = _as_tensor(depth_map).detach().cpu()
    extr = _as_tensor(extrinsics).detach().cpu()
    intr = _as_tensor(intrinsics).detach().cpu()
    if depth.ndim == 4 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 3:
        raise InputError(f"depth_map must have shape [S, H, W] or [S, H, W, 1], got {list(depth.shape)}")
    if extr.ndim != 3 or intr.ndim != 3 or len(extr) != len(depth) or len(intr) != len(depth):
        raise InputError(
            f"expected extrinsics [S, 3, 4] and intrinsics [S, 3, 3] with S = {len(depth)}, "
            f"got {list(extr.shape)} and {list(intr.shape)}"
        )
    points_cam = depth_to_camera_points(depth.double(), intr.double()).float()
    cam_to_world = invert_se3(extr).double()
    rotation = cam_to_world[:, None, None, :3, :3]
    translation = cam_to_world[:, None, None, :3, 3]
    world = (rotation @ points_cam.double().unsqueeze(-1)).squeeze(-1) + translation
    return world if as_tensor else world.numpy()


def project_points(
    points_world: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into cameras.

    Args:
        points_world: ``[..., *P, 3]``; the leading ``...`` matches the cameras' batch dims and
            ``*P`` is any number of point dims (e.g. ``N`` or ``H, W``).
        extrinsics: ``[..., 3, 4]`` or ``[..., 4, 4]`` OpenCV camera-from-world.
        intrinsics: ``[..., 3, 3]``.

    Returns:
        ``uv [..., *P, 2]`` pixel coordinates on the same integer grid as
        :func:`depth_to_camera_points`, and ``z [..., *P]`` the camera-frame depth. Points with
        ``z <= 0`` are behind the camera and their ``uv`` is meaningless.
    """
    _check_last_dims(extrinsics, ((3, 4), (4, 4)), "extrinsics")
    _check_last_dims(intrinsics, ((3, 3),), "intrinsics")
    _check_last_dims(points_world, ((3,),), "points_world")
    batch_ndim = extrinsics.ndim - 2
    if points_world.ndim < batch_ndim + 1:
        raise InputError(
            f"points_world {list(points_world.shape)} lacks the camera batch dims of extrinsics "
            f"{list(extrinsics.shape)}"
        )
    point_shape = points_world.shape[batch_ndim:-1]
    flat = points_world.reshape(points_world.shape[:batch_ndim] + (-1, 3))
    points_cam = transform_points(extrinsics.to(flat.dtype), flat)
    pixels = points_cam @ intrinsics.to(flat.dtype).transpose(-1, -2)
    z = points_cam[..., 2]
    uv = pixels[..., :2] / pixels[..., 2:3]
    batch_shape = uv.shape[:-2]
    return uv.reshape(batch_shape + point_shape + (2,)), z.reshape(batch_shape + point_shape)
