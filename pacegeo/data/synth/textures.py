"""Procedural textures of SynthRooms surfaces, evaluated vectorised over many surface samples.

A texture kind (``PAINT`` .. ``POSTER``) is a function ``(u [n], v [n], args) -> [3,n]`` linear colour
(channel-planar) of texture coordinates in metres; the samples of one call share a texture kind and
come grouped by geometry (:class:`_Groups`), with their per-geometry parameters expanded per sample
(:class:`_TexArgs`). Noise and lattice randomness come from fixed tileable tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from scipy import ndimage


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
