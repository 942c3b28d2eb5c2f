"""Attention targets for stage-1 scorer training (distillation from the frozen backbone).

The target importance of a patch token is the **attention mass it receives in the backbone's
global-attention layers**: for every global block, the softmax attention of all queries (all
frames' camera, register and patch tokens) is summed per key, averaged over heads and queries, then
averaged over the global layers, and finally normalised over the patch tokens of each frame.

Why this choice: pruning removes tokens *as keys and values* of the AA stack. A token that no query
attends to can be dropped with little effect on any output, while a token that many queries read
(across frames, in global attention, where multi-view correspondence happens) is what the camera
and depth heads depend on. Frame attention is left out because it only mixes tokens within a frame
and is dominated by local smoothing; the global layers carry the cross-view signal pruning must
preserve. Normalising per frame matches how budgets are assigned (every frame keeps its own k).
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class GlobalAttentionRecorder:
    """Records the key-side attention mass of every global block of an aggregator during a forward.

    Use as a context manager around ``backbone(images)``; then :meth:`patch_importance` gives
    ``[B, S, N]`` per-frame distributions over patch tokens.

    ``queries``: ``"all"`` (every token of every frame: the stage-1 target) or ``"camera"`` (only
    the camera tokens, the tokens the camera head reads; needs the number of ``frames``).
    """

    QUERIES = ("all", "camera")

    def __init__(self, aggregator: nn.Module, queries: str = "all", frames: int | None = None) -> None:
        if queries not in self.QUERIES:
            raise ValueError(f"queries must be one of {self.QUERIES}, got {queries!r}")
        if queries == "camera" and not frames:
            raise ValueError("camera queries need the number of frames")
        self.aggregator = aggregator
        self.queries = queries
        self.frames = frames
        self.masses: list[torch.Tensor] = []
        self._handles = []

    def _hook(self, module: nn.Module, args, kwargs) -> None:
        x = args[0]  # [B, S*P, C], already normed by the block
        pos = kwargs.get("pos")
        qkv = rearrange(module.qkv(x), "b n (three h d) -> three b h n d", three=3, h=module.num_heads)
        q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
        if module.rope is not None and pos is not None:
            q, k = module.rope(q, pos), module.rope(k, pos)
        if self.queries == "camera":  # the camera token is the first token of every frame
            q = q[:, :, :: q.shape[2] // self.frames]
        attn = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)  # [B, h, Q, N]
        self.masses.append(attn.mean(dim=(1, 2)).float())  # [B, S*P]: mean over heads and queries

    def __enter__(self) -> "GlobalAttentionRecorder":
        self.masses = []
        for block in self.aggregator.global_blocks:
            self._handles.append(block.attn.register_forward_pre_hook(self._hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def patch_importance(self, frames: int) -> torch.Tensor:
        """``[B, S, N]``: mean over global layers of the received attention, normalised per frame."""
        mass = torch.stack(self.masses).mean(0)  # [B, S*P]
        mass = rearrange(mass, "b (s p) -> b s p", s=frames)[..., self.aggregator.patch_start_idx :]
        return mass / mass.sum(-1, keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def attention_targets(backbone: nn.Module, images: torch.Tensor, queries: str = "all") -> torch.Tensor:
    """Per-frame attention-mass distributions ``[B, S, N]`` of the unpruned backbone on ``images``
    (``queries``: see :class:`GlobalAttentionRecorder`)."""
    with GlobalAttentionRecorder(backbone.aggregator, queries, images.shape[1]) as rec:
        backbone.aggregator(images, keep_layers=set())
    return rec.patch_importance(images.shape[1])


def distillation_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-frame ``KL(target || softmax(logits / T))``, averaged over frames (ranking-aware: only the
    relative order and spread of the logits within a frame matter).

    logits, target: ``[B, S, N]``; target rows sum to 1.
    """
    log_p = F.log_softmax(logits / temperature, dim=-1)
    kl = (target * (torch.log(target.clamp(min=1e-12)) - log_p)).sum(-1)
    return kl.mean()


def topk_overlap(logits: torch.Tensor, target: torch.Tensor, keep: float) -> float:
    """Fraction of the target's top-``keep`` tokens per frame that the logits also rank in their top-k."""
    n = logits.shape[-1]
    k = max(1, int(round(keep * n)))
    a = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    b = torch.zeros_like(target, dtype=torch.bool).scatter_(-1, target.topk(k, dim=-1).indices, True)
    return float((a & b).sum() / b.sum())
