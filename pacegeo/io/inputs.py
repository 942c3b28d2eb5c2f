"""Inputs: a folder of images, a video, files or in-memory images, read, selected and
preprocessed into :class:`PreparedInputs` (what every model run takes).

``prepare_inputs`` never modifies an input; :attr:`PreparedInputs.paths` records what it read, so
that outputs can be checked against it (:mod:`pacegeo.io.outputs`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pacegeo.errors import InputError, option
from pacegeo.options import check_count
from pacegeo.progress import progress_bar, progress_enabled

logger = logging.getLogger(__name__)

__all__ = ["PreparedInputs", "check_input", "input_paths", "prepare_inputs", "select_frames", "unique_names"]


def select_frames(count: int, frames: int | None = None, stride: int | None = None) -> list[int]:
    """Indices of the frames to use out of ``count``.

    ``frames=N``: ``N`` frames spread evenly over the sequence, first and last included (all of
    them when ``N >= count``). ``stride=K``: every ``K``-th frame from the first. At most one of the
    two may be given; neither keeps all frames.
    """
    frames = check_count(frames, "frames")
    stride = check_count(stride, "stride")
    if frames is not None and stride is not None:
        raise InputError(f"give either {option('frames')} or {option('stride')}, not both")
    if count <= 0:
        return []
    if frames is not None:
        if frames >= count:
            return list(range(count))
        if frames == 1:
            return [0]
        return sorted({int(round(x)) for x in np.linspace(0, count - 1, frames)})
    if stride is not None:
        return list(range(0, count, stride))
    return list(range(count))


@dataclass
class PreparedInputs:
    """Preprocessed frames ready for the model.

    Attributes:
        images: ``[S, 3, h, w]`` float32 RGB in [0, 1].
        transforms: per frame, the :class:`pacegeo.io.images.ImageTransform` back to original pixels.
        names: unique frame names (file names; for a video ``<stem>_<ms>ms.png``).
        skipped: ``(source, reason)`` of inputs that could not be read and were left out.
        source: a description of the input (folder, video or list).
        paths: the files and folders read (the folder, video or image files; none for arrays):
            no output of a reconstruction from them may replace or lie inside one of them.
        mode, target_size: preprocessing used.
        seconds: time spent reading and preprocessing.
    """

    images: torch.Tensor
    transforms: list
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""
    mode: str = "crop"
    target_size: int = 518
    seconds: float = 0.0
    paths: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(h, w)`` of the model input."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])


def unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            stem, dot, ext = name.rpartition(".")
            candidate = f"{stem}_{seen[name]}.{ext}" if dot else f"{name}_{seen[name]}"
            out.append(candidate)
        else:
            seen[name] = 1
            out.append(name)
    return out


def _input_items(inputs, fps: float | None) -> tuple[str, object, str]:
    """Classify ``inputs``: ``("files", [paths], desc)``, ``("video", path, desc)`` or ``("arrays", items, desc)``."""
    from pacegeo.io.decode import IMAGE_EXTENSIONS, list_image_files
    from pacegeo.io.video import VIDEO_EXTENSIONS, is_video_file

    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs).expanduser()
        if not path.exists():
            raise InputError(f"input not found: {path}")
        if path.is_dir():
            files = list_image_files(path)
            if not files:
                exts = " ".join(sorted(IMAGE_EXTENSIONS))
                raise InputError(f"no image files in folder {path} (looked for {exts})")
            if fps is not None:
                raise InputError("fps applies to video input only; the input is a folder of images")
            return "files", files, f"folder {path}"
        if is_video_file(path):
            return "video", path, f"video {path}"
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return "files", [path], str(path)
        kinds = " ".join(sorted(VIDEO_EXTENSIONS))
        raise InputError(f"unsupported input {path}: give a folder of images or a video file ({kinds})")
    if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4:
        return "arrays", list(inputs), "the image batch"
    if isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes, bytearray)):
        if len(inputs) == 0:
            raise InputError("no images given")
        if all(isinstance(item, (str, os.PathLike)) for item in inputs):
            return "files", [Path(item) for item in inputs], f"{len(inputs)} files"
        return "arrays", list(inputs), f"{len(inputs)} images"
    from PIL import Image

    if isinstance(inputs, (np.ndarray, torch.Tensor, Image.Image)):
        return "arrays", [inputs], "the image"
    raise InputError(f"cannot reconstruct from a {type(inputs).__name__}; give a folder, a video, files or arrays")


def _input_paths(inputs, kind: str, items) -> list[Path]:
    """What ``inputs`` reads from disk: the folder or video as given, or the image files."""
    if isinstance(inputs, (str, os.PathLike)):
        return [Path(inputs).expanduser()]
    if kind == "files":
        return [Path(item).expanduser() for item in items]
    return []


def input_paths(inputs, fps: float | None = None) -> list[Path]:
    """The files and folders a reconstruction of ``inputs`` reads (checked like :func:`check_input`)."""
    kind, items, _ = _input_items(inputs, fps)
    return _input_paths(inputs, kind, items)


def check_input(inputs, fps: float | None = None) -> str:
    """Validate an input without decoding it (a video is opened and probed). Returns a description.

    Raises :class:`InputError` for a missing path, an empty folder or an unreadable video.
    """
    kind, items, description = _input_items(inputs, fps)
    if kind == "video":
        from pacegeo.io.video import probe_video

        probe_video(items)
    return description


def prepare_inputs(
    inputs,
    mode: str = "crop",
    target_size: int = 518,
    frames: int | None = None,
    stride: int | None = None,
    fps: float | None = None,
    strict: bool = False,
    progress: bool | None = None,
) -> PreparedInputs:
    """Read, select and preprocess the frames of ``inputs``.

    Args:
        inputs: a folder of images, an image file, a video file, a list of paths, or in-memory
            images (numpy ``[H, W, 3]``, torch ``[3, H, W]``, PIL; a 4-D batch is split).
        mode: ``"crop"`` or ``"pad"`` (see :mod:`pacegeo.io.images`).
        target_size: model input width (crop) or longer side (pad), a multiple of 14.
        frames, stride: frame selection (:func:`select_frames`), applied before reading images and
            after sampling a video.
        fps: video sampling rate (default :data:`pacegeo.io.video.DEFAULT_FPS`); only for videos.
        strict: fail on the first unreadable image instead of skipping it with a warning.
        progress: tqdm bar on stderr (None: only when stderr is a terminal).

    Raises:
        InputError: bad options, missing/empty inputs, an unreadable image in strict mode, a bad
            video, or no readable frame.
    """
    from pacegeo.io.decode import read_image_rgb
    from pacegeo.io.images import check_preprocess_options, pad_to_common_shape, preprocess_image

    start = time.perf_counter()
    check_preprocess_options(mode, target_size)
    select_frames(0, frames, stride)  # validates the options
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0):
        raise InputError(f"fps must be a positive number, got {fps!r}")
    kind, items, description = _input_items(inputs, fps)
    show = progress_enabled(progress)
    images, transforms, names, skipped = [], [], [], []

    if kind == "video":
        from pacegeo.io.video import DEFAULT_FPS, iter_video_frames

        for frame in progress_bar(iter_video_frames(items, fps or DEFAULT_FPS), show, desc="reading video", unit="frame"):
            image, transform = preprocess_image(frame.rgb, mode, target_size, source=frame.name)
            images.append(image)
            transforms.append(transform)
            names.append(frame.name)
        chosen = select_frames(len(images), frames, stride)
        images = [images[i] for i in chosen]
        transforms = [transforms[i] for i in chosen]
        names = [names[i] for i in chosen]
    else:
        chosen = select_frames(len(items), frames, stride)
        for index in progress_bar(chosen, show, desc="loading images", unit="img"):
            item = items[index]
            try:
                if kind == "files":
                    path = Path(item)
                    rgb = read_image_rgb(path)
                    source, name = str(path), path.name
                else:
                    from pacegeo.io.decode import read_image_source

                    rgb, source, path = read_image_source(item, index)
                    name = source
            except InputError as err:
                if strict:
                    raise
                label = str(item) if kind == "files" else f"<image {index}>"
                skipped.append((label, str(err)))
                continue
            image, transform = preprocess_image(rgb, mode, target_size, source=source, path=path if kind == "files" else None)
            images.append(image)
            transforms.append(transform)
            names.append(name)

    if not images:
        first = f"; first error: {skipped[0][1]}" if skipped else ""
        raise InputError(f"no readable images in {description}{first}")
    for _, reason in skipped:  # reported once we know the run goes on
        logger.warning("skipping unreadable image: %s", reason)
    images, transforms = pad_to_common_shape(images, transforms)
    return PreparedInputs(
        images=torch.stack(images),
        transforms=list(transforms),
        names=unique_names(names),
        skipped=skipped,
        source=description,
        mode=mode,
        target_size=target_size,
        seconds=time.perf_counter() - start,
        paths=_input_paths(inputs, kind, items),
    )
