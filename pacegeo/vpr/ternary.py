"""Ternary-weight descriptor extractor with runtime activation sparsity (after TAT-VPR).

Every ``nn.Linear`` of the encoder's transformer blocks becomes a :class:`TernaryLinear`: its
weights are ``{-1, 0, +1}`` times one per-tensor scale (absmean quantisation, as in BitNet b1.58)

    s = mean(|W|),    Q = clip(round(W / (s + eps)), -1, 1),    W_q = s * Q

During training the layer keeps latent float weights and uses ``W_q`` in the forward pass with a
straight-through estimator (the gradient reaches ``W`` as if ``W_q = W``); without gradients it
uses ``W_q`` only. The patch embedding, positional embedding, LayerNorms, LayerScales, biases, the
descriptor head and the token scorer stay float.

**Activation sparsity.** ``keep_activations`` (a module setting, no retraining per level) keeps,
per token, the ``k = ceil(keep * C_in)`` largest-magnitude inputs of every ternary layer and
zeroes the rest (:func:`topk_activations`); ``1.0`` skips the selection, so the layer is exactly the
plain quantised layer. There is no ternary or sparse kernel here: the layers run as dense float
matmuls, so neither the ternary weights nor the sparsity make anything faster.

**Storage.** Ternary weights are stored packed, 4 per byte (:func:`pack_ternary`), with their
float32 scale; :meth:`TernaryExtractor.weight_bytes` counts exactly the tensors a checkpoint holds
(packed weights, scales and every float tensor). A checkpoint (:func:`save_ternary_vpr`,
:func:`load_ternary_vpr`) is self-contained (encoder, head, scorer) and records the name and
fingerprint of the full-precision backbone it was distilled from.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from pacegeo.backbone import DinoViT
from pacegeo.backbone.config import DinoConfig
from pacegeo.errors import CheckpointError, InputError
from pacegeo.io.outputs import save_tensors
from pacegeo.pruning.budget import keep_count
from pacegeo.pruning.scorer import ScorerConfig, TokenScorer
from pacegeo.vpr.extract import (
    DescriptorExtractor,
    Scoring,
    build_head,
    head_metadata,
    read_vpr_metadata,
    resolve_vpr,
)

__all__ = [
    "MIN_ACTIVATION_KEEP",
    "TERNARY_FORMAT",
    "TernaryExtractor",
    "TernaryLinear",
    "load_ternary_vpr",
    "pack_ternary",
    "read_ternary_metadata",
    "save_ternary_vpr",
    "ternarize_encoder",
    "ternary_from_teacher",
    "ternary_quantize",
    "topk_activations",
    "unpack_ternary",
]

TERNARY_FORMAT = "pacegeo-vpr-ternary/1"
MIN_ACTIVATION_KEEP = 0.4  # lowest activation keep the distillation trains for
QUANT_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# Quantisation, sparsity, packing


def ternary_quantize(weight: torch.Tensor, eps: float = QUANT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantisation of a weight tensor (no gradient).

    Returns:
        ``(codes, scale)``: ``codes`` int8 in ``{-1, 0, 1}`` with the weight's shape, ``scale`` a
        0-d float32 tensor ``mean(|W|)``; the quantised weight is ``codes * scale``.
    """
    w = weight.detach().float()
    scale = w.abs().mean()
    codes = torch.round(w / (scale + eps)).clamp_(-1, 1).to(torch.int8)
    return codes, scale


