"""Global-descriptor extraction with early token pruning, and the VPR checkpoint format.

:class:`DescriptorExtractor` wraps a backbone's patch encoder and a descriptor head
(:mod:`pacegeo.vpr.head`). For a DINO-style encoder (:class:`pacegeo.backbone.DinoViT`) it runs

1. ``prepare_tokens`` and the first ``prune_after`` blocks on all tokens;
2. scores the patch tokens (``[B, 1, N]`` logits, from the learned :class:`pacegeo.pruning.TokenScorer`
   or a training-free rule of :mod:`pacegeo.pruning.training_free`) on the layer-normalised
   intermediate features, and keeps ``keep_count(keep, N) = ceil(keep * N)`` of them per image with
   the same top-k selection as reconstruction (:func:`pacegeo.pruning.merge.topk_mask`); the class
   and register tokens are never pruned;
3. runs the remaining blocks and the final norm on the kept tokens only, then the head.

For a convolutional encoder (:class:`pacegeo.backbone.PatchEmbed`) the tokens are pruned right
after the patch embedding. ``keep=1.0`` skips scoring entirely, so it equals the unpruned
descriptor exactly. ``keep`` is an inference-time argument: no retraining per budget.

The learned scorer is trained by self-distillation: the head's own token importance on unpruned
tokens (:meth:`pacegeo.vpr.head.WeightedOTHead.token_importance`) is turned into a distribution per
image (:func:`distillation_target`) and the scorer's softmax over the same tokens is pulled towards
it (:func:`distillation_loss`, KL divergence).

A VPR checkpoint (:func:`save_vpr` / :func:`load_vpr`) is a safetensors file with the head (and
scorer) weights; its metadata names the head kind and config, the scorer config, ``prune_after``
and the backbone it was trained on (name and SHA-256 of its weight file).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from pacegeo.backbone import VGGT, DinoViT, PatchEmbed
from pacegeo.backbone.aggregator import IMAGENET_MEAN, IMAGENET_STD
from pacegeo.errors import CheckpointError, InputError, option
from pacegeo.io.outputs import save_tensors
from pacegeo.pruning.budget import keep_count, validate_keep
from pacegeo.pruning.merge import gather_tokens, kept_indices, topk_mask
from pacegeo.pruning.scorer import ScorerConfig, TokenScorer
from pacegeo.pruning.training_free import distinctiveness_scores, grid_scores, random_scores
from pacegeo.vpr.head import GeMConfig, GeMHead, VLADConfig, VLADHead, WeightedOTConfig, WeightedOTHead

logger = logging.getLogger(__name__)

VPR_FORMAT = "pacegeo-vpr/1"
HEADS: dict[str, tuple[type[nn.Module], type]] = {
    "weighted_ot": (WeightedOTHead, WeightedOTConfig),
    "gem": (GeMHead, GeMConfig),
    "vlad": (VLADHead, VLADConfig),
}
Scoring = Literal["learned", "distinctiveness", "grid", "random"]
SCORINGS = ("learned", "distinctiveness", "grid", "random")

__all__ = [
    "HEADS",
    "VPR_FORMAT",
    "DescriptorExtractor",
    "EncodedTokens",
    "build_head",
    "distillation_loss",
    "distillation_target",
    "check_vpr_backbone",
    "file_sha256",
    "head_kind",
    "head_metadata",
    "load_vpr",
    "read_vpr_metadata",
    "resolve_vpr",
    "save_vpr",
]


def head_kind(head: nn.Module) -> str:
    """Registry name of a head instance (``"weighted_ot"``, ``"gem"`` or ``"vlad"``)."""
    for name, (cls, _) in HEADS.items():
        if type(head) is cls:
            return name
    raise InputError(f"unknown descriptor head type {type(head).__name__}")


def build_head(kind: str, config: dict | None = None, in_dim: int | None = None) -> nn.Module:
    """A head from its registry name and config fields (``in_dim`` fills a missing ``in_dim``)."""
    if kind not in HEADS:
        raise InputError(f"unknown descriptor head {kind!r}; expected one of {', '.join(HEADS)}")
    cls, config_cls = HEADS[kind]
    fields = dict(config or {})
    if in_dim is not None:
        fields.setdefault("in_dim", in_dim)
    try:
        return cls(config_cls(**fields))
    except TypeError as err:
        raise CheckpointError(f"bad {kind} head config {fields}: {err}") from None


def _flat_blocks(encoder: DinoViT) -> list[nn.Module]:
    """The encoder's transformer blocks in order (chunked layouts flattened, placeholders dropped)."""
    blocks = []
    for item in encoder.blocks:
        children = list(item) if isinstance(item, nn.ModuleList) else [item]
        blocks.extend(b for b in children if not isinstance(b, nn.Identity))
    return blocks


