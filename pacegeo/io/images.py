"""Reading images and preprocessing them for a VGGT-style model.

The preprocessing reproduces VGGT's ``load_and_preprocess_images`` in its two modes:

* ``"crop"``: the width becomes ``target_size`` and the height keeps the aspect ratio, rounded to
  a multiple of 14 (Python ``round``, so ties go to even); a height above ``target_size`` is
  centre-cropped to ``target_size``. A 4:3 landscape photo gives 392x518 (HxW).
* ``"pad"``: the longer side becomes ``target_size`` and the shorter side is rounded the same way;
  the result is padded with white (1.0) to ``target_size`` x ``target_size``, with
  ``floor(diff / 2)`` on the top/left.

Resizing uses PIL bicubic on 8-bit RGB. Images with an alpha channel are composited onto white.
If the processed images differ in shape, each is padded with white, centred, to the largest height
and width. The output is ``[S, 3, H, W]`` float32 in [0, 1], without mean/std normalisation.

Two deliberate additions to the upstream behaviour: EXIF orientation is applied, so photos load
upright, and a side that would round to 0 pixels is kept at one 14-pixel patch instead.

Every processed image carries an :class:`ImageTransform` that maps model-input pixels back to
pixels of the original (EXIF-oriented) image.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from pacegeo.errors import InputError

_logger = logging.getLogger(__name__)

PATCH_SIZE = 14
DEFAULT_TARGET_SIZE = 518
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
PreprocessMode = Literal["crop", "pad"]
PixelConvention = Literal["center", "corner"]
ImageSource = Union[str, os.PathLike, np.ndarray, torch.Tensor, Image.Image]

__all__ = [
    "DEFAULT_TARGET_SIZE",
    "IMAGE_EXTENSIONS",
    "PATCH_SIZE",
    "ImageTransform",
    "PreprocessedImages",
    "SkippedImage",
    "array_to_rgb",
    "check_preprocess_options",
    "list_image_files",
    "load_images",
    "natural_sort_key",
    "pad_to_common_shape",
    "pil_to_rgb",
    "preprocess_image",
    "read_image_rgb",
    "read_image_source",
]


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTransform:
    """How one model-input image relates to its original image.

    The original image is the file's pixels after EXIF orientation. Model pixel ``x`` lies at
    ``x - offset_x`` in the resized image, and one resized pixel spans ``scale_x`` original pixels
    (likewise for y).

    Attributes:
        source: the file path as a string, or a ``<image i>`` label for in-memory inputs.
        path: the file path, or ``None`` for in-memory inputs.
        original_hw: ``(H, W)`` of the original image.
        resized_hw: ``(H, W)`` after the bicubic resize, before cropping or padding.
        final_hw: ``(H, W)`` of the model input (after any padding to a common shape).
        scale_x, scale_y: original pixels per model pixel (``W_orig / W_resized``, ``H_orig / H_resized``).
        offset_x, offset_y: model-pixel position of the resized image's top-left corner: the
            padding added on the left/top, minus the rows cropped from the top.
    """

    source: str
    path: Path | None
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    final_hw: tuple[int, int]
    scale_x: float
    scale_y: float
    offset_x: int
    offset_y: int

    @property
    def name(self) -> str:
        """File name, or the ``<image i>`` label of an in-memory input."""
        return self.path.name if self.path is not None else self.source

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` in model pixels (end exclusive) holding image content, not padding."""
        height, width = self.final_hw
        x0, y0 = max(self.offset_x, 0), max(self.offset_y, 0)
        x1 = min(self.offset_x + self.resized_hw[1], width)
        y1 = min(self.offset_y + self.resized_hw[0], height)
        return x0, y0, x1, y1

    def model_to_original_matrix(self, convention: PixelConvention = "center") -> np.ndarray:
        """3x3 float64 affine map from homogeneous model pixels to original pixels.

        ``convention="center"``: integer coordinates are pixel centres, the grid used by
        :func:`pacegeo.geometry.depth_to_camera_points` (``u = 0..W-1``).
        ``convention="corner"``: integer coordinates are pixel corners (pixel ``i`` spans ``[i, i+1]``).
        """
        if convention not in ("center", "corner"):
            raise InputError(f"pixel convention must be 'center' or 'corner', got {convention!r}")
        half = 0.5 if convention == "center" else 0.0
        bx = self.scale_x * (half - self.offset_x) - half
        by = self.scale_y * (half - self.offset_y) - half
        return np.array([[self.scale_x, 0.0, bx], [0.0, self.scale_y, by], [0.0, 0.0, 1.0]])

    def to_original(self, uv: np.ndarray | torch.Tensor, convention: PixelConvention = "center"):
        """Map model pixel coordinates ``[..., 2]`` (x, y) to original-image pixel coordinates."""
        return _apply_affine(self.model_to_original_matrix(convention), uv)

    def to_model(self, uv: np.ndarray | torch.Tensor, convention: PixelConvention = "center"):
        """Map original-image pixel coordinates ``[..., 2]`` (x, y) to model pixel coordinates."""
        return _apply_affine(np.linalg.inv(self.model_to_original_matrix(convention)), uv)

    def intrinsics_to_original(
        self, intrinsics: np.ndarray | torch.Tensor, convention: PixelConvention = "center"
    ):
        """Express model-input intrinsics ``[..., 3, 3]`` in original-image pixels (``A @ K``)."""
        return _left_multiply(self.model_to_original_matrix(convention), intrinsics)

    def intrinsics_to_model(
        self, intrinsics: np.ndarray | torch.Tensor, convention: PixelConvention = "center"
    ):
        """Express original-image intrinsics ``[..., 3, 3]`` in model-input pixels (``A^-1 @ K``)."""
        return _left_multiply(np.linalg.inv(self.model_to_original_matrix(convention)), intrinsics)


