"""An endless stream of SynthRooms training clips rendered on the fly (nothing written to disk).

A pool of procedurally generated scenes is kept in memory, each with a long hand-held-like
trajectory; every clip picks a scene, a start frame and S-1 forward steps of at most ``max_gap``
trajectory frames, a field of view, and renders the frames at the model resolution. Clips come in
VGGT's training normalisation (see :func:`pacegeo.data.clips.normalize_clip`).

Intrinsics follow the pose-encoding convention of the model: square pixels and the principal
point at ``(W/2, H/2)``, so a camera is fully described by its field of view.
"""

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pacegeo.data.clips import normalize_clip
from pacegeo.data.synth import SynthConfig, make_scene, make_trajectory, render_frame


TRAIN_SEED_BASE = 1_000_000


@dataclass(frozen=True)
class StreamConfig:
    """What clips look like."""

    height: int = 112  # model input height (multiple of 14)
    width: int = 154  # model input width (multiple of 14)
    frames: tuple[int, int] = (2, 4)  # range of clip lengths S (inclusive)
    max_gap: int = 4  # largest step, in trajectory frames, between consecutive clip frames
    fov_deg: tuple[float, float] = (50.0, 90.0)  # horizontal field of view range
    trajectory_frames: int = 240  # length of each scene's trajectory
    min_valid: float = 0.5  # reject clips where a frame has less valid depth than this fraction
    photometric: bool = True  # sensor noise / exposure effects of the renderer


def intrinsics_for_fov(fov_deg: float, height: int, width: int) -> np.ndarray:
    """``[3,3]`` pinhole matrix: horizontal FoV ``fov_deg``, square pixels, centre ``(W/2, H/2)``."""
    f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


class SynthClipStream:
    """Draws normalised clips from a rolling pool of in-memory scenes (deterministic per seed)."""

    def __init__(self, config: StreamConfig, seed: int = 0, scene_pool: int = 32, clips_per_scene: int = 16) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.scene_pool = scene_pool
        self.clips_per_scene = clips_per_scene
        # Training scenes use seeds >= TRAIN_SEED_BASE; evaluation sets use smaller seeds.
        self._next_scene_seed = TRAIN_SEED_BASE + int(self.rng.integers(0, 2**30))
        self._pool: list[list] = []  # [scene, trajectory, uses_left]
        self._synth = SynthConfig(photometric=config.photometric)

    def reconfigure(self, **changes) -> None:
        """Change clip parameters (curriculum) without rebuilding the scene pool."""
        self.config = replace(self.config, **changes)

    def draw_length(self) -> int:
        lo, hi = self.config.frames
        return int(self.rng.integers(lo, hi + 1))

    def _scene(self):
        while len(self._pool) < self.scene_pool:
            seed = self._next_scene_seed
            self._next_scene_seed += 1
            scene = make_scene(seed, self._synth)
            traj = make_trajectory(scene, self.config.trajectory_frames, seed=seed)
            self._pool.append([scene, traj, self.clips_per_scene])
        i = int(self.rng.integers(len(self._pool)))
        entry = self._pool[i]
        entry[2] -= 1
        if entry[2] <= 0:
            self._pool.pop(i)
        return entry[0], entry[1]

    def sample(self, frames: int | None = None, attempts: int = 8) -> dict[str, torch.Tensor]:
        """One clip of ``frames`` frames (drawn from the configured range when None)."""
        c = self.config
        frames = frames or self.draw_length()
        for _ in range(attempts):
            scene, traj = self._scene()
            steps = self.rng.integers(1, c.max_gap + 1, size=frames - 1)
            span = int(steps.sum())
            start = int(self.rng.integers(0, max(1, len(traj) - span)))
            idx = np.concatenate(([start], start + np.cumsum(steps))).clip(0, len(traj) - 1)
            if self.rng.random() < 0.5:  # play the path backwards half of the time
                idx = idx[::-1].copy()
            fov = float(self.rng.uniform(*c.fov_deg))
            K = intrinsics_for_fov(fov, c.height, c.width)
            rgbs, depths = [], []
            for j, k in enumerate(idx):
                rgb, depth = render_frame(scene, traj[k], K, c.width, c.height, frame_index=int(k))
                rgbs.append(rgb)
                depths.append(depth)
            depths = np.stack(depths)
            if (depths > 0).reshape(frames, -1).mean(1).min() < c.min_valid:
                continue
            return normalize_clip(np.stack(rgbs), depths, np.repeat(K[None], frames, 0), traj[idx])
        return normalize_clip(np.stack(rgbs), depths, np.repeat(K[None], frames, 0), traj[idx])

    def batch(self, batch_size: int, frames: int | None = None) -> dict[str, torch.Tensor]:
        """``batch_size`` clips of the same length, stacked on a leading batch dimension."""
        frames = frames or self.draw_length()
        clips = [self.sample(frames) for _ in range(batch_size)]
        return {k: torch.stack([c[k] for c in clips]) for k in clips[0]}


class SynthClipBatches(IterableDataset):
    """Endless batches for a ``DataLoader(batch_size=None, num_workers=k)``; each worker streams
    from its own seed."""

    def __init__(self, config: StreamConfig, batch_size: int, seed: int = 0, **stream_kwargs) -> None:
        self.config, self.batch_size, self.seed, self.stream_kwargs = config, batch_size, seed, stream_kwargs

    def __iter__(self):
        info = get_worker_info()
        worker = 0 if info is None else info.id
        stream = SynthClipStream(self.config, seed=self.seed * 7919 + worker, **self.stream_kwargs)
        while True:
            yield stream.batch(self.batch_size)
