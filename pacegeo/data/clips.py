"""Training clips: short multi-view RGB-D clips in VGGT's training normalisation.

Two sources give the same item format:

* :class:`SceneClips` reads scenes in the ScanNet raw layout from disk (e.g. written by
  :func:`pacegeo.data.synth.generate_dataset`);
* :class:`SynthClips` renders SynthRooms scenes in memory from seeds, directly at the model
  resolution (no disk, no resampling; augmentation changes the rendered intrinsics).

A clip holds ``S`` frames taken in trajectory order with gaps of ``min_gap..max_gap`` frames
between neighbours, so neighbouring views overlap; ``max_gap`` is the curriculum knob.

Normalisation (as in VGGT training): everything is expressed in the first camera's frame (its
extrinsic is the identity), then divided by ``scale``, the mean distance to the origin (the first
camera centre) of all valid 3D points of the clip. Each item is a dict of tensors::

    images        [S,3,H,W] float32 in [0,1]
    depths        [S,H,W]   float32 z-depth / scale, 0 where invalid
    valid         [S,H,W]   bool
    extrinsics    [S,3,4]   float32 world-to-camera (OpenCV), world = first camera; translation / scale
    intrinsics    [S,3,3]   float32, pixel (u, v) centred at image coordinate (u, v)
    world_points  [S,H,W,3] float32 points in the first camera's frame / scale, 0 where invalid
    scale         []        float32 the divisor (metres per normalised unit)
    frame_indices [S]       int64 positions of the frames in their trajectory
    scene_index   []        int64 which scene (index into the dataset's scene list)
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pacegeo.data.frames import FrameSequence, unproject_depth
from pacegeo.geometry.transforms import invert_se3
from pacegeo.data.scannet import read_scannet_scene
from pacegeo.errors import InputError

if TYPE_CHECKING:  # the generator (open3d) is only imported when clips are rendered in memory
    from pacegeo.data.synth import SynthConfig

logger = logging.getLogger(__name__)

PATCH = 14


@dataclass(frozen=True)
class ClipConfig:
    """How clips are cut and shaped.

    Attributes:
        num_frames: frames per clip (``S``).
        height, width: model resolution; both must be multiples of 14 (e.g. 112x154, 224x294).
        min_gap, max_gap: range of the trajectory-index step between neighbouring clip frames.
        augment: random zoom/crop per frame (changes the intrinsics) and random clip direction.
        zoom: range of the zoom factor used when ``augment`` (1 = the whole field of view).
    """

    num_frames: int = 8
    height: int = 224
    width: int = 294
    min_gap: int = 1
    max_gap: int = 3
    augment: bool = False
    zoom: tuple[float, float] = (1.0, 1.4)

    def __post_init__(self) -> None:
        if self.height % PATCH or self.width % PATCH or self.height <= 0 or self.width <= 0:
            raise InputError(f"clip size must be positive multiples of {PATCH}, got {self.height}x{self.width}")
        if self.num_frames < 1:
            raise InputError(f"num_frames must be at least 1, got {self.num_frames}")
        if not 1 <= self.min_gap <= self.max_gap:
            raise InputError(f"need 1 <= min_gap <= max_gap, got {self.min_gap}, {self.max_gap}")
        if not 1.0 <= self.zoom[0] <= self.zoom[1]:
            raise InputError(f"zoom must be (low, high) with 1 <= low <= high, got {self.zoom}")

    def span(self) -> int:
        """Largest index distance between the first and last frame of a clip."""
        return (self.num_frames - 1) * self.max_gap


def clip_indices(rng: np.random.Generator, n_total: int, config: ClipConfig) -> np.ndarray:
    """``[S]`` increasing trajectory indices with neighbour gaps in ``[min_gap, max_gap]``.

    Gaps shrink towards ``min_gap`` (and then 1) when the trajectory is too short.
    """
    s = config.num_frames
    if n_total < s:
        raise InputError(f"a trajectory of {n_total} frames is too short for clips of {s} frames")
    hi = max(1, min(config.max_gap, (n_total - 1) // max(s - 1, 1)))
    lo = min(config.min_gap, hi)
    gaps = rng.integers(lo, hi + 1, size=s - 1)
    start = int(rng.integers(0, n_total - int(gaps.sum())))
    return start + np.r_[0, np.cumsum(gaps)]


def _crop_box(rng: np.random.Generator | None, size: tuple[int, int], out: tuple[int, int],
              zoom: float) -> tuple[float, float, int, int, int, int]:
    """Resize factors ``(sx, sy)``, crop offset ``(x0, y0)`` and resized size ``(nw, nh)`` for
    taking an ``out`` (h, w) window from an image of ``size`` (h, w).

    The image is scaled to cover ``out`` times ``zoom``, then cropped at the centre (``rng`` None)
    or at a random position.
    """
    h, w = size
    oh, ow = out
    s = max(ow / w, oh / h) * zoom
    nw, nh = max(ow, round(w * s)), max(oh, round(h * s))
    if rng is None:
        x0, y0 = (nw - ow) // 2, (nh - oh) // 2
    else:
        x0, y0 = int(rng.integers(0, nw - ow + 1)), int(rng.integers(0, nh - oh + 1))
    return nw / w, nh / h, x0, y0, nw, nh


def adjust_intrinsics(K: np.ndarray, sx: float, sy: float, x0: float, y0: float) -> np.ndarray:
    """Intrinsics after resizing by ``(sx, sy)`` and cropping at ``(x0, y0)``.

    Pixel centres sit at integer coordinates, so a resize maps ``u -> (u + 0.5) * sx - 0.5``.
    """
    K2 = np.array(K, np.float64)
    K2[0, :] *= sx
    K2[1, :] *= sy
    K2[2] = (0.0, 0.0, 1.0)
    K2[0, 2] = (K[0, 2] + 0.5) * sx - 0.5 - x0
    K2[1, 2] = (K[1, 2] + 0.5) * sy - 0.5 - y0
    return K2


def depth_to_colour_grid(depth: np.ndarray, K_depth: np.ndarray, K: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a depth map of a co-located camera with intrinsics ``K_depth`` onto the colour grid
    ``shape`` (h, w) with intrinsics ``K`` (nearest neighbour; z is unchanged along a ray)."""
    h, w = shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    y = (v - K[1, 2]) / K[1, 1]
    x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
    ud = np.rint(K_depth[0, 0] * x + K_depth[0, 1] * y + K_depth[0, 2]).astype(int)
    vd = np.rint(K_depth[1, 1] * y + K_depth[1, 2]).astype(int)
    inside = (ud >= 0) & (ud < depth.shape[1]) & (vd >= 0) & (vd < depth.shape[0])
    out = np.zeros(shape, np.float32)
    out[inside] = depth[vd[inside], ud[inside]]
    return out


