"""Furniture-like objects (cabinets, shelves, tables, chairs, sofas, columns, balls, lamps, rugs,
small items) and posters, placed on a :class:`~pacegeo.data.synth.layout._Layout`."""

from __future__ import annotations

import numpy as np

from pacegeo.data.synth.geometry import (
    MAP_CYLINDER,
    MAP_SPHERE,
    _box_quads,
    _Builder,
    _cylinder_parts,
    _pose,
    _sphere_tris,
    _yaw_matrix,
)
from pacegeo.data.synth.layout import _footprint_mask, _Layout
from pacegeo.data.synth.materials import Material, _hsv, _poster_material, _random_material
from pacegeo.data.synth.room import _WallSpan
from pacegeo.data.synth.textures import NOISE, PAINT


class _ObjectMaker:
    """Adds furniture-like objects to a builder, keeping a layout of occupied floor cells."""

    def __init__(self, rng: np.random.Generator, b: _Builder, layout: _Layout, walls: list[_WallSpan],
                 height: float) -> None:
        self.rng, self.b, self.layout, self.walls, self.height = rng, b, layout, walls, height
        self.targets: list[np.ndarray] = []
        self.lamps: list[np.ndarray] = []

    # -- placement -------------------------------------------------------------------------
    def _against_wall(self, width: float, depth: float, top: float) -> tuple[np.ndarray, float] | None:
        lengths = np.array([w.length for w in self.walls])
        for _ in range(20):
            w = self.walls[int(self.rng.choice(len(self.walls), p=lengths / lengths.sum()))]
            if w.length < width + 0.2:
                continue
            s = float(self.rng.uniform(width / 2 + 0.06, w.length - width / 2 - 0.06))
            if w.blocked(s - width / 2, s + width / 2, 0.0, top):  # low furniture may stand under a window
                continue
            gap = float(self.rng.uniform(0.02, 0.08))
            centre = w.a + w.direction * s + w.normal * (depth / 2 + gap)
            if self.layout.fits(centre, np.array([width / 2, depth / 2]), w.yaw()):
                w.used.append((s - width / 2, s + width / 2, 0.0, top))
                return centre, w.yaw()
        return None

    def _anywhere(self, half: np.ndarray) -> tuple[np.ndarray, float] | None:
        ys, xs = np.nonzero(self.layout.inside & ~self.layout.occupied & ~self.layout.reserved)
        if len(xs) == 0:
            return None
        for _ in range(20):
            k = int(self.rng.integers(len(xs)))
            centre = self.layout.grid_xy[ys[k], xs[k]]
            yaw = float(self.rng.choice([0.0, np.pi / 2])) + float(self.rng.normal(0, 0.15))
            if self.layout.fits(centre, half, yaw):
                return centre, yaw
        return None

    def _commit(self, centre: np.ndarray, half: np.ndarray, yaw: float) -> bool:
        """Mark a footprint occupied unless that leaves too little free space for the camera."""
        m = _footprint_mask(self.layout.grid_xy, centre, half, yaw)
        trial = self.layout.occupied | m
        fs = self.layout.free_space(trial)
        if fs.free.sum() * self.layout.res ** 2 < 1.5:
            return False
        self.layout.occupied = trial
        return True

    # -- object kinds --------------------------------------------------------------------------
    def cabinet(self) -> None:
        w, d = self.rng.uniform(0.4, 2.0), self.rng.uniform(0.3, 0.7)
        h = self.rng.uniform(0.4, min(2.1, self.height - 0.3))
        spot = self._against_wall(w, d, h)
        if spot is None or not self._commit(spot[0], np.array([w / 2, d / 2]), spot[1]):
            return
        pose = _pose(*spot[0], 0.0, spot[1])
        self.b.add(_box_quads((w, d, h), (-w / 2, -d / 2, 0.0)), [], _random_material(self.rng, "furniture"), pose)
        if self.rng.random() < 0.6:  # doors/drawer fronts: thin panels on the room side
            m = _random_material(self.rng, "furniture")
            n = int(self.rng.integers(1, 4))
            quads = []
            for k in range(n):
                x0 = -w / 2 + 0.02 + k * (w - 0.04) / n
                quads += _box_quads(((w - 0.04) / n - 0.01, 0.015, h - 0.08), (x0, d / 2, 0.04))
            self.b.add(quads, [], m, pose)
        self.targets.append(np.r_[spot[0], h])
        self._maybe_small_items(spot[0], spot[1], w, d, h)

    def shelf(self) -> None:
        w, d = self.rng.uniform(0.6, 1.6), self.rng.uniform(0.25, 0.4)
        h = self.rng.uniform(1.0, min(2.2, self.height - 0.2))
        spot = self._against_wall(w, d, h)
        if spot is None or not self._commit(spot[0], np.array([w / 2, d / 2]), spot[1]):
            return
        pose = _pose(*spot[0], 0.0, spot[1])
        t = 0.025
        quads = _box_quads((t, d, h), (-w / 2, -d / 2, 0.0)) + _box_quads((t, d, h), (w / 2 - t, -d / 2, 0.0))
        quads += _box_quads((w, 0.01, h), (-w / 2, -d / 2, 0.0))
        n_boards = int(self.rng.integers(3, 6))
        levels = np.linspace(0.05, h - t, n_boards)
        for z in levels:
            quads += _box_quads((w - 2 * t, d, t), (-w / 2 + t, -d / 2, z), bottom=True)
        self.b.add(quads, [], _random_material(self.rng, "furniture"), pose)
        # Books: a few runs of thin boxes with their own colours.
        book_quads: list[list[tuple]] = [[] for _ in range(4)]
        for z0, z1 in zip(levels[:-1], levels[1:]):
            x = -w / 2 + t + 0.01
            while x < w / 2 - t - 0.05:
                bw = self.rng.uniform(0.02, 0.06)
                if self.rng.random() < 0.2:
                    x += bw * 2
                    continue
                bh = min(self.rng.uniform(0.15, 0.32), z1 - z0 - t - 0.02)
                bd = self.rng.uniform(0.15, d - 0.03)
                if bh > 0.05 and x + bw < w / 2 - t:
                    book_quads[int(self.rng.integers(4))] += _box_quads((bw, bd, bh), (x, d / 2 - bd - 0.01, z0 + t))
                x += bw + 0.002
        for q in book_quads:
            if q:
                self.b.add(q, [], _random_material(self.rng, "small"), pose)
        self.targets.append(np.r_[spot[0], h * 0.6])

    def table(self, against_wall: bool) -> None:
        w, d = self.rng.uniform(0.8, 2.0), self.rng.uniform(0.6, 1.0)
        h = self.rng.uniform(0.45, 0.8)
        half = np.array([w / 2, d / 2])
        spot = self._against_wall(w, d, h) if against_wall else self._anywhere(half)
        if spot is None or not self._commit(spot[0], half, spot[1]):
            return
        pose = _pose(*spot[0], 0.0, spot[1])
        t = self.rng.uniform(0.025, 0.05)
        quads = _box_quads((w, d, t), (-w / 2, -d / 2, h - t), bottom=True)
        tris: list[np.ndarray] = []
        leg = self.rng.uniform(0.035, 0.06)
        round_legs = self.rng.random() < 0.4
        for sx in (-1, 1):
            for sy in (-1, 1):
                cx, cy = sx * (w / 2 - leg * 1.5), sy * (d / 2 - leg * 1.5)
                if round_legs:
                    q, tr = _cylinder_parts(leg / 2, 0.0, h - t, 10, caps=False)
                    quads += [(o + np.array([cx, cy, 0]), e1, e2) for o, e1, e2 in q]
                else:
                    quads += _box_quads((leg, leg, h - t), (cx - leg / 2, cy - leg / 2, 0.0))
        self.b.add(quads, tris, _random_material(self.rng, "furniture"), pose)
        self.targets.append(np.r_[spot[0], h])
        self._maybe_small_items(spot[0], spot[1], w, d, h, p=0.85)
        if not against_wall and self.rng.random() < 0.6:
            for side in (-1, 1):
                if self.rng.random() < 0.7:
                    self.chair(spot[0] + _yaw_matrix(spot[1])[:2, :2] @ np.array([0.0, side * (d / 2 + 0.3)]),
                               spot[1] + (np.pi if side > 0 else 0.0))

    def chair(self, centre: np.ndarray, yaw: float) -> None:
        s = self.rng.uniform(0.38, 0.48)
        half = np.array([s / 2, s / 2])
        if not self.layout.fits(centre, half, yaw) or not self._commit(centre, half, yaw):
            return
        pose = _pose(*centre, 0.0, yaw)
        hs = self.rng.uniform(0.42, 0.48)
        quads = _box_quads((s, s, 0.04), (-s / 2, -s / 2, hs - 0.04), bottom=True)
        quads += _box_quads((s, 0.03, self.rng.uniform(0.35, 0.5)), (-s / 2, -s / 2, hs))
        for sx in (-1, 1):
            for sy in (-1, 1):
                leg_x, leg_y = sx * (s / 2 - 0.03) - 0.0175, sy * (s / 2 - 0.03) - 0.0175
                quads += _box_quads((0.035, 0.035, hs - 0.04), (leg_x, leg_y, 0))
        self.b.add(quads, [], _random_material(self.rng, "furniture"), pose)

    def sofa(self) -> None:
        w, d = self.rng.uniform(1.4, 2.2), self.rng.uniform(0.8, 1.0)
        spot = self._against_wall(w, d, 0.9)
        if spot is None or not self._commit(spot[0], np.array([w / 2, d / 2]), spot[1]):
            return
        pose = _pose(*spot[0], 0.0, spot[1])
        m = _random_material(self.rng, "furniture")
        hs = self.rng.uniform(0.38, 0.48)
        quads = _box_quads((w, d, hs), (-w / 2, -d / 2, 0.0))
        quads += _box_quads((w, 0.2, self.rng.uniform(0.75, 0.95)), (-w / 2, -d / 2, 0.0))
        for sx in (-1, 1):
            quads += _box_quads((0.18, d, hs + 0.2), (sx * (w / 2 - 0.09) - 0.09, -d / 2, 0.0))
        self.b.add(quads, [], m, pose)
        self.targets.append(np.r_[spot[0], hs])

    def column(self) -> None:
        r = self.rng.uniform(0.1, 0.35)
        h = self.rng.uniform(0.3, 1.3) if self.rng.random() < 0.7 else self.height
        spot = self._anywhere(np.array([r, r])) if self.rng.random() < 0.5 else self._against_wall(2 * r, 2 * r, h)
        if spot is None or not self._commit(spot[0], np.array([r, r]), 0.0):
            return
        pose = _pose(*spot[0], 0.0, 0.0)
        quads, tris = _cylinder_parts(r, 0.0, min(h, self.height), 24, caps=h < self.height)
        self.b.add(quads, tris, _random_material(self.rng, "furniture"), pose, MAP_CYLINDER)
        if h < self.height and self.rng.random() < 0.4:  # a "plant": sphere on a pot
            rs = r * self.rng.uniform(1.0, 1.8)
            self.b.add([], _sphere_tris(rs, (0.0, 0.0, h + rs * 0.8)),
                       Material(NOISE, _hsv(self.rng, (0.22, 0.4), (0.4, 0.8), (0.2, 0.6)),
                                _hsv(self.rng, (0.2, 0.4), (0.4, 0.9), (0.1, 0.4)), scale=0.08,
                                params=(1.2, 0.2, 0, 0), seed=int(self.rng.integers(1 << 16))), pose, MAP_SPHERE)
        self.targets.append(np.r_[spot[0], min(h, self.height) * 0.7])

    def ball(self) -> None:
        r = self.rng.uniform(0.1, 0.35)
        spot = self._anywhere(np.array([r, r]))
        if spot is None or not self._commit(spot[0], np.array([r, r]), 0.0):
            return
        self.b.add([], _sphere_tris(r, (0.0, 0.0, r)), _random_material(self.rng, "small"), _pose(*spot[0]),
                   MAP_SPHERE)
        self.targets.append(np.r_[spot[0], r])

    def floor_lamp(self) -> None:
        spot = self._anywhere(np.array([0.2, 0.2]))
        if spot is None or not self._commit(spot[0], np.array([0.2, 0.2]), 0.0):
            return
        h = self.rng.uniform(1.3, min(1.8, self.height - 0.4))
        pose = _pose(*spot[0])
        quads, tris = _cylinder_parts(0.18, 0.0, 0.03, 16)
        q2, _ = _cylinder_parts(0.015, 0.03, h, 8, caps=False)
        self.b.add(quads + q2, tris, Material(PAINT, _hsv(self.rng, (0, 1), (0, 0.3), (0.05, 0.6))), pose,
                   MAP_CYLINDER)
        q3, t3 = _cylinder_parts(self.rng.uniform(0.15, 0.25), h, h + 0.25, 20)
        self.b.add(q3, t3, _random_material(self.rng, "small"), pose, MAP_CYLINDER)
        self.lamps.append(np.r_[spot[0], h - 0.05])
        self.targets.append(np.r_[spot[0], h])

    def rug(self) -> None:
        half = np.array([self.rng.uniform(0.5, 1.5), self.rng.uniform(0.4, 1.0)])
        ys, xs = np.nonzero(self.layout.inside)
        k = int(self.rng.integers(len(xs)))
        centre = self.layout.grid_xy[ys[k], xs[k]]
        yaw = float(self.rng.choice([0.0, np.pi / 2]))
        if not self.layout.inside[_footprint_mask(self.layout.grid_xy, centre, half, yaw)].all():
            return
        quads = [(np.array([-half[0], -half[1], 0.006]), np.array([2 * half[0], 0, 0.0]),
                  np.array([0, 2 * half[1], 0.0]))]
        self.b.add(quads, [], _random_material(self.rng, "rug"), _pose(*centre, 0.0, yaw))

    def _maybe_small_items(self, centre: np.ndarray, yaw: float, w: float, d: float, top: float,
                           p: float = 0.5) -> None:
        if self.rng.random() > p:
            return
        pose = _pose(*centre, 0.0, yaw)
        for _ in range(int(self.rng.integers(1, 4))):
            x = self.rng.uniform(-w / 2 + 0.12, w / 2 - 0.12)
            y = self.rng.uniform(-d / 2 + 0.12, d / 2 - 0.12)
            kind = self.rng.integers(3)
            m = _random_material(self.rng, "small")
            if kind == 0:
                sx, sy, sz = self.rng.uniform(0.05, 0.22, size=3)
                self.b.add(_box_quads((sx, sy, sz), (x - sx / 2, y - sy / 2, top)), [], m, pose)
            elif kind == 1:
                r = self.rng.uniform(0.03, 0.1)
                q, t = _cylinder_parts(r, top, top + self.rng.uniform(0.06, 0.3), 16)
                q = [(o + np.array([x, y, 0]), e1, e2) for o, e1, e2 in q]
                t = [tt + np.array([x, y, 0]) for tt in t]
                self.b.add(q, t, m, pose @ _pose(0, 0), MAP_CYLINDER)
            else:
                r = self.rng.uniform(0.04, 0.1)
                self.b.add([], _sphere_tris(r, (x, y, top + r), 8, 12), m, pose, MAP_SPHERE)
            self.targets.append((pose @ np.r_[x, y, top + 0.05, 1.0])[:3])


