"""A PNG preview of a reconstruction: the coloured points and the cameras in three views.

:func:`preview_into` draws into an open file and :func:`render_preview` writes it atomically
(:mod:`pacegeo.io.outputs`), like the writers of :mod:`pacegeo.io.export`, whose conventions it
shares: OpenCV world frame (x right, y down, z forward), world-to-camera ``extrinsics [S, 3, 4]``,
pinhole ``intrinsics [S, 3, 3]`` in pixels, points ``[M, 3]`` float and colours ``[M, 3]`` uint8
RGB. Cameras are drawn as the wireframe frustums of :func:`pacegeo.io.export.camera_frustum_corners`.
The points are rendered in software (:func:`splat`) and the figure with matplotlib's Agg backend,
imported only when a preview is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pacegeo.io.export import _cam_to_world, _check_points, _frustum_segments, camera_frustum_corners, scene_scale
from pacegeo.io.outputs import atomic_write

__all__ = ["preview_into", "render_preview", "splat", "view_basis"]


def _look_at(eye: np.ndarray, target: np.ndarray, down: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera ``[3, 4]`` of a camera at ``eye`` looking at ``target``, image y ~ ``down``."""
    z = target - eye
    z = z / max(np.linalg.norm(z), 1e-12)
    x = np.cross(down, z)
    if np.linalg.norm(x) < 1e-9:  # looking along "down": pick any perpendicular
        x = np.cross(np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    rotation = np.stack([x, y, z])
    return np.concatenate([rotation, (-rotation @ eye)[:, None]], axis=1)


def splat(
    xyz: np.ndarray,
    rgb: np.ndarray,
    extrinsic: np.ndarray,
    intrinsic: np.ndarray,
    image_hw: tuple[int, int],
    radius: int = 1,
    background: int = 245,
) -> np.ndarray:
    """Software z-buffered point splatting: ``[H, W, 3]`` uint8 image of the points seen from a
    pinhole camera (``extrinsic`` OpenCV world-to-camera ``[3, 4]``); each point covers a
    ``(2 radius + 1)^2`` pixel square, nearer points win."""
    height, width = image_hw
    image = np.full((height, width, 3), background, np.uint8)
    if len(xyz) == 0:
        return image
    cam = xyz.astype(np.float64) @ extrinsic[:, :3].T + extrinsic[:, 3]
    front = cam[:, 2] > 1e-6
    cam, colours = cam[front], rgb[front]
    pix = cam @ intrinsic.T
    u = np.round(pix[:, 0] / pix[:, 2]).astype(np.int64)
    v = np.round(pix[:, 1] / pix[:, 2]).astype(np.int64)
    order = np.argsort(-cam[:, 2], kind="stable")  # far to near: later (nearer) writes win
    u, v, colours = u[order], v[order], colours[order]
    for dv in range(-radius, radius + 1):
        for du in range(-radius, radius + 1):
            uu, vv = u + du, v + dv
            inside = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
            image[vv[inside], uu[inside]] = colours[inside]
    return image


def view_basis(extrinsics: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rows (right, down, forward): a world frame for drawing, with "down" along gravity
    as far as the cameras tell.

    Cameras are usually held level (little roll), so their x axes are close to horizontal and
    gravity is the direction most perpendicular to all of them. When the cameras' yaws differ
    enough to pin that direction down it is used; otherwise (e.g. all cameras facing one way)
    the first camera's y axis is. ``forward`` is the first camera's viewing direction made
    perpendicular to ``down``. OpenCV world-to-camera ``extrinsics [S, 3, 4]``.
    """
    extrinsics = np.asarray(extrinsics, dtype=np.float64)
    if len(extrinsics) == 0 or not np.isfinite(extrinsics).all():
        return np.eye(3)
    rotations = extrinsics[:, :3, :3]  # rows are the camera axes in world coordinates
    xs, ys = rotations[:, 0, :], rotations[:, 1, :]
    down = ys[0] / max(np.linalg.norm(ys[0]), 1e-12)
    if len(extrinsics) >= 3:
        values, vectors = np.linalg.eigh(xs.T @ xs / len(xs))
        candidate = vectors[:, 0]
        if values[0] < 0.2 * values[1] and abs(candidate @ ys.mean(axis=0)) > 0.5 * np.linalg.norm(ys.mean(axis=0)):
            down = candidate * np.sign(candidate @ ys.mean(axis=0))
    forward = rotations[0, 2, :] - (rotations[0, 2, :] @ down) * down
    if np.linalg.norm(forward) < 1e-6:  # first camera looks straight down: use its y axis
        forward = ys[0] - (ys[0] @ down) * down
    forward = forward / max(np.linalg.norm(forward), 1e-12)
    right = np.cross(down, forward)
    return np.stack([right, down, forward])


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _camera_colour(i: int, count: int) -> tuple[float, float, float]:
    t = i / max(count - 1, 1)
    return (0.85, 0.15 + 0.35 * t, 0.1 + 0.8 * t)


def preview_into(
    handle,
    xyz: np.ndarray,
    rgb: np.ndarray,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    image_hw: tuple[int, int],
    title: str | None = None,
    max_points: int = 150_000,
    seed: int = 0,
    dpi: int = 100,
) -> Path:
    """A PNG with three views of the coloured points and the cameras, into ``handle``.

    1. a perspective splat (:func:`splat`) from behind and above the first camera, looking at the
       scene, with every camera's frustum drawn;
    2. a top view (looking down along gravity as estimated by :func:`view_basis`);
    3. a side view (from the right of the first camera, up the page is up).

    Args:
        xyz, rgb: ``[M, 3]`` points (OpenCV world) and uint8 colours.
        extrinsics, intrinsics: ``[S, 3, 4]`` world-to-camera and ``[S, 3, 3]``, referring to
            images of ``image_hw`` ``(H, W)`` pixels.
        max_points: points drawn (a seeded random subset beyond that).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xyz, rgb = _check_points(xyz, rgb)
    extrinsics = np.asarray(extrinsics, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    keep = np.isfinite(xyz).all(axis=1)
    xyz, rgb = xyz[keep].astype(np.float64), rgb[keep]
    idx = _subsample(len(xyz), max_points, seed)
    xyz, rgb = xyz[idx], rgb[idx]
    finite = np.isfinite(extrinsics).all(axis=(1, 2)) if len(extrinsics) else np.zeros(0, bool)
    extrinsics = extrinsics[finite]  # degenerate poses cannot be drawn
    intrinsics = intrinsics[finite] if intrinsics.ndim == 3 else intrinsics
    count = len(extrinsics)
    _, centres = _cam_to_world(extrinsics) if count else (None, np.zeros((0, 3)))
    size = scene_scale(xyz, centres)
    _, corners = camera_frustum_corners(extrinsics, intrinsics, image_hw, 0.05 * size) if count else (None, np.zeros((0, 4, 3)))

    fig = Figure(figsize=(16.5, 5.8), dpi=dpi, facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.35, 1.0, 1.0]})

    basis = view_basis(extrinsics)  # rows: right, down, forward
    right, down, forward = basis

    # 1. Perspective splat from behind and above the first camera, looking at the points.
    ax = axes[0]
    render_hw = (420, 560)
    centre0 = centres[0] if count else np.zeros(3)
    target = np.median(xyz, axis=0) if len(xyz) else centre0 + forward
    distance = max(np.linalg.norm(target - centre0), 1e-6)
    eye = centre0 - 0.45 * distance * forward - 0.35 * distance * down
    view = _look_at(eye, target, down)
    focal = 0.5 * render_hw[1] / np.tan(np.deg2rad(60.0) / 2)
    k_view = np.array([[focal, 0, render_hw[1] / 2], [0, focal, render_hw[0] / 2], [0, 0, 1.0]])
    ax.imshow(splat(xyz, rgb, view, k_view, render_hw, radius=1), interpolation="nearest")
    for i in range(count):
        for a, b in _frustum_segments(centres[i], corners[i]):
            ends = np.stack([a, b]) @ view[:, :3].T + view[:, 3]
            if (ends[:, 2] <= 1e-6).any():
                continue
            pix = ends @ k_view.T
            ax.plot(pix[:, 0] / pix[:, 2], pix[:, 1] / pix[:, 2], color=_camera_colour(i, count), linewidth=0.9)
    ax.set_xlim(0, render_hw[1])
    ax.set_ylim(render_hw[0], 0)
    ax.set_axis_off()
    ax.set_title("perspective (behind the first camera)", fontsize=10)

    # 2-3. Orthographic views in the (right, down, forward) basis; nearer points drawn last.
    p_view = xyz @ basis.T
    c_view = centres @ basis.T
    f_view = corners @ basis.T
    views = [  # title, horizontal (axis, sign), vertical (axis, sign), nearness (axis, sign)
        ("top view (looking down)", (0, 1.0), (2, 1.0), (1, -1.0), ("right", "forward")),
        ("side view (from the right)", (2, 1.0), (1, -1.0), (0, 1.0), ("forward", "up")),
    ]
    for ax, (name, (hi, hs), (vi, vs), (ni, ns), labels) in zip(axes[1:], views):
        order = np.argsort(ns * p_view[:, ni], kind="stable")
        ax.scatter(hs * p_view[order, hi], vs * p_view[order, vi], c=rgb[order] / 255.0, s=0.6, marker=".",
                   linewidths=0, rasterized=True)
        for i in range(count):
            colour = _camera_colour(i, count)
            for a, b in _frustum_segments(c_view[i], f_view[i]):
                ax.plot([hs * a[hi], hs * b[hi]], [vs * a[vi], vs * b[vi]], color=colour, linewidth=0.8)
            ax.plot(hs * c_view[i, hi], vs * c_view[i, vi], "o", color=colour, markersize=2.5)
        hs_all = hs * np.concatenate([p_view[:, hi], c_view[:, hi]])
        vs_all = vs * np.concatenate([p_view[:, vi], c_view[:, vi]])
        if len(hs_all):
            lo_h, hi_h = np.percentile(hs * p_view[:, hi], [1, 99]) if len(p_view) else (hs_all.min(), hs_all.max())
            lo_v, hi_v = np.percentile(vs * p_view[:, vi], [1, 99]) if len(p_view) else (vs_all.min(), vs_all.max())
            if count:  # always show the cameras
                lo_h, hi_h = min(lo_h, (hs * c_view[:, hi]).min()), max(hi_h, (hs * c_view[:, hi]).max())
                lo_v, hi_v = min(lo_v, (vs * c_view[:, vi]).min()), max(hi_v, (vs * c_view[:, vi]).max())
            pad = 0.06 * max(hi_h - lo_h, hi_v - lo_v, 1e-6)
            ax.set_xlim(lo_h - pad, hi_h + pad)
            ax.set_ylim(lo_v - pad, hi_v + pad)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(labels[0], fontsize=9)
        ax.set_ylabel(labels[1], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_title(name, fontsize=10)
        ax.grid(True, linewidth=0.3, alpha=0.5)

    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(handle, format="png", dpi=dpi)


def render_preview(path: str | os.PathLike, *args, **kwargs) -> Path:
    """Write the preview PNG of :func:`preview_into` (same arguments after ``path``) atomically."""
    path = Path(path)
    with atomic_write(path) as handle:
        preview_into(handle, *args, **kwargs)
    return path
