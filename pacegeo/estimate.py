"""``pacegeo estimate``: will a reconstruction fit, and what would? (No weights are loaded.)

The model's architecture comes from :func:`pacegeo.hub.model_config` (the ``vggt-1b`` preset, or
the config in a checkpoint's metadata); the numbers from :mod:`pacegeo.memory`, the same model
as the reconstruct preflight.
"""

import logging
from dataclasses import dataclass

import torch

from pacegeo.errors import InputError
from pacegeo.memory import (
    GIB,
    MemoryEstimate,
    available_memory,
    estimate_peak_memory,
    fit_report,
    parameter_bytes,
    parse_bytes,
)
from pacegeo.precision import dtype_name, resolve_dtype
from pacegeo.pruning.budget import validate_keep

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EstimateRequest:
    """A run to estimate: model name or checkpoint, ``frames``, ``keep``, ``size`` (width, height)
    in pixels (None: the model's width at 4:3), device (``cpu``/``cuda``), dtype name, memory
    (bytes; None: what is free on this machine's device)."""

    model: str
    frames: int
    keep: float = 1.0
    size: tuple[int, int] | None = None
    device: str = "cuda"
    dtype: str = "auto"
    memory: int | None = None


def _dtype_for(dtype: str, device: str) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of the precision rule, and a note when it had to assume a GPU."""
    if device == "cuda" and str(dtype).lower() == "auto" and not torch.cuda.is_available():
        return torch.bfloat16, "auto on CUDA: bf16 (compute capability >= 8.0 assumed; no GPU here)"
    return resolve_dtype(dtype, device), ""


def _runtime(device: str) -> int:
    """CPU: this process's resident set (Python, torch and pacegeo imported): the runtime baseline."""
    if device != "cpu":
        return 0
    from pacegeo.system import rss_bytes

    return rss_bytes() or 0


def run_estimate(request: EstimateRequest) -> dict:
    """The report of ``pacegeo estimate`` (see :func:`pacegeo.memory.fit_report` for its keys)."""
    from pacegeo.hub import HUB_MODELS, model_config
    from pacegeo.pipeline import resolve_model

    if isinstance(request.frames, bool) or not isinstance(request.frames, int) or request.frames < 1:
        raise InputError(f"--frames must be a positive integer, got {request.frames!r}")
    keep = validate_keep(request.keep)
    device = str(request.device).lower()
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda, got {request.device!r}")
    config = model_config(request.model)
    ps = config.aggregator.patch_size
    if request.size is None:
        hub = str(request.model).lower() in HUB_MODELS
        width = 518 if hub else resolve_model(request.model).target_size
        height = max(ps, round(width * 3 / 4 / ps) * ps)
    else:
        width, height = request.size
    if width % ps or height % ps:
        raise InputError(f"--size {width}x{height}: both sides must be multiples of the patch size {ps}")
    amp, note = _dtype_for(request.dtype, device)
    memory = request.memory
    if memory is None:
        if device == "cuda" and not torch.cuda.is_available():
            raise InputError("no GPU here to read free memory from; pass --memory, e.g. --memory 80GiB")
        memory = available_memory(torch.device(device))
        if memory is None:
            raise InputError("cannot read the free memory of this machine; pass --memory, e.g. --memory 16GiB")
    runtime = _runtime(device)
    weights = parameter_bytes(config)

    def estimate_for(frames: int, k: float) -> MemoryEstimate:
        return estimate_peak_memory(config, frames, (height, width), k, amp, weights_bytes=weights,
                                    device=device, runtime_bytes=runtime)

    report = fit_report(estimate_for, request.frames, keep, memory)
    estimate = report.pop("estimate")
    report.update(
        model=config.name, frames=request.frames, keep=keep, width=width, height=height, device=device,
        dtype=dtype_name(amp), memory_bytes=int(memory), weights_bytes=estimate.weights,
        inputs_bytes=estimate.inputs, runtime_bytes=estimate.runtime, activations_bytes=estimate.activations,
        peak_phase=estimate.peak_phase, phases_bytes=dict(estimate.phases), note=note,
    )
    return report


PHASE_NAMES = {"embed": "the patch embedding", "select": "token selection", "aa": "the attention stack",
               "heads": "the heads", "post": "post-processing"}


def format_report(report: dict) -> str:
    """Human-readable lines of a :func:`run_estimate` report."""

    def gib(value: int) -> str:
        return f"{value / GIB:.1f} GiB"

    keep = report["keep"]
    lines = [
        f"{report['model']}: {report['frames']} frames at {report['width']}x{report['height']}, keep {keep:g}, "
        f"{report['device']}, {report['dtype']}" + (f" ({report['note']})" if report["note"] else ""),
        f"peak memory: {gib(report['peak_bytes'])} (weights {gib(report['weights_bytes'])}, images "
        f"{gib(report['inputs_bytes'])}"
        + (f", runtime {gib(report['runtime_bytes'])}" if report["runtime_bytes"] else "")
        + f", activations {gib(report['activations_bytes'])} at the peak, in {PHASE_NAMES.get(report['peak_phase'], report['peak_phase'])})",
        f"fits in {gib(report['memory_bytes'])}: {'yes' if report['fits'] else 'no'}",
        f"largest frame count that fits at keep {keep:g}: {report['max_frames']}",
    ]
    if report["min_keep"] is None:
        lines.append(f"no keep fits {report['frames']} frames")
    elif report["min_keep"] >= 1.0:
        lines.append(f"keep needed for {report['frames']} frames: none, the unpruned model (keep 1) fits")
    else:
        lines.append(f"keep needed for {report['frames']} frames: {report['min_keep']:g} or lower")
    return "\n".join(lines)


__all__ = ["EstimateRequest", "format_report", "parse_bytes", "run_estimate"]
