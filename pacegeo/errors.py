"""Exceptions that carry a one-line, user-facing message.

The CLI prints a :class:`PacegeoError` on one line and exits non-zero, so every message must say
what went wrong and, where possible, what to do instead.

A message that names an option writes it with :func:`option`: the Python API then shows the
argument (``overwrite=True``), the command line the flag (``--overwrite``), from one table
(:data:`OPTIONS`), so neither speaks the other's language.
"""

import re

#: Option spellings: name -> (Python API, command line).
OPTIONS: dict[str, tuple[str, str]] = {
    "overwrite": ("overwrite=True", "--overwrite"),
    "keep": ("keep", "--keep"),
    "seed": ("seed", "--seed"),
    "frames": ("frames", "--frames"),
    "stride": ("stride", "--stride"),
    "frames_or_stride": ("frames or stride", "--frames/--stride"),
    "max_points": ("max_points", "--max-points"),
    "conf": ("conf_threshold", "--conf"),
    "conf_percentile": ("conf_percentile", "--conf-percentile"),
    "conf_percentile_50": ("conf_percentile=50", "--conf-percentile 50"),
    "model": ("model", "--model"),
    "pruner": ("pruner", "--pruner"),
    "pruner_training_free": ("pruner='training-free'", "--pruner training-free"),
    "vpr_gem": ("vpr='gem'", "--vpr gem"),
    "device": ("device", "--device"),
    "device_cpu": ("device='cpu'", "--device cpu"),
    "dtype": ("dtype", "--dtype"),
    "fps": ("fps", "--fps"),
    "target_size": ("target_size", "--target-size"),
    "top_k": ("top_k", "--top-k"),
    "chunk": ("chunk", "--chunk"),
    "overlap": ("overlap", "--overlap"),
    "work_dir": ("work_dir", "--work-dir"),
    "loops": ("loops=True", "--loops"),
    "global_merge": ("global_merge", "--global-merge"),
    "encoder_layer": ("encoder_layer", "--encoder-layer"),
    "scenes": ("num_scenes", "--scenes"),
    "size": ("width, height", "--size"),
}

_MARK = re.compile("\x1e([a-z_0-9]+)\x1f")


def option(name: str) -> str:
    """A placeholder for option ``name`` inside an error message (see the module docstring)."""
    if name not in OPTIONS:
        raise KeyError(f"unknown option {name!r}")
    return f"\x1e{name}\x1f"


def render(message: str, cli: bool = False) -> str:
    """``message`` with its option placeholders spelt for the API (default) or the command line."""
    return _MARK.sub(lambda m: OPTIONS[m.group(1)][1 if cli else 0], message)


# Messages of allocation failures that reach Python as other exceptions: PyTorch's CPU allocator,
# memory maps, shared libraries that cannot be mapped, oneDNN primitives that cannot get memory.
_MEMORY_TEXTS = (
    "cannot allocate memory", "can't allocate memory", "out of memory", "failed to map segment",
    "could not create a primitive",
)


def is_memory_error(err: BaseException) -> bool:
    """Whether ``err`` means an allocation failed (Python's MemoryError, PyTorch's allocators, a
    memory map or a shared library that could not be mapped)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return any(s in text for s in _MEMORY_TEXTS)


class PacegeoError(Exception):
    """Base class for errors caused by user input or environment, not by a bug."""

    def __str__(self) -> str:
        return render(super().__str__())

    def cli_message(self) -> str:
        """The message with options spelt as command-line flags."""
        return render(super().__str__(), cli=True)


class InputError(PacegeoError):
    """Bad user input: missing folders, unreadable images, invalid option values."""


class CheckpointError(PacegeoError):
    """A checkpoint that cannot be found, read or loaded onto the requested architecture."""


class OutputError(InputError):
    """An output that cannot or must not be written (collides with an input, unwritable, disk full)."""
