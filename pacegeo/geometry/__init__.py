"""Geometry: camera models and pose encodings in torch (:mod:`pacegeo.geometry.camera`), and the
one module of rigid and similarity transforms (:mod:`pacegeo.geometry.transforms`)."""

from pacegeo.geometry.camera import *  # noqa: F403
from pacegeo.geometry.camera import __all__ as _camera_all
from pacegeo.geometry.transforms import *  # noqa: F403
from pacegeo.geometry.transforms import __all__ as _transforms_all

__all__ = sorted(set(_camera_all) | set(_transforms_all))
