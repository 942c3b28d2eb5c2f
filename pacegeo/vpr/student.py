"""A small place-recognition student distilled from the teacher extractor, and its file format.

The teacher is the bundled :class:`pacegeo.vpr.DescriptorExtractor`: the ``pacegeo-tiny`` encoder
(2 ViT blocks, width 192) with its :class:`pacegeo.vpr.head.WeightedOTHead` and token scorer,
about 1.19 M parameters. The student (:class:`StudentExtractor`) is a self-contained extractor with
the same interface and about 1/6 of the parameters:

* its own DINO-style ViT (:class:`pacegeo.backbone.DinoViT`: patch 14, width 64, 2 blocks, no
  registers), trained from scratch;
* a :class:`WeightedOTHead` with narrower clusters (16 x 32 plus a 128-d global token: 640-d
  descriptors, L2-normalised; the teacher's are 16 x 64 + 256 = 1280-d).

It subclasses :class:`DescriptorExtractor`, so ``describe(images, keep, batch_size)`` works as for
the teacher; ``keep < 1`` prunes tokens after the first block with the training-free
distinctiveness rule (the student has no learned scorer).

Training (``train/vpr_student.py``) uses :class:`FeatureAlignment`, a cross-attention module in which
every student token queries the teacher's tokens of the same image; the alignment loss asks the
attended teacher feature to be the teacher's own feature at the student token's position. It is a
training aid only: :func:`save_student` never writes it.

A student file (:func:`save_student` / :func:`load_student`) is a safetensors file with the encoder
and head weights; its metadata holds the :class:`StudentConfig` as JSON and the teacher it was
distilled from (VPR checkpoint name and SHA-256, backbone name and
:func:`pacegeo.hub.backbone_fingerprint`). Loading is strict: missing, unexpected or misshapen
tensors raise :class:`pacegeo.errors.CheckpointError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from pacegeo.backbone.config import DinoConfig
from pacegeo.backbone.encoder import DinoViT
from pacegeo.errors import CheckpointError, InputError
from pacegeo.io.outputs import save_tensors
from pacegeo.vpr.extract import DescriptorExtractor, read_vpr_metadata, resolve_vpr
from pacegeo.vpr.head import WeightedOTConfig, WeightedOTHead

STUDENT_FORMAT = "pacegeo-vpr-student/1"

__all__ = [
    "STUDENT_FORMAT",
    "FeatureAlignment",
    "StudentConfig",
    "StudentExtractor",
    "load_student",
    "read_student_metadata",
    "resolve_student",
    "save_student",
]


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of :class:`StudentExtractor` (encoder and head)."""

    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 2
    mlp_ratio: float = 4.0
    num_register_tokens: int = 0
    img_size: int = 224  # positional-embedding grid of img_size / 14 cells (resized to the input)
    layer_scale: float = 1.0
    num_clusters: int = 16
    cluster_dim: int = 32
    global_dim: int = 128
    hidden_dim: int = 64
    out_dim: int = 0
    sinkhorn_iters: int = 3
    prune_after: int = 1  # blocks before token pruning when keep < 1

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "img_size"):
            if getattr(self, name) < 1:
                raise InputError(f"StudentConfig.{name} must be positive, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise InputError(f"StudentConfig.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 0 <= self.prune_after <= self.depth:
            raise InputError(f"StudentConfig.prune_after must be in [0, {self.depth}], got {self.prune_after}")

    def encoder_config(self) -> DinoConfig:
        return DinoConfig(img_size=self.img_size, patch_size=14, embed_dim=self.embed_dim, depth=self.depth,
                          num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                          num_register_tokens=self.num_register_tokens, init_values=self.layer_scale)

    def head_config(self) -> WeightedOTConfig:
        return WeightedOTConfig(in_dim=self.embed_dim, num_clusters=self.num_clusters, cluster_dim=self.cluster_dim,
                                global_dim=self.global_dim, hidden_dim=self.hidden_dim, out_dim=self.out_dim,
                                sinkhorn_iters=self.sinkhorn_iters, global_source="cls")


class StudentExtractor(DescriptorExtractor):
    """Images ``[B, 3, H, W]`` in [0, 1] -> L2-normalised descriptors ``[B, D]`` with the student's
    own small encoder and head (see the module docstring). Randomly initialised; train it or load
    one with :func:`load_student`."""

    def __init__(self, config: StudentConfig = StudentConfig()) -> None:
        super().__init__(DinoViT(config.encoder_config()), WeightedOTHead(config.head_config()),
                         prune_after=config.prune_after, scoring="distinctiveness")
        self.config = config

    def tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpruned final features for training: ``[B, 3, H, W]`` -> (class and patch tokens
        ``[B, 1 + N, C]``, descriptor ``[B, D]``)."""
        enc = self.encode(images, 1.0)
        desc = self.head(enc.tokens, enc.cls)
        return torch.cat((enc.cls[:, None], enc.tokens), dim=1), desc


class FeatureAlignment(nn.Module):
    """Cross-attention from student tokens to teacher tokens of the same image (training only).

    Student tokens ``s [B, N, Cs]`` give the queries and teacher tokens ``t [B, N, Ct]`` the keys;
    the values are the teacher tokens centred per image (``t - mean_j t_j``), so attending
    everywhere alike yields nothing. ``aligned_i = sum_j softmax_j(q_i . k_j / sqrt(d)) (t_j - mean)``.
    The loss (:meth:`loss`) is ``mean_i 1 - cos(aligned_i, t_i - mean)``: each student token must
    find the teacher's feature at its own position (or teacher features like it), which it can only
    do if it carries what distinguishes that teacher feature from the rest of the image.
    """

    def __init__(self, student_dim: int, teacher_dim: int, dim: int = 64) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.LayerNorm(student_dim), nn.Linear(student_dim, dim))
        self.key = nn.Sequential(nn.LayerNorm(teacher_dim), nn.Linear(teacher_dim, dim))
        self.scale = dim ** -0.5

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, N, Cs]``, ``[B, N, Ct]`` -> (aligned teacher features ``[B, N, Ct]``, their
        targets ``[B, N, Ct]``: the centred teacher tokens)."""
        if student.shape[:2] != teacher.shape[:2]:
            raise InputError(f"student tokens {tuple(student.shape)} and teacher tokens {tuple(teacher.shape)} differ in B or N")
        teacher = teacher.float()
        values = teacher - teacher.mean(dim=1, keepdim=True)
        logits = torch.einsum("bnd,bmd->bnm", self.query(student), self.key(teacher)) * self.scale
        return torch.softmax(logits, dim=-1) @ values, values

    def loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Scalar alignment loss in [0, 2] (see the class docstring)."""
        aligned, target = self(student, teacher)
        return (1.0 - F.cosine_similarity(aligned, target, dim=-1, eps=1e-6)).mean()


# ---------------------------------------------------------------------------------------------
# Files


def resolve_student(name_or_path: str | Path) -> Path:
    """A student file from a path or a bundled name (``"pacegeo-tiny-vpr-student"``)."""
    return resolve_vpr(name_or_path, what="student checkpoint")


def read_student_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a student file; :class:`CheckpointError` if it is not one."""
    return read_vpr_metadata(path, STUDENT_FORMAT, "pacegeo VPR student")


def save_student(student: StudentExtractor, path: str | Path, teacher: str, teacher_sha256: str, teacher_backbone: str,
                 teacher_backbone_fingerprint: str, extra: dict[str, str] | None = None) -> Path:
    """Write the student's encoder and head (nothing else) as safetensors, atomically.

    Args:
        teacher: name or path of the teacher's VPR checkpoint; ``teacher_sha256`` its file hash.
        teacher_backbone, teacher_backbone_fingerprint: the teacher's backbone and its
            :func:`pacegeo.hub.backbone_fingerprint` (required).
        extra: further metadata strings (training settings, validation figures).
    """
    if not teacher_backbone_fingerprint:
        raise ValueError("save_student needs the fingerprint of the teacher's backbone")
    meta = {
        "format": STUDENT_FORMAT,
        "student_config": json.dumps(asdict(student.config)),
        "teacher": str(teacher),
        "teacher_sha256": teacher_sha256,
        "teacher_backbone": str(teacher_backbone),
        "teacher_backbone_fingerprint": teacher_backbone_fingerprint,
    }
    meta.update(extra or {})
    return save_tensors(student.state_dict(), path, meta)


def load_student(name_or_path: str | Path = "pacegeo-tiny-vpr-student", device: str | torch.device = "cpu") -> StudentExtractor:
    """A :class:`StudentExtractor` from a student file, in eval mode (strict: every tensor must
    match the recorded config, none may be missing or left over)."""
    path = resolve_student(name_or_path)
    meta = read_student_metadata(path)
    try:
        config = StudentConfig(**json.loads(meta["student_config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"bad student config in {path}: {err}") from None
    student = StudentExtractor(config)
    try:
        student.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"student weights of {path} do not match its config: {err}") from None
    return student.to(device).eval()
