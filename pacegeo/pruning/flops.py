"""Analytic FLOP counts of the backbone stages and of the pruning overhead.

Counts the matrix products and convolutions (2 FLOPs per multiply-add), as
:class:`torch.utils.flop_counter.FlopCounterMode` does: attention projections, attention scores
and their application (``4 T^2 C`` per sequence of ``T`` tokens), MLPs, the DINO patch projection,
the DPT convolutions (transposed ones included) and the camera-head trunk. Norms, activations,
softmax and interpolation are not counted.

Stages: ``embed`` (patch embedding, DINO included), ``scorer``, ``select`` (similarities for
merging), ``aa`` (alternating-attention stack), ``restoration``, ``heads``.
"""

import math

from pacegeo.backbone.config import DPTHeadConfig, VGGTConfig
from pacegeo.pruning.budget import frame_keep_counts
from pacegeo.pruning.restore import RestorationConfig
from pacegeo.pruning.scorer import ScorerConfig


def mlp_macs(dim: int, mlp_ratio: float, ffn_layer: str = "mlp") -> int:
    """Multiply-adds of one token through a block's feed-forward."""
    hidden = int(dim * mlp_ratio)
    if ffn_layer in ("swiglu", "swiglufused"):
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return 3 * dim * hidden
    return 2 * dim * hidden


def block_flops(sequences: int, length: int, dim: int, mlp_ratio: float, ffn_layer: str = "mlp") -> int:
    """One transformer block over ``sequences`` sequences of ``length`` tokens of width ``dim``."""
    tokens = sequences * length
    linear = 2 * tokens * (4 * dim * dim + mlp_macs(dim, mlp_ratio, ffn_layer))
    attention = 4 * sequences * length * length * dim
    return linear + attention


def embed_flops(config: VGGTConfig, images: int, grid_hw: tuple[int, int]) -> int:
    """Patch embedding of ``images`` frames (convolution, plus the DINO blocks if any)."""
    agg = config.aggregator
    n = grid_hw[0] * grid_hw[1]
    conv = 2 * images * n * 3 * agg.patch_size**2 * agg.embed_dim
    dino = agg.resolved_dino()
    if dino is None:
        return conv
    length = 1 + dino.num_register_tokens + n
    return conv + dino.depth * block_flops(images, length, dino.embed_dim, dino.mlp_ratio, dino.ffn_layer)


def aa_flops(config: VGGTConfig, batch: int, frames: int, tokens_per_frame: int) -> int:
    """The AA stack on ``[batch, frames, tokens_per_frame]`` tokens (frame and global blocks)."""
    agg = config.aggregator
    frame = block_flops(batch * frames, tokens_per_frame, agg.embed_dim, agg.mlp_ratio)
    glob = block_flops(batch, frames * tokens_per_frame, agg.embed_dim, agg.mlp_ratio)
    return agg.depth * (frame + glob)


