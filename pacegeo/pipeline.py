"""End-to-end reconstruction: images or a video in, cameras, depth and coloured points out.

::

    from pacegeo import Pipeline

    pipe = Pipeline.from_pretrained()                       # VGGT-1B if cached, else pacegeo-tiny
    rec = pipe.reconstruct("examples/synthrooms-16", keep=0.3)
    rec.save_ply("scene.ply")                               # binary PLY, RGB
    rec.save_glb("scene.glb")                               # points + camera frustums (glTF, y up)
    rec.save_colmap("scene_colmap")                         # COLMAP text model
    xyz, rgb = rec.point_cloud(conf_percentile=50)          # [M, 3] float32, [M, 3] uint8

Conventions of every array in a :class:`Reconstruction`:

* the world frame is the first camera's OpenCV frame (x right, y down, z forward); scale is the
  model's (arbitrary, consistent within a reconstruction);
* ``extrinsics [S, 3, 4]`` are OpenCV world-to-camera ``[R | t]``;
* ``intrinsics [S, 3, 3]`` refer to the model input (``h x w`` pixels, pixel centres at integer
  coordinates); ``intrinsics_original`` to the original images;
* dense maps are ``[S, h, w]`` / ``[S, h, w, 3]`` at the model input resolution ``(h, w)``.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pacegeo.errors import CheckpointError, InputError
from pacegeo.precision import dtype_name, resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_KEEP = 0.3
DEFAULT_CONF_THRESHOLD = 3.0
TINY_NOTICE = (
    "using pacegeo-tiny, a small model trained on synthetic rooms: fine for a quick look, coarse on real "
    "photos; for real photos get VGGT-1B: `huggingface-cli download facebook/VGGT-1B model.safetensors` "
    "(non-commercial licence), then --model vggt-1b"
)
GIB = 1024**3
POST_CHUNK = 4  # frames per chunk of the host-side post-processing (unprojection, colours)

__all__ = [
    "DEFAULT_KEEP",
    "MemoryEstimate",
    "ModelChoice",
    "Pipeline",
    "PreparedInputs",
    "Reconstruction",
    "available_memory",
    "estimate_peak_memory",
    "prepare_inputs",
    "resolve_model",
    "select_frames",
]


# --------------------------------------------------------------------------------------------
# Option checking
# --------------------------------------------------------------------------------------------


def check_keep(keep: object) -> float:
    """``keep`` as a float in ``(0, 1]``; anything else raises :class:`InputError`."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.floating, np.integer)):
        raise InputError(f"keep must be a number in (0, 1], got {keep!r}")
    value = float(keep)
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise InputError(f"keep must be in (0, 1] (the fraction of patch tokens each frame keeps), got {keep!r}")
    return value


