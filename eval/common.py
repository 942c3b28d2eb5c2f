"""Shared pieces of the evaluation scripts (``eval/scannet.py``, ``eval/sevenscenes.py``).

* building the model and the token pruner from the command line (:func:`add_model_args`,
  :func:`build_model`);
* a timed forward pass (:func:`timed_forward`): only the model call is timed, with
  ``torch.cuda.synchronize()`` around it on CUDA; the autocast dtype of
  :func:`pacegeo.precision.resolve_dtype` ("auto") for pruned and unpruned models alike;
* turning model outputs into numpy predictions (:class:`Prediction`);
* preparing frames for the model: preprocessing plus ground truth (depth, intrinsics) resampled
  onto the model-input pixel grid (:func:`prepare_frames`);
* resumable per-scene JSON results (:func:`run_dir`, :func:`write_json`), a summary table
  (:func:`write_summary`) and a quality-latency frontier plot (:func:`plot_frontier`);
* sharding scenes across processes with ``accelerate`` (:class:`Sharding`): process ``i`` of ``n``
  handles ``scenes[i::n]``, so ``accelerate launch eval/scannet.py ...`` spreads scenes over GPUs;
* the driver of a protocol script (:func:`run_script`, :class:`ProtocolRun`): one model evaluated at
  every keep on this process's scenes, resumable per-scene results, then the summary; a script
  adds only its own frame selection and metrics.

Conventions: cameras are OpenCV (x right, y down, z forward); ``extrinsics`` are world-to-camera
``[S, 3, 4]``; ``cam_to_world`` are ``[S, 4, 4]``; depth is z-depth, 0 marks invalid pixels;
pixel ``(u, v)`` has its centre at image coordinate ``(u, v)``.

Library-style code: it logs and raises; only the script driver prints, as the scripts do.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from pacegeo.errors import InputError, PacegeoError

logger = logging.getLogger("pacegeo.eval")

PRUNERS = ("none", "learned", "training-free", "random", "grid")
PROTOCOL_SEED = 33  # FastVGGT's seed for everything random in its evaluation


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def keep_value(text: str) -> float:
    """argparse type of one ``--keep`` value: a fraction in ``(0, 1]``."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--keep values must be numbers in (0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise InputError(f"--keep values must be in (0, 1], got {text!r}")
    return value


