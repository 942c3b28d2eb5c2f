"""SynthRooms: procedurally generated indoor RGB-D scans with exact ground truth.

A scene is a closed room (rectangular or L-shaped) with furniture-like objects, posters, a door,
optional windows and rugs, every surface textured procedurally (wood, tiles, brick, noise, stripes,
text-like posters) and lit by 2-4 point lights. Frames are rendered by ray casting
(``open3d.t.geometry.RaycastingScene``) along a smooth hand-held-like camera path.

Conventions (shared with :mod:`pacegeo.data.frames`):

* world frame: metres, z up, floor at z = 0;
* cameras: OpenCV (x right, y down, z forward); poses are 4x4 camera-to-world;
* pixel ``(u, v)`` (column, row) has its centre at image coordinate ``(u, v)``: the rendered ray of
  pixel ``(u, v)`` is ``K^-1 @ [u, v, 1]``, so the default principal point is ``((W-1)/2, (H-1)/2)``;
* depth is z-depth in metres (float32), 0 where the ray leaves the room (windows).

In memory (training)::

    scene = make_scene(seed)
    poses = make_trajectory(scene, num_frames=64)           # [N,4,4] camera-to-world
    K = scene_intrinsics(scene, width, height)               # [3,3]
    rgb, depth = render_frame(scene, poses[0], K, width, height)

On disk (ScanNet raw layout): :func:`generate_dataset`.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import hsv_to_rgb
from PIL import Image, ImageFilter
from scipy import ndimage
from scipy.interpolate import CubicSpline, PchipInterpolator
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from pacegeo.errors import InputError, OutputError, option
from pacegeo.io.outputs import OutputSet, OutputSpec, describe_os_error
from pacegeo.extras import require
from pacegeo.options import check_count, check_seed

o3d = require("open3d", "SynthRooms rendering")

#: Limits of the generator's options (sides in pixels, frames per scene).
MIN_SIDE, MAX_SIDE, MAX_FRAMES, MAX_SCENES = 16, 4096, 100_000, 100_000

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_DEPTH_MM = 65535


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the scene and trajectory generator (all lengths in metres, angles in degrees).

    Attributes:
        room_side: range of each side of the room's bounding rectangle.
        room_height: range of the ceiling height.
        l_shape_prob: probability that the room is L-shaped rather than rectangular.
        window_prob: probability that a room has windows (holes that show the sky; depth 0 there).
        num_objects: range of the number of furniture-like objects.
        num_posters: range of the number of posters/pictures on the walls.
        num_lights: range of the number of point lights.
        fov: range of the horizontal field of view; drawn once per scene (set both ends equal
            to fix it).
        camera_height: range of the camera height above the floor.
        step: range of the camera translation per frame (drawn once per trajectory).
        max_turn_per_frame: rough bound on the mean view rotation per frame.
        max_roll: bound on the camera roll around the optical axis.
        wall_margin: minimum distance of the camera path from walls and objects.
        photometric: enable sensor effects (noise, mild blur, vignetting, exposure changes).
        mesh_spacing: maximum vertex spacing of the ground-truth mesh written next to a scene.
        mesh_observed_only: keep only mesh vertices seen (unoccluded) by at least one frame, like
            a scanned mesh; otherwise write the whole room.
        jpeg_quality: quality of the colour JPEGs.
    """

    room_side: tuple[float, float] = (3.0, 10.0)
    room_height: tuple[float, float] = (2.4, 3.5)
    l_shape_prob: float = 0.35
    window_prob: float = 0.5
    num_objects: tuple[int, int] = (6, 16)
    num_posters: tuple[int, int] = (1, 5)
    num_lights: tuple[int, int] = (2, 4)
    fov: tuple[float, float] = (50.0, 90.0)
    camera_height: tuple[float, float] = (1.0, 1.8)
    step: tuple[float, float] = (0.03, 0.07)
    max_turn_per_frame: float = 3.0
    max_roll: float = 4.0
    wall_margin: float = 0.45
    photometric: bool = True
    mesh_spacing: float = 0.04
    mesh_observed_only: bool = True
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        for name in ("room_side", "room_height", "num_objects", "num_posters", "num_lights", "fov",
                     "camera_height", "step"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise InputError(f"SynthConfig.{name} must be (low, high) with low <= high, got {(lo, hi)}")
        if not (1.0 <= self.fov[0] and self.fov[1] < 179.0):
            raise InputError(f"SynthConfig.fov must lie in [1, 179) degrees, got {self.fov}")
        if self.room_side[0] < 2.0 * self.wall_margin + 1.0:
            raise InputError("SynthConfig.room_side is too small for the camera margin")


# ----------------------------------------------------------------------------------------------
# Procedural textures
# ----------------------------------------------------------------------------------------------

PAINT, NOISE, WOOD, TILES, BRICK, STRIPES, POSTER = range(7)
_TEX_NAMES = ("paint", "noise", "wood", "tiles", "brick", "stripes", "poster")

_NOISE_RES = 256
_NOISE_FEATURE = 16.0  # table pixels per noise "feature" at the base octave


@lru_cache(maxsize=1)
def _noise_quads() -> np.ndarray:
    """``[65536,4]`` float32: the 2x2 neighbourhoods of a fixed 256x256 tileable noise in [0,1].

    Row ``y*256+x`` holds ``(n[y,x], n[y,x+1], n[y+1,x], n[y+1,x+1])`` (indices wrap), so one
    gather gives all four corners of a bilinear lookup.
    """
    rng = np.random.default_rng(20240611)
    acc = np.zeros((_NOISE_RES, _NOISE_RES))
    for sigma, weight in ((6.0, 0.55), (3.0, 0.25), (1.5, 0.13), (0.75, 0.07)):
        layer = ndimage.gaussian_filter(rng.standard_normal((_NOISE_RES, _NOISE_RES)), sigma, mode="wrap")
        acc += weight * layer / layer.std()
    acc = (acc - acc.mean()) / acc.std()
    n = np.clip(0.5 + 0.2 * acc, 0.0, 1.0)
    right = np.roll(n, -1, axis=1)
    quads = np.stack([n, right, np.roll(n, -1, axis=0), np.roll(right, -1, axis=0)], -1)
    return np.ascontiguousarray(quads.reshape(-1, 4), dtype=np.float32)


@lru_cache(maxsize=1)
def _rand_table() -> np.ndarray:
    """``[65536]`` float32 uniform random values, indexed by hashed lattice cells."""
    return np.random.default_rng(977).random(65536).astype(np.float32)


def _cell_index(x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
    """``[n]`` int32 index ``(y mod 256) * 256 + (x mod 256)`` of integral float coordinates."""
    idx = np.asarray(y0).astype(np.int32)
    idx &= 255
    idx <<= 8
    idx |= np.asarray(x0).astype(np.int32) & 255
    return idx


def _noise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinearly interpolated tileable noise in [0,1] at ``[n]`` coordinates given in noise features."""
    x = x * np.float32(_NOISE_FEATURE)
    y = y * np.float32(_NOISE_FEATURE)
    x0 = np.floor(x)
    y0 = np.floor(y)
    x -= x0
    y -= y0
    q = np.take(_noise_quads(), _cell_index(x0, y0), axis=0)
    top = q[:, 1] - q[:, 0]
    top *= x
    top += q[:, 0]
    bot = q[:, 3] - q[:, 2]
    bot *= x
    bot += q[:, 2]
    bot -= top
    bot *= y
    bot += top
    return bot


def _cell_rand(x0: np.ndarray, y0: np.ndarray | int, salt: np.ndarray | int) -> np.ndarray:
    """Pseudo-random float32 in [0,1) per integer lattice cell ``(x0, y0)`` (period 256), per ``salt``."""
    idx = _cell_index(x0, np.broadcast_to(y0, np.shape(x0)))
    idx += salt
    idx &= 65535
    return np.take(_rand_table(), idx)


def _blend(c0: np.ndarray, c1: np.ndarray, t: np.ndarray, brightness: np.ndarray) -> np.ndarray:
    """``[3,n]`` colour ``((1-t) c0 + t c1) * brightness`` for ``[n]`` weights ``t`` and ``brightness``."""
    k1 = t * brightness
    k0 = brightness - k1
    out = c0 * k0
    out += c1 * k1
    return out


@dataclass(frozen=True)
class _Groups:
    """Samples sorted by (texture kind, geometry id), ray misses last.

    ``order`` ``[n]`` holds the original index of each sorted sample; sorted samples
    ``bounds[i]:bounds[i+1]`` lie on geometry ``gids[i]``; ``hits = bounds[-1]`` samples lie on
    some geometry, the remaining ``n - hits`` are misses.
    """

    order: np.ndarray
    gids: np.ndarray
    bounds: np.ndarray

    @property
    def hits(self) -> int:
        return int(self.bounds[-1])

    def expand(self, values: np.ndarray, runs: slice = slice(None), share: bool = False) -> np.ndarray:
        """Per-geometry ``values`` (last axis indexed by geometry id) repeated over the sorted
        samples of ``runs`` (a slice of the geometry runs); with ``share``, a single geometry's
        values are broadcast instead (a read-only view)."""
        lo, hi, _ = runs.indices(len(self.gids))
        v = np.take(values, self.gids[lo:hi], axis=-1)
        if share and hi - lo == 1:
            return np.broadcast_to(v, v.shape[:-1] + (int(self.bounds[hi] - self.bounds[lo]),))
        return np.repeat(v, np.diff(self.bounds[lo:hi + 1]), axis=-1)


class _TexArgs:
    """Texture parameters of a run of grouped samples (see :class:`_Groups`), expanded per sample
    on first use: colours ``c0``, ``c1``, ``c2`` ``[3,n]`` (channel-planar), ``inv_scale`` ``[n]``
    (1/m), params ``p`` ``[4,n]``, ``salt`` ``[n]`` int32 (decorrelates the random lattice per
    material); ``footprint`` ``[n]`` is the pixel size (m) on the surface. Read-only arrays."""

    def __init__(self, tables: dict, groups: _Groups, runs: slice, footprint: np.ndarray) -> None:
        self._tables, self._groups, self._runs = tables, groups, runs
        self.footprint = footprint

    def _expand(self, values: np.ndarray) -> np.ndarray:
        return self._groups.expand(values, self._runs, share=True)

    @cached_property
    def c0(self) -> np.ndarray:
        return self._expand(self._tables["c"][0])

    @cached_property
    def c1(self) -> np.ndarray:
        return self._expand(self._tables["c"][1])

    @cached_property
    def c2(self) -> np.ndarray:
        return self._expand(self._tables["c"][2])

    @cached_property
    def inv_scale(self) -> np.ndarray:
        return self._expand(self._tables["inv_scale"])

    @cached_property
    def p(self) -> np.ndarray:
        return self._expand(self._tables["p"])

    @cached_property
    def salt(self) -> np.ndarray:
        return self._expand(self._tables["salt"])


def _line_weight(mask: np.ndarray, width: np.ndarray, coverage: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Anti-aliased weight ``[n]`` of thin line features (grout, mortar, seams).

    ``mask`` is the exact point-sampled line mask, ``width`` the line width (m), ``coverage`` the
    fraction of the surface the lines cover. Once a pixel's ``footprint`` (m) exceeds the line width,
    the weight fades from the mask to the mean coverage, which avoids moire at a distance.
    """
    s = footprint / np.maximum(width, 1e-4)
    s -= 1.0
    np.clip(s, 0.0, 1.0, out=s)
    w = mask.astype(np.float32)
    w -= coverage
    w *= 1.0 - s
    w += coverage
    return w


def _mix_where(col: np.ndarray, c2: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``col + (c2 - col) * weight`` for ``[3,n]`` colours and ``[n]`` weights (in place)."""
    d = c2 - col
    d *= weight
    col += d
    return col


def _tex_paint(u: np.ndarray, v: np.ndarray, a: _TexArgs) -> np.ndarray:
    """Flat colour with faint mottling."""
    b = _noise(u * a.inv_scale, v * a.inv_scale)
    b *= 0.16
    b += 0.92
    return a.c0 * b


def _tex_noise(u: np.ndarray, v: np.ndarray, a: _TexArgs) -> np.ndarray:
    """Two-colour fractal noise (concrete, carpet, marble-ish) with fine speckle."""
    x, y = u * a.inv_scale, v * a.inv_scale
    t = _noise(x, y)
    t -= 0.5
    t *= a.p[0] * 2.5
    t += 0.5
    np.clip(t, 0.0, 1.0, out=t)
    speck = _noise(x * 9.1, y * 9.1)
    speck -= 0.5
    speck *= a.p[1] * 2.0
    speck += 1.0
    return _blend(a.c0, a.c1, t, speck)


def _tex_wood(u: np.ndarray, v: np.ndarray, a: _TexArgs) -> np.ndarray:
    """Staggered planks (width = scale, length = p0) with grain rings (frequency p1) and seams."""
    row_f = v * a.inv_scale
    row = np.floor(row_f)
    fv = row_f - row
    plank_f = u / a.p[0] + _cell_rand(row, 0, a.salt)
    plank = np.floor(plank_f)
    fu = plank_f - plank
    r = _cell_rand(plank, row, a.salt + 1)
    grain = _noise(u * 1.5 + r * 40.0, fv * 1.5 + row * 3.7)
    rings = np.sin((fv * a.p[1] + 3.0 * grain) * np.float32(2 * np.pi))
    t = rings * 0.275
    t += 0.275 + 0.6 * (grain - 0.3)
    np.clip(t, 0.0, 1.0, out=t)
    b = 0.82 + 0.36 * r
    seam = (fv < 0.035) | (fv > 0.965) | (fu < 0.012)
    b *= 1.0 - 0.5 * _line_weight(seam, 0.07 / a.inv_scale, np.float32(0.08), a.footprint)
    return _blend(a.c0, a.c1, t, b)


def _tex_tiles(u: np.ndarray, v: np.ndarray, a: _TexArgs) -> np.ndarray:
    """Square tiles (size = scale) with grout (width p0, colour c2), colour jitter p1, checker if p2."""
    x = u * a.inv_scale
    y = v * a.inv_scale
    ix = np.floor(x)
    iy = np.floor(y)
    x -= ix
    y -= iy
    t = _cell_rand(ix, iy, a.salt)
    t *= a.p[1]
    parity = (ix.astype(np.int32) + iy.astype(np.int32)) & 1
    np.copyto(t, np.float32(1.0), where=(parity == 1) & (a.p[2] > 0.5))
    b = _noise(u * 3.1, v * 3.1)
    b *= 0.12
    b += 0.94
    col = _blend(a.c0, a.c1, t, b)
    g = a.p[0]
    grout = (x < g) | (y < g) | (x > 1 - g) | (y > 1 - g)
    return _mix_where(col, a.c2, _line_weight(grout, 2 * g / a.inv_scale, 4 * g, a.footprint))


def _tex_brick(u: np.ndarray, v: np.ndarray, a: _TexArgs) -> np.ndarray:
    """Running-bond bricks (row height = scale, length/height = p1) with mortar (p0, colour c2)."""
    y = v * a.inv_scale
    row = np.floor(y)
    y -= row
    x = u * a.inv_scale / a.p[1]
    x += 0.5 * (row.astype(np.int32) & 1)
    ix = np.floor(x)
    x -= ix
    t = _cell_rand(ix, row, a.salt)
    b = _noise(u * a.inv_scale * 0.8, v * a.inv_scale * 0.8)
    b *= 0.3
    b += 0.85
    col = _blend(a.c0, a.c1, t, b)
    m = a.p[0]
    mortar = (y < m) | (x * a.p[1] < m)
    return _mix_where(col, a.c2, _line_weight(mortar, m / a.inv_scale, 1.4 * m, a.footprint))


def _tex_stripes(u: np.ndarray, v: np.ndarray, a: _TexArgs) -> np.ndarray:
    """Stripes across u (period = scale, duty p0) with a thin accent stripe (width p1, colour c2)."""
    f = u * a.inv_scale
    f -= np.floor(f)
    period = 1.0 / a.inv_scale
    duty = a.p[0]
    t = _line_weight(f >= duty, 0.5 * period, 1.0 - duty, a.footprint)
    b = _noise(u * 2.3, v * 2.3)
    b *= 0.1
    b += 0.95
    col = _blend(a.c0, a.c1, t, b)
    accent = np.abs(f - duty * 0.5) < a.p[1] * 0.5
    return _mix_where(col, a.c2, _line_weight(accent, a.p[1] * period, a.p[1], a.footprint))


def _tex_poster(u: np.ndarray, v: np.ndarray, a: _TexArgs) -> np.ndarray:
    """Poster of size ``p0 x p1`` (uv from its lower-left corner): frame, picture, text-like lines."""
    w, h = a.p[0], a.p[1]
    s = u / w
    t = 1.0 - v / h  # 0 at the top
    col = a.c0.copy()
    # A picture block in the upper part: a smooth two-colour "photo".
    pic_bottom = 0.1 + 0.45 * (a.p[2] + 0.2)
    pic = np.flatnonzero((s > 0.1) & (s < 0.9) & (t > 0.1) & (t < pic_bottom))
    if len(pic):
        n = _noise(u[pic] * 4.0 + a.salt[pic] * 0.01, v[pic] * 4.0)
        n -= 0.3
        n *= 2.5
        np.clip(n, 0.0, 1.0, out=n)
        col[:, pic] = _blend(a.c1[:, pic], a.c2[:, pic], n, np.ones_like(n))
    # Text-like lines below: 3x5-bit glyphs, ragged line ends, gaps between words.
    text_top = pic_bottom + 0.05
    line_h = 0.055
    txt = np.flatnonzero((s > 0.1) & (s < 0.9) & (t > text_top) & (t < 0.92))
    if len(txt):
        ss, tt, salt = s[txt], t[txt] - text_top[txt], a.salt[txt]
        line = np.floor(tt / line_h)
        ly = tt / line_h - line
        char_w = line_h * 0.55 * (h[txt] / w[txt])
        cx = (ss - 0.1) / char_w
        ch = np.floor(cx)
        fx = cx - ch
        line_len = 0.8 / char_w * (0.3 + 0.7 * _cell_rand(line, 7, salt))
        word_gap = _cell_rand(ch, line, salt + 3) < 0.18
        bx = np.floor(fx * 4.0)  # 3 glyph columns + 1 spacing column
        by = np.floor(ly * 7.0) - 1.0  # 5 glyph rows with a row of leading above and below
        bit = _cell_rand(ch * 16 + bx * 5 + by, line, salt + 5) < 0.55
        ink = bit & (bx < 3) & (by >= 0) & (by < 5) & ~word_gap & (ch < line_len)
        idx = txt[ink]
        bg = a.c0[:, idx]
        dark_bg = (0.2126 * bg[0] + 0.7152 * bg[1] + 0.0722 * bg[2]) < 0.25
        ink_col = bg * 0.08
        ink_col[:, dark_bg] = 0.85
        col[:, idx] = ink_col
    border = 0.025
    frame = (s < border) | (s > 1 - border) | (t < border * w / h) | (t > 1 - border * w / h)
    col[:, frame] = a.c2[:, frame] * 0.3
    return col


_TEXTURES = (_tex_paint, _tex_noise, _tex_wood, _tex_tiles, _tex_brick, _tex_stripes, _tex_poster)


@dataclass(frozen=True)
class Material:
    """A procedural texture: ``kind`` is one of PAINT..POSTER; colours are sRGB in [0,1]."""

    kind: int
    c0: tuple[float, float, float]
    c1: tuple[float, float, float] = (0.5, 0.5, 0.5)
    c2: tuple[float, float, float] = (0.5, 0.5, 0.5)
    scale: float = 0.5
    params: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    seed: int = 0
    swap_uv: bool = False
    uv_offset: tuple[float, float] = (0.0, 0.0)


def _hsv(rng: np.random.Generator, h: tuple[float, float], s: tuple[float, float],
         v: tuple[float, float]) -> tuple[float, float, float]:
    """Random sRGB colour with hue/saturation/value drawn from the given ranges (hue in turns)."""
    hsv = np.array([rng.uniform(*h) % 1.0, rng.uniform(*s), rng.uniform(*v)])
    return tuple(float(c) for c in hsv_to_rgb(hsv))


def _any_colour(rng: np.random.Generator, s=(0.2, 0.85), v=(0.25, 0.95)) -> tuple[float, float, float]:
    return _hsv(rng, (0.0, 1.0), s, v)


def _darker(c: tuple[float, float, float], f: float) -> tuple[float, float, float]:
    return tuple(float(x * f) for x in c)


def _random_material(rng: np.random.Generator, role: str) -> Material:
    """Draw a material suited to a surface ``role`` (wall, floor, ceiling, furniture, ...)."""
    kinds: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {
        "wall": ((PAINT, STRIPES, NOISE, BRICK, TILES, WOOD), (0.4, 0.15, 0.17, 0.12, 0.06, 0.1)),
        "floor": ((WOOD, TILES, NOISE), (0.45, 0.3, 0.25)),
        "ceiling": ((PAINT, TILES, NOISE), (0.6, 0.3, 0.1)),
        "furniture": ((WOOD, PAINT, NOISE, STRIPES, TILES), (0.35, 0.3, 0.2, 0.1, 0.05)),
        "small": ((PAINT, STRIPES, TILES, NOISE, WOOD), (0.4, 0.2, 0.15, 0.15, 0.1)),
        "rug": ((STRIPES, TILES, NOISE), (0.4, 0.3, 0.3)),
        "door": ((WOOD, PAINT), (0.5, 0.5)),
    }
    choices, probs = kinds[role]
    kind = int(rng.choice(choices, p=np.array(probs) / sum(probs)))
    seed = int(rng.integers(0, 1 << 16))
    offset = (float(rng.uniform(0, 50)), float(rng.uniform(0, 50)))
    light = role in ("wall", "ceiling")
    if kind == WOOD:
        base = _hsv(rng, (0.05, 0.11), (0.35, 0.75), (0.3, 0.8))
        c1 = _darker(base, rng.uniform(0.45, 0.75))
        width = rng.uniform(0.08, 0.22) if role in ("floor", "wall") else rng.uniform(0.2, 0.6)
        return Material(WOOD, base, c1, scale=width, seed=seed, uv_offset=offset, swap_uv=bool(rng.random() < 0.5),
                        params=(rng.uniform(0.6, 1.6), rng.uniform(2.0, 7.0), 0.0, 0.0))
    if kind == TILES:
        c0 = _hsv(rng, (0, 1), (0.0, 0.5), (0.55, 0.95)) if light else _any_colour(rng)
        c1 = _any_colour(rng) if rng.random() < 0.5 else _darker(c0, rng.uniform(0.6, 0.9))
        grout = _hsv(rng, (0, 1), (0.0, 0.1), (0.3, 0.9))
        size = rng.uniform(0.45, 0.65) if role == "ceiling" else rng.uniform(0.1, 0.6)
        return Material(TILES, c0, c1, grout, scale=size, seed=seed, uv_offset=offset,
                        params=(rng.uniform(0.015, 0.06), rng.uniform(0.0, 0.5), float(rng.random() < 0.3), 0.0))
    if kind == BRICK:
        c0 = _hsv(rng, (-0.02, 0.08), (0.3, 0.7), (0.35, 0.75)) if rng.random() < 0.7 else \
            _hsv(rng, (0, 1), (0.0, 0.15), (0.4, 0.9))
        c1 = _darker(c0, rng.uniform(0.6, 0.85))
        mortar = _hsv(rng, (0, 1), (0.0, 0.1), (0.55, 0.9))
        return Material(BRICK, c0, c1, mortar, scale=rng.uniform(0.06, 0.1), seed=seed, uv_offset=offset,
                        params=(rng.uniform(0.08, 0.16), rng.uniform(2.4, 3.4), 0.0, 0.0))
    if kind == STRIPES:
        c0 = _hsv(rng, (0, 1), (0.0, 0.4), (0.6, 0.95)) if light else _any_colour(rng)
        c1 = _any_colour(rng) if rng.random() < 0.6 else _darker(c0, rng.uniform(0.7, 0.9))
        return Material(STRIPES, c0, c1, _any_colour(rng), scale=rng.uniform(0.04, 0.4), seed=seed, uv_offset=offset,
                        params=(rng.uniform(0.25, 0.75), rng.uniform(0.0, 0.12), float(rng.random() < 0.4), 0.0))
    if kind == NOISE:
        c0 = _hsv(rng, (0, 1), (0.0, 0.35), (0.5, 0.95)) if light else _any_colour(rng)
        c1 = _darker(c0, rng.uniform(0.4, 0.85)) if rng.random() < 0.6 else _any_colour(rng)
        contrast = rng.uniform(0.25, 0.8) if light else rng.uniform(0.4, 1.5)
        return Material(NOISE, c0, c1, scale=rng.uniform(0.05, 0.8), seed=seed, uv_offset=offset,
                        params=(contrast, rng.uniform(0.0, 0.3), 0.0, 0.0))
    # PAINT
    if role == "ceiling":
        c0 = _hsv(rng, (0, 1), (0.0, 0.08), (0.8, 0.97))
    elif role == "wall":
        c0 = _hsv(rng, (0, 1), (0.0, 0.35), (0.55, 0.95)) if rng.random() < 0.75 else _any_colour(rng)
    else:
        c0 = _any_colour(rng)
    return Material(PAINT, c0, scale=rng.uniform(0.2, 1.0), seed=seed, uv_offset=offset)


def _poster_material(rng: np.random.Generator, width: float, height: float) -> Material:
    bg = _hsv(rng, (0, 1), (0.0, 0.6), (0.2, 0.97))
    return Material(POSTER, bg, _any_colour(rng), _any_colour(rng), scale=1.0, seed=int(rng.integers(0, 1 << 16)),
                    params=(width, height, float(rng.uniform(0.0, 0.8)), 0.0))


# ----------------------------------------------------------------------------------------------
# Geometry: a scene is a set of geometries (raycasting ids), each made of quads and triangles
# ----------------------------------------------------------------------------------------------

MAP_TRIPLANAR, MAP_CYLINDER, MAP_SPHERE = range(3)


@dataclass
class _Geometry:
    """One raycasting geometry: quads ``(o, e1, e2)`` ``[Q,3]`` each, triangles ``[T,3,3]`` (world)."""

    quads: tuple[np.ndarray, np.ndarray, np.ndarray]
    tris: np.ndarray
    material: Material
    R: np.ndarray  # [3,3] world -> texture frame rotation
    origin: np.ndarray  # [3] texture frame origin (world)
    mapping: int = MAP_TRIPLANAR

    def triangles(self) -> tuple[np.ndarray, np.ndarray]:
        """``(vertices [V,3] float32, faces [F,3] uint32)`` of the render mesh."""
        o, e1, e2 = self.quads
        quad_v = np.stack([o, o + e1, o + e1 + e2, o + e2], axis=1).reshape(-1, 3)
        q = np.arange(len(o))[:, None] * 4
        quad_f = np.concatenate([q + np.array([0, 1, 2]), q + np.array([0, 2, 3])], axis=0)
        tri_v = self.tris.reshape(-1, 3)
        tri_f = len(quad_v) + np.arange(len(tri_v)).reshape(-1, 3)
        verts = np.concatenate([quad_v, tri_v]).astype(np.float32)
        faces = np.concatenate([quad_f, tri_f]).astype(np.uint32)
        return verts, faces


def _yaw_matrix(yaw: float) -> np.ndarray:
    return Rotation.from_euler("z", yaw).as_matrix()


def _box_quads(size: Sequence[float], corner: Sequence[float], bottom: bool = False) -> list[tuple]:
    """Quads ``(o, e1, e2)`` of an axis-aligned box (local frame), outward normals ``e1 x e2``."""
    sx, sy, sz = size
    x0, y0, z0 = corner
    x1, y1, z1 = x0 + sx, y0 + sy, z0 + sz
    X, Y, Z = np.array([sx, 0, 0]), np.array([0, sy, 0]), np.array([0, 0, sz])
    quads = [
        ((x0, y0, z1), X, Y),  # top
        ((x0, y0, z0), X, Z),  # -y
        ((x0, y1, z0), Z, X),  # +y
        ((x0, y0, z0), Z, Y),  # -x
        ((x1, y0, z0), Y, Z),  # +x
    ]
    if bottom:
        quads.append(((x0, y0, z0), Y, X))
    return [(np.asarray(o, float), e1.astype(float), e2.astype(float)) for o, e1, e2 in quads]


def _cylinder_parts(radius: float, z0: float, z1: float, segments: int = 24,
                    caps: bool = True) -> tuple[list[tuple], list[np.ndarray]]:
    """Side quads and top-cap triangles of a vertical cylinder around the local z axis."""
    ang = np.linspace(0, 2 * np.pi, segments + 1)
    ring = np.stack([radius * np.cos(ang), radius * np.sin(ang)], 1)
    quads = []
    for k in range(segments):
        a, b = ring[k], ring[k + 1]
        quads.append((np.array([a[0], a[1], z0]), np.array([b[0] - a[0], b[1] - a[1], 0.0]),
                      np.array([0.0, 0.0, z1 - z0])))
    tris = []
    if caps:
        c = np.array([0.0, 0.0, z1])
        for k in range(segments):
            tris.append(np.stack([c, np.r_[ring[k], z1], np.r_[ring[k + 1], z1]]))
    return quads, tris


def _sphere_tris(radius: float, centre: Sequence[float], rings: int = 12, segments: int = 24) -> np.ndarray:
    """``[T,3,3]`` outward-facing triangles of a UV sphere."""
    th = np.linspace(0, np.pi, rings + 1)
    ph = np.linspace(0, 2 * np.pi, segments + 1)
    T, P = np.meshgrid(th, ph, indexing="ij")
    pts = radius * np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], -1) + np.asarray(centre)
    a, b, c, d = pts[:-1, :-1], pts[1:, :-1], pts[1:, 1:], pts[:-1, 1:]
    upper = np.stack([a, b, d], 2)[1:].reshape(-1, 3, 3)  # no degenerate triangles at the poles
    lower = np.stack([b, c, d], 2)[:-1].reshape(-1, 3, 3)
    tris = np.concatenate([upper, lower])
    n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    inward = np.einsum("ij,ij->i", n, tris.mean(1) - np.asarray(centre)) < 0
    tris[inward] = tris[inward][:, [0, 2, 1]]
    return tris


@dataclass
class _Builder:
    """Collects geometries in world coordinates."""

    geoms: list[_Geometry] = field(default_factory=list)

    def add(self, quads: list[tuple], tris: list[np.ndarray] | np.ndarray, material: Material,
            pose: np.ndarray | None = None, mapping: int = MAP_TRIPLANAR) -> None:
        """Add parts given in a local frame: quads ``(o, e1, e2)`` and triangles (``[3,3]`` each or
        ``[T,3,3]``); ``pose`` is a ``[4,4]`` local-to-world transform."""
        T = np.eye(4) if pose is None else pose
        R, t = T[:3, :3], T[:3, 3]
        if quads:
            o = np.stack([q[0] for q in quads]) @ R.T + t
            e1 = np.stack([q[1] for q in quads]) @ R.T
            e2 = np.stack([q[2] for q in quads]) @ R.T
        else:
            o = e1 = e2 = np.zeros((0, 3))
        if isinstance(tris, np.ndarray):
            tri = tris.reshape(-1, 3, 3)
        else:
            parts = [np.asarray(x, float).reshape(-1, 3, 3) for x in tris]
            tri = np.concatenate(parts) if parts else np.zeros((0, 3, 3))
        tri = tri @ R.T + t
        self.geoms.append(_Geometry((o, e1, e2), tri, material, R.T.copy(), t.copy(), mapping))


def _pose(x: float, y: float, z: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = _yaw_matrix(yaw)
    T[:3, 3] = (x, y, z)
    return T


# ----------------------------------------------------------------------------------------------
# Scene
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FreeSpace:
    """Where the camera may go: a 2D grid over the floor.

    ``free[i, j]`` is True when cell centre ``origin + res * (j, i)`` (x, y) is inside the room,
    at least ``wall_margin`` away from walls and objects, and in the largest such region.
    ``clearance`` holds the distance (m) to the nearest wall or object; ``reachable`` marks cells
    connected to the free region without touching an obstacle (used to relax the margin slightly).
    """

    free: np.ndarray
    clearance: np.ndarray
    origin: tuple[float, float]
    res: float
    margin: float
    reachable: np.ndarray

    def cell(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices ``[n]`` of points ``[n,2]`` (clipped to the grid)."""
        j = np.clip(np.rint((xy[:, 0] - self.origin[0]) / self.res), 0, self.free.shape[1] - 1).astype(int)
        i = np.clip(np.rint((xy[:, 1] - self.origin[1]) / self.res), 0, self.free.shape[0] - 1).astype(int)
        return i, j

    def is_free(self, xy: np.ndarray, slack: float = 0.0) -> np.ndarray:
        """``[n]`` bool: points ``[n,2]`` lie in the free region (clearance relaxed by ``slack``)."""
        i, j = self.cell(xy)
        return self.free[i, j] | ((self.clearance[i, j] >= self.margin - slack) & self.reachable[i, j])

    def centres(self) -> np.ndarray:
        """``[n,2]`` xy of the free cells."""
        i, j = np.nonzero(self.free)
        return np.stack([self.origin[0] + j * self.res, self.origin[1] + i * self.res], 1)


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


def _footprint_mask(grid_xy: np.ndarray, centre: np.ndarray, half: np.ndarray, yaw: float,
                    pad: float = 0.0) -> np.ndarray:
    """Cells (``[...,2]`` xy) inside an oriented rectangle grown by ``pad``."""
    c, s = math.cos(yaw), math.sin(yaw)
    d = grid_xy - centre
    lx = d[..., 0] * c + d[..., 1] * s
    ly = -d[..., 0] * s + d[..., 1] * c
    return (np.abs(lx) <= half[0] + pad) & (np.abs(ly) <= half[1] + pad)


@dataclass
class _Layout:
    """Occupancy bookkeeping while placing objects."""

    grid_xy: np.ndarray  # [H,W,2] cell centres
    inside: np.ndarray  # [H,W] inside the room polygon
    occupied: np.ndarray  # [H,W] covered by objects
    reserved: np.ndarray  # [H,W] kept clear of furniture (in front of the door)
    res: float
    margin: float

    def fits(self, centre: np.ndarray, half: np.ndarray, yaw: float) -> bool:
        m = _footprint_mask(self.grid_xy, centre, half, yaw, pad=0.02)
        if not m.any():
            return False
        return bool(self.inside[m].all() and not (self.occupied[m] | self.reserved[m]).any())

    def free_space(self, occupied: np.ndarray | None = None) -> FreeSpace:
        occ = (self.occupied if occupied is None else occupied) | ~self.inside
        clearance = ndimage.distance_transform_edt(~occ) * self.res
        ok = clearance >= self.margin
        labels, n = ndimage.label(ok)
        if n == 0:
            comp = ok
        else:
            sizes = ndimage.sum(ok, labels, index=np.arange(1, n + 1))
            comp = labels == (1 + int(np.argmax(sizes)))
        region, _ = ndimage.label(clearance > 0.05)
        # The slack region: anything connected to the main component without touching obstacles.
        comp_grown = np.isin(region, np.unique(region[comp])) if comp.any() else comp
        origin = (float(self.grid_xy[0, 0, 0]), float(self.grid_xy[0, 0, 1]))
        return FreeSpace(comp, clearance, origin, self.res, self.margin, comp_grown)


def _point_in_polygon(xy: np.ndarray, poly: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path as MplPath

    shape = xy.shape[:-1]
    return MplPath(poly).contains_points(xy.reshape(-1, 2)).reshape(shape)


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


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.power(np.clip(c, 0.0, 1.0), 2.2)


def _material_tables(geoms: list[_Geometry]) -> dict[str, np.ndarray]:
    """Per-geometry arrays used to texture hit points without a Python loop over pixels.

    Texture frames are rotations about the world z axis (``cos``/``sin`` of their yaw, origin
    ``ox, oy, oz``); the random texture offset of box-like (triplanar) geometries is folded into
    their frame origin. Colours ``c`` are ``[3,3,G]`` (colour slot, channel, geometry) and params
    ``p`` ``[4,G]``, so that a row expands straight into a channel-planar per-sample array.
    ``rank`` ``[G+1]`` orders geometries by texture kind (then id) and maps ids past the last
    geometry (ray misses) to ``G``; ``by_rank`` is its inverse.
    """
    mats = [g.material for g in geoms]
    R = np.array([g.R for g in geoms], np.float64)  # world -> local
    if not np.allclose(R[:, 2, 2], 1.0):
        raise ValueError("texture frames must be rotations about the z axis")
    origin = np.array([g.origin for g in geoms], np.float64)
    mapping = np.array([g.mapping for g in geoms], np.int64)
    off = np.array([(m.uv_offset[0], m.uv_offset[1], 0.7 * m.uv_offset[0] + 0.3 * m.uv_offset[1]) for m in mats])
    tri = mapping == MAP_TRIPLANAR
    origin[tri] -= np.einsum("gji,gj->gi", R[tri], off[tri])  # local' = local + off
    kind = np.array([m.kind for m in mats], np.int64)
    by_rank = np.lexsort((np.arange(len(geoms)), kind))
    rank = np.empty(len(geoms) + 1, np.min_scalar_type(len(geoms)))
    rank[by_rank] = np.arange(len(geoms))
    rank[-1] = len(geoms)
    c = _srgb_to_linear(np.array([[m.c0, m.c1, m.c2] for m in mats], np.float32)).astype(np.float32)
    return {
        "kind": kind,
        "c": np.ascontiguousarray(c.transpose(1, 2, 0)),
        "inv_scale": np.array([1.0 / m.scale for m in mats], np.float32),
        "p": np.ascontiguousarray(np.array([m.params for m in mats], np.float32).T),
        "salt": np.array([(m.seed * 7919) & 0xFFFF for m in mats], np.int32),
        "swap": np.array([m.swap_uv for m in mats], bool),
        "cos": R[:, 0, 0].astype(np.float32),
        "sin": R[:, 0, 1].astype(np.float32),
        "ox": origin[:, 0].astype(np.float32),
        "oy": origin[:, 1].astype(np.float32),
        "oz": origin[:, 2].astype(np.float32),
        "mapping": mapping,
        "rank": rank,
        "by_rank": by_rank,
    }


def _group(tables: dict, gid: np.ndarray) -> _Groups:
    """Sort samples by (texture kind, geometry) so that each geometry and each texture kind is a
    contiguous run; ids past the last geometry (``INVALID_ID`` of a miss) sort last."""
    n_geoms = len(tables["kind"])
    key = np.take(tables["rank"], gid, mode="clip")
    order = np.argsort(key, kind="stable")  # radix sort of small unsigned keys
    starts = np.searchsorted(np.take(key, order), np.arange(n_geoms + 1, dtype=key.dtype))
    runs = np.flatnonzero(np.diff(starts))
    return _Groups(order, tables["by_rank"][runs], np.append(starts[runs], starts[-1]))


@dataclass(frozen=True)
class _Hits:
    """Surface samples in structure-of-arrays form (all ``[n]`` float32), in :class:`_Groups` order."""

    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    nx: np.ndarray
    ny: np.ndarray
    nz: np.ndarray


def _texture_uv(tables: dict, h: _Hits, groups: _Groups) -> tuple[np.ndarray, np.ndarray]:
    """Texture coordinates ``(u, v)`` ``[n]`` (metres) of grouped surface samples.

    Box-like geometries use the two local axes across the dominant normal axis (walls: along the
    wall and up; floors: x and y); cylinders and spheres use an unrolled angle and the height.
    """
    c = groups.expand(tables["cos"])
    s = groups.expand(tables["sin"])
    qx = h.px - groups.expand(tables["ox"])
    qy = h.py - groups.expand(tables["oy"])
    lz = h.pz - groups.expand(tables["oz"])
    lx = c * qx
    lx += s * qy
    ly = c * qy
    ly -= s * qx
    anx = c * h.nx
    anx += s * h.ny
    np.abs(anx, out=anx)
    any_ = c * h.ny
    any_ -= s * h.nx
    np.abs(any_, out=any_)
    anz = np.abs(h.nz)
    xdom = (anx >= any_) & (anx >= anz)
    zdom = (anz > anx) & (anz >= any_)
    u = np.where(xdom, ly, lx)
    v = np.where(zdom, ly, lz)
    mapping = tables["mapping"][groups.gids]
    for i in np.flatnonzero(mapping != MAP_TRIPLANAR):
        lo, hi = groups.bounds[i], groups.bounds[i + 1]
        curved = slice(lo, hi) if mapping[i] == MAP_SPHERE else lo + np.flatnonzero(~zdom[lo:hi])
        x, y = lx[curved], ly[curved]
        u[curved] = np.arctan2(y, x) * np.maximum(np.hypot(x, y), 0.05)
        v[curved] = lz[curved]
    for i in np.flatnonzero(tables["swap"][groups.gids]):
        run = slice(groups.bounds[i], groups.bounds[i + 1])
        u[run], v[run] = v[run].copy(), u[run].copy()
    return u, v


def _albedo_grouped(tables: dict, h: _Hits, groups: _Groups, footprint: np.ndarray) -> np.ndarray:
    """Linear albedo ``[3,n]`` float32 (channel-planar) of grouped surface samples.

    Each texture kind is one contiguous run of samples, evaluated vectorised with its per-geometry
    parameters repeated over the samples.
    """
    u, v = _texture_uv(tables, h, groups)
    out = np.empty((3, len(u)), np.float32)
    kinds = tables["kind"][groups.gids]  # ascending
    for k in np.unique(kinds):
        runs = slice(int(np.searchsorted(kinds, k)), int(np.searchsorted(kinds, k, side="right")))
        sl = slice(groups.bounds[runs.start], groups.bounds[runs.stop])
        out[:, sl] = _TEXTURES[k](u[sl], v[sl], _TexArgs(tables, groups, runs, footprint[sl]))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _albedo(tables: dict, gid: np.ndarray, h: _Hits, footprint: np.ndarray | None = None) -> np.ndarray:
    """Linear albedo ``[n,3]`` float32 of surface samples on geometries ``gid`` ``[n]`` (any order).

    ``footprint`` ``[n]`` is the size (m) of a pixel on the surface, used to fade sub-pixel detail;
    ``None`` samples the textures exactly.
    """
    n = len(gid)
    groups = _group(tables, gid)
    o = groups.order
    hs = _Hits(*(np.take(a, o) for a in (h.px, h.py, h.pz, h.nx, h.ny, h.nz)))
    fp = np.zeros(n, np.float32) if footprint is None else np.take(footprint, o)
    out = np.empty((n, 3), np.float32)
    out[o] = _albedo_grouped(tables, hs, groups, fp).T
    return out


# ----------------------------------------------------------------------------------------------
# Camera and trajectory
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _camera_rays(width: int, height: int, k: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` ``[H*W]`` float32 camera-frame ray directions ``(x, y, 1)`` through pixel centres.

    With z = 1 the ray parameter of a hit is its z-depth.
    """
    K = np.array(k).reshape(3, 3)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    y = (v - K[1, 2]) / K[1, 1]
    x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
    x, y = x.ravel().astype(np.float32), y.ravel().astype(np.float32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@lru_cache(maxsize=1)
def _gamma_lut() -> np.ndarray:
    """``[4096]`` uint8 sRGB encoding of linear values ``i / 4095``."""
    x = np.linspace(0.0, 1.0, 4096)
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.round(srgb * 255.0).astype(np.uint8)


def _sensor_maps(scene: Scene, width: int, height: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-scene ``[H,W,3]`` gain map (vignetting x white balance) and ``[H+32,W+32,3]`` noise tile."""
    key = ("sensor", width, height)
    if key not in scene._cache:
        ph = scene.photometric
        v, u = np.mgrid[0:height, 0:width].astype(np.float32)
        hw, hh = (width - 1) / 2, (height - 1) / 2
        r2 = ((u - hw) ** 2 + (v - hh) ** 2) / (hw ** 2 + hh ** 2)
        gain = (1.0 - ph.vignette * r2)[..., None] * np.asarray(ph.white_balance, np.float32)
        tile = None
        if ph.noise_sigma > 0:
            rng = np.random.default_rng([scene.seed, 0x0153])
            # Linear-domain noise in LUT units (4095 = white); the sRGB curve amplifies it in shadows.
            sigma = ph.noise_sigma / 255.0 * 0.5 * 4095.0
            tile = rng.normal(0.0, sigma, size=(height + 32, width + 32, 3)).astype(np.float32)
        scene._cache[key] = (gain.astype(np.float32), tile)
    return scene._cache[key]


_CAST_THREADS = 0  # threads per cast_rays call (0 = all); worker processes use 1


def _world_dirs(x: np.ndarray, y: np.ndarray, cam_to_world: np.ndarray,
                out: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """World directions ``R @ (x, y, 1)`` of camera-frame rays as three ``[n]`` float32 arrays
    (written to ``out`` when given)."""
    R = np.asarray(cam_to_world[:3, :3], np.float32)
    out = [np.empty(x.size, np.float32) for _ in range(3)] if out is None else out
    tmp = np.empty(x.size, np.float32)
    for i, d in enumerate(out):  # elementwise rather than a BLAS matmul: no idle-spinning BLAS threads
        np.multiply(x, R[i, 0], out=d)
        d += np.multiply(y, R[i, 1], out=tmp)
        d += R[i, 2]
    return out


def _cast_rays(scene: Scene, cam_to_world: np.ndarray, x: np.ndarray, y: np.ndarray,
               width: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cast rays with camera-frame directions ``(x, y, 1)`` (``[n]`` each) from a camera pose.

    ``width > 0`` says that the rays form a skew-free pixel grid of that width (``x`` repeats on
    every row, ``y`` is constant along a row): the directions are then summed from per-column and
    per-row products, with the same result.

    Returns ``t`` ``[n]`` (inf on a miss), ``gid`` ``[n]`` uint32, ``normals`` ``[n,3]`` and the
    rays ``[n,6]`` float32 (world origin, world direction).
    """
    origin = np.asarray(cam_to_world[:3, 3], np.float32)
    rays = np.empty((x.size, 6), np.float32)
    for i in range(3):
        rays[:, i].fill(origin[i])
    if width:
        R = np.asarray(cam_to_world[:3, :3], np.float32)
        grid = rays.reshape(-1, width, 6)
        xu, yv = x[:width], y[::width]
        for i in range(3):  # (x R_i0 + y R_i1) + R_i2, as in _world_dirs
            d = grid[:, :, 3 + i]
            np.add(xu * R[i, 0], (yv * R[i, 1])[:, None], out=d)
            d += R[i, 2]
    else:
        _world_dirs(x, y, cam_to_world, out=[rays[:, 3 + i] for i in range(3)])
    res = scene.raycaster.cast_rays(o3d.core.Tensor.from_numpy(rays), nthreads=_CAST_THREADS)
    return res["t_hit"].numpy(), res["geometry_ids"].numpy(), res["primitive_normals"].numpy(), rays


def cast_camera_rays(scene: Scene, cam_to_world: np.ndarray, K: np.ndarray, width: int,
                     height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cast one ray per pixel centre.

    Returns:
        ``t`` ``[H*W]`` float32 z-depth of the hit (inf on a miss; camera-frame directions have
        z = 1, so the ray parameter is the z-depth), ``gid`` ``[H*W]`` uint32 geometry ids
        (``RaycastingScene.INVALID_ID`` on a miss), ``normals`` ``[H*W,3]`` float32 geometric
        normals, ``dirs`` ``[3,H*W]`` float32 world directions.
    """
    x, y = _camera_rays(int(width), int(height), tuple(float(v) for v in np.asarray(K).ravel()))
    t, gid, normals, rays = _cast_rays(scene, cam_to_world, x, y, int(width) if K[0, 1] == 0 else 0)
    return t, gid, normals, np.ascontiguousarray(rays[:, 3:].T)


def _hits_from_rays(origin: np.ndarray, t: np.ndarray, normals: list[np.ndarray], dirs: list[np.ndarray],
                    focal: float = 1.0) -> tuple[_Hits, np.ndarray]:
    """Hit points and camera-facing normals (structure of arrays) of rays with finite ``t`` ``[n]``.

    ``normals`` and ``dirs`` are three ``[n]`` arrays each; the normals are flipped in place.
    Also returns the pixel footprint ``[n]`` (m) on the surface for a focal length ``focal`` (px):
    ray length / focal / |cos(incidence)|, with the cosine clamped at 0.25.
    """
    p = []
    for i in range(3):
        q = dirs[i] * t
        q += origin[i]
        p.append(q)
    nx, ny, nz = normals
    tmp = np.empty_like(t)
    facing = nx * dirs[0]
    facing += np.multiply(ny, dirs[1], out=tmp)
    facing += np.multiply(nz, dirs[2], out=tmp)
    away = facing > 0
    for n in normals:
        np.negative(n, out=n, where=away)
    d2 = dirs[0] * dirs[0]
    d2 += np.multiply(dirs[1], dirs[1], out=tmp)
    d2 += np.multiply(dirs[2], dirs[2], out=tmp)
    np.abs(facing, out=facing)
    np.sqrt(d2, out=tmp)
    tmp *= 0.25
    np.maximum(facing, tmp, out=facing)
    footprint = np.multiply(t, d2, out=d2)
    footprint /= facing
    footprint *= np.float32(1.0 / focal)
    return _Hits(p[0], p[1], p[2], nx, ny, nz), footprint


def _shade(scene: Scene, h: _Hits) -> np.ndarray:
    """``[3,n]`` float32 (channel-planar) irradiance: ambient + Lambertian point lights with soft
    distance falloff."""
    n = len(h.px)
    irr = np.empty((3, n), np.float32)
    for c in range(3):
        irr[c].fill(scene.ambient[c])
    vx, vy, vz, tmp = (np.empty(n, np.float32) for _ in range(4))
    for pos, col in zip(scene.lights.astype(np.float32), scene.light_colors * 1.6):
        np.subtract(pos[0], h.px, out=vx)
        np.subtract(pos[1], h.py, out=vy)
        np.subtract(pos[2], h.pz, out=vz)
        ndl = vx * h.nx
        ndl += np.multiply(vy, h.ny, out=tmp)
        ndl += np.multiply(vz, h.nz, out=tmp)
        np.maximum(ndl, 0.0, out=ndl)
        d2 = np.multiply(vx, vx, out=vx)
        d2 += np.multiply(vy, vy, out=vy)
        d2 += np.multiply(vz, vz, out=vz)
        den = np.sqrt(d2, out=vy)
        d2 *= 0.25
        d2 += 1.0
        den *= d2
        ndl /= den
        for c in range(3):
            irr[c] += np.multiply(ndl, np.float32(col[c]), out=tmp)
    return irr


def _sky(scene: Scene, dirs: np.ndarray) -> np.ndarray:
    """``[3,n]`` float32 radiance of the sky seen along world directions ``dirs`` ``[3,n]``."""
    dz = dirs[2] / np.sqrt((dirs * dirs).sum(0))
    lo, hi = scene.sky
    return (lo[:, None] + (hi - lo)[:, None] * np.clip(dz, 0, 1)).astype(np.float32)


def render_frame(scene: Scene, cam_to_world: np.ndarray, K: np.ndarray, width: int, height: int, *,
                 frame_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render one RGB-D frame.

    Args:
        scene: from :func:`make_scene`.
        cam_to_world: ``[4,4]`` camera-to-world pose (OpenCV camera).
        K: ``[3,3]`` intrinsics; pixel ``(u, v)`` is sampled at image coordinate ``(u, v)``.
        width, height: image size in pixels.
        frame_index: seeds the per-frame sensor noise and exposure jitter (deterministic).

    Returns:
        ``(rgb [H,W,3] uint8, depth [H,W] float32)``: z-depth in metres, 0 where nothing is hit.
    """
    x, y = _camera_rays(int(width), int(height), tuple(float(v) for v in np.asarray(K).ravel()))
    t, gid, normals, rays = _cast_rays(scene, cam_to_world, x, y, int(width) if K[0, 1] == 0 else 0)
    # Shade grouped by texture kind and geometry, then scatter to pixels (misses come last).
    groups = _group(scene._tables, gid)
    m = groups.hits
    hit, miss = groups.order[:m], groups.order[m:]
    ts = np.take(t, hit)
    depth = t.copy()
    depth[miss] = 0.0
    dirs = _world_dirs(np.take(x, hit), np.take(y, hit), cam_to_world)
    nrm = [np.take(normals[:, i], hit) for i in range(3)]
    origin = np.asarray(cam_to_world[:3, 3], np.float32)
    hits, footprint = _hits_from_rays(origin, ts, nrm, dirs, focal=float(np.sqrt(K[0, 0] * K[1, 1])))
    shaded = _albedo_grouped(scene._tables, hits, groups, footprint)
    shaded *= _shade(scene, hits)
    radiance = np.empty((len(t), 3), np.float32)
    sky = _sky(scene, np.take(rays, miss, axis=0)[:, 3:].T) if len(miss) else None
    for c in range(3):
        radiance[:, c][hit] = shaded[c]
        if sky is not None:
            radiance[:, c][miss] = sky[c]
    return _develop(scene, radiance.reshape(height, width, 3), frame_index), depth.reshape(height, width)


def _develop(scene: Scene, radiance: np.ndarray, frame_index: int) -> np.ndarray:
    """Camera response: auto exposure, white balance, vignetting, noise, mild blur, sRGB -> uint8.

    ``radiance`` ``[H,W,3]`` is modified in place.
    """
    ph = scene.photometric
    h, w = radiance.shape[:2]
    rng = np.random.default_rng([scene.seed, 0xF4A3, int(frame_index)])
    sub = radiance[::4, ::4]
    luma = 0.2126 * float(sub[..., 0].mean()) + 0.7152 * float(sub[..., 1].mean()) + 0.0722 * float(sub[..., 2].mean())
    exposure = 0.2 / max(luma, 1e-4) * ph.exposure
    if scene.config.photometric:
        exposure *= float(np.exp(rng.normal(0.0, 0.04)))
    gain, tile = _sensor_maps(scene, w, h)
    img = radiance
    img *= gain
    img *= np.float32(exposure * 4095.0)
    if tile is not None:
        oy, ox = rng.integers(0, 32, size=2)
        img += tile[oy:oy + h, ox:ox + w]
    np.clip(img, 0.0, 4095.0, out=img)
    rgb = np.take(_gamma_lut(), img.astype(np.int16))
    if ph.blur > 0:
        c = 1.0 + 4.0 * (1.0 - ph.blur)
        kernel = ImageFilter.Kernel((3, 3), [0.25, 0.5, 0.25, 0.5, c, 0.5, 0.25, 0.5, 0.25])
        rgb = np.asarray(Image.fromarray(rgb).filter(kernel))
    return rgb


# ----------------------------------------------------------------------------------------------
# Ground-truth mesh
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _quad_template(n1: int, n2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid of ``(n1+1) x (n2+1)`` points on the unit square: coordinates ``a``, ``b`` ``[P,1]`` and faces."""
    A, B = np.meshgrid(np.linspace(0, 1, n1 + 1), np.linspace(0, 1, n2 + 1), indexing="ij")
    i, j = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
    v00 = (i * (n2 + 1) + j).ravel()
    v10, v01, v11 = v00 + n2 + 1, v00 + 1, v00 + n2 + 2
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    return A.reshape(-1, 1), B.reshape(-1, 1), faces


@lru_cache(maxsize=512)
def _triangle_template(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Barycentric grid with ``n`` subdivisions per edge: coordinates ``a``, ``b`` ``[P,1]`` and faces."""
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = (i + j) <= n
    index = np.full((n + 2, n + 2), -1)
    index[i[keep], j[keep]] = np.arange(keep.sum())
    fi, fj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    up = (fi + fj) <= n - 1
    down = (fi + fj) <= n - 2
    f_up = np.stack([index[fi, fj], index[fi + 1, fj], index[fi, fj + 1]], -1)[up]
    f_down = np.stack([index[fi + 1, fj], index[fi + 1, fj + 1], index[fi, fj + 1]], -1)[down]
    return (i[keep] / n).reshape(-1, 1), (j[keep] / n).reshape(-1, 1), np.concatenate([f_up, f_down])


def _grid_quad(o: np.ndarray, e1: np.ndarray, e2: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[P,3]`` and faces of a quad subdivided to edges of at most ``spacing``."""
    n1 = max(1, int(math.ceil(np.linalg.norm(e1) / spacing)))
    n2 = max(1, int(math.ceil(np.linalg.norm(e2) / spacing)))
    a, b, faces = _quad_template(n1, n2)
    return o + a * e1 + b * e2, faces


def _grid_triangle(tri: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[P,3]`` and faces of a triangle subdivided to edges of at most ``spacing``."""
    edges = np.linalg.norm(tri - tri[[1, 2, 0]], axis=1)
    n = max(1, int(math.ceil(edges.max() / spacing)))
    a, b, faces = _triangle_template(n)
    return tri[0] + a * (tri[1] - tri[0]) + b * (tri[2] - tri[0]), faces


@dataclass(frozen=True)
class SceneMesh:
    """Dense ground-truth mesh: ``vertices`` ``[V,3]`` float64, ``faces`` ``[F,3]`` int64,
    ``colors`` ``[V,3]`` uint8 sRGB albedo, ``normals`` ``[V,3]`` (face normals of their surface)."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    normals: np.ndarray

    def subset(self, keep: np.ndarray) -> SceneMesh:
        """Keep vertices where ``keep`` ``[V]`` is True, and the faces whose vertices are all kept."""
        new_index = np.cumsum(keep) - 1
        faces = self.faces[keep[self.faces].all(1)]
        return SceneMesh(self.vertices[keep], new_index[faces], self.colors[keep], self.normals[keep])


def scene_mesh(scene: Scene, spacing: float | None = None) -> SceneMesh:
    """All surfaces of ``scene`` as a dense mesh (vertex spacing <= ``spacing``, default from config)."""
    spacing = scene.config.mesh_spacing if spacing is None else spacing
    verts, faces, gids, norms = [], [], [], []
    count = 0
    for gi, g in enumerate(scene.geometries):
        o, e1, e2 = g.quads
        quad_n = np.cross(e1, e2)
        tri_n = np.cross(g.tris[:, 1] - g.tris[:, 0], g.tris[:, 2] - g.tris[:, 0])
        parts = [_grid_quad(o[k], e1[k], e2[k], spacing) for k in range(len(o))]
        parts += [_grid_triangle(t, spacing) for t in g.tris]
        normals = np.concatenate([quad_n, tri_n])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        for (v, f), n in zip(parts, normals):
            verts.append(v)
            faces.append(f + count)
            gids.append(np.full(len(v), gi))
            norms.append(np.broadcast_to(n, v.shape))
            count += len(v)
    V = np.concatenate(verts)
    G = np.concatenate(gids)
    N = np.concatenate(norms)
    V32, N32 = V.astype(np.float32), N.astype(np.float32)
    hits = _Hits(V32[:, 0], V32[:, 1], V32[:, 2], N32[:, 0], N32[:, 1], N32[:, 2])
    albedo = _albedo(scene._tables, G, hits, np.full(len(G), spacing, np.float32))  # vertex = local average
    colors = _gamma_lut()[(albedo * 4095).astype(np.int16)]
    return SceneMesh(V, np.concatenate(faces).astype(np.int64), colors, N)


def mesh_visibility(mesh: SceneMesh, depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray,
                    tol: float = 0.02) -> np.ndarray:
    """``[V]`` bool: vertices that ``depth`` (``[H,W]``, z metres) shows unoccluded from this camera."""
    h, w = depth.shape
    R, c = cam_to_world[:3, :3], cam_to_world[:3, 3]
    q = [mesh.vertices[:, k] - c[k] for k in range(3)]
    # camera coordinates R^T (X - c), written elementwise (no BLAS threads)
    x, y, z = (q[0] * R[0, k] + q[1] * R[1, k] + q[2] * R[2, k] for k in range(3))
    front = z > 1e-3
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.rint((K[0, 0] * x + K[0, 1] * y) / z + K[0, 2])
        v = np.rint(K[1, 1] * y / z + K[1, 2])
    inside = front & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    idx = np.flatnonzero(inside)
    d = depth[v[idx].astype(int), u[idx].astype(int)]
    vis = np.zeros(len(z), bool)
    vis[idx] = (d > 0) & (np.abs(z[idx] - d) <= tol + 0.01 * d)
    return vis


def write_mesh_ply(mesh: SceneMesh, path: Path) -> None:
    """Write a binary little-endian PLY: double ``x y z`` and uchar ``red green blue`` per vertex,
    triangles as ``uchar``-counted ``uint`` index lists. Any write error raises (a full disk
    never leaves a silently truncated mesh)."""
    vertices = np.empty(len(mesh.vertices), dtype=[("xyz", "<f8", 3), ("rgb", "u1", 3)])
    vertices["xyz"], vertices["rgb"] = mesh.vertices, mesh.colors
    faces = np.empty(len(mesh.faces), dtype=[("n", "u1"), ("idx", "<u4", 3)])
    faces["n"], faces["idx"] = 3, mesh.faces
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment SynthRooms scene mesh\n"
        f"element vertex {len(vertices)}\nproperty double x\nproperty double y\nproperty double z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(faces)}\nproperty list uchar uint vertex_indices\nend_header\n"
    )
    with open(path, "wb") as handle:
        handle.write(header.encode("ascii"))
        handle.write(vertices.tobytes())
        handle.write(faces.tobytes())


# ----------------------------------------------------------------------------------------------
# Writing scenes in the ScanNet raw layout
# ----------------------------------------------------------------------------------------------


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """``[H,W]`` metres -> uint16 millimetres; non-finite, <= 0 or beyond 65.535 m become 0."""
    with np.errstate(invalid="ignore"):
        mm = np.rint(np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0)
    mm[(mm < 0) | (mm > MAX_DEPTH_MM)] = 0
    return mm.astype(np.uint16)


def scene_name(seed: int) -> str:
    """Folder name of the scene built from ``seed`` (e.g. ``scene_00042``)."""
    return f"scene_{seed:05d}"


def _write_matrix(path: Path, M: np.ndarray) -> None:
    np.savetxt(path, M, fmt="%.9f")


def _intrinsic4(K: np.ndarray) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = K
    return M


def _write_frame(scene_dir: Path, i: int, rgb: np.ndarray, depth: np.ndarray, pose: np.ndarray,
                 quality: int) -> None:
    Image.fromarray(rgb).save(scene_dir / "color" / f"{i}.jpg", quality=quality)
    Image.fromarray(depth_to_mm(depth)).save(scene_dir / "depth" / f"{i}.png", compress_level=1)
    _write_matrix(scene_dir / "pose" / f"{i}.txt", pose)


@dataclass(frozen=True)
class _ChunkJob:
    """Frames ``indices`` of the scene built from ``seed``, to render into ``scene_dir``."""

    seed: int
    config: SynthConfig
    scene_dir: Path
    num_frames: int
    width: int
    height: int
    indices: tuple[int, ...]
    thumbs: tuple[int, ...]
    vis_every: int = 1


@dataclass(frozen=True)
class _ChunkResult:
    """What a rendered chunk sends back: subsampled depth maps for the mesh visibility test
    (``vis_depth[i]`` is ``depth[::vis_stride, ::vis_stride]``) and preview frames."""

    seed: int
    indices: tuple[int, ...]
    vis_depth: dict[int, np.ndarray]
    vis_stride: int
    thumbs: dict[int, tuple[np.ndarray, np.ndarray]]


_SCENE_CACHE: dict[tuple, tuple[Scene, np.ndarray]] = {}


def _cached_scene(seed: int, config: SynthConfig, num_frames: int) -> tuple[Scene, np.ndarray]:
    """Scene and trajectory for ``seed``, kept for the next chunks of the same scene."""
    key = (seed, config, num_frames)
    if key not in _SCENE_CACHE:
        while len(_SCENE_CACHE) >= 4:
            _SCENE_CACHE.pop(next(iter(_SCENE_CACHE)))
        scene = make_scene(seed, config)
        _SCENE_CACHE[key] = (scene, make_trajectory(scene, num_frames))
    return _SCENE_CACHE[key]


def _render_chunk(job: _ChunkJob) -> _ChunkResult:
    """Render and write a chunk of frames (runs in a worker process or in-process)."""
    scene, poses = _cached_scene(job.seed, job.config, job.num_frames)
    K = scene_intrinsics(scene, job.width, job.height)
    stride = max(1, job.width // 160)
    vis, thumbs = {}, {}
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=1) as pool:  # encoding overlaps with the next render
        for i in job.indices:
            rgb, depth = render_frame(scene, poses[i], K, job.width, job.height, frame_index=i)
            pending.append(pool.submit(_write_frame, job.scene_dir, i, rgb, depth, poses[i],
                                       job.config.jpeg_quality))
            if i % job.vis_every == 0 or i == job.num_frames - 1:
                vis[i] = depth[::stride, ::stride].copy()
            if i in job.thumbs:
                thumbs[i] = (rgb, depth)
            while len(pending) > 2:
                pending.pop(0).result()
        for f in pending:
            f.result()
    return _ChunkResult(job.seed, job.indices, vis, stride, thumbs)


def _init_worker() -> None:
    global _CAST_THREADS
    _CAST_THREADS = 1  # one process per core already


def _num_workers(total_pixels: int) -> int:
    """Worker processes for a job: one per available core (``PACEGEO_SYNTH_WORKERS`` overrides);
    small jobs and platforms without ``fork`` render in-process."""
    env = os.environ.get("PACEGEO_SYNTH_WORKERS")
    if env is not None:
        try:
            return max(1, int(env))
        except ValueError:
            raise InputError(f"PACEGEO_SYNTH_WORKERS must be an integer, got {env!r}") from None
    if total_pixels < 4_000_000 or "fork" not in mp.get_all_start_methods() or sys.platform != "linux":
        return 1
    return max(1, len(os.sched_getaffinity(0)))


@dataclass
class _SceneProgress:
    """Book-keeping for one scene while its chunks are rendered: the dense mesh and which of its
    vertices the frames rendered so far have seen."""

    seed: int
    tmp: Path
    final: Path
    pending: int
    mesh: SceneMesh | None = None
    seen: np.ndarray | None = None
    thumbs: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def add_chunk(self, res: _ChunkResult, config: SynthConfig, num_frames: int, width: int, height: int) -> None:
        self.thumbs.update(res.thumbs)
        self.pending -= 1
        scene, poses = _cached_scene(self.seed, config, num_frames)
        if self.mesh is None:  # built here, while the workers render the next chunks
            self.mesh = scene_mesh(scene)
            self.seen = np.zeros(len(self.mesh.vertices), bool)
        if not config.mesh_observed_only:
            return
        Ks = scene_intrinsics(scene, width, height)
        Ks[:2] /= res.vis_stride  # depth[::s, ::s]: pixel j of the subsampled map is pixel s*j
        for i, d in res.vis_depth.items():
            self.seen |= mesh_visibility(self.mesh, d, Ks, poses[i])


def _prepare_scene_dir(tmp: Path, K: np.ndarray) -> None:
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted run
    for sub in ("color", "depth", "pose", "intrinsic"):
        (tmp / sub).mkdir(parents=True)
    for name in ("intrinsic_color.txt", "intrinsic_depth.txt"):
        _write_matrix(tmp / "intrinsic" / name, _intrinsic4(K))
    for name in ("extrinsic_color.txt", "extrinsic_depth.txt"):
        _write_matrix(tmp / "intrinsic" / name, np.eye(4))


def _finish_scene(sp: _SceneProgress, config: SynthConfig, num_frames: int, width: int, height: int) -> None:
    """Write the mesh and metadata of a fully rendered scene (moved into place with the others)."""
    scene, _ = _cached_scene(sp.seed, config, num_frames)
    mesh = sp.mesh.subset(sp.seen) if config.mesh_observed_only else sp.mesh
    write_mesh_ply(mesh, sp.tmp / f"{sp.final.name}_vh_clean_2.ply")
    meta = scene.summary() | {
        "format_version": FORMAT_VERSION, "num_frames": num_frames, "width": width, "height": height,
        "config": asdict(config), "mesh_vertices": int(len(mesh.vertices)),
        "pixel_centre": "pixel (u, v) has its centre at image coordinate (u, v)",
    }
    (sp.tmp / "synth_meta.json").write_text(json.dumps(meta, indent=1))


def generate_scenes(out_dir: str | os.PathLike, seeds: Sequence[int], num_frames: int, width: int = 640,
                    height: int = 480, *, config: SynthConfig | None = None, preview: bool = False,
                    overwrite: bool = False, progress: bool = True, workers: int | None = None) -> list[Path]:
    """Generate the scenes built from ``seeds`` (see :func:`generate_dataset` for the layout).

    ``workers`` worker processes render frames in parallel (default: one per available core for
    large jobs); the output does not depend on it.
    """
    if not seeds:
        raise InputError("no scenes to generate")
    check_count(num_frames, "frames", maximum=MAX_FRAMES)
    for value in (width, height):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not MIN_SIDE <= value <= MAX_SIDE:
            raise InputError(f"image size ({option('size')}) must be from {MIN_SIDE}x{MIN_SIDE} to {MAX_SIDE}x{MAX_SIDE} pixels, got {width}x{height}")
    for seed in seeds:
        check_seed(seed)
    if len(set(seeds)) != len(seeds):
        raise InputError("seeds must be distinct (each seed is one scene folder)")
    cfg = config or SynthConfig()
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder")
    names = [scene_name(s) for s in seeds]
    specs = [OutputSpec(out / n, kind="folder", what="scene folder") for n in names]
    preview_spec = OutputSpec(out / "preview.png", suffixes=(".png",), what="preview") if preview else None
    created = []  # folders made here, removed again if the run fails
    try:
        for folder in reversed([out, *out.parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
    except OSError as err:
        _remove_empty(created)
        raise OutputError(f"cannot create output folder {out}: {describe_os_error(err)}") from None
    try:
        with OutputSet(specs + ([preview_spec] if preview_spec else []), (), overwrite) as outputs:
            _render_scenes(outputs, specs, preview_spec, seeds, names, cfg, num_frames, width, height, preview,
                           progress, workers)
    except BrokenProcessPool:
        _remove_empty(created)
        raise OutputError("a rendering worker process died (out of memory?); nothing was written") from None
    except BaseException:
        _remove_empty(created)
        raise
    return [spec.path for spec in specs]


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


def _render_scenes(outputs: OutputSet, specs: list[OutputSpec], preview_spec: OutputSpec | None, seeds: Sequence[int],
                   names: list[str], cfg: SynthConfig, num_frames: int, width: int, height: int, preview: bool,
                   progress: bool, workers: int | None) -> None:
    """Render every scene into its staged folder of ``outputs`` (and the preview)."""
    n_workers = workers if workers is not None else _num_workers(len(seeds) * num_frames * width * height)
    if "fork" not in mp.get_all_start_methods():
        n_workers = 1
    chunk = max(1, min(8, math.ceil(num_frames / max(n_workers, 1))))
    thumb_frames = tuple(int(i) for i in np.linspace(0, num_frames - 1, min(4, num_frames)).round())
    scenes: dict[int, _SceneProgress] = {}
    jobs = []
    for k, (seed, spec) in enumerate(zip(seeds, specs)):
        starts = range(0, num_frames, chunk)
        scenes[seed] = _SceneProgress(seed, outputs.staged(spec), spec.path, len(starts))
        for s0 in starts:
            idx = tuple(range(s0, min(num_frames, s0 + chunk)))
            want = tuple(i for i in idx if i in thumb_frames) if preview and k < 6 else ()
            jobs.append(_ChunkJob(seed, cfg, scenes[seed].tmp, num_frames, width, height, idx, want,
                                  vis_every=2 if num_frames > 32 else 1))
    prepared: set[int] = set()

    def prepare(job: _ChunkJob) -> None:  # just before a scene's first chunk is rendered
        if job.seed not in prepared:
            scene, _ = _cached_scene(job.seed, cfg, num_frames)  # forked workers inherit it
            _prepare_scene_dir(scenes[job.seed].tmp, scene_intrinsics(scene, width, height))
            prepared.add(job.seed)

    with tqdm(total=len(seeds) * num_frames, disable=not progress, unit="frame", desc="synth") as bar:
        def collect(res: _ChunkResult) -> None:
            sp = scenes[res.seed]
            sp.add_chunk(res, cfg, num_frames, width, height)
            bar.update(len(res.indices))
            if sp.pending == 0:
                _finish_scene(sp, cfg, num_frames, width, height)
                logger.info("rendered %s (%d frames)", sp.final, num_frames)
                sp.mesh = sp.seen = None

        if n_workers <= 1:
            for job in jobs:
                prepare(job)
                collect(_render_chunk(job))
        else:
            ctx = mp.get_context("fork")
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker) as pool:
                try:
                    for res in _ordered(pool, jobs, 2 * n_workers, prepare):
                        collect(res)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    if preview_spec is not None:
        thumbs = [(sp.final.name, [sp.thumbs[i] for i in sorted(sp.thumbs)]) for sp in scenes.values() if sp.thumbs]
        write_preview(thumbs, outputs.staged(preview_spec))


def _ordered(pool: ProcessPoolExecutor, jobs: list[_ChunkJob], lookahead: int, before_submit):
    """Submit ``jobs`` keeping at most ``lookahead`` in flight; yield results in job order."""
    futures: list[Future] = []
    it = iter(jobs)

    def submit(job: _ChunkJob) -> None:
        before_submit(job)
        futures.append(pool.submit(_render_chunk, job))

    for job in it:
        submit(job)
        if len(futures) >= lookahead:
            break
    while futures:
        res = futures.pop(0).result()
        nxt = next(it, None)
        if nxt is not None:
            submit(nxt)
        yield res


def _colorize_depth(depth: np.ndarray, vmax: float) -> np.ndarray:
    rgb = colormaps["turbo"](np.clip(depth / max(vmax, 1e-6), 0, 1))[..., :3]
    rgb[depth <= 0] = 0
    return (rgb * 255).astype(np.uint8)


def write_preview(rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]], path: Path,
                  thumb_width: int = 200) -> None:
    """Contact sheet: one row per scene, each cell a colour frame above its colourised depth.

    ``rows`` holds ``(scene name, [(rgb [H,W,3] uint8, depth [H,W] metres), ...])``.
    """
    cells = []
    for _, frames in rows:
        depths = [d for _, d in frames]
        vmax = max(float(np.percentile(d[d > 0], 99)) if (d > 0).any() else 1.0 for d in depths)
        row = []
        for rgb, d in frames:
            h = int(round(rgb.shape[0] * thumb_width / rgb.shape[1]))
            a = np.asarray(Image.fromarray(rgb).resize((thumb_width, h), Image.BILINEAR))
            b = np.asarray(Image.fromarray(_colorize_depth(d, vmax)).resize((thumb_width, h), Image.NEAREST))
            row.append(np.pad(np.concatenate([a, b], 0), ((2, 2), (2, 2), (0, 0)), constant_values=255))
        cells.append(np.concatenate(row, 1))
    width = max(r.shape[1] for r in cells)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                            for r in cells], 0)
    Image.fromarray(sheet).save(path, format="PNG")


def generate_dataset(out_dir: str | os.PathLike, num_scenes: int, num_frames: int, seed: int, width: int = 640,
                     height: int = 480, preview: bool = False, overwrite: bool = False,
                     progress: bool = True) -> list[Path]:
    """Generate SynthRooms scenes in the ScanNet raw layout.

    Scene ``i`` is built from seed ``seed + i`` and written to ``out_dir/scene_{seed+i:05d}/``::

        color/<i>.jpg                 colour, JPEG quality ~90
        depth/<i>.png                 uint16 millimetres, 0 = invalid (no hit, or beyond 65.535 m)
        pose/<i>.txt                  4x4 camera-to-world (OpenCV camera)
        intrinsic/intrinsic_color.txt, intrinsic_depth.txt   4x4, K top-left (the same K)
        intrinsic/extrinsic_color.txt, extrinsic_depth.txt   identity
        <scene>_vh_clean_2.ply        dense mesh with vertex colours (observed surfaces)
        synth_meta.json               seed, field of view, room size, generator settings

    Pixel ``(u, v)`` has its centre at image coordinate ``(u, v)``. The scenes are written under
    temporary names and moved into place together when all are complete
    (:class:`pacegeo.io.outputs.OutputSet`): a failed or interrupted run leaves no scene folder and
    no temporary folder, and existing scenes untouched. Existing scenes raise
    :class:`pacegeo.errors.OutputError` unless ``overwrite``. With
    ``preview``, ``out_dir/preview.png`` shows four frames (colour above depth) of up to six scenes.

    Args:
        out_dir: output folder (created if needed).
        num_scenes: number of scenes (seeds ``seed .. seed + num_scenes - 1``).
        num_frames: frames per scene.
        seed: seed of the first scene (non-negative).
        width, height: image size in pixels.
        preview: also write ``preview.png``.
        overwrite: replace existing scene folders.
        progress: show a tqdm progress bar over frames.

    Returns:
        The scene folders, in seed order.
    """
    num_scenes = check_count(num_scenes, "scenes", maximum=MAX_SCENES)
    seed = check_seed(seed, span=num_scenes)
    return generate_scenes(out_dir, [seed + i for i in range(num_scenes)], num_frames, width, height,
                           preview=preview, overwrite=overwrite, progress=progress)
