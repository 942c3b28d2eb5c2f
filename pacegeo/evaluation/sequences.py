"""Held-out SynthRooms sequences with exact ground truth, rendered for the sequence benchmarks
(``eval/chunked.py``, ``eval/long.py``, ``eval/peers.py``)."""

from __future__ import annotations

import numpy as np

__all__ = ["SynthSequence", "out_and_back", "render_sequence", "scene_spread", "true_points"]


class SynthSequence:
    """``rgbs`` (list of ``[H, W, 3]`` uint8), ``depths [S, H, W]`` (metres, 0 = no hit), ``K [3, 3]``
    and ``cam_to_world [S, 4, 4]`` (OpenCV) of one rendered sequence."""

    def __init__(self, rgbs: list[np.ndarray], depths: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray):
        self.rgbs, self.depths, self.K, self.cam_to_world = rgbs, depths, K, cam_to_world


def out_and_back(scene, frames: int, laps: int = 2, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    """``[frames, 4, 4]`` camera-to-world: out along the first ``frames / laps`` poses of the scene's
    default trajectory and back, ``laps`` times (later frames revisit the places of earlier ones).
    Every lap after the first is moved by up to ``shift`` metres along each axis (seeded), so that
    a revisit is not a replay."""
    from pacegeo.data.synth import make_trajectory

    base = make_trajectory(scene, max(2, int(np.ceil(frames / laps))))
    rng = np.random.default_rng(seed)
    walk = []
    for lap in range(laps):
        part = (base if lap % 2 == 0 else base[::-1]).copy()
        if lap and shift:
            part[:, :3, 3] += rng.uniform(-shift, shift, size=3)
        walk.append(part)
    return np.concatenate(walk)[:frames]


def scene_spread(cam_to_world: np.ndarray) -> float:
    """RMS distance of the camera centres to their mean: the unit of the benchmarks' ATE."""
    centres = np.asarray(cam_to_world)[:, :3, 3]
    return float(np.sqrt(np.mean(np.sum((centres - centres.mean(0)) ** 2, axis=1))))


def render_sequence(seed: int, frames: int, height: int, width: int, poses=None) -> SynthSequence:
    """Scene ``seed`` seen from ``poses`` (a function ``scene -> [S, 4, 4]`` camera-to-world), by
    default the first ``frames`` poses of its default trajectory, rendered at ``height x width``."""
    from pacegeo.data.stream import intrinsics_for_fov
    from pacegeo.data.synth import make_scene, make_trajectory, render_frame

    scene = make_scene(seed)
    c2w = np.asarray(poses(scene) if poses is not None else make_trajectory(scene, frames)[:frames])
    K = intrinsics_for_fov(scene.fov_deg, height, width)
    rgbs, depths = zip(*(render_frame(scene, pose, K, width, height, frame_index=i) for i, pose in enumerate(c2w)))
    return SynthSequence(list(rgbs), np.stack(depths), K, c2w)


def true_points(seq: SynthSequence) -> np.ndarray:
    """``[S, H, W, 3]`` world points of the true depth (zero depth gives the camera centre)."""
    from pacegeo.geometry import unproject_depth_map_to_point_map
    from pacegeo.geometry.transforms import invert_se3

    s = len(seq.depths)
    return unproject_depth_map_to_point_map(seq.depths, invert_se3(seq.cam_to_world)[:, :3], np.broadcast_to(seq.K, (s, 3, 3)))
