"""Evaluation models: the backbone and pruner of a protocol run, built from the command line."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from pacegeo.errors import InputError, PacegeoError

logger = logging.getLogger("pacegeo.evaluation")

PRUNERS = ("none", "learned", "training-free", "random", "grid")


PROTOCOL_SEED = 33  # FastVGGT's seed for everything random in its evaluation


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


def default_input_size(backbone: torch.nn.Module, label: str) -> int:
    """The model's inference input width: the checkpoint's recorded preprocessing size when it has
    one (``pacegeo-tiny``: its training width), else the aggregator's ``img_size`` (518 for VGGT-1B)."""
    from pacegeo.hub import resolve_weights
    from pacegeo.models import read_preprocess

    config = getattr(backbone, "config", None)
    trained = int(getattr(getattr(config, "aggregator", None), "img_size", 0) or 518)
    try:
        path = resolve_weights(label)
    except PacegeoError:  # random models: no file, the config's size
        return trained
    return read_preprocess(path, default_size=trained)[0]


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
    else:  # the one pruner factory; a checkpoint file is labelled by its stem
        from pacegeo.models import build_pruner

        module, path = build_pruner(backbone, pruner_arg, amp_dtype="auto", seed=seed)
        pruner = pruner_arg if pruner_arg in PRUNERS or path is None else path.stem
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
