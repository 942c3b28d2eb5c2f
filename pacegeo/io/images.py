"""Preprocessing images for a VGGT-style model, and loading many at once.

The preprocessing reproduces VGGT's ``load_and_preprocess_images`` in its two modes:

* ``"crop"``: the width becomes ``target_size`` and the height keeps the aspect ratio, rounded to
  a multiple of 14 (Python ``round``, so ties go to even); a height above ``target_size`` is
  centre-cropped to ``target_size``. A 4:3 landscape photo gives 392x518 (HxW).
* ``"pad"``: the longer side becomes ``target_size`` and the shorter side is rounded the same way;
  the result is padded with white (1.0) to ``target_size`` x ``target_size``, with
  ``floor(diff / 2)`` on the top/left.

Images are read as upright 8-bit RGB by :mod:`pacegeo.io.decode` (EXIF orientation applied, alpha
composited onto white). Resizing uses PIL bicubic on 8-bit RGB. If the processed images differ in
shape, each is padded with white, centred, to the largest height and width. The output is
``[S, 3, H, W]`` float32 in [0, 1], without mean/std normalisation.

Two deliberate additions to the upstream behaviour: EXIF orientation is applied, so photos load
upright, and a side that would round to 0 pixels is kept at one 14-pixel patch instead.

Every processed image carries an :class:`ImageTransform` that maps model-input pixels back to
pixels of the original (EXIF-oriented) image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pacegeo.errors import InputError
from pacegeo.io.decode import IMAGE_EXTENSIONS, PATCH_SIZE, ImageSource, list_image_files, read_image_source

_logger = logging.getLogger(__name__)

DEFAULT_TARGET_SIZE = 518
PreprocessMode = Literal["crop", "pad"]
PixelConvention = Literal["center", "corner"]

__all__ = [
    "DEFAULT_TARGET_SIZE",
    "ImageTransform",
    "PreprocessedImages",
    "SkippedImage",
    "check_preprocess_options",
    "load_images",
    "pad_to_common_shape",
    "preprocess_image",
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
