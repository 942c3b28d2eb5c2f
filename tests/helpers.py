"""Helpers shared by the test modules: synthetic frames on disk, scripts imported from their paths."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
from PIL import Image

TARGET = 70  # model input width of the tiny test model (conftest ``model_path``): 70 px = 5 patches


def write_frames(folder: Path, count: int = 4, size_hw: tuple[int, int] = (56, 70), seed: int = 0) -> list[Path]:
    """``count`` textured RGB PNGs (a shifting colour gradient plus noise) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size_hw
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(count):
        rgb = np.stack([(xx * 3 + 20 * i) % 256, (yy * 4) % 256, (xx + yy + 40 * i) % 256], axis=-1)
        rgb = np.clip(rgb + rng.integers(0, 40, size=rgb.shape), 0, 255).astype(np.uint8)
        path = folder / f"frame_{i:02d}.png"
        Image.fromarray(rgb).save(path)
        paths.append(path)
    return paths


def load_script(path: Path, prefix: str):
    """The script at ``path`` (``eval/`` and ``train/`` are not packages) as module
    ``<prefix>_<stem>``, imported once per session."""
    module_name = f"{prefix}_{path.stem}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]
