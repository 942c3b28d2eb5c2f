"""Checks of the options every entry point shares (Python API and command line alike).

Each check returns the value in canonical form or raises :class:`pacegeo.errors.InputError` with
one line naming the option through :func:`pacegeo.errors.option`, so the API's message names the
argument and the command line's the flag.
"""

import math

import numpy as np

from pacegeo.errors import InputError, option

#: Seeds are integers in ``[0, MAX_SEED]`` (what numpy's and torch's generators both accept).
MAX_SEED = 2**63 - 1

__all__ = ["MAX_SEED", "check_count", "check_keep", "check_positive_number", "check_seed"]


def _is_integer(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_keep(keep: object) -> float:
    """``keep`` as a float in ``(0, 1]``."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.floating, np.integer)):
        raise InputError(f"{option('keep')} must be a number in (0, 1], got {keep!r}")
    value = float(keep)
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise InputError(f"{option('keep')} must be in (0, 1] (the fraction of patch tokens each frame keeps), got {keep!r}")
    return value


def check_count(value: object, name: str, minimum: int = 1, maximum: int | None = None) -> int | None:
    """``value`` as an int in ``[minimum, maximum]`` (None passes through). ``name`` is an
    :data:`pacegeo.errors.OPTIONS` key."""
    if value is None:
        return None
    if not _is_integer(value) or int(value) < minimum or (maximum is not None and int(value) > maximum):
        if maximum is not None:
            wanted = f"an integer from {minimum} to {maximum}"
        else:
            wanted = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise InputError(f"{option(name)} must be {wanted}, got {value!r}")
    return int(value)


def check_seed(seed: object, span: int = 1) -> int:
    """``seed`` as an int in ``[0, MAX_SEED]``; ``span`` seeds from it (``seed .. seed + span - 1``)
    must all be valid."""
    if not _is_integer(seed) or not 0 <= int(seed) <= MAX_SEED - (span - 1):
        top = MAX_SEED - (span - 1)
        raise InputError(f"{option('seed')} must be an integer from 0 to {top}, got {seed!r}")
    return int(seed)


def check_positive_number(value: object, name: str, allow_none: bool = True) -> float | None:
    """``value`` as a finite float > 0 (None passes through when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{option(name)} must be a positive number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise InputError(f"{option(name)} must be a positive number, got {value!r}")
    return number