def resize_crop(image: np.ndarray, depth: np.ndarray, K: np.ndarray, out: tuple[int, int],
                rng: np.random.Generator | None = None, zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize (area-aware bilinear for colour, nearest for depth) and crop a frame to ``out`` (h, w).

    Returns ``(image [h,w,3] uint8, depth [h,w] float32, K [3,3])``. ``depth`` must share the
    image's grid and ``K``.
    """
    sx, sy, x0, y0, nw, nh = _crop_box(rng, image.shape[:2], out, zoom)
    oh, ow = out
    img = Image.fromarray(image).resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    img = np.asarray(img)[y0:y0 + oh, x0:x0 + ow]
    dep = Image.fromarray(depth.astype(np.float32)).resize((nw, nh), Image.NEAREST)
    dep = np.asarray(dep)[y0:y0 + oh, x0:x0 + ow]
    return np.ascontiguousarray(img), np.ascontiguousarray(dep), adjust_intrinsics(K, sx, sy, x0, y0)


def normalize_clip(images: np.ndarray, depths: np.ndarray, intrinsics: np.ndarray,
                   cam_to_world: np.ndarray) -> dict[str, torch.Tensor]:
    """VGGT training normalisation of a clip.

    Args:
        images: ``[S,H,W,3]`` uint8 RGB.
        depths: ``[S,H,W]`` z-depth in metres, 0 = invalid.
        intrinsics: ``[S,3,3]``.
        cam_to_world: ``[S,4,4]`` camera-to-world poses (OpenCV).

    Returns:
        The item dict described in the module docstring (without ``frame_indices``/``scene_index``).
    """
    s = len(images)
    first_w2c = invert_se3(cam_to_world[0])
    c2w = first_w2c[None] @ cam_to_world  # camera i -> first camera
    valid = depths > 0
    pts = np.stack([unproject_depth(depths[i], intrinsics[i], c2w[i]) for i in range(s)])
    dist = np.linalg.norm(pts[valid], axis=-1)
    scale = float(dist.mean()) if dist.size else 1.0
    if not np.isfinite(scale) or scale <= 1e-8:
        scale = 1.0
    pts /= scale
    pts[~valid] = 0.0
    w2c = invert_se3(c2w)[:, :3]
    w2c[:, :, 3] /= scale
    w2c[0] = np.eye(4)[:3]  # exact identity for the first camera
    return {
        "images": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0),
        "depths": torch.from_numpy((depths / scale).astype(np.float32)),
        "valid": torch.from_numpy(valid),
        "extrinsics": torch.from_numpy(w2c.astype(np.float32)),
        "intrinsics": torch.from_numpy(np.asarray(intrinsics, np.float32)),
        "world_points": torch.from_numpy(pts.astype(np.float32)),
        "scale": torch.tensor(scale, dtype=torch.float32),
    }


class _ClipDataset(Dataset):
    """Shared sampling logic: item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``."""

    def __init__(self, config: ClipConfig, length: int, seed: int) -> None:
        if length < 1:
            raise InputError(f"dataset length must be at least 1, got {length}")
        self.config = config
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw different clips in each epoch (still deterministic)."""
        self.epoch = int(epoch)

    def set_max_gap(self, max_gap: int) -> None:
        """Curriculum knob: the largest trajectory step between neighbouring clip frames."""
        self.config = replace(self.config, max_gap=int(max_gap), min_gap=min(self.config.min_gap, int(max_gap)))

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _order(self, rng: np.random.Generator, idx: np.ndarray) -> np.ndarray:
        if self.config.augment and rng.random() < 0.5:
            return idx[::-1].copy()
        return idx

    def _zoom(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(*self.config.zoom)) if self.config.augment else 1.0


class SceneClips(_ClipDataset):
    """Clips from scenes on disk in the ScanNet raw layout (SynthRooms output or ScanNet).

    Args:
        scenes: scene folders, or a single root folder holding scene folders.
        config: clip shape and sampling.
        length: items per epoch (default: one clip per ``S`` frames of every scene).
        seed: sampling seed.
    """

    def __init__(self, scenes: Sequence[str | os.PathLike] | str | os.PathLike, config: ClipConfig = ClipConfig(),
                 length: int | None = None, seed: int = 0) -> None:
        if isinstance(scenes, (str, os.PathLike)):
            from pacegeo.data.scannet import list_scannet_scenes

            scenes = list_scannet_scenes(scenes)
        self.sequences: list[FrameSequence] = [read_scannet_scene(p) for p in scenes]
        if not self.sequences:
            raise InputError("no scenes given")
        short = [s.name for s in self.sequences if len(s) < config.num_frames]
        if short:
            raise InputError(f"scene {short[0]} has fewer than {config.num_frames} frames")
        if length is None:
            length = sum(max(1, len(s) // config.num_frames) for s in self.sequences)
        super().__init__(config, length, seed)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self._rng(index)
        scene_index = index % len(self.sequences)
        seq = self.sequences[scene_index]
        idx = self._order(rng, clip_indices(rng, len(seq), self.config))
        out = (self.config.height, self.config.width)
        images, depths, Ks = [], [], []
        for i in idx:
            f = seq[int(i)]
            if f.depth is None:
                raise InputError(f"scene {seq.name} frame {f.name} has no depth map")
            depth = f.depth
            if depth.shape != f.image.shape[:2] or f.K_depth is not None:
                depth = depth_to_colour_grid(depth, f.depth_K, f.K, f.image.shape[:2])
            img, dep, K = resize_crop(f.image, depth, f.K, out, rng if self.config.augment else None,
                                      self._zoom(rng))
            images.append(img)
            depths.append(dep)
            Ks.append(K)
        item = normalize_clip(np.stack(images), np.stack(depths), np.stack(Ks), seq.poses[idx])
        item["frame_indices"] = torch.from_numpy(idx.astype(np.int64))
        item["scene_index"] = torch.tensor(scene_index, dtype=torch.int64)
        return item


class SynthClips(_ClipDataset):
    """Clips rendered in memory from SynthRooms seeds (no disk access).

    Scene ``seeds[i % len(seeds)]`` provides item ``i``; its trajectory has ``frames_per_scene``
    frames; frames are rendered at the model resolution with intrinsics from the scene's field of
    view (``synth_config.fov`` controls the range), zoomed and shifted per frame when augmenting.

    Args:
        seeds: SynthRooms scene seeds.
        config: clip shape and sampling.
        synth_config: scene/trajectory generator settings (``None``: defaults).
        frames_per_scene: trajectory length each clip is cut from.
        length: items per epoch (default ``len(seeds)``).
        seed: sampling seed.
        cache_size: scenes kept in memory (per data-loader worker).
    """

    def __init__(self, seeds: Sequence[int], config: ClipConfig = ClipConfig(),
                 synth_config: SynthConfig | None = None, frames_per_scene: int = 64, length: int | None = None,
                 seed: int = 0, cache_size: int = 4) -> None:
        from pacegeo.data.synth import SynthConfig

        if len(seeds) == 0:
            raise InputError("no scene seeds given")
        if frames_per_scene < config.num_frames:
            raise InputError(f"frames_per_scene ({frames_per_scene}) must be at least num_frames ({config.num_frames})")
        self.seeds = [int(s) for s in seeds]
        self.synth_config = synth_config or SynthConfig()
        self.frames_per_scene = int(frames_per_scene)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, tuple] = OrderedDict()
        super().__init__(config, len(self.seeds) if length is None else length, seed)

    def _scene(self, scene_seed: int) -> tuple:
        from pacegeo.data.synth import make_scene, make_trajectory

        if scene_seed in self._cache:
            self._cache.move_to_end(scene_seed)
            return self._cache[scene_seed]
        scene = make_scene(scene_seed, self.synth_config)
        entry = (scene, make_trajectory(scene, self.frames_per_scene))
        self._cache[scene_seed] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def __getstate__(self) -> dict:  # scenes hold an open3d raycaster: rebuild them in each worker
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from pacegeo.data.synth import render_frame, scene_intrinsics

        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self._rng(index)
        scene_index = index % len(self.seeds)
        scene, poses = self._scene(self.seeds[scene_index])
        idx = self._order(rng, clip_indices(rng, len(poses), self.config))
        h, w = self.config.height, self.config.width
        K0 = scene_intrinsics(scene, w, h)
        images, depths, Ks = [], [], []
        for i in idx:
            K = K0
            if self.config.augment:  # render the crop of a zoomed view directly
                z = self._zoom(rng)
                sx, sy, x0, y0, _, _ = _crop_box(rng, (h, w), (h, w), z)
                K = adjust_intrinsics(K0, sx, sy, x0, y0)
            rgb, depth = render_frame(scene, poses[int(i)], K, w, h, frame_index=int(i))
            images.append(rgb)
            depths.append(depth)
            Ks.append(K)
        item = normalize_clip(np.stack(images), np.stack(depths), np.stack(Ks), poses[idx])
        item["frame_indices"] = torch.from_numpy(idx.astype(np.int64))
        item["scene_index"] = torch.tensor(scene_index, dtype=torch.int64)
        return item


def synth_scene_dirs(root: str | os.PathLike) -> list[Path]:
    """SynthRooms scene folders (``scene_XXXXX``) under ``root``, sorted."""
    r = Path(root)
    return sorted(p for p in r.glob("scene_*") if p.is_dir() and not p.name.endswith(".tmp"))