@dataclass(frozen=True)
class EncodedTokens:
    """Encoder output for the head after pruning.

    Attributes:
        tokens: ``[B, K, C]`` final (normalised) features of the kept patch tokens, grid order.
        cls: ``[B, C]`` normalised class token, or None for a convolutional encoder.
        kept_idx: ``[B, K]`` grid index of each kept token, or None when nothing was pruned.
        scores: ``[B, N]`` importance logits used for the selection, or None.
        grid_hw: ``(h, w)`` patch grid of the input, ``N = h * w``.
    """

    tokens: torch.Tensor
    cls: torch.Tensor | None
    kept_idx: torch.Tensor | None
    scores: torch.Tensor | None
    grid_hw: tuple[int, int]


class DescriptorExtractor(nn.Module):
    """Images ``[B, 3, H, W]`` in [0, 1] -> L2-normalised global descriptors ``[B, D]``.

    Args:
        encoder: the backbone's patch encoder (``model.aggregator.patch_embed``), a
            :class:`DinoViT` or :class:`PatchEmbed`; used frozen.
        head: a descriptor head of :mod:`pacegeo.vpr.head`.
        scorer: learned token scorer for ``scoring="learned"`` (optional).
        prune_after: encoder blocks run on all tokens before pruning (DinoViT only; default
            ``max(1, depth // 4)``; ``depth`` prunes only before the head).
        scoring: how tokens are ranked when ``keep < 1``: ``"learned"`` (needs ``scorer``),
            ``"distinctiveness"`` (training-free), ``"grid"`` or ``"random"`` (baselines). Default:
            ``"learned"`` when a scorer is given, else ``"distinctiveness"``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        scorer: TokenScorer | None = None,
        prune_after: int | None = None,
        scoring: Scoring | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, (DinoViT, PatchEmbed)):
            raise InputError(f"unsupported patch encoder {type(encoder).__name__}")
        self.encoder = encoder
        self.head = head
        self.scorer = scorer
        self.is_vit = isinstance(encoder, DinoViT)
        self.blocks = _flat_blocks(encoder) if self.is_vit else []
        depth = len(self.blocks)
        if prune_after is None:
            prune_after = max(1, depth // 4) if self.is_vit else 0
        if not 0 <= prune_after <= depth:
            raise InputError(f"prune_after must be in [0, {depth}] for this encoder, got {prune_after}")
        self.prune_after = int(prune_after)
        self.scoring = scoring or ("learned" if scorer is not None else "distinctiveness")
        if self.scoring not in SCORINGS:
            raise InputError(f"scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_backbone(cls, backbone: VGGT, head: nn.Module, **kwargs) -> "DescriptorExtractor":
        """Extractor on ``backbone.aggregator.patch_embed`` (shared, not copied)."""
        return cls(backbone.aggregator.patch_embed, head, **kwargs)

    @property
    def embed_dim(self) -> int:
        return self.encoder.pos_embed.shape[-1] if self.is_vit else self.encoder.proj.out_channels

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def num_special(self) -> int:
        """Class + register tokens in front of the patch tokens (0 for a conv encoder)."""
        return 1 + self.encoder.num_register_tokens if self.is_vit else 0

    # -- stages ----------------------------------------------------------------------------------

    def _grid(self, images: torch.Tensor) -> tuple[int, int]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise InputError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        return h // p, w // p

    def early_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens at the pruning point: ``[B, P, C]`` with ``P = num_special + N``."""
        x = (images - self._mean) / self._std
        if not self.is_vit:
            return self.encoder(x)
        tokens = self.encoder.prepare_tokens(x)
        for block in self.blocks[: self.prune_after]:
            tokens = block(tokens)
        return tokens

    def scoring_features(self, early: torch.Tensor) -> torch.Tensor:
        """Patch features the scorer sees: ``[B, P, C] -> [B, N, C]`` (layer-normalised for a ViT)."""
        patches = early[:, self.num_special :]
        return self.encoder.norm(patches) if self.is_vit else patches

    def score(self, early: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Importance logits ``[B, N]`` of the patch tokens at the pruning point."""
        feats = self.scoring_features(early)[:, None]  # [B, 1, N, C]
        b, n = feats.shape[0], feats.shape[2]
        if self.scoring == "learned":
            if self.scorer is None:
                raise InputError("scoring='learned' needs a trained scorer; load one or use 'distinctiveness'")
            scores = self.scorer(feats, grid_hw)
        elif self.scoring == "distinctiveness":
            scores = distinctiveness_scores(feats, grid_hw)
        elif self.scoring == "grid":
            scores = grid_scores(b, 1, grid_hw, device=feats.device)
        else:
            scores = random_scores(b, 1, n, device=feats.device)
        return scores[:, 0]

    def finish(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the blocks after the pruning point and the final norm: ``[B, P', C]`` ->
        (patch features ``[B, K, C]``, class token ``[B, C]`` or None)."""
        if not self.is_vit:
            return tokens, None
        for block in self.blocks[self.prune_after :]:
            tokens = block(tokens)
        normed = self.encoder.norm(tokens)
        return normed[:, self.num_special :], normed[:, 0]

    def encode(self, images: torch.Tensor, keep: float = 1.0) -> EncodedTokens:
        """Encoder features of the kept tokens (see :class:`EncodedTokens`)."""
        keep = validate_keep(keep)
        grid_hw = self._grid(images)
        n = grid_hw[0] * grid_hw[1]
        early = self.early_tokens(images)
        k = keep_count(keep, n)
        kept_idx = scores = None
        if k < n:
            scores = self.score(early, grid_hw)
            kept_idx, _ = kept_indices(topk_mask(scores[:, None], k), k)  # [B, 1, K]
            patches = gather_tokens(early[:, None, self.num_special :], kept_idx)[:, 0]
            early = torch.cat((early[:, : self.num_special], patches), dim=1)
            kept_idx = kept_idx[:, 0]
        tokens, cls = self.finish(early)
        return EncodedTokens(tokens, cls, kept_idx, scores, grid_hw)

    def forward(self, images: torch.Tensor, keep: float = 1.0) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, D]`` L2-normalised descriptors."""
        enc = self.encode(images, keep)
        return self.head(enc.tokens, enc.cls)

    @torch.no_grad()
    def describe(self, images: torch.Tensor, keep: float = 1.0, batch_size: int = 16) -> torch.Tensor:
        """Descriptors of many images, in batches, without gradients: ``[S, 3, H, W] -> [S, D]``
        float32 on the CPU."""
        out = []
        device = self._mean.device
        for start in range(0, images.shape[0], batch_size):
            out.append(self(images[start : start + batch_size].to(device), keep).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.head.out_dim)

    @torch.no_grad()
    def patch_features(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Unpruned final patch features ``[S, N, C]`` (CPU), e.g. to fit a VLAD vocabulary."""
        device = self._mean.device
        out = [self.encode(images[s : s + batch_size].to(device)).tokens.cpu() for s in range(0, images.shape[0], batch_size)]
        return torch.cat(out)

    def fit(self, images: torch.Tensor, batch_size: int = 16) -> "DescriptorExtractor":
        """Fit a head that needs it (VLAD vocabulary) on map images ``[S, 3, H, W]``; no-op otherwise."""
        if getattr(self.head, "needs_fit", False):
            self.head.fit(self.patch_features(images, batch_size))
        return self

    def head_importance(self, images: torch.Tensor) -> torch.Tensor:
        """The head's own importance of every patch token on unpruned inputs, ``[B, N]``."""
        if not hasattr(self.head, "token_importance"):
            raise InputError(f"the {head_kind(self.head)} head has no token importance to distil")
        enc = self.encode(images, 1.0)
        return self.head.token_importance(enc.tokens, enc.cls)


