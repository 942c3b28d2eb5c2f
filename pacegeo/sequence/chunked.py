"""Reconstruct a long sequence in overlapping chunks and stitch them into one reconstruction.

Each chunk is one forward pass of the pipeline (its model, pruner, keep and precision), so memory
is bounded by the chunk, not the sequence. The first chunk defines the world frame (its first
camera, as in a single pass). Every later chunk is mapped into it by a Sim(3) fitted robustly on
the point maps both chunks predict for their shared frames (:func:`fit_points_sim3`, weighted by
the smaller of the two depth confidences). A frame keeps the prediction of the first chunk that
contains it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from pacegeo.errors import InputError, PacegeoError, option
from pacegeo.geometry.transforms import invert_se3
from pacegeo.progress import progress_bar, progress_enabled
from pacegeo.sequence.align import PointFit, fit_cameras_sim3, fit_points_sim3
from pacegeo.precision import dtype_name
from pacegeo.sequence.spans import chunk_spans, subset
from pacegeo.sequence.store import ChunkStore, process_layout, run_key

if TYPE_CHECKING:  # pragma: no cover
    from pacegeo.io.inputs import PreparedInputs
    from pacegeo.pipeline import Pipeline
    from pacegeo.reconstruction import Reconstruction

logger = logging.getLogger(__name__)

__all__ = ["IDENTITY", "empty_frames", "reconstruct_in_chunks"]

IDENTITY = PointFit(1.0, np.eye(3), np.zeros(3), 0, 1.0, 0.0, True)

#: Per-frame arrays of a Reconstruction, stitched frame by frame.
_FRAME_ARRAYS = ("depth", "depth_conf", "world_points", "world_points_conf", "points_from_depth", "colors",
                 "valid_mask", "extrinsics", "intrinsics", "intrinsics_original", "image_size")


def _placed(rec: "Reconstruction", frames: np.ndarray, fit: PointFit) -> dict[str, np.ndarray]:
    """The arrays of ``rec``'s ``frames`` mapped by ``fit`` into the placed frame (the first chunk's
    unchanged, bit for bit)."""
    placed = {name: getattr(rec, name)[frames] for name in _FRAME_ARRAYS}
    if fit is not IDENTITY:
        placed.update(fit.move_frames(rec, frames))
    return placed


def empty_frames(first: "Reconstruction", count: int) -> dict[str, np.ndarray]:
    """Empty per-frame arrays for ``count`` frames shaped like ``first``'s."""
    return {name: np.zeros((count,) + getattr(first, name).shape[1:], getattr(first, name).dtype) for name in _FRAME_ARRAYS}


def _align(rec: "Reconstruction", arrays: dict, start: int, placed: int, index: int, end: int, seed: int,
           align: str) -> PointFit:
    """The Sim(3) of a chunk starting at ``start`` onto the frames ``[start, placed)`` already placed."""
    shared = np.arange(start, placed)
    local = shared - start
    if align == "cameras":
        fit = fit_cameras_sim3(invert_se3(rec.extrinsics[local].astype(np.float64)),
                               invert_se3(arrays["extrinsics"][shared].astype(np.float64)))
        what = "usable camera centres"
    else:
        weights = np.minimum(rec.depth_conf[local], arrays["depth_conf"][shared])
        weights = np.where(rec.valid_mask[local] & arrays["valid_mask"][shared], weights, 0.0)
        fit = fit_points_sim3(rec.points_from_depth[local], arrays["points_from_depth"][shared], weights, seed=seed)
        what = "usable point pairs"
    if not fit.ok:
        raise InputError(
            f"chunk {index + 1} (frames {start}-{end - 1}) cannot be aligned to the frames before it: its "
            f"{len(shared)} shared frame(s) give {fit.points} {what}; use a larger {option('overlap')}"
        )
    logger.info("chunk %d (frames %d-%d) aligned on %d shared frames: scale %.4g, inliers %.0f%%, residual %.3g",
                index + 1, start, end - 1, len(shared), fit.scale, 100 * fit.inliers, fit.residual)
    return fit


