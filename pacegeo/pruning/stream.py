"""Streamed restoration and heads: the dense grid is rebuilt one frame chunk at a time.

The AA stack of a pruned forward returns reduced entries ``[B, S, 1 + R + K, 2C]``. The depth and
point heads need dense ones, ``[B, S, 1 + R + N, 2C]``, but they treat frames independently; the
camera head needs only the camera token of the last entry. :func:`streamed_heads` therefore runs,
for every chunk of frames,

    plan (interpolation weights of the chunk) -> restore the entries the heads read (chunk only)
    -> depth and point heads on the chunk -> outputs written into their place (optionally on the host)

and then the camera head on the camera tokens of all frames (with the restoration's camera-token
correction, whose context, the mean restored patch token of each frame, is collected chunk by
chunk). Memory: the reduced entries plus one chunk of dense entries and head activations, instead
of every dense entry of every frame.

The numbers are those of :meth:`FeatureGuidedRestoration.forward` followed by
:meth:`pacegeo.backbone.VGGT.predict` (frames are independent; ``tests/test_stream.py`` compares
the two paths). The heads are the backbone's own (:meth:`~pacegeo.backbone.VGGT.predict_dense` and
:meth:`~pacegeo.backbone.VGGT.predict_cameras`).
"""

import math

import torch
from torch import nn

from pacegeo.system import release_host_memory
from pacegeo.pruning.merge import TokenReduction
from pacegeo.pruning.restore import FeatureGuidedRestoration


#: Image pixels per chunk of the streamed restoration and heads (default chunking): two frames of
#: 518x392. A chunk's dense entries and full-resolution head activations are the working set of
#: this stage, and both grow with the pixels of a frame; VGGT-1B's DPT head costs about 226 GFLOP
#: per frame at 518x392, so two such frames still fill an accelerator. Smaller frames go in more
#: per chunk: two frames of 154x112 would leave the per-chunk overheads dominant.
HEADS_CHUNK_PIXELS = 2 * 518 * 392
#: ... but a chunk holds at most this fraction of the frames (and at least two frames): one chunk's
#: restored entries and head activations stay a small part of what the pruned forward holds, so
#: that it stays lighter than the unpruned one, whose heads read every frame's dense entries.
HEADS_CHUNK_FRACTION = 1 / 8
#: On the CPU, the freed heap is handed back to the system after every chunk that holds at least
#: this many pixels (one 518x392 frame): the resident set then keeps one chunk's working set, not
#: the holes of every chunk. Smaller chunks free little, and handing it back costs more (each
#: chunk faults its pages in again: 12-15% of a pruned forward of 32 frames of 154x112).
TRIM_MIN_PIXELS = 518 * 392


