"""Camera and trajectory: intrinsics, camera rotations, and hand-held-like camera paths through a scene."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline, PchipInterpolator
from scipy.spatial.transform import Rotation

from pacegeo.data.synth.layout import FreeSpace
from pacegeo.data.synth.scene import Scene
from pacegeo.errors import InputError
from pacegeo.extras import require

o3d = require("open3d", "SynthRooms rendering")


def scene_intrinsics(scene: Scene, width: int, height: int, fov_deg: float | None = None) -> np.ndarray:
    """``[3,3]`` pinhole intrinsics with the scene's horizontal FoV and square pixels.

    The principal point is the image centre ``((W-1)/2, (H-1)/2)`` (pixel centres at integers).
    """
    fov = scene.fov_deg if fov_deg is None else fov_deg
    f = (width / 2.0) / math.tan(math.radians(fov) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """``[N,3,3]`` camera-to-world rotations (OpenCV camera, z-up world) from angles in radians.

    ``yaw`` turns the viewing direction about the world z axis (0 = looking along +x), ``pitch``
    raises it, ``roll`` turns the camera about its optical axis.
    """
    base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # camera axes for yaw=pitch=0
    world = Rotation.from_euler("ZY", np.stack([yaw, -pitch], 1))
    cam = Rotation.from_euler("z", np.asarray(roll)[:, None])
    return (world * Rotation.from_matrix(base) * cam).as_matrix()


def _waypoints(rng: np.random.Generator, free: FreeSpace, length: float) -> np.ndarray:
    """Random walk of waypoints ``[K,2]`` in free space joined by free straight segments."""
    cells = free.centres()
    w = free.clearance[free.free] ** 2
    start = cells[int(rng.choice(len(cells), p=w / w.sum()))]
    pts = [start]
    heading = rng.uniform(0, 2 * np.pi)
    total = 0.0
    while total < length:
        cur = pts[-1]
        nxt = None
        for _ in range(40):
            h = heading + rng.normal(0, 1.0)
            seg = rng.uniform(0.5, 2.0)
            cand = cur + seg * np.array([np.cos(h), np.sin(h)])
            if _segment_free(free, cur, cand):
                nxt, heading = cand, h
                break
        if nxt is None:
            picks = cells[rng.choice(len(cells), size=min(60, len(cells)), replace=False)]
            ok = [p for p in picks if np.linalg.norm(p - cur) > 0.3 and _segment_free(free, cur, p)]
            if ok:
                nxt = ok[0]
                heading = math.atan2(*(nxt - cur)[::-1])
            elif len(pts) > 1:
                nxt = pts[-2]
                heading += np.pi
            else:
                nxt = cur + 0.05 * rng.normal(size=2)
                total += 0.3
        total += float(np.linalg.norm(nxt - cur))
        pts.append(np.asarray(nxt, float))
    return np.array(pts)


def _segment_free(free: FreeSpace, a: np.ndarray, b: np.ndarray) -> bool:
    n = max(2, int(np.linalg.norm(b - a) / 0.03) + 1)
    t = np.linspace(0, 1, n)[:, None]
    return bool(free.is_free(a + (b - a) * t).all())


def _path_positions(rng: np.random.Generator, scene: Scene, num_frames: int, step: float) -> np.ndarray:
    """``[N,3]`` camera centres at constant spacing ``step`` along a smooth path in free space."""
    cfg = scene.config
    free = scene.free_space
    length = step * max(num_frames - 1, 1)
    for attempt in range(12):
        wp = _waypoints(rng, free, length + 0.5)
        heights = rng.uniform(*cfg.camera_height, size=len(wp))
        chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(wp, axis=0), axis=1))]
        keep = np.r_[True, np.diff(chord) > 1e-3]
        wp, heights, chord = wp[keep], heights[keep], chord[keep]
        if len(wp) < 2:
            break
        xyz = np.c_[wp, heights]
        dense_t = np.linspace(0, chord[-1], max(int(chord[-1] / 0.01), 2))
        if len(wp) >= 3:
            dense = CubicSpline(chord, xyz, bc_type="natural")(dense_t)
        else:
            dense = np.stack([np.interp(dense_t, chord, xyz[:, k]) for k in range(3)], 1)
        if free.is_free(dense[:, :2], slack=0.15).all() or attempt == 11:
            if not free.is_free(dense[:, :2], slack=0.15).all():  # fall back to the polyline
                dense = np.stack([np.interp(dense_t, chord, xyz[:, k]) for k in range(3)], 1)
            break
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))]
    s = np.minimum(np.arange(num_frames) * step, arc[-1])
    pos = np.stack([np.interp(s, arc, dense[:, k]) for k in range(3)], 1)
    pos[:, 2] = np.clip(pos[:, 2], *cfg.camera_height)
    return pos


def _visible(scene: Scene, origin: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``[n]`` bool: straight line from ``origin`` reaches ``points`` ``[n,3]`` unobstructed."""
    d = points - origin
    dist = np.linalg.norm(d, axis=1)
    rays = np.c_[np.broadcast_to(origin, d.shape), d / dist[:, None]].astype(np.float32)
    t = scene.raycaster.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    return t >= dist - 0.08


