"""Common result type of the dataset readers: a lazily loaded sequence of posed RGB-D frames.

Conventions used everywhere in :mod:`pacegeo.data`:

* cameras are OpenCV pinhole cameras: x right, y down, z forward;
* ``cam_to_world`` is a 4x4 float64 camera-to-world rigid transform (``X_world = T @ X_cam``);
  "extrinsics" are world-to-camera ``[3,4]`` matrices;
* depth is the z coordinate in the camera frame (not the ray length), in metres, float32, with
  ``0`` marking invalid pixels;
* pixel ``(u, v)`` (column, row) has its centre at image coordinate ``(u, v)``: the ray through the
  centre of pixel ``(u, v)`` is ``K^-1 @ [u, v, 1]``. :func:`pixel_grid` and
  :func:`unproject_depth` follow this convention, and so does the SynthRooms renderer.

Readers build a :class:`FrameSequence` from :class:`FrameRecord` entries (paths and poses, which
are small); colour images and depth maps are only read when a frame is accessed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pacegeo.errors import InputError
from pacegeo.geometry.transforms import invert_se3

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Frame:
    """One posed RGB-D frame.

    Attributes:
        name: frame identifier inside its sequence (e.g. ``"120"`` or ``"frame-000120"``).
        image: ``[H,W,3]`` uint8 RGB.
        depth: ``[Hd,Wd]`` float32 depth in metres (0 = invalid), or ``None`` when not available.
        K: ``[3,3]`` float64 intrinsics of ``image``.
        cam_to_world: ``[4,4]`` float64 camera-to-world pose (OpenCV camera).
        K_depth: ``[3,3]`` float64 intrinsics of ``depth`` when they differ from ``K`` (e.g. ScanNet,
            whose depth is 640x480 while colour is 1296x968); ``None`` means "same as ``K``".
    """

    name: str
    image: np.ndarray
    depth: np.ndarray | None
    K: np.ndarray
    cam_to_world: np.ndarray
    K_depth: np.ndarray | None = None

    @property
    def depth_K(self) -> np.ndarray:
        """``[3,3]`` intrinsics that go with ``depth`` (``K_depth`` if set, else ``K``)."""
        return self.K if self.K_depth is None else self.K_depth

    @property
    def extrinsic(self) -> np.ndarray:
        """``[3,4]`` world-to-camera matrix (OpenCV), the inverse of ``cam_to_world``."""
        return invert_se3(self.cam_to_world)[:3]


@dataclass(frozen=True, eq=False)
class FrameRecord:
    """Where one frame lives on disk, plus its (already parsed) pose and intrinsics.

    ``depth_path`` may be ``None``; ``K_depth`` is ``None`` when depth shares ``K``.
    """

    name: str
    image_path: Path
    depth_path: Path | None
    K: np.ndarray
    cam_to_world: np.ndarray
    K_depth: np.ndarray | None = None


@dataclass(frozen=True)
class DepthFormat:
    """How a 16-bit depth PNG encodes metres: ``metres = value / scale``; ``invalid`` values -> 0."""

    scale: float = 1000.0
    invalid: tuple[int, ...] = (0,)


@dataclass(frozen=True, eq=False)
class FrameSequence:
    """An ordered, lazily loaded sequence of frames.

    ``len(seq)``, ``seq[i] -> Frame`` (reads the files), ``seq.names``, ``seq.poses``
    (``[N,4,4]`` camera-to-world, no file access) and ``seq.select(indices)`` (a sub-sequence,
    no file access) are the whole interface.
    """

    records: tuple[FrameRecord, ...]
    depth_format: DepthFormat = field(default_factory=DepthFormat)
    load_depth: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", tuple(self.records))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Frame:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"frame index must be an integer, got {type(index).__name__}; use select()")
        return load_frame(self.records[index], self.depth_format if self.load_depth else None)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self[i]

    @property
    def names(self) -> list[str]:
        """Frame names in sequence order."""
        return [r.name for r in self.records]

    @property
    def poses(self) -> np.ndarray:
        """``[N,4,4]`` float64 camera-to-world poses (OpenCV), without reading any image."""
        if not self.records:
            return np.zeros((0, 4, 4))
        return np.stack([r.cam_to_world for r in self.records])

    @property
    def intrinsics(self) -> np.ndarray:
        """``[N,3,3]`` float64 colour intrinsics, without reading any image."""
        if not self.records:
            return np.zeros((0, 3, 3))
        return np.stack([r.K for r in self.records])

    def select(self, indices: Sequence[int] | np.ndarray) -> FrameSequence:
        """Sub-sequence with the frames at ``indices`` (positions in this sequence), in that order."""
        recs = tuple(self.records[int(i)] for i in indices)
        return FrameSequence(recs, self.depth_format, self.load_depth, self.name)


def load_frame(record: FrameRecord, depth_format: DepthFormat | None) -> Frame:
    """Read the image (and depth, unless ``depth_format`` is ``None``) of ``record``."""
    image = read_rgb(record.image_path)
    depth = None
    if depth_format is not None and record.depth_path is not None:
        depth = read_depth_png(record.depth_path, depth_format)
    return Frame(
        name=record.name,
        image=image,
        depth=depth,
        K=record.K,
        cam_to_world=record.cam_to_world,
        K_depth=record.K_depth,
    )


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as ``[H,W,3]`` uint8 RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from None


def read_depth_png(path: Path, depth_format: DepthFormat = DepthFormat()) -> np.ndarray:
    """Read a 16-bit depth PNG as ``[H,W]`` float32 metres, with the invalid codes set to 0."""
    try:
        with Image.open(path) as im:
            raw = np.asarray(im)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read depth map {path}: {err}") from None
    if raw.ndim != 2:
        raise InputError(f"depth map {path} must be single-channel, got shape {raw.shape}")
    raw = raw.astype(np.int64, copy=False)
    depth = (raw / depth_format.scale).astype(np.float32)
    if depth_format.invalid:
        depth[np.isin(raw, depth_format.invalid)] = 0.0
    return depth


def read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a whitespace-separated text matrix; returns the top-left ``shape`` block as float64.

    Non-finite values (ScanNet marks lost tracking with ``-inf``) are returned as they are.
    """
    try:
        mat = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read matrix file {path}: {err}") from None
    if mat.shape[0] < shape[0] or mat.shape[1] < shape[1]:
        raise InputError(f"matrix file {path} holds a {mat.shape} matrix, expected at least {shape}")
    return mat[: shape[0], : shape[1]].copy()


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(u, v)`` float64 ``[H,W]`` pixel-centre coordinates (column, row), centre of pixel (u,v) at (u,v)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return u, v