@dataclass(frozen=True)
class SkippedImage:
    """An input that could not be read, and why."""

    source: str
    reason: str


@dataclass
class PreprocessedImages:
    """Model-ready images plus the per-image mapping back to the originals.

    Attributes:
        images: ``[S, 3, H, W]`` float32 RGB in [0, 1] (no mean/std normalisation).
        transforms: one :class:`ImageTransform` per image, in order.
        skipped: inputs that were unreadable and left out (only when not strict).
        mode: ``"crop"`` or ``"pad"``.
        target_size: the target side length used (a multiple of 14).
    """

    images: torch.Tensor
    transforms: list[ImageTransform]
    skipped: list[SkippedImage] = field(default_factory=list)
    mode: str = "crop"
    target_size: int = DEFAULT_TARGET_SIZE

    def __len__(self) -> int:
        return len(self.transforms)

    @property
    def image_size_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the model input."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    @property
    def names(self) -> list[str]:
        """File names (or ``<image i>`` labels), one per image."""
        return [t.name for t in self.transforms]

    @property
    def paths(self) -> list[Path | None]:
        """Source paths (``None`` for in-memory inputs), one per image."""
        return [t.path for t in self.transforms]

    def intrinsics_to_original(
        self, intrinsics: np.ndarray | torch.Tensor, convention: PixelConvention = "center"
    ):
        """Express per-image model intrinsics ``[..., S, 3, 3]`` in each original image's pixels."""
        if intrinsics.shape[-3] != len(self):
            raise InputError(f"expected intrinsics [..., {len(self)}, 3, 3], got {list(intrinsics.shape)}")
        matrices = np.stack([t.model_to_original_matrix(convention) for t in self.transforms])
        return _left_multiply(matrices, intrinsics)


def _apply_affine(matrix: np.ndarray, uv: np.ndarray | torch.Tensor):
    """Apply a 3x3 affine pixel map to points ``[..., 2]``; returns the input's array type."""
    if isinstance(uv, torch.Tensor):
        dtype = uv.dtype if uv.is_floating_point() else torch.float64
        m = torch.as_tensor(matrix, dtype=dtype, device=uv.device)
        uv = uv.to(dtype)
        return uv @ m[:2, :2].T + m[:2, 2]
    uv = np.asarray(uv, dtype=np.float64)
    return uv @ matrix[:2, :2].T + matrix[:2, 2]


