"""pacegeo: fast feed-forward 3D reconstruction by pruning tokens of a frozen VGGT-style model."""

__version__ = "0.1.0"

__all__ = ["Pipeline", "Reconstruction", "__version__"]

# Heavy classes are imported on first access, so `import pacegeo` stays light.
_LAZY = {"Pipeline": "pacegeo.pipeline", "Reconstruction": "pacegeo.pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pacegeo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
