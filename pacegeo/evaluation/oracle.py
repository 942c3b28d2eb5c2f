"""A stand-in for the model that returns ground truth: it checks the chunking and alignment
machinery (:mod:`pacegeo.sequence`) apart from any model error.

:class:`GroundTruthReconstructor` has the :meth:`Pipeline.reconstruct` signature the chunked
reconstruction calls. For any subset of frames it returns the true depth, cameras and points
expressed, as a model would, in the subset's first camera frame and at a scale of its own (which
changes from call to call), so stitching must recover both the frame and the scale.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from pacegeo.geometry import unproject_depth_map_to_point_map
from pacegeo.geometry.transforms import invert_se3
from pacegeo.reconstruction import Reconstruction

__all__ = ["GroundTruthReconstructor"]


class GroundTruthReconstructor:
    """Ground-truth "reconstructions" of frames named in ``names``.

    Args:
        depths: ``[S, H, W]`` true z-depth (0 = invalid).
        intrinsics: ``[3, 3]`` or ``[S, 3, 3]``.
        cam_to_world: ``[S, 4, 4]`` true camera-to-world poses.
        names: the frame names of the prepared inputs, in order.
    """

    model, pruner, pruner_mode, amp_dtype, device = None, None, None, None, "cpu"
    config = SimpleNamespace(name="ground truth")
    weight_paths: list = []

    def __init__(self, depths: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray, names: list[str]):
        self.depths = np.asarray(depths, np.float64)
        k = np.asarray(intrinsics, np.float64)
        self.intrinsics = np.broadcast_to(k, (len(self.depths), 3, 3)) if k.ndim == 2 else k
        self.c2w = np.asarray(cam_to_world, np.float64)
        self.index = {name: i for i, name in enumerate(names)}
        self.backbone = torch.nn.Identity()
        self.calls = 0

    def reconstruct(self, prepared, keep: float = 1.0, seed: int = 0, progress=None, check_memory: bool = True) -> Reconstruction:
        idx = np.array([self.index[n] for n in prepared.names])
        self.calls += 1
        scale = 0.5 + 0.37 * (self.calls % 5)  # a scale of its own for every call
        c2w = np.einsum("ij,sjk->sik", invert_se3(self.c2w[idx[0]]), self.c2w[idx])
        c2w[:, :3, 3] *= scale
        depth = self.depths[idx] * scale
        s, h, w = depth.shape
        K = self.intrinsics[idx]
        points = unproject_depth_map_to_point_map(depth, invert_se3(c2w)[:, :3], K)
        valid = depth > 0
        conf = np.where(valid, 2.0, 0.0).astype(np.float32)
        return Reconstruction(
            depth=depth.astype(np.float32), depth_conf=conf, world_points=points.astype(np.float32), world_points_conf=conf,
            points_from_depth=points.astype(np.float32), colors=np.zeros((s, h, w, 3), np.uint8), valid_mask=valid,
            extrinsics=invert_se3(c2w)[:, :3, :4].astype(np.float32), intrinsics=K.astype(np.float32),
            intrinsics_original=K.copy(), image_size=np.tile([h, w], (s, 1)), frame_names=list(prepared.names), keep=keep,
        )
