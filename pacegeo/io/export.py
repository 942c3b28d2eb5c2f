"""Writers for reconstructions: PLY, GLB, COLMAP text, NPZ and JSON.

Pure functions over numpy arrays; :class:`pacegeo.reconstruction.Reconstruction` calls them (the
PNG preview is drawn by :mod:`pacegeo.io.preview`). Conventions:

* world frame: the first camera's OpenCV frame (x right, y down, z forward), the frame VGGT predicts in;
* ``extrinsics [S, 3, 4]``: OpenCV world-to-camera ``[R | t]`` (``x_cam = R x_world + t``);
* ``intrinsics [S, 3, 3]``: pinhole matrices in pixels, pixel centres at integer coordinates unless
  said otherwise (COLMAP puts the centre of the top-left pixel at ``(0.5, 0.5)``);
* points ``[M, 3]`` float, colours ``[M, 3]`` uint8 RGB.

Each format has a streaming writer into an open file (``*_into``; COLMAP into a folder) and an
atomic ``write_*`` wrapper (:mod:`pacegeo.io.outputs`): the file or folder is written under a
temporary name beside its destination and moved into place only when complete, so an error or
interruption never leaves a partial file at the destination and no temporary file behind. Large
data (PLY vertices, COLMAP points) is written in chunks, so exporting needs little memory beyond
the arrays themselves.

The cameras' drawing geometry (:func:`camera_frustum_corners`, :func:`scene_scale`) lives here
too: the GLB scene and the preview both draw each camera as a wireframe frustum.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pacegeo.errors import InputError
from pacegeo.io.outputs import atomic_dir, atomic_write

logger = logging.getLogger(__name__)

#: OpenCV (x right, y down, z forward) to OpenGL/glTF (x right, y up, z backward).
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])

__all__ = [
    "CHUNK_POINTS",
    "OPENCV_TO_OPENGL",
    "atomic_dir",
    "atomic_write",
    "camera_frustum_corners",
    "colmap_into",
    "glb_into",
    "json_into",
    "npz_into",
    "ply_into",
    "rotation_to_qvec",
    "scene_scale",
    "write_colmap_text",
    "write_glb",
    "write_json",
    "write_npz",
    "write_ply",
]


# --------------------------------------------------------------------------------------------
# Points and camera frustums
# --------------------------------------------------------------------------------------------


def _check_points(xyz: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise InputError(f"point colours must be uint8 RGB, got {rgb.dtype}")
    rgb = rgb.reshape(-1, 3)
    if len(rgb) != len(xyz):
        raise InputError(f"got {len(xyz)} points but {len(rgb)} colours")
    return xyz, rgb


def rotation_to_qvec(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` to COLMAP quaternions ``[..., 4]`` (w, x, y, z), ``w >= 0``."""
    from scipy.spatial.transform import Rotation

    rotation = np.asarray(rotation, dtype=np.float64)
    xyzw = Rotation.from_matrix(rotation.reshape(-1, 3, 3)).as_quat()
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
    wxyz *= np.where(wxyz[:, :1] < 0, -1.0, 1.0)
    return wxyz.reshape(rotation.shape[:-2] + (4,))


