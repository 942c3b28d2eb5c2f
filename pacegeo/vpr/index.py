"""A database of global descriptors for retrieval, backed by faiss.

Descriptors are L2-normalised, so inner product equals cosine similarity. Every entry has a name
(image id) and, optionally, a camera-to-world pose ``[4, 4]`` and intrinsics ``[3, 3]`` (NaN where
unknown), which is what localisation needs to reconstruct a query with retrieved map frames.

Index kinds: ``"flat"`` (exact ``IndexFlatIP``, the default and what VPR benchmarks use),
``"hnsw"`` (``IndexHNSWFlat``, approximate, for maps of millions of images) and ``"ivf"``
(``IndexIVFFlat``, trained on the first batch added; ``nlist`` defaults to ``4 * sqrt(N)``).

:meth:`DescriptorIndex.save` writes one ``.npz`` file (faiss index bytes, names, poses,
intrinsics, JSON settings) to a temporary name and renames it, so a crash never leaves a torn file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pacegeo.errors import InputError
from pacegeo.extras import require
from pacegeo.io.outputs import atomic_write
from pacegeo.vpr.recall import recall_at_n

faiss = require("faiss", "place-recognition retrieval")

logger = logging.getLogger(__name__)

INDEX_FORMAT = "pacegeo-vpr-index/1"
INDEX_KINDS = ("flat", "hnsw", "ivf")

__all__ = ["INDEX_FORMAT", "INDEX_KINDS", "DescriptorIndex", "recall_at_1"]


def _as_matrix(x, dim: int | None, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise InputError(f"{what} must be [N, {dim or 'D'}], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(f"{what} contain NaN or infinite values")
    return x


def _optional_stack(values, count: int, shape: tuple[int, int], what: str) -> np.ndarray:
    if values is None:
        return np.full((count, *shape), np.nan)
    arr = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if arr.shape == shape and count == 1:
        arr = arr[None]
    if shape == (4, 4) and arr.shape == (count, 3, 4):
        arr = np.concatenate((arr, np.tile([[[0.0, 0.0, 0.0, 1.0]]], (count, 1, 1))), axis=1)
    if arr.shape != (count, *shape):
        raise InputError(f"{what} must be [{count}, {shape[0]}, {shape[1]}], got shape {arr.shape}")
    return arr


class DescriptorIndex:
    """Descriptors ``[N, D]`` with names, poses and intrinsics; ``search`` returns row indices.

    Args:
        dim: descriptor size ``D``.
        kind: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"``.
        hnsw_m: neighbours per HNSW node; ``ef_search`` its search breadth.
        nlist: IVF cells (default ``round(4 * sqrt(N))`` at the first ``add``); ``nprobe`` cells visited.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        hnsw_m: int = 32,
        ef_search: int = 128,
        nlist: int | None = None,
        nprobe: int = 16,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise InputError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
        if dim < 1:
            raise InputError(f"descriptor dimension must be positive, got {dim}")
        self.dim = int(dim)
        self.kind = kind
        self.settings = {"hnsw_m": hnsw_m, "ef_search": ef_search, "nlist": nlist, "nprobe": nprobe}
        self.names: list[str] = []
        self.poses = np.zeros((0, 4, 4))
        self.intrinsics = np.zeros((0, 3, 3))
        self.index: faiss.Index | None = self._new_index() if kind != "ivf" else None

    def _new_index(self, num_train: int = 0) -> faiss.Index:
        s = self.settings
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, int(s["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = int(s["ef_search"])
            return index
        nlist = s["nlist"] or max(1, round(4 * math.sqrt(num_train)))
        nlist = min(int(nlist), num_train)
        s["nlist"] = nlist
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = int(s["nprobe"])
        return index

    def __len__(self) -> int:
        return len(self.names)

    def add(
        self,
        descriptors: np.ndarray | torch.Tensor,
        names: Sequence[str] | None = None,
        poses: np.ndarray | torch.Tensor | None = None,
        intrinsics: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Append entries.

        Args:
            descriptors: ``[M, D]`` (L2-normalised).
            names: ``M`` image ids (default ``"<row>"``).
            poses: ``[M, 4, 4]`` (or ``[M, 3, 4]``) camera-to-world poses, or None.
            intrinsics: ``[M, 3, 3]``, or None.
        """
        x = _as_matrix(descriptors, self.dim, "descriptors")
        m = x.shape[0]
        names = [str(len(self) + i) for i in range(m)] if names is None else [str(n) for n in names]
        if len(names) != m:
            raise InputError(f"got {len(names)} names for {m} descriptors")
        pose_arr = _optional_stack(poses, m, (4, 4), "poses")
        k_arr = _optional_stack(intrinsics, m, (3, 3), "intrinsics")
        if self.index is None:  # IVF: train on the first batch
            if m < 1:
                return
            self.index = self._new_index(num_train=m)
            self.index.train(x)
            logger.info("trained an IVF index with %d cells on %d descriptors", self.settings["nlist"], m)
        self.index.add(x)
        self.names.extend(names)
        self.poses = np.concatenate((self.poses, pose_arr))
        self.intrinsics = np.concatenate((self.intrinsics, k_arr))

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` entries per query by inner product.

        Args:
            queries: ``[Q, D]`` L2-normalised descriptors.
        Returns:
            ``(scores [Q, k] float32, ids [Q, k] int64)``: row indices into this index, best first;
            ``-1`` (score ``-inf``) where fewer than ``k`` entries exist.
        """
        q = _as_matrix(queries, self.dim, "queries")
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        if self.index is None or len(self) == 0:
            return np.full((q.shape[0], k), -np.inf, np.float32), np.full((q.shape[0], k), -1, np.int64)
        scores, ids = self.index.search(q, int(k))
        ids = ids.astype(np.int64)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids

    def search_names(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Like :meth:`search`, with names instead of row indices (missing entries left out)."""
        scores, ids = self.search(queries, k)
        return scores, [[self.names[i] for i in row if i >= 0] for row in ids]

    # -- persistence ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write everything to one ``.npz`` file, atomically (:func:`pacegeo.io.outputs.atomic_write`)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        index_bytes = faiss.serialize_index(self.index) if self.index is not None else np.zeros(0, np.uint8)
        meta = {"format": INDEX_FORMAT, "dim": self.dim, "kind": self.kind, "settings": self.settings}
        with atomic_write(path) as f:
            np.savez(
                f,
                index=np.asarray(index_bytes, dtype=np.uint8),
                names=np.asarray(self.names, dtype=np.str_),
                poses=self.poses,
                intrinsics=self.intrinsics,
                meta=np.asarray(json.dumps(meta)),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DescriptorIndex":
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file() and path.with_name(path.name + ".npz").is_file():
            path = path.with_name(path.name + ".npz")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                index_bytes = data["index"]
                names = [str(n) for n in data["names"]]
                poses, intrinsics = data["poses"], data["intrinsics"]
        except (OSError, KeyError, ValueError) as err:
            raise InputError(f"cannot read descriptor index {path}: {err}") from None
        if meta.get("format") != INDEX_FORMAT:
            raise InputError(f"{path} is not a descriptor index (format {meta.get('format')!r})")
        self = cls.__new__(cls)
        self.dim, self.kind, self.settings = int(meta["dim"]), meta["kind"], meta["settings"]
        self.names = names
        self.poses = poses.reshape(len(names), 4, 4)
        self.intrinsics = intrinsics.reshape(len(names), 3, 3)
        self.index = faiss.deserialize_index(index_bytes) if index_bytes.size else None
        if self.index is not None and self.index.ntotal != len(names):
            raise InputError(f"{path} is inconsistent: {self.index.ntotal} descriptors, {len(names)} names")
        if self.kind == "hnsw":
            faiss.downcast_index(self.index).hnsw.efSearch = int(self.settings["ef_search"])
        elif self.kind == "ivf" and self.index is not None:
            faiss.extract_index_ivf(self.index).nprobe = int(self.settings["nprobe"])
        return self


def recall_at_1(database: torch.Tensor, queries: torch.Tensor, positives) -> float:
    """Recall@1 of ``queries [Q, D]`` against ``database [M, D]`` (exact inner-product search);
    ``positives``: the database indices that count as correct for each query."""
    index = DescriptorIndex(database.shape[1])
    index.add(database)
    return recall_at_n(index.search(queries, 1)[1], positives, (1,))[1]
