"""The reconstruct preflight: does a run fit in the device's free memory, and if not, what would?

:func:`check_fits` compares the activation estimate of :mod:`pacegeo.memory` (through the
pipeline's own :meth:`pacegeo.Pipeline.estimate_memory`, which knows its weights, chunks and
runtime) with the memory the device has free, and, when it does not fit, names the settings that
would: a lower keep, fewer frames, chunks, or the CPU.
"""

from __future__ import annotations

from typing import Callable

import torch

from pacegeo.errors import InputError, option
from pacegeo.memory import MemoryEstimate, estimate_peak_memory, max_frames, min_keep
from pacegeo.system import available_memory

GIB = 1024**3

__all__ = ["check_fits", "fmt_gib"]


def fmt_gib(value: int) -> str:
    """Bytes as GiB with two decimals."""
    return f"{value / GIB:.2f} GiB"


def check_fits(
    estimate: Callable[[int, float], MemoryEstimate],
    config,
    device: torch.device,
    frames: int,
    image_hw: tuple[int, int],
    keep: float,
    prunable: bool,
) -> MemoryEstimate:
    """Raise :class:`InputError` when ``frames`` frames at ``keep`` will not fit, saying what would.

    Args:
        estimate: ``(frames, keep) -> MemoryEstimate`` of the pipeline at this image size.
        config: the backbone's config (for the CPU alternative's estimate).
        device: where the run happens.
        prunable: whether a lower keep is an option (a pruner is loaded).
    Returns:
        The estimate of the run. What must be free: the activations (on CUDA also the images, moved
        there by the run); weights, loaded images and the runtime are resident already.
    """
    result = estimate(frames, keep)
    free = available_memory(device)
    cuda = device.type == "cuda"

    def need(est: MemoryEstimate) -> int:
        return est.activations + (est.inputs if cuda else 0)

    if free is None or need(result) <= free:
        return result

    def fits(s: int, k: float) -> bool:
        return need(estimate(s, k)) <= free

    options = []
    if prunable:
        lowest = min_keep(lambda k: k < keep and fits(frames, k))
        if lowest is not None:
            options.append(f"a lower {option('keep')} ({lowest:g} fits)")
    most = max_frames(lambda s: fits(s, keep), 1, frames - 1) if frames > 1 else 0
    if most >= 1:
        options.append(f"fewer frames with {option('frames_or_stride')} (up to {most} fit)")
    if most >= 4:
        options.append(f"chunks of at most {most} frames ({option('chunk')}={most})")
    if cuda:
        host = available_memory(torch.device("cpu"))
        cpu_need = estimate_peak_memory(config, frames, image_hw, keep, None, device="cpu").activations
        if host is None or cpu_need <= host:
            options.append(f"the CPU ({option('device_cpu')}), slower")
    advice = "; try " + ", or ".join(options) if options else "; no smaller setting fits either"
    h, w = image_hw
    raise InputError(
        f"not enough memory: {frames} frames at {w}x{h} with keep {keep:g} need about "
        f"{fmt_gib(need(result))} more on {device}, {fmt_gib(free)} is free{advice}"
    )
