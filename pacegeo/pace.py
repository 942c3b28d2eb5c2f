"""PaceVGGT: a frozen VGGT-style backbone that prunes patch tokens before its AA stack.

Forward pass (``keep < 1``)::

    images -> patch embedding (DINO features [B, S, N, C]), frame chunk by frame chunk
           -> importance scores [B, S, N]           (learned scorer, training-free, random or grid)
           -> per-frame keep budget k, merge budget  (pacegeo.pruning.budget)
           -> keep / merge / drop                    (pacegeo.pruning.merge; special tokens untouched)
           -> AA stack on [B, S, 1 + R + K, C] with the kept tokens' original RoPE positions and
              proportional attention (key bias log(group size), 0 for special tokens)
           -> per frame chunk: restoration of the dense [B, chunk, 1 + R + N, 2C] entries the heads
              read, then the depth and point heads (pacegeo.pruning.stream); then the camera head

``keep = 1`` (every frame keeps all its tokens) calls the backbone itself, so the outputs are the
backbone's, bit for bit.

Precision: one autocast region (:func:`pacegeo.precision.resolve_dtype`, ``"auto"`` by default)
covers the embedding, the AA stack, the restoration and the heads, for ``keep = 1`` and
``keep < 1`` alike. Three small pieces stay float32 inside it because they feed discrete choices
or a sharp softmax, where bf16 rounding would change which tokens are kept or merged: the token
scorer (under 0.1% of VGGT-1B's FLOPs), the merge assignment (cosine similarities of every token to
its frame's slots) and the restoration's interpolation weights (cosine similarities divided by a
temperature of 0.1). The matrix products that carry the cost run in the autocast dtype.

The backbone is frozen (``requires_grad`` off, always in eval mode) and never modified.
"""

import logging
from dataclasses import replace

import torch
from einops import repeat
from torch import nn

from pacegeo.errors import InputError
from pacegeo.precision import autocast, no_autocast, resolve_dtype
from pacegeo.pruning.budget import (
    frame_keep_counts,
    importance_mass,
    split_merge_budget,
    total_merge_budget,
    validate_keep,
    validate_merge_ratio,
    validate_ref_boost,
)
from pacegeo.pruning.early import prune_inside_encoder
from pacegeo.pruning.merge import TokenReduction, gather_tokens, reduce_tokens, straight_through_mask, topk_mask
from pacegeo.pruning.restore import FeatureGuidedRestoration, RestorationConfig
from pacegeo.pruning.stream import default_chunk, frames_chunk_for, streamed_heads
from pacegeo.pruning.scorer import TokenScorer
from pacegeo.pruning.training_free import (
    distinctiveness_scores,
    grid_scores,
    random_scores,
    standardize_with_coverage,
)
from pacegeo.stages import STAGES, StageClock, backbone_forward_staged

logger = logging.getLogger(__name__)

MODES = ("learned", "training-free", "random", "grid")


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 4:
        images = images.unsqueeze(0)
    if images.dim() != 5 or images.shape[2] != 3:
        raise InputError(f"expected images [B, S, 3, H, W], got {tuple(images.shape)}")
    return images


def _to_device(out: dict, device: torch.device | str) -> dict:
    """The tensors of an output dict (and of its lists) moved to ``device``."""
    moved = {}
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
        elif isinstance(value, list):
            value = [v.to(device) if isinstance(v, torch.Tensor) else v for v in value]
        moved[key] = value
    return moved


def check_dense_tail(backbone: nn.Module, tail) -> int:
    """``tail`` checked against ``backbone``: an integer from 0 (off) to the AA depth minus one, a
    multiple of its ``aa_block_size``. Raises :class:`InputError` otherwise."""
    agg = backbone.config.aggregator
    if isinstance(tail, bool) or not isinstance(tail, int) or not 0 <= tail < agg.depth or tail % agg.aa_block_size:
        raise InputError(f"dense tail must be a whole number of AA blocks from 0 to {agg.depth - 1}, got {tail!r}")
    return tail


