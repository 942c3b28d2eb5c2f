"""Progress bars on stderr (tqdm) for long work: reading frames, inference stages, exports, chunks."""

from __future__ import annotations

import sys
from collections.abc import Iterable

__all__ = ["progress_bar", "progress_enabled"]


def progress_bar(iterable: Iterable | None, enabled: bool, **kwargs):
    """A tqdm bar over ``iterable`` on stderr, or a silent one when not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


def progress_enabled(progress: bool | None) -> bool:
    """``progress`` as given, or (None) whether stderr is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)
