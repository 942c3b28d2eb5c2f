"""Recall@N of a retrieval and the ground-truth styles of VPR data sets.

Ground truth is a list with one entry per query: the database indices that count as correct.
It comes from one of

* **UTM coordinates in file names** (the VPR-datasets-downloader / VPR-methods-evaluation layout
  ``@UTM_east@UTM_north@zone@letter@lat@lon@...@.jpg``): every database image within
  ``radius`` metres (25 by default) of the query, via a KD-tree radius search
  (:func:`positives_from_utm`);
* **an explicit list per query** in a ``.npy`` object array: VPR-Bench's ``ground_truth_new.npy``
  with rows ``[query_index, [ref indices]]``, or a 1-D array of index lists as shipped with
  gsv-cities/SALAD validation sets (:func:`load_gt_file`);
* **index pairing** when neither exists: query ``i`` matches database ``i`` (optionally ``+-
  tolerance``) (:func:`positives_by_index`);
* **camera poses** (synthetic sets): database views within a distance and viewing-angle
  threshold (:func:`positives_from_poses`).

Recall@N (:func:`recall_at_n`) is the fraction of *all* queries with at least one correct
database image among the top N (queries without any positive stay in the denominator), as in
VPR-methods-evaluation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from pacegeo.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_NS = (1, 5, 10, 20)

__all__ = [
    "DEFAULT_NS",
    "load_gt_file",
    "positives_by_index",
    "positives_for_folders",
    "positives_from_poses",
    "positives_from_utm",
    "recall_at_n",
    "utm_from_name",
]


def utm_from_name(name: str | os.PathLike) -> tuple[float, float] | None:
    """``(east, north)`` from a ``@UTM_east@UTM_north@...`` file name, or None if it has none."""
    parts = Path(name).name.split("@")
    if len(parts) < 3:
        return None
    try:
        return float(parts[1]), float(parts[2])
    except ValueError:
        return None


def positives_from_utm(
    database: Sequence[str | os.PathLike], queries: Sequence[str | os.PathLike], radius: float = 25.0
) -> list[np.ndarray]:
    """Database indices within ``radius`` metres (UTM, from file names) of every query."""
    db = [utm_from_name(n) for n in database]
    qs = [utm_from_name(n) for n in queries]
    missing = [str(n) for n, u in zip(list(database) + list(queries), db + qs) if u is None]
    if missing:
        raise InputError(f"{len(missing)} file names carry no @UTM_east@UTM_north@ coordinates, e.g. {missing[0]}")
    tree = cKDTree(np.asarray(db, dtype=np.float64))
    hits = tree.query_ball_point(np.asarray(qs, dtype=np.float64), r=radius)
    return [np.asarray(sorted(h), dtype=np.int64) for h in hits]


def load_gt_file(path: str | os.PathLike, num_queries: int | None = None) -> list[np.ndarray]:
    """Positives per query from a ``.npy`` object array.

    Accepts VPR-Bench rows ``[query_index, [ref indices]]`` (shape ``[Q, 2]``; rows are placed by
    their query index) or a 1-D array whose entry ``q`` lists the positives of query ``q``. The
    file is a pickled object array, so only load files you trust.
    """
    try:
        gt = np.load(path, allow_pickle=True)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read ground-truth file {path}: {err}") from None
    if gt.ndim == 2 and gt.shape[1] == 2 and np.ndim(gt[0, 0]) == 0:
        q_idx = [int(q) for q in gt[:, 0]]
        size = max(q_idx) + 1 if num_queries is None else num_queries
        positives = [np.zeros(0, np.int64) for _ in range(size)]
        for q, refs in zip(q_idx, gt[:, 1]):
            if not 0 <= q < size:
                raise InputError(f"ground truth {path} names query {q}, but there are {size} queries")
            positives[q] = np.asarray(np.atleast_1d(refs), dtype=np.int64)
    elif gt.ndim == 1:
        positives = [np.asarray(np.atleast_1d(refs), dtype=np.int64) for refs in gt]
    else:
        raise InputError(f"ground truth {path} has shape {gt.shape}; expected [Q, 2] rows [q, refs] or [Q] lists")
    if num_queries is not None and len(positives) != num_queries:
        raise InputError(f"ground truth {path} covers {len(positives)} queries, but there are {num_queries}")
    return positives


def positives_by_index(num_queries: int, num_database: int, tolerance: int = 0) -> list[np.ndarray]:
    """Index pairing: query ``i`` matches database ``i - tolerance .. i + tolerance``."""
    if num_queries > num_database:
        raise InputError(f"index pairing needs at least as many database images ({num_database}) as queries ({num_queries})")
    return [np.arange(max(0, i - tolerance), min(num_database, i + tolerance + 1), dtype=np.int64) for i in range(num_queries)]


def positives_from_poses(
    database_poses: np.ndarray, query_poses: np.ndarray, max_distance: float = 0.5, max_angle_deg: float = 20.0
) -> list[np.ndarray]:
    """Database views of the same place as each query: camera centres within ``max_distance`` and
    relative rotation (geodesic angle) within ``max_angle_deg``.

    Args:
        database_poses: ``[M, 4, 4]`` camera-to-world.
        query_poses: ``[Q, 4, 4]`` camera-to-world.
    """
    db = np.asarray(database_poses, dtype=np.float64)
    qs = np.asarray(query_poses, dtype=np.float64)
    dist = np.linalg.norm(qs[:, None, :3, 3] - db[None, :, :3, 3], axis=-1)  # [Q, M]
    # trace(Rq^T Rd) = sum of element-wise products
    trace = np.einsum("qij,mij->qm", qs[:, :3, :3], db[:, :3, :3])
    angle = np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))
    ok = (dist <= max_distance) & (angle <= max_angle_deg)
    return [np.flatnonzero(row).astype(np.int64) for row in ok]


def positives_for_folders(
    database: Sequence[str | os.PathLike],
    queries: Sequence[str | os.PathLike],
    gt: str | os.PathLike | None = None,
    radius: float = 25.0,
) -> tuple[list[np.ndarray], str]:
    """Ground truth for two image lists: the ``gt`` file if given, else UTM names if all carry
    coordinates, else index pairing. Returns ``(positives, style)`` with style ``"file"``,
    ``"utm"`` or ``"index"``."""
    if gt is not None:
        return load_gt_file(gt, len(queries)), "file"
    if all(utm_from_name(n) is not None for n in list(database) + list(queries)):
        return positives_from_utm(database, queries, radius), "utm"
    logger.info("no ground-truth file and no UTM names: query i is taken to match database image i")
    return positives_by_index(len(queries), len(database)), "index"


def recall_at_n(
    predictions: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int] = DEFAULT_NS
) -> dict[int, float]:
    """Recall@N for every ``N`` in ``ns``.

    Args:
        predictions: ``[Q, k]`` database indices per query, best first (``-1`` = none).
        positives: ``Q`` arrays of correct database indices.
    Returns:
        ``{N: fraction of queries with a correct index among their first N predictions}``.
    """
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[0] != len(positives):
        raise InputError(f"predictions {predictions.shape} do not match {len(positives)} queries")
    if len(positives) == 0:
        raise InputError("recall needs at least one query")
    first_hit = np.full(len(positives), np.inf)
    for q, (row, pos) in enumerate(zip(predictions, positives)):
        hit = np.flatnonzero(np.isin(row, pos) & (row >= 0))
        if hit.size:
            first_hit[q] = hit[0]
    return {int(n): float(np.mean(first_hit < n)) for n in ns}
