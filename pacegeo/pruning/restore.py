"""Feature-guided restoration: the dense patch-token grid the heads need, from the kept slots.

For every aggregator entry a head reads (``[B, S, 1 + R + K, 2C]`` over the reduced sequence) the
module returns the dense ``[B, S, 1 + R + N, 2C]`` entry:

* special tokens (camera, registers) pass through unchanged;
* a kept position gets its slot's output exactly;
* a pruned position gets a training-free base plus a learned residual:

  - base, merged token: the output of the slot it was merged into;
  - base, dropped token: a softmax-weighted mean of its frame's slot outputs, with logits
    ``cos(f_n, f_j) / temperature - d(n, j)^2 / (2 sigma^2)`` between the DINO feature ``f_n`` of
    the position and those of the kept tokens (``d``: distance on the patch grid; the spatial term
    is optional);
  - residual: ``MLP([LN(f_n), LN(base_n)])``, one small MLP per restored layer, whose output layer
    starts at zero, so an untrained module returns exactly the training-free base.

With ``camera_correction``, the camera token of the last entry (the one the camera head reads)
also gets a learned residual, ``MLP([LN(t), LN(mean of the frame's restored patch tokens), kept
fraction])`` with a zero-initialised output layer: the special tokens attended over fewer patch
tokens than the heads were trained with, and this shift is what moves the predicted cameras.

Only the pruned positions are computed (``N - k`` per frame); the work shared by all layers
(similarities, weights, indices) is done once per forward, or once per frame chunk
(:meth:`FeatureGuidedRestoration.plan`). Frames are independent: :mod:`pacegeo.pruning.stream`
restores one chunk of frames at a time inside the heads' loop, with the same numbers as
:meth:`FeatureGuidedRestoration.forward`, which restores all frames at once.

The interpolation weights are computed in float32 even inside an autocast region: the cosine
similarities are divided by ``temperature`` (0.1) before the softmax, which would amplify the
rounding of a bf16 product (about 4e-3) into weight errors of about 4%.
"""

