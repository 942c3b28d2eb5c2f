"""The map store: descriptors, poses, intrinsics and images of the map frames, and its file format.

The file format (``.pgmap``) is an ``.npz`` archive written atomically: arrays ``descriptors
[M, D] float32``, ``names [M] str``, ``cam_to_world [M, 4, 4] float64``, ``intrinsics [M, 3, 3]
float64``, ``images [M, h, w, 3] uint8``, ``content_box [M, 4] int64`` (``x0, y0, x1, y1`` of
the image content inside padding), ``original_hw [M, 2] int64``, ``depth_median [M] float64``
(median predicted depth per frame, map units) and ``meta`` (JSON: format, model, model
fingerprint, preprocessing, VPR head, keep, chunking).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pacegeo.errors import InputError, option

if TYPE_CHECKING:  # pragma: no cover
    from pacegeo.pipeline import Pipeline

logger = logging.getLogger(__name__)

MAP_FORMAT = "pacegeo-map/1"


MAP_SUFFIX = ".pgmap"

__all__ = ["MAP_FORMAT", "MAP_SUFFIX", "MapStore", "load_map"]


@dataclass(frozen=True, eq=False)
class MapStore:
    """A localization map: what retrieval and joint reconstruction need of each map frame.

    Attributes:
        descriptors: ``[M, D]`` float32 L2-normalised global descriptors.
        names: ``M`` unique frame names.
        cam_to_world: ``[M, 4, 4]`` float64 OpenCV camera-to-world poses in the map frame (the
            first map frame is the identity; the scale is the model's).
        intrinsics: ``[M, 3, 3]`` float64 at the model input resolution (pixel centres at integers).
        images: ``[M, h, w, 3]`` uint8 RGB model inputs (after resizing, cropping or padding).
        content_box: ``[M, 4]`` int64 ``(x0, y0, x1, y1)`` of the image content in model pixels.
        original_hw: ``[M, 2]`` int64 ``(H, W)`` of the original images.
        depth_median: ``[M]`` float64 median predicted depth of each frame, in map units.
        model: the backbone the map was built with (name, or absolute checkpoint path).
        model_fingerprint: :func:`pacegeo.hub.backbone_fingerprint` of that backbone.
        target_size, preprocess_mode: preprocessing of the map images (queries use the same).
        vpr: the descriptor head's source (``vpr`` argument of :func:`vpr_extractor`).
        vpr_identity: head kind and weight hash (descriptors are comparable only within one identity).
        keep: fraction of patch tokens kept for the map's descriptors and reconstruction.
        chunk, overlap: chunking of the map reconstruction (``chunk=None``: one pass).
        source: the file it was loaded from ("" when built in memory); not saved.
        input_paths: the frames and weights it was built from (when built here); not saved. A
            save never writes over, or into, one of them.
    """

    descriptors: np.ndarray
    names: tuple[str, ...]
    cam_to_world: np.ndarray
    intrinsics: np.ndarray
    images: np.ndarray
    content_box: np.ndarray
    original_hw: np.ndarray
    depth_median: np.ndarray
    model: str
    model_fingerprint: str
    target_size: int
    preprocess_mode: str
    vpr: str
    vpr_identity: str
    keep: float
    chunk: int | None = None
    overlap: int = 0
    source: str = field(default="", compare=False)
    input_paths: tuple = field(default=(), compare=False)

    def __post_init__(self) -> None:
        m = len(self.names)
        checks = {
            "descriptors": (self.descriptors, (m, None)),
            "cam_to_world": (self.cam_to_world, (m, 4, 4)),
            "intrinsics": (self.intrinsics, (m, 3, 3)),
            "images": (self.images, (m, None, None, 3)),
            "content_box": (self.content_box, (m, 4)),
            "original_hw": (self.original_hw, (m, 2)),
            "depth_median": (self.depth_median, (m,)),
        }
        for what, (array, shape) in checks.items():
            if array.ndim != len(shape) or any(e is not None and a != e for a, e in zip(array.shape, shape)):
                raise InputError(f"map {what} has shape {array.shape}, expected {shape} for {m} frames")
        if m == 0:
            raise InputError("a map needs at least one frame")
        if len(set(self.names)) != m:
            raise InputError("map frame names must be unique")
        if self.images.dtype != np.uint8:
            raise InputError(f"map images must be uint8, got {self.images.dtype}")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(h, w)`` of the stored map images (the model input)."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def camera_centers(self) -> np.ndarray:
        """``[M, 3]`` camera centres in the map frame."""
        return self.cam_to_world[:, :3, 3].copy()

    @cached_property
    def index(self):
        """A :class:`pacegeo.vpr.DescriptorIndex` (exact inner product) over :attr:`descriptors`,
        with names, poses and intrinsics."""
        from pacegeo.vpr.index import DescriptorIndex

        index = DescriptorIndex(int(self.descriptors.shape[1]), kind="flat")
        index.add(self.descriptors, list(self.names), self.cam_to_world, self.intrinsics)
        return index

    def check_model(self, pipeline: "Pipeline") -> None:
        """Raise :class:`InputError` unless ``pipeline`` runs the backbone this map was built with."""
        from pacegeo.hub import backbone_fingerprint

        current = backbone_fingerprint(pipeline.backbone)
        if current != self.model_fingerprint:
            where = self.source or "the map"
            name = pipeline.model.name if pipeline.model is not None else pipeline.config.name
            raise InputError(
                f"{where} was built with model {self.model} (fingerprint {self.model_fingerprint}), but the loaded "
                f"model {name} has fingerprint {current}; localize with {option('model')} {self.model} or rebuild the map"
            )

    def image_tensors(self, indices) -> torch.Tensor:
        """Map images ``[n, 3, h, w]`` float32 in [0, 1] (the model inputs, exactly)."""
        images = torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(indices, dtype=np.int64)]))
        return images.permute(0, 3, 1, 2).float().div(255)

    # -- persistence ------------------------------------------------------------------------------

    def meta(self) -> dict:
        from pacegeo import __version__

        return {
            "format": MAP_FORMAT,
            "pacegeo_version": __version__,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "target_size": int(self.target_size),
            "preprocess_mode": self.preprocess_mode,
            "vpr": self.vpr,
            "vpr_identity": self.vpr_identity,
            "keep": float(self.keep),
            "chunk": self.chunk,
            "overlap": int(self.overlap),
        }

    def save(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write the map to one ``.npz`` archive at ``path`` (``.pgmap`` by convention), atomically.

        ``path`` may not be, or lie inside, one of :attr:`input_paths` (the frames and weights the
        map was built from); an existing file is replaced only with ``overwrite``.
        """
        from pacegeo.io.export import npz_into
        from pacegeo.io.outputs import OutputSet, OutputSpec

        arrays = {
            "descriptors": self.descriptors.astype(np.float32),
            "names": np.asarray(self.names, dtype=np.str_),
            "cam_to_world": self.cam_to_world.astype(np.float64),
            "intrinsics": self.intrinsics.astype(np.float64),
            "images": self.images,
            "content_box": self.content_box.astype(np.int64),
            "original_hw": self.original_hw.astype(np.int64),
            "depth_median": self.depth_median.astype(np.float64),
            "meta": np.asarray(json.dumps(self.meta())),
        }
        spec = OutputSpec(Path(path), what="map")
        with OutputSet([spec], self.input_paths, overwrite) as outputs:
            with open(outputs.staged(spec), "wb") as handle:
                npz_into(handle, arrays)
        logger.info("wrote a map of %d frames to %s", len(self), spec.path)
        return spec.path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MapStore":
        """Read a map written by :meth:`save`; :class:`InputError` when the file is missing or not a map."""
        path = Path(path).expanduser()
        if not path.exists():
            raise InputError(f"map file not found: {path}")
        if path.is_dir():
            raise InputError(f"{path} is a folder, not a pacegeo map file ({MAP_SUFFIX})")
        try:
            with np.load(path, allow_pickle=False) as data:
                if "meta" not in data.files:
                    raise InputError(f"{path} is not a pacegeo map (an .npz archive without map metadata)")
                meta = json.loads(str(data["meta"]))
                if not isinstance(meta, dict) or meta.get("format") != MAP_FORMAT:
                    found = meta.get("format") if isinstance(meta, dict) else None
                    raise InputError(f"{path} is not a pacegeo map (format {found!r}, expected {MAP_FORMAT!r})")
                arrays = {k: data[k] for k in data.files if k != "meta"}
        except InputError:
            raise
        except OSError as err:
            raise InputError(f"cannot read map {path}: {err.strerror or type(err).__name__}") from None
        except MemoryError:
            raise InputError(f"not enough memory to read map {path}") from None
        except Exception:  # zip, pickle and value errors of a file that is not a map archive
            raise InputError(f"{path} is not a pacegeo map (corrupt, truncated or another kind of file)") from None
        try:
            return cls(
                descriptors=arrays["descriptors"].astype(np.float32),
                names=tuple(str(n) for n in arrays["names"]),
                cam_to_world=arrays["cam_to_world"].astype(np.float64),
                intrinsics=arrays["intrinsics"].astype(np.float64),
                images=arrays["images"],
                content_box=arrays["content_box"].astype(np.int64),
                original_hw=arrays["original_hw"].astype(np.int64),
                depth_median=arrays["depth_median"].astype(np.float64),
                model=str(meta["model"]),
                model_fingerprint=str(meta["model_fingerprint"]),
                target_size=int(meta["target_size"]),
                preprocess_mode=str(meta["preprocess_mode"]),
                vpr=str(meta["vpr"]),
                vpr_identity=str(meta["vpr_identity"]),
                keep=float(meta["keep"]),
                chunk=None if meta.get("chunk") is None else int(meta["chunk"]),
                overlap=int(meta.get("overlap", 0)),
                source=str(path),
            )
        except KeyError as err:
            raise InputError(f"{path} is an incomplete pacegeo map (no {err.args[0]!r})") from None


def load_map(path_or_store: "str | os.PathLike | MapStore") -> MapStore:
    """A :class:`MapStore` from a path (:meth:`MapStore.load`) or as given."""
    if isinstance(path_or_store, MapStore):
        return path_or_store
    if isinstance(path_or_store, (str, os.PathLike)):
        return MapStore.load(path_or_store)
    raise InputError(f"expected a map file or a MapStore, got a {type(path_or_store).__name__}")
