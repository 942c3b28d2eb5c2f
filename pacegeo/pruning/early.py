"""Pruning inside the DINO encoder: the later encoder layers run on the kept tokens only.

Pre-AA pruning leaves the encoder untouched; at VGGT-1B scale and low keep the encoder is then the
largest cost of a pruned forward. With a ``layer`` ``L``, the encoder's first ``L`` blocks run on all
tokens, the pruner's scores are computed from those intermediate features (normalised with the
encoder's final norm), each frame's top-``k`` patch tokens (with the class and register tokens) run
through the remaining blocks, and the result is the usual ``[B, S, N, C]`` feature map in which:

* kept tokens hold their final encoder features, exactly what a full encoder would give them if
  the pruned tokens were absent from the later layers' attention;
* pruned tokens hold their layer-``L`` features, which merging and restoration use as guidance.

The scores are returned with the features, so that the later stages select the same tokens.
``layer`` equal to the encoder depth is ordinary pre-AA pruning.
"""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange
from torch import nn

from pacegeo.backbone.encoder import DinoViT
from pacegeo.errors import InputError, option
from pacegeo.pruning.merge import topk_mask

__all__ = ["check_encoder_layer", "encoder_blocks", "intermediate_features", "prune_inside_encoder"]


def encoder_blocks(encoder: DinoViT) -> list[nn.Module]:
    """The encoder's transformer blocks in order (chunked storage flattened, padding skipped)."""
    blocks = []
    for item in encoder.blocks:
        children = list(item) if isinstance(item, nn.ModuleList) else [item]
        blocks += [block for block in children if not isinstance(block, nn.Identity)]
    return blocks


def check_encoder_layer(backbone: nn.Module, layer) -> int | None:
    """``layer`` checked against ``backbone``'s encoder: None (pre-AA pruning) or an integer from 1
    to the encoder's depth. Raises :class:`InputError` otherwise."""
    if layer is None:
        return None
    encoder = backbone.aggregator.patch_embed
    if not isinstance(encoder, DinoViT):
        raise InputError(f"{option('encoder_layer')} needs a ViT encoder (DINOv2); this backbone has a convolutional one")
    depth = len(encoder_blocks(encoder))
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= depth:
        raise InputError(f"{option('encoder_layer')} must be an integer from 1 to {depth} (the encoder's blocks), got {layer!r}")
    return layer


def intermediate_features(aggregator: nn.Module, images: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's residual stream after its first ``layer`` blocks, ``[B, S, 1 + R + N, C]``,
    and its normalised patch part ``[B, S, N, C]`` (what scorers and predictors read)."""
    encoder = aggregator.patch_embed
    if not isinstance(encoder, DinoViT):
        raise InputError("pruning or merging inside the encoder needs a ViT encoder (DINOv2); this backbone has a convolutional one")
    blocks = encoder_blocks(encoder)
    if not 1 <= layer <= len(blocks):
        raise InputError(f"encoder layer must be between 1 and {len(blocks)}, got {layer}")
    b = images.shape[0]
    x = rearrange((images - aggregator._mean) / aggregator._std, "b s c h w -> (b s) c h w")
    tokens = encoder.prepare_tokens(x)  # [(B S), 1 + R + N, C]
    for block in blocks[:layer]:
        tokens = block(tokens)
    front = 1 + encoder.num_register_tokens
    middle = encoder.norm(tokens)[:, front:]
    return rearrange(tokens, "(b s) t c -> b s t c", b=b), rearrange(middle, "(b s) n c -> b s n c", b=b)


def prune_inside_encoder(
    aggregator: nn.Module,
    images: torch.Tensor,
    layer: int,
    counts: list[int],
    score: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features ``[B, S, N, C]`` and scores ``[B, S, N]`` of ``images [B, S, 3, H, W]``,
    with the blocks from ``layer`` on run on each frame's top-``counts[s]`` tokens only.

    Args:
        aggregator: the backbone's aggregator (its ``patch_embed`` must be a :class:`DinoViT`).
        layer: blocks before pruning, ``1 <= layer <= depth``.
        counts: kept patch tokens per frame.
        score: ``[B, S, N, C] -> [B, S, N]`` importance of the intermediate features.
    """
    b = images.shape[0]
    stream, middle = intermediate_features(aggregator, images, layer)
    encoder, blocks = aggregator.patch_embed, encoder_blocks(aggregator.patch_embed)
    front = 1 + encoder.num_register_tokens
    scores = score(middle)
    kept = topk_mask(scores, counts)  # the same choice the reduction makes from these scores
    feats = middle.clone()
    tokens = stream
    for count in sorted(set(counts)):
        frames = [f for f, c in enumerate(counts) if c == count]
        index = torch.nonzero(kept[:, frames].reshape(-1, kept.shape[-1]))[:, 1].view(b * len(frames), count)
        group = rearrange(tokens[:, frames], "b f t c -> (b f) t c")
        patches = torch.gather(group[:, front:], 1, index[..., None].expand(-1, -1, group.shape[-1]))
        part = torch.cat((group[:, :front], patches), dim=1)
        for block in blocks[layer:]:
            part = block(part)
        done = encoder.norm(part)[:, front:].to(feats.dtype)
        target = rearrange(feats[:, frames], "b f n c -> (b f) n c").clone()
        target.scatter_(1, index[..., None].expand(-1, -1, target.shape[-1]), done)
        feats[:, frames] = rearrange(target, "(b f) n c -> b f n c", b=b)
    return feats, scores