def _left_multiply(matrix: np.ndarray, intrinsics: np.ndarray | torch.Tensor):
    """``matrix @ intrinsics`` keeping the intrinsics' array type, dtype and device."""
    if isinstance(intrinsics, torch.Tensor):
        m = torch.as_tensor(matrix, dtype=torch.float64, device=intrinsics.device)
        return (m @ intrinsics.to(torch.float64)).to(intrinsics.dtype)
    intrinsics = np.asarray(intrinsics)
    return (matrix @ intrinsics).astype(np.result_type(intrinsics.dtype, np.float32))


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


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def check_preprocess_options(mode: str, target_size: int) -> None:
    """Raise :class:`InputError` unless ``mode`` is ``crop``/``pad`` and ``target_size`` a multiple of the patch size."""
    if mode not in ("crop", "pad"):
        raise InputError(f"preprocessing mode must be 'crop' or 'pad', got {mode!r}")
    if not isinstance(target_size, int) or target_size < PATCH_SIZE or target_size % PATCH_SIZE:
        raise InputError(f"target size must be a positive multiple of {PATCH_SIZE}, got {target_size!r}")


def _resized_size(width: int, height: int, mode: str, target_size: int) -> tuple[int, int]:
    """``(new_w, new_h)`` after resizing: the width (crop) or the longer side (pad) becomes the target.

    The other side keeps the aspect ratio, rounded to a multiple of 14 with Python ``round``, and
    is at least one patch.
    """
    if mode == "pad" and height > width:
        new_h = target_size
        new_w = round(width * (new_h / height) / PATCH_SIZE) * PATCH_SIZE
    else:
        new_w = target_size
        new_h = round(height * (new_w / width) / PATCH_SIZE) * PATCH_SIZE
    return max(new_w, PATCH_SIZE), max(new_h, PATCH_SIZE)


def _pad_white(image: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
    """Pad ``[3, h, w]`` with 1.0 to ``[3, height, width]``, ``floor(diff / 2)`` on the top/left.

    Returns the padded image and the left and top padding.
    """
    pad_h, pad_w = height - image.shape[-2], width - image.shape[-1]
    if pad_h <= 0 and pad_w <= 0:
        return image, 0, 0
    top, left = pad_h // 2, pad_w // 2
    padded = F.pad(image, (left, pad_w - left, top, pad_h - top), mode="constant", value=1.0)
    return padded, left, top


def preprocess_image(
    rgb: np.ndarray,
    mode: PreprocessMode = "crop",
    target_size: int = DEFAULT_TARGET_SIZE,
    source: str = "<image>",
    path: Path | None = None,
) -> tuple[torch.Tensor, ImageTransform]:
    """Resize and crop or pad one ``[H, W, 3]`` uint8 RGB image as VGGT does.

    Returns:
        ``[3, H', W']`` float32 in [0, 1] and its :class:`ImageTransform`.
    """
    check_preprocess_options(mode, target_size)
    height, width = rgb.shape[:2]
    new_w, new_h = _resized_size(width, height, mode, target_size)
    resized = Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BICUBIC)
    image = torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).float().div(255)

    offset_x = offset_y = 0
    if mode == "crop" and new_h > target_size:
        start = (new_h - target_size) // 2
        image = image[:, start : start + target_size, :]
        offset_y = -start
    elif mode == "pad":
        image, offset_x, offset_y = _pad_white(image, target_size, target_size)

    transform = ImageTransform(
        source=source,
        path=path,
        original_hw=(height, width),
        resized_hw=(new_h, new_w),
        final_hw=(image.shape[-2], image.shape[-1]),
        scale_x=width / new_w,
        scale_y=height / new_h,
        offset_x=offset_x,
        offset_y=offset_y,
    )
    return image, transform


