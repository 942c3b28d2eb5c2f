"""The stages of a forward pass, timed: ``embed``, ``scorer``, ``select``, ``aa``, ``restoration``,
``heads`` (the pruned forward of :class:`pacegeo.pace.PaceVGGT` marks all six, the backbone's own
path three), and a listener that long runs use to show progress stage by stage."""

import contextlib
import contextvars
import time

import torch
from einops import repeat
from torch import nn

from pacegeo.precision import autocast

STAGES = ("embed", "scorer", "select", "aa", "restoration", "heads")


_STAGE_LISTENER: contextvars.ContextVar = contextvars.ContextVar("pacegeo_stage_listener", default=None)


@contextlib.contextmanager
def listen_stages(callback):
    """Call ``callback(stage)`` each time an enabled :class:`StageClock` finishes a stage inside
    this block (progress display of long forward passes)."""
    token = _STAGE_LISTENER.set(callback)
    try:
        yield
    finally:
        _STAGE_LISTENER.reset(token)


class StageClock:
    """Wall-clock time per stage; synchronises CUDA at every mark. Disabled: does nothing."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = {}
        self._last = self._now() if enabled else 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def mark(self, stage: str) -> None:
        """Charge the time since the previous mark to ``stage``."""
        if not self.enabled:
            return
        now = self._now()
        self.times[stage] = self.times.get(stage, 0.0) + now - self._last
        self._last = now
        listener = _STAGE_LISTENER.get()
        if listener is not None:
            listener(stage)


def backbone_forward_staged(
    backbone: nn.Module, images: torch.Tensor, clock: StageClock, amp_dtype: torch.dtype | None = None
) -> dict:
    """``backbone(images)`` stage by stage (same operations, same outputs), timing each stage."""
    agg = backbone.aggregator
    b, s, _, h, w = images.shape
    ps = agg.config.patch_size
    with autocast(images.device, amp_dtype):
        patches = agg.embed(images)
        clock.mark("embed")
        tokens = torch.cat((agg.special_tokens(b, s).to(patches.dtype), patches), dim=2)
        pos = None
        if agg.rope is not None:
            pos = repeat(agg.patch_positions(h // ps, w // ps, images.device), "p two -> b s p two", b=b, s=s)
        entries = agg.run_blocks(tokens, pos, keep_layers=backbone.head_layers())
        clock.mark("aa")
        out = backbone.predict(entries, (h, w), agg.patch_start_idx)
    clock.mark("heads")
    if not backbone.training:
        out["images"] = images
    return out


__all__ = ["STAGES", "StageClock", "backbone_forward_staged", "listen_stages"]
