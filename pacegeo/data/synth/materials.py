"""Materials: a texture kind with its colours and parameters, and random materials per surface role."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.colors import hsv_to_rgb

from pacegeo.data.synth.textures import BRICK, NOISE, PAINT, POSTER, STRIPES, TILES, WOOD


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
