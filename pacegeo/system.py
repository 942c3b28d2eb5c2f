"""What the process and its devices have: free memory, the resident set, and freed heap handed back.

Used by the memory preflight (:mod:`pacegeo.memory`), the streamed heads (which hand freed heap
back after every large chunk) and the run summaries (peak resident set).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import sys

import torch

__all__ = ["available_memory", "peak_rss_bytes", "release_host_memory", "rss_bytes"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_host_memory() -> None:
    """Give freed heap pages back to the operating system (glibc ``malloc_trim``; a no-op where
    it does not exist). glibc keeps freed blocks below its mmap threshold (up to 32 MiB) resident;
    after a chunk loop these holes would otherwise stay in the resident set of the process."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free for new allocations on ``device``: CUDA ``mem_get_info`` plus memory cached by
    PyTorch's allocator; CPU ``MemAvailable`` of ``/proc/meminfo``. None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    return _meminfo_available()



def rss_bytes() -> int | None:
    """Resident set of this process now (Linux ``/proc/self/statm``), None elsewhere."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None



def peak_rss_bytes() -> int:
    """The process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
