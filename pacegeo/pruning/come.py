"""Confidence-guided merging inside the encoder, after Co-Me: a peer accelerator in pacegeo's harness.

A small :class:`ConfidencePredictor` reads the encoder's intermediate features after ``layer``
blocks and rates every patch token by how confident the frozen backbone will be about its depth
(it is distilled from the backbone's own depth confidence with a pairwise ranking loss,
:func:`ranking_loss`). The patch grid is cut into ``block x block`` cells; in every frame the
``merge`` fraction of the whole cells with the lowest mean predicted confidence is mean-merged into
one token each (:func:`block_merge`). The rest of the encoder and the whole AA stack run on the
shorter sequence, a merged token weighted in attention by ``log(cell size)``; every grid position
of a merged cell then reads the output of its merged token (copy-unmerge) for the dense heads.

    merge(grid tokens after encoder block L) -> encoder blocks L+1.. -> AA stack -> copy back -> heads

The merged sequence is a :class:`pacegeo.pruning.merge.TokenReduction` with no dropped token, so
the AA stack, the attention bias and the streamed heads are :meth:`pacegeo.pace.PaceVGGT.run_reduced`
with an untrained restoration (whose merged positions take their slot's output exactly).
``merge = 0`` is the backbone itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors import safe_open
from torch import nn

from pacegeo.errors import CheckpointError, InputError
from pacegeo.io.outputs import save_tensors
from pacegeo.precision import autocast, no_autocast, resolve_dtype
from pacegeo.pruning.early import encoder_blocks, intermediate_features
from pacegeo.pruning.merge import TokenReduction

__all__ = [
    "CoMeConfig",
    "CoMeVGGT",
    "ConfidencePredictor",
    "block_merge",
    "cell_index",
    "load_confidence",
    "ranking_loss",
    "save_confidence",
]

COME_FORMAT = "pacegeo-come-v1"


@dataclass(frozen=True)
class CoMeConfig:
    """The confidence predictor and where it merges."""

    in_dim: int  # width C of the encoder features
    layer: int  # encoder blocks before merging (1 <= layer <= encoder depth)
    block: int = 3  # cells of block x block patches
    hidden: int = 64  # width of the predictor's MLP


class ConfidencePredictor(nn.Module):
    """``LN -> Linear -> GELU -> Linear``: intermediate features ``[B, S, N, C]`` -> confidence
    logits ``[B, S, N]`` (higher: the backbone is more confident there)."""

    def __init__(self, config: CoMeConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.in_dim)
        self.fc1 = nn.Linear(config.in_dim, config.hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.hidden, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(feats)))).squeeze(-1)


def ranking_loss(logits: torch.Tensor, target: torch.Tensor, pairs: int = 256, generator=None) -> torch.Tensor:
    """Pairwise ranking loss (RankNet) within each frame: for random token pairs ``(i, j)`` with
    different targets, ``softplus(-(l_i - l_j) * sign(t_i - t_j))``. ``logits``, ``target``
    ``[B, S, N]``; ``pairs`` pairs per frame."""
    b, s, n = logits.shape
    i = torch.randint(0, n, (b, s, pairs), generator=generator, device=logits.device)
    j = torch.randint(0, n, (b, s, pairs), generator=generator, device=logits.device)
    order = torch.sign(target.gather(-1, i) - target.gather(-1, j))
    margin = logits.gather(-1, i) - logits.gather(-1, j)
    used = order != 0
    if not bool(used.any()):
        return logits.sum() * 0.0
    return F.softplus(-margin * order)[used].mean()


def cell_index(grid_hw: tuple[int, int], block: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells of the row-major ``h x w`` patch grid: ``[N]`` cell of every patch, and ``[M, block^2]``
    the patches of each *whole* cell (cells cut by the grid's border are never merged), row-major,
    so that column ``block^2 // 2`` is the cell's centre."""
    h, w = grid_hw
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    cols = -(-w // block)
    cell = (ys // block) * cols + xs // block  # [h, w]
    hc, wc = h // block, w // block
    whole = rearrange(torch.arange(h * w, device=device).view(h, w)[: hc * block, : wc * block],
                      "(hc by) (wc bx) -> (hc wc) (by bx)", by=block, bx=block)
    return cell.flatten(), whole


def block_merge(tokens: torch.Tensor, confidence: torch.Tensor, grid_hw: tuple[int, int], merge: float,
                block: int = 3) -> TokenReduction:
    """Mean-merge the ``merge`` fraction of whole cells with the lowest mean confidence, per frame.

    Args:
        tokens: ``[B, S, N, C]`` patch tokens.
        confidence: ``[B, S, N]`` confidence logits.
        merge: fraction of the whole ``block x block`` cells merged, in ``[0, 1]``.
    Returns:
        The reduction: every frame has ``N - m (block^2 - 1)`` slots (``m`` merged cells), a merged
        cell's slot sits at its centre patch (its position for RoPE) and holds the cell's mean.
    """
    b, s, n, c = tokens.shape
    _, whole = cell_index(grid_hw, block, tokens.device)  # [M, block^2]
    m = int(round(merge * whole.shape[0]))
    rep = torch.arange(n, device=tokens.device).expand(b, s, n).clone()  # each token's slot owner
    if m:
        cell_conf = confidence.float()[..., whole].mean(dim=-1)  # [B, S, M]
        chosen = cell_conf.topk(m, dim=-1, largest=False).indices  # [B, S, m]
        members = whole[chosen]  # [B, S, m, block^2]
        centre = members[..., block * block // 2 : block * block // 2 + 1].expand_as(members)
        rep.scatter_(-1, members.flatten(2), centre.flatten(2))
    kept_mask = rep == torch.arange(n, device=tokens.device)
    k = n - m * (block * block - 1)
    kept_idx = torch.nonzero(kept_mask.view(-1, n))[:, 1].view(b, s, k)
    slot_of = torch.cumsum(kept_mask.long(), dim=-1) - 1  # slot of a kept token
    assignment = slot_of.gather(-1, rep)  # [B, S, N]
    sizes = torch.zeros(b, s, k, device=tokens.device).scatter_add_(-1, assignment, torch.ones(b, s, n, device=tokens.device))
    sums = torch.zeros(b, s, k, c, device=tokens.device, dtype=torch.float32)
    sums.scatter_add_(2, assignment[..., None].expand(-1, -1, -1, c), tokens.float())
    slots = (sums / sizes[..., None]).to(tokens.dtype)
    return TokenReduction(kept_idx=kept_idx, valid=torch.ones_like(kept_idx, dtype=torch.bool), tokens=slots,
                          sizes=sizes, assignment=assignment, kept_mask=kept_mask)


class CoMeVGGT(nn.Module):
    """A frozen backbone with confidence-guided merging inside its encoder (module docstring).

    Args:
        pace: a :class:`pacegeo.pace.PaceVGGT` around the backbone whose AA stack and heads run
            the merged sequence (its restoration should be untrained: copy-unmerge).
        predictor: the trained :class:`ConfidencePredictor`.
        merge: default fraction of whole cells merged per frame.
    """

    def __init__(self, pace: nn.Module, predictor: ConfidencePredictor, merge: float = 0.5, amp_dtype="auto") -> None:
        super().__init__()
        self.pace = pace
        self.backbone = pace.backbone
        self.predictor = predictor.to(next(self.backbone.parameters()).device)
        self.merge = float(merge)
        self.amp_dtype = amp_dtype

    def forward(self, images: torch.Tensor, merge: float | None = None) -> dict:
        """``images [B, S, 3, H, W]`` -> the backbone's output dict, plus ``"pruning"`` (tokens per
        frame in the AA stack)."""
        merge = self.merge if merge is None else float(merge)
        if not 0.0 <= merge <= 1.0:
            raise InputError(f"merge must be in [0, 1], got {merge}")
        agg, cfg = self.backbone.aggregator, self.predictor.config
        b, s, _, height, width = images.shape
        grid_hw = (height // agg.config.patch_size, width // agg.config.patch_size)
        device = images.device
        amp = resolve_dtype(self.amp_dtype, device)
        psi = agg.patch_start_idx
        with autocast(device, amp):
            if merge == 0.0:
                out = self.backbone(images)
                out["pruning"] = {"aa_tokens_per_frame": psi + grid_hw[0] * grid_hw[1]}
                return out
            stream, middle = intermediate_features(agg, images, cfg.layer)
            with no_autocast(device):
                confidence = self.predictor(middle.float())
            front = stream.shape[2] - middle.shape[2]
            reduction = block_merge(stream[:, :, front:], confidence, grid_hw, merge, cfg.block)
            encoder = agg.patch_embed
            seq = torch.cat((stream[:, :, :front], reduction.tokens), dim=2)
            bias = torch.cat((reduction.sizes.new_zeros(b, s, front), reduction.attn_bias()), dim=2)
            seq, bias = rearrange(seq, "b s t c -> (b s) t c"), rearrange(bias, "b s t -> (b s) 1 1 t")
            for block in encoder_blocks(encoder)[cfg.layer :]:
                seq = block(seq, attn_bias=bias)
            slots = rearrange(encoder.norm(seq)[:, front:], "(b s) k c -> b s k c", b=b)
            feats = middle.clone()  # restoration guidance: final features at the slots, layer-L elsewhere
            feats.scatter_(2, reduction.kept_idx[..., None].expand(-1, -1, -1, feats.shape[-1]), slots.to(feats.dtype))
            reduction = replace(reduction, tokens=slots)
            out = self.pace.run_reduced(reduction, feats, grid_hw, (height, width))
        out["images"] = images
        out["pruning"] = {"aa_tokens_per_frame": psi + reduction.kept_idx.shape[2], "merge": merge}
        return out


def save_confidence(predictor: ConfidencePredictor, path: str | Path, backbone: nn.Module,
                    extra: dict[str, str] | None = None) -> Path:
    """Write the predictor as safetensors (config and backbone fingerprint in the metadata), atomically."""
    from pacegeo.hub import backbone_fingerprint

    meta = {"format": COME_FORMAT, "config": json.dumps(asdict(predictor.config)),
            "backbone": getattr(backbone.config, "name", "unknown"),
            "backbone_fingerprint": backbone_fingerprint(backbone), **(extra or {})}
    return save_tensors(predictor.state_dict(), path, meta)


def load_confidence(path: str | Path, backbone: nn.Module) -> ConfidencePredictor:
    """The predictor saved at ``path``; refuses a file made for another backbone or a config that
    does not match its tensors (:class:`CheckpointError`)."""
    from pacegeo.hub import backbone_fingerprint

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"confidence predictor {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        raise CheckpointError(f"cannot read confidence predictor {path}: not a valid safetensors file") from None
    if meta.get("format") != COME_FORMAT:
        raise CheckpointError(f"{path} is not a pacegeo confidence predictor (format {meta.get('format')!r})")
    if meta.get("backbone_fingerprint") != backbone_fingerprint(backbone):
        raise CheckpointError(f"confidence predictor {path} was trained for another backbone")
    try:
        predictor = ConfidencePredictor(CoMeConfig(**json.loads(meta["config"])))
        predictor.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"confidence predictor {path} does not match its config: {first}") from None
    return predictor.to(next(backbone.parameters()).device).eval()