# ---------------------------------------------------------------------------------------------
# Self-distillation of the scorer


def distillation_target(importance: torch.Tensor, temperature: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """``[B, N]`` non-negative importance -> ``[B, N]`` distribution per image,
    ``softmax(log(importance) / temperature)`` (``temperature=1``: importance / its sum)."""
    logits = torch.log(importance.float().clamp(min=eps)) / temperature
    return torch.softmax(logits, dim=-1)


def distillation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-image ``KL(target || softmax(logits))`` for ``[B, N]`` inputs (scalar)."""
    log_q = torch.log_softmax(logits.float(), dim=-1)
    return torch.nn.functional.kl_div(log_q, target.float(), reduction="batchmean")


# ---------------------------------------------------------------------------------------------
# Checkpoints


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_vpr(name_or_path: str | Path, what: str = "VPR checkpoint") -> Path:
    """A VPR file (head, student or ternary extractor) from a path or a bundled name
    (``"pacegeo-tiny-vpr"``); ``what`` names it in the error."""
    from pacegeo.hub import checkpoints_dir

    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    bundled = checkpoints_dir() / f"{name_or_path}.safetensors"
    if bundled.is_file():
        return bundled
    raise CheckpointError(f"{what} {str(name_or_path)!r} is neither a file nor a bundled name in {checkpoints_dir()}")


def read_vpr_metadata(path: str | Path, fmt: str = VPR_FORMAT, what: str = "pacegeo VPR checkpoint") -> dict[str, str]:
    """Metadata of a VPR file of format ``fmt``; :class:`CheckpointError` if it is not one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as err:
        raise CheckpointError(f"cannot read {what} {path}: {type(err).__name__}: {err}") from None
    if meta.get("format") != fmt:
        raise CheckpointError(f"{path} is not a {what} (format {meta.get('format')!r}, expected {fmt!r})")
    return meta


def head_metadata(extractor: DescriptorExtractor) -> dict[str, str]:
    """The metadata strings that describe an extractor's head, scorer and pruning point (shared by
    every file format that stores them)."""
    return {
        "head": head_kind(extractor.head),
        "head_config": json.dumps(asdict(extractor.head.config)),
        "scorer_config": json.dumps(asdict(extractor.scorer.config)) if extractor.scorer is not None else "",
        "prune_after": str(extractor.prune_after),
    }


def save_vpr(
    extractor: DescriptorExtractor,
    path: str | Path,
    backbone: str,
    backbone_fingerprint: str,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write the head and scorer of ``extractor`` (not the backbone) as safetensors, atomically.

    Args:
        backbone: name or path the backbone is loaded from (``load_backbone`` argument).
        backbone_fingerprint: :func:`pacegeo.hub.backbone_fingerprint` of the backbone the head was
            trained on; :func:`load_vpr` refuses any other backbone.
        extra: further metadata strings (training settings, ...).
    """
    if not backbone_fingerprint:
        raise ValueError("save_vpr needs the fingerprint of the backbone the head was trained on")
    state = {f"head.{k}": v for k, v in extractor.head.state_dict().items()}
    if extractor.scorer is not None:
        state.update({f"scorer.{k}": v for k, v in extractor.scorer.state_dict().items()})
    meta = {
        "format": VPR_FORMAT,
        **head_metadata(extractor),
        "backbone": str(backbone),
        "backbone_fingerprint": backbone_fingerprint,
    }
    meta.update(extra or {})
    return save_tensors(state, path, meta)


def check_vpr_backbone(meta: dict[str, str], path: str | Path, backbone: nn.Module) -> None:
    """Raise :class:`CheckpointError` unless ``backbone`` is the one the VPR head at ``path`` was
    trained on (same :func:`pacegeo.hub.backbone_fingerprint`). A head on another backbone's
    features returns descriptors that look valid and retrieve poorly, so a mismatch is an error."""
    from pacegeo.hub import backbone_fingerprint

    expected = meta.get("backbone_fingerprint", "")
    name = Path(path).name
    if not expected:
        raise CheckpointError(
            f"VPR head {name} records no backbone fingerprint, so it cannot be matched to a backbone; "
            f"retrain it (train/vpr.py) or use the training-free head ({option('vpr_gem')})"
        )
    actual = backbone_fingerprint(backbone)
    if actual != expected:
        raise CheckpointError(
            f"VPR head {name} was trained on backbone {meta.get('backbone', '?')} (fingerprint {expected}), "
            f"not on this one ({actual}); retrain it on this backbone (train/vpr.py) or use the training-free head "
            f"({option('vpr_gem')})"
        )


def load_vpr(
    name_or_path: str | Path,
    backbone: VGGT | str | Path | None = None,
    device: str | torch.device = "cpu",
    scoring: Scoring | None = None,
    verify_backbone: bool = True,
) -> DescriptorExtractor:
    """Build a :class:`DescriptorExtractor` from a VPR checkpoint.

    Args:
        backbone: a loaded model, a name/path for :func:`pacegeo.hub.load_backbone`, or None for
            the backbone recorded in the checkpoint.
        verify_backbone: refuse (:class:`CheckpointError`) a backbone other than the one the head
            was trained on, by fingerprint (:func:`check_vpr_backbone`). ``False`` is for experts
            who know the features match.
    """
    from pacegeo.hub import load_backbone

    path = resolve_vpr(name_or_path)
    meta = read_vpr_metadata(path)
    if not isinstance(backbone, nn.Module):
        backbone = load_backbone(backbone if backbone is not None else meta["backbone"])
    if verify_backbone:
        check_vpr_backbone(meta, path, backbone)
    state = load_file(str(path))
    head = build_head(meta["head"], json.loads(meta["head_config"]))
    head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    scorer = None
    if meta.get("scorer_config"):
        scorer = TokenScorer(ScorerConfig(**json.loads(meta["scorer_config"])))
        scorer_state = {k[len("scorer."):]: v for k, v in state.items() if k.startswith("scorer.")}
        try:
            scorer.load_state_dict(scorer_state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"scorer weights of {path} do not match its config: {err}") from None
    try:
        head.load_state_dict(head_state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"head weights of {path} do not match its config: {err}") from None
    extractor = DescriptorExtractor.from_backbone(
        backbone, head, scorer=scorer, prune_after=int(meta["prune_after"]), scoring=scoring
    )
    return extractor.to(device).eval()
