"""Input and output: reading images (:mod:`pacegeo.io.decode`) and preprocessing them for the model
(:mod:`pacegeo.io.images`); videos (:mod:`pacegeo.io.video`), input selection
(:mod:`pacegeo.io.inputs`), atomic outputs (:mod:`pacegeo.io.outputs`), the export writers
(:mod:`pacegeo.io.export`) and the PNG preview (:mod:`pacegeo.io.preview`).

Re-exports the public names of :mod:`pacegeo.io.decode` and :mod:`pacegeo.io.images` (their
``__all__``); the other modules are imported on use.
"""

from pacegeo.io.decode import (
    IMAGE_EXTENSIONS,
    PATCH_SIZE,
    array_to_rgb,
    list_image_files,
    natural_sort_key,
    pil_to_rgb,
    read_image_rgb,
    read_image_source,
)
from pacegeo.io.images import (
    DEFAULT_TARGET_SIZE,
    ImageTransform,
    PreprocessedImages,
    SkippedImage,
    check_preprocess_options,
    load_images,
    pad_to_common_shape,
    preprocess_image,
)

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
