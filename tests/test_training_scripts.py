"""Training scripts (the pruner stages, the VPR head) end to end on a random tiny backbone."""

import csv
import json
from pathlib import Path

import pytest
import torch

from pacegeo.hub import load_backbone, read_metadata, save_backbone

from helpers import load_script

TRAIN_DIR = Path(__file__).resolve().parents[1] / "train"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each script builds its own Accelerator (mixed precision from --dtype); accelerate keeps one
    per process, which other test modules may have created with other settings."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _load(name: str):
    return load_script(TRAIN_DIR / f"{name}.py", "pacegeo_train")


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    from pacegeo.backbone import VGGT, tiny

    torch.manual_seed(0)
    return save_backbone(VGGT(tiny()).eval(), tmp_path_factory.mktemp("model") / "tiny.safetensors")


def test_distill_then_finetune_write_a_pruner_that_records_its_history(backbone_file, tmp_path):
    from pacegeo.pruning.checkpoint import load_pruner

    common = ["--model", str(backbone_file), "--size", "42x56", "--batch", "1", "--max-steps", "2", "--minutes", "5"]
    assert _load("distill").main(common + ["--frames", "3", "--out", str(tmp_path / "d")]) == 0
    stage1 = tmp_path / "d" / "pruner.safetensors"
    assert read_metadata(stage1)["distill_steps"] == "2"

    assert _load("finetune").main(common + ["--init", str(stage1), "--min-frames", "2", "--frames", "3",
                                            "--weight-camera", "5", "--out", str(tmp_path / "f")]) == 0
    stage2 = tmp_path / "f" / "pruner.safetensors"
    meta = read_metadata(stage2)
    assert (meta["distill_steps"], meta["finetune_steps"], meta["stage"], meta["weight_camera"]) == (
        "2", "2", "distill+finetune", "5.0")
    rows = list(csv.reader(open(tmp_path / "f" / "log.csv")))
    assert len(rows) == 2 and all(len(r) == 10 for r in rows)
    camera, depth = float(rows[0][6]), float(rows[0][7])
    assert camera >= 0 and depth > 0
    pace = load_pruner(stage2, load_backbone(str(backbone_file)))
    assert pace.mode == "learned"

    # A second segment on top of the first: the file keeps the recipe of both.
    resumed = common[:-4] + ["--max-steps", "1", "--minutes", "5"]
    assert _load("finetune").main(resumed + ["--init", str(stage2), "--frames", "3", "--weight-relative", "0.5",
                                             "--seed", "3", "--out", str(tmp_path / "f2")]) == 0
    meta = read_metadata(tmp_path / "f2" / "pruner.safetensors")
    history = json.loads(meta["finetune_history"])
    assert meta["finetune_steps"] == "3"
    assert [(h["steps"], h["weight_camera"], h["weight_relative"], h["seed"]) for h in history] == [
        (2, 5.0, 0.0, 0), (1, 1.0, 0.5, 3)]
    assert history[0]["frames"] == [2, 3] and history[1]["frames"] == [2, 3]


