"""Localize-then-map: a reconstructed, retrievable map of a sequence, and query images placed in it.

::

    from pacegeo import Pipeline

    pipe = Pipeline.from_pretrained("pacegeo-tiny")
    store = pipe.build_map("frames/", keep=0.5, chunk=32)     # MapStore
    store.save("room.pgmap")
    for loc in pipe.localize(["query1.png", "query2.png"], store="room.pgmap", top_k=4):
        print(loc.name, loc.position, loc.retrieved, loc.confidence)

**Mapping** (:func:`build_map`) reconstructs the map sequence with :meth:`Pipeline.reconstruct`,
in one pass or, with ``chunk``, in chunks of ``chunk`` frames that share ``overlap`` frames with
the previous chunk. Each chunk after the first is brought into the first chunk's frame by the
similarity fitted (:func:`fit_sim3`) between its camera centres of the overlapping frames and the
already placed ones. Every map frame gets a global descriptor from the VPR extractor
(:mod:`pacegeo.vpr`). A :class:`MapStore` keeps the descriptors, the camera-to-world poses, the
intrinsics and the map images at the model input resolution (uint8), so that map frames can be
reconstructed again together with a query.

**Localization** (:func:`localize`), per query image:

1. retrieve the ``top_k`` map frames with the most similar descriptors (exact inner-product search,
   :class:`pacegeo.vpr.DescriptorIndex`);
2. reconstruct ``[retrieved map frames (best first)..., query]`` together (pruned with ``keep``), so
   the best match is the reference frame;
3. fit the similarity taking the predicted camera centres of the retrieved map frames onto their
   stored map poses (:func:`fit_sim3`: Umeyama when there are at least 3 non-collinear centres,
   otherwise the mean rotation offset of the frames, scale from centre spreads, translation from
   the centroids);
4. express the predicted query camera in the map frame with that similarity.

The retrieval-only pose (the stored pose of the top-1 map frame) is returned alongside.

Conventions: poses are OpenCV camera-to-world ``[4, 4]`` (x right, y down, z forward) in the map
frame, which is the first map frame's camera frame at the model's (arbitrary) scale; intrinsics
are ``[3, 3]`` at the model input resolution with pixel centres at integer coordinates.

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
import math
import os
import weakref
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from pacegeo.errors import CheckpointError, InputError, option
from pacegeo.options import check_count, check_seed
from pacegeo.geometry.transforms import apply_sim3_to_c2w, invert_se3, rotation_angle_deg, sim3_matrix, to_4x4, umeyama

if TYPE_CHECKING:  # pragma: no cover
    from pacegeo.pipeline import Pipeline, PreparedInputs
    from pacegeo.vpr.extract import DescriptorExtractor

logger = logging.getLogger(__name__)

MAP_FORMAT = "pacegeo-map/1"
MAP_SUFFIX = ".pgmap"
DEFAULT_MAP_KEEP = 0.5
DEFAULT_TOP_K = 4
#: Centres count as collinear when the second singular value of the centred points is below this
#: share of the first.
MIN_SPREAD_RATIO = 0.1
#: Scales of the two fit residuals in :func:`localization_confidence`.
CONFIDENCE_CENTRE_SCALE = 0.1
CONFIDENCE_ROTATION_SCALE_DEG = 10.0
#: Weight of each fit method in :func:`localization_confidence` (fewer checks, less trust).
METHOD_WEIGHTS = {"umeyama": 1.0, "rotation-mean": 0.5, "single-frame": 0.25, "failed": 0.0}

__all__ = [
    "DEFAULT_MAP_KEEP",
    "DEFAULT_TOP_K",
    "MAP_FORMAT",
    "Localization",
    "MapStore",
    "Sim3Fit",
    "build_map",
    "chunk_spans",
    "fit_sim3",
    "load_map",
    "localization_confidence",
    "localize",
    "vpr_extractor",
]


# --------------------------------------------------------------------------------------------
# Similarity fits between two sets of cameras
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Sim3Fit:
    """A similarity ``X -> s R X + t`` from a source frame (a reconstruction) to a target frame (the map).

    Attributes:
        scale, rotation ``[3, 3]``, translation ``[3]``: ``s``, ``R``, ``t``.
        method: ``"umeyama"`` (least squares on >= 3 non-collinear centres), ``"rotation-mean"``
            (collinear or two centres: rotation from the cameras' orientations, scale from the
            centre spreads), ``"single-frame"`` (one usable camera: rotation from it, scale from
            the median-depth ratio) or ``"failed"`` (non-finite input).
        frames: cameras the fit used.
        residual: RMS distance between the mapped source centres and the target centres, divided
            by the RMS spread of the target centres about their mean (scale-free; 0 with one frame).
        rotation_residual_deg: median angle between each target rotation and its mapped source rotation.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    method: str
    frames: int
    residual: float = 0.0
    rotation_residual_deg: float = 0.0

    @property
    def matrix(self) -> np.ndarray:
        """``[4, 4]`` ``[[s R, t], [0, 1]]``."""
        return sim3_matrix(self.scale, self.rotation, self.translation)

    def apply_c2w(self, cam_to_world: np.ndarray) -> np.ndarray:
        """Camera-to-world poses ``[S, 3|4, 4]`` of the source frame expressed in the target frame
        ``[S, 4, 4]`` (rotations ``R R_i``, centres ``s R C_i + t``; the result stays rigid)."""
        return apply_sim3_to_c2w(cam_to_world, self.scale, self.rotation, self.translation)

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """Points ``[N, 3]`` of the source frame in the target frame."""
        return np.asarray(points, np.float64) @ (self.scale * self.rotation).T + self.translation

    def to_dict(self) -> dict:
        """JSON-friendly form (non-finite numbers become None)."""
        return {
            "scale": _plain(self.scale),
            "rotation": _plain(self.rotation),
            "translation": _plain(self.translation),
            "method": self.method,
            "frames": int(self.frames),
            "residual": _plain(self.residual),
            "rotation_residual_deg": _plain(self.rotation_residual_deg),
        }


