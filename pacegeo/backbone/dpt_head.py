"""DPT head: dense per-pixel predictions (depth or world points) with a confidence channel, fused
from four intermediate aggregator layers."""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pacegeo.backbone.camera_head import apply_activation
from pacegeo.backbone.config import DPTHeadConfig


def uv_grid(width: int, height: int, aspect_ratio: float, dtype, device) -> torch.Tensor:
    """Normalised pixel-centre grid ``[H, W, 2]`` (x, y) spanning the unit diagonal for ``aspect_ratio``."""
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype, device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack((uu, vv), dim=-1)


def sincos_1d(dim: int, pos: torch.Tensor, omega_0: float = 100.0) -> torch.Tensor:
    """``[M] -> [M, dim]`` sinusoids (sines first), computed in float64, returned as float32."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega_0**omega
    angles = torch.outer(pos.reshape(-1).double(), omega)
    return torch.cat((torch.sin(angles), torch.cos(angles)), dim=1).float()


def grid_pos_embed(height: int, width: int, channels: int, aspect_ratio: float, dtype, device) -> torch.Tensor:
    """Positional embedding ``[channels, H, W]``: x-sinusoids then y-sinusoids."""
    grid = uv_grid(width, height, aspect_ratio, dtype, device).reshape(-1, 2)
    emb = torch.cat((sincos_1d(channels // 2, grid[:, 0]), sincos_1d(channels // 2, grid[:, 1])), dim=-1)
    return rearrange(emb, "(h w) c -> c h w", h=height, w=width)


class ResidualConvUnit(nn.Module):
    """``conv2(relu(conv1(relu(x)))) + relu(x)`` (the skip adds the rectified input)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    """Fuses a coarser path with an optional skip, upsamples (bilinear, align_corners) and projects."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, 1, 0)
        self.resConfUnit1 = ResidualConvUnit(features) if has_residual else None
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if self.resConfUnit1 is not None and skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    def __init__(self, config: DPTHeadConfig) -> None:
        super().__init__()
        self.config = config
        self._pos_cache: dict = {}  # positional embeddings by (shape, aspect, dtype, device, mode)
        c = config
        oc = c.out_channels
        self.norm = nn.LayerNorm(c.dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(c.dim_in, ch, 1, 1, 0) for ch in oc])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4, padding=0),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2, padding=0),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        f = c.features
        self.scratch = nn.Module()
        for i, ch in enumerate(oc, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(ch, f, 3, 1, 1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(f, has_residual=i != 4))
        if c.feature_only:
            self.scratch.output_conv1 = nn.Conv2d(f, f, 3, 1, 1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(f, f // 2, 3, 1, 1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(f // 2, 32, 3, 1, 1), nn.ReLU(True), nn.Conv2d(32, c.output_dim, 1, 1, 0)
            )

    def _pos(self, x: torch.Tensor, width: int, height: int) -> torch.Tensor:
        # The scaled embedding depends only on the key: computed once (in float64, about 2 s at
        # full resolution on one CPU core), reused by every chunk and call; the same numbers.
        key = (tuple(x.shape[1:]), width / height, x.dtype, x.device, torch.is_inference_mode_enabled())
        scaled = self._pos_cache.get(key)
        if scaled is None:
            emb = grid_pos_embed(x.shape[-2], x.shape[-1], x.shape[1], width / height, x.dtype, x.device)
            scaled = 0.1 * emb.to(x.dtype)
            if len(self._pos_cache) >= 8:
                self._pos_cache.pop(next(iter(self._pos_cache)))
            self._pos_cache[key] = scaled
        return x + scaled

    def _forward_chunk(self, tokens: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
        """tokens: four ``[N, h*w, 2C]`` patch-token maps -> ``[N, output_dim, H, W]`` (or features)."""
        c = self.config
        ph, pw = height // c.patch_size, width // c.patch_size
        feats = []
        for k, x in enumerate(tokens):
            x = rearrange(self.norm(x), "n (h w) c -> n c h w", h=ph, w=pw)
            x = self.projects[k](x)
            if c.pos_embed:
                x = self._pos(x, width, height)
            feats.append(self.resize_layers[k](x))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(f) for i, f in enumerate(feats, start=1))
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.refinenet1(out, l1)
        out = s.output_conv1(out)
        size = (int(ph * c.patch_size / c.down_ratio), int(pw * c.patch_size / c.down_ratio))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        if c.pos_embed:
            out = self._pos(out, width, height)
        if c.feature_only:
            return out
        return s.output_conv2(out)

    def forward(
        self, tokens_list: list[torch.Tensor | None], image_hw: tuple[int, int], patch_start_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """tokens_list: aggregator outputs ``[B, S, P, 2C]`` (entries this head reads must be present).

        Returns ``(pred [B, S, H, W, output_dim-1], conf [B, S, H, W])``, or features
        ``[B, S, F, H', W']`` when ``feature_only``. Frames are processed in chunks.
        """
        c = self.config
        height, width = image_hw
        taps = [tokens_list[i] for i in c.intermediate_layer_idx]
        if any(t is None for t in taps):
            raise ValueError(f"DPT head needs aggregator layers {list(c.intermediate_layer_idx)}")
        b, s = taps[0].shape[:2]
        chunk = c.frames_chunk_size or s
        outs = []
        for start in range(0, s, chunk):
            part = [rearrange(t[:, start : start + chunk, patch_start_idx:], "b s n c -> (b s) n c") for t in taps]
            outs.append(rearrange(self._forward_chunk(part, height, width), "(b s) c h w -> b s c h w", b=b))
        out = torch.cat(outs, dim=1)
        if c.feature_only:
            return out
        out = rearrange(out, "b s c h w -> b s h w c")
        pred = apply_activation(out[..., :-1], c.activation)
        conf = apply_activation(out[..., -1], {"expp1": "exp", "expp0": "exp"}.get(c.conf_activation, c.conf_activation))
        if c.conf_activation == "expp1":
            conf = conf + 1
        return pred, conf
