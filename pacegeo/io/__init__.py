"""Input and output: reading and preprocessing images.

Re-exports the public names of :mod:`pacegeo.io.images` (its ``__all__``).
"""

from pacegeo.io.images import *  # noqa: F403
from pacegeo.io.images import __all__  # noqa: F401