def reconstruct_in_chunks(
    pipeline: "Pipeline",
    prepared: "PreparedInputs",
    chunk: int,
    overlap: int | None = None,
    keep: float = 1.0,
    seed: int = 0,
    progress: bool | None = None,
    check_memory: bool = True,
    align: str = "points",
    work_dir: str | os.PathLike | None = None,
    loop_descriptors: np.ndarray | None = None,
) -> "Reconstruction | None":
    """One :class:`Reconstruction` of all frames of ``prepared``, made chunk by chunk.

    Args:
        chunk: frames per forward pass (see :func:`chunk_spans`); a sequence no longer than
            ``chunk`` is reconstructed in one pass, exactly as without chunking.
        overlap: frames consecutive chunks share (default ``max(3, chunk // 4)``).
        keep, seed, check_memory: as :meth:`Pipeline.reconstruct`, for every chunk.
        align: ``"points"`` (default: :func:`fit_points_sim3` on the shared frames' point maps) or
            ``"cameras"`` (:func:`fit_cameras_sim3` on their camera centres only; for comparison).
        work_dir: keep finished chunks here (:class:`ChunkStore`): a failed or killed run resumes
            from them when rerun, and the processes of ``accelerate launch`` share their chunks
            through it (required then). Cleared after a successful stitch.
        loop_descriptors: ``[S, D]`` place-recognition descriptors of the frames: close loops
            after stitching (:func:`pacegeo.sequence.loops.close_loops`; each verified candidate
            is listed in ``pruning["loops"]``). None: no loop closure.

    Under ``accelerate launch`` (or ``torchrun``) with ``N`` processes, process ``r`` reconstructs
    chunks ``r, r + N, ...``; process 0 then stitches all of them and returns the result, which is
    the single-process result; the other processes return None.

    The result's ``pruning["chunks"]`` lists each chunk's frames and its alignment
    (:meth:`PointFit.to_dict`); timings are summed over chunks and the peak memory is the largest.
    """
    if align not in ("points", "cameras"):
        raise ValueError(f"align must be 'points' or 'cameras', got {align!r}")
    count = len(prepared)
    spans = chunk_spans(count, chunk, overlap)
    rank, world = process_layout()
    if len(spans) == 1 and world == 1:
        return pipeline.reconstruct(prepared, keep=keep, seed=seed, progress=progress, check_memory=check_memory)
    if world > 1 and work_dir is None:
        raise InputError(f"a run spread over {world} processes needs a {option('work_dir')} that all of them share")
    store = ChunkStore(work_dir, run_key(pipeline, prepared, spans, keep, seed)) if work_dir is not None else None
    show = progress_enabled(progress)

    def run(index: int) -> "Reconstruction":
        start, end = spans[index]
        try:
            rec = pipeline.reconstruct(subset(prepared, slice(start, end)), keep=keep, seed=seed, progress=False,
                                       check_memory=check_memory)
        except Exception as err:
            reason = str(err) if isinstance(err, PacegeoError) else f"{type(err).__name__}: {err}"
            message = f"chunk {index + 1} of {len(spans)} (frames {start}-{end - 1}) failed: {reason}"
            if store is not None:  # the other processes learn of it from the file
                store.fail(index, message)
                message += f"; finished chunks are kept in {store.path}: rerun the same command to resume"
            if not isinstance(err, PacegeoError):
                raise
            raise InputError(message) from None
        if store is not None:
            store.save(index, rec)
        return rec

    if store is not None:  # every process reconstructs its share, then process 0 stitches them
        mine = [i for i in range(len(spans)) if i % world == rank and not store.has(i)]
        if len(mine) < len([i for i in range(len(spans)) if i % world == rank]):
            logger.info("resuming: %d finished chunk(s) found in %s", len(spans) - len(mine), store.path)
        for index in progress_bar(mine, show, desc=f"chunks (process {rank + 1}/{world})" if world > 1 else "chunks", unit="chunk"):
            run(index)
        if rank != 0:
            return None
        failure = store.wait(list(range(len(spans))))
        if failure:
            raise InputError(f"{failure}; finished chunks are kept in {store.path}: rerun the same command to resume")
        results = (store.load(i) for i in range(len(spans)))
    else:
        results = (run(i) for i in progress_bar(range(len(spans)), show, desc="chunks", unit="chunk"))
    rec = _stitch(pipeline, prepared, spans, results, seed, align)
    if loop_descriptors is not None and len(spans) > 2:
        from pacegeo.sequence.loops import close_loops

        rec.pruning["loops"] = close_loops(pipeline, prepared, rec, spans, loop_descriptors, keep, seed)
    if store is not None:
        store.clear()
    return rec


def _stitch(pipeline, prepared, spans, results, seed: int, align: str) -> "Reconstruction":
    """The chunk reconstructions ``results`` (in span order) placed into the first one's frame."""
    count = len(prepared)
    arrays: dict[str, np.ndarray] = {}
    kept: list[int] = []
    chunks: list[dict] = []
    timings: dict[str, float] = {}
    first = None
    placed = 0
    for index, ((start, end), rec) in enumerate(zip(spans, results)):
        if first is None:
            first, arrays, fit = rec, empty_frames(rec, count), IDENTITY
        else:
            fit = _align(rec, arrays, start, placed, index, end, seed, align)
        new = np.arange(max(start, placed), end)
        for name, values in _placed(rec, new - start, fit).items():
            arrays[name][new] = values
        kept += rec.kept_per_frame[new[0] - start:]
        for key, seconds in rec.timings.items():
            timings[key] = timings.get(key, 0.0) + seconds if key != "load" else seconds
        first.peak_memory = max(first.peak_memory, rec.peak_memory)
        first.memory_estimate = max(first.memory_estimate, rec.memory_estimate)
        chunks.append({"start": start, "end": end, "fit": fit.to_dict()})
        placed = end
    pruning = {k: v for k, v in first.pruning.items() if k in ("mode", "keep", "patch_tokens_per_frame", "grid_hw")}
    pruning.update(frames=count, kept_per_frame=kept, chunks=chunks)
    timings["preprocess"] = prepared.seconds
    return replace(first, **arrays, frame_names=list(prepared.names), pruning=pruning, timings=timings,
                   skipped=list(prepared.skipped), files_written=[], keep=first.keep,
                   model_name=pipeline.model.name if pipeline.model is not None else pipeline.config.name,
                   pruner_mode=pipeline.pruner_mode, device=str(pipeline.device), dtype=dtype_name(pipeline.amp_dtype),
                   preprocess_mode=prepared.mode, input_paths=[*prepared.paths, *pipeline.weight_paths])