def _check_count(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def select_frames(count: int, frames: int | None = None, stride: int | None = None) -> list[int]:
    """Indices of the frames to use out of ``count``.

    ``frames=N``: ``N`` frames spread evenly over the sequence, first and last included (all of
    them when ``N >= count``). ``stride=K``: every ``K``-th frame from the first. At most one of the
    two may be given; neither keeps all frames.
    """
    frames = _check_count(frames, "frames")
    stride = _check_count(stride, "stride")
    if frames is not None and stride is not None:
        raise InputError("give either frames or stride, not both")
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


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """A resolved backbone: its name, weight file, inference resolution and a user notice.

    Attributes:
        name: what was asked for (``"vggt-1b"``, ``"pacegeo-tiny"`` or the path as given).
        path: the weight file.
        target_size: inference width (crop) or longer side (pad), a multiple of 14: the
            checkpoint's ``preprocess`` metadata, else 518.
        preprocess_mode: the checkpoint's preferred preprocessing mode (``"crop"`` if unsaid).
        notice: one line for the user when ``"auto"`` fell back to ``pacegeo-tiny``, else None.
    """

    name: str
    path: Path
    target_size: int = 518
    preprocess_mode: str = "crop"
    notice: str | None = None


def _preprocess_metadata(path: Path) -> tuple[int, str]:
    import json

    from pacegeo.hub import read_metadata

    text = read_metadata(path).get("preprocess")
    if not text:
        return 518, "crop"
    try:
        data = json.loads(text)
        size = int(data.get("target_size", 518))
        mode = str(data.get("mode", "crop"))
    except (ValueError, TypeError, AttributeError):
        logger.warning("ignoring unreadable preprocess metadata in %s: %r", path, text)
        return 518, "crop"
    if size < 14 or size % 14 or mode not in ("crop", "pad"):
        logger.warning("ignoring invalid preprocess metadata in %s: %r", path, text)
        return 518, "crop"
    return size, mode


def resolve_model(model: str | os.PathLike | ModelChoice = "auto") -> ModelChoice:
    """Find the weights of ``model`` without loading them.

    ``"auto"`` is VGGT-1B when its weights are in the local Hugging Face cache, else the bundled
    ``pacegeo-tiny`` (with a :attr:`ModelChoice.notice`). Other values go to
    :func:`pacegeo.hub.resolve_weights` (names, hub ids, files, folders).

    Raises:
        CheckpointError: nothing found (with a sentence saying how to get weights).
    """
    if isinstance(model, ModelChoice):
        return model
    from pacegeo.hub import bundled_models, checkpoints_dir, is_available_locally, resolve_weights

    name = str(model)
    notice = None
    if name == "auto":
        if is_available_locally("vggt-1b"):
            name = "vggt-1b"
        elif "pacegeo-tiny" in bundled_models():
            name, notice = "pacegeo-tiny", TINY_NOTICE
        else:
            raise CheckpointError(
                "no model available: VGGT-1B is not in the local Hugging Face cache and the bundled "
                f"pacegeo-tiny is missing from {checkpoints_dir()}; run `huggingface-cli download "
                "facebook/VGGT-1B model.safetensors` or pass a checkpoint with --model"
            )
    path = resolve_weights(name)
    size, mode = _preprocess_metadata(path)
    return ModelChoice(name=name, path=path, target_size=size, preprocess_mode=mode, notice=notice)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU. A requested CUDA device must exist."""
    if isinstance(device, torch.device):
        resolved = device
    else:
        text = str(device).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            resolved = torch.device(text)
        except (RuntimeError, ValueError):
            raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device} requested but CUDA is not available here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif resolved.type != "cpu":
        raise InputError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return resolved


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedInputs:
    """Preprocessed frames ready for the model.

    Attributes:
        images: ``[S, 3, h, w]`` float32 RGB in [0, 1].
        transforms: per frame, the :class:`pacegeo.io.images.ImageTransform` back to original pixels.
        names: unique frame names (file names; for a video ``<stem>_<ms>ms.png``).
        skipped: ``(source, reason)`` of inputs that could not be read and were left out.
        source: a description of the input (folder, video or list).
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

    def __len__(self) -> int:
        return len(self.names)

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(h, w)`` of the model input."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])


def _unique_names(names: Sequence[str]) -> list[str]:
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


def _progress(iterable: Iterable, enabled: bool, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


def _progress_enabled(progress: bool | None) -> bool:
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def _input_items(inputs, fps: float | None) -> tuple[str, object, str]:
    """Classify ``inputs``: ``("files", [paths], desc)``, ``("video", path, desc)`` or ``("arrays", items, desc)``."""
    from pacegeo.io.images import IMAGE_EXTENSIONS, list_image_files
    from pacegeo.video import VIDEO_EXTENSIONS, is_video_file

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


def check_input(inputs, fps: float | None = None) -> str:
    """Validate an input without decoding it (a video is opened and probed). Returns a description.

    Raises :class:`InputError` for a missing path, an empty folder or an unreadable video.
    """
    kind, items, description = _input_items(inputs, fps)
    if kind == "video":
        from pacegeo.video import probe_video

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
        fps: video sampling rate (default :data:`pacegeo.video.DEFAULT_FPS`); only for videos.
        strict: fail on the first unreadable image instead of skipping it with a warning.
        progress: tqdm bar on stderr (None: only when stderr is a terminal).

    Raises:
        InputError: bad options, missing/empty inputs, an unreadable image in strict mode, a bad
            video, or no readable frame.
    """
    from pacegeo.io.images import check_preprocess_options, pad_to_common_shape, preprocess_image, read_image_rgb

    start = time.perf_counter()
    check_preprocess_options(mode, target_size)
    select_frames(0, frames, stride)  # validates the options
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0):
        raise InputError(f"fps must be a positive number, got {fps!r}")
    kind, items, description = _input_items(inputs, fps)
    show = _progress_enabled(progress)
    images, transforms, names, skipped = [], [], [], []

    if kind == "video":
        from pacegeo.video import DEFAULT_FPS, iter_video_frames

        for frame in _progress(iter_video_frames(items, fps or DEFAULT_FPS), show, desc="reading video", unit="frame"):
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
        for index in _progress(chosen, show, desc="loading images", unit="img"):
            item = items[index]
            try:
                if kind == "files":
                    path = Path(item)
                    rgb = read_image_rgb(path)
                    source, name = str(path), path.name
                else:
                    from pacegeo.io.images import read_image_source

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
        names=_unique_names(names),
        skipped=skipped,
        source=description,
        mode=mode,
        target_size=target_size,
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------------
# Memory preflight
# --------------------------------------------------------------------------------------------


# The model lives in pacegeo.memory; these names stay importable from here.
from pacegeo.memory import (  # noqa: E402
    MemoryEstimate,
    available_memory,
    estimate_peak_memory,
    max_frames,
    min_keep,
    release_host_memory,
)


def _rss_bytes() -> int | None:
    """Resident set of this process now (Linux ``/proc/self/statm``), None elsewhere."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _fmt_gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


# --------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------


@dataclass
class Reconstruction:
    """Cameras, depth and points predicted for ``S`` frames.

    Dense maps are at the model input resolution ``(h, w)`` (see :attr:`inference_hw`).

    Attributes:
        depth: ``[S, h, w]`` float32 z-depth along each camera's optical axis.
        depth_conf: ``[S, h, w]`` float32 confidence of ``depth`` (>= 1, higher is better).
        world_points: ``[S, h, w, 3]`` float32 world points from the point head.
        world_points_conf: ``[S, h, w]`` float32 confidence of ``world_points``.
        points_from_depth: ``[S, h, w, 3]`` float32 world points unprojected from ``depth`` with the
            predicted cameras (usually the more accurate of the two).
        colors: ``[S, h, w, 3]`` uint8 RGB of the model input.
        valid_mask: ``[S, h, w]`` bool, False on padding (``mode="pad"`` or mixed image sizes).
        extrinsics: ``[S, 3, 4]`` float32 OpenCV world-to-camera; frame 0 is ``[I | 0]``.
        intrinsics: ``[S, 3, 3]`` float32 at the model input resolution (pixel centres at integers).
        intrinsics_original: ``[S, 3, 3]`` float64, the same cameras in original-image pixels
            (pixel centres at integers).
        image_size: ``[S, 2]`` int original image ``(H, W)``.
        frame_names: one name per frame.
        keep: fraction of patch tokens kept per frame.
        pruning: statistics of the pruned forward pass (token counts per frame, merged, dropped);
            empty without pruning.
        timings: seconds per stage: ``load``, ``preprocess``, ``inference`` (and ``inference/<stage>``),
            ``export`` (grows as files are written).
        peak_memory: peak bytes (CUDA: allocated by PyTorch during inference; CPU: the process's
            peak resident set size).
        memory_estimate: the preflight estimate (bytes) for this run.
        files_written: paths written by the ``save_*`` methods, in order.
    """

    depth: np.ndarray
    depth_conf: np.ndarray
    world_points: np.ndarray
    world_points_conf: np.ndarray
    points_from_depth: np.ndarray
    colors: np.ndarray
    valid_mask: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    intrinsics_original: np.ndarray
    image_size: np.ndarray
    frame_names: list[str]
    keep: float
    pruning: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    peak_memory: int = 0
    peak_memory_kind: str = ""
    memory_estimate: int = 0
    model_name: str = ""
    pruner_mode: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    preprocess_mode: str = "crop"
    skipped: list = field(default_factory=list)
    files_written: list = field(default_factory=list)

    # -- basic properties -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.frame_names)

    @property
    def inference_hw(self) -> tuple[int, int]:
        """``(h, w)`` of the model input and of every dense map."""
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    @property
    def camera_centers(self) -> np.ndarray:
        """``[S, 3]`` camera centres in world coordinates (``-R^T t``)."""
        rotation = self.extrinsics[:, :3, :3].astype(np.float64)
        return -np.einsum("sji,sj->si", rotation, self.extrinsics[:, :3, 3].astype(np.float64))

    @property
    def tokens_per_frame(self) -> int:
        """Patch tokens per frame before pruning."""
        if "patch_tokens_per_frame" in self.pruning:
            return int(self.pruning["patch_tokens_per_frame"])
        h, w = self.inference_hw
        return (h // 14) * (w // 14)

    @property
    def kept_per_frame(self) -> list[int]:
        """Patch tokens each frame kept."""
        if "kept_per_frame" in self.pruning:
            return [int(k) for k in self.pruning["kept_per_frame"]]
        return [self.tokens_per_frame] * len(self)

    def _add_export_time(self, seconds: float, path: Path) -> None:
        self.timings["export"] = self.timings.get("export", 0.0) + seconds
        self.files_written.append(Path(path))

    # -- points -----------------------------------------------------------------------------------

    def point_mask(
        self,
        conf_threshold: float | None = DEFAULT_CONF_THRESHOLD,
        conf_percentile: float | None = None,
        source: str = "depth",
    ) -> np.ndarray:
        """``[S, h, w]`` bool: valid, finite pixels whose confidence passes the filter.

        ``conf_percentile=P`` (0-100) drops the lowest ``P`` percent of the valid pixels by
        confidence and overrides ``conf_threshold``; otherwise pixels need ``conf >= conf_threshold``
        (None or 0 keeps all). ``source`` picks the map and its confidence: ``"depth"``
        (:attr:`points_from_depth`, :attr:`depth_conf`) or ``"pointmap"`` (:attr:`world_points`,
        :attr:`world_points_conf`).
        """
        points, conf = self._source(source)
        mask = self.valid_mask & np.isfinite(points).all(axis=-1) & np.isfinite(conf)
        if conf_percentile is not None:
            p = float(conf_percentile)
            if not math.isfinite(p) or not 0.0 <= p < 100.0:
                raise InputError(f"confidence percentile must be in [0, 100), got {conf_percentile!r}")
            if mask.any() and p > 0:
                mask &= conf >= np.percentile(conf[mask], p)
        elif conf_threshold is not None:
            t = float(conf_threshold)
            if not math.isfinite(t) or t < 0:
                raise InputError(f"confidence threshold must be a non-negative number, got {conf_threshold!r}")
            mask &= conf >= t
        return mask

    def _source(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        if source == "depth":
            return self.points_from_depth, self.depth_conf
        if source == "pointmap":
            return self.world_points, self.world_points_conf
        raise InputError(f"point source must be 'depth' or 'pointmap', got {source!r}")

    def point_cloud(
        self,
        conf_threshold: float | None = DEFAULT_CONF_THRESHOLD,
        conf_percentile: float | None = None,
        source: str = "depth",
        max_points: int | None = None,
        seed: int = 0,
        return_conf: bool = False,
    ):
        """Coloured world points passing the confidence filter (:meth:`point_mask`).

        ``max_points`` keeps a seeded random subset (in the original order). Returns
        ``(xyz [M, 3] float32, rgb [M, 3] uint8)`` and, with ``return_conf``, ``conf [M]`` too.
        """
        points, conf = self._source(source)
        mask = self.point_mask(conf_threshold, conf_percentile, source)
        xyz = points[mask].astype(np.float32)
        rgb = self.colors[mask]
        scores = conf[mask].astype(np.float32)
        max_points = _check_count(max_points, "max_points")
        if max_points is not None and len(xyz) > max_points:
            chosen = np.sort(np.random.default_rng(seed).choice(len(xyz), size=max_points, replace=False))
            xyz, rgb, scores = xyz[chosen], rgb[chosen], scores[chosen]
        return (xyz, rgb, scores) if return_conf else (xyz, rgb)

    def _points_for_export(self, **kwargs):
        xyz, rgb, conf = self.point_cloud(return_conf=True, **kwargs)
        if len(xyz) == 0:
            _, all_conf = self._source(kwargs.get("source", "depth"))
            valid = all_conf[self.valid_mask]
            best = f"{float(valid.max()):.3g}" if valid.size else "n/a"
            threshold = kwargs.get("conf_threshold", DEFAULT_CONF_THRESHOLD)
            raise InputError(
                f"no points pass the confidence filter (threshold {threshold}, highest confidence {best}); "
                "lower the threshold (--conf) or keep a share of the points (--conf-percentile 50)"
            )
        return xyz, rgb, conf

    # -- writers ----------------------------------------------------------------------------------

    def save_ply(self, path: str | os.PathLike, **point_kwargs) -> Path:
        """Write the coloured point cloud (:meth:`point_cloud` arguments) as a binary PLY, OpenCV world frame."""
        from pacegeo.export import write_ply

        start = time.perf_counter()
        xyz, rgb, _ = self._points_for_export(**point_kwargs)
        path = write_ply(path, xyz, rgb)
        self._add_export_time(time.perf_counter() - start, path)
        return path

    def save_glb(self, path: str | os.PathLike, **point_kwargs) -> Path:
        """Write a GLB scene: coloured points plus a wireframe frustum per camera, converted from
        OpenCV to glTF's y-up convention."""
        from pacegeo.export import write_glb

        start = time.perf_counter()
        xyz, rgb, _ = self._points_for_export(**point_kwargs)
        path = write_glb(path, xyz, rgb, self.extrinsics, self.intrinsics, self.inference_hw, self.frame_names)
        self._add_export_time(time.perf_counter() - start, path)
        return path

    def colmap_intrinsics(self) -> np.ndarray:
        """``[S, 3, 3]`` intrinsics in original-image pixels, COLMAP convention (top-left pixel centre at 0.5)."""
        k = self.intrinsics_original.astype(np.float64).copy()
        k[:, 0, 2] += 0.5
        k[:, 1, 2] += 0.5
        return k

    def save_colmap(self, folder: str | os.PathLike, overwrite: bool = False, **point_kwargs) -> Path:
        """Write a COLMAP text model (cameras.txt, images.txt, points3D.txt) into ``folder``.

        One PINHOLE camera per frame in original-image pixels; poses are world-to-camera (qvec
        wxyz, tvec); points carry RGB and an error of ``1 / confidence`` and no tracks. An existing
        folder is replaced only with ``overwrite``.
        """
        from pacegeo.export import write_colmap_text

        start = time.perf_counter()
        xyz, rgb, conf = self._points_for_export(**point_kwargs)
        folder = write_colmap_text(
            folder,
            self.extrinsics,
            self.colmap_intrinsics(),
            self.image_size,
            self.frame_names,
            xyz,
            rgb,
            errors=1.0 / np.maximum(conf, 1e-6),
            overwrite=overwrite,
        )
        self._add_export_time(time.perf_counter() - start, folder)
        return folder

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as numpy arrays (the content of :meth:`save_npz`)."""
        return {
            "extrinsics": self.extrinsics,
            "intrinsics": self.intrinsics,
            "intrinsics_original": self.intrinsics_original,
            "depth": self.depth,
            "depth_conf": self.depth_conf,
            "world_points": self.world_points,
            "world_points_conf": self.world_points_conf,
            "points_from_depth": self.points_from_depth,
            "colors": self.colors,
            "valid_mask": self.valid_mask,
            "image_size": self.image_size,
            "frame_names": np.array(self.frame_names, dtype=np.str_),
            "keep": np.float32(self.keep),
            "kept_per_frame": np.array(self.kept_per_frame, dtype=np.int64),
            "tokens_per_frame": np.int64(self.tokens_per_frame),
        }

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write :meth:`arrays` as a compressed ``.npz`` (``np.load(path)``; names are a str array)."""
        from pacegeo.export import write_npz

        start = time.perf_counter()
        path = write_npz(path, self.arrays())
        self._add_export_time(time.perf_counter() - start, path)
        return path

    def cameras_json(self) -> dict[str, dict]:
        """Per frame name: ``extrinsic`` (3x4 OpenCV world-to-camera), ``intrinsic`` (3x3 in
        original-image pixels, pixel centres at integers), ``image_size`` ``[H, W]`` of the original,
        ``camera_center`` (world), plus ``intrinsic_model`` and ``model_size`` ``[h, w]`` for the
        model input resolution."""
        def plain(array) -> list:  # JSON has no inf/NaN: such entries (degenerate cameras) become null
            values = np.asarray(array, dtype=np.float64)
            return np.where(np.isfinite(values), values, None).tolist()

        centres = self.camera_centers
        h, w = self.inference_hw
        out = {}
        for i, name in enumerate(self.frame_names):
            out[name] = {
                "index": i,
                "extrinsic": plain(self.extrinsics[i]),
                "intrinsic": plain(self.intrinsics_original[i]),
                "image_size": [int(v) for v in self.image_size[i]],
                "camera_center": plain(centres[i]),
                "intrinsic_model": plain(self.intrinsics[i]),
                "model_size": [h, w],
            }
        return out

    def save_cameras_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`cameras_json` as indented JSON."""
        from pacegeo.export import write_json

        start = time.perf_counter()
        path = write_json(path, self.cameras_json())
        self._add_export_time(time.perf_counter() - start, path)
        return path

    def save_preview(self, path: str | os.PathLike, render_points: int = 150_000, **point_kwargs) -> Path:
        """Write a PNG with a perspective splat, a top and a side view of the coloured points
        (:meth:`point_cloud` arguments; at most ``render_points`` drawn), with the cameras drawn
        (:func:`pacegeo.export.render_preview`)."""
        from pacegeo.export import render_preview

        start = time.perf_counter()
        xyz, rgb = self.point_cloud(**point_kwargs)
        kept = self.kept_per_frame
        title = (
            f"{len(self)} frames, {Path(self.model_name).name or 'model'}, keep {self.keep:g} "
            f"({kept[-1] if kept else 0}/{self.tokens_per_frame} tokens per frame), {len(xyz):,} points"
        )
        path = render_preview(
            path,
            xyz,
            rgb,
            self.extrinsics,
            self.intrinsics,
            self.inference_hw,
            title=title,
            max_points=render_points,
            seed=int(point_kwargs.get("seed", 0)),
        )
        self._add_export_time(time.perf_counter() - start, path)
        return path


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class Pipeline:
    """A loaded backbone (and optional pruner) that turns images into a :class:`Reconstruction`.

    Build one with :meth:`from_pretrained`. Attributes: ``backbone`` (frozen
    :class:`pacegeo.backbone.VGGT`), ``pruner`` (:class:`pacegeo.pace.PaceVGGT` or None),
    ``device``, ``amp_dtype`` (None = float32), ``target_size`` and ``preprocess_mode`` (inference
    resolution), ``model`` (:class:`ModelChoice`), ``notice`` (a line for the user, or None) and
    ``load_seconds``.
    """

    def __init__(
        self,
        backbone,
        pruner=None,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        target_size: int = 518,
        preprocess_mode: str = "crop",
        model: ModelChoice | None = None,
        notice: str | None = None,
        load_seconds: float = 0.0,
    ) -> None:
        self.backbone = backbone
        self.pruner = pruner
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.target_size = int(target_size)
        self.preprocess_mode = preprocess_mode
        self.model = model
        self.notice = notice
        self.load_seconds = float(load_seconds)
        self.map_store = None  # the map of the last build_map / load_map, for localize

    @property
    def config(self):
        return self.backbone.config

    @property
    def pruner_mode(self) -> str | None:
        return None if self.pruner is None else self.pruner.mode

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | ModelChoice = "auto",
        pruner: str | os.PathLike | None = "auto",
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = "auto",
        target_size: int | None = None,
    ) -> "Pipeline":
        """Load a backbone and a pruner.

        Args:
            model: ``"auto"`` (VGGT-1B when cached locally, else the bundled ``pacegeo-tiny``, with
                :attr:`notice` saying what that means), ``"vggt-1b"``, ``"pacegeo-tiny"``, a hub id or
                a checkpoint path.
            pruner: ``"auto"`` (the bundled trained pruner ``<model>-pruner.safetensors`` for this
                backbone if present, else ``"training-free"``), ``"training-free"``, ``"random"``,
                ``"grid"``, a pruner checkpoint path, or ``"none"``/None (no pruning: ``keep`` must be 1).
            device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
            dtype: autocast dtype of the whole forward, resolved by
                :func:`pacegeo.precision.resolve_dtype` (``"auto"``: bf16 on CUDA with compute
                capability >= 8.0, fp16 below; on the CPU bf16 where it has native bf16 matrix
                instructions, else float32; or float32/bfloat16/float16).
            target_size: inference width (crop) or longer side (pad); default from the checkpoint's
                ``preprocess`` metadata, else 518.

        Raises:
            CheckpointError: weights not found, unreadable or of the wrong architecture.
            InputError: bad device, dtype, target size or pruner name.
        """
        from pacegeo.hub import checkpoints_dir, load_backbone

        start = time.perf_counter()
        resolved_device = resolve_device(device)
        amp = resolve_dtype(dtype, resolved_device)
        choice = resolve_model(model)
        size = choice.target_size if target_size is None else target_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 14 or size % 14:
            raise InputError(f"target size must be a positive multiple of 14, got {size!r}")
        logger.info("loading %s from %s on %s", choice.name, choice.path, resolved_device)
        backbone = load_backbone(choice.path, device=resolved_device)
        backbone.requires_grad_(False)

        pace = None
        text = None if pruner is None else str(pruner)
        if text is not None and text.lower() != "none":
            from pacegeo.pace import MODES, PaceVGGT, load_pruner

            if text == "auto":
                bundled = checkpoints_dir() / f"{backbone.config.name}-pruner.safetensors"
                if bundled.is_file():
                    pace = load_pruner(bundled, backbone, amp_dtype=amp)
                else:
                    pace = PaceVGGT(backbone, mode="training-free", amp_dtype=amp)
            elif text in MODES and text != "learned":
                pace = PaceVGGT(backbone, mode=text, amp_dtype=amp)
            elif Path(text).expanduser().is_file():
                pace = load_pruner(Path(text).expanduser(), backbone, amp_dtype=amp)
            else:
                raise InputError(
                    f"unknown pruner {text!r}; use auto, training-free, random, grid, none or a pruner checkpoint file"
                )
            pace.eval()
        return cls(
            backbone,
            pruner=pace,
            device=resolved_device,
            amp_dtype=amp,
            target_size=size,
            preprocess_mode=choice.preprocess_mode,
            model=choice,
            notice=choice.notice,
            load_seconds=time.perf_counter() - start,
        )

    # -- memory -----------------------------------------------------------------------------------

    def estimate_memory(
        self, frames: int, image_hw: tuple[int, int], keep: float, inputs_resident: int = 0
    ) -> MemoryEstimate:
        """:func:`pacegeo.memory.estimate_peak_memory` for this pipeline's model, pruner, device and
        dtype. On the CPU the process's current resident set, less weights and the
        ``inputs_resident`` bytes of images already loaded, is the runtime baseline."""
        weights = sum(p.numel() * p.element_size() for p in self.backbone.parameters())
        chunks = {}
        if self.pruner is not None:
            weights += sum(p.numel() * p.element_size() for p in self.pruner.pruner_parameters())
            chunks = {"frames_chunk": self.pruner.frames_chunk, "heads_chunk": self.pruner.heads_chunk}
        runtime = 0
        if self.device.type == "cpu":
            rss = _rss_bytes()
            runtime = max(0, rss - weights - inputs_resident) if rss is not None else 0
        return estimate_peak_memory(
            self.config, frames, image_hw, keep, self.amp_dtype, weights_bytes=weights,
            device=self.device.type, runtime_bytes=runtime, **chunks,
        )

    def check_memory(
        self, frames: int, image_hw: tuple[int, int], keep: float, inputs_resident: int = 0
    ) -> MemoryEstimate:
        """Raise :class:`InputError` when the estimated peak will not fit in the device's free
        memory, saying what would (a lower keep, fewer frames, or the CPU). Returns the estimate.

        What must be free: the activations (on CUDA also the images, moved there by the run);
        weights, loaded images and the runtime are resident already."""
        estimate = self.estimate_memory(frames, image_hw, keep, inputs_resident)
        free = available_memory(self.device)
        cuda = self.device.type == "cuda"

        def need(est: MemoryEstimate) -> int:
            return est.activations + (est.inputs if cuda else 0)

        if free is None or need(estimate) <= free:
            return estimate

        def fits(s: int, k: float) -> bool:
            return need(self.estimate_memory(s, image_hw, k, inputs_resident)) <= free

        options = []
        if self.pruner is not None:
            lowest = min_keep(lambda k: k < keep and fits(frames, k))
            if lowest is not None:
                options.append(f"a lower keep ({lowest:g} fits)")
        most = max_frames(lambda s: fits(s, keep), 1, frames - 1) if frames > 1 else 0
        if most >= 1:
            options.append(f"fewer frames with --frames/--stride (up to {most} fit)")
        if cuda:
            host = available_memory(torch.device("cpu"))
            cpu_need = estimate_peak_memory(self.config, frames, image_hw, keep, None, device="cpu").activations
            if host is None or cpu_need <= host:
                options.append("the CPU (--device cpu), slower")
        advice = "; try " + ", or ".join(options) if options else "; no smaller setting fits either"
        h, w = image_hw
        raise InputError(
            f"not enough memory: {frames} frames at {w}x{h} with keep {keep:g} need about "
            f"{_fmt_gib(need(estimate))} more on {self.device}, {_fmt_gib(free)} is free{advice}"
        )

    # -- inference --------------------------------------------------------------------------------

    def prepare(
        self,
        inputs,
        mode: str | None = None,
        frames: int | None = None,
        stride: int | None = None,
        fps: float | None = None,
        strict: bool = False,
        progress: bool | None = None,
    ) -> PreparedInputs:
        """:func:`prepare_inputs` at this pipeline's resolution (``mode`` default: the model's)."""
        return prepare_inputs(inputs, mode or self.preprocess_mode, self.target_size, frames, stride, fps, strict, progress)

    def reconstruct(
        self,
        images_or_paths_or_folder,
        keep: float = DEFAULT_KEEP,
        mode: str | None = None,
        frames: int | None = None,
        stride: int | None = None,
        seed: int = 0,
        strict: bool = False,
        progress: bool | None = None,
        fps: float | None = None,
        check_memory: bool = True,
    ) -> Reconstruction:
        """Reconstruct cameras, depth and points from images or a video.

        Args:
            images_or_paths_or_folder: a folder of images, a video file, image paths, in-memory
                images, or a :class:`PreparedInputs` from :meth:`prepare`.
            keep: fraction of patch tokens each frame keeps, in ``(0, 1]``; 1 runs the unpruned model.
            mode: ``"crop"`` or ``"pad"`` preprocessing (default: the model's, usually crop).
            frames, stride: use ``frames`` evenly spread frames or every ``stride``-th frame.
            seed: seed of any randomness (the random pruning baseline); results are deterministic.
            strict: fail on an unreadable image instead of skipping it.
            progress: progress bars on stderr (None: when stderr is a terminal).
            fps: video sampling rate (frames per second of video; default 2).
            check_memory: run the memory preflight.

        Raises:
            InputError: bad inputs or options, or not enough memory (the message says what fits).
        """
        keep = check_keep(keep)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InputError(f"seed must be an integer, got {seed!r}")
        if self.pruner is None and keep < 1.0:
            raise InputError(f"keep {keep:g} needs a pruner, but this pipeline was loaded with pruner='none'; use keep=1")
        if isinstance(images_or_paths_or_folder, PreparedInputs):
            prepared = images_or_paths_or_folder
        else:
            prepared = self.prepare(images_or_paths_or_folder, mode, frames, stride, fps, strict, progress)
        frames_count = len(prepared)
        image_hw = prepared.image_hw
        loaded = prepared.images.numel() * prepared.images.element_size()
        preflight = self.check_memory if check_memory else self.estimate_memory
        estimate = preflight(frames_count, image_hw, keep, loaded)

        try:
            with torch.inference_mode():
                out, seconds, stage_times, peak, peak_kind = self._forward(prepared.images, keep, int(seed))
                release_host_memory()  # what the forward freed, before the host post-processing allocates
                rec = self._to_reconstruction(prepared, out, keep)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
            text = str(err)
            if not isinstance(err, (torch.OutOfMemoryError, MemoryError)) and "memory" not in text.lower():
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise InputError(
                f"ran out of memory on {self.device} during inference ({frames_count} frames at "
                f"{image_hw[1]}x{image_hw[0]}, keep {keep:g}); try a lower keep or fewer frames (--frames/--stride)"
            ) from None
        rec.timings = {
            "load": self.load_seconds,
            "preprocess": prepared.seconds,
            "inference": seconds,
            **{f"inference/{k}": v for k, v in stage_times.items()},
            "export": 0.0,
        }
        rec.peak_memory, rec.peak_memory_kind, rec.memory_estimate = peak, peak_kind, estimate.total
        return rec

    def _forward(self, images: torch.Tensor, keep: float, seed: int):
        from pacegeo.pace import StageClock, backbone_forward_staged

        device = self.device
        batch = images.to(device, non_blocking=True)[None]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            start = time.perf_counter()
            if self.pruner is not None:
                self.pruner.seed = seed
                # On an accelerator the dense predictions leave it chunk by chunk (they go to the host anyway).
                out = self.pruner(batch, keep=keep, timings=True, output_device="cpu" if device.type != "cpu" else None)
            else:
                clock = StageClock(device, True)
                out = backbone_forward_staged(self.backbone, batch, clock, self.amp_dtype)
                out["pruning"] = {"timings": dict(clock.times)}
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        if device.type == "cuda":
            peak, kind = int(torch.cuda.max_memory_allocated(device)), "CUDA allocated"
        else:
            peak, kind = _peak_rss_bytes(), "process RSS"
        stage_times = dict(out.get("pruning", {}).get("timings", {}))
        return out, seconds, stage_times, peak, kind

    def _to_reconstruction(self, prepared: PreparedInputs, out: dict, keep: float) -> Reconstruction:
        """Numpy float32 arrays from the model outputs; the dense outputs are taken out of ``out``
        one by one, so that an output in another dtype is freed once converted."""
        from pacegeo.geometry import pose_encoding_to_extri_intri, unproject_depth_map_to_point_map

        h, w = prepared.image_hw
        pose = out["pose_enc"][0].float()
        extrinsics, intrinsics = pose_encoding_to_extri_intri(pose, (h, w))
        extrinsics = extrinsics.float().cpu().numpy()
        intrinsics = intrinsics.float().cpu().numpy()
        depth = out.pop("depth")[0, ..., 0].float().cpu().numpy()
        depth_conf = out.pop("depth_conf")[0].float().cpu().numpy()
        if "world_points" in out:
            world_points = out.pop("world_points")[0].float().cpu().numpy()
            world_points_conf = out.pop("world_points_conf")[0].float().cpu().numpy()
        else:  # a backbone without a point head
            world_points = np.full(depth.shape + (3,), np.nan, np.float32)
            world_points_conf = np.zeros_like(depth_conf)
        # Frame chunk by frame chunk (the same numbers): the unprojection computes in float64.
        from_depth = np.empty(depth.shape + (3,), np.float32)
        colors = np.empty(depth.shape + (3,), np.uint8)
        for start in range(0, len(depth), POST_CHUNK):
            part = slice(start, start + POST_CHUNK)
            from_depth[part] = unproject_depth_map_to_point_map(depth[part], extrinsics[part], intrinsics[part])
            rgb = prepared.images[part].permute(0, 2, 3, 1).clamp(0, 1) * 255
            colors[part] = rgb.round_().to(torch.uint8).numpy()
        valid = np.zeros(depth.shape, dtype=bool)
        for i, transform in enumerate(prepared.transforms):
            x0, y0, x1, y1 = transform.content_box
            valid[i, y0:y1, x0:x1] = True
        # A @ K for the affine pixel map A of each frame, written out so that a degenerate
        # (infinite) focal length of an untrained model does not turn into NaN through 0 * inf.
        affine = np.stack([t.model_to_original_matrix("center") for t in prepared.transforms])
        k64 = intrinsics.astype(np.float64)
        intrinsics_original = k64.copy()
        intrinsics_original[:, 0, :] = affine[:, 0, :1] * k64[:, 0, :] + affine[:, 0, 2:3] * k64[:, 2, :]
        intrinsics_original[:, 1, :] = affine[:, 1, 1:2] * k64[:, 1, :] + affine[:, 1, 2:3] * k64[:, 2, :]
        image_size = np.array([t.original_hw for t in prepared.transforms], dtype=np.int64)
        stats = {k: v for k, v in out.get("pruning", {}).items() if k != "timings"}
        return Reconstruction(
            depth=depth,
            depth_conf=depth_conf,
            world_points=world_points,
            world_points_conf=world_points_conf,
            points_from_depth=from_depth,
            colors=colors,
            valid_mask=valid,
            extrinsics=extrinsics,
            intrinsics=intrinsics,
            intrinsics_original=intrinsics_original,
            image_size=image_size,
            frame_names=list(prepared.names),
            keep=keep,
            pruning=stats,
            model_name=self.model.name if self.model is not None else self.config.name,
            pruner_mode=self.pruner_mode,
            device=str(self.device),
            dtype=dtype_name(self.amp_dtype),
            preprocess_mode=prepared.mode,
            skipped=list(prepared.skipped),
        )

    # -- localization -----------------------------------------------------------------------------

    def build_map(
        self,
        frames,
        keep: float = 0.5,
        chunk: int | None = None,
        overlap: int | None = None,
        vpr: str | os.PathLike = "auto",
        seed: int = 0,
        progress: bool | None = None,
    ):
        """Reconstruct and describe a map sequence: :func:`pacegeo.localize.build_map`.

        Returns a :class:`pacegeo.localize.MapStore` (also kept as :attr:`map_store` for
        :meth:`localize`): descriptors, OpenCV camera-to-world poses in the first map frame's
        camera frame, intrinsics and the map images at the model input resolution.
        """
        from pacegeo.localize import build_map

        self.map_store = build_map(self, frames, keep=keep, chunk=chunk, overlap=overlap, vpr=vpr, seed=seed, progress=progress)
        return self.map_store

    def load_map(self, path: str | os.PathLike):
        """Read a map file (:meth:`pacegeo.localize.MapStore.load`), check that it was built with
        this pipeline's backbone, and keep it as :attr:`map_store`."""
        from pacegeo.localize import MapStore

        store = MapStore.load(path)
        store.check_model(self)
        self.map_store = store
        return store

    def localize(
        self,
        query_images,
        store=None,
        top_k: int = 4,
        keep: float = 0.5,
        seed: int = 0,
        progress: bool | None = None,
    ) -> list:
        """Place query images in a map: :func:`pacegeo.localize.localize`.

        Args:
            query_images: anything :meth:`reconstruct` accepts, except a video.
            store: a :class:`pacegeo.localize.MapStore` or a map file (default: :attr:`map_store`,
                the map of the last :meth:`build_map` or :meth:`load_map`).
            top_k: map frames retrieved and reconstructed together with each query.
            keep: fraction of patch tokens kept (query descriptors and joint reconstructions).

        Returns:
            one :class:`pacegeo.localize.Localization` per query: OpenCV camera-to-world pose in
            the map frame, retrieved map frames and scores, confidence, retrieval-only pose.
        """
        from pacegeo.localize import localize

        if store is None:
            store = self.map_store
        if store is None:
            raise InputError("no map to localize in: build one with build_map or pass a map file")
        return localize(self, store, query_images, top_k=top_k, keep=keep, seed=seed, progress=progress)