def topk_activations(x: torch.Tensor, keep: float) -> torch.Tensor:
    """``[..., C] -> [..., C]``: per row, the ``ceil(keep * C)`` entries of largest ``|x|`` kept,
    the others set to zero (``keep = 1`` returns ``x`` itself). Gradients pass through kept entries."""
    c = x.shape[-1]
    k = keep_count(keep, c)
    if k >= c:
        return x
    idx = x.detach().abs().topk(k, dim=-1, sorted=False).indices
    mask = torch.zeros_like(x).scatter_(-1, idx, 1.0)
    return x * mask


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Ternary values ``{-1, 0, 1}`` (any shape) -> flat uint8, 4 values per byte (2 bits each,
    ``value + 1``, first value in the lowest bits; the tail is padded with zeros)."""
    flat = codes.detach().reshape(-1).to(torch.int16)
    if flat.numel() and (flat.min() < -1 or flat.max() > 1):
        raise InputError("pack_ternary needs values in {-1, 0, 1}")
    u = (flat + 1).to(torch.uint8)
    pad = (-u.numel()) % 4
    u = torch.cat((u, torch.ones(pad, dtype=torch.uint8)))  # padding codes a 0 value
    u = u.reshape(-1, 4)
    return u[:, 0] | (u[:, 1] << 2) | (u[:, 2] << 4) | (u[:, 3] << 6)


def unpack_ternary(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: flat uint8 -> int8 ``{-1, 0, 1}`` of ``shape``."""
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (numel + 3) // 4:
        raise CheckpointError(f"packed ternary tensor {packed.dtype} {tuple(packed.shape)} does not hold {tuple(shape)} values")
    parts = torch.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1).reshape(-1)[:numel]
    if bool((parts == 3).any()):
        raise CheckpointError("packed ternary tensor holds the invalid 2-bit code 3")
    return (parts.to(torch.int8) - 1).reshape(tuple(shape))


def packed_bytes(numel: int) -> int:
    """Bytes of ``numel`` packed ternary values."""
    return (numel + 3) // 4


# ---------------------------------------------------------------------------------------------
# Layer


