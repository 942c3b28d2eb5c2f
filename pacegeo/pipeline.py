"""End-to-end reconstruction: images or a video in, cameras, depth and coloured points out.

::

    from pacegeo import Pipeline

    pipe = Pipeline.from_pretrained()                       # VGGT-1B if cached, else pacegeo-tiny
    rec = pipe.reconstruct("examples/synthrooms-16", keep=0.3)
    rec.save_ply("scene.ply")                               # binary PLY, RGB
    rec.save_glb("scene.glb")                               # points + camera frustums (glTF, y up)
    rec.save_colmap("scene_colmap")                         # COLMAP text model
    xyz, rgb = rec.point_cloud()                            # [M, 3] float32, [M, 3] uint8 (least confident half dropped)

The pieces: inputs (:mod:`pacegeo.io.inputs`), model and pruner resolution (:mod:`pacegeo.models`),
the precision rule (:mod:`pacegeo.precision`), the memory preflight, the pruned forward
(:mod:`pacegeo.pace`) and the result (:mod:`pacegeo.reconstruction`, whose docstring gives the
conventions of every array).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from pacegeo.errors import InputError, option
from pacegeo.io.inputs import PreparedInputs, check_input, input_paths, prepare_inputs, select_frames
from pacegeo.memory import MemoryEstimate, estimate_peak_memory
from pacegeo.preflight import check_fits
from pacegeo.system import available_memory, release_host_memory
from pacegeo.models import TINY_NOTICE, ModelChoice, build_pruner, resolve_device, resolve_model
from pacegeo.options import check_keep, check_seed
from pacegeo.sequence.spans import check_chunking
from pacegeo.precision import dtype_name, resolve_dtype
from pacegeo.pruning.early import check_encoder_layer
from pacegeo.pruning.global_merge import GlobalMergeConfig, global_merging, merge_config
from pacegeo.progress import progress_bar, progress_enabled
from pacegeo.system import peak_rss_bytes, rss_bytes
from pacegeo.reconstruction import DEFAULT_CONF_PERCENTILE, EXPORT_FORMATS, Reconstruction, check_point_filter, export_spec

logger = logging.getLogger(__name__)

DEFAULT_KEEP = 0.3
POST_CHUNK = 4  # frames per chunk of the host-side post-processing (unprojection, colours)

__all__ = [
    "DEFAULT_CONF_PERCENTILE",
    "DEFAULT_KEEP",
    "EXPORT_FORMATS",
    "TINY_NOTICE",
    "check_input",
    "check_point_filter",
    "export_spec",
    "input_paths",
    "resolve_device",
    "MemoryEstimate",
    "ModelChoice",
    "Pipeline",
    "PreparedInputs",
    "Reconstruction",
    "available_memory",
    "estimate_peak_memory",
    "prepare_inputs",
    "resolve_model",
    "select_frames",
]


class Pipeline:
    """A loaded backbone (and optional pruner) that turns images into a :class:`Reconstruction`.

    Build one with :meth:`from_pretrained`. Attributes: ``backbone`` (frozen
    :class:`pacegeo.backbone.VGGT`), ``pruner`` (:class:`pacegeo.pace.PaceVGGT` or None),
    ``device``, ``amp_dtype`` (None = float32), ``target_size`` and ``preprocess_mode`` (inference
    resolution), ``model`` (:class:`ModelChoice`), ``notice`` (a line for the user, or None) and
    ``load_seconds``.
    """

    def __init__(
        self,
        backbone,
        pruner=None,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        target_size: int = 518,
        preprocess_mode: str = "crop",
        model: ModelChoice | None = None,
        notice: str | None = None,
        load_seconds: float = 0.0,
        pruner_path: Path | None = None,
    ) -> None:
        self.backbone = backbone
        self.pruner = pruner
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.target_size = int(target_size)
        self.preprocess_mode = preprocess_mode
        self.model = model
        self.notice = notice
        self.load_seconds = float(load_seconds)
        self.pruner_path = None if pruner_path is None else Path(pruner_path)
        self.map_store = None  # the map of the last build_map / load_map, for localize
        #: token merging inside global attention (FastVGGT-style), on top of any pruning; None: off
        self.global_merge: GlobalMergeConfig | None = None

    @property
    def config(self):
        return self.backbone.config

    @property
    def weight_paths(self) -> list[Path]:
        """The weight files this pipeline was loaded from (backbone, pruner)."""
        paths = [] if self.model is None else [Path(self.model.path)]
        return paths + ([self.pruner_path] if self.pruner_path is not None else [])

    @property
    def pruner_mode(self) -> str | None:
        return None if self.pruner is None else self.pruner.mode

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | ModelChoice = "auto",
        pruner: str | os.PathLike | None = "auto",
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = "auto",
        target_size: int | None = None,
        global_merge: float = 0.0,
        encoder_layer: int | None = None,
    ) -> "Pipeline":
        """Load a backbone and a pruner.

        Args:
            model: ``"auto"`` (VGGT-1B when cached locally, else the bundled ``pacegeo-tiny``, with
                :attr:`notice` saying what that means), ``"vggt-1b"``, ``"pacegeo-tiny"``, a hub id or
                a checkpoint path.
            pruner: ``"auto"`` (the bundled trained pruner ``<model>-pruner.safetensors`` for this
                backbone if present, else ``"training-free"``), ``"training-free"``, ``"random"``,
                ``"grid"``, a pruner checkpoint path, or ``"none"``/None (no pruning: ``keep`` must be 1).
            device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
            dtype: autocast dtype of the whole forward, resolved by
                :func:`pacegeo.precision.resolve_dtype` (``"auto"``: bf16 on CUDA with compute
                capability >= 8.0, fp16 below; on the CPU bf16 where it has native bf16 matrix
                instructions, else float32; or float32/bfloat16/float16).
            target_size: inference width (crop) or longer side (pad); default from the checkpoint's
                ``preprocess`` metadata, else 518.
            global_merge: share of tokens merged inside every global-attention block
                (:mod:`pacegeo.pruning.global_merge`, training-free, after FastVGGT); 0 is off. It
                combines with ``keep`` (pre-AA pruning first, then merging in the global blocks).
            encoder_layer: prune inside the DINO encoder after this many of its blocks
                (:mod:`pacegeo.pruning.early`: the later encoder blocks also run on the kept
                tokens); None (default) prunes after the encoder, before the AA stack.

        Raises:
            CheckpointError: weights not found, unreadable or of the wrong architecture.
            InputError: bad device, dtype, target size or pruner name.
        """
        from pacegeo.hub import load_backbone

        start = time.perf_counter()
        resolved_device = resolve_device(device)
        amp = resolve_dtype(dtype, resolved_device)
        choice = resolve_model(model)
        size = choice.target_size if target_size is None else target_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 14 or size % 14:
            raise InputError(f"target size must be a positive multiple of 14, got {size!r}")
        logger.info("loading %s from %s on %s", choice.name, choice.path, resolved_device)
        backbone = load_backbone(choice.path, device=resolved_device)
        backbone.requires_grad_(False)

        pace, pruner_path = build_pruner(backbone, pruner, amp)
        merge = merge_config(global_merge)
        if encoder_layer is not None:
            if pace is None:
                raise InputError(f"{option('encoder_layer')} needs a pruner; drop it or choose a pruner")
            pace.encoder_layer = check_encoder_layer(backbone, encoder_layer)
        pipe = cls(
            backbone,
            pruner=pace,
            device=resolved_device,
            amp_dtype=amp,
            target_size=size,
            preprocess_mode=choice.preprocess_mode,
            model=choice,
            notice=choice.notice,
            load_seconds=time.perf_counter() - start,
            pruner_path=pruner_path,
        )
        pipe.global_merge = merge
        return pipe

    # -- memory -----------------------------------------------------------------------------------

    def estimate_memory(
        self, frames: int, image_hw: tuple[int, int], keep: float, inputs_resident: int = 0
    ) -> MemoryEstimate:
        """:func:`pacegeo.memory.estimate_peak_memory` for this pipeline's model, pruner, device and
        dtype. On the CPU the process's current resident set, less weights and the
        ``inputs_resident`` bytes of images already loaded, is the runtime baseline."""
        weights = sum(p.numel() * p.element_size() for p in self.backbone.parameters())
        chunks = {}
        if self.pruner is not None:
            weights += sum(p.numel() * p.element_size() for p in self.pruner.pruner_parameters())
            chunks = {"frames_chunk": self.pruner.frames_chunk, "heads_chunk": self.pruner.heads_chunk}
        runtime = 0
        if self.device.type == "cpu":
            rss = rss_bytes()
            runtime = max(0, rss - weights - inputs_resident) if rss is not None else 0
        return estimate_peak_memory(
            self.config, frames, image_hw, keep, self.amp_dtype, weights_bytes=weights,
            device=self.device.type, runtime_bytes=runtime, **chunks,
        )

    def check_memory(
        self, frames: int, image_hw: tuple[int, int], keep: float, inputs_resident: int = 0
    ) -> MemoryEstimate:
        """Raise :class:`InputError` when the estimated peak will not fit in the device's free
        memory, saying what would (:func:`pacegeo.preflight.check_fits`). Returns the estimate."""
        return check_fits(lambda s, k: self.estimate_memory(s, image_hw, k, inputs_resident), self.config,
                          self.device, frames, image_hw, keep, prunable=self.pruner is not None)

    # -- inference --------------------------------------------------------------------------------

    def prepare(
        self,
        inputs,
        mode: str | None = None,
        frames: int | None = None,
        stride: int | None = None,
        fps: float | None = None,
        strict: bool = False,
        progress: bool | None = None,
    ) -> PreparedInputs:
        """:func:`prepare_inputs` at this pipeline's resolution (``mode`` default: the model's)."""
        return prepare_inputs(inputs, mode or self.preprocess_mode, self.target_size, frames, stride, fps, strict, progress)

    def reconstruct(
        self,
        images_or_paths_or_folder,
        keep: float = DEFAULT_KEEP,
        mode: str | None = None,
        frames: int | None = None,
        stride: int | None = None,
        seed: int = 0,
        strict: bool = False,
        progress: bool | None = None,
        fps: float | None = None,
        check_memory: bool = True,
        chunk: int | None = None,
        overlap: int | None = None,
        work_dir: str | os.PathLike | None = None,
        loops: bool = False,
    ) -> Reconstruction | None:
        """Reconstruct cameras, depth and points from images or a video.

        Args:
            images_or_paths_or_folder: a folder of images, a video file, image paths, in-memory
                images, or a :class:`PreparedInputs` from :meth:`prepare`.
            keep: fraction of patch tokens each frame keeps, in ``(0, 1]``; 1 runs the unpruned model.
            mode: ``"crop"`` or ``"pad"`` preprocessing (default: the model's, usually crop).
            frames, stride: use ``frames`` evenly spread frames or every ``stride``-th frame.
            seed: seed of any randomness (the random pruning baseline); results are deterministic.
            strict: fail on an unreadable image instead of skipping it.
            progress: progress bars on stderr (None: when stderr is a terminal).
            fps: video sampling rate (frames per second of video; default 2).
            check_memory: run the memory preflight.
            chunk, overlap: reconstruct at most ``chunk`` frames per forward pass, consecutive
                chunks sharing ``overlap`` frames (default ``max(3, chunk // 4)``), and stitch the
                chunks into one reconstruction (:func:`pacegeo.sequence.reconstruct_in_chunks`).
                None: one pass over all frames.
            work_dir: with ``chunk``, keep finished chunks in this folder so that a failed run
                resumes when rerun; required when the run is spread over processes with
                ``accelerate launch``, where only process 0 returns the reconstruction (the others
                return None).
            loops: with ``chunk``, close loops: frames of distant chunks that the place-recognition
                head finds alike are reconstructed together, and verified loops pull the chunks
                into place through a robust Sim(3) pose graph (:mod:`pacegeo.sequence.loops`).

        Raises:
            InputError: bad inputs or options, or not enough memory (the message says what fits).
        """
        keep = check_keep(keep)
        seed = check_seed(seed)
        chunk, overlap = check_chunking(chunk, overlap, work_dir, loops)
        if self.pruner is None and keep < 1.0:
            raise InputError(f"keep {keep:g} needs a pruner, but this pipeline was loaded with pruner='none'; use keep=1")
        if isinstance(images_or_paths_or_folder, PreparedInputs):
            prepared = images_or_paths_or_folder
        else:
            prepared = self.prepare(images_or_paths_or_folder, mode, frames, stride, fps, strict, progress)
        if chunk is not None and (chunk < len(prepared) or work_dir is not None):
            from pacegeo.sequence import reconstruct_in_chunks

            descriptors = None
            if loops:
                from pacegeo.localize.extractors import vpr_extractor

                extractor = vpr_extractor(self)[0]
                descriptors = extractor.describe(prepared.images, keep=keep).numpy()
            return reconstruct_in_chunks(self, prepared, chunk, overlap, keep, seed, progress, check_memory,
                                         work_dir=work_dir, loop_descriptors=descriptors)
        frames_count = len(prepared)
        image_hw = prepared.image_hw
        loaded = prepared.images.numel() * prepared.images.element_size()
        preflight = self.check_memory if check_memory else self.estimate_memory
        estimate = preflight(frames_count, image_hw, keep, loaded)

        try:
            with torch.inference_mode():
                out, seconds, stage_times, peak, peak_kind = self._forward(prepared.images, keep, seed, progress)
                release_host_memory()  # what the forward freed, before the host post-processing allocates
                rec = self._to_reconstruction(prepared, out, keep)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
            text = str(err)
            if not isinstance(err, (torch.OutOfMemoryError, MemoryError)) and "memory" not in text.lower():
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise InputError(
                f"ran out of memory on {self.device} during inference ({frames_count} frames at "
                f"{image_hw[1]}x{image_hw[0]}, keep {keep:g}); try a lower {option('keep')} or fewer frames ({option('frames_or_stride')})"
            ) from None
        rec.timings = {
            "load": self.load_seconds,
            "preprocess": prepared.seconds,
            "inference": seconds,
            **{f"inference/{k}": v for k, v in stage_times.items()},
            "export": 0.0,
        }
        rec.peak_memory, rec.peak_memory_kind, rec.memory_estimate = peak, peak_kind, estimate.total
        return rec

    def _forward(self, images: torch.Tensor, keep: float, seed: int, progress: bool | None = None):
        from pacegeo.stages import STAGES, StageClock, backbone_forward_staged, listen_stages

        device = self.device
        batch = images.to(device, non_blocking=True)[None]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        stages = len(STAGES) if self.pruner is not None and keep < 1.0 else 3
        bar = progress_bar(None, progress_enabled(progress), total=stages, desc="inference", unit="stage")

        def finished(stage: str) -> None:
            bar.update(1)
            bar.set_postfix_str(stage)

        grid_w = images.shape[-1] // 14 if self.pruner is None or keep >= 1.0 else None  # 2-D cells on a full grid
        merging = global_merging(self.backbone.aggregator, self.global_merge, images.shape[0], grid_w)
        with bar, listen_stages(finished), merging, torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            start = time.perf_counter()
            if self.pruner is not None:
                self.pruner.seed = seed
                # On an accelerator the dense predictions leave it chunk by chunk (they go to the host anyway).
                out = self.pruner(batch, keep=keep, timings=True, output_device="cpu" if device.type != "cpu" else None)
            else:
                clock = StageClock(device, True)
                out = backbone_forward_staged(self.backbone, batch, clock, self.amp_dtype)
                out["pruning"] = {"timings": dict(clock.times)}
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        if device.type == "cuda":
            peak, kind = int(torch.cuda.max_memory_allocated(device)), "CUDA allocated"
        else:
            peak, kind = peak_rss_bytes(), "process RSS"
        stage_times = dict(out.get("pruning", {}).get("timings", {}))
        return out, seconds, stage_times, peak, kind

    def _to_reconstruction(self, prepared: PreparedInputs, out: dict, keep: float) -> Reconstruction:
        """Numpy float32 arrays from the model outputs; the dense outputs are taken out of ``out``
        one by one, so that an output in another dtype is freed once converted."""
        from pacegeo.geometry import pose_encoding_to_extri_intri, unproject_depth_map_to_point_map

        h, w = prepared.image_hw
        pose = out["pose_enc"][0].float()
        extrinsics, intrinsics = pose_encoding_to_extri_intri(pose, (h, w))
        extrinsics = extrinsics.float().cpu().numpy()
        intrinsics = intrinsics.float().cpu().numpy()
        depth = out.pop("depth")[0, ..., 0].float().cpu().numpy()
        depth_conf = out.pop("depth_conf")[0].float().cpu().numpy()
        if "world_points" in out:
            world_points = out.pop("world_points")[0].float().cpu().numpy()
            world_points_conf = out.pop("world_points_conf")[0].float().cpu().numpy()
        else:  # a backbone without a point head
            world_points = np.full(depth.shape + (3,), np.nan, np.float32)
            world_points_conf = np.zeros_like(depth_conf)
        # Frame chunk by frame chunk (the same numbers): the unprojection computes in float64.
        from_depth = np.empty(depth.shape + (3,), np.float32)
        colors = np.empty(depth.shape + (3,), np.uint8)
        for start in range(0, len(depth), POST_CHUNK):
            part = slice(start, start + POST_CHUNK)
            from_depth[part] = unproject_depth_map_to_point_map(depth[part], extrinsics[part], intrinsics[part])
            rgb = prepared.images[part].permute(0, 2, 3, 1).clamp(0, 1) * 255
            colors[part] = rgb.round_().to(torch.uint8).numpy()
        valid = np.zeros(depth.shape, dtype=bool)
        for i, transform in enumerate(prepared.transforms):
            x0, y0, x1, y1 = transform.content_box
            valid[i, y0:y1, x0:x1] = True
        # A @ K for the affine pixel map A of each frame, written out so that a degenerate
        # (infinite) focal length of an untrained model does not turn into NaN through 0 * inf.
        affine = np.stack([t.model_to_original_matrix("center") for t in prepared.transforms])
        k64 = intrinsics.astype(np.float64)
        intrinsics_original = k64.copy()
        intrinsics_original[:, 0, :] = affine[:, 0, :1] * k64[:, 0, :] + affine[:, 0, 2:3] * k64[:, 2, :]
        intrinsics_original[:, 1, :] = affine[:, 1, 1:2] * k64[:, 1, :] + affine[:, 1, 2:3] * k64[:, 2, :]
        image_size = np.array([t.original_hw for t in prepared.transforms], dtype=np.int64)
        stats = {k: v for k, v in out.get("pruning", {}).items() if k != "timings"}
        return Reconstruction(
            depth=depth,
            depth_conf=depth_conf,
            world_points=world_points,
            world_points_conf=world_points_conf,
            points_from_depth=from_depth,
            colors=colors,
            valid_mask=valid,
            extrinsics=extrinsics,
            intrinsics=intrinsics,
            intrinsics_original=intrinsics_original,
            image_size=image_size,
            frame_names=list(prepared.names),
            keep=keep,
            pruning=stats,
            model_name=self.model.name if self.model is not None else self.config.name,
            pruner_mode=self.pruner_mode,
            device=str(self.device),
            dtype=dtype_name(self.amp_dtype),
            preprocess_mode=prepared.mode,
            skipped=list(prepared.skipped),
            input_paths=[*prepared.paths, *self.weight_paths],
        )

    # -- localization -----------------------------------------------------------------------------

    def build_map(
        self,
        frames,
        keep: float = 0.5,
        chunk: int | None = None,
        overlap: int | None = None,
        vpr: str | os.PathLike = "auto",
        seed: int = 0,
        progress: bool | None = None,
    ):
        """Reconstruct and describe a map sequence: :func:`pacegeo.localize.build_map`.

        Returns a :class:`pacegeo.localize.MapStore` (also kept as :attr:`map_store` for
        :meth:`localize`): descriptors, OpenCV camera-to-world poses in the first map frame's
        camera frame, intrinsics and the map images at the model input resolution.
        """
        from pacegeo.localize import build_map

        self.map_store = build_map(self, frames, keep=keep, chunk=chunk, overlap=overlap, vpr=vpr, seed=seed, progress=progress)
        return self.map_store

    def load_map(self, path: str | os.PathLike):
        """Read a map file (:meth:`pacegeo.localize.MapStore.load`), check that it was built with
        this pipeline's backbone, and keep it as :attr:`map_store`."""
        from pacegeo.localize import MapStore

        store = MapStore.load(path)
        store.check_model(self)
        self.map_store = store
        return store

    def localize(
        self,
        query_images,
        store=None,
        top_k: int = 4,
        keep: float = 0.5,
        seed: int = 0,
        progress: bool | None = None,
    ) -> list:
        """Place query images in a map: :func:`pacegeo.localize.localize`.

        Args:
            query_images: anything :meth:`reconstruct` accepts, except a video.
            store: a :class:`pacegeo.localize.MapStore` or a map file (default: :attr:`map_store`,
                the map of the last :meth:`build_map` or :meth:`load_map`).
            top_k: map frames retrieved and reconstructed together with each query.
            keep: fraction of patch tokens kept (query descriptors and joint reconstructions).

        Returns:
            one :class:`pacegeo.localize.Localization` per query: OpenCV camera-to-world pose in
            the map frame, retrieved map frames and scores, confidence, retrieval-only pose.
        """
        from pacegeo.localize import localize

        if store is None:
            store = self.map_store
        if store is None:
            raise InputError("no map to localize in: build one with build_map or pass a map file")
        return localize(self, store, query_images, top_k=top_k, keep=keep, seed=seed, progress=progress)
