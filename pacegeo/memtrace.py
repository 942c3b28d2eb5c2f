"""Live tensor bytes of a block of code: an allocator statistic that works on every device.

:class:`TensorMemoryTracker` sees every tensor an operator returns (a ``TorchDispatchMode``),
counts the bytes of each storage once and subtracts them when the storage is freed. Its ``peak``
is what the code allocates at most at one time, the quantity ``torch.cuda.max_memory_allocated``
reports on CUDA, without the allocator's rounding and without memory that the runtime, the
allocator or oneDNN keep outside tensors (process RSS sees those).

Tensors that exist before the block (weights, inputs) are not counted. ``mark(phase)`` starts a
new phase; ``phase_peaks`` holds each phase's peak. Slow (a Python call per operator): a tool for
measurements and tests, not for production runs.
"""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemoryTracker(TorchDispatchMode):
    """``with TensorMemoryTracker() as t: ...`` then ``t.peak`` (bytes), ``t.phase_peaks``."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.phase = "start"
        self.phase_peaks: dict[str, int] = {}
        self._sizes: dict[int, int] = {}

    def mark(self, phase: str) -> None:
        """Start ``phase`` (its peak starts at the bytes live now)."""
        self.phase = phase
        self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), self.live)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def _count(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if not key or key in self._sizes or key in inputs:  # counted already, or a view/in-place result
            return
        self._sizes[key] = storage.nbytes()
        self.live += storage.nbytes()
        weakref.finalize(storage, self._free, key)
        if self.live > self.peak:
            self.peak = self.live
        if self.live > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {
            v.untyped_storage().data_ptr()
            for v in tree_flatten((args, kwargs))[0]
            if isinstance(v, torch.Tensor) and v.device.type != "meta"
        }
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._count(value, inputs)
        return out


__all__ = ["TensorMemoryTracker"]