def _add_posters(rng: np.random.Generator, b: _Builder, walls: list[_WallSpan], height: float, n: int) -> list:
    targets = []
    for _ in range(n):
        for _try in range(10):
            w = walls[int(rng.integers(len(walls)))]
            pw, ph = rng.uniform(0.3, 1.2), rng.uniform(0.3, 1.0)
            if w.length < pw + 0.3:
                continue
            s0 = rng.uniform(0.1, w.length - pw - 0.1)
            z0 = rng.uniform(0.9, max(0.95, height - ph - 0.25))
            if w.blocked(s0, s0 + pw, z0, z0 + ph):
                continue
            w.used.append((s0, s0 + pw, z0, z0 + ph))
            d3, n3 = np.r_[w.direction, 0.0], np.r_[w.normal, 0.0]
            corner = np.r_[w.a, 0.0] + d3 * s0 + n3 * 0.006 + np.r_[0, 0, z0]
            pose = _pose(*corner, yaw=w.yaw())  # local x along the wall, y into the room, z up
            mat = _poster_material(rng, pw, ph)
            b.add([(np.zeros(3), np.array([0, 0, ph]), np.array([pw, 0, 0.0]))], [], mat, pose)
            targets.append(corner + d3 * pw / 2 + np.r_[0, 0, ph / 2])
            break
    return targets
