"""Surface colour of ray hits and mesh vertices: per-geometry material tables, samples grouped by
texture kind and geometry, texture coordinates, and the linear albedo of each sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pacegeo.data.synth.geometry import MAP_SPHERE, MAP_TRIPLANAR, _Geometry
from pacegeo.data.synth.textures import _TEXTURES, _Groups, _TexArgs


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
