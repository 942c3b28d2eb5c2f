"""Pruner checkpoints: the scorer and restoration of a :class:`pacegeo.pace.PaceVGGT` as safetensors,
their configs and the fingerprint of the backbone they were trained for in the metadata.

Loading is strict, and a pruner refuses a backbone other than its own (``verify_backbone=False``
overrides, for experts).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors import safe_open
from torch import nn

from pacegeo.errors import CheckpointError, is_memory_error, option
from pacegeo.io.outputs import save_tensors
from pacegeo.pace import PaceVGGT
from pacegeo.pruning.restore import FeatureGuidedRestoration, RestorationConfig
from pacegeo.pruning.scorer import ScorerConfig, TokenScorer

PRUNER_FORMAT = "pacegeo-pruner/1"

__all__ = ["PRUNER_FORMAT", "load_pruner", "save_pruner"]


def save_pruner(model: PaceVGGT, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write the scorer and restoration of ``model`` as safetensors, configs in the metadata."""
    from pacegeo.hub import backbone_fingerprint

    meta = {
        "format": PRUNER_FORMAT,
        "mode": model.mode,
        "backbone": getattr(model.backbone.config, "name", "unknown"),
        "backbone_fingerprint": backbone_fingerprint(model.backbone),
        "restoration": json.dumps(asdict(model.restoration.config)),
        "scorer": json.dumps(asdict(model.scorer.config)) if model.scorer is not None else "",
        "learned_coverage": str(model.learned_coverage),
    }
    meta.update(extra or {})
    return save_tensors(model.pruner_state_dict(), path, meta)


def _config(cls, text: str, what: str, path: Path):
    try:
        data = json.loads(text)
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**data)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"pruner checkpoint {path} has an unreadable {what} config: {err}") from None


def load_pruner(path: str | Path, backbone: nn.Module, verify_backbone: bool = True, **kwargs) -> PaceVGGT:
    """A :class:`PaceVGGT` around ``backbone`` with the scorer and restoration saved at ``path``.

    The pruner records the fingerprint of the backbone it was trained for; loading it onto another
    backbone raises :class:`CheckpointError` (``verify_backbone=False`` skips the check).
    ``kwargs`` go to :class:`PaceVGGT` (``mode`` defaults to the saved one).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pruner checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except OSError as err:
        raise CheckpointError(f"cannot read pruner checkpoint {path}: {err.strerror or type(err).__name__}") from None
    except Exception as err:
        if is_memory_error(err):
            raise CheckpointError(f"not enough memory to read pruner checkpoint {path}") from None
        raise CheckpointError(f"cannot read pruner checkpoint {path}: not a valid safetensors file (corrupt, truncated or another format)") from None
    if meta.get("format") != PRUNER_FORMAT:
        raise CheckpointError(f"{path} is not a pacegeo pruner checkpoint (format {meta.get('format')!r})")
    scorer = None
    if meta.get("scorer"):
        scorer = TokenScorer(_config(ScorerConfig, meta["scorer"], "scorer", path))
    restoration = FeatureGuidedRestoration(_config(RestorationConfig, meta["restoration"], "restoration", path))
    try:
        if scorer is not None:
            scorer.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("scorer.")}, strict=True)
        restoration.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("restoration.")}, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"pruner checkpoint {path} does not match its configs: {first}") from None
    dim = backbone.config.aggregator.embed_dim
    if restoration.config.feat_dim != dim or (scorer is not None and scorer.config.in_dim != dim):
        raise CheckpointError(f"pruner checkpoint {path} was trained for width {restoration.config.feat_dim}, backbone has {dim}")
    expected = meta.get("backbone_fingerprint")
    if expected and verify_backbone:
        from pacegeo.hub import backbone_fingerprint

        actual = backbone_fingerprint(backbone)
        if actual != expected:
            raise CheckpointError(
                f"pruner checkpoint {path} was trained for backbone {meta.get('backbone', '?')} "
                f"(fingerprint {expected}), not for this one ({actual}); use {option('pruner_training_free')} "
                f"or train a pruner for this backbone (train/distill.py, then train/finetune.py)"
            )
    kwargs.setdefault("mode", meta.get("mode", "learned") if scorer is not None else "training-free")
    try:
        kwargs.setdefault("learned_coverage", float(meta.get("learned_coverage", "0") or 0))
    except ValueError:
        raise CheckpointError(f"pruner checkpoint {path} has an unreadable learned_coverage {meta['learned_coverage']!r}") from None
    device = next(backbone.parameters()).device
    return PaceVGGT(backbone, scorer=scorer, restoration=restoration, **kwargs).to(device)