class PaceVGGT(nn.Module):
    """A frozen VGGT-style backbone with token pruning before the AA stack.

    Args:
        backbone: a :class:`pacegeo.backbone.VGGT`; frozen here (``requires_grad`` off, eval mode).
        scorer: the :class:`TokenScorer` of ``mode="learned"``.
        restoration: a :class:`FeatureGuidedRestoration`; default: an untrained one for this
            backbone, which equals the training-free restoration.
        mode: ``"learned"`` (the scorer), ``"training-free"`` (DINO distinctiveness + coverage),
            ``"random"`` (seeded) or ``"grid"`` (uniform grid subsampling).
        keep: default fraction of patch tokens each frame keeps, in ``(0, 1]``.
        merge_ratio: default fraction of the pruned tokens merged into kept ones (the rest are
            dropped), split over frames by importance.
        ref_boost: frame 0 keeps ``min(1, ref_boost * keep)``; > 1 pads the other frames (see
            :mod:`pacegeo.pruning.budget`).
        coverage: weight of the spatial-coverage prior of the training-free scores.
        learned_coverage: weight of the same prior added to the learned scorer's per-frame
            standardised scores (0: the scorer alone). It spreads the kept set over the image
            while the scorer decides between neighbouring tokens; saved with the pruner.
        seed: seed of the random baseline (the same selection at every call).
        amp_dtype: ``"auto"``, None/``"float32"``, ``"bfloat16"`` or ``"float16"``, resolved by
            :func:`pacegeo.precision.resolve_dtype` (the autocast region of the whole forward).
        st_temperature: temperature of the straight-through mask of ``forward(..., soft=True)``.
        frames_chunk: frames per chunk of the embedding, scoring and selection of a pruned
            forward; default (None): :func:`pacegeo.pruning.stream.frames_chunk_for` the image
            size (the DPT heads' ``frames_chunk_size`` at 518x392, proportionally more of smaller
            frames).
        heads_chunk: frames per chunk of the restoration and the depth and point heads of a pruned
            forward; default (None): :func:`pacegeo.pruning.stream.heads_chunk_for` the image size
            and the number of frames (two frames of 518x392, more of smaller frames, at most an
            eighth of them). The two chunk sizes bound memory only: the outputs do not depend on them.
    """

    def __init__(
        self,
        backbone: nn.Module,
        scorer: TokenScorer | None = None,
        restoration: FeatureGuidedRestoration | None = None,
        mode: str = "learned",
        keep: float = 0.3,
        merge_ratio: float = 0.5,
        ref_boost: float = 1.0,
        coverage: float = 0.5,
        learned_coverage: float = 0.0,
        seed: int = 0,
        amp_dtype: str | torch.dtype | None = "auto",
        st_temperature: float = 1.0,
        frames_chunk: int | None = None,
        heads_chunk: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise InputError(f"unknown pruning mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "learned" and scorer is None:
            raise InputError("mode 'learned' needs a trained TokenScorer; use mode='training-free' without one")
        backbone.requires_grad_(False)
        backbone.eval()
        self.backbone = backbone
        self.scorer = scorer
        self.restoration = restoration or FeatureGuidedRestoration(RestorationConfig.for_backbone(backbone))
        self.mode = mode
        self.keep = validate_keep(keep)
        self.merge_ratio = validate_merge_ratio(merge_ratio)
        self.ref_boost = validate_ref_boost(ref_boost)
        self.coverage = float(coverage)
        self.learned_coverage = float(learned_coverage)
        self.seed = int(seed)
        self.amp_dtype = amp_dtype
        self.st_temperature = float(st_temperature)
        for name, value in (("frames_chunk", frames_chunk), ("heads_chunk", heads_chunk)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        self.frames_chunk = frames_chunk
        self.heads_chunk = heads_chunk
        #: prune inside the encoder after this many of its blocks (:mod:`pacegeo.pruning.early`); None: before the AA stack
        self.encoder_layer: int | None = None
        #: the last ``dense_tail`` AA blocks run on the whole sequence, re-expanded by the restoration; 0: none
        self.dense_tail: int = 0
        device = next(backbone.parameters()).device
        self.restoration.to(device)
        if self.scorer is not None:
            self.scorer.to(device)

    def train(self, mode: bool = True) -> "PaceVGGT":
        super().train(mode)
        self.backbone.eval()  # frozen: always inference behaviour
        return self

    def pruner_parameters(self):
        """Parameters of the scorer and the restoration (what a training stage optimises)."""
        params = list(self.restoration.parameters())
        if self.scorer is not None:
            params = list(self.scorer.parameters()) + params
        return params

    # -- stages ----------------------------------------------------------------------------------

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """DINO patch features ``[B, S, N, C]`` of ``images [B, S, 3, H, W]``, computed
        ``frames_chunk`` frames at a time (the backbone's :meth:`Aggregator.embed` on each chunk)."""
        agg = self.backbone.aggregator
        s, chunk = images.shape[1], self.chunk_for(images.shape[-2] * images.shape[-1])
        if s <= chunk:
            return agg.embed(images)
        first = agg.embed(images[:, :chunk])
        feats = first.new_empty(first.shape[0], s, *first.shape[2:])
        feats[:, :chunk] = first
        del first
        for start in range(chunk, s, chunk):
            feats[:, start : start + chunk] = agg.embed(images[:, start : start + chunk])
        return feats

    def chunk_for(self, pixels_per_frame: int) -> int:
        """Frames per chunk of the embedding, scoring and selection for frames of this size."""
        return self.frames_chunk or frames_chunk_for(pixels_per_frame, default_chunk(self.backbone))

    def _feature_chunk(self, feats: torch.Tensor) -> int:
        """:meth:`chunk_for` the frames behind patch features ``[B, S, N, C]``."""
        return self.chunk_for(feats.shape[2] * self.backbone.aggregator.config.patch_size ** 2)

    def score(self, feats: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Importance logits ``[B, S, N]`` (float32) of patch features ``[B, S, N, C]`` for this mode.

        Computed in float32 (outside any autocast), ``frames_chunk`` frames at a time: the top-k
        choice downstream is discrete, and bf16 logits would reorder near-equal tokens."""
        b, s, n, _ = feats.shape
        with no_autocast(feats.device):
            if self.mode == "random":
                return random_scores(b, s, n, seed=self.seed, device=feats.device)
            if self.mode == "grid":
                return grid_scores(b, s, grid_hw, device=feats.device)
            parts, chunk = [], self._feature_chunk(feats)
            for start in range(0, s, chunk):
                part = feats[:, start : start + chunk]
                if self.mode == "learned":
                    logits = self.scorer(part.float(), grid_hw).float()
                    if self.learned_coverage:
                        logits = standardize_with_coverage(logits, grid_hw, self.learned_coverage)
                else:
                    logits = distinctiveness_scores(part, grid_hw, coverage=self.coverage)
                parts.append(logits)
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def reduce(
        self, feats: torch.Tensor, scores: torch.Tensor, counts: list[int], merge_ratio: float
    ) -> tuple[TokenReduction, torch.Tensor]:
        """Keep ``counts[s]`` tokens per frame and merge ``merge_ratio`` of the pruned ones, split by
        importance. Returns the reduction and the per-frame merge budgets ``[B, S]``.

        Float32 (outside any autocast): which tokens merge where is decided by cosine
        similarities. The merge budgets are split over all frames; the reduction itself is
        computed ``frames_chunk`` frames at a time (frames are independent given their budgets)."""
        b, s, n, _ = feats.shape
        with no_autocast(feats.device):
            k = torch.tensor(counts, device=feats.device)
            pruned = n - k  # [S]
            total = total_merge_budget(merge_ratio, pruned.tolist())
            if total:
                kept_mask = topk_mask(scores, k)
                budgets = split_merge_budget(importance_mass(scores, kept_mask), total, pruned)
            else:
                budgets = torch.zeros(b, s, dtype=torch.long, device=feats.device)
            width, chunk = max(counts), self._feature_chunk(feats)
            parts = [
                reduce_tokens(feats[:, i : i + chunk], scores[:, i : i + chunk], k[i : i + chunk],
                              budgets[:, i : i + chunk], width=width)
                for i in range(0, s, chunk)
            ]
        return TokenReduction.cat(parts), budgets

    # -- forward ---------------------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor,
        keep: float | None = None,
        merge_ratio: float | None = None,
        ref_boost: float | None = None,
        soft: bool = False,
        timings: bool = False,
        output_device: torch.device | str | None = None,
    ) -> dict:
        """Predict cameras, depth and points with ``keep`` of the patch tokens.

        Args:
            images: ``[B, S, 3, H, W]`` (or ``[S, 3, H, W]``) RGB in [0, 1], H, W multiples of 14.
            keep: fraction of patch tokens each frame keeps, in ``(0, 1]`` (default: the constructor's).
            merge_ratio: fraction of pruned tokens merged rather than dropped, in ``[0, 1]``.
            ref_boost: reference-frame keep multiplier (>= 1).
            soft: multiply the kept tokens by a straight-through top-k mask (values unchanged), so
                that a loss on the outputs sends gradients to the scorer.
            timings: record per-stage wall-clock seconds in ``out["pruning"]["timings"]``
                (synchronises CUDA between stages).
            output_device: where the predictions are gathered (default: the images' device). With
                ``"cpu"`` a pruned forward moves the dense predictions off the accelerator one
                frame chunk at a time.
        Returns:
            The backbone's output dict (``pose_enc [B, S, 9]``, ``pose_enc_list``,
            ``depth [B, S, H, W, 1]``, ``depth_conf``, ``world_points [B, S, H, W, 3]``,
            ``world_points_conf``, ``images``) plus ``"pruning"``: token counts per frame before and
            after, ``aa_tokens`` (per sequence, ``S * (1 + R + K)``), merged/dropped counts and,
            with ``timings``, seconds per stage (embed, scorer, select, aa, restoration, heads).
        """
        images = _check_images(images)
        keep = self.keep if keep is None else validate_keep(keep)
        merge_ratio = self.merge_ratio if merge_ratio is None else validate_merge_ratio(merge_ratio)
        ref_boost = self.ref_boost if ref_boost is None else validate_ref_boost(ref_boost)
        backbone, agg = self.backbone, self.backbone.aggregator
        b, s, _, height, width = images.shape
        ps = agg.config.patch_size
        grid_hw = (height // ps, width // ps)
        n = grid_hw[0] * grid_hw[1]
        psi = agg.patch_start_idx
        device = images.device
        amp = resolve_dtype(self.amp_dtype, device)
        counts = frame_keep_counts(keep, n, s, ref_boost)
        clock = StageClock(device, timings)
        stats = {
            "mode": self.mode,
            "keep": keep,
            "merge_ratio": merge_ratio,
            "ref_boost": ref_boost,
            "frames": s,
            "grid_hw": grid_hw,
            "patch_tokens_per_frame": n,
            "special_tokens_per_frame": psi,
            "tokens_per_frame_before": psi + n,
        }

        if min(counts) == n:  # nothing pruned: the backbone's own code path
            if timings:
                out = backbone_forward_staged(backbone, images, clock, amp)
            else:
                with autocast(device, amp):
                    out = backbone(images)
            if output_device is not None:
                out = _to_device(out, output_device)
            zeros = [[0] * s for _ in range(b)]
            stats.update(
                kept_per_frame=counts,
                tokens_per_frame_after=[psi + n] * s,
                aa_tokens_per_frame=psi + n,
                aa_tokens=s * (psi + n),
                dense_aa_tokens=s * (psi + n),
                padded_slots=0,
                merge_budget=zeros,
                merged=zeros,
                dropped=zeros,
            )
            if timings:
                stats["timings"] = {stage: clock.times.get(stage, 0.0) for stage in STAGES}
            out["pruning"] = stats
            return out

        with autocast(device, amp):
            if self.encoder_layer is None:
                feats = self.embed(images)  # [B, S, N, C]
                clock.mark("embed")
                scores = self.score(feats, grid_hw)
            else:  # the encoder's later layers already run on the kept tokens
                feats, scores = prune_inside_encoder(agg, images, self.encoder_layer, counts,
                                                     lambda mid: self.score(mid, grid_hw))
                clock.mark("embed")
            clock.mark("scorer")
            reduction, budgets = self.reduce(feats, scores, counts, merge_ratio)
            scale = None
            if soft:
                with no_autocast(device):
                    mask = straight_through_mask(scores, torch.tensor(counts, device=device), self.st_temperature)
                    scale = gather_tokens(mask[..., None], reduction.kept_idx)
            width_k = reduction.kept_idx.shape[2]
            out = self.run_reduced(reduction, feats, grid_hw, (height, width), clock, output_device, scale)
        del feats
        if not backbone.training:
            out["images"] = images

        merged = reduction.merged_mask.sum(dim=-1)
        dropped = reduction.dropped_mask.sum(dim=-1)
        stats.update(
            kept_per_frame=counts,
            tokens_per_frame_after=[psi + k for k in counts],
            aa_tokens_per_frame=psi + width_k,
            aa_tokens=s * (psi + width_k),
            dense_aa_tokens=s * (psi + n),
            padded_slots=s * width_k - sum(counts),
            merge_budget=budgets.tolist(),
            merged=merged.tolist(),
            dropped=dropped.tolist(),
        )
        if timings:
            stats["timings"] = {stage: clock.times.get(stage, 0.0) for stage in STAGES}
        logger.debug(
            "pruned %d -> %d AA tokens per sequence (keep %.3f, merged %d, dropped %d)",
            s * (psi + n), s * (psi + width_k), keep, int(merged.sum()), int(dropped.sum()),
        )
        out["pruning"] = stats
        return out

    def run_reduced(
        self,
        reduction: TokenReduction,
        feats: torch.Tensor,
        grid_hw: tuple[int, int],
        image_hw: tuple[int, int],
        clock: "StageClock | None" = None,
        output_device: torch.device | str | None = None,
        slot_scale: torch.Tensor | None = None,
    ) -> dict:
        """The AA stack on the special tokens and the slots of ``reduction`` (original RoPE
        positions, ``log(size)`` attention bias for merged groups), then the streamed restoration
        and heads: the backbone's output dict.

        Args:
            reduction: slots ``[B, S, K, C]`` and where every grid token went.
            feats: ``[B, S, N, C]`` patch features that guide the restoration.
            slot_scale: optional ``[B, S, K, 1]`` factor on the slots (the straight-through mask).
        """
        backbone, agg = self.backbone, self.backbone.aggregator
        psi, (b, s) = agg.patch_start_idx, feats.shape[:2]
        device = feats.device
        mark = clock.mark if clock is not None else (lambda stage: None)
        with no_autocast(device):
            slots = reduction.tokens  # [B, S, K, C]
            if slot_scale is not None:
                slots = slots * slot_scale.to(slots.dtype)
            tokens = torch.cat((agg.special_tokens(b, s).to(slots.dtype), slots), dim=2)
            del slots
            # The slot features now live in `tokens`, and restoration does not read them: free them.
            reduction = replace(reduction, tokens=reduction.tokens.new_empty(b, s, 0, reduction.tokens.shape[-1]))
            pos = None
            if agg.rope is not None:
                grid_pos = agg.patch_positions(*grid_hw, device=device)  # [P, 2]
                kept_pos = grid_pos[psi:][reduction.kept_idx]  # [B, S, K, 2] original positions
                special_pos = repeat(grid_pos[:psi], "p two -> b s p two", b=b, s=s)
                pos = torch.cat((special_pos, kept_pos), dim=2)
            bias = None
            if bool((reduction.sizes != 1).any()):  # merged groups or padded slots
                log_sizes = reduction.attn_bias()
                bias = torch.cat((log_sizes.new_zeros(b, s, psi), log_sizes), dim=2)
        mark("select")
        split = agg.config.depth - self.dense_tail
        keep_layers = backbone.head_layers() | ({split - 1} if self.dense_tail else set())
        entries = agg.run_blocks(tokens, pos, attn_bias=bias, keep_layers=keep_layers, stop=split)
        del tokens
        if split < agg.config.depth:
            entries = self.run_dense_tail(entries, split, reduction, feats, grid_hw)
        mark("aa")
        return streamed_heads(
            backbone, self.restoration, entries, reduction, feats, grid_hw, image_hw,
            chunk=self.heads_chunk, output_device=output_device, clock=clock, dense_from=split,
        )

    def run_dense_tail(
        self, entries: list, split: int, reduction, feats: torch.Tensor, grid_hw: tuple[int, int]
    ) -> list:
        """Re-expansion: the sequence after entry ``split - 1`` (reduced) is restored to the whole
        grid, and the AA blocks from ``split`` on run on it, without merging bias.

        Args:
            entries: ``run_blocks`` outputs up to ``split`` (``[B, S, 1 + R + K, 2C]``).
            reduction, feats, grid_hw: as for the restoration.
        Returns:
            ``entries`` with those from ``split`` on dense (``[B, S, 1 + R + N, 2C]``), computed
            from the dense sequence; the entry ``split - 1`` is dropped unless a head reads it.
        """
        agg = self.backbone.aggregator
        psi, (b, s) = agg.patch_start_idx, feats.shape[:2]
        plan = self.restoration.plan(reduction, feats, grid_hw)
        dense = self.restoration.restore_layer(entries[split - 1], reduction, plan, psi, split - 1)
        del plan
        tokens = dense[..., dense.shape[-1] // 2 :]  # the global half: the sequence the next block reads
        pos = None
        if agg.rope is not None:
            pos = repeat(agg.patch_positions(*grid_hw, device=feats.device), "p two -> b s p two", b=b, s=s)
        if split - 1 not in self.backbone.head_layers():
            entries[split - 1] = None
        tail = agg.run_blocks(tokens, pos, keep_layers=self.backbone.head_layers(), start=split)
        return entries[:split] + tail[split:]

    def pruner_state_dict(self) -> dict[str, torch.Tensor]:
        """Scorer and restoration tensors (``scorer.*``, ``restoration.*``), without the backbone."""
        state = {f"restoration.{k}": v for k, v in self.restoration.state_dict().items()}
        if self.scorer is not None:
            state.update({f"scorer.{k}": v for k, v in self.scorer.state_dict().items()})
        return state


__all__ = [
    "MODES",
    "PaceVGGT",
    "StageClock",
    "backbone_forward_staged",
    "check_dense_tail",
]