class TernaryLinear(nn.Module):
    """Drop-in for ``nn.Linear`` with ternary weights: ``[..., in] -> [..., out]``.

    Attributes:
        weight: ``[out, in]`` latent float weights (trained through the straight-through estimator).
        bias: ``[out]`` float or None.
        keep_activations: fraction of input activations kept per token (top ``|x|``), in ``(0, 1]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, eps: float = QUANT_EPS) -> None:
        super().__init__()
        self.in_features, self.out_features, self.eps = in_features, out_features, eps
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.keep_activations = 1.0
        # Ternary weights read from a checkpoint (int8 codes, 0-d scale); None: quantise the latent weights.
        self.register_buffer("frozen_codes", None, persistent=False)
        self.register_buffer("frozen_scale", None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "TernaryLinear":
        """A ternary layer whose latent weights and bias are copies of ``linear``'s."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer.to(linear.weight.device)

    def ternary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes [out, in] int8, scale 0-d float32)`` of the weights used at inference."""
        if self.frozen_codes is not None:
            return self.frozen_codes, self.frozen_scale
        return ternary_quantize(self.weight, self.eps)

    def set_ternary(self, codes: torch.Tensor, scale: torch.Tensor) -> None:
        """Use these ternary weights from now on (a loaded checkpoint); the latent weights become
        ``codes * scale``, from which training would start again."""
        if tuple(codes.shape) != tuple(self.weight.shape):
            raise CheckpointError(f"ternary codes {tuple(codes.shape)} do not fit a {tuple(self.weight.shape)} layer")
        device = self.weight.device
        self.frozen_codes = codes.to(device, torch.int8)
        self.frozen_scale = scale.detach().to(device, torch.float32).reshape(())
        with torch.no_grad():
            self.weight.copy_(codes.float() * scale)

    def quantized_weight(self) -> torch.Tensor:
        """``[out, in]`` weight of the forward pass: ``codes * scale``; in training mode, while the
        latent weights take gradients, ``W + (W_q - W).detach()`` (straight-through estimator)."""
        if self.training and self.weight.requires_grad and torch.is_grad_enabled():
            self.frozen_codes = self.frozen_scale = None  # training moves the latent weights away from loaded codes
            codes, scale = ternary_quantize(self.weight, self.eps)
            w_q = codes.to(self.weight.dtype) * scale.to(self.weight.dtype)
            return self.weight + (w_q - self.weight).detach()
        codes, scale = self.ternary()
        return codes.to(self.weight.dtype) * scale.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep_activations < 1.0:
            x = topk_activations(x, self.keep_activations)
        return F.linear(x, self.quantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"keep_activations={self.keep_activations}")


def ternarize_encoder(encoder: DinoViT) -> DinoViT:
    """A copy of a DINO-style encoder in which every ``nn.Linear`` of the transformer blocks is a
    :class:`TernaryLinear` initialised from it; everything else (patch embedding, norms, ...) is a
    float copy. The original is untouched."""
    if not isinstance(encoder, DinoViT):
        raise InputError(f"only a DINO-style encoder (DinoViT) can be made ternary, got {type(encoder).__name__}")
    student = copy.deepcopy(encoder)
    for block in student.blocks:
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                if type(child) is nn.Linear:
                    setattr(module, child_name, TernaryLinear.from_linear(child))
    return student


# ---------------------------------------------------------------------------------------------
# Extractor


class TernaryExtractor(DescriptorExtractor):
    """:class:`DescriptorExtractor` on a ternary encoder (:func:`ternarize_encoder`):
    ``[B, 3, H, W]`` in [0, 1] -> ``[B, D]``, with ``keep`` (tokens) as before and the module
    setting :attr:`keep_activations` (activation sparsity of every ternary layer)."""

    def __init__(self, encoder: DinoViT, head: nn.Module, scorer: TokenScorer | None = None,
                 prune_after: int | None = None, scoring: Scoring | None = None) -> None:
        super().__init__(encoder, head, scorer=scorer, prune_after=prune_after, scoring=scoring)
        if not self.ternary_layers():
            raise InputError("the encoder has no ternary layers; convert it with ternarize_encoder")

    def ternary_layers(self) -> dict[str, TernaryLinear]:
        """Ternary layers by their name inside the encoder (``blocks.0.attn.qkv``, ...)."""
        return {name: m for name, m in self.encoder.named_modules() if isinstance(m, TernaryLinear)}

    @property
    def keep_activations(self) -> float:
        return next(iter(self.ternary_layers().values())).keep_activations

    @keep_activations.setter
    def keep_activations(self, keep: float) -> None:
        keep = float(keep)
        if not MIN_ACTIVATION_KEEP <= keep <= 1.0:
            raise InputError(f"keep_activations must be in [{MIN_ACTIVATION_KEEP}, 1] (the trained range), got {keep!r}")
        for layer in self.ternary_layers().values():
            layer.keep_activations = keep

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint stores: ``ternary.<layer>.codes`` (packed uint8) and
        ``ternary.<layer>.scale`` (float32 ``[1]``), ``encoder.*`` (all other encoder tensors),
        ``head.*`` and ``scorer.*``."""
        layers = self.ternary_layers()
        state: dict[str, torch.Tensor] = {}
        for name, layer in layers.items():
            codes, scale = layer.ternary()
            state[f"ternary.{name}.codes"] = pack_ternary(codes)
            state[f"ternary.{name}.scale"] = scale.float().reshape(1)
        latent = {f"{name}.weight" for name in layers}
        state.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items() if k not in latent})
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        if self.scorer is not None:
            state.update({f"scorer.{k}": v for k, v in self.scorer.state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def weight_bytes(self) -> int:
        """Bytes of the stored weights: packed ternary weights, their scales and every float tensor
        (encoder, head, scorer), as in a checkpoint (file header not counted)."""
        return sum(t.numel() * t.element_size() for t in self.checkpoint_tensors().values())

    def linear_weight_bytes(self) -> int:
        """Bytes of the ternary layers' weights as stored: packed codes plus one float32 scale each
        (their biases are counted in :meth:`weight_bytes` with the other float tensors)."""
        return sum(packed_bytes(m.weight.numel()) + 4 for m in self.ternary_layers().values())


def ternary_from_teacher(teacher: DescriptorExtractor) -> TernaryExtractor:
    """A ternary extractor initialised from a full-precision one: ternary copy of its encoder,
    copies of its head and scorer, same ``prune_after`` and scoring rule."""
    return TernaryExtractor(
        ternarize_encoder(teacher.encoder), copy.deepcopy(teacher.head),
        scorer=copy.deepcopy(teacher.scorer), prune_after=teacher.prune_after, scoring=teacher.scoring,
    ).to(teacher._mean.device)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def read_ternary_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a ternary VPR checkpoint; :class:`CheckpointError` if it is not one."""
    return read_vpr_metadata(path, TERNARY_FORMAT, "ternary VPR checkpoint")


def save_ternary_vpr(extractor: TernaryExtractor, path: str | Path, backbone: str, backbone_fingerprint: str,
                     extra: dict[str, str] | None = None) -> Path:
    """Write the whole ternary extractor (packed weights, float tensors, configs) as safetensors,
    atomically. ``backbone``/``backbone_fingerprint`` name the full-precision backbone it was
    distilled from (:func:`pacegeo.hub.backbone_fingerprint`)."""
    if not backbone_fingerprint:
        raise ValueError("save_ternary_vpr needs the fingerprint of the teacher backbone")
    layers = {name: list(m.weight.shape) for name, m in extractor.ternary_layers().items()}
    meta = {
        "format": TERNARY_FORMAT,
        "encoder_config": json.dumps(asdict(extractor.encoder.config)),
        "ternary_layers": json.dumps(layers),
        "quantization": "absmean ternary per tensor, 2-bit packed (value + 1, 4 per byte, low bits first)",
        **head_metadata(extractor),
        "backbone": str(backbone),
        "backbone_fingerprint": backbone_fingerprint,
    }
    meta.update(extra or {})
    return save_tensors(extractor.checkpoint_tensors(), path, meta)


def _strict_load(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{what} weights of {path} do not match its config: {err}") from None


def load_ternary_vpr(name_or_path: str | Path, device: str | torch.device = "cpu", scoring: Scoring | None = None,
                     backbone: nn.Module | None = None) -> TernaryExtractor:
    """Build a :class:`TernaryExtractor` from a checkpoint (a path or a bundled name such as
    ``"pacegeo-tiny-vpr-ternary"``). Loading is strict: missing, unexpected or misshapen tensors
    raise :class:`CheckpointError`. With ``backbone``, also refuse a file distilled from another
    backbone (fingerprint check)."""
    path = resolve_vpr(name_or_path)
    meta = read_ternary_metadata(path)
    if backbone is not None:
        from pacegeo.hub import backbone_fingerprint

        if backbone_fingerprint(backbone) != meta.get("backbone_fingerprint"):
            raise CheckpointError(f"{path.name} was distilled from backbone {meta.get('backbone', '?')} "
                                  f"(fingerprint {meta.get('backbone_fingerprint')}), not from the one given")
    try:
        config = DinoConfig(**json.loads(meta["encoder_config"]))
        layers = {name: tuple(shape) for name, shape in json.loads(meta["ternary_layers"]).items()}
        head = build_head(meta["head"], json.loads(meta["head_config"]))
        scorer = TokenScorer(ScorerConfig(**json.loads(meta["scorer_config"]))) if meta.get("scorer_config") else None
        prune_after = int(meta["prune_after"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has unreadable ternary metadata: {type(err).__name__}: {err}") from None
    encoder = ternarize_encoder(DinoViT(config))
    extractor = TernaryExtractor(encoder, head, scorer=scorer, prune_after=prune_after, scoring=scoring)
    found = extractor.ternary_layers()
    if {n: tuple(m.weight.shape) for n, m in found.items()} != layers:
        raise CheckpointError(f"{path} lists ternary layers {sorted(layers)} that the encoder config does not build")
    state = load_file(str(path))
    expected = set(extractor.checkpoint_tensors())
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    for name, layer in found.items():
        encoder_state[f"{name}.weight"] = layer.weight.detach().clone()  # replaced by set_ternary below
    _strict_load(encoder, encoder_state, "encoder", path)
    for name, layer in found.items():
        layer.set_ternary(unpack_ternary(state[f"ternary.{name}.codes"], layers[name]), state[f"ternary.{name}.scale"])
    _strict_load(head, {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}, "head", path)
    if scorer is not None:
        _strict_load(scorer, {k[len("scorer."):]: v for k, v in state.items() if k.startswith("scorer.")}, "scorer", path)
    extractor = extractor.to(device).eval()
    for param in extractor.parameters():
        param.requires_grad_(False)
    return extractor
