"""End-to-end reconstruction: images or a video in, cameras, depth and coloured points out.

::

    from pacegeo import Pipeline

    pipe = Pipeline.from_pretrained()                       # VGGT-1B if cached, else pacegeo-tiny
    rec = pipe.reconstruct("examples/synthrooms-16", keep=0.3)
    rec.save_ply("scene.ply")                               # binary PLY, RGB
    rec.save_glb("scene.glb")                               # points + camera frustums (glTF, y up)
    rec.save_colmap("scene_colmap")                         # COLMAP text model
    xyz, rgb = rec.point_cloud()                            # [M, 3] float32, [M, 3] uint8 (least confident half dropped)

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

from pacegeo.errors import CheckpointError, InputError, option
from pacegeo.options import check_count, check_keep, check_seed
from pacegeo.precision import dtype_name, resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_KEEP = 0.3
#: Default point filter of the API and the command line: drop the least confident half (VGGT's demos).
DEFAULT_CONF_PERCENTILE = 50.0
TINY_NOTICE = (
    "using pacegeo-tiny, a small model trained on synthetic rooms: fine for a quick look, coarse on real "
    "photos; for real photos get VGGT-1B: `huggingface-cli download facebook/VGGT-1B model.safetensors` "
    "(non-commercial licence), then --model vggt-1b"
)
GIB = 1024**3

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


def check_point_filter(conf_threshold: object = None, conf_percentile: object = None) -> tuple[str, float]:
    """The point filter of :meth:`Reconstruction.point_mask` as ``("threshold", C)`` or
    ``("percentile", P)``: at most one of the two may be given; neither is the default
    ``("percentile", DEFAULT_CONF_PERCENTILE)``."""
    if conf_threshold is not None and conf_percentile is not None:
        raise InputError(f"give either {option('conf')} or {option('conf_percentile')}, not both")
    if conf_threshold is not None:
        t = float(conf_threshold) if isinstance(conf_threshold, (int, float, np.number)) and not isinstance(conf_threshold, bool) else math.nan
        if not math.isfinite(t) or t < 0:
            raise InputError(f"{option('conf')} must be a non-negative number, got {conf_threshold!r}")
        return "threshold", t
    value = DEFAULT_CONF_PERCENTILE if conf_percentile is None else conf_percentile
    p = float(value) if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else math.nan
    if not math.isfinite(p) or not 0.0 <= p < 100.0:
        raise InputError(f"{option('conf_percentile')} must be in [0, 100), got {conf_percentile!r}")
    return "percentile", p


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
                f"facebook/VGGT-1B model.safetensors` or pass a checkpoint as {option('model')}"
            )
    path = resolve_weights(name)
    size, mode = _preprocess_metadata(path)
    return ModelChoice(name=name, path=path, target_size=size, preprocess_mode=mode, notice=notice)


def _looks_like_path(text: str) -> bool:
    """Whether a model or pruner argument names a file (a separator or a weight-file suffix)."""
    return os.sep in text or text.startswith(("~", ".")) or text.lower().endswith((".safetensors", ".pt", ".pth", ".bin"))


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
            raise InputError(f"device {device} requested but CUDA is not available here; use {option('device_cpu')}")
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
        paths=_input_paths(inputs, kind, items),
    )


# --------------------------------------------------------------------------------------------
# Memory preflight
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Analytic peak-memory estimate of one forward pass, in bytes.

    ``weights`` are the parameters; ``activations`` the peak of the embedding, the attention stack
    and the heads stage; ``stack`` the attention stack's share (working set at the pruned sequence
    length plus the layer outputs the heads read), the part that pruning shrinks; ``outputs`` the
    dense predictions and their post-processing. ``total`` includes a safety margin.
    """

    weights: int
    activations: int
    outputs: int
    total: int
    stack: int = 0

    @property
    def beyond_weights(self) -> int:
        """What the forward pass needs on top of already-loaded weights."""
        return self.total - self.weights


