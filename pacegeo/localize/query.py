"""Localizing query images in a map: retrieve, reconstruct with the retrieved frames, fit, place."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from pacegeo.errors import CheckpointError, InputError
from pacegeo.geometry.transforms import invert_se3
from pacegeo.localize.align import Sim3Fit, fit_sim3, localization_confidence, plain
from pacegeo.localize.build import DEFAULT_MAP_KEEP, median_depths
from pacegeo.localize.extractors import vpr_extractor
from pacegeo.localize.store import MapStore, load_map
from pacegeo.options import check_count, check_keep, check_seed
from pacegeo.progress import progress_bar, progress_enabled

if TYPE_CHECKING:  # pragma: no cover
    from pacegeo.io.inputs import PreparedInputs
    from pacegeo.pipeline import Pipeline
    from pacegeo.vpr.extract import DescriptorExtractor

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 4

__all__ = ["DEFAULT_TOP_K", "Localization", "localize"]


@dataclass(frozen=True, eq=False)
class Localization:
    """One query placed in a map.

    Attributes:
        name: the query's name.
        cam_to_world: ``[4, 4]`` OpenCV camera-to-world pose of the query in the map frame.
        retrieved: names of the map frames reconstructed with the query, best match first.
        scores: their retrieval scores (cosine similarity of the descriptors).
        confidence: :func:`localization_confidence`, in ``[0, 1]``.
        retrieval_cam_to_world: ``[4, 4]`` pose of the top-1 map frame (retrieval-only estimate).
        intrinsics: ``[3, 3]`` predicted query intrinsics at the model input resolution.
        fit: the similarity from the joint reconstruction to the map frame.
        retrieved_indices: row indices of the retrieved map frames.
    """

    name: str
    cam_to_world: np.ndarray
    retrieved: tuple[str, ...]
    scores: tuple[float, ...]
    confidence: float
    retrieval_cam_to_world: np.ndarray
    intrinsics: np.ndarray
    fit: Sim3Fit
    retrieved_indices: tuple[int, ...] = ()

    @property
    def position(self) -> np.ndarray:
        """``[3]`` camera centre in map coordinates."""
        return self.cam_to_world[:3, 3].copy()

    @property
    def retrieval_position(self) -> np.ndarray:
        """``[3]`` centre of the top-1 map frame."""
        return self.retrieval_cam_to_world[:3, 3].copy()

    def to_dict(self) -> dict:
        """JSON-friendly form (non-finite numbers become None)."""
        return {
            "name": self.name,
            "position": plain(self.position),
            "cam_to_world": plain(self.cam_to_world),
            "confidence": float(self.confidence),
            "retrieved": [
                {"name": n, "score": plain(s), "index": int(i)}
                for n, s, i in zip(self.retrieved, self.scores, self.retrieved_indices)
            ],
            "retrieval_position": plain(self.retrieval_position),
            "retrieval_cam_to_world": plain(self.retrieval_cam_to_world),
            "intrinsics_model": plain(self.intrinsics),
            "fit": self.fit.to_dict(),
        }


def _map_transform(store: MapStore, index: int):
    from pacegeo.io.images import ImageTransform

    h, w = store.image_hw
    x0, y0, x1, y1 = (int(v) for v in store.content_box[index])
    return ImageTransform(
        source=store.names[index],
        path=None,
        original_hw=(y1 - y0, x1 - x0),
        resized_hw=(y1 - y0, x1 - x0),
        final_hw=(h, w),
        scale_x=1.0,
        scale_y=1.0,
        offset_x=x0,
        offset_y=y0,
    )


def _joint_inputs(store: MapStore, rows: np.ndarray, queries: "PreparedInputs", q: int) -> "PreparedInputs":
    """``[map frames rows..., query q]`` as one :class:`PreparedInputs` (padded to a common shape if needed)."""
    from pacegeo.io.images import pad_to_common_shape
    from pacegeo.io.inputs import PreparedInputs, unique_names

    images = list(store.image_tensors(rows)) + [queries.images[q]]
    transforms = [_map_transform(store, int(i)) for i in rows] + [queries.transforms[q]]
    images, transforms = pad_to_common_shape(images, transforms)
    names = unique_names([store.names[int(i)] for i in rows] + [queries.names[q]])
    return PreparedInputs(
        images=torch.stack(images),
        transforms=list(transforms),
        names=names,
        source=f"query {queries.names[q]} with {len(rows)} map frames",
        mode=queries.mode,
        target_size=queries.target_size,
    )


def _map_descriptors(pipeline: "Pipeline", store: MapStore) -> tuple[MapStore, "DescriptorExtractor"]:
    """The map (with descriptors recomputed if the head changed) and the extractor for its queries."""
    try:
        extractor, source, identity = vpr_extractor(pipeline, store.vpr)
    except (CheckpointError, InputError) as err:
        logger.warning("the map's VPR head %s is not available (%s); using the training-free GeM head", store.vpr, err)
        extractor, source, identity = vpr_extractor(pipeline, "gem")
    if identity != store.vpr_identity:
        logger.warning(
            "the map's descriptors come from VPR head %s, now %s is loaded; describing the %d map images again",
            store.vpr_identity, identity, len(store),
        )
        desc = extractor.describe(store.image_tensors(np.arange(len(store))), keep=store.keep).numpy().astype(np.float32)
        store = replace(store, descriptors=desc, vpr=source, vpr_identity=identity)
    return store, extractor


def localize(
    pipeline: "Pipeline",
    store: "MapStore | str | os.PathLike",
    query_images,
    top_k: int = DEFAULT_TOP_K,
    keep: float = DEFAULT_MAP_KEEP,
    seed: int = 0,
    progress: bool | None = None,
) -> list[Localization]:
    """Place each query image in the map (see the module docstring for the method).

    Args:
        pipeline: a loaded pipeline running the map's backbone (checked by fingerprint).
        store: a :class:`MapStore` or a map file.
        query_images: anything :func:`pacegeo.pipeline.prepare_inputs` accepts; preprocessed like
            the map images.
        top_k: map frames retrieved and reconstructed with each query (capped at the map size).
        keep: fraction of patch tokens kept, for the query descriptors and the joint reconstructions.
        seed: seed of any randomness in the pruned forward passes.

    Returns:
        one :class:`Localization` per readable query, in input order.

    Raises:
        InputError: not a map, a map of another model, bad options or unreadable queries.
    """
    from pacegeo.io.inputs import prepare_inputs

    store = load_map(store)
    keep = check_keep(keep)
    seed = check_seed(seed)
    top_k = check_count(top_k, "top_k")
    store.check_model(pipeline)
    store, extractor = _map_descriptors(pipeline, store)
    queries = prepare_inputs(query_images, store.preprocess_mode, store.target_size, progress=progress)
    query_desc = extractor.describe(queries.images, keep=keep).numpy().astype(np.float32)
    k = min(top_k, len(store))
    scores, ids = store.index.search(query_desc, k)

    results = []
    for q in progress_bar(range(len(queries)), progress_enabled(progress), desc="localizing", unit="query"):
        valid = ids[q] >= 0
        rows, row_scores = ids[q][valid], scores[q][valid]
        rec = pipeline.reconstruct(_joint_inputs(store, rows, queries, q), keep=keep, seed=seed)
        pred = invert_se3(rec.extrinsics)
        medians = median_depths(rec)
        fit = fit_sim3(pred[:-1], store.cam_to_world[rows], medians[:-1], store.depth_median[rows])
        pose = fit.apply_c2w(pred[-1:])[0]
        confidence = localization_confidence(float(row_scores[0]), fit)
        logger.info(
            "%s: top-1 %s (%.3f), %s fit on %d frames, residual %.3g, rotation residual %.2f deg, confidence %.3f",
            queries.names[q], store.names[int(rows[0])], row_scores[0], fit.method, fit.frames, fit.residual,
            fit.rotation_residual_deg, confidence,
        )
        results.append(
            Localization(
                name=queries.names[q],
                cam_to_world=pose,
                retrieved=tuple(store.names[int(i)] for i in rows),
                scores=tuple(float(s) for s in row_scores),
                confidence=confidence,
                retrieval_cam_to_world=store.cam_to_world[int(rows[0])].copy(),
                intrinsics=rec.intrinsics[-1].astype(np.float64),
                fit=fit,
                retrieved_indices=tuple(int(i) for i in rows),
            )
        )
    return results
