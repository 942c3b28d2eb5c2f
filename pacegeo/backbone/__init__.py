"""A clean-room VGGT: DINOv2 patch embedding, alternating frame/global attention, camera and DPT heads.

Loads the official ``facebook/VGGT-1B`` state dict strictly (the track head, which pacegeo does not
build, is skipped by name) and reproduces its outputs.
"""

from typing import Any

from torch import nn

from pacegeo.backbone.aggregator import Aggregator
from pacegeo.backbone.camera_head import CameraHead
from pacegeo.backbone.config import (
    AggregatorConfig,
    CameraHeadConfig,
    DinoConfig,
    DPTHeadConfig,
    VGGTConfig,
    config_from_dict,
    config_to_dict,
    from_upstream_config,
    pacegeo_tiny,
    tiny,
    vggt_1b,
)
from pacegeo.backbone.dpt_head import DPTHead
from pacegeo.backbone.encoder import DinoViT, PatchEmbed
from pacegeo.backbone.model import VGGT


def build_from_upstream_config(config: dict[str, Any]) -> nn.Module:
    """Build a randomly initialised :class:`VGGT` from the official constructor arguments.

    ``config`` is the JSON format of the reference fixtures: keys ``aggregator``,
    ``patch_embed_vit`` (None or DINOv2 ViT arguments replacing the patch embedding),
    ``camera_head``, ``depth_head``, ``point_head``, ``track_head``. Its state dict uses the official
    key names, so the official weights load with ``load_state_dict(strict=True)`` (``track_head.*``
    keys excepted: see :func:`pacegeo.hub.load_backbone_state_dict`).
    """
    return VGGT(from_upstream_config(config))


__all__ = [
    "Aggregator",
    "AggregatorConfig",
    "CameraHead",
    "CameraHeadConfig",
    "DPTHead",
    "DPTHeadConfig",
    "DinoConfig",
    "DinoViT",
    "PatchEmbed",
    "VGGT",
    "VGGTConfig",
    "build_from_upstream_config",
    "config_from_dict",
    "config_to_dict",
    "from_upstream_config",
    "pacegeo_tiny",
    "tiny",
    "vggt_1b",
]
