"""Reading images as upright 8-bit RGB: listing image files, decoding one file, and converting
in-memory arrays, tensors and PIL images.

Every reader returns ``[H, W, 3]`` uint8 RGB. EXIF orientation is applied, so photos load upright
(a deliberate addition to VGGT's loader); images with an alpha channel are composited onto white;
high bit-depth grayscale is scaled to 8 bit. An image smaller than one 14x14 patch is refused.
Unreadable inputs raise :class:`pacegeo.errors.InputError` with a one-line message naming them.

Preprocessing for the model (resizing, cropping, padding) is in :mod:`pacegeo.io.images`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pacegeo.errors import InputError

_logger = logging.getLogger(__name__)

#: Side of the model's square patches, in pixels; no image side may be smaller.
PATCH_SIZE = 14
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
ImageSource = Union[str, os.PathLike, np.ndarray, torch.Tensor, Image.Image]

__all__ = [
    "IMAGE_EXTENSIONS",
    "PATCH_SIZE",
    "array_to_rgb",
    "list_image_files",
    "natural_sort_key",
    "pil_to_rgb",
    "read_image_rgb",
    "read_image_source",
]


# --------------------------------------------------------------------------------------------
# Listing files
# --------------------------------------------------------------------------------------------


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value (``2.png`` before ``10.png``), case-insensitively."""
    parts = re.split(r"(\d+)", name)
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return key, name


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, naturally sorted.

    Only files with an image extension (case-insensitive: ``.jpg .jpeg .jpe .png .webp .gif .bmp
    .tif .tiff``) are listed; hidden files (name starting with ``.``) and subfolders are skipped.
    The list may be empty. Raises :class:`InputError` if ``folder`` is not an existing folder.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    files = [
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    ]
    return sorted(files, key=lambda p: natural_sort_key(p.name))


# --------------------------------------------------------------------------------------------
# Reading one image as 8-bit RGB
# --------------------------------------------------------------------------------------------


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _scale_to_uint8(values: np.ndarray, max_value: float) -> np.ndarray:
    """Scale values in ``[0, max_value]`` linearly to rounded uint8 (values outside are clipped)."""
    scaled = np.clip(values.astype(np.float64), 0.0, max_value) * (255.0 / max_value)
    return np.rint(scaled).astype(np.uint8)


