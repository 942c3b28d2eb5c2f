"""The frame ranges of a chunked reconstruction."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from pacegeo.errors import InputError, option
from pacegeo.options import check_count

if TYPE_CHECKING:  # pragma: no cover
    from pacegeo.io.inputs import PreparedInputs

__all__ = ["check_chunking", "chunk_spans", "default_overlap", "subset"]


def check_chunking(chunk: object, overlap: object, work_dir: object = None, loops: bool = False) -> tuple[int | None, int | None]:
    """``(chunk, overlap)`` checked where they enter: a chunk of at least 2 frames, an overlap of
    at least 1 frame and smaller than the chunk, and no overlap, work folder or loop closure
    without a chunk."""
    chunk = check_count(chunk, "chunk", minimum=2)
    overlap = check_count(overlap, "overlap")
    if chunk is None:
        for name, given in (("overlap", overlap is not None), ("work_dir", work_dir is not None), ("loops", bool(loops))):
            if given:
                raise InputError(f"{option(name)} needs {option('chunk')}")
    if overlap is not None and overlap >= chunk:
        raise InputError(f"{option('overlap')} must be smaller than {option('chunk')} ({chunk}), got {overlap}")
    return chunk, overlap


def default_overlap(chunk: int) -> int:
    """Frames consecutive chunks share when none is asked for: a quarter of a chunk, 3 at least."""
    return min(max(3, chunk // 4), chunk - 1)


def chunk_spans(count: int, chunk: int | None, overlap: int | None = None) -> list[tuple[int, int]]:
    """``[start, end)`` frame ranges of a chunked reconstruction of ``count`` frames.

    Consecutive chunks share ``overlap`` frames (default :func:`default_overlap`); ``chunk=None``
    or ``chunk >= count`` gives one span. The last chunk may be shorter than ``chunk``.
    """
    if chunk is None or chunk >= count:
        return [(0, count)]
    if chunk < 2:
        raise InputError(f"{option('chunk')} must be at least 2 frames, got {chunk}")
    if overlap is None:
        overlap = default_overlap(chunk)
    if not 1 <= overlap < chunk:
        raise InputError(f"{option('overlap')} must be at least 1 and smaller than {option('chunk')} ({chunk}), got {overlap}")
    step = chunk - overlap
    return [(start, min(start + chunk, count)) for start in range(0, count - overlap, step)]


def subset(prepared: "PreparedInputs", frames) -> "PreparedInputs":
    """The prepared inputs of ``frames`` (a slice or a list of indices), in that order."""
    index = list(range(len(prepared)))[frames] if isinstance(frames, slice) else [int(f) for f in frames]
    images = prepared.images[frames] if isinstance(frames, slice) else prepared.images[index]  # a slice stays a view
    return replace(prepared, images=images, transforms=[prepared.transforms[i] for i in index],
                   names=[prepared.names[i] for i in index], skipped=[])