def _cam_to_world(extrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``R_wc [S, 3, 3]`` and camera centres ``[S, 3]`` of world-to-camera ``extrinsics [S, 3, 4]``."""
    rotation = extrinsics[:, :3, :3].astype(np.float64)
    translation = extrinsics[:, :3, 3].astype(np.float64)
    r_wc = np.transpose(rotation, (0, 2, 1))
    centres = -np.einsum("sij,sj->si", r_wc, translation)
    return r_wc, centres


def camera_frustum_corners(
    extrinsics: np.ndarray, intrinsics: np.ndarray, image_hw: tuple[int, int] | np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """World positions of each camera's centre ``[S, 3]`` and of its image corners ``[S, 4, 3]`` at
    depth ``scale`` (top-left, top-right, bottom-right, bottom-left)."""
    extrinsics = np.asarray(extrinsics, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    sizes = np.broadcast_to(np.asarray(image_hw, dtype=np.float64), (len(extrinsics), 2))
    r_wc, centres = _cam_to_world(extrinsics)
    corners = []
    for i in range(len(extrinsics)):
        h, w = sizes[i]
        k = intrinsics[i]
        fx, fy = k[0, 0], k[1, 1]
        if not (np.isfinite(k).all() and fx > 1e-9 and fy > 1e-9 and fx < 1e6 and fy < 1e6):
            fx = fy = 0.5 * max(h, w) / np.tan(np.deg2rad(30.0))  # degenerate camera: draw a 60-degree frustum
            k = np.array([[fx, 0.0, w / 2], [0.0, fy, h / 2], [0.0, 0.0, 1.0]])
        pix = np.array([[0.0, 0.0, 1.0], [w, 0.0, 1.0], [w, h, 1.0], [0.0, h, 1.0]])
        rays = pix @ np.linalg.inv(k).T  # z = 1
        corners.append(rays * scale @ r_wc[i].T + centres[i])
    return centres, np.stack(corners) if corners else np.zeros((0, 4, 3))


def _frustum_segments(centre: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """``[8, 2, 3]`` line segments: apex to each corner, then the image rectangle."""
    segments = [(centre, c) for c in corners]
    segments += [(corners[i], corners[(i + 1) % 4]) for i in range(4)]
    return np.array(segments)


def scene_scale(xyz: np.ndarray, centres: np.ndarray) -> float:
    """A robust size of the scene: the diagonal of the 2-98 percentile box of points and cameras."""
    pts = np.concatenate([np.asarray(xyz, np.float64).reshape(-1, 3), np.asarray(centres, np.float64).reshape(-1, 3)])
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return 1.0
    lo, hi = np.percentile(pts, [2, 98], axis=0)
    size = float(np.linalg.norm(hi - lo))
    return size if size > 1e-9 else 1.0


# --------------------------------------------------------------------------------------------
# Point clouds and scenes
# --------------------------------------------------------------------------------------------


#: Points written per chunk by the streaming writers (bounds the memory an export adds).
CHUNK_POINTS = 1 << 20

_PLY_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")])


def ply_into(handle, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Stream a binary little-endian PLY point cloud into ``handle``: float32 ``x y z`` and uchar
    ``red green blue alpha`` (alpha = 255) per vertex, written in chunks of :data:`CHUNK_POINTS`.
    Coordinates are written as given (pacegeo: OpenCV world)."""
    xyz, rgb = _check_points(xyz, rgb)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        "end_header\n"
    )
    handle.write(header.encode("ascii"))
    for start in range(0, len(xyz), CHUNK_POINTS):
        stop = min(start + CHUNK_POINTS, len(xyz))
        block = np.empty(stop - start, dtype=_PLY_VERTEX)
        block["x"], block["y"], block["z"] = xyz[start:stop].T
        block["red"], block["green"], block["blue"] = rgb[start:stop].T
        block["alpha"] = 255
        handle.write(block.tobytes())


def write_ply(path: str | os.PathLike, xyz: np.ndarray, rgb: np.ndarray) -> Path:
    """Write a binary PLY point cloud (:func:`ply_into`) atomically."""
    path = Path(path)
    with atomic_write(path) as handle:
        ply_into(handle, xyz, rgb)
    return path


def glb_into(
    handle,
    xyz: np.ndarray,
    rgb: np.ndarray,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    image_hw: tuple[int, int] | np.ndarray,
    frame_names: Sequence[str] | None = None,
    frustum_scale: float | None = None,
) -> None:
    """A binary glTF scene into ``handle``: the coloured points (geometry ``points``) and one wireframe
    frustum per camera (geometries ``camera_000``, ``camera_001``, ...).

    Everything is converted from OpenCV to the glTF convention (y up, cameras looking down -z) by
    :data:`OPENCV_TO_OPENGL`. ``frustum_scale`` is the frustum depth in scene units (default 4% of
    :func:`scene_scale`). ``image_hw`` is the size the intrinsics refer to.
    """
    import trimesh

    xyz, rgb = _check_points(xyz, rgb)
    extrinsics = np.asarray(extrinsics, dtype=np.float64)
    flip = OPENCV_TO_OPENGL
    centres_cv = _cam_to_world(extrinsics)[1] if len(extrinsics) else np.zeros((0, 3))
    scale = frustum_scale if frustum_scale is not None else 0.04 * scene_scale(xyz, centres_cv)
    centres, corners = camera_frustum_corners(extrinsics, intrinsics, image_hw, scale)

    scene = trimesh.Scene()
    if len(xyz):
        rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
        scene.add_geometry(trimesh.PointCloud(xyz.astype(np.float64) @ flip.T, colors=rgba), geom_name="points")
    count = len(extrinsics)
    for i in range(count):
        if not (np.isfinite(centres[i]).all() and np.isfinite(corners[i]).all()):
            logger.warning("camera %d has a degenerate pose; it is left out of the GLB", i)
            continue
        segments = _frustum_segments(centres[i], corners[i]) @ flip.T
        frustum = trimesh.load_path(segments)
        shade = 0.25 + 0.75 * (i / max(count - 1, 1))
        colour = np.array([255, int(80 * (1 - shade)), int(255 * (1 - shade)), 255], dtype=np.uint8)
        frustum.colors = np.tile(colour, (len(frustum.entities), 1))
        name = f"camera_{i:03d}"
        meta = {"frame": str(frame_names[i])} if frame_names is not None else {}
        frustum.metadata.update(meta)
        scene.add_geometry(frustum, geom_name=name, node_name=name)
    handle.write(scene.export(file_type="glb"))


def write_glb(path: str | os.PathLike, *args, **kwargs) -> Path:
    """Write a GLB scene (:func:`glb_into`, same arguments after ``path``) atomically."""
    path = Path(path)
    with atomic_write(path) as handle:
        glb_into(handle, *args, **kwargs)
    return path


# --------------------------------------------------------------------------------------------
# COLMAP
# --------------------------------------------------------------------------------------------