def pad_to_common_shape(
    images: list[torch.Tensor], transforms: list[ImageTransform]
) -> tuple[list[torch.Tensor], list[ImageTransform]]:
    """Pad differently shaped images with white, centred, to the largest H and W."""
    shapes = sorted({tuple(img.shape[-2:]) for img in images})
    if len(shapes) <= 1:
        return images, transforms
    height = max(h for h, _ in shapes)
    width = max(w for _, w in shapes)
    _logger.warning(
        "images have different shapes %s after preprocessing; padding all with white to %dx%d (HxW)",
        shapes,
        height,
        width,
    )
    out_images, out_transforms = [], []
    for image, transform in zip(images, transforms):
        padded, left, top = _pad_white(image, height, width)
        out_images.append(padded)
        out_transforms.append(
            replace(
                transform,
                final_hw=(height, width),
                offset_x=transform.offset_x + left,
                offset_y=transform.offset_y + top,
            )
        )
    return out_images, out_transforms


# --------------------------------------------------------------------------------------------
# Loading many images
# --------------------------------------------------------------------------------------------


def _resolve_inputs(inputs) -> tuple[list[ImageSource], str]:
    """Expand a folder, file, batch array or sequence into a list of items, plus a description."""
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if path.is_dir():
            files = list_image_files(path)
            if not files:
                exts = " ".join(sorted(IMAGE_EXTENSIONS))
                raise InputError(f"no image files in folder {path} (looked for {exts})")
            return list(files), f"folder {path}"
        if not path.exists():
            raise InputError(f"image folder or file not found: {path}")
        return [path], str(path)
    if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4:
        return list(inputs), "the image batch"
    if isinstance(inputs, (np.ndarray, torch.Tensor, Image.Image)):
        return [inputs], "the image"
    if isinstance(inputs, Sequence) and not isinstance(inputs, (bytes, bytearray)):
        if len(inputs) == 0:
            raise InputError("no images given")
        return list(inputs), f"{len(inputs)} inputs"
    raise InputError(f"cannot load images from a {type(inputs).__name__}; give a folder, files or arrays")


def load_images(
    paths_or_folder: str | os.PathLike | Sequence[ImageSource] | np.ndarray | torch.Tensor | Image.Image,
    mode: PreprocessMode = "crop",
    target_size: int = DEFAULT_TARGET_SIZE,
    strict: bool = False,
) -> PreprocessedImages:
    """Read and preprocess images for the model.

    Args:
        paths_or_folder: a folder (its image files, naturally sorted), one image file, or a
            sequence of file paths, numpy arrays ``[H, W(, C)]``, torch tensors ``[C, H, W]`` or PIL
            images (a 4-D array or tensor is split along its first axis).
        mode: ``"crop"`` or ``"pad"`` (see the module docstring).
        target_size: side length for the width (crop) or longer side (pad); a multiple of 14.
            518 is VGGT's training size.
        strict: if True, any unreadable input raises; otherwise it is skipped with a warning and
            recorded in :attr:`PreprocessedImages.skipped`.

    Returns:
        :class:`PreprocessedImages` with ``images [S, 3, H, W]`` float32 in [0, 1].

    Raises:
        InputError: bad options, a missing or empty folder, an unreadable input in strict mode, or
            no readable image left.
    """
    check_preprocess_options(mode, target_size)
    items, description = _resolve_inputs(paths_or_folder)
    images: list[torch.Tensor] = []
    transforms: list[ImageTransform] = []
    skipped: list[SkippedImage] = []
    for index, item in enumerate(items):
        try:
            rgb, source, path = read_image_source(item, index)
        except InputError as exc:
            if strict:
                raise
            label = str(item) if isinstance(item, (str, os.PathLike)) else f"<image {index}>"
            _logger.warning("skipping unreadable image: %s", exc)
            skipped.append(SkippedImage(source=label, reason=str(exc)))
            continue
        image, transform = preprocess_image(rgb, mode, target_size, source=source, path=path)
        images.append(image)
        transforms.append(transform)

    if not images:
        first = f"; first error: {skipped[0].reason}" if skipped else ""
        raise InputError(f"no readable images in {description}{first}")
    images, transforms = pad_to_common_shape(images, transforms)
    return PreprocessedImages(
        images=torch.stack(images),
        transforms=transforms,
        skipped=skipped,
        mode=mode,
        target_size=target_size,
    )
