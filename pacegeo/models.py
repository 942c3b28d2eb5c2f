"""Models: the one place a model name, a pruner name and the preprocessing they imply are resolved.

* :func:`resolve_model` turns ``"auto"``, a model name, a hub id or a path into a
  :class:`ModelChoice` (weight file, inference size and preprocessing mode recorded in the
  checkpoint's ``preprocess`` metadata) without loading anything;
* :func:`build_pruner` turns a pruner name (``auto``, ``training-free``, ``random``, ``grid``,
  ``none``, or a pruner checkpoint) into a :class:`pacegeo.pace.PaceVGGT` around a loaded backbone;
* :func:`resolve_device` checks a device name.

The Pipeline, the command line, the evaluation and the training scripts all resolve through here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pacegeo.errors import CheckpointError, InputError, option

logger = logging.getLogger(__name__)

#: Pruner names besides checkpoint files ("auto": the bundled trained pruner of the backbone, else
#: training-free; "learned": the bundled trained pruner).
PRUNER_NAMES = ("auto", "learned", "training-free", "random", "grid", "none")

__all__ = ["PRUNER_NAMES", "TINY_NOTICE", "ModelChoice", "build_pruner", "bundled_pruner", "read_preprocess", "resolve_device", "resolve_model"]


TINY_NOTICE = (
    "using pacegeo-tiny, a small model trained on synthetic rooms: fine for a quick look, coarse on real "
    "photos; for real photos get VGGT-1B: `huggingface-cli download facebook/VGGT-1B model.safetensors` "
    "(non-commercial licence), then --model vggt-1b"
)


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


def read_preprocess(path: Path, default_size: int = 518) -> tuple[int, str]:
    """The inference size and preprocessing mode a checkpoint records (its ``preprocess``
    metadata), else ``(default_size, "crop")``: the one reading of that record.

    ``default_size`` is the backbone's training size when the caller knows it
    (``config.aggregator.img_size``), else 518 (VGGT-1B's)."""
    import json

    from pacegeo.hub import read_metadata

    fallback = (int(default_size), "crop")
    text = read_metadata(path).get("preprocess")
    if not text:
        return fallback
    try:
        data = json.loads(text)
        size = int(data.get("target_size", default_size))
        mode = str(data.get("mode", "crop"))
    except (ValueError, TypeError, AttributeError):
        logger.warning("ignoring unreadable preprocess metadata in %s: %r", path, text)
        return fallback
    if size < 14 or size % 14 or mode not in ("crop", "pad"):
        logger.warning("ignoring invalid preprocess metadata in %s: %r", path, text)
        return fallback
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
    size, mode = read_preprocess(path)
    return ModelChoice(name=name, path=path, target_size=size, preprocess_mode=mode, notice=notice)


def looks_like_path(text: str) -> bool:
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


def bundled_pruner(backbone) -> Path | None:
    """The bundled trained pruner of ``backbone`` (``<checkpoints>/<name>-pruner.safetensors``), if any."""
    from pacegeo.hub import checkpoints_dir

    path = checkpoints_dir() / f"{backbone.config.name}-pruner.safetensors"
    return path if path.is_file() else None


def build_pruner(
    backbone, pruner: str | os.PathLike | None = "auto", amp_dtype: torch.dtype | None = None, seed: int = 0
):
    """The pruned model for ``pruner`` around ``backbone``, and the pruner file it came from.

    Args:
        backbone: a loaded :class:`pacegeo.backbone.VGGT`.
        pruner: ``"auto"`` (the bundled trained pruner of the backbone when there is one, else
            ``"training-free"``), ``"learned"`` (the bundled trained pruner; an error without one),
            ``"training-free"``, ``"random"``, ``"grid"``, a pruner checkpoint path, or
            ``"none"``/None (no pruner).
        amp_dtype: autocast dtype of the pruned forward (:func:`pacegeo.precision.resolve_dtype`).
        seed: seed of the random baseline's selection.

    Returns:
        ``(pace, path)``: a :class:`pacegeo.pace.PaceVGGT` in eval mode (None for ``"none"``) and
        the checkpoint file (None unless one was loaded).

    Raises:
        InputError: an unknown name. CheckpointError: a missing or unreadable pruner file, or one
        trained for another backbone.
    """
    from pacegeo.pace import MODES, PaceVGGT
    from pacegeo.pruning.checkpoint import load_pruner

    text = None if pruner is None else str(pruner)
    if text is None or text.lower() == "none":
        return None, None
    path = None
    if text in ("auto", "learned"):
        path = bundled_pruner(backbone)
        if path is not None:
            pace = load_pruner(path, backbone, amp_dtype=amp_dtype, seed=seed)
        elif text == "auto":
            pace = PaceVGGT(backbone, mode="training-free", amp_dtype=amp_dtype, seed=seed)
        else:
            raise InputError(
                f"no bundled trained pruner for {backbone.config.name} ({backbone.config.name}-pruner.safetensors); "
                f"pass a pruner checkpoint as {option('pruner')}"
            )
    elif text in MODES:
        pace = PaceVGGT(backbone, mode=text, amp_dtype=amp_dtype, seed=seed)
    elif Path(text).expanduser().is_file():
        path = Path(text).expanduser()
        pace = load_pruner(path, backbone, amp_dtype=amp_dtype, seed=seed)
    elif looks_like_path(text):
        raise CheckpointError(f"pruner checkpoint {text} not found")
    else:
        raise InputError(f"unknown pruner {text!r}; use {', '.join(PRUNER_NAMES)} or a pruner checkpoint file")
    return pace.eval(), path

