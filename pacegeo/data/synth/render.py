"""Rendering: camera rays cast into the scene, textured and lit hits, sky through windows, and the
camera response (exposure, white balance, vignetting, noise, blur, sRGB)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from pacegeo.data.synth.albedo import _albedo_grouped, _group, _Hits
from pacegeo.data.synth.scene import Scene
from pacegeo.extras import require

o3d = require("open3d", "SynthRooms rendering")


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


def _set_cast_threads(n: int) -> None:
    """Threads per cast_rays call from now on in this process (0 = all)."""
    global _CAST_THREADS
    _CAST_THREADS = n


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
