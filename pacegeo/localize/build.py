"""Building a map: reconstruct a sequence (in one pass or in aligned chunks) and describe its frames."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pacegeo.errors import InputError
from pacegeo.geometry.transforms import invert_se3
from pacegeo.localize.extractors import vpr_extractor
from pacegeo.localize.store import MapStore
from pacegeo.options import check_keep, check_seed
from pacegeo.sequence import check_chunking, chunk_spans, reconstruct_in_chunks

if TYPE_CHECKING:  # pragma: no cover
    from pacegeo.pipeline import Pipeline

logger = logging.getLogger(__name__)

DEFAULT_MAP_KEEP = 0.5

__all__ = ["DEFAULT_MAP_KEEP", "build_map", "chunk_spans", "median_depths"]


def median_depths(rec) -> np.ndarray:
    """``[S]`` median predicted depth of each frame over valid, finite, positive pixels (NaN if none)."""
    out = np.full(len(rec), np.nan)
    for i in range(len(rec)):
        d = rec.depth[i][rec.valid_mask[i]]
        d = d[np.isfinite(d) & (d > 0)]
        if d.size:
            out[i] = float(np.median(d))
    return out


def _model_label(pipeline: "Pipeline") -> str:
    if pipeline.model is None:
        return pipeline.config.name
    name = str(pipeline.model.name)
    candidate = Path(name).expanduser()
    return str(candidate.resolve()) if candidate.exists() else name


def build_map(
    pipeline: "Pipeline",
    frames,
    keep: float = DEFAULT_MAP_KEEP,
    chunk: int | None = None,
    overlap: int | None = None,
    vpr: str | os.PathLike = "auto",
    seed: int = 0,
    progress: bool | None = None,
) -> MapStore:
    """Reconstruct and describe a map sequence.

    Args:
        pipeline: a loaded :class:`pacegeo.pipeline.Pipeline`.
        frames: anything :meth:`Pipeline.reconstruct` accepts (folder, video, paths, arrays,
            :class:`PreparedInputs`), in sequence order.
        keep: fraction of patch tokens kept, for the descriptors and the reconstruction.
        chunk: reconstruct at most ``chunk`` frames at a time (None: all at once), stitched by
            :func:`pacegeo.sequence.reconstruct_in_chunks` (chunks aligned on the point maps of
            their ``overlap`` shared frames).
        overlap: frames shared by consecutive chunks (default ``max(3, chunk // 4)``).
        vpr: descriptor head (:func:`vpr_extractor`).
        seed: seed of any randomness in the pruned forward passes.

    Returns:
        a :class:`MapStore` (poses in the first map frame's camera frame).
    """
    from pacegeo.hub import backbone_fingerprint
    from pacegeo.io.inputs import PreparedInputs

    keep = check_keep(keep)
    seed = check_seed(seed)
    chunk, overlap = check_chunking(chunk, overlap)
    prepared = frames if isinstance(frames, PreparedInputs) else pipeline.prepare(frames, progress=progress)
    count = len(prepared)
    spans = chunk_spans(count, chunk, overlap)
    used_overlap = 0 if len(spans) == 1 else spans[0][1] - spans[1][0]

    extractor, vpr_source, vpr_identity = vpr_extractor(pipeline, vpr)
    descriptors = extractor.describe(prepared.images, keep=keep).numpy().astype(np.float32)

    rec = reconstruct_in_chunks(pipeline, prepared, chunk or count, overlap, keep, seed, progress)
    c2w = invert_se3(rec.extrinsics.astype(np.float64))
    c2w = np.einsum("ij,sjk->sik", invert_se3(c2w[0]), c2w)  # the map frame is the first camera's, exactly
    intrinsics = rec.intrinsics.astype(np.float64)
    depth_median = median_depths(rec)
    if not np.isfinite(c2w).all():
        raise InputError("the reconstruction gave non-finite cameras; the map cannot be built")

    images = (prepared.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    store = MapStore(
        descriptors=descriptors,
        names=tuple(prepared.names),
        cam_to_world=c2w,
        intrinsics=intrinsics,
        images=images,
        content_box=np.array([t.content_box for t in prepared.transforms], dtype=np.int64),
        original_hw=np.array([t.original_hw for t in prepared.transforms], dtype=np.int64),
        depth_median=depth_median,
        model=_model_label(pipeline),
        model_fingerprint=backbone_fingerprint(pipeline.backbone),
        target_size=int(prepared.target_size),
        preprocess_mode=str(prepared.mode),
        vpr=vpr_source,
        vpr_identity=vpr_identity,
        keep=keep,
        chunk=chunk if len(spans) > 1 else None,
        overlap=used_overlap,
        input_paths=tuple(prepared.paths) + tuple(pipeline.weight_paths),
    )
    logger.info("built a map of %d frames in %d reconstruction(s), descriptors %s", count, len(spans), vpr_identity)
    return store
