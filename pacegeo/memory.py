"""Peak-memory model of a reconstruction, from what the code allocates.

One model serves the reconstruct preflight (:meth:`pacegeo.Pipeline.check_memory`), the estimate
stored on every :class:`pacegeo.Reconstruction`, ``pacegeo estimate`` and ``eval/memory.py``.
It walks the phases of a forward and counts, per phase, the tensors alive at its peak:

* ``embed``: DINO patch embedding (unpruned: all frames at once, as the backbone does; pruned:
  ``frames_chunk`` frames at a time into a preallocated feature buffer);
* ``select`` (pruned): scoring and keep/merge/drop, ``frames_chunk`` frames at a time;
* ``aa``: the alternating-attention stack: its input, the entries the heads read (kept as they
  are produced) and the working set of one transformer block (attention or MLP, whichever is
  larger, from the tensors ``Block.forward`` creates);
* ``heads``: unpruned, the backbone's heads over all dense entries (DPT chunks of
  ``frames_chunk_size`` frames, the chunk outputs concatenated, activations); pruned, the streamed
  path (:mod:`pacegeo.pruning.stream`): reduced entries, DINO features, output buffers and one
  chunk of restored entries and DPT activations;
* ``post`` (host only): the :class:`~pacegeo.Reconstruction` arrays (float32 predictions, points
  unprojected from depth, colours) and one chunk of the float64 unprojection.

The total is ``weights + inputs + runtime + max(phases)``: ``inputs`` the images on the device,
``runtime`` what the process holds besides tensors (the CPU process's resident set before the run
minus weights and images; 0 on CUDA, where ``max_memory_allocated`` counts tensors only).
Precision follows the autocast rules: matrix products produce the autocast dtype; the residual
stream and the entries stay float32; LayerNorm outputs float32 on CUDA and the input's dtype on
the CPU; on CUDA the heads compute in float32 (the backbone turns autocast off around them).
Attention is taken to be memory-efficient (SDPA's flash / memory-efficient kernels).

On the CPU the estimate is of the process's resident set: from the heads on it adds what glibc
keeps of the blocks a chunk loop frees, the part of one chunk's tensors below its mmap threshold
(32 MiB), which it serves from its heap. ``live_only=True`` gives the tensor bytes alone.
"""

import functools
import math
from dataclasses import dataclass

import torch

from pacegeo.system import available_memory  # noqa: F401  (part of this module's API)

