"""Input and output: reading and preprocessing images."""

from pacegeo.io.images import (
    DEFAULT_TARGET_SIZE,
    IMAGE_EXTENSIONS,
    PATCH_SIZE,
    ImageTransform,
    PreprocessedImages,
    SkippedImage,
    array_to_rgb,
    list_image_files,
    load_images,
    natural_sort_key,
    pil_to_rgb,
    preprocess_image,
    read_image_rgb,
)

__all__ = [
    "DEFAULT_TARGET_SIZE",
    "IMAGE_EXTENSIONS",
    "PATCH_SIZE",
    "ImageTransform",
    "PreprocessedImages",
    "SkippedImage",
    "array_to_rgb",
    "list_image_files",
    "load_images",
    "natural_sort_key",
    "pil_to_rgb",
    "preprocess_image",
    "read_image_rgb",
]
