"""The descriptor extractor (VPR head on the backbone's patch encoder) of a pipeline, cached per pipeline."""

from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING

from pacegeo.errors import CheckpointError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from pacegeo.pipeline import Pipeline
    from pacegeo.vpr.extract import DescriptorExtractor

logger = logging.getLogger(__name__)

__all__ = ["vpr_extractor"]


_EXTRACTORS: "weakref.WeakKeyDictionary[Pipeline, dict]" = weakref.WeakKeyDictionary()


def _gem_extractor(pipeline: "Pipeline") -> tuple["DescriptorExtractor", str, str]:
    from pacegeo.backbone import DinoViT
    from pacegeo.vpr.extract import DescriptorExtractor
    from pacegeo.vpr.head import GeMConfig, GeMHead

    encoder = pipeline.backbone.aggregator.patch_embed
    dim = encoder.pos_embed.shape[-1] if isinstance(encoder, DinoViT) else encoder.proj.out_channels
    head = GeMHead(GeMConfig(in_dim=int(dim)))
    extractor = DescriptorExtractor(encoder, head).to(pipeline.device).eval()
    return extractor, "gem", f"gem(p={head.config.p:g})"


def _checkpoint_extractor(pipeline: "Pipeline", name: str) -> tuple["DescriptorExtractor", str, str]:
    from pacegeo.hub import checkpoints_dir
    from pacegeo.vpr.extract import file_sha256, load_vpr, read_vpr_metadata, resolve_vpr

    path = resolve_vpr(name)
    meta = read_vpr_metadata(path)
    extractor = load_vpr(path, backbone=pipeline.backbone, device=pipeline.device)
    in_dim = getattr(extractor.head.config, "in_dim", None)
    if in_dim is not None and int(in_dim) != int(extractor.embed_dim):
        raise CheckpointError(
            f"VPR head {path.name} expects {in_dim}-d features, the backbone {pipeline.config.name} gives {extractor.embed_dim}"
        )
    bundled = path.parent.resolve() == checkpoints_dir().resolve() and path.name == f"{path.stem}.safetensors"
    source = path.stem if bundled else str(path.resolve())
    return extractor.eval(), source, f"{meta['head']}:{path.name}:{file_sha256(path)[:12]}"


def vpr_extractor(pipeline: "Pipeline", vpr: str | os.PathLike = "auto") -> tuple["DescriptorExtractor", str, str]:
    """The descriptor extractor on ``pipeline``'s backbone, cached per pipeline.

    Args:
        vpr: ``"auto"`` (the bundled ``<backbone name>-vpr.safetensors`` when it loads on this
            backbone, else the training-free GeM head, with a logged notice), ``"gem"``, or a VPR
            checkpoint name or path (errors propagate).

    Returns:
        ``(extractor, source, identity)``: ``source`` is what to pass as ``vpr`` to get this head
        again (``"gem"``, a bundled name or an absolute path), ``identity`` names the head and the
        hash of its weights (``"gem(p=3)"``, ``"weighted_ot:<file>:<sha256 prefix>"``).
    """
    from pacegeo.hub import checkpoints_dir

    key = str(vpr)
    cache = _EXTRACTORS.setdefault(pipeline, {})
    if key in cache:
        return cache[key]
    if key == "gem":
        result = _gem_extractor(pipeline)
    elif key == "auto":
        bundled = checkpoints_dir() / f"{pipeline.config.name}-vpr.safetensors"
        if not bundled.is_file():
            logger.info("no bundled VPR head for %s; using the training-free GeM head", pipeline.config.name)
            result = _gem_extractor(pipeline)
        else:
            try:
                result = _checkpoint_extractor(pipeline, str(bundled))
            except (CheckpointError, InputError) as err:
                logger.warning("the bundled VPR head does not load on this backbone (%s); using the training-free GeM head", err)
                result = _gem_extractor(pipeline)
    else:
        result = _checkpoint_extractor(pipeline, key)
    cache[key] = result
    return result
