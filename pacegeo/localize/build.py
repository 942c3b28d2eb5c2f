"""Building a map: reconstruct a sequence (in one pass or in aligned chunks) and describe its frames."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pacegeo.errors import InputError
from pacegeo.geometry.transforms import invert_se3
from pacegeo.localize.align import Sim3Fit, fit_sim3
from pacegeo.localize.extractors import vpr_extractor
from pacegeo.localize.store import MapStore
from pacegeo.options import check_count, check_keep, check_seed
from pacegeo.progress import progress_bar, progress_enabled

if TYPE_CHECKING:  # pragma: no cover
    from pacegeo.io.inputs import PreparedInputs
    from pacegeo.pipeline import Pipeline

logger = logging.getLogger(__name__)

DEFAULT_MAP_KEEP = 0.5

__all__ = ["DEFAULT_MAP_KEEP", "build_map", "chunk_spans", "median_depths"]


def chunk_spans(count: int, chunk: int | None, overlap: int | None = None) -> list[tuple[int, int]]:
    """``[start, end)`` frame ranges of a chunked reconstruction of ``count`` frames.

    Consecutive chunks share ``overlap`` frames (default ``max(3, chunk // 4)``, capped at
    ``chunk - 1``); ``chunk=None`` or ``chunk >= count`` gives one span.
    """
    if chunk is None or chunk >= count:
        return [(0, count)]
    if chunk < 2:
        raise InputError(f"chunk must be at least 2 frames, got {chunk}")
    if overlap is None:
        overlap = min(max(3, chunk // 4), chunk - 1)
    if not 1 <= overlap < chunk:
        raise InputError(f"overlap must be at least 1 and smaller than chunk ({chunk}), got {overlap}")
    step = chunk - overlap
    return [(start, min(start + chunk, count)) for start in range(0, count - overlap, step)]


def median_depths(rec) -> np.ndarray:
    """``[S]`` median predicted depth of each frame over valid, finite, positive pixels (NaN if none)."""
    out = np.full(len(rec), np.nan)
    for i in range(len(rec)):
        d = rec.depth[i][rec.valid_mask[i]]
        d = d[np.isfinite(d) & (d > 0)]
        if d.size:
            out[i] = float(np.median(d))
    return out


def _subset(prepared: "PreparedInputs", start: int, end: int) -> "PreparedInputs":
    return replace(
        prepared,
        images=prepared.images[start:end],
        transforms=list(prepared.transforms[start:end]),
        names=list(prepared.names[start:end]),
        skipped=[],
    )


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
        chunk: reconstruct at most ``chunk`` frames at a time (None: all at once); chunks after the
            first are aligned to the first by :func:`fit_sim3` on their ``overlap`` shared frames.
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
    chunk = check_count(chunk, "chunk")
    overlap = check_count(overlap, "overlap")
    prepared = frames if isinstance(frames, PreparedInputs) else pipeline.prepare(frames, progress=progress)
    count = len(prepared)
    spans = chunk_spans(count, chunk, overlap)
    used_overlap = 0 if len(spans) == 1 else spans[0][1] - spans[1][0]

    extractor, vpr_source, vpr_identity = vpr_extractor(pipeline, vpr)
    descriptors = extractor.describe(prepared.images, keep=keep).numpy().astype(np.float32)

    c2w = np.full((count, 4, 4), np.nan)
    intrinsics = np.full((count, 3, 3), np.nan)
    depth_median = np.full(count, np.nan)
    placed = 0  # frames [0, placed) are in the map frame
    show = progress_enabled(progress) and len(spans) > 1
    for start, end in progress_bar(spans, show, desc="mapping", unit="chunk"):
        rec = pipeline.reconstruct(_subset(prepared, start, end), keep=keep, seed=seed)
        pred = invert_se3(rec.extrinsics)
        medians = median_depths(rec)
        if start == 0:  # the map frame is the first frame's camera frame, exactly
            rotation0 = pred[0, :3, :3].T
            fit = Sim3Fit(1.0, rotation0, -rotation0 @ pred[0, :3, 3], "umeyama", end - start)
        else:
            shared = np.arange(start, placed)
            fit = fit_sim3(pred[: len(shared)], c2w[shared], medians[: len(shared)], depth_median[shared])
            if fit.method == "failed":
                raise InputError(f"frames {start}-{end - 1} gave non-finite cameras; the chunk cannot be aligned")
            logger.info(
                "chunk %d-%d aligned on %d shared frames (%s, scale %.4g, residual %.3g, rotation residual %.2f deg)",
                start, end - 1, len(shared), fit.method, fit.scale, fit.residual, fit.rotation_residual_deg,
            )
        new = np.arange(max(start, placed), end)
        c2w[new] = fit.apply_c2w(pred[new - start])
        intrinsics[new] = rec.intrinsics[new - start]
        depth_median[new] = fit.scale * medians[new - start]
        placed = end

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