def _high_depth_gray_to_uint8(img: Image.Image) -> np.ndarray:
    """8-bit ``[H, W]`` from 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) grayscale.

    Integer modes are taken as 16-bit data (0..65535 -> 0..255); PIL's own conversion would clip at
    255 instead. Float images with all values in [0, 1] are scaled by 255, others clipped to 0..255.
    """
    values = np.asarray(img)
    if img.mode == "F":
        finite = values[np.isfinite(values)]
        in_unit_range = finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0)
        return _scale_to_uint8(np.nan_to_num(values), 1.0 if in_unit_range else 255.0)
    return _scale_to_uint8(values, 65535.0)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to ``[H, W, 3]`` uint8 RGB.

    Alpha (RGBA, LA, palette or colour-key transparency) is composited onto white, high bit-depth
    grayscale is scaled to 8 bit, and other modes (L, 1, P, CMYK, YCbCr, ...) use PIL's conversion.
    EXIF orientation is not applied here (see :func:`read_image_rgb`).
    """
    if img.mode.startswith("I") or img.mode == "F":
        gray = _high_depth_gray_to_uint8(img)
        return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode != "RGB" and img.has_transparency_data:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _check_min_size(height: int, width: int, source: str) -> None:
    if height < PATCH_SIZE or width < PATCH_SIZE:
        raise InputError(
            f"cannot use image {source}: it is {width}x{height} pixels, smaller than one "
            f"{PATCH_SIZE}x{PATCH_SIZE} patch"
        )


def _decode(path: Path) -> Image.Image:
    """Open and fully decode the first frame of ``path``, then apply EXIF orientation."""
    try:
        with Image.open(path) as img:
            img.load()
            if getattr(img, "n_frames", 1) > 1:
                _logger.debug("%s has %d frames; using the first", path, img.n_frames)
            try:
                return ImageOps.exif_transpose(img)
            except Exception as exc:  # malformed EXIF must not make a readable image unusable
                _logger.warning("ignoring unreadable EXIF orientation in %s: %s", path, _one_line(exc))
                return img.copy()
    except UnidentifiedImageError:
        raise InputError(f"cannot read image {path}: not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"cannot read image {path}: {_one_line(exc)}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        # Decoders report damaged data through a variety of exception types.
        raise InputError(f"cannot read image {path}: corrupt or truncated ({_one_line(exc)})") from None


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as upright ``[H, W, 3]`` uint8 RGB.

    Supports JPEG, PNG, WebP, GIF (first frame), BMP and TIFF; applies EXIF orientation; converts
    grayscale, palette, CMYK, 16-bit and alpha images to RGB (alpha composited onto white).

    Raises:
        InputError: a one-line message naming the file if it is missing, empty, not an image,
            truncated or corrupt, in an unsupported colour mode, or smaller than one 14x14 patch.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"image not found: {path}")
    if not path.is_file():
        raise InputError(f"cannot read image {path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"cannot read image {path}: the file is empty")
    img = _decode(path)
    _check_min_size(img.height, img.width, str(path))
    try:
        return pil_to_rgb(img)
    except (ValueError, OSError) as exc:
        reason = f"unsupported colour mode {img.mode} ({_one_line(exc)})"
        raise InputError(f"cannot read image {path}: {reason}") from None


def _array_to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    """uint8 copy of an image array: uint16 is scaled from 16 bit, floats must lie in [0, 1]."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return _scale_to_uint8(array, 65535.0)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise InputError(f"cannot use image {source}: float pixel values must lie in [0, 1]")
        return _scale_to_uint8(array, 1.0)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise InputError(f"cannot use image {source}: integer pixel values must lie in [0, 255]")
        return array.astype(np.uint8)
    raise InputError(f"cannot use image {source}: unsupported pixel type {array.dtype}")


def _to_hwc(array: np.ndarray, channels_first: bool, source: str) -> np.ndarray:
    """``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` (C in 1, 3, 4) to ``[H, W, C]``."""
    if array.ndim == 2:
        return array[..., None]
    if array.ndim == 3:
        first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if first and (channels_first or not last):
            return np.moveaxis(array, 0, -1)
        if last:
            return array
    raise InputError(
        f"cannot use image {source}: expected [H, W], [H, W, C] or [C, H, W] with C in 1, 3, 4, "
        f"got shape {list(array.shape)}"
    )


def array_to_rgb(image: np.ndarray | torch.Tensor, source: str = "<array>") -> np.ndarray:
    """Convert an in-memory image to ``[H, W, 3]`` uint8 RGB.

    numpy arrays are read as ``[H, W]`` or ``[H, W, C]`` (``[C, H, W]`` also accepted); torch tensors
    as ``[C, H, W]`` (``[H, W, C]`` also accepted), with C in 1 (gray), 3 (RGB), 4 (RGBA, composited
    onto white). Values: uint8, uint16 (16 bit), bool, or float in [0, 1]; like file pixels, they
    are quantised to 8 bit before resizing.
    """
    is_tensor = isinstance(image, torch.Tensor)
    array = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
    array = _array_to_uint8(_to_hwc(array, channels_first=is_tensor, source=source), source)
    _check_min_size(array.shape[0], array.shape[1], source)
    channels = array.shape[-1]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    pil = Image.fromarray(np.ascontiguousarray(array[..., 0] if channels == 1 else array), mode=mode)
    return pil_to_rgb(pil)


def read_image_source(item: ImageSource, index: int) -> tuple[np.ndarray, str, Path | None]:
    """Read one input item; returns RGB uint8, a source label and the path (or None)."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        return read_image_rgb(path), str(path), path
    label = f"<image {index}>"
    if isinstance(item, Image.Image):
        try:
            upright = ImageOps.exif_transpose(item)
            _check_min_size(upright.height, upright.width, label)
            return pil_to_rgb(upright), label, None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InputError(f"cannot use image {label}: {_one_line(exc)}") from None
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return array_to_rgb(item, label), label, None
    raise InputError(f"cannot use image {index}: unsupported input type {type(item).__name__}")
