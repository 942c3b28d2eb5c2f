"""A reconstruction: cameras, depth and coloured points of ``S`` frames, and its exports.

Conventions of every array in a :class:`Reconstruction`:

* the world frame is the first camera's OpenCV frame (x right, y down, z forward); scale is the
  model's (arbitrary, consistent within a reconstruction);
* ``extrinsics [S, 3, 4]`` are OpenCV world-to-camera ``[R | t]``;
* ``intrinsics [S, 3, 3]`` refer to the model input (``h x w`` pixels, pixel centres at integer
  coordinates); ``intrinsics_original`` to the original images;
* dense maps are ``[S, h, w]`` / ``[S, h, w, 3]`` at the model input resolution ``(h, w)``.

Exports (:meth:`Reconstruction.export` and the ``save_*`` methods) go through
:mod:`pacegeo.io.outputs`: never over an input, all of a run's outputs or none.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pacegeo.errors import InputError, option
from pacegeo.options import check_count, check_seed
from pacegeo.progress import progress_bar, progress_enabled

__all__ = ["DEFAULT_CONF_PERCENTILE", "EXPORT_FORMATS", "Reconstruction", "check_point_filter", "export_spec"]


#: Default point filter of the API and the command line: drop the least confident half (VGGT's demos).
DEFAULT_CONF_PERCENTILE = 50.0


def check_point_filter(conf_threshold: object = None, conf_percentile: object = None) -> tuple[str, float]:
    """The point filter of :meth:`Reconstruction.point_mask` as ``("threshold", C)`` or
    ``("percentile", P)``: at most one of the two may be given; neither is the default
    ``("percentile", DEFAULT_CONF_PERCENTILE)``."""
    if conf_threshold is not None and conf_percentile is not None:
        raise InputError(f"give either {option('conf')} or {option('conf_percentile')}, not both")
    if conf_threshold is not None:
        t = float(conf_threshold) if isinstance(conf_threshold, (int, float, np.number)) and not isinstance(conf_threshold, bool) else math.nan
        if not math.isfinite(t) or t < 0:
            raise InputError(f"{option('conf')} must be a non-negative number, got {conf_threshold!r}")
        return "threshold", t
    value = DEFAULT_CONF_PERCENTILE if conf_percentile is None else conf_percentile
    p = float(value) if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else math.nan
    if not math.isfinite(p) or not 0.0 <= p < 100.0:
        raise InputError(f"{option('conf_percentile')} must be in [0, 100), got {conf_percentile!r}")
    return "percentile", p


@dataclass
class Reconstruction:
    """Cameras, depth and points predicted for ``S`` frames.

    Dense maps are at the model input resolution ``(h, w)`` (see :attr:`inference_hw`).

    Attributes:
        depth: ``[S, h, w]`` float32 z-depth along each camera's optical axis.
        depth_conf: ``[S, h, w]`` float32 confidence of ``depth`` (>= 1, higher is better).
        world_points: ``[S, h, w, 3]`` float32 world points from the point head.
        world_points_conf: ``[S, h, w]`` float32 confidence of ``world_points``.
        points_from_depth: ``[S, h, w, 3]`` float32 world points unprojected from ``depth`` with the
            predicted cameras (usually the more accurate of the two).
        colors: ``[S, h, w, 3]`` uint8 RGB of the model input.
        valid_mask: ``[S, h, w]`` bool, False on padding (``mode="pad"`` or mixed image sizes).
        extrinsics: ``[S, 3, 4]`` float32 OpenCV world-to-camera; frame 0 is ``[I | 0]``.
        intrinsics: ``[S, 3, 3]`` float32 at the model input resolution (pixel centres at integers).
        intrinsics_original: ``[S, 3, 3]`` float64, the same cameras in original-image pixels
            (pixel centres at integers).
        image_size: ``[S, 2]`` int original image ``(H, W)``.
        frame_names: one name per frame.
        keep: fraction of patch tokens kept per frame.
        pruning: statistics of the pruned forward pass (token counts per frame, merged, dropped);
            empty without pruning.
        timings: seconds per stage: ``load``, ``preprocess``, ``inference`` (and ``inference/<stage>``),
            ``export`` (grows as files are written).
        peak_memory: peak bytes (CUDA: allocated by PyTorch during inference; CPU: the process's
            peak resident set size).
        memory_estimate: the preflight estimate (bytes) for this run.
        files_written: paths written by :meth:`export` and the ``save_*`` methods, in order.
        input_paths: what the reconstruction was made from (image files or folder, video, model and
            pruner weights): no output may replace, contain or lie inside one of them.
    """

    depth: np.ndarray
    depth_conf: np.ndarray
    world_points: np.ndarray
    world_points_conf: np.ndarray
    points_from_depth: np.ndarray
    colors: np.ndarray
    valid_mask: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    intrinsics_original: np.ndarray
    image_size: np.ndarray
    frame_names: list[str]
    keep: float
    pruning: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    peak_memory: int = 0
    peak_memory_kind: str = ""
    memory_estimate: int = 0
    model_name: str = ""
    pruner_mode: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    preprocess_mode: str = "crop"
    skipped: list = field(default_factory=list)
    files_written: list = field(default_factory=list)
    input_paths: list = field(default_factory=list)

    # -- basic properties -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.frame_names)

    @property
    def inference_hw(self) -> tuple[int, int]:
        """``(h, w)`` of the model input and of every dense map."""
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    @property
    def camera_centers(self) -> np.ndarray:
        """``[S, 3]`` camera centres in world coordinates (``-R^T t``)."""
        rotation = self.extrinsics[:, :3, :3].astype(np.float64)
        return -np.einsum("sji,sj->si", rotation, self.extrinsics[:, :3, 3].astype(np.float64))

    @property
    def tokens_per_frame(self) -> int:
        """Patch tokens per frame before pruning."""
        if "patch_tokens_per_frame" in self.pruning:
            return int(self.pruning["patch_tokens_per_frame"])
        h, w = self.inference_hw
        return (h // 14) * (w // 14)

    @property
    def kept_per_frame(self) -> list[int]:
        """Patch tokens each frame kept."""
        if "kept_per_frame" in self.pruning:
            return [int(k) for k in self.pruning["kept_per_frame"]]
        return [self.tokens_per_frame] * len(self)

    # -- points -----------------------------------------------------------------------------------

    def point_mask(
        self,
        conf_threshold: float | None = None,
        conf_percentile: float | None = None,
        source: str = "depth",
    ) -> np.ndarray:
        """``[S, h, w]`` bool: valid, finite pixels whose confidence passes the filter.

        One filter applies: ``conf_threshold=C`` keeps pixels with ``conf >= C`` (0 keeps all);
        ``conf_percentile=P`` (0-100) drops the lowest ``P`` percent of the valid pixels by
        confidence; with neither, the default :data:`DEFAULT_CONF_PERCENTILE` (50, as VGGT's demos
        and the command line). ``source`` picks the map and its confidence: ``"depth"``
        (:attr:`points_from_depth`, :attr:`depth_conf`) or ``"pointmap"`` (:attr:`world_points`,
        :attr:`world_points_conf`).
        """
        kind, value = check_point_filter(conf_threshold, conf_percentile)
        points, conf = self._source(source)
        mask = self.valid_mask & np.isfinite(points).all(axis=-1) & np.isfinite(conf)
        if kind == "threshold":
            return mask & (conf >= value)
        if mask.any() and value > 0:
            mask &= conf >= np.percentile(conf[mask], value)
        return mask

    def _source(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        if source == "depth":
            return self.points_from_depth, self.depth_conf
        if source == "pointmap":
            return self.world_points, self.world_points_conf
        raise InputError(f"point source must be 'depth' or 'pointmap', got {source!r}")

    def point_cloud(
        self,
        conf_threshold: float | None = None,
        conf_percentile: float | None = None,
        source: str = "depth",
        max_points: int | None = None,
        seed: int = 0,
        return_conf: bool = False,
    ):
        """Coloured world points passing the confidence filter (:meth:`point_mask`).

        ``max_points`` keeps a seeded random subset (in the original order). Returns
        ``(xyz [M, 3] float32, rgb [M, 3] uint8)`` and, with ``return_conf``, ``conf [M]`` too.
        """
        points, conf = self._source(source)
        mask = self.point_mask(conf_threshold, conf_percentile, source)
        xyz = points[mask].astype(np.float32)
        rgb = self.colors[mask]
        scores = conf[mask].astype(np.float32)
        max_points = check_count(max_points, "max_points")
        seed = check_seed(seed)
        if max_points is not None and len(xyz) > max_points:
            chosen = np.sort(np.random.default_rng(seed).choice(len(xyz), size=max_points, replace=False))
            xyz, rgb, scores = xyz[chosen], rgb[chosen], scores[chosen]
        return (xyz, rgb, scores) if return_conf else (xyz, rgb)

    def _points_for_export(self, **kwargs):
        xyz, rgb, conf = self.point_cloud(return_conf=True, **kwargs)
        if len(xyz) == 0:
            points, all_conf = self._source(kwargs.get("source", "depth"))
            finite = np.isfinite(all_conf) & np.isfinite(points).all(axis=-1)
            if not finite[self.valid_mask].any():
                raise InputError(
                    "the model predicted no finite values (NaN or infinity everywhere): its weights are "
                    f"probably corrupt; check the checkpoint ({self.model_name or 'the model'})"
                )
            valid = all_conf[self.valid_mask & finite]
            best = f"{float(valid.max()):.3g}" if valid.size else "n/a"
            threshold = kwargs.get("conf_threshold")
            raise InputError(
                f"no points pass the confidence filter (threshold {threshold}, highest confidence {best}); "
                f"lower the threshold ({option('conf')}) or keep a share of the points ({option('conf_percentile_50')})"
            )
        return xyz, rgb, conf

    # -- writers ----------------------------------------------------------------------------------

    def colmap_intrinsics(self) -> np.ndarray:
        """``[S, 3, 3]`` intrinsics in original-image pixels, COLMAP convention (top-left pixel centre at 0.5)."""
        k = self.intrinsics_original.astype(np.float64).copy()
        k[:, 0, 2] += 0.5
        k[:, 1, 2] += 0.5
        return k

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as numpy arrays (the content of :meth:`save_npz`)."""
        return {
            "extrinsics": self.extrinsics,
            "intrinsics": self.intrinsics,
            "intrinsics_original": self.intrinsics_original,
            "depth": self.depth,
            "depth_conf": self.depth_conf,
            "world_points": self.world_points,
            "world_points_conf": self.world_points_conf,
            "points_from_depth": self.points_from_depth,
            "colors": self.colors,
            "valid_mask": self.valid_mask,
            "image_size": self.image_size,
            "frame_names": np.array(self.frame_names, dtype=np.str_),
            "keep": np.float32(self.keep),
            "kept_per_frame": np.array(self.kept_per_frame, dtype=np.int64),
            "tokens_per_frame": np.int64(self.tokens_per_frame),
        }

    def cameras_json(self) -> dict[str, dict]:
        """Per frame name: ``extrinsic`` (3x4 OpenCV world-to-camera), ``intrinsic`` (3x3 in
        original-image pixels, pixel centres at integers), ``image_size`` ``[H, W]`` of the original,
        ``camera_center`` (world), plus ``intrinsic_model`` and ``model_size`` ``[h, w]`` for the
        model input resolution."""
        def plain(array) -> list:  # JSON has no inf/NaN: such entries (degenerate cameras) become null
            values = np.asarray(array, dtype=np.float64)
            return np.where(np.isfinite(values), values, None).tolist()

        centres = self.camera_centers
        h, w = self.inference_hw
        out = {}
        for i, name in enumerate(self.frame_names):
            out[name] = {
                "index": i,
                "extrinsic": plain(self.extrinsics[i]),
                "intrinsic": plain(self.intrinsics_original[i]),
                "image_size": [int(v) for v in self.image_size[i]],
                "camera_center": plain(centres[i]),
                "intrinsic_model": plain(self.intrinsics[i]),
                "model_size": [h, w],
            }
        return out

    def export(
        self,
        targets: dict[str, str | os.PathLike],
        overwrite: bool = False,
        progress: bool | None = None,
        render_points: int = 150_000,
        **point_kwargs,
    ) -> dict[str, Path]:
        """Write several outputs at once, all or nothing.

        Args:
            targets: format -> path, formats from :data:`EXPORT_FORMATS`: ``ply`` (binary point
                cloud), ``glb`` (points and camera frustums), ``colmap`` (a folder of COLMAP text
                files), ``npz`` (:meth:`arrays`), ``cameras`` (:meth:`cameras_json`), ``preview`` (PNG).
            overwrite: replace outputs that exist.
            progress: a progress bar over the outputs on stderr (None: when stderr is a terminal).
            render_points: points drawn in the preview.
            point_kwargs: the point filter of :meth:`point_cloud` (confidence, source, max_points, seed).

        Every output is checked first (:func:`pacegeo.io.outputs.check_outputs`): none may be,
        contain or lie inside one of :attr:`input_paths`, whatever ``overwrite`` says. The files
        are written under temporary names and moved into place together: if anything fails (disk
        full, out of memory), none appears and existing files are untouched.

        Returns:
            format -> the path written.

        Raises:
            OutputError: a refused or failed output (nothing written).
            InputError: an unknown format, or no points pass the filter.
        """
        from pacegeo.io.outputs import OutputSet

        unknown = sorted(set(targets) - set(EXPORT_FORMATS))
        if unknown:
            raise InputError(f"unknown export format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)}")
        specs = {fmt: export_spec(fmt, path) for fmt, path in targets.items()}
        start = time.perf_counter()
        with OutputSet(list(specs.values()), self.input_paths, overwrite) as outputs:
            points = None
            if {"ply", "glb", "colmap"} & set(specs):
                points = self._points_for_export(**point_kwargs)
            for fmt in progress_bar(list(specs), progress_enabled(progress), desc="writing", unit="file"):
                staged = outputs.staged(specs[fmt])
                if fmt == "colmap":
                    self._write(fmt, staged, points, render_points, point_kwargs)
                    continue
                with open(staged, "wb") as handle:
                    self._write(fmt, handle, points, render_points, point_kwargs)
                    handle.flush()
                    os.fsync(handle.fileno())
        written = {fmt: spec.path for fmt, spec in specs.items()}
        self.timings["export"] = self.timings.get("export", 0.0) + time.perf_counter() - start
        self.files_written.extend(written.values())
        return written

    def _write(self, fmt: str, target, points, render_points: int, point_kwargs: dict) -> None:
        """Stream format ``fmt`` into ``target`` (an open binary file; a folder for COLMAP)."""
        from pacegeo.io import export, preview

        if fmt == "ply":
            export.ply_into(target, points[0], points[1])
        elif fmt == "glb":
            export.glb_into(target, points[0], points[1], self.extrinsics, self.intrinsics, self.inference_hw, self.frame_names)
        elif fmt == "colmap":
            xyz, rgb, conf = points
            export.colmap_into(
                target, self.extrinsics, self.colmap_intrinsics(), self.image_size, self.frame_names, xyz, rgb,
                errors=1.0 / np.maximum(conf, 1e-6),
            )
        elif fmt == "npz":
            export.npz_into(target, self.arrays())
        elif fmt == "cameras":
            export.json_into(target, self.cameras_json())
        elif fmt == "preview":
            xyz, rgb = self.point_cloud(**point_kwargs)
            kept = self.kept_per_frame
            title = (
                f"{len(self)} frames, {Path(self.model_name).name or 'model'}, keep {self.keep:g} "
                f"({kept[-1] if kept else 0}/{self.tokens_per_frame} tokens per frame), {len(xyz):,} points"
            )
            preview.preview_into(
                target, xyz, rgb, self.extrinsics, self.intrinsics, self.inference_hw, title=title,
                max_points=render_points, seed=int(point_kwargs.get("seed", 0)),
            )

    def save_ply(self, path: str | os.PathLike, **point_kwargs) -> Path:
        """Write the coloured point cloud (:meth:`point_cloud` arguments) as a binary PLY, OpenCV
        world frame; an existing file is replaced (see :meth:`export` for the checks)."""
        return self.export({"ply": path}, overwrite=True, progress=False, **point_kwargs)["ply"]

    def save_glb(self, path: str | os.PathLike, **point_kwargs) -> Path:
        """Write a GLB scene: coloured points plus a wireframe frustum per camera, converted from
        OpenCV to glTF's y-up convention; an existing file is replaced."""
        return self.export({"glb": path}, overwrite=True, progress=False, **point_kwargs)["glb"]

    def save_colmap(self, folder: str | os.PathLike, overwrite: bool = False, **point_kwargs) -> Path:
        """Write a COLMAP text model (cameras.txt, images.txt, points3D.txt) into ``folder``.

        One PINHOLE camera per frame in original-image pixels; poses are world-to-camera (qvec
        wxyz, tvec); points carry RGB and an error of ``1 / confidence`` and no tracks. An existing
        folder is replaced only with ``overwrite``.
        """
        return self.export({"colmap": folder}, overwrite=overwrite, progress=False, **point_kwargs)["colmap"]

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write :meth:`arrays` as a compressed ``.npz`` (``np.load(path)``; names are a str array)."""
        return self.export({"npz": path}, overwrite=True, progress=False)["npz"]

    def save_cameras_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`cameras_json` as indented JSON."""
        return self.export({"cameras": path}, overwrite=True, progress=False)["cameras"]

    def save_preview(self, path: str | os.PathLike, render_points: int = 150_000, **point_kwargs) -> Path:
        """Write a PNG with a perspective splat, a top and a side view of the coloured points
        (:meth:`point_cloud` arguments; at most ``render_points`` drawn), with the cameras drawn
        (:func:`pacegeo.io.preview.preview_into`)."""
        return self.export({"preview": path}, overwrite=True, progress=False, render_points=render_points, **point_kwargs)["preview"]


#: Export formats: name -> (kind, suffix, what messages call it).
EXPORT_FORMATS: dict[str, tuple[str, str, str]] = {
    "ply": ("file", ".ply", "point cloud"),
    "glb": ("file", ".glb", "GLB scene"),
    "colmap": ("folder", "", "COLMAP folder"),
    "npz": ("file", ".npz", "array file"),
    "cameras": ("file", ".json", "camera file"),
    "preview": ("file", ".png", "preview"),
}


def export_spec(fmt: str, path: str | os.PathLike):
    """The :class:`pacegeo.io.outputs.OutputSpec` of writing format ``fmt`` to ``path``."""
    from pacegeo.io.outputs import OutputSpec

    kind, suffix, what = EXPORT_FORMATS[fmt]
    return OutputSpec(Path(path), kind=kind, suffixes=(suffix,) if suffix else (), what=what)