def add_model_args(parser, default_keep: Sequence[float] = (1.0, 0.5, 0.3)) -> None:
    """Add ``--model --pruner --keep --size --device --seed --warmup --out`` to an argparse parser."""
    parser.add_argument(
        "--model",
        default="pacegeo-tiny",
        help="pacegeo-tiny | vggt-1b | tiny-random (random small model, for tests) | PATH to a "
        "backbone checkpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--pruner",
        default="training-free",
        help="none | learned | training-free | random | grid | PATH to a learned scorer checkpoint "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--keep",
        type=str,
        nargs="+",
        default=[f"{k:g}" for k in default_keep],
        help="fractions of patch tokens each frame keeps, one run each (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="model input width in pixels, a multiple of 14 (default: the model's training size, "
        "518 for vggt-1b)",
    )
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: accelerate's device)")
    parser.add_argument("--seed", type=int, default=PROTOCOL_SEED, help="seed (default: %(default)s)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed forward passes before the first timed one of each run (default: 1 on CUDA, 0 on CPU)",
    )
    parser.add_argument("--out", required=True, help="output folder (per-scene JSON, summary.md, frontier.png)")


def parse_keeps(values: Sequence[str], pruner: str) -> list[float]:
    """Validated keep fractions, in the given order without duplicates.

    Without a pruner only ``keep = 1`` is meaningful; other values are dropped (with a log line).
    """
    keeps: list[float] = []
    for text in values:
        k = keep_value(str(text))
        if k not in keeps:
            keeps.append(k)
    if pruner == "none":
        dropped = [k for k in keeps if k != 1.0]
        if dropped:
            logger.info("--pruner none runs the full model only; ignoring keep values %s", dropped)
        keeps = [1.0]
    return keeps


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalModel:
    """A backbone, optionally wrapped in a token pruner, ready for evaluation.

    Attributes:
        label: model name used in folder names and tables (``vggt-1b``, ``pacegeo-tiny``, the
            checkpoint's file stem, ...).
        pruner: pruner name (``none``, ``training-free``, ..., or the scorer file stem).
        module: the module to call: the backbone (``pruner == "none"``) or a ``PaceVGGT``.
        backbone: the frozen backbone.
        device: where the model runs.
        input_size: model input width in pixels (multiple of 14).
    """

    label: str
    pruner: str
    module: torch.nn.Module
    backbone: torch.nn.Module
    device: torch.device
    input_size: int

    @property
    def pruned(self) -> bool:
        return self.pruner != "none"

    @property
    def has_point_head(self) -> bool:
        return getattr(self.backbone, "point_head", None) is not None

    def __call__(self, images: torch.Tensor, keep: float) -> dict:
        """Forward ``[S, 3, H, W]`` images; ``keep`` is ignored without a pruner."""
        if self.pruned:
            return self.module(images, keep=keep)
        return self.module(images)


def warmup_passes(arg: int | None, device: torch.device) -> int:
    """``--warmup``, defaulting to one pass on CUDA (kernel selection, allocator) and none on CPU."""
    if arg is not None:
        return max(0, int(arg))
    return 1 if device.type == "cuda" else 0


def resolve_device(arg: str | None, accelerator_device: torch.device | None = None) -> torch.device:
    """``--device`` if given, else the accelerate process device, else CUDA when available."""
    if arg:
        device = torch.device(arg)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {arg} requested but CUDA is not available")
        return device
    if accelerator_device is not None:
        return torch.device(accelerator_device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_label(model_arg: str) -> str:
    path = Path(model_arg).expanduser()
    if path.exists():
        return path.stem if path.is_file() else path.name
    return model_arg


def load_eval_backbone(model_arg: str, seed: int) -> tuple[torch.nn.Module, str]:
    """The backbone named by ``--model`` (``tiny-random`` builds a seeded random ``tiny()`` model)."""
    if model_arg == "tiny-random":
        from dataclasses import replace

        from pacegeo.backbone import VGGT
        from pacegeo.backbone.config import tiny

        config = tiny(name="tiny-random")
        # Nominal training size 224 px, as pacegeo-tiny (the conv patch embedding does not use it).
        config = replace(config, aggregator=replace(config.aggregator, img_size=224))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VGGT(config)
        return model.eval(), "tiny-random"
    from pacegeo.hub import load_backbone

    return load_backbone(model_arg), _model_label(model_arg)


def bundled_pruner(model_label: str) -> Path | None:
    """The bundled learned pruner of a model: ``<checkpoints>/<model>-pruner.safetensors``, if present."""
    from pacegeo.hub import checkpoints_dir

    path = checkpoints_dir() / f"{model_label}-pruner.safetensors"
    return path if path.is_file() else None


def _build_pruner(
    backbone: torch.nn.Module, pruner_arg: str, model_label: str, seed: int
) -> tuple[torch.nn.Module, str]:
    """A ``PaceVGGT`` around ``backbone`` for ``--pruner`` (a mode name or a checkpoint path)."""
    from pacegeo.pace import PaceVGGT, load_pruner

    if pruner_arg in ("training-free", "random", "grid"):
        return PaceVGGT(backbone, mode=pruner_arg, seed=seed), pruner_arg
    if pruner_arg == "learned":
        path = bundled_pruner(model_label)
        if path is None:
            raise InputError(
                f"no bundled learned pruner for {model_label} ({model_label}-pruner.safetensors); "
                "pass a scorer checkpoint with --pruner PATH"
            )
        return load_pruner(path, backbone, seed=seed), "learned"
    path = Path(pruner_arg).expanduser()
    if not path.is_file():
        raise InputError(
            f"--pruner must be one of {', '.join(PRUNERS)} or a pruner checkpoint file, got {pruner_arg!r}"
        )
    return load_pruner(path, backbone, seed=seed), path.stem


def default_input_size(backbone: torch.nn.Module, label: str) -> int:
    """The model's inference input width: the checkpoint's recorded preprocessing size when it has
    one (``pacegeo-tiny``: its training width), else the aggregator's ``img_size`` (518 for VGGT-1B)."""
    import json

    from pacegeo.hub import read_metadata, resolve_weights

    try:
        meta = read_metadata(resolve_weights(label))
        if "preprocess" in meta:
            return int(json.loads(meta["preprocess"])["target_size"])
    except Exception:  # random models and unresolvable labels fall back to the config
        pass
    config = getattr(backbone, "config", None)
    size = getattr(getattr(config, "aggregator", None), "img_size", None)
    return int(size) if size else 518


def build_model(
    model_arg: str,
    pruner_arg: str,
    device: torch.device,
    size: int | None = None,
    seed: int = PROTOCOL_SEED,
) -> EvalModel:
    """Build the backbone (``--model``) and the pruner (``--pruner``) on ``device``.

    The input width is ``size`` when given (a multiple of 14), else the backbone's training size.
    """
    backbone, label = load_eval_backbone(model_arg, seed)
    if pruner_arg == "none":
        module, pruner = backbone, "none"
    else:
        module, pruner = _build_pruner(backbone, pruner_arg, label, seed)
    module = module.to(device).eval()
    backbone = backbone.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    input_size = default_input_size(backbone, label) if size is None else int(size)
    if input_size < 14 or input_size % 14:
        raise InputError(f"--size must be a positive multiple of 14, got {input_size}")
    if label == "vggt-1b" and input_size != 518:
        logger.warning("vggt-1b was trained at 518 px and the published protocols use 518; running at %d", input_size)
    return EvalModel(label, pruner, module, backbone, device, input_size)


# ---------------------------------------------------------------------------------------------
# Forward pass and predictions
# ---------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """Model predictions for one sequence of ``S`` frames at model resolution ``H x W`` (numpy).

    Attributes:
        extrinsics: ``[S, 3, 4]`` world-to-camera; the predicted world is camera 0's frame.
        intrinsics: ``[S, 3, 3]`` in model-input pixels.
        depth: ``[S, H, W]`` z-depth (model units).
        depth_conf: ``[S, H, W]`` depth confidence (``1 + exp(.)``, so >= 1).
        world_points: ``[S, H, W, 3]`` point-map head output in the predicted world, or None.
        world_points_conf: ``[S, H, W]`` or None.
    """

    extrinsics: np.ndarray
    intrinsics: np.ndarray
    depth: np.ndarray
    depth_conf: np.ndarray
    world_points: np.ndarray | None = None
    world_points_conf: np.ndarray | None = None

    @property
    def cam_to_world(self) -> np.ndarray:
        """``[S, 4, 4]`` camera-to-world poses (inverse of :attr:`extrinsics`)."""
        from pacegeo.geometry.transforms import invert_se3

        return invert_se3(self.extrinsics)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def outputs_to_prediction(outputs: dict, image_hw: tuple[int, int]) -> Prediction:
    """Convert a model output dict (batch of one) to a :class:`Prediction`."""
    from pacegeo.geometry import pose_encoding_to_extri_intri

    pose_enc = outputs["pose_enc"].float()
    extrinsics, intrinsics = pose_encoding_to_extri_intri(pose_enc, image_hw)
    depth = outputs["depth"]
    if depth.shape[-1] == 1:
        depth = depth[..., 0]
    points = outputs.get("world_points")
    points_conf = outputs.get("world_points_conf")
    return Prediction(
        extrinsics=_np(extrinsics[0]).astype(np.float64),
        intrinsics=_np(intrinsics[0]).astype(np.float64),
        depth=_np(depth[0]),
        depth_conf=_np(outputs["depth_conf"][0]),
        world_points=None if points is None else _np(points[0]),
        world_points_conf=None if points_conf is None else _np(points_conf[0]),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(model: EvalModel, images: torch.Tensor, keep: float) -> dict:
    """One forward pass. ``PaceVGGT`` applies its own autocast (:func:`pacegeo.precision.resolve_dtype`
    of ``"auto"``); the bare backbone gets the same autocast here, so that ``keep = 1`` with and
    without a pruner runs the same computation."""
    if model.pruned:
        return model(images, keep)
    from pacegeo.precision import autocast, resolve_dtype

    with autocast(model.device, resolve_dtype("auto", model.device)):
        return model(images, keep)


@torch.inference_mode()
def timed_forward(model: EvalModel, images: torch.Tensor, keep: float, warmup: int = 0) -> tuple[dict, float]:
    """Run the model on ``[S, 3, H, W]`` images and time the forward pass only.

    The images are moved to the device before the clock starts; ``warmup`` untimed passes run
    first. The call runs under the autocast of :func:`pacegeo.precision.resolve_dtype` (``"auto"``;
    on CUDA the heads stay float32) and is bracketed by ``torch.cuda.synchronize()`` on CUDA.

    Returns:
        ``(outputs, latency_ms)``.
    """
    images = images.to(model.device, non_blocking=True)
    for _ in range(max(0, int(warmup))):
        _forward(model, images, keep)
    _sync(model.device)
    start = time.perf_counter()
    outputs = _forward(model, images, keep)
    _sync(model.device)
    latency_ms = (time.perf_counter() - start) * 1000.0
    return outputs, latency_ms


def pruning_stats(outputs: dict) -> dict:
    """JSON-friendly copy of the ``"pruning"`` entry of a pruned model's outputs (empty otherwise)."""
    stats = outputs.get("pruning")
    if stats is None:
        return {}
    if not isinstance(stats, dict):
        stats = getattr(stats, "__dict__", {"value": str(stats)})
    return {k: to_jsonable(v) for k, v in stats.items() if _small(v)}


def _small(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.numel() <= 64
    if isinstance(v, np.ndarray):
        return v.size <= 64
    return True


# ---------------------------------------------------------------------------------------------
# Frames -> model input + ground truth on the model grid
# ---------------------------------------------------------------------------------------------


@dataclass
class PreparedFrames:
    """One sequence ready for the model, with ground truth on the model-input pixel grid.

    Attributes:
        names: frame names.
        images: ``[S, 3, H, W]`` float32 in [0, 1].
        cam_to_world: ``[S, 4, 4]`` ground-truth camera-to-world poses.
        depth: ``[S, H, W]`` ground-truth depth resampled (nearest) onto the model grid, 0 = invalid;
            None when the frames carry no depth.
        intrinsics: ``[S, 3, 3]`` ground-truth colour intrinsics expressed in model-input pixels.
    """

    names: list[str]
    images: torch.Tensor
    cam_to_world: np.ndarray
    depth: np.ndarray | None
    intrinsics: np.ndarray

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])


def resample_depth(
    depth: np.ndarray, K_depth: np.ndarray, K_color: np.ndarray, transform, out_hw: tuple[int, int]
) -> np.ndarray:
    """Nearest-neighbour resampling of a depth map onto the model-input pixel grid.

    Model pixel ``(x, y)`` maps to the original colour image through ``transform``
    (:class:`pacegeo.io.images.ImageTransform`, pixel-centre convention), then to the depth image
    through ``K_depth K_color^-1`` (colour and depth share the camera centre and orientation).

    Args:
        depth: ``[Hd, Wd]`` metres, 0 invalid.
        K_depth, K_color: ``[3, 3]`` intrinsics of the depth and colour images.
        out_hw: ``(H, W)`` of the model input.

    Returns:
        ``[H, W]`` float32 depth (0 where invalid or outside the depth image).
    """
    h, w = out_hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    uv = np.stack([xs, ys], axis=-1)
    orig = np.asarray(transform.to_original(uv, "center"), dtype=np.float64)
    homog = np.concatenate([orig, np.ones_like(orig[..., :1])], axis=-1)
    M = np.asarray(K_depth, dtype=np.float64) @ np.linalg.inv(np.asarray(K_color, dtype=np.float64))
    pd = homog @ M.T
    ud = np.rint(pd[..., 0] / pd[..., 2]).astype(np.int64)
    vd = np.rint(pd[..., 1] / pd[..., 2]).astype(np.int64)
    hd, wd = depth.shape
    inside = (ud >= 0) & (ud < wd) & (vd >= 0) & (vd < hd)
    out = np.zeros((h, w), dtype=np.float32)
    out[inside] = depth[vd[inside], ud[inside]]
    out[~np.isfinite(out)] = 0.0
    return out


def prepare_frames(frames, size: int, with_depth: bool = True) -> PreparedFrames:
    """Preprocess a :class:`pacegeo.data.frames.FrameSequence` for the model (VGGT "crop" mode).

    The width becomes ``size`` and the height keeps the aspect ratio rounded to a multiple of 14
    (centre-cropped to ``size`` if taller). Ground-truth intrinsics follow the same per-image
    transform exactly; ground-truth depth is resampled with :func:`resample_depth`.
    """
    from pacegeo.io.images import preprocess_image

    names, images, poses, Ks, depths = [], [], [], [], []
    for frame in frames:
        image, transform = preprocess_image(frame.image, mode="crop", target_size=size, source=str(frame.name))
        images.append(image)
        names.append(str(frame.name))
        poses.append(np.asarray(frame.cam_to_world, dtype=np.float64))
        Ks.append(np.asarray(transform.intrinsics_to_model(np.asarray(frame.K, dtype=np.float64)), dtype=np.float64))
        if with_depth and frame.depth is not None:
            depths.append(resample_depth(frame.depth, frame.depth_K, frame.K, transform, tuple(image.shape[-2:])))
    if not images:
        raise InputError("no frames to evaluate")
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise InputError(f"frames of one sequence have different sizes after preprocessing: {sorted(shapes)}")
    depth = np.stack(depths) if with_depth and len(depths) == len(images) else None
    return PreparedFrames(names, torch.stack(images), np.stack(poses), depth, np.stack(Ks))


# ---------------------------------------------------------------------------------------------
# Results on disk
# ---------------------------------------------------------------------------------------------


def run_name(model: str, pruner: str, keep: float) -> str:
    """Folder name of one run: ``<model>_<pruner>_keep<k>`` (e.g. ``vggt-1b_none_keep1``)."""
    return f"{model}_{pruner}_keep{keep:g}"


def run_dir(out: str | os.PathLike, model: str, pruner: str, keep: float) -> Path:
    return Path(out) / run_name(model, pruner, keep)


def scene_file(run: Path, scene: str) -> Path:
    """Per-scene JSON path; ``/`` in scene names (``chess/seq-03``) becomes ``__``."""
    return run / (scene.replace("/", "__").replace(os.sep, "__") + ".json")


def to_jsonable(value: Any) -> Any:
    """Numpy/torch scalars and arrays to Python; NaN and infinities to None (strict JSON)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()] if value.ndim else to_jsonable(value.item())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------------------------
# Sharding and progress
# ---------------------------------------------------------------------------------------------


class Sharding:
    """Splits scenes across the processes of an ``accelerate launch`` (one process: no split).

    Process ``index`` of ``count`` handles ``items[index::count]``.
    """

    def __init__(self) -> None:
        from accelerate import Accelerator

        # cpu=True on machines without CUDA, so that `torchrun --nproc_per_node N` (or accelerate's
        # multi-CPU launch) still splits the scenes (gloo); with CUDA each process gets its GPU.
        self._accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.index = int(self._accelerator.process_index)
        self.count = int(self._accelerator.num_processes)

    @property
    def device(self) -> torch.device:
        return self._accelerator.device

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def shard(self, items: Sequence) -> list:
        return list(items)[self.index :: self.count]

    def wait(self) -> None:
        self._accelerator.wait_for_everyone()


def progress(items: Iterable, desc: str, total: int | None = None, enabled: bool = True):
    """tqdm progress bar over scenes (disabled on non-main processes)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit="scene", disable=not enabled, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# Summary table and frontier plot
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One metric column of the summary table.

    Attributes:
        key: metric key in the per-scene JSON ``metrics`` dict.
        header: table header.
        fmt: format spec for the mean.
        lower_is_better: direction (for the frontier plot's axis label).
    """

    key: str
    header: str
    fmt: str = ".4f"
    lower_is_better: bool = True


@dataclass
class RunSummary:
    """Scene means of one run (model, pruner, keep)."""

    run: str
    model: str
    pruner: str
    keep: float
    scenes: int
    means: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def collect_runs(out: str | os.PathLike, protocol: str) -> list[RunSummary]:
    """Scene means of every run folder under ``out`` whose JSON files belong to ``protocol``.

    NaN / missing values are left out of a mean; ``counts`` says how many scenes entered it.
    """
    rows = []
    for run in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        records = []
        for path in sorted(run.glob("*.json")):
            try:
                rec = read_json(path)
            except (OSError, ValueError):
                logger.warning("skipping unreadable result %s", path)
                continue
            if isinstance(rec, dict) and rec.get("protocol") == protocol and "metrics" in rec:
                records.append(rec)
        if not records:
            continue
        first = records[0]
        keys = sorted({k for r in records for k, v in r["metrics"].items() if isinstance(v, (int, float)) or v is None})
        means, counts = {}, {}
        for key in keys:
            vals = [r["metrics"].get(key) for r in records]
            vals = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
            counts[key] = len(vals)
            means[key] = float(np.mean(vals)) if vals else float("nan")
        rows.append(
            RunSummary(run.name, first["model"], first["pruner"], float(first["keep"]), len(records), means, counts)
        )
    rows.sort(key=lambda r: (r.model, r.pruner != "none", r.pruner, -r.keep))
    return rows


def _baseline_latency(row: RunSummary, rows: list[RunSummary]) -> float:
    """Latency of the same model without pruning (else the same pruner at keep 1)."""
    for cand in rows:
        if cand.model == row.model and cand.pruner == "none":
            return cand.means.get("latency_ms", float("nan"))
    for cand in rows:
        if cand.model == row.model and cand.pruner == row.pruner and cand.keep == 1.0:
            return cand.means.get("latency_ms", float("nan"))
    return float("nan")


def _fmt(value: float, fmt: str) -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, fmt)


def write_summary(
    out: str | os.PathLike,
    protocol: str,
    columns: Sequence[Column],
    title: str,
    notes: Sequence[str] = (),
) -> list[RunSummary]:
    """Write ``summary.md`` (one row per run, scene means) and ``summary.json`` under ``out``.

    A latency column and a speed-up column (latency of the same model without pruning, or of the
    same pruner at keep 1, divided by this run's latency) are appended.
    """
    rows = collect_runs(out, protocol)
    header = ["model", "pruner", "keep", "scenes"] + [c.header for c in columns] + ["latency ms", "speed-up"]
    lines = [f"# {title}", ""]
    lines += [f"{n}" for n in notes]
    if notes:
        lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for r in rows:
        lat = r.means.get("latency_ms", float("nan"))
        base = _baseline_latency(r, rows)
        speed = base / lat if math.isfinite(base) and math.isfinite(lat) and lat > 0 else float("nan")
        cells = [r.model, r.pruner, f"{r.keep:g}", str(r.scenes)]
        cells += [_fmt(r.means.get(c.key, float("nan")), c.fmt) for c in columns]
        cells += [_fmt(lat, ".1f"), _fmt(speed, ".2f") + ("x" if math.isfinite(speed) else "")]
        lines.append("| " + " | ".join(cells) + " |")
    if not rows:
        lines.append("| " + " | ".join(["(no results)"] + [""] * (len(header) - 1)) + " |")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    write_json(
        out / "summary.json",
        {
            "protocol": protocol,
            "columns": [c.__dict__ for c in columns],
            "runs": [r.__dict__ for r in rows],
        },
    )
    return rows


def plot_frontier(
    rows: Sequence[RunSummary], columns: Sequence[Column], path: str | os.PathLike, title: str
) -> Path:
    """Quality-latency frontier: one panel per column, one point per run (model, pruner, keep).

    Runs of the same model and pruner are joined by a line in order of keep and labelled with
    their keep value. The x axis is the mean forward latency (ms).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(5.2 * len(columns), 4.2), squeeze=False)
    groups: dict[tuple[str, str], list[RunSummary]] = {}
    for r in rows:
        groups.setdefault((r.model, r.pruner), []).append(r)
    for ax, col in zip(axes[0], columns):
        for (model, pruner), runs in groups.items():
            runs = sorted(runs, key=lambda r: r.keep)
            xs = np.array([r.means.get("latency_ms", np.nan) for r in runs], dtype=float)
            ys = np.array([r.means.get(col.key, np.nan) for r in runs], dtype=float)
            ok = np.isfinite(xs) & np.isfinite(ys)
            if not ok.any():
                continue
            ax.plot(xs[ok], ys[ok], marker="o", label=f"{model} / {pruner}")
            for r, x, y, good in zip(runs, xs, ys, ok):
                if good:
                    ax.annotate(f"keep {r.keep:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("forward latency (ms)")
        ax.set_ylabel(col.header + (" (lower is better)" if col.lower_is_better else " (higher is better)"))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_root(root: str | os.PathLike, what: str) -> Path:
    """The dataset root as a Path, or a one-line :class:`InputError` when it is missing."""
    path = Path(root).expanduser()
    if not path.exists():
        raise InputError(f"{what} root not found: {path}")
    if not path.is_dir():
        raise InputError(f"{what} root is not a folder: {path}")
    return path


# ---------------------------------------------------------------------------------------------
# Script driver
# ---------------------------------------------------------------------------------------------


def run_script(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """Parse ``argv`` and call ``run``; a :class:`PacegeoError` becomes one ``error:`` line on stderr
    and exit code 2."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PacegeoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


class ProtocolRun:
    """One model (``--model``, ``--pruner``) evaluated at every ``--keep`` on this process's scenes.

    Building it parses the keeps, starts the sharding, picks the device, seeds torch and numpy with
    ``--seed`` and builds the model. A script then prints its header, calls :meth:`evaluate` for
    each of the :meth:`pending` scenes of its :meth:`shard` and ends with :meth:`finish`.
    Results go to ``<out>/<model>_<pruner>_keep<k>/<scene>.json``; a scene whose files all exist is
    skipped, so an interrupted run resumes.
    """

    def __init__(self, args: argparse.Namespace, protocol: str) -> None:
        self.protocol = protocol
        self.keeps = parse_keeps(args.keep, args.pruner)
        self.shards = Sharding()
        self.device = resolve_device(args.device, self.shards.device)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        self.model = build_model(args.model, args.pruner, self.device, args.size, args.seed)
        self.out = Path(args.out)
        self.runs = {k: run_dir(self.out, self.model.label, self.model.pruner, k) for k in self.keeps}
        self._warmup = warmup_passes(args.warmup, self.device)
        self._warmed: set[float] = set()

    @property
    def is_main(self) -> bool:
        return self.shards.is_main

    @property
    def keep_text(self) -> str:
        """The keep values as the headers print them (``1 0.5 0.3``)."""
        return " ".join(f"{k:g}" for k in self.keeps)

    def shard(self, scenes: Sequence[str]) -> list[str]:
        """This process's share of the scene names."""
        return self.shards.shard(scenes)

    def pending(self, scenes: Sequence[str], unit: str):
        """The scenes that miss a result for some keep, under a progress bar (main process only).

        A line first says how many scenes are done already; ``unit`` names a scene in it (``scene``,
        ``sequence``).
        """
        todo = [s for s in scenes if any(not scene_file(self.runs[k], s).exists() for k in self.keeps)]
        skipped = len(scenes) - len(todo)
        if skipped:
            print(f"[{self.shards.index}] resuming: {skipped} {unit}(s) already done")
        return progress(todo, self.protocol, enabled=self.is_main)

    def evaluate(
        self, scene: str, prepared: PreparedFrames, config: dict, score: Callable[[Prediction], dict]
    ) -> None:
        """Forward ``prepared`` at each keep whose result for ``scene`` is missing, score and save it.

        ``score(prediction)`` returns the protocol's ``{"metrics": {...}, "errors": [...], ...}``; each
        error is printed as a warning, the forward latency is added to the metrics, and the record
        (protocol, scene, model, pruner, keep, frames, input size, device, ``config``, pruning
        statistics, then the score's entries) is written as JSON. The first timed pass of each keep
        follows ``--warmup`` untimed ones.
        """
        for keep in self.keeps:
            path = scene_file(self.runs[keep], scene)
            if path.exists():
                continue
            outputs, latency = timed_forward(
                self.model, prepared.images, keep, warmup=0 if keep in self._warmed else self._warmup
            )
            self._warmed.add(keep)
            result = score(outputs_to_prediction(outputs, prepared.image_hw))
            result["metrics"]["latency_ms"] = latency
            for err in result["errors"]:
                print(f"warning: {scene} keep {keep:g}: {err}", file=sys.stderr)
            record = {
                "protocol": self.protocol,
                "scene": scene,
                "model": self.model.label,
                "pruner": self.model.pruner,
                "keep": keep,
                "frames": prepared.names,
                "input_hw": list(prepared.image_hw),
                "device": str(self.device),
                "config": config,
                "pruning": pruning_stats(outputs),
                **result,
            }
            write_json(path, record)
            del outputs

    def finish(self, columns: Sequence[Column], frontier: Sequence[Column], name: str, notes: Sequence[str]) -> None:
        """Wait for every process; the main one writes and prints the summary and plots the frontier.

        ``name`` titles the table (``<name> evaluation``) and the plot (``<name>: quality vs latency``).
        """
        self.shards.wait()
        if self.is_main:
            rows = write_summary(self.out, self.protocol, columns, f"{name} evaluation", notes)
            plot_frontier(rows, frontier, self.out / "frontier.png", f"{name}: quality vs latency")
            print((self.out / "summary.md").read_text())
            print(f"wrote {self.out / 'summary.md'}, {self.out / 'summary.json'}, {self.out / 'frontier.png'}")
