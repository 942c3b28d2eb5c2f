"""pacegeo: fast feed-forward 3D reconstruction by pruning tokens of a frozen VGGT-style model."""

__version__ = "0.1.0"

__all__ = ["__version__"]