@pytest.mark.parametrize("script", ["distill", "finetune"])
def test_training_scripts_reject_a_clip_range_that_is_empty(script, backbone_file, tmp_path, capsys):
    code = _load(script).main(["--model", str(backbone_file), "--frames", "3", "--min-frames", "5",
                               "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: --min-frames 5 must be between 1 and --frames 3"


def test_one_command_trains_both_stages_and_leaves_the_final_pruner(backbone_file, tmp_path):
    out = tmp_path / "run"
    code = _load("pruner").main(["--model", str(backbone_file), "--size", "42x56", "--frames", "2",
                                  "--max-steps", "1", "--out", str(out)])
    assert code == 0
    meta = read_metadata(out / "pruner.safetensors")
    assert (meta["distill_steps"], meta["finetune_steps"], meta["learned_coverage"]) == ("1", "1", "4.0")
    assert json.loads(meta["restoration"])["camera_correction"] and meta["weight_relative"] == "0.5"
    assert (out / "pruner.safetensors").read_bytes() == (out / "finetune" / "pruner.safetensors").read_bytes()


def test_relative_pose_deviation_ignores_the_world_frame_and_scale_but_not_a_turned_camera():
    from scipy.spatial.transform import Rotation

    from pacegeo.geometry import extri_intri_to_pose_encoding
    from pacegeo.losses import relative_pose_deviation as deviation

    rng = torch.Generator().manual_seed(0)
    rot = torch.tensor(Rotation.random(4, random_state=1).as_matrix(), dtype=torch.float32)
    ext = torch.cat((rot, torch.randn(4, 3, 1, generator=rng)), dim=-1)
    intr = torch.tensor([[50.0, 0, 20], [0, 50.0, 15], [0, 0, 1]]).expand(4, 3, 3)
    enc = extri_intri_to_pose_encoding(ext[None], intr[None], (30, 40))
    assert float(deviation(enc, enc)) < 1e-3
    # the same cameras in another world frame and at another scale: relative poses unchanged
    world = torch.eye(4)
    world[:3, :3] = torch.tensor(Rotation.from_euler("xyz", [10, 40, -20], degrees=True).as_matrix(), dtype=torch.float32)
    world[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    moved = ext @ world
    moved[..., 3] *= 2.5
    assert float(deviation(extri_intri_to_pose_encoding(moved[None], intr[None], (30, 40)), enc)) < 1e-3
    # one camera turned by 10 degrees: about sqrt(2) * 0.175 rad per pair that involves it
    turned = ext.clone()
    turned[1, :, :3] = torch.tensor(Rotation.from_euler("y", 10, degrees=True).as_matrix(), dtype=torch.float32) @ ext[1, :, :3]
    value = float(deviation(extri_intri_to_pose_encoding(turned[None], intr[None], (30, 40)), enc))
    assert 0.1 < value
    assert float(deviation(enc[:, :1], enc[:, :1])) == 0.0


def test_baseline_weighting_discounts_direction_errors_of_pairs_that_barely_moved():
    from pacegeo.geometry import extri_intri_to_pose_encoding
    from pacegeo.losses import relative_pose_deviation as deviation

    def encode(centres):
        ext = torch.zeros(len(centres), 3, 4)
        ext[:, :, :3] = torch.eye(3)
        ext[:, :, 3] = -torch.tensor(centres)  # identity rotations: t = -centre
        intr = torch.tensor([[50.0, 0, 20], [0, 50.0, 15], [0, 0, 1]]).expand(len(centres), 3, 3)
        return extri_intri_to_pose_encoding(ext[None], intr[None], (30, 40))

    teacher = encode([[0.0, 0, 0], [0.01, 0, 0], [1.0, 0, 0]])  # pair (0, 1) barely moved
    near = encode([[0.0, 0, 0], [0.0, 0.01, 0], [1.0, 0, 0]])  # turns only the short pair's direction
    far = encode([[0.0, 0, 0], [0.01, 0, 0], [1.0, 0.3, 0]])  # turns the two long pairs' directions
    plain, weighted = (float(deviation(near, teacher, baseline_weighted=w)) for w in (False, True))
    assert weighted < plain / 10
    plain, weighted = (float(deviation(far, teacher, baseline_weighted=w)) for w in (False, True))
    assert weighted > plain > 0.1


def test_vpr_training_writes_a_head_and_scorer_loadable_on_its_backbone(backbone_file, tmp_path):
    pytest.importorskip("pytorch_metric_learning")
    from pacegeo.vpr import load_vpr

    out = tmp_path / "vpr.safetensors"
    args = ["--backbone", str(backbone_file), "--size", "42x56", "--train-scenes", "2", "--places-per-scene", "3",
            "--views", "4", "--val-scenes", "1", "--val-queries", "4", "--places-per-batch", "3",
            "--head-steps", "2", "--scorer-steps", "2", "--augment", "0.3", "--out", str(out),
            "--log", str(tmp_path / "vpr.json")]
    assert _load("vpr").main(args) == 0
    extractor = load_vpr(out, backbone=load_backbone(str(backbone_file)))
    assert extractor.scorer is not None
    images = torch.rand(2, 3, 42, 56)
    full, pruned = extractor.describe(images), extractor.describe(images, keep=0.5)
    assert full.shape == pruned.shape and not torch.allclose(full, pruned)
