"""Reader for the ScanNet raw layout (as exported by ScanNet's SensReader; SynthRooms uses it too).

Layout of one scene folder::

    <scene>/color/<i>.jpg                 colour frames, ids are unpadded integers
    <scene>/depth/<i>.png                 uint16 depth in millimetres, 0 = invalid
    <scene>/pose/<i>.txt                  4x4 camera-to-world (OpenCV camera); -inf marks lost tracking
    <scene>/intrinsic/intrinsic_color.txt 4x4, the colour K in the top-left 3x3
    <scene>/intrinsic/intrinsic_depth.txt 4x4, the depth K in the top-left 3x3
    <scene>/<scene>_vh_clean_2.ply        reconstructed mesh (ground truth for Chamfer distances)

Frames are sorted numerically by id; frames without a pose file or with a non-finite pose are
dropped. :func:`select_frames` and :func:`select_test_scenes` implement the ScanNet-50 evaluation
protocol of FastVGGT (first frame + uniform stride; every k-th of the sorted scenes).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pacegeo.data.frames import DepthFormat, FrameRecord, FrameSequence, read_matrix
from pacegeo.errors import InputError

logger = logging.getLogger(__name__)

SCANNET_DEPTH = DepthFormat(scale=1000.0, invalid=(0,))


def is_scannet_scene(path: str | os.PathLike) -> bool:
    """True when ``path`` looks like a ScanNet raw scene folder (has ``color/`` and ``pose/``)."""
    p = Path(path)
    return (p / "color").is_dir() and (p / "pose").is_dir()


def _frame_ids(color_dir: Path) -> list[int]:
    ids = []
    for f in color_dir.iterdir():
        if f.suffix.lower() in (".jpg", ".jpeg", ".png") and f.stem.isdigit():
            ids.append(int(f.stem))
    return sorted(set(ids))


def _color_path(color_dir: Path, i: int) -> Path:
    for ext in (".jpg", ".jpeg", ".png"):
        p = color_dir / f"{i}{ext}"
        if p.is_file():
            return p
    raise InputError(f"colour frame {i} not found in {color_dir}")


def read_scannet_scene(scene_dir: str | os.PathLike, *, load_depth: bool = True) -> FrameSequence:
    """Index a ScanNet raw scene folder (reads poses and intrinsics, not images).

    Args:
        scene_dir: the ``<scene>`` folder.
        load_depth: read ``depth/<i>.png`` when frames are accessed (if present).

    Returns:
        The valid frames (image and finite pose), sorted by id; names are the ids as strings.
        ``K`` is the colour intrinsics; ``K_depth`` is set when the depth intrinsics differ.
    """
    root = Path(scene_dir)
    if not is_scannet_scene(root):
        raise InputError(f"{root} is not a ScanNet scene folder (expected color/ and pose/ inside)")
    k_color = root / "intrinsic" / "intrinsic_color.txt"
    if not k_color.is_file():
        raise InputError(f"missing intrinsics file {k_color}")
    K = read_matrix(k_color, (3, 3))
    k_depth_file = root / "intrinsic" / "intrinsic_depth.txt"
    K_depth = read_matrix(k_depth_file, (3, 3)) if k_depth_file.is_file() else None
    if K_depth is not None and np.allclose(K_depth, K):
        K_depth = None

    color_dir, depth_dir, pose_dir = root / "color", root / "depth", root / "pose"
    records, dropped = [], 0
    for i in _frame_ids(color_dir):
        pose_file = pose_dir / f"{i}.txt"
        if not pose_file.is_file():
            dropped += 1
            continue
        pose = read_matrix(pose_file, (4, 4))
        if not np.isfinite(pose).all():
            dropped += 1
            continue
        depth = depth_dir / f"{i}.png"
        records.append(FrameRecord(
            name=str(i),
            image_path=_color_path(color_dir, i),
            depth_path=depth if depth.is_file() else None,
            K=K,
            cam_to_world=pose,
            K_depth=K_depth,
        ))
    if dropped:
        logger.info("%s: dropped %d frames without a finite pose", root.name, dropped)
    if not records:
        raise InputError(f"no frames with a colour image and a finite pose in {root}")
    return FrameSequence(tuple(records), SCANNET_DEPTH, load_depth, root.name)


def select_frames(n_total: int, n: int) -> list[int]:
    """Indices of ``n`` frames out of ``n_total`` valid ones (FastVGGT ScanNet-50 protocol).

    All frames when ``n_total <= n``; otherwise the first frame plus
    ``remaining[::max(1, len(remaining) // (n - 1))][:n - 1]``, where ``remaining`` are the frames
    after the first: a uniform stride over the whole sequence.
    """
    if n < 1:
        raise InputError(f"number of frames to select must be at least 1, got {n}")
    if n_total <= n:
        return list(range(n_total))
    if n == 1:
        return [0]
    remaining = list(range(1, n_total))
    step = max(1, len(remaining) // (n - 1))
    return [0] + remaining[::step][: n - 1]


def list_scannet_scenes(root: str | os.PathLike) -> list[Path]:
    """Scene folders directly under ``root``, sorted by name."""
    r = Path(root)
    if not r.is_dir():
        raise InputError(f"ScanNet root {r} is not a folder")
    return sorted((p for p in r.iterdir() if p.is_dir() and is_scannet_scene(p)), key=lambda p: p.name)


def select_test_scenes(root: str | os.PathLike, n: int = 50) -> list[Path]:
    """ScanNet-``n`` scene choice of FastVGGT: ``sorted(scenes)[::len // n][:n]`` (stride at least 1)."""
    scenes = list_scannet_scenes(root)
    if not scenes:
        raise InputError(f"no ScanNet scene folders under {root}")
    return scenes[:: max(1, len(scenes) // n)][:n]


def load_scannet_frames(scene_dir: str | os.PathLike, n: int, *, load_depth: bool = True) -> FrameSequence:
    """The ``n`` frames of a scene picked by :func:`select_frames`."""
    seq = read_scannet_scene(scene_dir, load_depth=load_depth)
    return seq.select(select_frames(len(seq), n))
