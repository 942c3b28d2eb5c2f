"""A SynthRooms scene (:class:`Scene`) and its generator (:func:`make_scene`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pacegeo.data.synth.albedo import _material_tables
from pacegeo.data.synth.config import SynthConfig
from pacegeo.data.synth.geometry import _Builder, _Geometry
from pacegeo.data.synth.layout import FreeSpace, _footprint_mask, _Layout, _point_in_polygon
from pacegeo.data.synth.objects import _add_posters, _ObjectMaker
from pacegeo.data.synth.room import _add_room, _room_footprint, _WallSpan
from pacegeo.data.synth.textures import _TEX_NAMES
from pacegeo.errors import InputError
from pacegeo.extras import require

o3d = require("open3d", "SynthRooms rendering")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Photometric:
    noise_sigma: float  # in 8-bit levels
    blur: float  # 0..1 strength of a 3x3 blur
    vignette: float
    exposure: float
    white_balance: tuple[float, float, float]


@dataclass(eq=False)
class Scene:
    """A generated room. Build with :func:`make_scene`; render with :func:`render_frame`.

    Attributes:
        seed: the seed it was built from.
        config: generator parameters.
        fov_deg: horizontal field of view of this scene's camera.
        footprint: ``[P,2]`` floor polygon (counter-clockwise, metres).
        height: ceiling height.
        free_space: where the camera path may go.
        targets: ``[T,3]`` points worth looking at; ``target_weights`` ``[T]``.
        lights: ``[L,3]`` light positions; ``light_colors`` ``[L,3]`` intensities.
        ambient: ``[3]`` ambient light.
    """

    seed: int
    config: SynthConfig
    fov_deg: float
    footprint: np.ndarray
    height: float
    free_space: FreeSpace
    targets: np.ndarray
    target_weights: np.ndarray
    lights: np.ndarray
    light_colors: np.ndarray
    ambient: np.ndarray
    sky: tuple[np.ndarray, np.ndarray]
    photometric: _Photometric
    geometries: list[_Geometry] = field(repr=False)
    raycaster: o3d.t.geometry.RaycastingScene = field(repr=False)
    _tables: dict = field(default_factory=dict, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        """JSON-friendly description (written as ``synth_meta.json`` next to each scene)."""
        kinds = [_TEX_NAMES[g.material.kind] for g in self.geometries]
        return {
            "seed": self.seed,
            "fov_deg": round(self.fov_deg, 4),
            "room_height": round(self.height, 4),
            "footprint": np.round(self.footprint, 4).tolist(),
            "num_geometries": len(self.geometries),
            "num_lights": len(self.lights),
            "texture_counts": {k: kinds.count(k) for k in sorted(set(kinds))},
        }


def make_scene(seed: int, config: SynthConfig | None = None) -> Scene:
    """Build a random room from ``seed`` (deterministic: same seed and config, same scene)."""
    cfg = config or SynthConfig()
    rng = np.random.default_rng([int(seed), 0x5EED])
    poly, rects = _room_footprint(rng, cfg)
    height = float(rng.uniform(*cfg.room_height))
    walls = [_WallSpan(poly[i], poly[(i + 1) % len(poly)]) for i in range(len(poly))]
    b = _Builder()
    targets, (door_wall, ds, de) = _add_room(b, rng, rects, height, walls, cfg.window_prob)
    target_w = [1.0] * len(targets)

    res = 0.05
    xs = np.arange(-0.5, poly[:, 0].max() + 0.5 + 1e-9, res)
    ys = np.arange(-0.5, poly[:, 1].max() + 0.5 + 1e-9, res)
    grid_xy = np.stack(np.meshgrid(xs, ys), -1)
    layout = _Layout(grid_xy, _point_in_polygon(grid_xy, poly), np.zeros(grid_xy.shape[:2], bool),
                     np.zeros(grid_xy.shape[:2], bool), res, cfg.wall_margin)
    door_c = door_wall.a + door_wall.direction * (ds + de) / 2 + door_wall.normal * 0.5
    layout.reserved |= _footprint_mask(grid_xy, door_c, np.array([(de - ds) / 2 + 0.1, 0.5]), door_wall.yaw())

    maker = _ObjectMaker(rng, b, layout, walls, height)
    n_obj = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
    kinds = ["cabinet", "shelf", "wall_table", "table", "sofa", "column", "ball", "floor_lamp"]
    probs = np.array([0.22, 0.16, 0.1, 0.16, 0.08, 0.12, 0.08, 0.08])
    for _ in range(n_obj):
        kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
        if kind == "wall_table":
            maker.table(against_wall=True)
        elif kind == "table":
            maker.table(against_wall=False)
        else:
            getattr(maker, kind)()
    for _ in range(int(rng.integers(0, 3))):
        maker.rug()
    targets += maker.targets
    target_w += [3.0] * len(maker.targets)
    n_post = int(rng.integers(cfg.num_posters[0], cfg.num_posters[1] + 1))
    post_t = _add_posters(rng, b, walls, height, n_post)
    targets += post_t
    target_w += [3.0] * len(post_t)

    free = layout.free_space()
    if not free.free.any():
        raise InputError(f"scene {seed}: no free floor space for the camera; reduce SynthConfig.wall_margin")
    ys_f, xs_f = np.nonzero(free.free)
    for _ in range(6):  # a few floor points: looking down happens in real scans too
        k = int(rng.integers(len(xs_f)))
        targets.append(np.r_[grid_xy[ys_f[k], xs_f[k]], 0.0])
        target_w.append(0.5)

    # Lights: ceiling lights inside the room plus floor lamps.
    n_lights = int(rng.integers(cfg.num_lights[0], cfg.num_lights[1] + 1))
    inside_cells = grid_xy[layout.inside]
    lights = [np.r_[inside_cells[int(rng.integers(len(inside_cells)))], height - rng.uniform(0.15, 0.5)]
              for _ in range(max(1, n_lights - len(maker.lamps)))]
    lights += maker.lamps[: max(0, n_lights - len(lights))]
    warm = rng.uniform(-0.15, 0.15, size=(len(lights), 1))
    light_colors = rng.uniform(0.7, 1.3, size=(len(lights), 1)) * (1.0 + warm * np.array([1.0, 0.0, -1.0]))
    ambient = rng.uniform(0.12, 0.35) * (1.0 + rng.uniform(-0.05, 0.05, 3))
    sky = (np.array([0.95, 0.95, 1.0]) * rng.uniform(1.5, 3.0), np.array([0.45, 0.65, 1.0]) * rng.uniform(1.0, 2.0))
    photo = _Photometric(
        noise_sigma=float(rng.uniform(0.5, 3.0)) if cfg.photometric else 0.0,
        blur=float(rng.uniform(0.0, 1.0)) if cfg.photometric and rng.random() < 0.5 else 0.0,
        vignette=float(rng.uniform(0.0, 0.35)) if cfg.photometric else 0.0,
        exposure=float(rng.uniform(0.8, 1.25)) if cfg.photometric else 1.0,
        white_balance=tuple(float(x) for x in (1.0 + rng.uniform(-0.06, 0.06, 3))) if cfg.photometric
        else (1.0, 1.0, 1.0),
    )
    fov = float(rng.uniform(*cfg.fov))

    raycaster = o3d.t.geometry.RaycastingScene()
    for gi, g in enumerate(b.geoms):
        v, f = g.triangles()
        gid = raycaster.add_triangles(o3d.core.Tensor(v), o3d.core.Tensor(f))
        assert gid == gi, "raycasting geometry ids must follow insertion order"
    scene = Scene(
        seed=int(seed), config=cfg, fov_deg=fov, footprint=poly, height=height, free_space=free,
        targets=np.array(targets, float), target_weights=np.array(target_w, float),
        lights=np.array(lights, float), light_colors=light_colors.astype(np.float32),
        ambient=ambient.astype(np.float32), sky=sky, photometric=photo, geometries=b.geoms, raycaster=raycaster,
    )
    scene._tables.update(_material_tables(b.geoms))
    logger.debug("scene %d: %d geometries, %.1f m2 free", seed, len(b.geoms), free.free.sum() * res * res)
    return scene
