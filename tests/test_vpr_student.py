"""The distilled VPR student: size against the teacher, its file format, and the distillation losses."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from pacegeo.errors import CheckpointError
from pacegeo.vpr import load_vpr
from pacegeo.vpr.relations import (
    confusion_weights,
    multi_similarity_loss,
    pairs_to_mask,
    relation_loss,
    teacher_hard_pairs,
)
from pacegeo.vpr.student import FeatureAlignment, StudentConfig, StudentExtractor, load_student, save_student

SMALL = StudentConfig(embed_dim=32, num_heads=2, num_clusters=4, cluster_dim=8, global_dim=16, hidden_dim=16)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _student(config=SMALL, seed=0) -> StudentExtractor:
    torch.manual_seed(seed)
    return StudentExtractor(config).eval()


def _images(n=3, h=56, w=70, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _save(student, path):
    return save_student(student, path, teacher="t", teacher_sha256="0" * 64, teacher_backbone="b",
                        teacher_backbone_fingerprint="f" * 16)


# -- size ---------------------------------------------------------------------------------------


def test_student_has_at_most_a_fifth_of_the_teachers_parameters():
    teacher = _params(load_vpr("pacegeo-tiny-vpr"))  # backbone encoder + head + scorer
    assert teacher > 1_000_000
    assert 5 * _params(StudentExtractor(StudentConfig())) <= teacher
    bundled = load_student("pacegeo-tiny-vpr-student")
    assert 5 * _params(bundled) <= teacher
    # the bundled file holds exactly those parameters, nothing more
    from pacegeo.vpr.student import resolve_student

    stored = load_file(str(resolve_student("pacegeo-tiny-vpr-student")))
    assert sum(v.numel() for v in stored.values()) == _params(bundled)


# -- file format ----------------------------------------------------------------------------------


def test_save_load_round_trip_is_bit_exact(tmp_path):
    student = _student()
    path = _save(student, tmp_path / "s.safetensors")
    loaded = load_student(path)
    assert loaded.config == SMALL
    original, again = student.state_dict(), loaded.state_dict()
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    images = _images()
    with torch.no_grad():
        assert torch.equal(student(images), loaded(images))
        assert torch.equal(student.describe(images, batch_size=2), loaded.describe(images, batch_size=2))


def test_the_alignment_module_is_not_in_the_saved_file(tmp_path):
    student = _student()
    align = FeatureAlignment(SMALL.embed_dim, 48)
    tokens, _ = student.tokens(_images())
    align.loss(tokens, torch.randn(tokens.shape[0], tokens.shape[1], 48)).backward()  # trained alongside
    stored = load_file(str(_save(student, tmp_path / "s.safetensors")))
    assert set(stored) == set(student.state_dict())
    assert all(k.startswith(("encoder.", "head.")) for k in stored)
    assert sum(v.numel() for v in stored.values()) == _params(student)
    align_shapes = {tuple(v.shape) for v in align.state_dict().values() if v.dim() == 2}
    assert not align_shapes & {tuple(v.shape) for v in stored.values()}


def test_loading_is_strict(tmp_path):
    path = _save(_student(), tmp_path / "s.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    save_file({**state, "extra.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="do not match"):
        load_student(tmp_path / "extra.safetensors")
    missing = {k: v for k, v in state.items() if k != "head.dustbin"}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="do not match"):
        load_student(tmp_path / "missing.safetensors")
    save_file(state, str(tmp_path / "other.safetensors"), metadata={**meta, "format": "something-else"})
    with pytest.raises(CheckpointError, match="not a pacegeo VPR student"):
        load_student(tmp_path / "other.safetensors")


def test_describe_matches_forward_and_prunes_with_keep():
    student = _student()
    images = _images(5)
    desc = student.describe(images, keep=1.0, batch_size=5)
    with torch.no_grad():
        assert torch.equal(desc, student(images))
    assert torch.allclose(student.describe(images, keep=1.0, batch_size=2), desc, atol=1e-6)
    assert desc.shape == (5, SMALL.num_clusters * SMALL.cluster_dim + SMALL.global_dim)
    assert torch.allclose(desc.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert student.encode(images, 0.5).tokens.shape[1] == math.ceil(0.5 * 4 * 5)


# -- losses ---------------------------------------------------------------------------------------

LABELS = torch.tensor([0, 0, 1, 1])
# Teacher similarities of two places with two views each (epsilon .1). Anchor 0: the negative 3 at
# .85 is within epsilon of its positive 1 (.90): (0, 3) is a hard negative and (0, 1) a hard
# positive. Anchor 1: its negatives (.25, .10) are far below its positive (.90): nothing hard.
# Anchor 2: its positive 3 (.30) is below its negatives (.35, .25) plus epsilon: (2, 3) hard
# positive, (2, 0) and (2, 1) hard negatives. Anchor 3: positive 2 (.30) against negatives .85
# (hard) and .10 (.10 + .1 < .30: not hard).
TEACHER = torch.tensor([
    [1.00, 0.90, 0.35, 0.85],
    [0.90, 1.00, 0.25, 0.10],
    [0.35, 0.25, 1.00, 0.30],
    [0.85, 0.10, 0.30, 1.00],
])


def test_confusion_weighting_up_weights_exactly_the_pairs_the_teacher_finds_hard():
    hard_pos, hard_neg = teacher_hard_pairs(TEACHER, LABELS, epsilon=0.1)
    as_set = lambda m: {tuple(ij) for ij in m.nonzero().tolist()}  # noqa: E731
    assert as_set(hard_pos) == {(0, 1), (2, 3), (3, 2)}
    assert as_set(hard_neg) == {(0, 3), (2, 0), (2, 1), (3, 0)}
    weights = confusion_weights(TEACHER, LABELS, boost=2.0, epsilon=0.1)
    expected = torch.ones(4, 4) - torch.eye(4)
    for i, j in as_set(hard_pos) | as_set(hard_neg):
        expected[i, j] = 3.0
    assert torch.equal(weights, expected)


def test_relation_loss_is_zero_when_the_similarities_agree_and_weighted_otherwise():
    assert relation_loss(TEACHER.clone(), TEACHER).item() == 0.0
    assert relation_loss(TEACHER.clone(), TEACHER, confusion_weights(TEACHER, LABELS)).item() == 0.0
    student = TEACHER.clone()
    student[0, 3] = student[3, 0] = 0.45  # the student separates a pair the teacher confuses
    student[1, 3] = student[3, 1] = 0.50  # and changes an easy one by as much
    plain = relation_loss(student, TEACHER).item()
    assert plain == pytest.approx(4 * 0.4**2 / 12)  # 12 off-diagonal pairs
    weighted = relation_loss(student, TEACHER, confusion_weights(TEACHER, LABELS)).item()
    # weights: 7 hard pairs x 3 + 5 easy pairs x 1 = 26; (0,3),(3,0) weigh 3, (1,3),(3,1) weigh 1
    assert weighted == pytest.approx((2 * 3 + 2 * 1) * 0.4**2 / 26)


def test_weighted_multi_similarity_loss_with_miner_weights_equals_pytorch_metric_learning():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses, miners

    gen = torch.Generator().manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(12, 8, generator=gen), dim=-1)
    labels = torch.arange(3).repeat_interleave(4)
    miner = miners.MultiSimilarityMiner(epsilon=0.1, distance=distances.CosineSimilarity())
    reference = losses.MultiSimilarityLoss(alpha=1.0, beta=50.0, base=0.0, distance=distances.DotProductSimilarity())
    mined = miner(desc, labels)
    pos, neg = pairs_to_mask(mined, 12)
    ours = multi_similarity_loss(desc @ desc.T, labels, pos.float(), neg.float())
    assert ours.item() == pytest.approx(reference(desc, labels, mined).item(), rel=1e-5)
    # up-weighting a pair counts it more
    boosted = multi_similarity_loss(desc @ desc.T, labels, pos.float() * 3, neg.float() * 3)
    assert boosted.item() > ours.item()


def test_alignment_loss_is_zero_when_each_student_token_finds_its_teacher_token():
    teacher = torch.eye(6)[None].repeat(2, 1, 1) * 4.0  # six distinct teacher tokens
    align = FeatureAlignment(6, 6, dim=6)
    with torch.no_grad():
        for branch in (align.query, align.key):
            branch[0].weight.fill_(1.0), branch[0].bias.zero_()
            branch[1].weight.copy_(torch.eye(6) * 20.0), branch[1].bias.zero_()
    assert align.loss(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-4)
    with torch.no_grad():
        align.query[1].weight.zero_()  # every query alike: uniform attention, nothing found
    assert align.loss(teacher.clone(), teacher).item() == pytest.approx(1.0, abs=1e-5)