def colmap_into(
    folder: str | os.PathLike,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    image_sizes: np.ndarray,
    frame_names: Sequence[str],
    xyz: np.ndarray,
    rgb: np.ndarray,
    errors: np.ndarray | None = None,
) -> None:
    """Write a COLMAP text model (``cameras.txt``, ``images.txt``, ``points3D.txt``) into the
    existing ``folder``; points are streamed in chunks of :data:`CHUNK_POINTS`.

    Args:
        extrinsics: ``[S, 3, 4]`` OpenCV world-to-camera (COLMAP's convention too).
        intrinsics: ``[S, 3, 3]`` in original-image pixels, COLMAP pixel convention (the centre of
            the top-left pixel at ``(0.5, 0.5)``); zero skew.
        image_sizes: ``[S, 2]`` original image ``(H, W)``.
        frame_names: image names written to ``images.txt``.
        xyz, rgb: ``[M, 3]`` points and uint8 colours; written without tracks (no 2D observations).
        errors: ``[M]`` per-point error column (default 0).

    One ``PINHOLE`` camera per image (``CAMERA_ID = IMAGE_ID = i + 1``).
    """
    xyz, rgb = _check_points(xyz, rgb)
    extrinsics = np.asarray(extrinsics, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    image_sizes = np.asarray(image_sizes)
    count = len(extrinsics)
    if not (len(intrinsics) == len(image_sizes) == len(frame_names) == count):
        raise InputError("COLMAP export: extrinsics, intrinsics, image sizes and names differ in length")
    errors = None if errors is None else np.asarray(errors, dtype=np.float64).reshape(-1)
    qvecs = rotation_to_qvec(extrinsics[:, :3, :3]) if count else np.zeros((0, 4))
    tvecs = extrinsics[:, :3, 3]
    folder = Path(folder)

    with open(folder / "cameras.txt", "w") as cameras:
        cameras.write("# Camera list with one line of data per camera:\n")
        cameras.write("#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        cameras.write(f"# Number of cameras: {count}\n")
        for i in range(count):
            height, width = (int(v) for v in image_sizes[i])
            k = intrinsics[i]
            cameras.write(f"{i + 1} PINHOLE {width} {height} {k[0, 0]:.10g} {k[1, 1]:.10g} {k[0, 2]:.10g} {k[1, 2]:.10g}\n")

    with open(folder / "images.txt", "w") as images:
        images.write("# Image list with two lines of data per image:\n")
        images.write("#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n")
        images.write("#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
        images.write(f"# Number of images: {count}, mean observations per image: 0\n")
        for i in range(count):
            name = str(frame_names[i]).replace(" ", "_")
            q, t = qvecs[i], tvecs[i]
            images.write(
                f"{i + 1} {q[0]:.12g} {q[1]:.12g} {q[2]:.12g} {q[3]:.12g} {t[0]:.12g} {t[1]:.12g} {t[2]:.12g} {i + 1} {name}\n\n"
            )

    with open(folder / "points3D.txt", "w") as points:
        points.write("# 3D point list with one line of data per point:\n")
        points.write("#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
        points.write(f"# Number of points: {len(xyz)}, mean track length: 0\n")
        fmt = ["%d", "%.7g", "%.7g", "%.7g", "%d", "%d", "%d", "%.6g"]
        for start in range(0, len(xyz), CHUNK_POINTS // 8):
            stop = min(start + CHUNK_POINTS // 8, len(xyz))
            flat = np.column_stack([
                np.arange(start + 1, stop + 1, dtype=np.float64),
                xyz[start:stop].astype(np.float64),
                rgb[start:stop].astype(np.float64),
                np.zeros(stop - start) if errors is None else errors[start:stop],
            ])
            np.savetxt(points, flat, fmt=fmt)


def write_colmap_text(folder: str | os.PathLike, *args, overwrite: bool = False, **kwargs) -> Path:
    """Write a COLMAP text model (:func:`colmap_into`, same arguments after ``folder``) as a whole
    folder, atomically; an existing ``folder`` is replaced only with ``overwrite``."""
    folder = Path(folder)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        colmap_into(tmp, *args, **kwargs)
    return folder


# --------------------------------------------------------------------------------------------
# NPZ and JSON
# --------------------------------------------------------------------------------------------


def npz_into(handle, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """``arrays`` as an ``.npz`` archive (compressed by default) into ``handle``."""
    (np.savez_compressed if compress else np.savez)(handle, **arrays)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], compress: bool = True) -> Path:
    """Write ``arrays`` as an ``.npz`` archive (:func:`npz_into`), atomically."""
    path = Path(path)
    with atomic_write(path) as handle:
        npz_into(handle, arrays, compress)
    return path


def json_into(handle, data: object) -> None:
    """``data`` as indented UTF-8 JSON into a binary ``handle``."""
    handle.write((json.dumps(data, indent=2) + "\n").encode("utf-8"))


def write_json(path: str | os.PathLike, data: object) -> Path:
    """Write ``data`` as indented UTF-8 JSON (:func:`json_into`), atomically."""
    path = Path(path)
    with atomic_write(path) as handle:
        json_into(handle, data)
    return path