def dpt_flops(head: DPTHeadConfig, images: int, grid_hw: tuple[int, int]) -> int:
    """One DPT head over ``images`` frames of an ``h x w`` patch grid."""
    h, w = grid_hw
    oc, f = head.out_channels, head.features
    conv = lambda px, cin, cout, k: 2 * px * cin * cout * k * k  # noqa: E731
    oh, ow = (h + 1) // 2, (w + 1) // 2
    res = [16 * h * w, 4 * h * w, h * w, oh * ow]  # pixels of the four pyramid levels
    total = sum(conv(h * w, head.dim_in, ch, 1) for ch in oc)  # projections
    total += conv(h * w, oc[0], oc[0], 4) + conv(h * w, oc[1], oc[1], 2) + conv(res[3], oc[3], oc[3], 3)
    total += sum(conv(px, ch, f, 3) for px, ch in zip(res, oc))  # layer*_rn
    rcu = lambda px: 2 * conv(px, f, f, 3)  # noqa: E731
    total += rcu(res[3]) + conv(res[2], f, f, 1)  # refinenet4
    total += 2 * rcu(res[2]) + conv(res[1], f, f, 1)  # refinenet3
    total += 2 * rcu(res[1]) + conv(res[0], f, f, 1)  # refinenet2
    full = 4 * res[0]  # refinenet1 upsamples by 2
    total += 2 * rcu(res[0]) + conv(full, f, f, 1)
    ps = head.patch_size
    out_px = int(h * ps / head.down_ratio) * int(w * ps / head.down_ratio)
    if head.feature_only:
        return images * (total + conv(full, f, f, 3))
    total += conv(full, f, f // 2, 3) + conv(out_px, f // 2, 32, 3) + conv(out_px, 32, head.output_dim, 1)
    return images * total


def heads_flops(config: VGGTConfig, batch: int, frames: int, grid_hw: tuple[int, int]) -> int:
    """Camera head (all iterations) plus the depth and point DPT heads."""
    total = 0
    cam = config.camera_head
    if cam is not None:
        d, tokens = cam.dim_in, batch * frames
        per_iter = 2 * tokens * (9 * d + 3 * d * d + d * (d // 2) + (d // 2) * 9)
        per_iter += cam.trunk_depth * block_flops(batch, frames, d, cam.mlp_ratio)
        total += cam.num_iterations * per_iter
    for head in (config.depth_head, config.point_head):
        if head is not None:
            total += dpt_flops(head, batch * frames, grid_hw)
    return total


def scorer_flops(config: ScorerConfig, tokens: int) -> int:
    """The learned scorer on ``tokens`` patch tokens."""
    return 2 * tokens * (config.in_dim * config.hidden + config.hidden * config.kernel_size**2 + config.hidden)


def select_flops(feat_dim: int, frames: int, num_tokens: int, slots: int) -> int:
    """Cosine similarities of every patch token to its frame's slots (merge targets)."""
    return 2 * frames * num_tokens * slots * feat_dim


def restoration_flops(config: RestorationConfig, frames: int, queries: int, slots: int, layers: int) -> int:
    """Restoring ``layers`` entries of ``frames`` frames: ``queries`` pruned positions per frame
    (``N - k``) rebuilt from ``slots`` slots each."""
    pairs = frames * queries * slots
    total = 2 * pairs * config.feat_dim  # similarities
    if config.spatial_sigma:
        total += 2 * pairs * 2  # coordinate products
    total += layers * 2 * pairs * config.token_dim  # interpolation
    residual = (config.feat_dim + config.token_dim) * config.hidden + config.hidden * config.token_dim
    with_residual = min(layers, len(config.layers))
    total += with_residual * 2 * frames * queries * residual
    return total


def forward_flops(
    config: VGGTConfig,
    frames: int,
    height: int,
    width: int,
    keep: float = 1.0,
    batch: int = 1,
    mode: str = "learned",
    scorer: ScorerConfig | None = None,
    restoration: RestorationConfig | None = None,
    ref_boost: float = 1.0,
    merge_ratio: float = 0.5,
    restored_layers: int | None = None,
    encoder_layer: int | None = None,
) -> dict[str, int]:
    """FLOPs per stage of one :class:`pacegeo.pace.PaceVGGT` forward (the plain backbone at ``keep=1``).

    ``restored_layers``: number of aggregator entries the heads read (default: from the config).
    ``encoder_layer``: prune inside the encoder after this many blocks (:mod:`pacegeo.pruning.early`).
    Returns a dict over ``embed, scorer, select, aa, restoration, heads`` plus ``total``.
    """
    agg = config.aggregator
    ps = agg.patch_size
    grid_hw = (height // ps, width // ps)
    n = grid_hw[0] * grid_hw[1]
    images = batch * frames
    counts = frame_keep_counts(keep, n, frames, ref_boost)
    slots = max(counts)
    pruned = min(counts) < n
    if restored_layers is None:
        restored_layers = len(config.head_layers())
    out = {
        "embed": embed_flops(config, images, grid_hw),
        "scorer": 0,
        "select": 0,
        "aa": aa_flops(config, batch, frames, agg.patch_start_idx + (slots if pruned else n)),
        "restoration": 0,
        "heads": heads_flops(config, batch, frames, grid_hw),
    }
    dino = agg.resolved_dino()
    if pruned and encoder_layer is not None and dino is not None:
        late = dino.depth - encoder_layer
        front = 1 + dino.num_register_tokens
        full = block_flops(images, front + n, dino.embed_dim, dino.mlp_ratio, dino.ffn_layer)
        short = sum(block_flops(batch, front + c, dino.embed_dim, dino.mlp_ratio, dino.ffn_layer) for c in counts)
        out["embed"] -= late * (full - short)
    if pruned:
        if mode == "learned":
            out["scorer"] = scorer_flops(scorer or ScorerConfig(in_dim=agg.embed_dim), images * n)
        if merge_ratio > 0:
            out["select"] = select_flops(agg.embed_dim, images, n, slots)
        rest = restoration or RestorationConfig(feat_dim=agg.embed_dim, token_dim=2 * agg.embed_dim)
        out["restoration"] = restoration_flops(rest, images, n - min(counts), slots, restored_layers)
    out["total"] = sum(out.values())
    return out


def ideal_speedup(unpruned: dict[str, int], pruned: dict[str, int]) -> float:
    """``FLOPs(unpruned) / FLOPs(pruned)`` from two :func:`forward_flops` results."""
    return unpruned["total"] / pruned["total"] if pruned["total"] else math.inf
