"""Optional dependencies: imported where a feature needs them, with one line saying how to get them.

``pip install pacegeo`` gives reconstruction from folders of images; the extras add the rest
(``./install.sh`` installs them all):

========  =================  ==================================================================
extra     package            needed for
========  =================  ==================================================================
synth     open3d             SynthRooms rendering (``pacegeo synth``, training data, evaluation
                             scenes) and point-cloud registration in evaluation metrics
vpr       faiss-cpu          place-recognition indexes (``pacegeo map``, ``pacegeo localize``)
video     av                 video input
viewer    viser              the interactive viewer (``pacegeo view``)
========  =================  ==================================================================
"""

import importlib
from types import ModuleType

from pacegeo.errors import InputError, is_memory_error

#: Module -> (PyPI package, extra).
EXTRAS = {
    "open3d": ("open3d", "synth"),
    "faiss": ("faiss-cpu", "vpr"),
    "av": ("av", "video"),
    "viser": ("viser", "viewer"),
}

__all__ = ["EXTRAS", "require"]


def require(module: str, feature: str) -> ModuleType:
    """Import optional ``module`` for ``feature``; :class:`InputError` naming the install when missing."""
    package, extra = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if is_memory_error(err):  # installed, but its libraries could not be mapped
            raise MemoryError(f"out of memory while loading {package}") from None
        raise InputError(
            f"{feature} needs the optional package {package}: pip install 'pacegeo[{extra}]' (or pip install {package})"
        ) from None
