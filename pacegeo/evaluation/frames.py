"""Forward passes, predictions and frames prepared with ground truth on the model-input grid."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pacegeo.errors import InputError

logger = logging.getLogger("pacegeo.evaluation")

from pacegeo.evaluation.models import EvalModel
from pacegeo.evaluation.results import to_jsonable


@dataclass
class Prediction:
    """Model predictions for one sequence of ``S`` frames at model resolution ``H x W`` (numpy).

    Attributes:
        extrinsics: ``[S, 3, 4]`` world-to-camera; the predicted world is camera 0's frame.
        intrinsics: ``[S, 3, 3]`` in model-input pixels.
        depth: ``[S, H, W]`` z-depth (model units).
        depth_conf: ``[S, H, W]`` depth confidence (``1 + exp(.)``, so >= 1).
        world_points: ``[S, H, W, 3]`` point-map head output in the predicted world, or None.
        world_points_conf: ``[S, H, W]`` or None.
    """

    extrinsics: np.ndarray
    intrinsics: np.ndarray
    depth: np.ndarray
    depth_conf: np.ndarray
    world_points: np.ndarray | None = None
    world_points_conf: np.ndarray | None = None

    @property
    def cam_to_world(self) -> np.ndarray:
        """``[S, 4, 4]`` camera-to-world poses (inverse of :attr:`extrinsics`)."""
        from pacegeo.geometry.transforms import invert_se3

        return invert_se3(self.extrinsics)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def outputs_to_prediction(outputs: dict, image_hw: tuple[int, int]) -> Prediction:
    """Convert a model output dict (batch of one) to a :class:`Prediction`."""
    from pacegeo.geometry import pose_encoding_to_extri_intri

    pose_enc = outputs["pose_enc"].float()
    extrinsics, intrinsics = pose_encoding_to_extri_intri(pose_enc, image_hw)
    depth = outputs["depth"]
    if depth.shape[-1] == 1:
        depth = depth[..., 0]
    points = outputs.get("world_points")
    points_conf = outputs.get("world_points_conf")
    return Prediction(
        extrinsics=_np(extrinsics[0]).astype(np.float64),
        intrinsics=_np(intrinsics[0]).astype(np.float64),
        depth=_np(depth[0]),
        depth_conf=_np(outputs["depth_conf"][0]),
        world_points=None if points is None else _np(points[0]),
        world_points_conf=None if points_conf is None else _np(points_conf[0]),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(model: EvalModel, images: torch.Tensor, keep: float) -> dict:
    """One forward pass. ``PaceVGGT`` applies its own autocast (:func:`pacegeo.precision.resolve_dtype`
    of ``"auto"``); the bare backbone gets the same autocast here, so that ``keep = 1`` with and
    without a pruner runs the same computation."""
    if model.pruned:
        return model(images, keep)
    from pacegeo.precision import autocast, resolve_dtype

    with autocast(model.device, resolve_dtype("auto", model.device)):
        return model(images, keep)


@torch.inference_mode()
def timed_forward(model: EvalModel, images: torch.Tensor, keep: float, warmup: int = 0) -> tuple[dict, float]:
    """Run the model on ``[S, 3, H, W]`` images and time the forward pass only.

    The images are moved to the device before the clock starts; ``warmup`` untimed passes run
    first. The call runs under the autocast of :func:`pacegeo.precision.resolve_dtype` (``"auto"``;
    on CUDA the heads stay float32) and is bracketed by ``torch.cuda.synchronize()`` on CUDA.

    Returns:
        ``(outputs, latency_ms)``.
    """
    images = images.to(model.device, non_blocking=True)
    for _ in range(max(0, int(warmup))):
        _forward(model, images, keep)
    _sync(model.device)
    start = time.perf_counter()
    outputs = _forward(model, images, keep)
    _sync(model.device)
    latency_ms = (time.perf_counter() - start) * 1000.0
    return outputs, latency_ms


def pruning_stats(outputs: dict) -> dict:
    """JSON-friendly copy of the ``"pruning"`` entry of a pruned model's outputs (empty otherwise)."""
    stats = outputs.get("pruning")
    if stats is None:
        return {}
    if not isinstance(stats, dict):
        stats = getattr(stats, "__dict__", {"value": str(stats)})
    return {k: to_jsonable(v) for k, v in stats.items() if _small(v)}


