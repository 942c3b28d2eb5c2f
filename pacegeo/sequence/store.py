"""Finished chunks on disk: a chunked run survives a crash (rerun to resume) and spreads its chunks
over processes (``accelerate launch``) that share a folder.

Every chunk's reconstruction is written, atomically, as ``chunk_<index>.npz`` in a folder named
after the run's identity (:func:`run_key`: the frames' pixels, the model and pruner weights, keep,
seed, precision and chunk spans), so a rerun with other settings never reads a stale chunk. A
chunk that fails leaves ``chunk_<index>.failed`` with its one-line reason instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pacegeo.io.outputs import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from pacegeo.io.inputs import PreparedInputs
    from pacegeo.pipeline import Pipeline
    from pacegeo.reconstruction import Reconstruction

__all__ = ["ChunkStore", "process_device", "process_layout", "run_key"]

#: Per-frame arrays a chunk file holds (the rest of a Reconstruction is the run's, not the chunk's).
CHUNK_ARRAYS = ("depth", "depth_conf", "world_points", "world_points_conf", "points_from_depth", "colors",
                "valid_mask", "extrinsics", "intrinsics", "intrinsics_original", "image_size")


def process_layout() -> tuple[int, int]:
    """``(rank, world size)`` of this process under ``accelerate launch`` / ``torchrun`` (their
    ``RANK`` and ``WORLD_SIZE``); ``(0, 1)`` in a plain run."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0, 1
    return (rank, world) if world > 1 and 0 <= rank < world else (0, 1)


def process_device(requested: str) -> str:
    """The device of this process: under ``accelerate launch`` on a machine with GPUs, ``"auto"``
    means this process's own GPU (``LOCAL_RANK``); otherwise ``requested`` unchanged."""
    import torch

    _, world = process_layout()
    if world > 1 and requested == "auto" and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return requested


def run_key(pipeline: "Pipeline", prepared: "PreparedInputs", spans: list[tuple[int, int]], keep: float, seed: int) -> str:
    """A short hash of everything a chunk's result depends on."""
    from pacegeo.hub import backbone_fingerprint

    digest = hashlib.sha256()
    digest.update(prepared.images.detach().cpu().contiguous().numpy().tobytes())
    pruner = ""
    if pipeline.pruner is not None:
        pruner = hashlib.sha256(b"".join(p.detach().cpu().float().numpy().tobytes()
                                         for p in pipeline.pruner.pruner_parameters())).hexdigest()
    digest.update(json.dumps({
        "backbone": backbone_fingerprint(pipeline.backbone), "pruner": pruner, "mode": pipeline.pruner_mode,
        "keep": keep, "seed": seed, "dtype": str(pipeline.amp_dtype), "spans": spans, "names": list(prepared.names),
        "global_merge": repr(getattr(pipeline, "global_merge", None)),
    }, sort_keys=True).encode())
    return digest.hexdigest()[:16]


class ChunkStore:
    """The finished chunks of one run in ``folder/<key>/``."""

    def __init__(self, folder: str | os.PathLike, key: str):
        self.path = Path(folder).expanduser() / key
        self.path.mkdir(parents=True, exist_ok=True)

    def _file(self, index: int, suffix: str = ".npz") -> Path:
        return self.path / f"chunk_{index:05d}{suffix}"

    def has(self, index: int) -> bool:
        return self._file(index).is_file()

    def save(self, index: int, rec: "Reconstruction") -> None:
        arrays = {name: getattr(rec, name) for name in CHUNK_ARRAYS}
        meta = {"keep": rec.keep, "kept_per_frame": rec.kept_per_frame, "timings": rec.timings, "peak_memory": rec.peak_memory,
                "peak_memory_kind": rec.peak_memory_kind,
                "memory_estimate": rec.memory_estimate, "pruning": {k: v for k, v in rec.pruning.items()
                                                                    if k in ("mode", "keep", "patch_tokens_per_frame")}}
        with atomic_path(self._file(index)) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)
        self._file(index, ".failed").unlink(missing_ok=True)

    def load(self, index: int) -> "Reconstruction":
        """The chunk as a :class:`Reconstruction` (its per-frame arrays and statistics)."""
        from pacegeo.reconstruction import Reconstruction

        with np.load(self._file(index)) as data:
            arrays = {name: data[name] for name in CHUNK_ARRAYS}
            meta = json.loads(str(data["meta"]))
        pruning = dict(meta["pruning"], kept_per_frame=meta["kept_per_frame"])
        fields = dict(arrays, pruning=pruning, timings=meta["timings"], peak_memory=meta["peak_memory"],
                      peak_memory_kind=meta["peak_memory_kind"], memory_estimate=meta["memory_estimate"])
        return Reconstruction(**fields, frame_names=[""] * len(arrays["depth"]), keep=float(meta["keep"]))

    def clear(self) -> None:
        """Remove the run's chunk files (after a successful stitch) and its folder when empty."""
        for path in self.path.glob("chunk_*"):
            path.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:
            pass

    def fail(self, index: int, message: str) -> None:
        self._file(index, ".failed").write_text(message + "\n")

    def failure(self, index: int) -> str | None:
        path = self._file(index, ".failed")
        return path.read_text().strip() if path.is_file() else None

    def wait(self, indices: list[int], poll: float = 0.2, timeout: float | None = None) -> str | None:
        """Block until every chunk in ``indices`` is finished; the first failure's message, if any."""
        start = time.monotonic()
        while True:
            for index in indices:
                message = self.failure(index)
                if message:
                    return message
            if all(self.has(index) for index in indices):
                return None
            if timeout is not None and time.monotonic() - start > timeout:
                return f"timed out after {timeout:.0f} s waiting for chunks of other processes"
            time.sleep(poll)
