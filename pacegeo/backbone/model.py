"""The VGGT-style model: aggregator plus camera, depth and point heads."""

import contextlib

import torch
from torch import nn

from pacegeo.backbone.aggregator import Aggregator
from pacegeo.backbone.camera_head import CameraHead
from pacegeo.backbone.config import VGGTConfig
from pacegeo.backbone.dpt_head import DPTHead


def heads_autocast_off(device: torch.device):
    """On CUDA the heads compute in float32 even when the caller runs the model under autocast
    (as the official VGGT does); elsewhere they follow the caller's autocast."""
    if device.type == "cuda":
        return torch.autocast("cuda", enabled=False)
    return contextlib.nullcontext()


class VGGT(nn.Module):
    """Feed-forward multi-view geometry model.

    ``forward(images)`` takes ``[B, S, 3, H, W]`` (or ``[S, 3, H, W]``) RGB in [0, 1], H and W
    multiples of the patch size, and returns a dict:

    * ``pose_enc`` ``[B, S, 9]`` and ``pose_enc_list`` (one per camera iteration): translation, quaternion
      (xyzw) and field of view (h, w) of OpenCV camera-from-world extrinsics, frame 0 = world;
    * ``depth`` ``[B, S, H, W, 1]``, ``depth_conf`` ``[B, S, H, W]``;
    * ``world_points`` ``[B, S, H, W, 3]``, ``world_points_conf`` ``[B, S, H, W]``;
    * ``images`` (the input) in eval mode.
    """

    def __init__(self, config: VGGTConfig) -> None:
        super().__init__()
        self.config = config
        self.aggregator = Aggregator(config.aggregator)
        self.camera_head = CameraHead(config.camera_head) if config.camera_head else None
        self.point_head = DPTHead(config.point_head) if config.point_head else None
        self.depth_head = DPTHead(config.depth_head) if config.depth_head else None

    def head_layers(self) -> set[int]:
        """Aggregator output entries that some head reads."""
        return self.config.head_layers()

    def predict_cameras(self, camera_tokens: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The camera head on the camera tokens ``[B, S, 2C]`` (token 0 of the last aggregator
        entry): ``pose_enc [B, S, 9]`` and ``pose_enc_list``. Empty without a camera head."""
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        if self.camera_head is None:
            return out
        with heads_autocast_off(camera_tokens.device):
            pose_list = self.camera_head(camera_tokens.float())
        out["pose_enc"] = pose_list[-1]
        out["pose_enc_list"] = pose_list
        return out

    def predict_dense(
        self, tokens_list: list[torch.Tensor | None], image_hw: tuple[int, int], patch_start_idx: int
    ) -> dict[str, torch.Tensor]:
        """The depth and point heads on dense entries ``[B, S, P, 2C]`` (any number of frames ``S``:
        frames are independent, so a caller may feed them chunk by chunk)."""
        out: dict[str, torch.Tensor] = {}
        device = next(t for t in tokens_list if t is not None).device
        with heads_autocast_off(device):
            if self.depth_head is not None:
                depth, conf = self.depth_head(tokens_list, image_hw, patch_start_idx)
                out["depth"], out["depth_conf"] = depth, conf
            if self.point_head is not None:
                points, conf = self.point_head(tokens_list, image_hw, patch_start_idx)
                out["world_points"], out["world_points_conf"] = points, conf
        return out

    def predict(
        self, tokens_list: list[torch.Tensor | None], image_hw: tuple[int, int], patch_start_idx: int
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Run the heads on aggregator outputs (dense ``[B, S, P, 2C]`` entries)."""
        out = self.predict_cameras(tokens_list[-1][:, :, 0]) if self.camera_head is not None else {}
        out.update(self.predict_dense(tokens_list, image_hw, patch_start_idx))
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"expected images [B, S, 3, H, W], got {tuple(images.shape)}")
        tokens_list, patch_start_idx = self.aggregator(images, keep_layers=self.head_layers())
        out = self.predict(tokens_list, tuple(images.shape[-2:]), patch_start_idx)
        if not self.training:
            out["images"] = images
        return out
