"""Camera head: predicts the 9-d pose encoding ``[t(3), quat xyzw(4), fov_h, fov_w]`` per frame by
iterative refinement over the camera tokens of the last aggregator layer (attention across frames)."""

import torch
import torch.nn.functional as F
from torch import nn

from pacegeo.backbone.config import CameraHeadConfig
from pacegeo.backbone.layers import Block, Mlp

POSE_ENCODING_DIMS = {"absT_quaR_FoV": 9}


def apply_activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Element-wise output activation by name (``linear``, ``relu``, ``exp``, ``inv_log``, ...)."""
    if kind == "linear":
        return x
    if kind == "relu":
        return F.relu(x)
    if kind == "exp":
        return torch.exp(x)
    if kind == "inv_log":
        return torch.sign(x) * torch.expm1(torch.abs(x))
    if kind == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown activation {kind!r}")


class CameraHead(nn.Module):
    def __init__(self, config: CameraHeadConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.pose_encoding_type not in POSE_ENCODING_DIMS:
            raise ValueError(f"unsupported pose encoding {c.pose_encoding_type!r}")
        dim = self.target_dim = POSE_ENCODING_DIMS[c.pose_encoding_type]
        self.trunk = nn.Sequential(
            *[Block(c.dim_in, c.num_heads, c.mlp_ratio, init_values=c.init_values) for _ in range(c.trunk_depth)]
        )
        self.token_norm = nn.LayerNorm(c.dim_in)
        self.trunk_norm = nn.LayerNorm(c.dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.embed_pose = nn.Linear(dim, c.dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c.dim_in, 3 * c.dim_in))
        self.adaln_norm = nn.LayerNorm(c.dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(c.dim_in, c.dim_in // 2, dim)

    def activate(self, pred: torch.Tensor) -> torch.Tensor:
        c = self.config
        return torch.cat(
            (
                apply_activation(pred[..., :3], c.trans_act),
                apply_activation(pred[..., 3:7], c.quat_act),
                apply_activation(pred[..., 7:], c.fl_act),
            ),
            dim=-1,
        )

    def forward(self, camera_tokens: torch.Tensor, num_iterations: int | None = None) -> list[torch.Tensor]:
        """camera_tokens: ``[B, S, 2C]`` (token 0 of the last aggregator entry).

        Returns one activated ``[B, S, 9]`` pose encoding per iteration; the last is the prediction.
        """
        iterations = num_iterations or self.config.num_iterations
        tokens = self.token_norm(camera_tokens)
        normed = self.adaln_norm(tokens)
        b, s, _ = tokens.shape
        pred = None
        outputs = []
        for _ in range(iterations):
            if pred is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(b, s, -1))
            else:
                cond = self.embed_pose(pred.detach())
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (normed * (1 + scale) + shift) + tokens
            x = self.trunk(x)
            delta = self.pose_branch(self.trunk_norm(x))
            pred = delta if pred is None else pred + delta
            outputs.append(self.activate(pred))
        return outputs
