"""Every checkpoint shipped in checkpoints/ loads through the public API onto the bundled backbone,
with the backbone identity checks on: a bundled head, pruner, prompt pool or ternary extractor
trained on (or distilled from) another backbone snapshot, or a student distilled from another
teacher, fails here."""

import pytest

from pacegeo.hub import CHECKPOINT_FORMAT, backbone_fingerprint, checkpoints_dir, load_backbone, read_metadata
from pacegeo.pruning.checkpoint import PRUNER_FORMAT, load_pruner
from pacegeo.pruning.come import COME_FORMAT, load_confidence
from pacegeo.vpr import load_vpr
from pacegeo.vpr.extract import VPR_FORMAT, file_sha256, resolve_vpr
from pacegeo.vpr.prompt import PROMPT_FORMAT, load_prompt
from pacegeo.vpr.student import STUDENT_FORMAT, load_student
from pacegeo.vpr.ternary import TERNARY_FORMAT, TernaryExtractor, load_ternary_vpr

BUNDLED = sorted(checkpoints_dir().glob("*.safetensors"))


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("pacegeo-tiny")


def test_the_bundle_holds_every_kind_of_checkpoint_once():
    formats = sorted(read_metadata(path).get("format", "") for path in BUNDLED)
    assert formats == sorted([CHECKPOINT_FORMAT, PRUNER_FORMAT, VPR_FORMAT, COME_FORMAT, TERNARY_FORMAT, STUDENT_FORMAT,
                              PROMPT_FORMAT])


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_checkpoint_loads_on_the_bundled_backbone(path, backbone):
    meta = read_metadata(path)
    kind = meta.get("format")
    if kind == CHECKPOINT_FORMAT:
        assert backbone_fingerprint(load_backbone(path)) == backbone_fingerprint(backbone)
    elif kind == PRUNER_FORMAT:
        assert meta["backbone_fingerprint"] == backbone_fingerprint(backbone)
        assert load_pruner(path, backbone).scorer is not None
    elif kind == VPR_FORMAT:
        assert meta["backbone_fingerprint"] == backbone_fingerprint(backbone)
        extractor = load_vpr(path, backbone=backbone)
        assert extractor.scorer is not None and extractor.encoder is backbone.aggregator.patch_embed
    elif kind == COME_FORMAT:
        assert meta["backbone_fingerprint"] == backbone_fingerprint(backbone)
        assert load_confidence(path, backbone).config.layer == 1
    elif kind == TERNARY_FORMAT:
        assert meta["backbone_fingerprint"] == backbone_fingerprint(backbone)
        extractor = load_ternary_vpr(path, backbone=backbone)
        assert isinstance(extractor, TernaryExtractor) and extractor.scorer is not None
    elif kind == STUDENT_FORMAT:  # distilled from the bundled teacher, as it is now
        assert meta["teacher_backbone_fingerprint"] == backbone_fingerprint(backbone)
        assert meta["teacher_sha256"] == file_sha256(resolve_vpr(meta["teacher"]))
        assert load_student(path).head.out_dim > 0
    elif kind == PROMPT_FORMAT:  # prompts and head on the frozen bundled encoder
        assert meta["backbone_fingerprint"] == backbone_fingerprint(backbone)
        extractor = load_prompt(path, backbone=backbone)
        assert extractor.encoder is backbone.aggregator.patch_embed and extractor.head.out_dim > 0
    else:
        pytest.fail(f"{path.name} has an unknown format {kind!r}")


def test_info_lists_every_bundled_file_that_is_not_a_backbone_with_its_kind():
    from pacegeo.info import checkpoint_kinds, describe

    text = describe()
    kinds = checkpoint_kinds()
    for path in BUNDLED:
        fmt = read_metadata(path).get("format")
        if fmt != CHECKPOINT_FORMAT:
            line = next(line for line in text.splitlines() if line.strip().startswith(path.stem + " "))
            assert kinds[fmt] in line and "for pacegeo-tiny" in line