def _plain(value):
    """A number or array as JSON-ready Python values, with None for NaN and infinities."""
    values = np.asarray(value, dtype=np.float64)
    out = np.where(np.isfinite(values), values, None)
    return out.tolist()


def _well_spread(points: np.ndarray, min_ratio: float) -> bool:
    """True when ``points [N, 3]`` span at least a plane (second singular value >= ``min_ratio`` x first)."""
    if len(points) < 3:
        return False
    sv = np.linalg.svd(points - points.mean(0), compute_uv=False)
    if not sv[0] > 1e-12 * max(1.0, float(np.abs(points).max())):
        return False
    return bool(sv[1] >= min_ratio * sv[0])


def _rms_spread(points: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((points - points.mean(0)) ** 2, axis=1)))) if len(points) else 0.0


def fit_sim3(
    src_c2w: np.ndarray,
    dst_c2w: np.ndarray,
    src_depth: np.ndarray | None = None,
    dst_depth: np.ndarray | None = None,
    min_spread_ratio: float = MIN_SPREAD_RATIO,
) -> Sim3Fit:
    """Similarity taking cameras ``src_c2w`` onto ``dst_c2w`` (both OpenCV camera-to-world ``[N, 3|4, 4]``).

    * ``N >= 3`` and the centres of both sets span a plane (:data:`MIN_SPREAD_RATIO`): Umeyama's
      least-squares Sim(3) on the camera centres (:func:`pacegeo.geometry.transforms.umeyama`);
    * otherwise (two cameras, or collinear centres): the rotation is the mean
      (:meth:`scipy.spatial.transform.Rotation.mean`) of the per-camera offsets
      ``R_dst_i R_src_i^T`` (the first camera's offset when it is alone), the scale the ratio of
      the mean centre distances to the centroid, and the translation maps centroid onto centroid;
    * when the centres do not spread at all (one camera, or all at one place), the scale is the
      median ratio ``dst_depth / src_depth`` of the cameras' median scene depths when given, else 1.

    Args:
        src_depth, dst_depth: ``[N]`` median scene depth of each camera in its frame's units, or None.
        min_spread_ratio: collinearity threshold on the singular values of the centred centres.
    """
    src = to_4x4(np.asarray(src_c2w, np.float64))
    dst = to_4x4(np.asarray(dst_c2w, np.float64))
    if src.ndim != 3 or src.shape != dst.shape:
        raise InputError(f"fit_sim3 needs two [N, 4, 4] pose sets of one length, got {src.shape} and {dst.shape}")
    n = len(src)
    if n == 0:
        raise InputError("fit_sim3 needs at least one camera")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        return Sim3Fit(float("nan"), np.full((3, 3), np.nan), np.full(3, np.nan), "failed", n, float("inf"), float("inf"))
    cs, cd = src[:, :3, 3], dst[:, :3, 3]
    method = ""
    if n >= 3 and _well_spread(cs, min_spread_ratio) and _well_spread(cd, min_spread_ratio):
        s, R, t = umeyama(cs, cd, with_scale=True)
        if math.isfinite(s) and s > 0:
            method = "umeyama"
    if not method:
        offsets = dst[:, :3, :3] @ np.swapaxes(src[:, :3, :3], -1, -2)
        R = Rotation.from_matrix(offsets).mean().as_matrix()
        spread_s = float(np.mean(np.linalg.norm(cs - cs.mean(0), axis=1)))
        spread_d = float(np.mean(np.linalg.norm(cd - cd.mean(0), axis=1)))
        tiny_s = 1e-9 * max(1.0, float(np.abs(cs).max()))
        tiny_d = 1e-9 * max(1.0, float(np.abs(cd).max()))
        if n >= 2 and spread_s > tiny_s and spread_d > tiny_d:
            s, method = spread_d / spread_s, "rotation-mean"
        else:
            s, method = 1.0, "single-frame"
            if src_depth is not None and dst_depth is not None:
                ratio = np.asarray(dst_depth, np.float64) / np.asarray(src_depth, np.float64)
                ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
                if ratio.size:
                    s = float(np.median(ratio))
        t = cd.mean(0) - s * R @ cs.mean(0)
    mapped = s * cs @ R.T + t
    rms = float(np.sqrt(np.mean(np.sum((mapped - cd) ** 2, axis=1))))
    spread = _rms_spread(cd)
    residual = rms / spread if spread > 1e-12 else 0.0
    angles = rotation_angle_deg(np.swapaxes(R @ src[:, :3, :3], -1, -2) @ dst[:, :3, :3])
    return Sim3Fit(float(s), R, t, method, n, residual, float(np.median(angles)))


