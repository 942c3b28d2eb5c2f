"""Preview contact sheet of generated scenes: colour frames above their colourised depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image


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
