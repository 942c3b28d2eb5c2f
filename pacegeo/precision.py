"""The one precision rule of pacegeo.

Every entry point (``Pipeline``, ``PaceVGGT``, the CLI, the ``eval/`` and ``train/`` scripts)
turns a user's dtype choice into an autocast dtype with :func:`resolve_dtype`, and runs the model
inside :func:`autocast`. ``None`` means float32 (no autocast).

``"auto"`` resolves to:

* CUDA: bf16 on compute capability >= 8.0, fp16 below (as VGGT is normally run);
* CPU: bf16 where the CPU has native bf16 matrix instructions (AMX or AVX512-BF16, see
  :func:`cpu_has_native_bf16`), float32 elsewhere. Without native support bf16 is emulated and
  slower than float32. How far bf16 moves the outputs from float32 (depth, point maps, cameras)
  is measured by ``eval/precision.py`` (``eval/results/precision.md``).

The same autocast region covers the embedding, the attention stack, the restoration and the heads
for pruned and unpruned forwards alike. The backbone itself decides what its heads do inside it
(on CUDA they compute in float32, as the official VGGT). A few small pieces whose outputs feed
discrete decisions or sharp softmaxes stay float32 inside the region (:func:`no_autocast`): the
token scorer, the merge assignment and the restoration's interpolation weights
(see :mod:`pacegeo.pace`).
"""

import contextlib
import functools
import logging

import torch

from pacegeo.errors import InputError

logger = logging.getLogger(__name__)

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")

_NAMES = {
    "float32": None, "fp32": None, torch.float32: None,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, torch.bfloat16: torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, torch.float16: torch.float16,
}


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX tiles or AVX512-BF16 dot products).

    Asks torch first (``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``), then
    the ``amx_bf16`` / ``avx512_bf16`` flags of ``/proc/cpuinfo``.
    """
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None:
            try:
                if check():
                    return True
            except RuntimeError:
                pass
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``dtype`` on ``device`` (None = float32, no autocast).

    Args:
        dtype: ``"auto"``, ``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"``, ``"float16"``/
            ``"fp16"``, a torch dtype, or None (float32).
        device: where the model runs.
    Raises:
        InputError: an unknown name, or float16 on the CPU.
    """
    device = torch.device(device)
    if dtype is None:
        return None
    if isinstance(dtype, str):
        dtype = dtype.strip().lower()
    if dtype == "auto":
        if device.type == "cuda":
            major, _ = torch.cuda.get_device_capability(device)
            return torch.bfloat16 if major >= 8 else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if dtype not in _NAMES:
        raise InputError(f"unsupported dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    resolved = _NAMES[dtype]
    if resolved == torch.float16 and device.type == "cpu":
        raise InputError("float16 is not supported on the CPU; use float32 or bfloat16")
    return resolved


def dtype_name(dtype: torch.dtype | None) -> str:
    """``"float32"`` for None, else the dtype's name (``"bfloat16"``)."""
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def mixed_precision_name(dtype: torch.dtype | None) -> str:
    """The ``accelerate`` ``mixed_precision`` setting of an autocast dtype (``"no"`` for float32)."""
    return {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """Autocast context for ``dtype`` on ``device`` (a no-op for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def no_autocast(device: torch.device | str):
    """A float32 region inside an autocast one."""
    kind = torch.device(device).type
    if kind in ("cuda", "cpu"):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


__all__ = [
    "DTYPE_CHOICES",
    "autocast",
    "cpu_has_native_bf16",
    "dtype_name",
    "mixed_precision_name",
    "no_autocast",
    "resolve_dtype",
]
