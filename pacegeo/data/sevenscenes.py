"""Reader for Microsoft 7-Scenes.

Layout::

    <root>/<scene>/TestSplit.txt, TrainSplit.txt      lines like "sequence2" -> seq-02
    <root>/<scene>/seq-XX/frame-XXXXXX.color.png      640x480 RGB (some copies use .jpg)
    <root>/<scene>/seq-XX/frame-XXXXXX.depth.png      uint16 millimetres; 0 and 65535 are invalid
    <root>/<scene>/seq-XX/frame-XXXXXX.pose.txt       4x4 camera-to-world (OpenCV camera)
    camera-intrinsics.txt                             optional 3x3 K (sequence, scene or root folder)

A folder holding the frames directly is also accepted. Without ``camera-intrinsics.txt`` the
standard depth-camera intrinsics fx = fy = 585, cx = 320, cy = 240 are used for both colour and
depth. Colour and depth come from different sensors of the Kinect and are only approximately
registered; the projected-depth variant used by SimpleRecon-style evaluations can be read with
``depth_suffix="depth.proj.png"`` (and ``intrinsics=SIMPLERECON_K``).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from pacegeo.data.frames import DepthFormat, FrameRecord, FrameSequence, read_matrix
from pacegeo.errors import InputError

logger = logging.getLogger(__name__)

SEVENSCENES_K = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])
SIMPLERECON_K = np.array([[525.0, 0.0, 320.0], [0.0, 525.0, 240.0], [0.0, 0.0, 1.0]])
SEVENSCENES_DEPTH = DepthFormat(scale=1000.0, invalid=(0, 65535))
SPLITS = ("test", "train", "all")

_FRAME_RE = re.compile(r"^frame-(\d+)\.pose\.txt$")
_SPLIT_RE = re.compile(r"^\s*sequence\s*(\d+)\s*$", re.IGNORECASE)


def _pose_files(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for f in folder.iterdir():
        m = _FRAME_RE.match(f.name)
        if m:
            out.append((int(m.group(1)), f))
    return sorted(out)


def is_sequence_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` holds 7-Scenes frames (``frame-*.pose.txt``) directly."""
    p = Path(path)
    return p.is_dir() and any(_FRAME_RE.match(f.name) for f in p.iterdir())


def _find_intrinsics(seq_dir: Path) -> np.ndarray:
    for folder in (seq_dir, seq_dir.parent, seq_dir.parent.parent):
        f = folder / "camera-intrinsics.txt"
        if f.is_file():
            return read_matrix(f, (3, 3))
    return SEVENSCENES_K.copy()


def read_sevenscenes_sequence(seq_dir: str | os.PathLike, *, stride: int = 1, load_depth: bool = True,
                              intrinsics: np.ndarray | None = None,
                              depth_suffix: str = "depth.png") -> FrameSequence:
    """Index one 7-Scenes sequence folder (reads poses, not images).

    Args:
        seq_dir: folder with ``frame-XXXXXX.*`` files.
        stride: keep every ``stride``-th valid frame (by position in the sorted list), starting at the first.
        load_depth: read depth maps when frames are accessed.
        intrinsics: ``[3,3]`` K for colour and depth; default ``camera-intrinsics.txt`` if found
            in the sequence, scene or root folder, else fx = fy = 585, c = (320, 240).
        depth_suffix: depth file suffix (``"depth.proj.png"`` for depth re-projected into colour).

    Returns:
        Frames sorted by number with finite poses; names like ``"frame-000120"``.
    """
    root = Path(seq_dir)
    if not root.is_dir():
        raise InputError(f"7-Scenes sequence folder {root} does not exist")
    if stride < 1:
        raise InputError(f"stride must be at least 1, got {stride}")
    K = np.asarray(intrinsics, np.float64) if intrinsics is not None else _find_intrinsics(root)
    records, dropped = [], 0
    for num, pose_file in _pose_files(root):
        stem = f"frame-{num:06d}"
        image = next((root / f"{stem}.color.{ext}" for ext in ("png", "jpg", "jpeg")
                      if (root / f"{stem}.color.{ext}").is_file()), None)
        pose = read_matrix(pose_file, (4, 4))
        if image is None or not np.isfinite(pose).all():
            dropped += 1
            continue
        depth = root / f"{stem}.{depth_suffix}"
        records.append(FrameRecord(stem, image, depth if depth.is_file() else None, K, pose))
    if dropped:
        logger.info("%s: dropped %d frames without a colour image or a finite pose", root, dropped)
    if not records:
        raise InputError(f"no 7-Scenes frames (frame-XXXXXX.pose.txt with a colour image) in {root}")
    return FrameSequence(tuple(records[::stride]), SEVENSCENES_DEPTH, load_depth, root.name)


def read_split_file(path: str | os.PathLike) -> list[int]:
    """Sequence numbers listed in a ``TestSplit.txt``/``TrainSplit.txt`` (lines like ``sequence2``)."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as err:
        raise InputError(f"cannot read split file {p}: {err}") from None
    out = []
    for line in lines:
        if not line.strip():
            continue
        m = _SPLIT_RE.match(line)
        if not m:
            raise InputError(f"unexpected line {line.strip()!r} in split file {p} (expected e.g. 'sequence2')")
        out.append(int(m.group(1)))
    return out


def _scene_sequences(scene_dir: Path, split: str) -> list[Path]:
    seq_dirs = sorted(p for p in scene_dir.iterdir() if p.is_dir() and p.name.startswith("seq-"))
    if split == "all":
        return seq_dirs
    split_file = scene_dir / ("TestSplit.txt" if split == "test" else "TrainSplit.txt")
    if not split_file.is_file():
        logger.warning("%s has no %s; using all %d sequences", scene_dir, split_file.name, len(seq_dirs))
        return seq_dirs
    out = []
    for n in read_split_file(split_file):
        d = scene_dir / f"seq-{n:02d}"
        if not d.is_dir():
            raise InputError(f"{split_file} lists sequence {n} but {d} does not exist")
        out.append(d)
    return out


def list_sevenscenes_sequences(root: str | os.PathLike, split: str = "test") -> list[Path]:
    """Sequence folders under ``root`` for ``split`` (``"test"``, ``"train"`` or ``"all"``).

    ``root`` may be a sequence folder (frames directly inside), a scene folder (``seq-XX/`` and
    split files) or a dataset root holding scene folders. Scenes are visited in name order;
    sequences follow the split file order.
    """
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    r = Path(root)
    if not r.is_dir():
        raise InputError(f"7-Scenes root {r} is not a folder")
    if is_sequence_dir(r):
        return [r]

    def is_scene(p: Path) -> bool:
        return (p / "TestSplit.txt").is_file() or (p / "TrainSplit.txt").is_file() or any(
            c.is_dir() and c.name.startswith("seq-") for c in p.iterdir())

    if is_scene(r):
        seqs = _scene_sequences(r, split)
    else:
        seqs = [s for scene in sorted(p for p in r.iterdir() if p.is_dir() and is_scene(p))
                for s in _scene_sequences(scene, split)]
    if not seqs:
        raise InputError(f"no 7-Scenes sequences found under {r}")
    return seqs