def _open_distance(scene: Scene, origin: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """``[k]`` distance to the first surface along horizontal directions ``yaws`` from ``origin``."""
    d = np.stack([np.cos(yaws), np.sin(yaws), np.zeros_like(yaws)], 1)
    rays = np.c_[np.broadcast_to(origin, d.shape), d].astype(np.float32)
    t = scene.raycaster.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    return np.minimum(t, 100.0)


def _view_angles(rng: np.random.Generator, scene: Scene, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smooth yaw and pitch ``[N]`` (radians) that look at scene content along the path."""
    n = len(pos)
    cfg = scene.config
    knots = [0]
    while knots[-1] < n - 1:
        knots.append(min(n - 1, knots[-1] + int(rng.integers(8, 17))))
    yaws, pitches = [], []
    for k, f in enumerate(knots):
        p = pos[f]
        vec = scene.targets - p
        dist = np.linalg.norm(vec, axis=1)
        yaw_c = np.arctan2(vec[:, 1], vec[:, 0])
        pitch_c = np.arctan2(vec[:, 2], np.hypot(vec[:, 0], vec[:, 1]))
        ok = (dist > 1.0) & (pitch_c > np.radians(-55)) & (pitch_c < np.radians(30))
        if yaws:
            budget = np.radians(min(75.0, cfg.max_turn_per_frame * (f - knots[k - 1])))
            dyaw = (yaw_c - yaws[-1] + np.pi) % (2 * np.pi) - np.pi
            ok &= np.abs(dyaw) <= budget
            ok &= np.abs(pitch_c - pitches[-1]) <= budget
        idx = np.flatnonzero(ok)
        if len(idx):
            idx = idx[_visible(scene, p, scene.targets[idx])]
        if len(idx):
            # Prefer content a few metres away: more context and overlap than a close wall.
            w = scene.target_weights[idx] * np.clip(dist[idx] / 3.0, 0.2, 1.0) ** 2
            c = int(rng.choice(idx, p=w / w.sum()))
            yaw, pitch = yaw_c[c], pitch_c[c]
        else:  # nothing to look at within reach: turn towards the most open direction
            span = np.radians(min(75.0, cfg.max_turn_per_frame * (f - knots[k - 1]))) if yaws else np.pi
            cand = (yaws[-1] if yaws else 0.0) + np.linspace(-span, span, 15)
            yaw = float(cand[int(np.argmax(_open_distance(scene, p, cand)))])
            pitch = np.radians(rng.uniform(-25, 0))
        if yaws:
            yaw = yaws[-1] + (yaw - yaws[-1] + np.pi) % (2 * np.pi) - np.pi
        yaws.append(float(yaw))
        pitches.append(float(pitch))
    frames = np.arange(n)
    if len(knots) == 1:
        return np.full(n, yaws[0]), np.full(n, pitches[0])
    return PchipInterpolator(knots, yaws)(frames), PchipInterpolator(knots, pitches)(frames)


def make_trajectory(scene: Scene, num_frames: int, seed: int | None = None, step: float | None = None) -> np.ndarray:
    """Hand-held-like camera path through ``scene``: ``[N,4,4]`` camera-to-world poses (OpenCV).

    The camera moves at a constant ``step`` (metres per frame; drawn from ``config.step`` when
    not given) along a spline through random waypoints that keep ``config.wall_margin`` from walls
    and objects, looks at scene content with smoothly interpolated yaw/pitch, rolls slightly and
    shakes a little. Deterministic for a given scene and ``seed`` (default: the scene seed).
    """
    if num_frames < 1:
        raise InputError(f"num_frames must be at least 1, got {num_frames}")
    cfg = scene.config
    rng = np.random.default_rng([scene.seed if seed is None else int(seed), 0x7AC])
    step = float(rng.uniform(*cfg.step)) if step is None else float(step)
    pos = _path_positions(rng, scene, num_frames, step)
    yaw, pitch = _view_angles(rng, scene, pos)
    n_roll = max(2, num_frames // 20 + 2)
    roll_knots = rng.uniform(-cfg.max_roll, cfg.max_roll, n_roll)
    roll = np.radians(CubicSpline(np.linspace(0, max(num_frames - 1, 1), n_roll), roll_knots)(np.arange(num_frames)))
    roll = np.clip(roll, -np.radians(cfg.max_roll), np.radians(cfg.max_roll))
    # Hand-held shake: smooth, small.
    shake = ndimage.gaussian_filter1d(rng.normal(size=(num_frames, 5)), 2.0, axis=0, mode="nearest")
    shake /= max(shake.std(), 1e-9)
    pos = pos + np.c_[shake[:, :2] * 0.004, shake[:, 2:3] * 0.003]
    yaw = yaw + np.radians(0.25) * shake[:, 3]
    pitch = pitch + np.radians(0.25) * shake[:, 4]
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    poses[:, :3, :3] = look_rotation(yaw, pitch, roll)
    poses[:, :3, 3] = pos
    return poses
