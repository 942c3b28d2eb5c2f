"""Exceptions that carry a one-line, user-facing message.

The CLI prints ``str(error)`` of a :class:`PacegeoError` on one line and exits non-zero, so every
message must say what went wrong and, where possible, what to do instead.
"""


class PacegeoError(Exception):
    """Base class for errors caused by user input or environment, not by a bug."""


class InputError(PacegeoError):
    """Bad user input: missing folders, unreadable images, invalid option values."""


class CheckpointError(PacegeoError):
    """A checkpoint that cannot be found, read or loaded onto the requested architecture."""