import logging
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from pacegeo.precision import no_autocast
from pacegeo.pruning.merge import TokenReduction, gather_tokens, kept_indices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestorationConfig:
    """Architecture of :class:`FeatureGuidedRestoration`."""

    feat_dim: int  # width C of the DINO patch features
    token_dim: int  # width of the aggregator entries (2C: frame half then global half)
    layers: tuple[int, ...] = ()  # aggregator entries with a learned residual (others: base only)
    hidden: int = 256  # width of the residual MLPs (for_backbone: min(256, C / 4))
    temperature: float = 0.1  # of the cosine-similarity softmax (smaller = closer to nearest-neighbour)
    spatial_sigma: float | None = 3.0  # spatial locality in patches; None: similarity only
    norm_eps: float = 1e-6
    camera_correction: bool = False  # learned residual on the camera token the camera head reads

    @classmethod
    def for_backbone(cls, backbone: nn.Module, **overrides) -> "RestorationConfig":
        """The config for a :class:`pacegeo.backbone.VGGT`: its widths and head layers."""
        dim = backbone.config.aggregator.embed_dim
        hidden = min(256, max(16, dim // 4))
        config = cls(feat_dim=dim, token_dim=2 * dim, layers=tuple(sorted(backbone.head_layers())), hidden=hidden)
        return replace(config, **overrides)


class ResidualMLP(nn.Module):
    """``[LN(feat), LN(base)] -> Linear -> GELU -> Linear`` (output layer zero-initialised)."""

    def __init__(self, feat_dim: int, token_dim: int, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.feat_norm = nn.LayerNorm(feat_dim, eps=eps)
        self.base_norm = nn.LayerNorm(token_dim, eps=eps)
        self.fc1 = nn.Linear(feat_dim + token_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, token_dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, feat: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """feat ``[..., C]``, base ``[..., 2C]`` -> residual ``[..., 2C]``."""
        x = torch.cat((self.feat_norm(feat), self.base_norm(base)), dim=-1)
        return self.fc2(self.act(self.fc1(x)))


class CameraTokenCorrection(nn.Module):
    """``[LN(token), LN(context), kept fraction] -> Linear -> GELU -> Linear`` added to the camera
    token (output layer zero-initialised: an untrained module changes nothing)."""

    def __init__(self, token_dim: int, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(token_dim, eps=eps)
        self.context_norm = nn.LayerNorm(token_dim, eps=eps)
        self.fc1 = nn.Linear(2 * token_dim + 1, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, token_dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, token: torch.Tensor, context: torch.Tensor, kept_fraction: torch.Tensor) -> torch.Tensor:
        """token, context ``[B, S, 2C]``, kept_fraction ``[B, S]`` -> corrected token ``[B, S, 2C]``."""
        x = torch.cat((self.token_norm(token), self.context_norm(context), kept_fraction[..., None].to(token.dtype)), dim=-1)
        return token + self.fc2(self.act(self.fc1(x)))


def grid_coordinates(grid_hw: tuple[int, int], device=None) -> torch.Tensor:
    """``[N, 2]`` float (y, x) of the row-major patch grid."""
    h, w = grid_hw
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack((ys.flatten(), xs.flatten()), dim=-1).float()


class FeatureGuidedRestoration(nn.Module):
    """Rebuilds dense aggregator entries from the reduced sequence (see the module docstring)."""

    def __init__(self, config: RestorationConfig) -> None:
        super().__init__()
        if config.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {config.temperature}")
        self.config = config
        self.residuals = nn.ModuleDict(
            {str(i): ResidualMLP(config.feat_dim, config.token_dim, config.hidden, config.norm_eps) for i in config.layers}
        )
        self.camera = (
            CameraTokenCorrection(config.token_dim, config.hidden, config.norm_eps) if config.camera_correction else None
        )

    def with_camera_correction(self) -> "FeatureGuidedRestoration":
        """A copy of this module with an (untrained, hence neutral) camera-token correction added."""
        if self.camera is not None:
            return self
        module = FeatureGuidedRestoration(replace(self.config, camera_correction=True))
        missing, unexpected = module.load_state_dict(self.state_dict(), strict=False)
        if unexpected or not all(k.startswith("camera.") for k in missing):
            raise RuntimeError(f"restoration weights do not carry over: missing {missing}, unexpected {unexpected}")
        return module.to(next(self.parameters(), torch.empty(0)).device)

    def interpolation_weights(
        self,
        feats: torch.Tensor,
        reduction: TokenReduction,
        grid_hw: tuple[int, int],
        query_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Softmax weights of grid positions over their frame's slots (float32).

        Args:
            feats: ``[B, S, N, C]`` DINO patch features.
            reduction: the reduction whose slots are interpolated (padded slots get weight 0).
            grid_hw: the ``h x w`` patch grid.
            query_idx: ``[B, S, M]`` grid positions to weight (default: all ``N``).
        Returns:
            ``[B, S, M, K]`` (``M = N`` by default), rows summing to 1.
        """
        c = self.config
        unit = F.normalize(feats.float(), dim=-1)
        query = unit if query_idx is None else gather_tokens(unit, query_idx)
        logits = query @ gather_tokens(unit, reduction.kept_idx).transpose(-1, -2) / c.temperature
        if c.spatial_sigma:
            coords = grid_coordinates(grid_hw, feats.device)  # [N, 2]
            q_coords = coords if query_idx is None else coords[query_idx]  # [N, 2] or [B, S, M, 2]
            kept_coords = coords[reduction.kept_idx]  # [B, S, K, 2]
            # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, exact for integer coordinates in float32
            dist2 = (
                q_coords.square().sum(-1)[..., None]
                + kept_coords.square().sum(-1)[:, :, None, :]
                - 2.0 * q_coords @ kept_coords.transpose(-1, -2)
            )  # [B, S, M, K]
            logits = logits - dist2 / (2.0 * c.spatial_sigma**2)
        logits = logits.masked_fill(~reduction.valid[:, :, None, :], float("-inf"))
        return logits.softmax(dim=-1)

    def plan(self, reduction: TokenReduction, feats: torch.Tensor, grid_hw: tuple[int, int]) -> dict:
        """What every restored layer shares: the pruned positions ``[B, S, M]`` (``M = N - min k``,
        padded where frames prune fewer), their features, merge targets, interpolation weights, and
        the grid column every slot and pruned position is written to (``N``, a scratch column, for
        padding)."""
        n = reduction.num_tokens
        width = n - int(reduction.kept_mask.sum(dim=-1).min())
        pruned_idx, pruned_valid = kept_indices(~reduction.kept_mask, width)
        padded = not (bool(reduction.valid.all()) and bool(pruned_valid.all()))
        with no_autocast(feats.device):
            weights = self.interpolation_weights(feats, reduction, grid_hw, pruned_idx)
        return {
            "feats": gather_tokens(feats, pruned_idx),
            "merged": torch.gather(reduction.merged_mask, -1, pruned_idx),
            "target": torch.gather(reduction.assignment, -1, pruned_idx).clamp(min=0),
            "weights": weights,
            "kept_dst": torch.where(reduction.valid, reduction.kept_idx, torch.full_like(reduction.kept_idx, n)),
            "pruned_dst": torch.where(pruned_valid, pruned_idx, torch.full_like(pruned_idx, n)),
            "padded": padded,
        }

    def restore_layer(
        self, entry: torch.Tensor, reduction: TokenReduction, plan: dict, patch_start_idx: int, layer: int | None = None
    ) -> torch.Tensor:
        """One entry ``[B, S, 1 + R + K, 2C]`` -> dense ``[B, S, 1 + R + N, 2C]``.

        ``plan`` from :meth:`plan`; ``layer`` selects the residual MLP (none for layers outside
        ``config.layers``). The result has ``entry``'s dtype.
        """
        psi = patch_start_idx
        special, slots = entry[:, :, :psi], entry[:, :, psi:]
        b, s, _, d = entry.shape
        n = reduction.num_tokens
        target = gather_tokens(slots, plan["target"])  # merged: the slot they joined
        interp = (plan["weights"] @ slots.float()).to(slots.dtype)  # dropped: interpolated
        base = torch.where(plan["merged"][..., None], target, interp)  # [B, S, M, 2C]
        key = None if layer is None else str(layer)
        if key in self.residuals:
            base = base + self.residuals[key](plan["feats"].to(base.dtype), base).to(base.dtype)
        # Kept and pruned positions partition the grid: two in-place scatters fill it (padding
        # goes to a scratch column N, cut off at the end).
        out = entry.new_empty(b, s, psi + n + int(plan["padded"]), d)
        out[:, :, :psi] = special
        grid = out[:, :, psi:]
        grid.scatter_(2, plan["kept_dst"][..., None].expand_as(slots), slots)
        grid.scatter_(2, plan["pruned_dst"][..., None].expand_as(base), base)
        return out[:, :, : psi + n] if plan["padded"] else out

    def correct_camera(self, token: torch.Tensor, context: torch.Tensor, reduction: TokenReduction) -> torch.Tensor:
        """The camera token ``[B, S, 2C]`` of the last entry after the camera-token correction
        (``token`` itself without one). ``context`` ``[B, S, 2C]``: the mean restored patch token
        of each frame in that entry. Returns ``token``'s dtype."""
        if self.camera is None:
            return token
        kept_fraction = reduction.kept_mask.float().mean(dim=-1)  # [B, S]
        return self.camera(token, context, kept_fraction).to(token.dtype)

    def forward(
        self,
        entries: list[torch.Tensor | None],
        reduction: TokenReduction,
        feats: torch.Tensor,
        grid_hw: tuple[int, int],
        patch_start_idx: int,
    ) -> list[torch.Tensor | None]:
        """Restore every present entry of ``entries`` (list index = aggregator layer).

        Args:
            entries: ``run_blocks`` outputs ``[B, S, 1 + R + K, 2C]`` or None.
            reduction: the :class:`TokenReduction` that produced the sequence.
            feats: ``[B, S, N, C]`` DINO patch features (before merging).
            grid_hw: the patch grid ``(h, w)``.
            patch_start_idx: ``1 + R``.
        Returns:
            The same list with every present entry dense, ``[B, S, 1 + R + N, 2C]``.
        """
        present = [i for i, e in enumerate(entries) if e is not None]
        if not present:
            return list(entries)
        plan = self.plan(reduction, feats, grid_hw)
        missing = [i for i in present if str(i) not in self.residuals]
        if missing and self.residuals:
            logger.debug("restoring layers %s without a learned residual", missing)
        dense = [
            None if e is None else self.restore_layer(e, reduction, plan, patch_start_idx, i)
            for i, e in enumerate(entries)
        ]
        if self.camera is not None and dense[-1] is not None:
            last = dense[-1]  # a fresh tensor of restore_layer: the corrected token is written in place
            last[:, :, 0] = self.correct_camera(last[:, :, 0].clone(), last[:, :, patch_start_idx:].mean(dim=2), reduction)
        return dense