def localization_confidence(retrieval_score: float, fit: Sim3Fit) -> float:
    """Confidence in ``[0, 1]`` of a localization.

    ``confidence = clip(score_1, 0, 1) * exp(-e_c / 0.1) * exp(-e_R / 10 deg) * w_method``

    where ``score_1`` is the cosine similarity of the query to its top-1 map frame, ``e_c`` the
    scale-free centre residual of the fit (:attr:`Sim3Fit.residual`), ``e_R`` its median rotation
    residual in degrees and ``w_method`` 1 for a Umeyama fit, 0.5 for the rotation-mean fallback,
    0.25 for a single-frame fit (less redundancy to check it) and 0 for a failed one. It ranks
    localizations; it is not a calibrated probability.
    """
    weight = METHOD_WEIGHTS.get(fit.method, 0.0)
    if weight == 0.0 or not (math.isfinite(fit.residual) and math.isfinite(fit.rotation_residual_deg)):
        return 0.0
    score = float(np.clip(retrieval_score, 0.0, 1.0)) if math.isfinite(retrieval_score) else 0.0
    value = score * math.exp(-fit.residual / CONFIDENCE_CENTRE_SCALE)
    value *= math.exp(-fit.rotation_residual_deg / CONFIDENCE_ROTATION_SCALE_DEG)
    return float(value * weight)


# --------------------------------------------------------------------------------------------
# Descriptor extractor for a pipeline
# --------------------------------------------------------------------------------------------

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
    recorded = meta.get("backbone_sha256", "")
    model_path = getattr(pipeline.model, "path", None)
    if recorded and model_path is not None and Path(model_path).is_file() and file_sha256(model_path) != recorded:
        logger.info("VPR head %s was trained on another snapshot of the backbone than %s", path.name, model_path)
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


# --------------------------------------------------------------------------------------------
# The map
# --------------------------------------------------------------------------------------------


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
        from pacegeo.export import npz_into
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


# --------------------------------------------------------------------------------------------
# Building a map
# --------------------------------------------------------------------------------------------


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


def _median_depths(rec) -> np.ndarray:
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
    from pacegeo.pipeline import PreparedInputs, _progress, _progress_enabled, check_keep

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
    show = _progress_enabled(progress) and len(spans) > 1
    for start, end in _progress(spans, show, desc="mapping", unit="chunk"):
        rec = pipeline.reconstruct(_subset(prepared, start, end), keep=keep, seed=seed)
        pred = invert_se3(rec.extrinsics)
        medians = _median_depths(rec)
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


# --------------------------------------------------------------------------------------------
# Localization
# --------------------------------------------------------------------------------------------


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
            "position": _plain(self.position),
            "cam_to_world": _plain(self.cam_to_world),
            "confidence": float(self.confidence),
            "retrieved": [
                {"name": n, "score": _plain(s), "index": int(i)}
                for n, s, i in zip(self.retrieved, self.scores, self.retrieved_indices)
            ],
            "retrieval_position": _plain(self.retrieval_position),
            "retrieval_cam_to_world": _plain(self.retrieval_cam_to_world),
            "intrinsics_model": _plain(self.intrinsics),
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
    from pacegeo.pipeline import PreparedInputs, _unique_names

    images = list(store.image_tensors(rows)) + [queries.images[q]]
    transforms = [_map_transform(store, int(i)) for i in rows] + [queries.transforms[q]]
    images, transforms = pad_to_common_shape(images, transforms)
    names = _unique_names([store.names[int(i)] for i in rows] + [queries.names[q]])
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
    from pacegeo.pipeline import _progress, _progress_enabled, check_keep, prepare_inputs

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
    for q in _progress(range(len(queries)), _progress_enabled(progress), desc="localizing", unit="query"):
        valid = ids[q] >= 0
        rows, row_scores = ids[q][valid], scores[q][valid]
        rec = pipeline.reconstruct(_joint_inputs(store, rows, queries, q), keep=keep, seed=seed)
        pred = invert_se3(rec.extrinsics)
        medians = _median_depths(rec)
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