def unproject_depth(depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray | None = None) -> np.ndarray:
    """Lift a depth map to 3D points.

    Args:
        depth: ``[H,W]`` z-depth in metres (0 = invalid; invalid pixels give the camera centre).
        K: ``[3,3]`` intrinsics.
        cam_to_world: optional ``[4,4]`` camera-to-world; without it points stay in the camera frame.

    Returns:
        ``[H,W,3]`` float64 points (world frame if ``cam_to_world`` is given).
    """
    h, w = depth.shape
    u, v = pixel_grid(h, w)
    z = depth.astype(np.float64)
    x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    pts = np.stack([x, y, z], axis=-1)
    if cam_to_world is not None:
        pts = pts @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]
    return pts


def project_points(points: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``[...,3]`` world points; returns ``(uv [...,2], z [...])`` in the same pixel convention."""
    cam = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = cam @ K.T
        uv = uvw[..., :2] / uvw[..., 2:3]
    return uv, z


def depth_reprojection_error(depth_a: np.ndarray, K_a: np.ndarray, cam_to_world_a: np.ndarray,
                             depth_b: np.ndarray, K_b: np.ndarray, cam_to_world_b: np.ndarray,
                             step: int = 1) -> np.ndarray:
    """Relative depth disagreement of view A's depth seen from view B.

    Valid pixels of ``depth_a`` are lifted to 3D, moved into camera B and compared with
    ``depth_b`` sampled bilinearly at their projection (only where all four neighbours are
    valid). Pixels that leave B's image or land on invalid depth are skipped; occlusions are not
    (they show up as large errors, so use a robust statistic such as the median). ``step`` > 1
    only uses every ``step``-th pixel of A in each direction.

    Returns:
        ``[n]`` float64 ``|z_ab - depth_b(uv)| / depth_b(uv)`` over the co-visible pixels.
    """
    from scipy.ndimage import map_coordinates

    v, u = np.mgrid[0:depth_a.shape[0]:step, 0:depth_a.shape[1]:step]
    z_a = depth_a[v, u].astype(np.float64)
    keep = z_a > 0
    u, v, z_a = u[keep], v[keep], z_a[keep]
    y = (v - K_a[1, 2]) / K_a[1, 1] * z_a
    x = (u - K_a[0, 2] - K_a[0, 1] * (v - K_a[1, 2]) / K_a[1, 1]) / K_a[0, 0] * z_a
    pts = np.stack([x, y, z_a], -1) @ cam_to_world_a[:3, :3].T + cam_to_world_a[:3, 3]
    uv, z = project_points(pts, K_b, invert_se3(cam_to_world_b))
    h, w = depth_b.shape
    ok = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
    uv, z = uv[ok], z[ok]
    coords = np.stack([uv[:, 1], uv[:, 0]])
    d_b = map_coordinates(depth_b.astype(np.float64), coords, order=1, mode="nearest")
    valid_b = map_coordinates((depth_b > 0).astype(np.float64), coords, order=1, mode="nearest") > 1 - 1e-9
    return np.abs(z[valid_b] - d_b[valid_b]) / d_b[valid_b]