def _dpt_chunk_bytes(head, n: int, frames: int) -> int:
    """Peak float32 bytes of one DPT head chunk over ``n`` patches per frame."""
    if head is None:
        return 0
    chunk = min(head.frames_chunk_size or frames, frames)
    f, oc0 = head.features, head.out_channels[0]
    taps = 4 * n * head.dim_in * 2  # normed and projected token maps
    refine = 16 * n * (oc0 + 2 * f) + 64 * n * 2 * f  # 4x and 8x patch-grid stages
    full = 64 * n * f // 2 + 196 * n * (f + 36)  # output_conv1, interpolation to full res, output_conv2
    return 4 * chunk * (taps + max(refine, full))


def estimate_peak_memory(
    config,
    frames: int,
    image_hw: tuple[int, int],
    keep: float = 1.0,
    amp_dtype: torch.dtype | None = None,
    weights_bytes: int | None = None,
    host: bool = True,
) -> MemoryEstimate:
    """Estimate the peak memory of reconstructing ``frames`` frames of ``image_hw`` with ``keep``.

    Args:
        config: the backbone's :class:`pacegeo.backbone.VGGTConfig`.
        frames: number of frames ``S``.
        image_hw: model input ``(h, w)`` in pixels.
        keep: fraction of patch tokens kept per frame.
        amp_dtype: autocast dtype of the embedding and AA stack (None: float32).
        weights_bytes: size of the loaded parameters (default: counted from the config, float32).
        host: include host-side post-processing (the CPU case, where everything shares one pool).

    The attention is taken to be memory-efficient (PyTorch SDPA: flash/efficient kernels on CUDA
    and the flash kernel on CPU never materialise the ``N x N`` score matrix).
    """
    from pacegeo.backbone.model import VGGT

    agg = config.aggregator
    if weights_bytes is None:
        with torch.device("meta"):
            weights_bytes = 4 * sum(p.numel() for p in VGGT(config).parameters())
    act = 2 if amp_dtype in (torch.bfloat16, torch.float16) else 4
    height, width = image_hw
    ps = agg.patch_size
    n = (height // ps) * (width // ps)
    special = agg.patch_start_idx
    kept = n if keep >= 1.0 else max(1, min(n, math.ceil(keep * n - 1e-9)))
    pruned = kept < n
    s = frames
    c = agg.embed_dim
    tokens_kept = s * (special + kept)
    tokens_full = s * (special + n)
    n_layers = len(config.head_layers())

    images = s * 3 * height * width * 4
    dino = agg.resolved_dino()
    if dino is not None:
        embed = s * (1 + dino.num_register_tokens + n) * dino.embed_dim * (dino.mlp_ratio + 8) * act
    else:
        embed = s * n * c * 3 * act
    embed += 2 * images  # normalised copy
    feats = s * n * c * (act + (4 if pruned else 0))
    attention_stack = tokens_kept * c * (agg.mlp_ratio + 9) * act
    entries = n_layers * tokens_kept * 2 * c * act
    restored = n_layers * (tokens_kept + tokens_full) * 2 * c * 4 if pruned else 0
    heads = max(_dpt_chunk_bytes(h, n, s) for h in (config.depth_head, config.point_head, None))
    outputs = s * height * width * 4 * 6 + images
    post = s * height * width * (3 * 8 * 2 + 4 * 12) if host else 0
    stack = feats + attention_stack + entries
    activations = images + max(embed, stack, feats + entries + restored + heads + outputs)
    total = weights_bytes + int(1.2 * (activations + post)) + 256 * 1024**2
    return MemoryEstimate(
        weights=int(weights_bytes),
        activations=int(activations),
        outputs=int(outputs + post),
        total=int(total),
        stack=int(stack),
    )


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new allocations on ``device``: CUDA ``mem_get_info`` plus memory cached by
    PyTorch's allocator; CPU ``MemAvailable`` of ``/proc/meminfo``. None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    return _meminfo_available()


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
        files_written: paths written by :meth:`export` and the ``save_*`` methods, in order.
        input_paths: what the reconstruction was made from (image files or folder, video, model and
            pruner weights): no output may replace, contain or lie inside one of them.
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
    input_paths: list = field(default_factory=list)

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

    # -- points -----------------------------------------------------------------------------------

    def point_mask(
        self,
        conf_threshold: float | None = None,
        conf_percentile: float | None = None,
        source: str = "depth",
    ) -> np.ndarray:
        """``[S, h, w]`` bool: valid, finite pixels whose confidence passes the filter.

        One filter applies: ``conf_threshold=C`` keeps pixels with ``conf >= C`` (0 keeps all);
        ``conf_percentile=P`` (0-100) drops the lowest ``P`` percent of the valid pixels by
        confidence; with neither, the default :data:`DEFAULT_CONF_PERCENTILE` (50, as VGGT's demos
        and the command line). ``source`` picks the map and its confidence: ``"depth"``
        (:attr:`points_from_depth`, :attr:`depth_conf`) or ``"pointmap"`` (:attr:`world_points`,
        :attr:`world_points_conf`).
        """
        kind, value = check_point_filter(conf_threshold, conf_percentile)
        points, conf = self._source(source)
        mask = self.valid_mask & np.isfinite(points).all(axis=-1) & np.isfinite(conf)
        if kind == "threshold":
            return mask & (conf >= value)
        if mask.any() and value > 0:
            mask &= conf >= np.percentile(conf[mask], value)
        return mask

    def _source(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        if source == "depth":
            return self.points_from_depth, self.depth_conf
        if source == "pointmap":
            return self.world_points, self.world_points_conf
        raise InputError(f"point source must be 'depth' or 'pointmap', got {source!r}")

    def point_cloud(
        self,
        conf_threshold: float | None = None,
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
        max_points = check_count(max_points, "max_points")
        seed = check_seed(seed)
        if max_points is not None and len(xyz) > max_points:
            chosen = np.sort(np.random.default_rng(seed).choice(len(xyz), size=max_points, replace=False))
            xyz, rgb, scores = xyz[chosen], rgb[chosen], scores[chosen]
        return (xyz, rgb, scores) if return_conf else (xyz, rgb)

    def _points_for_export(self, **kwargs):
        xyz, rgb, conf = self.point_cloud(return_conf=True, **kwargs)
        if len(xyz) == 0:
            points, all_conf = self._source(kwargs.get("source", "depth"))
            finite = np.isfinite(all_conf) & np.isfinite(points).all(axis=-1)
            if not finite[self.valid_mask].any():
                raise InputError(
                    "the model predicted no finite values (NaN or infinity everywhere): its weights are "
                    f"probably corrupt; check the checkpoint ({self.model_name or 'the model'})"
                )
            valid = all_conf[self.valid_mask & finite]
            best = f"{float(valid.max()):.3g}" if valid.size else "n/a"
            threshold = kwargs.get("conf_threshold")
            raise InputError(
                f"no points pass the confidence filter (threshold {threshold}, highest confidence {best}); "
                f"lower the threshold ({option('conf')}) or keep a share of the points ({option('conf_percentile_50')})"
            )
        return xyz, rgb, conf

    # -- writers ----------------------------------------------------------------------------------

    def colmap_intrinsics(self) -> np.ndarray:
        """``[S, 3, 3]`` intrinsics in original-image pixels, COLMAP convention (top-left pixel centre at 0.5)."""
        k = self.intrinsics_original.astype(np.float64).copy()
        k[:, 0, 2] += 0.5
        k[:, 1, 2] += 0.5
        return k

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

    def export(
        self,
        targets: dict[str, str | os.PathLike],
        overwrite: bool = False,
        progress: bool | None = None,
        render_points: int = 150_000,
        **point_kwargs,
    ) -> dict[str, Path]:
        """Write several outputs at once, all or nothing.

        Args:
            targets: format -> path, formats from :data:`EXPORT_FORMATS`: ``ply`` (binary point
                cloud), ``glb`` (points and camera frustums), ``colmap`` (a folder of COLMAP text
                files), ``npz`` (:meth:`arrays`), ``cameras`` (:meth:`cameras_json`), ``preview`` (PNG).
            overwrite: replace outputs that exist.
            progress: a progress bar over the outputs on stderr (None: when stderr is a terminal).
            render_points: points drawn in the preview.
            point_kwargs: the point filter of :meth:`point_cloud` (confidence, source, max_points, seed).

        Every output is checked first (:func:`pacegeo.io.outputs.check_outputs`): none may be,
        contain or lie inside one of :attr:`input_paths`, whatever ``overwrite`` says. The files
        are written under temporary names and moved into place together: if anything fails (disk
        full, out of memory), none appears and existing files are untouched.

        Returns:
            format -> the path written.

        Raises:
            OutputError: a refused or failed output (nothing written).
            InputError: an unknown format, or no points pass the filter.
        """
        from pacegeo.io.outputs import OutputSet

        unknown = sorted(set(targets) - set(EXPORT_FORMATS))
        if unknown:
            raise InputError(f"unknown export format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)}")
        specs = {fmt: export_spec(fmt, path) for fmt, path in targets.items()}
        start = time.perf_counter()
        with OutputSet(list(specs.values()), self.input_paths, overwrite) as outputs:
            points = None
            if {"ply", "glb", "colmap"} & set(specs):
                points = self._points_for_export(**point_kwargs)
            for fmt in _progress(list(specs), _progress_enabled(progress), desc="writing", unit="file"):
                staged = outputs.staged(specs[fmt])
                if fmt == "colmap":
                    self._write(fmt, staged, points, render_points, point_kwargs)
                    continue
                with open(staged, "wb") as handle:
                    self._write(fmt, handle, points, render_points, point_kwargs)
                    handle.flush()
                    os.fsync(handle.fileno())
        written = {fmt: spec.path for fmt, spec in specs.items()}
        self.timings["export"] = self.timings.get("export", 0.0) + time.perf_counter() - start
        self.files_written.extend(written.values())
        return written

    def _write(self, fmt: str, target, points, render_points: int, point_kwargs: dict) -> None:
        """Stream format ``fmt`` into ``target`` (an open binary file; a folder for COLMAP)."""
        from pacegeo import export

        if fmt == "ply":
            export.ply_into(target, points[0], points[1])
        elif fmt == "glb":
            export.glb_into(target, points[0], points[1], self.extrinsics, self.intrinsics, self.inference_hw, self.frame_names)
        elif fmt == "colmap":
            xyz, rgb, conf = points
            export.colmap_into(
                target, self.extrinsics, self.colmap_intrinsics(), self.image_size, self.frame_names, xyz, rgb,
                errors=1.0 / np.maximum(conf, 1e-6),
            )
        elif fmt == "npz":
            export.npz_into(target, self.arrays())
        elif fmt == "cameras":
            export.json_into(target, self.cameras_json())
        elif fmt == "preview":
            xyz, rgb = self.point_cloud(**point_kwargs)
            kept = self.kept_per_frame
            title = (
                f"{len(self)} frames, {Path(self.model_name).name or 'model'}, keep {self.keep:g} "
                f"({kept[-1] if kept else 0}/{self.tokens_per_frame} tokens per frame), {len(xyz):,} points"
            )
            export.preview_into(
                target, xyz, rgb, self.extrinsics, self.intrinsics, self.inference_hw, title=title,
                max_points=render_points, seed=int(point_kwargs.get("seed", 0)),
            )

    def save_ply(self, path: str | os.PathLike, **point_kwargs) -> Path:
        """Write the coloured point cloud (:meth:`point_cloud` arguments) as a binary PLY, OpenCV
        world frame; an existing file is replaced (see :meth:`export` for the checks)."""
        return self.export({"ply": path}, overwrite=True, progress=False, **point_kwargs)["ply"]

    def save_glb(self, path: str | os.PathLike, **point_kwargs) -> Path:
        """Write a GLB scene: coloured points plus a wireframe frustum per camera, converted from
        OpenCV to glTF's y-up convention; an existing file is replaced."""
        return self.export({"glb": path}, overwrite=True, progress=False, **point_kwargs)["glb"]

    def save_colmap(self, folder: str | os.PathLike, overwrite: bool = False, **point_kwargs) -> Path:
        """Write a COLMAP text model (cameras.txt, images.txt, points3D.txt) into ``folder``.

        One PINHOLE camera per frame in original-image pixels; poses are world-to-camera (qvec
        wxyz, tvec); points carry RGB and an error of ``1 / confidence`` and no tracks. An existing
        folder is replaced only with ``overwrite``.
        """
        return self.export({"colmap": folder}, overwrite=overwrite, progress=False, **point_kwargs)["colmap"]

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write :meth:`arrays` as a compressed ``.npz`` (``np.load(path)``; names are a str array)."""
        return self.export({"npz": path}, overwrite=True, progress=False)["npz"]

    def save_cameras_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`cameras_json` as indented JSON."""
        return self.export({"cameras": path}, overwrite=True, progress=False)["cameras"]

    def save_preview(self, path: str | os.PathLike, render_points: int = 150_000, **point_kwargs) -> Path:
        """Write a PNG with a perspective splat, a top and a side view of the coloured points
        (:meth:`point_cloud` arguments; at most ``render_points`` drawn), with the cameras drawn
        (:func:`pacegeo.export.preview_into`)."""
        return self.export({"preview": path}, overwrite=True, progress=False, render_points=render_points, **point_kwargs)["preview"]


#: Export formats: name -> (kind, suffix, what messages call it).
EXPORT_FORMATS: dict[str, tuple[str, str, str]] = {
    "ply": ("file", ".ply", "point cloud"),
    "glb": ("file", ".glb", "GLB scene"),
    "colmap": ("folder", "", "COLMAP folder"),
    "npz": ("file", ".npz", "array file"),
    "cameras": ("file", ".json", "camera file"),
    "preview": ("file", ".png", "preview"),
}


def export_spec(fmt: str, path: str | os.PathLike):
    """The :class:`pacegeo.io.outputs.OutputSpec` of writing format ``fmt`` to ``path``."""
    from pacegeo.io.outputs import OutputSpec

    kind, suffix, what = EXPORT_FORMATS[fmt]
    return OutputSpec(Path(path), kind=kind, suffixes=(suffix,) if suffix else (), what=what)


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far, in bytes."""
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
        pruner_path: Path | None = None,
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
        self.pruner_path = None if pruner_path is None else Path(pruner_path)
        self.map_store = None  # the map of the last build_map / load_map, for localize

    @property
    def config(self):
        return self.backbone.config

    @property
    def weight_paths(self) -> list[Path]:
        """The weight files this pipeline was loaded from (backbone, pruner)."""
        paths = [] if self.model is None else [Path(self.model.path)]
        return paths + ([self.pruner_path] if self.pruner_path is not None else [])

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

        pace, pruner_path = None, None
        text = None if pruner is None else str(pruner)
        if text is not None and text.lower() != "none":
            from pacegeo.pace import MODES, PaceVGGT, load_pruner

            if text == "auto":
                bundled = checkpoints_dir() / f"{backbone.config.name}-pruner.safetensors"
                if bundled.is_file():
                    pruner_path = bundled
                    pace = load_pruner(bundled, backbone, amp_dtype=amp)
                else:
                    pace = PaceVGGT(backbone, mode="training-free", amp_dtype=amp)
            elif text in MODES and text != "learned":
                pace = PaceVGGT(backbone, mode=text, amp_dtype=amp)
            elif Path(text).expanduser().is_file():
                pruner_path = Path(text).expanduser()
                pace = load_pruner(pruner_path, backbone, amp_dtype=amp)
            elif _looks_like_path(text):
                raise CheckpointError(f"pruner checkpoint {text} not found")
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
            pruner_path=pruner_path,
        )

    # -- memory -----------------------------------------------------------------------------------

    def estimate_memory(self, frames: int, image_hw: tuple[int, int], keep: float) -> MemoryEstimate:
        """:func:`estimate_peak_memory` for this pipeline's model, device and dtype."""
        weights = sum(p.numel() * p.element_size() for p in self.backbone.parameters())
        if self.pruner is not None:
            weights += sum(p.numel() * p.element_size() for p in self.pruner.pruner_parameters())
        return estimate_peak_memory(
            self.config, frames, image_hw, keep, self.amp_dtype, weights_bytes=weights, host=self.device.type == "cpu"
        )

    def check_memory(self, frames: int, image_hw: tuple[int, int], keep: float) -> MemoryEstimate:
        """Raise :class:`InputError` when the estimated peak will not fit in the device's free
        memory, saying what would (a lower keep, fewer frames, or the CPU). Returns the estimate."""
        estimate = self.estimate_memory(frames, image_hw, keep)
        free = available_memory(self.device)
        if free is None or estimate.beyond_weights <= free:
            return estimate

        def fits(s: int, k: float) -> bool:
            return self.estimate_memory(s, image_hw, k).beyond_weights <= free

        options = []
        if self.pruner is not None:
            for k in (0.7, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05):
                if k < keep and fits(frames, k):
                    options.append(f"a lower keep ({k:g} fits)")
                    break
        lo, hi = 0, frames - 1
        while lo < hi:  # largest frame count that fits
            mid = (lo + hi + 1) // 2
            if fits(mid, keep):
                lo = mid
            else:
                hi = mid - 1
        if lo >= 1:
            options.append(f"fewer frames with --frames/--stride (up to {lo} fit)")
        if self.device.type == "cuda":
            host = _meminfo_available()
            cpu_need = estimate_peak_memory(self.config, frames, image_hw, keep, None, host=True).total
            if host is None or cpu_need <= host:
                options.append("the CPU (--device cpu), slower")
        advice = "; try " + ", or ".join(options) if options else "; no smaller setting fits either"
        h, w = image_hw
        raise InputError(
            f"not enough memory: {frames} frames at {w}x{h} with keep {keep:g} need about "
            f"{_fmt_gib(estimate.beyond_weights)} more on {self.device}, {_fmt_gib(free)} is free{advice}"
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
        seed = check_seed(seed)
        if self.pruner is None and keep < 1.0:
            raise InputError(f"keep {keep:g} needs a pruner, but this pipeline was loaded with pruner='none'; use keep=1")
        if isinstance(images_or_paths_or_folder, PreparedInputs):
            prepared = images_or_paths_or_folder
        else:
            prepared = self.prepare(images_or_paths_or_folder, mode, frames, stride, fps, strict, progress)
        frames_count = len(prepared)
        image_hw = prepared.image_hw
        estimate = self.check_memory(frames_count, image_hw, keep) if check_memory else self.estimate_memory(frames_count, image_hw, keep)

        try:
            with torch.inference_mode():
                out, seconds, stage_times, peak, peak_kind = self._forward(prepared.images, keep, seed, progress)
                rec = self._to_reconstruction(prepared, out, keep)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
            text = str(err)
            if not isinstance(err, (torch.OutOfMemoryError, MemoryError)) and "memory" not in text.lower():
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise InputError(
                f"ran out of memory on {self.device} during inference ({frames_count} frames at "
                f"{image_hw[1]}x{image_hw[0]}, keep {keep:g}); try a lower {option('keep')} or fewer frames ({option('frames_or_stride')})"
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

    def _forward(self, images: torch.Tensor, keep: float, seed: int, progress: bool | None = None):
        from pacegeo.pace import STAGES, StageClock, backbone_forward_staged, listen_stages

        device = self.device
        batch = images.to(device, non_blocking=True)[None]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        stages = len(STAGES) if self.pruner is not None and keep < 1.0 else 3
        bar = _progress(None, _progress_enabled(progress), total=stages, desc="inference", unit="stage")

        def finished(stage: str) -> None:
            bar.update(1)
            bar.set_postfix_str(stage)

        with bar, listen_stages(finished), torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            start = time.perf_counter()
            if self.pruner is not None:
                self.pruner.seed = seed
                out = self.pruner(batch, keep=keep, timings=True)
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
            peak, kind = peak_rss_bytes(), "process RSS"
        stage_times = dict(out.get("pruning", {}).get("timings", {}))
        return out, seconds, stage_times, peak, kind

    def _to_reconstruction(self, prepared: PreparedInputs, out: dict, keep: float) -> Reconstruction:
        from pacegeo.geometry import pose_encoding_to_extri_intri, unproject_depth_map_to_point_map

        h, w = prepared.image_hw
        pose = out["pose_enc"][0].float()
        extrinsics, intrinsics = pose_encoding_to_extri_intri(pose, (h, w))
        extrinsics = extrinsics.float().cpu().numpy()
        intrinsics = intrinsics.float().cpu().numpy()
        depth = out["depth"][0, ..., 0].float().cpu().numpy()
        depth_conf = out["depth_conf"][0].float().cpu().numpy()
        if "world_points" in out:
            world_points = out["world_points"][0].float().cpu().numpy()
            world_points_conf = out["world_points_conf"][0].float().cpu().numpy()
        else:  # a backbone without a point head
            world_points = np.full(depth.shape + (3,), np.nan, np.float32)
            world_points_conf = np.zeros_like(depth_conf)
        from_depth = unproject_depth_map_to_point_map(depth, extrinsics, intrinsics).astype(np.float32)
        colors = (prepared.images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
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
            input_paths=[*prepared.paths, *self.weight_paths],
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