GIB = 1024**3
POST_CHUNK = 4  # frames per chunk of the host-side post-processing (pacegeo.pipeline)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one reconstruction, in bytes.

    ``weights`` (parameters), ``inputs`` (images on the device) and ``runtime`` (the process
    outside tensors, CPU only) are resident before the forward; ``activations`` is the peak on top
    of them, reached in phase ``peak_phase`` (``phases`` lists every phase's peak); ``outputs`` the
    predictions (and, on the host, the reconstruction arrays) held at the end; ``stack`` the peak
    of the attention stack's phase, the part that pruning shrinks; ``total`` the peak itself.
    """

    weights: int
    activations: int
    outputs: int
    total: int
    stack: int = 0
    inputs: int = 0
    runtime: int = 0
    peak_phase: str = ""
    phases: tuple[tuple[str, int], ...] = ()

    @property
    def beyond_weights(self) -> int:
        """What the forward needs on top of already-loaded weights."""
        return self.total - self.weights

    @property
    def resident(self) -> int:
        """Weights, inputs and runtime: what is resident before the forward starts."""
        return self.weights + self.inputs + self.runtime

    def as_dict(self) -> dict:
        return {
            "total": self.total, "weights": self.weights, "inputs": self.inputs, "runtime": self.runtime,
            "activations": self.activations, "outputs": self.outputs, "stack": self.stack,
            "peak_phase": self.peak_phase, "phases": dict(self.phases),
        }


@dataclass(frozen=True)
class _Bytes:
    """Element sizes on one device under one autocast dtype."""

    act: int  # matrix-product outputs (autocast dtype)
    norm: int  # LayerNorm output of an autocast-dtype input (CUDA autocast: float32)
    heads: int  # head activations (CUDA: float32; CPU: the autocast dtype)
    cast: int  # extra bytes per element when an autocast op casts a float32 input (0 in float32)

    @classmethod
    def make(cls, amp_dtype: torch.dtype | None, device: str) -> "_Bytes":
        if amp_dtype is None:
            return cls(act=4, norm=4, heads=4, cast=0)
        size = torch.finfo(amp_dtype).bits // 8
        cuda = device == "cuda"
        return cls(act=size, norm=4 if cuda else size, heads=4 if cuda else size, cast=size)


def block_bytes_per_token(dim: int, mlp_ratio: float, b: _Bytes, qk_norm: bool, rope: bool) -> float:
    """Peak bytes per token of one pre-norm ``Block`` on a float32 residual stream, block input
    included (its caller holds it): the larger of the attention and the MLP phase."""
    hidden = int(dim * mlp_ratio)
    x = 4 * dim  # block input
    n1 = 4 * dim  # norm1 output (float32 input -> float32)
    qkv = 3 * dim * b.act + dim * b.cast  # qkv projection (+ the autocast copy of its input)
    if qk_norm or rope:
        q = b.norm if qk_norm else b.act
        rope_phase = 2 * dim * q + dim * q + (1.5 * dim * q if rope else 0)  # normed q, k; rotated q; k's rope temps
        sdpa_phase = 2 * dim * q + (2 * dim * b.act if q != b.act else 0) + dim * b.act
        proj_phase = 2 * dim * q + 3 * dim * b.act
        attention = x + n1 + qkv + max(rope_phase, sdpa_phase, proj_phase)
    else:
        attention = x + n1 + qkv + 3 * dim * b.act  # output, heads merged, projection
    mlp = x + 4 * dim + 4 * dim + max(dim * b.cast + hidden * b.act, 2 * hidden * b.act)  # x1, norm2, fc1/GELU
    return max(attention, mlp)


def _dino_tokens(agg) -> tuple[int, int, float]:
    """(extra tokens per frame, width, MLP ratio) of the patch embedding."""
    dino = agg.resolved_dino()
    if dino is None:
        return 0, agg.embed_dim, 0.0
    return 1 + dino.num_register_tokens, dino.embed_dim, dino.mlp_ratio


def embed_bytes(config, frames: int, image_hw: tuple[int, int], b: _Bytes) -> int:
    """Working set of ``Aggregator.embed`` on ``frames`` frames (its output included)."""
    agg = config.aggregator
    h, w = image_hw
    n = (h // agg.patch_size) * (w // agg.patch_size)
    extra, dim, ratio = _dino_tokens(agg)
    pixels = frames * 3 * h * w * 4  # the normalised copy of the images
    if ratio == 0:  # convolutional patch embedding
        return pixels + frames * n * dim * b.act
    tokens = frames * (extra + n)
    dino = agg.resolved_dino()
    block = block_bytes_per_token(dim, ratio, b, qk_norm=False, rope=False) + int(ratio * dim) * dim * b.cast / tokens
    prepare = frames * n * dim * b.act + 2 * tokens * dim * 4  # patchify, cls concat, + positional embedding
    final = 2 * tokens * dim * 4  # last residual and its norm (the features)
    return pixels + max(prepare, int(tokens * block), final) if dino.depth else pixels + prepare


def dpt_chunk_tensors(head, chunk: int, grid_hw: tuple[int, int], image_hw: tuple[int, int], b: _Bytes) -> list[float]:
    """Sizes of the tensors alive at the peak of ``DPTHead._forward_chunk`` on ``chunk`` frames.

    Alive throughout: the resized pyramid and its ``layer*_rn`` projections (kept until the end;
    the token maps are views of the entries). The peak is at full resolution: either where the
    positional embedding is added (the interpolated features, their sum with the embedding, the
    embedding itself: float32, plus its copy and scaled copy in the head's dtype; computed once per
    shape and kept by the head, counted here as at its first call) or in ``output_conv2`` (its
    input, the 32-channel convolution and the output).
    """
    if head is None:
        return []
    n = grid_hw[0] * grid_hw[1]
    full = image_hw[0] * image_hw[1]
    f, oc, dt = head.features, head.out_channels, b.heads
    scales = (16, 4, 1, 0.25)  # pixels per patch of the four pyramid levels
    kept = [chunk * ch * n * s * dt for ch, s in zip(oc, scales)] + [chunk * f * n * s * dt for s in scales]
    half = f if head.feature_only else f // 2
    embedding = [full * half * 4] + ([full * half * dt] if dt != 4 else []) + [full * half * dt]
    with_embedding = [chunk * half * full * dt] * 2 + embedding
    conv2 = [] if head.feature_only else [chunk * full * c * dt for c in (half, 32, head.output_dim)]
    return kept + max(with_embedding, conv2, key=sum)


def dpt_chunk_bytes(head, chunk: int, grid_hw: tuple[int, int], image_hw: tuple[int, int], b: _Bytes) -> int:
    """Peak bytes of ``DPTHead._forward_chunk`` on ``chunk`` frames (:func:`dpt_chunk_tensors`)."""
    return int(sum(dpt_chunk_tensors(head, chunk, grid_hw, image_hw, b)))


#: glibc's largest mmap threshold: smaller blocks come from its heap and stay there once freed.
HEAP_BLOCK_LIMIT = 32 * 1024**2


def heap_bytes(sizes: list[float]) -> int:
    """The part of ``sizes`` that glibc serves from its heap (blocks below its mmap threshold)."""
    return int(sum(x for x in sizes if x < HEAP_BLOCK_LIMIT))


@functools.lru_cache(maxsize=16)
def parameter_bytes(config) -> int:
    """Float32 bytes of the parameters of a :class:`pacegeo.backbone.VGGT` built from ``config``
    (counted on the meta device: nothing is allocated)."""
    from pacegeo.backbone.model import VGGT

    with torch.device("meta"):
        return 4 * sum(p.numel() for p in VGGT(config).parameters())


def _head_outputs(config) -> int:
    """Output channels per pixel of the depth and point heads (prediction + confidence)."""
    return sum(h.output_dim for h in (config.depth_head, config.point_head) if h is not None)


def estimate_peak_memory(
    config,
    frames: int,
    image_hw: tuple[int, int],
    keep: float = 1.0,
    amp_dtype: torch.dtype | None = None,
    weights_bytes: int | None = None,
    device: str = "cpu",
    runtime_bytes: int = 0,
    frames_chunk: int | None = None,
    heads_chunk: int | None = None,
    outputs_on_host: bool | None = None,
    post: bool | None = None,
    live_only: bool = False,
) -> MemoryEstimate:
    """Estimate the peak memory of reconstructing ``frames`` frames of ``image_hw`` with ``keep``.

    Args:
        config: the backbone's :class:`pacegeo.backbone.VGGTConfig`.
        frames: number of frames ``S``.
        image_hw: model input ``(h, w)`` in pixels.
        keep: fraction of patch tokens kept per frame (1: the unpruned backbone).
        amp_dtype: autocast dtype (None: float32), see :mod:`pacegeo.precision`.
        weights_bytes: size of the loaded parameters (default: counted from the config, float32).
        device: ``"cpu"`` or ``"cuda"`` (the element sizes of autocast differ).
        runtime_bytes: process memory outside tensors (CPU: resident set before the run minus
            weights and images).
        frames_chunk, heads_chunk: the pruner's chunk sizes (None: the defaults of :class:`PaceVGGT`).
        outputs_on_host: the pruned path moves predictions off the device chunk by chunk
            (default: on CUDA, as the pipeline does).
        post: count the host-side post-processing (default: on the CPU, where it shares the memory).
        live_only: on the CPU, count live tensor bytes only (what
            :class:`pacegeo.memtrace.TensorMemoryTracker` measures), without the allocator's slack.
    """
    from pacegeo.pruning.stream import frames_chunk_for, heads_chunk_for

    device = torch.device(device).type
    cuda = device == "cuda"
    outputs_on_host = cuda if outputs_on_host is None else outputs_on_host
    post = (not cuda) if post is None else post
    agg = config.aggregator
    if weights_bytes is None:
        weights_bytes = parameter_bytes(config)
    b = _Bytes.make(amp_dtype, device)
    height, width = image_hw
    ps = agg.patch_size
    grid_hw = (height // ps, width // ps)
    n = grid_hw[0] * grid_hw[1]
    psi = agg.patch_start_idx
    kept = n if keep >= 1.0 else max(1, min(n, math.ceil(keep * n - 1e-9)))
    pruned = kept < n
    s, c, d = frames, agg.embed_dim, 2 * agg.embed_dim
    heads = [h for h in (config.depth_head, config.point_head) if h is not None]
    dpt_chunk = min([h.frames_chunk_size or s for h in heads] or [8])
    frames_chunk = frames_chunk or frames_chunk_for(height * width, dpt_chunk)
    dpt_sizes = [h.frames_chunk_size for h in heads if h.frames_chunk_size]
    heads_chunk = heads_chunk or heads_chunk_for(image_hw, s, min(dpt_sizes, default=None))
    layers = len(config.head_layers())
    dino = agg.resolved_dino() is not None
    r = 4 if dino or amp_dtype is None else b.act  # residual stream / features / entries
    pixels = height * width
    images = s * 3 * pixels * 4
    out_ch = _head_outputs(config)
    outputs = s * pixels * out_ch * b.heads
    extra, dino_dim, _ = _dino_tokens(agg)

    phases: dict[str, int] = {}
    # under autocast every linear layer casts its weight to the autocast dtype for the call
    weight_cast = int(agg.mlp_ratio * c) * c * b.cast
    tokens = s * (psi + kept)
    block = block_bytes_per_token(c, agg.mlp_ratio, b, agg.qk_norm, agg.rope_freq > 0)
    entry = tokens * d * r
    seq = tokens * (c * r + 16 + (4 if pruned else 0))  # AA input, RoPE positions, key bias

    def stack_peak(base: int) -> int:
        """Peak of run_blocks: every head layer's entry stored when produced, one block working."""
        depth = agg.depth
        kept_layers = sorted(config.head_layers())
        best = 0
        for j in range(depth):
            stored = sum(1 for i in kept_layers if i < j)
            best = max(best, stored * entry + int(tokens * block) + weight_cast)
            if j in kept_layers:
                best = max(best, (stored + 1) * entry + 2 * tokens * c * r)
        return base + best

    if not pruned:
        feats = s * (extra + n) * dino_dim * r  # the backbone keeps the embedding's output alive
        phases["embed"] = embed_bytes(config, s, image_hw, b)
        phases["aa"] = stack_peak(feats + seq)
        dense = layers * entry
        # DPTHead.forward keeps every chunk's output in a list while the next chunk runs, then
        # concatenates them and applies the activations; the first head's outputs stay alive
        # while the second one runs.
        before, best = 0, 0
        for h in heads:
            per_frame = pixels * h.output_dim * b.heads
            c_h = min(h.frames_chunk_size or s, s)
            during = dpt_chunk_bytes(h, c_h, grid_hw, image_hw, b) + (s - c_h) * per_frame
            best = max(best, before + max(during, 3 * s * per_frame))
            before += s * per_frame
        phases["heads"] = dense + best
        slack = max([heap_bytes(dpt_chunk_tensors(h, min(dpt_chunk, s), grid_hw, image_hw, b)) for h in heads] or [0])
    else:
        feats = s * n * c * r  # preallocated feature buffer, read by the restoration
        chunk = min(frames_chunk, s)
        reduction = s * n * (8 + 8 + 3) + s * kept * (8 + 2 + 4)  # assignment, cumsum, masks; slot index, sizes
        # the features of one chunk are the embedding's output; several chunks go into a buffer
        phases["embed"] = embed_bytes(config, s, image_hw, b) if s <= chunk else feats + embed_bytes(config, chunk, image_hw, b)
        # one chunk's unit features, weighted features, similarities and slot sums, on top of the
        # chunks reduced so far; then their concatenation (the parts and the result)
        select_chunk = chunk * n * (c * 4 * 2 + kept * 4) + chunk * kept * c * 4
        parts = s * kept * c * r + reduction
        phases["select"] = feats + max(parts + select_chunk, 2 * parts)
        phases["aa"] = stack_peak(feats + reduction + seq)
        hc = min(heads_chunk, s)
        pruned_pos = n - kept
        plan = hc * pruned_pos * (c * 4 + kept * 4 * 3 + 40)
        restored = layers * hc * (psi + n + 1) * d * r
        hidden = min(256, max(16, c // 4))
        restore_work = hc * pruned_pos * (d * (3 * r + b.act) + (c + d) * 4 + 2 * hidden * b.act)
        # the heads on one chunk of hc frames: each DPT head splits it into its own chunks (as in
        # the unpruned path, with hc frames for s), and the depth outputs of the chunk stay alive
        # while the point head runs
        dpt, before = 0, 0
        for h in heads:
            per_frame = pixels * h.output_dim * b.heads
            c_h = min(h.frames_chunk_size or hc, hc)
            during = dpt_chunk_bytes(h, c_h, grid_hw, image_hw, b) + (hc - c_h) * per_frame
            dpt = max(dpt, before + max(during, 3 * hc * per_frame if c_h < hc else 0))
            before += hc * per_frame
        # the output buffers are allocated when the first chunk's outputs are written: during the
        # heads of the later chunks, or right after the heads when one chunk holds every frame
        one_chunk = hc >= s
        held = feats + reduction + layers * entry + (0 if outputs_on_host or one_chunk else outputs)
        write = 2 * outputs if one_chunk and not outputs_on_host else 0
        # the plan is freed before the heads run
        phases["heads"] = held + restored + max(plan + restore_work, dpt, write)
        layer = hc * (psi + n + 1) * d * r
        dpt_heap = max([heap_bytes(dpt_chunk_tensors(h, min(h.frames_chunk_size or hc, hc), grid_hw, image_hw, b))
                        for h in heads] or [0])
        slack = heap_bytes([layer] * layers) + (plan if plan < HEAP_BLOCK_LIMIT else 0) + max(restore_work, dpt_heap)

    final = 0 if (pruned and outputs_on_host) else outputs
    if post:
        # float32 predictions, points from depth, colours and mask, and one chunk of the float64
        # unprojection (predictions of another dtype are freed as they are converted)
        rec = s * pixels * (out_ch * 4 + 3 * 4 + 3 + 1)
        unproject = min(POST_CHUNK, s) * pixels * 3 * 8 * 3
        phases["post"] = rec + unproject
        final = rec
    if not cuda and not live_only:
        # glibc serves blocks below its mmap threshold (up to 32 MiB) from its heap and keeps what a
        # chunk loop frees there: from the heads on, the resident set carries the heap-served part of
        # one chunk's working set beyond the live tensors (see eval/results/memory_cpu.md)
        for phase in ("heads", "post"):
            if phase in phases:
                phases[phase] += slack
    activations = max(phases.values())
    peak_phase = max(phases, key=phases.get)
    total = weights_bytes + images + runtime_bytes + activations
    return MemoryEstimate(
        weights=int(weights_bytes),
        activations=int(activations),
        outputs=int(final),
        total=int(total),
        stack=int(phases["aa"]),
        inputs=int(images),
        runtime=int(runtime_bytes),
        peak_phase=peak_phase,
        phases=tuple((k, int(v)) for k, v in phases.items()),
    )


def max_frames(fits, low: int = 1, high: int = 1 << 20) -> int:
    """Largest frame count ``S`` in ``[low, high]`` with ``fits(S)`` (monotone); 0 if none."""
    if not fits(low):
        return 0
    hi = low
    while hi < high and fits(min(high, hi * 2)):
        hi = min(high, hi * 2)
    if hi == high:
        return high
    lo, hi = hi, min(high, hi * 2)
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def min_keep(fits, step: float = 0.01) -> float | None:
    """Smallest keep on a ``step`` grid in ``(0, 1]`` with ``fits(keep)`` (monotone); None if none."""
    grid = [round(k * step, 6) for k in range(1, int(round(1 / step)) + 1)]
    if not fits(grid[-1]) and not fits(grid[0]):
        return None
    lo, hi = 0, len(grid) - 1
    if fits(grid[0]):
        return grid[0]
    while lo + 1 < hi:  # fits(grid[hi]) and not fits(grid[lo])
        mid = (lo + hi) // 2
        if fits(grid[mid]):
            hi = mid
        else:
            lo = mid
    return grid[hi]


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": GIB, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_bytes(text: str) -> int:
    """``"80GiB"``, ``"80 GB"``, ``"512MiB"`` or a plain byte count -> bytes.

    Raises:
        InputError: not a positive size.
    """
    import re

    from pacegeo.errors import InputError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise InputError(f"memory must be a positive size such as 80GiB, 24GB or 512MiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def fit_report(estimate_for, frames: int, keep: float, memory: int, frames_limit: int = 1 << 20) -> dict:
    """Whether ``frames`` frames at ``keep`` fit in ``memory`` bytes, and what would.

    ``estimate_for(frames, keep)`` returns a :class:`MemoryEstimate`. Returns ``peak_bytes``,
    ``fits``, ``max_frames`` (the largest frame count that fits at ``keep``; 0 if none) and
    ``min_keep`` (the least pruning that fits ``frames``: the highest keep on a 0.01 grid whose
    peak fits; None if even keep 0.01 does not).
    """
    estimate = estimate_for(frames, keep)
    fits = estimate.total <= memory
    most = max_frames(lambda s: estimate_for(s, keep).total <= memory, 1, frames_limit)
    least = None
    for step in range(100, 0, -1):
        k = step / 100
        if estimate_for(frames, k).total <= memory:
            least = k
            break
    return {"peak_bytes": estimate.total, "fits": fits, "max_frames": most, "min_keep": least, "estimate": estimate}


__all__ = [
    "GIB",
    "MemoryEstimate",
    "available_memory",
    "block_bytes_per_token",
    "dpt_chunk_bytes",
    "dpt_chunk_tensors",
    "heap_bytes",
    "estimate_peak_memory",
    "fit_report",
    "max_frames",
    "min_keep",
    "parameter_bytes",
    "parse_bytes",
]