def heads_chunk_for(image_hw: tuple[int, int], frames: int, dpt_chunk: int | None = None) -> int:
    """Default frames per chunk of the restoration and heads for ``frames`` frames of ``image_hw``
    pixels: as many as fit in :data:`HEADS_CHUNK_PIXELS` (at least one), at most
    :data:`HEADS_CHUNK_FRACTION` of the frames (or two), rounded down to a multiple of the DPT
    heads' own ``dpt_chunk`` when larger (they split what they get into chunks of it)."""
    chunk = max(1, HEADS_CHUNK_PIXELS // (image_hw[0] * image_hw[1]))
    chunk = min(chunk, max(2, math.ceil(frames * HEADS_CHUNK_FRACTION)))
    if dpt_chunk and chunk > dpt_chunk:
        chunk -= chunk % dpt_chunk
    return chunk


def dense_head_layers(backbone: nn.Module) -> list[int]:
    """Aggregator entries the depth and point heads read (sorted)."""
    layers: set[int] = set()
    for head in (backbone.depth_head, backbone.point_head):
        if head is not None:
            layers.update(head.config.intermediate_layer_idx)
    return sorted(layers)


def default_chunk(backbone: nn.Module) -> int:
    """Frames per chunk of the embedding, scoring and selection of a pruned forward on 518x392
    frames: the smallest ``frames_chunk_size`` of the DPT heads (8 if none is set)."""
    sizes = [h.config.frames_chunk_size for h in (backbone.depth_head, backbone.point_head) if h is not None]
    sizes = [s for s in sizes if s]
    return min(sizes) if sizes else 8


#: Pixels per frame at which a chunk of the embedding, scoring and selection holds
#: :func:`default_chunk` frames (518x392); smaller frames go in proportionally more per chunk (32
#: frames of 154x112 took twice as long to embed in four chunks of 8 as in one).
EMBED_CHUNK_PIXELS = 518 * 392


def frames_chunk_for(pixels_per_frame: int, base_chunk: int) -> int:
    """Default frames per chunk of the embedding, scoring and selection: ``base_chunk``
    (:func:`default_chunk`) times how many frames of ``pixels_per_frame`` fit in one of
    :data:`EMBED_CHUNK_PIXELS` (at least one)."""
    return base_chunk * max(1, EMBED_CHUNK_PIXELS // pixels_per_frame)


class _Outputs:
    """Per-key output buffers ``[B, S, ...]`` filled chunk by chunk (allocated at the first chunk)."""

    def __init__(self, frames: int, device: torch.device | None) -> None:
        self.frames = frames
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}

    def write(self, start: int, part: dict[str, torch.Tensor]) -> None:
        for key, value in part.items():
            if self.device is not None:
                value = value.to(self.device)
            if key not in self.buffers:
                b, _, *rest = value.shape
                self.buffers[key] = value.new_empty(b, self.frames, *rest)
            self.buffers[key][:, start : start + value.shape[1]] = value


def streamed_heads(
    backbone: nn.Module,
    restoration: FeatureGuidedRestoration,
    entries: list[torch.Tensor | None],
    reduction: TokenReduction,
    feats: torch.Tensor,
    grid_hw: tuple[int, int],
    image_hw: tuple[int, int],
    chunk: int | None = None,
    output_device: torch.device | str | None = None,
    clock=None,
    dense_from: int | None = None,
) -> dict:
    """Restore and predict frame chunk by frame chunk.

    Args:
        backbone: the frozen :class:`pacegeo.backbone.VGGT` whose heads run.
        restoration: the :class:`FeatureGuidedRestoration` of the pruner.
        entries: ``run_blocks`` outputs ``[B, S, 1 + R + K, 2C]`` (None where no head reads).
        reduction: the :class:`TokenReduction` behind the sequence.
        feats: ``[B, S, N, C]`` DINO patch features.
        grid_hw: patch grid ``(h, w)``; image_hw: input ``(H, W)`` pixels.
        chunk: frames per chunk (default: :func:`heads_chunk_for` the image size and the DPT heads).
        output_device: where the depth and point outputs are gathered (default: their device);
            ``"cpu"`` keeps only one chunk of them on an accelerator.
        clock: a :class:`pacegeo.stages.StageClock` (or None), charged ``restoration`` and ``heads``.
        dense_from: entries from this index on are already dense (a re-expanded tail of the AA
            stack, :meth:`pacegeo.pace.PaceVGGT.run_dense_tail`) and are read as they are.
    Returns:
        The backbone's output dict: ``pose_enc [B, S, 9]``, ``pose_enc_list``, ``depth
        [B, S, H, W, 1]``, ``depth_conf``, ``world_points [B, S, H, W, 3]``, ``world_points_conf``.
    """
    psi = backbone.aggregator.patch_start_idx
    b, s = feats.shape[:2]
    if chunk is None:
        sizes = [h.config.frames_chunk_size for h in (backbone.depth_head, backbone.point_head)
                 if h is not None and h.config.frames_chunk_size]
        chunk = heads_chunk_for(image_hw, s, min(sizes, default=None))
    last = len(entries) - 1
    dense_from = len(entries) if dense_from is None else dense_from
    taps = dense_head_layers(backbone)
    # The camera-token correction compensates a token that attended over the reduced sequence.
    context_needed = restoration.camera is not None and backbone.camera_head is not None and last < dense_from
    layers = sorted(set(taps) | ({last} if context_needed else set()))
    missing = [i for i in layers if entries[i] is None]
    if missing:
        raise ValueError(f"the heads need aggregator entries {missing}, which the AA stack did not keep")
    mark = clock.mark if clock is not None else (lambda stage: None)
    outputs = _Outputs(s, None if output_device is None else torch.device(output_device))
    context = None
    trim = feats.device.type == "cpu" and chunk * image_hw[0] * image_hw[1] >= TRIM_MIN_PIXELS
    for start in range(0, s, chunk) if layers else ():
        stop = min(s, start + chunk)
        part = reduction.frames(start, stop)
        plan = restoration.plan(part, feats[:, start:stop], grid_hw)
        dense: list[torch.Tensor | None] = [None] * len(entries)
        for i in layers:
            if i >= dense_from:
                dense[i] = entries[i][:, start:stop]
            else:
                dense[i] = restoration.restore_layer(entries[i][:, start:stop], part, plan, psi, i)
        del plan
        if context_needed:
            mean = dense[last][:, :, psi:].mean(dim=2)  # [B, chunk, 2C]
            if context is None:
                context = mean.new_empty(b, s, mean.shape[-1])
            context[:, start:stop] = mean
        mark("restoration")
        if taps:
            # The heads read float32 entries, as the unpruned model gives them (one chunk at a time).
            heads_in = [d.float() if i in taps else None for i, d in enumerate(dense)]
            del dense
            outputs.write(start, backbone.predict_dense(heads_in, image_hw, psi))
            del heads_in
        if trim:
            release_host_memory()  # the chunk's freed blocks, before the next chunk allocates
        mark("heads")

    out: dict = {}
    if backbone.camera_head is not None:
        token = entries[last][:, :, 0]
        if context_needed:
            token = restoration.correct_camera(token, context, reduction)
        out.update(backbone.predict_cameras(token))
        if output_device is not None:
            out["pose_enc"] = out["pose_enc"].to(output_device)
            out["pose_enc_list"] = [p.to(output_device) for p in out["pose_enc_list"]]
        mark("heads")
    out.update(outputs.buffers)
    return out


__all__ = [
    "EMBED_CHUNK_PIXELS", "HEADS_CHUNK_FRACTION", "HEADS_CHUNK_PIXELS", "TRIM_MIN_PIXELS", "default_chunk", "dense_head_layers",
    "frames_chunk_for", "heads_chunk_for", "streamed_heads",
]