def _small(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.numel() <= 64
    if isinstance(v, np.ndarray):
        return v.size <= 64
    return True


@dataclass
class PreparedFrames:
    """One sequence ready for the model, with ground truth on the model-input pixel grid.

    Attributes:
        names: frame names.
        images: ``[S, 3, H, W]`` float32 in [0, 1].
        cam_to_world: ``[S, 4, 4]`` ground-truth camera-to-world poses.
        depth: ``[S, H, W]`` ground-truth depth resampled (nearest) onto the model grid, 0 = invalid;
            None when the frames carry no depth.
        intrinsics: ``[S, 3, 3]`` ground-truth colour intrinsics expressed in model-input pixels.
    """

    names: list[str]
    images: torch.Tensor
    cam_to_world: np.ndarray
    depth: np.ndarray | None
    intrinsics: np.ndarray

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])


def resample_depth(
    depth: np.ndarray, K_depth: np.ndarray, K_color: np.ndarray, transform, out_hw: tuple[int, int]
) -> np.ndarray:
    """Nearest-neighbour resampling of a depth map onto the model-input pixel grid.

    Model pixel ``(x, y)`` maps to the original colour image through ``transform``
    (:class:`pacegeo.io.images.ImageTransform`, pixel-centre convention), then to the depth image
    through ``K_depth K_color^-1`` (colour and depth share the camera centre and orientation).

    Args:
        depth: ``[Hd, Wd]`` metres, 0 invalid.
        K_depth, K_color: ``[3, 3]`` intrinsics of the depth and colour images.
        out_hw: ``(H, W)`` of the model input.

    Returns:
        ``[H, W]`` float32 depth (0 where invalid or outside the depth image).
    """
    h, w = out_hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    uv = np.stack([xs, ys], axis=-1)
    orig = np.asarray(transform.to_original(uv, "center"), dtype=np.float64)
    homog = np.concatenate([orig, np.ones_like(orig[..., :1])], axis=-1)
    M = np.asarray(K_depth, dtype=np.float64) @ np.linalg.inv(np.asarray(K_color, dtype=np.float64))
    pd = homog @ M.T
    ud = np.rint(pd[..., 0] / pd[..., 2]).astype(np.int64)
    vd = np.rint(pd[..., 1] / pd[..., 2]).astype(np.int64)
    hd, wd = depth.shape
    inside = (ud >= 0) & (ud < wd) & (vd >= 0) & (vd < hd)
    out = np.zeros((h, w), dtype=np.float32)
    out[inside] = depth[vd[inside], ud[inside]]
    out[~np.isfinite(out)] = 0.0
    return out


def prepare_frames(frames, size: int, with_depth: bool = True) -> PreparedFrames:
    """Preprocess a :class:`pacegeo.data.frames.FrameSequence` for the model (VGGT "crop" mode).

    The width becomes ``size`` and the height keeps the aspect ratio rounded to a multiple of 14
    (centre-cropped to ``size`` if taller). Ground-truth intrinsics follow the same per-image
    transform exactly; ground-truth depth is resampled with :func:`resample_depth`.
    """
    from pacegeo.io.images import preprocess_image

    names, images, poses, Ks, depths = [], [], [], [], []
    for frame in frames:
        image, transform = preprocess_image(frame.image, mode="crop", target_size=size, source=str(frame.name))
        images.append(image)
        names.append(str(frame.name))
        poses.append(np.asarray(frame.cam_to_world, dtype=np.float64))
        Ks.append(np.asarray(transform.intrinsics_to_model(np.asarray(frame.K, dtype=np.float64)), dtype=np.float64))
        if with_depth and frame.depth is not None:
            depths.append(resample_depth(frame.depth, frame.depth_K, frame.K, transform, tuple(image.shape[-2:])))
    if not images:
        raise InputError("no frames to evaluate")
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise InputError(f"frames of one sequence have different sizes after preprocessing: {sorted(shapes)}")
    depth = np.stack(depths) if with_depth and len(depths) == len(images) else None
    return PreparedFrames(names, torch.stack(images), np.stack(poses), depth, np.stack(Ks))
