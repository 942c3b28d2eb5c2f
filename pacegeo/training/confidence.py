"""Training of the confidence predictor of :mod:`pacegeo.pruning.come` (Co-Me-style merging).

The target is the frozen backbone's own depth confidence: the unpruned model runs on a SynthRooms
clip, its ``depth_conf`` is averaged over every 14 x 14 patch and log-scaled, and the predictor,
reading the encoder's features after ``layer`` blocks, learns to rank the patches of every frame in
the same order (pairwise ranking loss, :func:`pacegeo.pruning.come.ranking_loss`). Only the
predictor learns; the backbone runs under ``torch.no_grad``.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from einops import rearrange

from pacegeo.pruning.come import CoMeConfig, ConfidencePredictor, ranking_loss
from pacegeo.pruning.early import intermediate_features

__all__ = ["confidence_targets", "pair_accuracy", "train_confidence"]


def confidence_targets(backbone, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log depth confidence per patch ``[B, S, N]`` of the unpruned ``backbone`` on ``images``."""
    patch = backbone.aggregator.config.patch_size
    with torch.no_grad():
        conf = backbone(images)["depth_conf"].float()  # [B, S, H, W]
    b = conf.shape[0]
    pooled = F.avg_pool2d(rearrange(conf, "b s h w -> (b s) 1 h w"), patch)
    return rearrange(pooled.clamp_min(1e-6).log(), "(b s) 1 h w -> b s (h w)", b=b)


def pair_accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Share of the token pairs of each frame (with different targets) that ``logits`` order as
    ``target`` does (0.5 = chance)."""
    dl = logits[..., :, None] - logits[..., None, :]
    dt = target[..., :, None] - target[..., None, :]
    used = dt != 0
    return float(((dl * dt) > 0)[used].float().mean())


def train_confidence(backbone, config: CoMeConfig, batches, val_clips: list[torch.Tensor], steps: int,
                     minutes: float, lr: float = 1e-3, seed: int = 0, log=print) -> tuple[ConfidencePredictor, list[dict]]:
    """Train a :class:`ConfidencePredictor` on ``batches`` (dicts with ``images [B, S, 3, H, W]``)
    for ``steps`` steps or ``minutes``, whichever ends first; the predictor with the best pair
    accuracy on ``val_clips`` (checked every 50 steps) is returned with the log."""
    torch.manual_seed(seed)
    predictor = ConfidencePredictor(config)
    opt = torch.optim.AdamW(predictor.parameters(), lr=lr, weight_decay=1e-4)
    agg = backbone.aggregator
    generator = torch.Generator().manual_seed(seed)
    val = []
    with torch.no_grad():
        for clip in val_clips:
            val.append((intermediate_features(agg, clip, config.layer)[1], confidence_targets(backbone, clip)))
    best, best_state, history = -1.0, None, []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        images = next(batches)["images"]
        with torch.no_grad():
            middle = intermediate_features(agg, images, config.layer)[1]
            target = confidence_targets(backbone, images)
        loss = ranking_loss(predictor(middle), target, generator=generator)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done = (time.perf_counter() - start) / 60 >= minutes
        if step % 50 == 0 or step == steps or done:
            with torch.no_grad():
                acc = sum(pair_accuracy(predictor(m), t) for m, t in val) / len(val)
            history.append({"step": step, "loss": loss.item(), "val_pair_accuracy": acc, "seconds": time.perf_counter() - start})
            log(f"step {step}: loss {loss.item():.4f}, validation pair accuracy {acc:.4f}")
            if acc > best:
                best, best_state = acc, {k: v.clone() for k, v in predictor.state_dict().items()}
        if done:
            break
    predictor.load_state_dict(best_state)
    return predictor.eval(), history
