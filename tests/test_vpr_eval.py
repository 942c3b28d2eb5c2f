"""eval/vpr.py helpers: the raw-pixel baseline and the bootstrap interval of R@1."""

from pathlib import Path

import numpy as np
import torch

from helpers import load_script

vpr_eval = load_script(Path(__file__).resolve().parents[1] / "eval" / "vpr.py", "eval")


def test_pixel_descriptors_are_unit_norm_and_ignore_brightness_offsets():
    images = torch.rand(3, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    d = vpr_eval.pixel_descriptors(images)
    assert d.shape == (3, 48 * 64) and torch.allclose(d.norm(dim=1), torch.ones(3), atol=1e-5)
    brighter = vpr_eval.pixel_descriptors(images + 0.2)  # zero-mean: a global offset changes nothing
    assert torch.allclose(d, brighter, atol=1e-5)
    assert float(d[0] @ d[1]) < 0.5  # different random images are far apart


def test_recall1_interval_brackets_the_recall_and_shrinks_with_queries():
    rng = np.random.default_rng(0)
    for n in (20, 400):
        hit = rng.random(n) < 0.6
        ids = np.where(hit, 0, 1)[:, None]
        positives = [[0]] * n
        low, high = vpr_eval.recall1_interval(ids, positives)
        assert low <= hit.mean() <= high
        if n == 20:
            wide = high - low
    assert high - low < wide / 3


def test_sevenscenes_place_set_follows_the_pose_thresholds(shared_dir):
    from pacegeo.data.sevenscenes import read_sevenscenes_sequence

    folder = shared_dir / "data" / "7scenes-redkitchen"
    db, queries, positives = vpr_eval.sevenscenes_places(folder)
    seq = read_sevenscenes_sequence(folder, load_depth=False)
    poses = {r.image_path: r.cam_to_world for r in seq.records}
    assert len(db) == len(seq) // 2 and 0 < len(queries) <= len(seq) - len(db) and len(positives) == len(queries)
    assert not set(db) & set(queries)
    for q, pos in zip(queries, positives):
        for i, d in enumerate(db):
            near = np.linalg.norm(poses[d][:3, 3] - poses[q][:3, 3]) <= vpr_eval.SEVENSCENES_RADIUS
            cos = float(np.clip(poses[d][:3, 2] @ poses[q][:3, 2], -1, 1))
            aligned = np.degrees(np.arccos(cos)) <= vpr_eval.SEVENSCENES_ANGLE
            assert (i in pos) == (near and aligned)


def test_model_size_counts_parameters_and_packed_bytes():
    plain = torch.nn.Linear(10, 4)  # 44 float32 parameters
    assert vpr_eval.model_size(plain) == (44, 176)

    class Packed(torch.nn.Linear):
        def weight_bytes(self):
            return 11

    assert vpr_eval.model_size(Packed(10, 4)) == (44, 11)
    assert vpr_eval.model_size(None) == (0, 0)


def test_synthrooms_place_set_starts_at_the_requested_room(tmp_path):
    import json
    from types import SimpleNamespace

    import pytest

    args = SimpleNamespace(synth_size="56x70", synth_scenes=1, synth_queries=2, synth_seed=0, synth_scene_seed=500_123)
    vpr_eval.build_synthrooms(tmp_path / "places", args)
    meta = json.loads((tmp_path / "places" / "places.json").read_text())
    assert meta["scene_seeds"] == [500_123]
    assert len(list((tmp_path / "places" / "queries").iterdir())) == 2
    with pytest.raises(SystemExit, match="rooms 500123..500123"):  # a folder of other rooms is not reused silently
        vpr_eval.build_synthrooms(tmp_path / "places", SimpleNamespace(**{**vars(args), "synth_scene_seed": 7}))
