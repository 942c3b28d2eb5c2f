"""The room shell: floor polygon, walls with a door and optional windows, floor, ceiling, baseboards."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pacegeo.data.synth.config import SynthConfig
from pacegeo.data.synth.geometry import MAP_SPHERE, _Builder, _sphere_tris
from pacegeo.data.synth.materials import Material, _hsv, _random_material
from pacegeo.data.synth.textures import PAINT


def _room_footprint(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, list[tuple]]:
    """Random floor polygon (CCW) and its decomposition into rectangles ``(x0, y0, x1, y1)``."""
    lx, ly = rng.uniform(*cfg.room_side, size=2)
    if rng.random() < cfg.l_shape_prob and min(lx, ly) > 2 * cfg.wall_margin + 2.2:
        ax = lx * rng.uniform(0.3, 0.55)
        ay = ly * rng.uniform(0.3, 0.55)
        poly = np.array([(0, 0), (lx, 0), (lx, ly - ay), (lx - ax, ly - ay), (lx - ax, ly), (0, ly)])
        rects = [(0.0, 0.0, lx, ly - ay), (0.0, ly - ay, lx - ax, ly)]
    else:
        poly = np.array([(0, 0), (lx, 0), (lx, ly), (0, ly)])
        rects = [(0.0, 0.0, lx, ly)]
    return poly.astype(float), rects


@dataclass
class _WallSpan:
    """A wall edge ``a -> b`` (CCW, interior on the left) and the rectangles already used on it,
    as ``(s0, s1, z0, z1)``: distance along the wall and height range."""

    a: np.ndarray
    b: np.ndarray
    used: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def length(self) -> float:
        return float(np.linalg.norm(self.b - self.a))

    @property
    def direction(self) -> np.ndarray:
        return (self.b - self.a) / self.length

    @property
    def normal(self) -> np.ndarray:
        d = self.direction
        return np.array([-d[1], d[0]])

    def yaw(self) -> float:
        d = self.direction
        return math.atan2(d[1], d[0])

    def blocked(self, s0: float, s1: float, z0: float, z1: float) -> bool:
        """True when ``[s0, s1] x [z0, z1]`` overlaps something on the wall or leaves the wall."""
        if s0 < 0.05 or s1 > self.length - 0.05:
            return True
        return any(s0 < u1 and s1 > u0 and z0 < w1 and z1 > w0 for u0, u1, w0, w1 in self.used)


def _add_room(b: _Builder, rng: np.random.Generator, rects: list[tuple], height: float, walls: list[_WallSpan],
              window_prob: float) -> tuple[list[np.ndarray], tuple[_WallSpan, float, float]]:
    """Floor, ceiling, walls with a door and optional windows, baseboards.

    Returns target points and the door as ``(wall, s0, s1)``.
    """
    floor_m = _random_material(rng, "floor")
    b.add([((x0, y0, 0.0), np.array([x1 - x0, 0, 0.0]), np.array([0, y1 - y0, 0.0])) for x0, y0, x1, y1 in rects],
          [], floor_m)
    b.add([((x0, y0, height), np.array([0, y1 - y0, 0.0]), np.array([x1 - x0, 0, 0.0])) for x0, y0, x1, y1 in rects],
          [], _random_material(rng, "ceiling"))
    targets = []
    # Door on a random long-enough wall, windows on others.
    order = rng.permutation(len(walls))
    door_wall = next((walls[i] for i in order if walls[i].length > 1.6), walls[order[0]])
    dw = float(rng.uniform(0.8, 1.0))
    dh = float(rng.uniform(1.95, min(2.15, height - 0.15)))
    ds = float(rng.uniform(0.1, door_wall.length - dw - 0.1))
    door_wall.used.append((ds, ds + dw, 0.0, dh))
    windows: dict[int, tuple[float, float, float, float]] = {}
    if rng.random() < window_prob:
        for i in order:
            w = walls[i]
            if w is door_wall or w.length < 1.8 or rng.random() < 0.5:
                continue
            ww = float(rng.uniform(0.8, min(2.2, w.length - 0.6)))
            s0 = float(rng.uniform(0.3, w.length - ww - 0.3))
            z0 = float(rng.uniform(0.7, 1.0))
            z1 = float(min(height - 0.25, z0 + rng.uniform(0.9, 1.6)))
            windows[i] = (s0, s0 + ww, z0, z1)
            w.used.append((s0, s0 + ww, z0, z1))
    wall_m = _random_material(rng, "wall")
    accent = int(rng.integers(len(walls))) if rng.random() < 0.4 else -1
    accent_m = _random_material(rng, "wall")
    reveal_m = Material(PAINT, _hsv(rng, (0, 1), (0, 0.1), (0.75, 0.95)), scale=0.5)
    main_q, accent_q, reveal_q = [], [], []
    for i, w in enumerate(walls):
        a3, d3 = np.r_[w.a, 0.0], np.r_[w.direction, 0.0]
        L = w.length
        dest = accent_q if i == accent else main_q
        if i in windows:
            s0, s1, z0, z1 = windows[i]
            pieces = [(0.0, s0, 0.0, height), (s1, L, 0.0, height), (s0, s1, 0.0, z0), (s0, s1, z1, height)]
            depth = 0.15
            n3 = np.r_[w.normal, 0.0]
            for zz in (z0, z1):  # sill and lintel
                reveal_q.append((a3 + d3 * s0 + np.r_[0, 0, zz] - n3 * depth, d3 * (s1 - s0), n3 * depth))
            for ss in (s0, s1):  # jambs
                reveal_q.append((a3 + d3 * ss + np.r_[0, 0, z0] - n3 * depth, n3 * depth, np.r_[0, 0, z1 - z0]))
        else:
            pieces = [(0.0, L, 0.0, height)]
        for s0, s1, z0, z1 in pieces:
            if s1 - s0 > 1e-6 and z1 - z0 > 1e-6:
                dest.append((a3 + d3 * s0 + np.r_[0, 0, z0], np.array([0, 0, z1 - z0]), d3 * (s1 - s0)))
        for _ in range(3):
            s = rng.uniform(0.2, L - 0.2)
            z = rng.uniform(0.4, min(2.2, height - 0.2))
            targets.append(a3 + d3 * s + np.r_[0, 0, z])
    b.add(main_q, [], wall_m)
    if accent_q:
        b.add(accent_q, [], accent_m)
    if reveal_q:
        b.add(reveal_q, [], reveal_m)
    # Door leaf (1 cm proud of the wall) with a handle.
    n3, d3 = np.r_[door_wall.normal, 0.0], np.r_[door_wall.direction, 0.0]
    o = np.r_[door_wall.a, 0.0] + d3 * ds + n3 * 0.01
    b.add([(o, np.array([0, 0, dh]), d3 * dw)], [], _random_material(rng, "door"))
    handle_c = o + d3 * (dw - 0.1) + np.r_[0, 0, 1.0] + n3 * 0.04
    b.add([], _sphere_tris(0.03, handle_c, 6, 10), Material(PAINT, _hsv(rng, (0.1, 0.15), (0.0, 0.5), (0.5, 0.9))),
          mapping=MAP_SPHERE)
    targets.append(o + d3 * dw / 2 + np.r_[0, 0, 1.1])
    # Baseboards along walls, interrupted at the door.
    bh = float(rng.uniform(0.05, 0.12))
    bb_q = []
    for w in walls:
        n3, d3, a3 = np.r_[w.normal, 0.0], np.r_[w.direction, 0.0], np.r_[w.a, 0.0]
        spans = [(0.0, w.length)]
        if w is door_wall:
            spans = [(0.0, ds), (ds + dw, w.length)]
        for s0, s1 in spans:
            if s1 - s0 < 0.05:
                continue
            o = a3 + d3 * s0 + n3 * 0.015
            bb_q.append((o, np.array([0, 0, bh]), d3 * (s1 - s0)))
            bb_q.append((o + np.r_[0, 0, bh], d3 * (s1 - s0), -n3 * 0.015))
    b.add(bb_q, [], Material(PAINT, _hsv(rng, (0, 1), (0, 0.2), (0.2, 0.95)), scale=0.5))
    return targets, (door_wall, ds, ds + dw)
