"""Confidence-guided merging inside the encoder (pacegeo.pruning.come), after Co-Me."""

import pytest
import torch

from pacegeo.backbone import VGGT, tiny
from pacegeo.errors import CheckpointError
from pacegeo.pace import PaceVGGT
from pacegeo.pruning.come import (
    CoMeConfig,
    CoMeVGGT,
    ConfidencePredictor,
    block_merge,
    cell_index,
    load_confidence,
    ranking_loss,
    save_confidence,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VGGT(tiny(embed_dim=32, depth=2, num_heads=2, dino_depth=3, with_point_head=False)).eval()


def _predictor(model, layer=1):
    torch.manual_seed(5)
    return ConfidencePredictor(CoMeConfig(in_dim=model.config.aggregator.embed_dim, layer=layer)).eval()


def test_cells_are_whole_3x3_blocks_centred_in_column_4():
    cell, whole = cell_index((7, 6), 3)
    assert cell.shape == (42,) and int(cell.max()) == 3 * 2 - 1  # 3 rows x 2 columns of cells, the last row cut
    assert whole.shape == (4, 9)  # the cut row of cells is never merged
    assert whole[0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14] and int(whole[3, 4]) == 4 * 6 + 4


def test_lowest_confidence_cells_are_mean_merged_at_their_centre():
    tokens = torch.randn(1, 2, 36, 5, generator=torch.Generator().manual_seed(0))  # 6 x 6 grid: 4 whole cells
    conf = torch.zeros(1, 2, 36)
    _, whole = cell_index((6, 6), 3)
    conf[0, 0, whole[2]] = -5.0  # frame 0: cell 2 least confident
    conf[0, 1, whole[1]] = -5.0  # frame 1: cell 1
    red = block_merge(tokens, conf, (6, 6), merge=0.25)
    assert red.kept_idx.shape == (1, 2, 36 - 8)
    for frame, cell in ((0, 2), (1, 1)):
        members, centre = whole[cell], int(whole[cell, 4])
        slot = int((red.kept_idx[0, frame] == centre).nonzero())
        assert torch.allclose(red.tokens[0, frame, slot], tokens[0, frame, members].mean(dim=0), atol=1e-6)
        assert float(red.sizes[0, frame, slot]) == 9.0
        assert (red.assignment[0, frame, members] == slot).all()
        others = [i for i in range(36) if i not in members.tolist()]
        own = red.assignment[0, frame, others]
        assert torch.equal(red.tokens[0, frame, own], tokens[0, frame, others])  # unmerged tokens untouched
    assert not red.dropped_mask.any()


def test_ranking_loss_prefers_the_target_order():
    target = torch.arange(20.0).view(1, 1, 20)
    right, wrong = 10 * target, -10 * target
    g = torch.Generator().manual_seed(0)
    assert float(ranking_loss(right, target, generator=g)) < 1e-3
    assert float(ranking_loss(wrong, target, generator=torch.Generator().manual_seed(0))) > 10
    assert float(ranking_loss(torch.randn(1, 1, 20), torch.ones(1, 1, 20))) == 0.0  # ties carry no order


def test_nothing_merged_is_the_backbone(model):
    images = torch.rand(1, 3, 3, 42, 56, generator=torch.Generator().manual_seed(1))
    come = CoMeVGGT(PaceVGGT(model, mode="training-free", amp_dtype=None), _predictor(model), amp_dtype=None)
    with torch.no_grad():
        ref = model(images)
        zero = come(images, merge=0.0)
        # grid 3 x 4 has one whole cell: merge 0.4 rounds to no cell, yet runs the merging path end to end
        none = come(images, merge=0.4)
    for out in (zero, none):
        for key in ("pose_enc", "depth", "depth_conf"):
            torch.testing.assert_close(out[key], ref[key], atol=2e-5, rtol=1e-4, msg=key)
    assert none["pruning"]["aa_tokens_per_frame"] == model.aggregator.patch_start_idx + 12


def test_merging_shortens_the_sequence_and_changes_the_output(model):
    images = torch.rand(1, 2, 3, 84, 84, generator=torch.Generator().manual_seed(2))  # 6 x 6 grid, 4 cells
    come = CoMeVGGT(PaceVGGT(model, mode="training-free", amp_dtype=None), _predictor(model), amp_dtype=None)
    with torch.no_grad():
        out = come(images, merge=0.5)
        ref = model(images)
    assert out["pruning"]["aa_tokens_per_frame"] == model.aggregator.patch_start_idx + 36 - 2 * 8
    assert out["depth"].shape == ref["depth"].shape and not torch.allclose(out["depth"], ref["depth"], atol=1e-4)


def test_predictor_file_round_trip_and_backbone_check(model, tmp_path):
    pred = _predictor(model)
    path = save_confidence(pred, tmp_path / "come.safetensors", model)
    back = load_confidence(path, model)
    feats = torch.randn(1, 2, 10, 32)
    assert torch.equal(back(feats), pred(feats)) and back.config == pred.config
    other = VGGT(tiny(embed_dim=32, depth=2, num_heads=2, dino_depth=3, with_point_head=False))
    with pytest.raises(CheckpointError, match="another backbone"):
        load_confidence(path, other)
