"""Evaluation protocols (eval/scannet.py, eval/sevenscenes.py): metric sanity and small end-to-end runs.

The scripts are not a package; they are imported from their paths.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pacegeo.geometry import transforms as tf

from helpers import load_script

from pacegeo import evaluation as common

EVAL_DIR = Path(__file__).resolve().parents[1] / "eval"


def _load(name: str):
    return load_script(EVAL_DIR / f"{name}.py", "pacegeo_eval")


scannet = _load("scannet")
sevenscenes = _load("sevenscenes")


# ---------------------------------------------------------------------------------------------
# A small rendered sequence with exact ground truth
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered():
    """8 SynthRooms frames at 64x48: poses [8,4,4], depth [8,48,64], K [8,3,3]."""
    from pacegeo.data import synth

    scene = synth.make_scene(5)
    poses = synth.make_trajectory(scene, 8)
    K = synth.scene_intrinsics(scene, 64, 48)
    depth = np.stack([synth.render_frame(scene, p, K, 64, 48)[1] for p in poses]).astype(np.float32)
    assert (depth > 0).mean() > 0.5
    return poses, depth, np.repeat(K[None], len(poses), axis=0)


@pytest.fixture(scope="module")
def scannet_gt(rendered):
    """Ground truth whose 'mesh' is exactly the union of the unprojected depth maps."""
    from pacegeo.data.frames import unproject_depth

    poses, depth, K = rendered
    pts = np.concatenate([unproject_depth(d, k, p)[d > 0] for d, k, p in zip(depth, K, poses)])
    return scannet.ScanNetGT(cam_to_world=poses, depth=depth, intrinsics=K, mesh_points=pts)


def _rot(axis, deg):
    return Rotation.from_rotvec(np.radians(deg) * np.asarray(axis, float) / np.linalg.norm(axis)).as_matrix()


def _with(pred, **changes):
    fields = dict(pred.__dict__)
    fields.update(changes)
    return common.Prediction(**fields)


TRAJ = ("ate", "are", "rpe_rot", "rpe_trans")


# ---------------------------------------------------------------------------------------------
# ScanNet metric sanity
# ---------------------------------------------------------------------------------------------


def test_scannet_ground_truth_scores_zero(scannet_gt):
    res = scannet.evaluate_scene(scannet.gt_as_prediction(scannet_gt), scannet_gt)
    m = res["metrics"]
    assert res["errors"] == []
    for variant in ("fastvggt", "corrected"):
        for k in TRAJ:
            assert m[f"{variant}_{k}"] == pytest.approx(0.0, abs=1e-5), (variant, k)
        assert m[f"{variant}_chamfer"] == pytest.approx(0.0, abs=1e-3)
        assert m[f"{variant}_scale"] == pytest.approx(1.0, abs=1e-6)
    assert m["depth_abs_rel"] == pytest.approx(0.0, abs=1e-7)
    assert m["depth_delta_1_25"] == 1.0
    assert m["conf_kept"] == pytest.approx((scannet_gt.depth > 0).mean())


def test_scannet_rotation_of_all_cameras_is_absorbed_by_corrected_metrics(scannet_gt):
    """Rotating every camera rigidly about the first camera (a change of the predicted world frame)
    must not change the corrected metrics; FastVGGT's evo-on-w2c variant is not invariant to it."""
    pred = scannet.gt_as_prediction(scannet_gt)
    T = np.eye(4)
    T[:3, :3] = _rot([1, 2, 3], 20.0)
    w2c = tf.to_4x4(pred.extrinsics) @ np.linalg.inv(T)  # world X -> T X
    res = scannet.evaluate_scene(_with(pred, extrinsics=w2c[:, :3]), scannet_gt)
    m = res["metrics"]
    for k in TRAJ:
        assert m[f"corrected_{k}"] == pytest.approx(0.0, abs=1e-5), k
    assert m["corrected_chamfer"] == pytest.approx(0.0, abs=1e-3)
    assert m["depth_abs_rel"] == pytest.approx(0.0, abs=1e-7)
    # The published protocol's quirks: evo aligns w2c translations, the point cloud is only
    # transferred with the first GT pose (no rotation fit).
    assert m["fastvggt_are"] > 1.0
    assert m["fastvggt_chamfer"] > 0.01


def test_scannet_one_camera_rotated_by_5_degrees(scannet_gt):
    pred = scannet.gt_as_prediction(scannet_gt)
    S = len(pred.extrinsics)
    k = S // 2
    w2c = tf.to_4x4(pred.extrinsics)
    w2c[k, :3, :] = _rot([0.3, 1.0, 0.2], 5.0) @ w2c[k, :3, :]  # rotates camera k about its centre
    res = scannet.evaluate_scene(_with(pred, extrinsics=w2c[:, :3]), scannet_gt)
    m, per = res["metrics"], res["per_frame"]
    assert per["corrected_are"][k] == pytest.approx(5.0, abs=1e-4)
    others = np.delete(np.asarray(per["corrected_are"]), k)
    assert np.abs(others).max() < 1e-4
    assert m["corrected_ate"] == pytest.approx(0.0, abs=1e-6)  # centres did not move
    assert m["corrected_are"] == pytest.approx(5.0 / np.sqrt(S), rel=1e-4)
    assert m["corrected_rpe_rot"] == pytest.approx(5.0 * np.sqrt(2.0 / (S - 1)), rel=1e-4)
    assert m["fastvggt_are"] > 0.5


def test_scannet_global_scale_is_absorbed(scannet_gt):
    pred = scannet.gt_as_prediction(scannet_gt)
    s = 2.5
    w2c = tf.to_4x4(pred.extrinsics)
    w2c[:, :3, 3] *= s
    res = scannet.evaluate_scene(_with(pred, extrinsics=w2c[:, :3], depth=pred.depth * s), scannet_gt)
    m = res["metrics"]
    for variant in ("fastvggt", "corrected"):
        for k in TRAJ:
            assert m[f"{variant}_{k}"] == pytest.approx(0.0, abs=1e-5), (variant, k)
        assert m[f"{variant}_chamfer"] == pytest.approx(0.0, abs=1e-3)
        assert m[f"{variant}_scale"] == pytest.approx(1.0 / s, rel=1e-5)
    assert m["depth_abs_rel"] == pytest.approx(0.0, abs=1e-6)


def test_scannet_depth_noise_gives_expected_abs_rel(scannet_gt):
    """Gaussian noise of std sigma on depth d: E|n| / d = sigma * sqrt(2/pi) * mean(1/d) (the median
    scale stays ~1 because the noise is symmetric)."""
    pred = scannet.gt_as_prediction(scannet_gt)
    sigma = 0.02
    valid = scannet_gt.depth > 0
    noise = np.random.default_rng(0).normal(0.0, sigma, size=pred.depth.shape).astype(np.float32)
    noisy = np.where(valid, pred.depth + noise, 0.0).astype(np.float32)
    m = scannet.evaluate_scene(_with(pred, depth=noisy), scannet_gt)["metrics"]
    expected = sigma * np.sqrt(2.0 / np.pi) * np.mean(1.0 / scannet_gt.depth[valid])
    assert m["depth_abs_rel"] == pytest.approx(expected, rel=0.05)
    assert m["depth_rmse"] == pytest.approx(sigma, rel=0.05)
    assert m["depth_delta_1_25"] == 1.0


def test_scannet_confidence_threshold_and_empty_cloud(scannet_gt):
    pred = scannet.gt_as_prediction(scannet_gt)
    low = np.full_like(pred.depth_conf, 2.9)
    res = scannet.evaluate_scene(_with(pred, depth_conf=low), scannet_gt)
    assert np.isnan(res["metrics"]["fastvggt_chamfer"]) and np.isnan(res["metrics"]["corrected_chamfer"])
    assert res["metrics"]["num_points"] == 0
    assert any("confidence" in e for e in res["errors"])
    # threshold is inclusive (>= 3.0), as in FastVGGT
    res = scannet.evaluate_scene(_with(pred, depth_conf=np.full_like(low, 3.0)), scannet_gt)
    assert res["metrics"]["conf_kept"] == 1.0


def test_scannet_scene_selection_matches_fastvggt(tmp_path):
    for i in range(707, 807):
        for sub in ("color", "pose"):
            (tmp_path / f"scene{i:04d}_00" / sub).mkdir(parents=True)
    (tmp_path / "stray.tmp").mkdir()
    chosen = scannet.select_scenes(tmp_path, 50)
    assert chosen == [f"scene{i:04d}_00" for i in range(707, 807, 2)]
    assert scannet.select_scenes(tmp_path, 200) == sorted(p.name for p in tmp_path.iterdir() if p.name != "stray.tmp")


# ---------------------------------------------------------------------------------------------
# 7-Scenes metric sanity
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seven_gt(rendered):
    poses, depth, K = rendered
    return sevenscenes.SevenScenesGT(cam_to_world=poses, depth=depth, intrinsics=K)


@pytest.mark.parametrize("points", ["pointmap", "depth"])
def test_sevenscenes_ground_truth_scores_zero(seven_gt, points):
    cfg = sevenscenes.SevenScenesProtocol(points=points)
    m = sevenscenes.evaluate_scene(sevenscenes.gt_as_prediction(seven_gt), seven_gt, cfg)["metrics"]
    for k in ("acc", "acc_med", "comp", "comp_med"):
        assert m[k] == pytest.approx(0.0, abs=1e-5), k
    assert m["nc"] == pytest.approx(1.0, abs=1e-6)
    assert m["icp_fitness"] == pytest.approx(1.0)


def test_sevenscenes_scale_and_depth_shift_are_absorbed(seven_gt):
    """A global scale of the prediction is removed by the median shift/scale alignment."""
    pred = sevenscenes.gt_as_prediction(seven_gt)
    pred = _with(pred, world_points=pred.world_points * 3.0)
    m = sevenscenes.evaluate_scene(pred, seven_gt)["metrics"]
    assert m["acc"] == pytest.approx(0.0, abs=1e-5)
    assert m["comp"] == pytest.approx(0.0, abs=1e-5)
    assert m["pred_scale"] == pytest.approx(3.0 * m["gt_scale"], rel=1e-6)


def test_sevenscenes_alignment_and_crop_helpers():
    assert sevenscenes.lower_median(np.array([4.0, 1.0, 3.0, 2.0])) == 2.0  # torch.nanmedian picks the lower
    rows, cols = sevenscenes.central_crop((392, 518), 224)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (84, 308, 147, 371)
    rows, cols = sevenscenes.central_crop((56, 70), 224)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 56, 0, 70)


# ---------------------------------------------------------------------------------------------
# End-to-end runs (tiny random model, CPU)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from pacegeo.backbone import VGGT
    from pacegeo.backbone.config import tiny
    from pacegeo.hub import save_backbone

    torch.manual_seed(0)
    return save_backbone(VGGT(tiny()), tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from pacegeo.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, num_scenes=2, num_frames=12, seed=7, width=160, height=120, progress=False)
    return root


def _scene_jsons(out: Path) -> dict[str, list[str]]:
    return {d.name: sorted(p.stem for p in d.glob("*.json")) for d in sorted(out.iterdir()) if d.is_dir()}


def test_scannet_script_runs_and_resumes(synth_root, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "--root", str(synth_root), "--frames", "3", "--scenes", "2", "--keep", "1.0", "0.5",
        "--pruner", "training-free", "--model", str(tiny_model), "--size", "56",
        "--out", str(out), "--warmup", "0", "--device", "cpu",
        "--conf-thresh", "1",  # a random model's confidence is ~2: keep every pixel so Chamfer runs
    ]
    assert scannet.main(argv) == 0
    runs = _scene_jsons(out)
    assert runs == {
        "tiny_training-free_keep0.5": ["scene_00007", "scene_00008"],
        "tiny_training-free_keep1": ["scene_00007", "scene_00008"],
    }
    rec = json.loads((out / "tiny_training-free_keep0.5" / "scene_00007.json").read_text())
    assert rec["protocol"] == "scannet" and rec["keep"] == 0.5
    assert rec["frames"] == ["0", "1", "6"]  # first frame + remaining[::11 // 2][:2], as FastVGGT
    assert rec["input_hw"] == [42, 56]
    for key in ("fastvggt_ate", "corrected_ate", "fastvggt_chamfer", "corrected_chamfer", "depth_abs_rel", "latency_ms"):
        assert rec["metrics"][key] is not None, key
    assert rec["metrics"]["conf_kept"] == 1.0
    assert rec["metrics"]["latency_ms"] > 0
    assert rec["pruning"]["keep"] == 0.5
    full = json.loads((out / "tiny_training-free_keep1" / "scene_00007.json").read_text())
    assert full["metrics"]["rot_dev_med"] < 1e-9 and full["metrics"]["depth_dev_med"] == 0.0  # keep 1 is the reference
    assert rec["metrics"]["rot_dev_med"] > 0.0 or rec["metrics"]["points_dev"] > 0.0, rec["metrics"]  # pruning moves the outputs
    summary = (out / "summary.md").read_text()
    assert "rot. dev.° from keep 1" in summary
    assert "CD (FastVGGT)" in summary and "ATE (corrected)" in summary and "depth AbsRel" in summary
    assert summary.count("| tiny | training-free |") == 2
    data = json.loads((out / "summary.json").read_text())
    assert {r["keep"] for r in data["runs"]} == {1.0, 0.5}
    assert (out / "frontier.png").stat().st_size > 1000

    # Resume: finished scenes are skipped; a removed result is recomputed (its fidelity against a
    # keep-1 pass computed again, untimed).
    done = out / "tiny_training-free_keep1" / "scene_00008.json"
    before = done.stat().st_mtime_ns
    (out / "tiny_training-free_keep0.5" / "scene_00007.json").unlink()
    capsys.readouterr()
    assert scannet.main(argv) == 0
    printed = capsys.readouterr().out
    assert "resuming: 1 scene(s) already done" in printed
    assert done.stat().st_mtime_ns == before
    assert _scene_jsons(out) == runs
    again = json.loads((out / "tiny_training-free_keep0.5" / "scene_00007.json").read_text())
    assert again["metrics"]["depth_dev_med"] == pytest.approx(rec["metrics"]["depth_dev_med"])


def test_scannet_script_errors_are_one_line(tmp_path, capsys):
    assert scannet.main(["--root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ScanNet root not found") and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert scannet.main(["--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no ScanNet scenes") and "\n" not in err


def test_sevenscenes_script_runs_on_real_frames(shared_dir, tiny_model, tmp_path):
    root = shared_dir / "data" / "7scenes-redkitchen"
    out = tmp_path / "out7"
    argv = [
        "--root", str(root), "--stride", "3", "--max-frames", "3", "--keep", "1.0", "0.5",
        "--pruner", "grid", "--model", str(tiny_model), "--size", "56",
        "--out", str(out), "--warmup", "0", "--device", "cpu",
    ]
    assert sevenscenes.main(argv) == 0
    runs = _scene_jsons(out)
    assert set(runs) == {"tiny_grid_keep1", "tiny_grid_keep0.5"}
    (name,) = runs["tiny_grid_keep1"]
    rec = json.loads((out / "tiny_grid_keep1" / f"{name}.json").read_text())
    assert rec["protocol"] == "7scenes" and len(rec["frames"]) == 3
    for key in ("acc", "acc_med", "comp", "comp_med", "nc", "nc_med", "latency_ms"):
        assert rec["metrics"][key] is not None
    assert "| tiny | grid |" in (out / "summary.md").read_text()
    assert (out / "frontier.png").exists()


def test_sevenscenes_real_ground_truth_scores_zero(shared_dir):
    """The real 7-Scenes frames through the script's own loading path, ground truth as prediction."""
    root = shared_dir / "data" / "7scenes-redkitchen"
    ((name, seq_dir),) = sevenscenes.find_sequences(root)
    assert name == "7scenes-redkitchen" and seq_dir == root
    prepared, gt, depth_kind = sevenscenes.load_sequence(seq_dir, stride=3, max_frames=4, size=112)
    assert depth_kind == "raw"  # this copy has no depth.proj.png
    assert prepared.names == ["frame-000000", "frame-000030", "frame-000060", "frame-000090"]
    assert prepared.images.shape[0] == 4 and gt.depth.shape[1:] == prepared.image_hw == (84, 112)
    assert (gt.depth > 0).mean() > 0.7
    m = sevenscenes.evaluate_scene(sevenscenes.gt_as_prediction(gt), gt)["metrics"]
    assert m["acc"] == pytest.approx(0.0, abs=1e-5) and m["comp"] == pytest.approx(0.0, abs=1e-5)
    assert m["nc"] == pytest.approx(1.0, abs=1e-4)  # float32 point map vs float64 ground truth


def test_sevenscenes_script_errors_are_one_line(tmp_path, capsys):
    assert sevenscenes.main(["--root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 7-Scenes root not found") and "\n" not in err


# ---------------------------------------------------------------------------------------------
# eval/synthrooms.py: the learned-vs-others checks
# ---------------------------------------------------------------------------------------------


def test_paired_gain_interval_separates_a_consistent_gain_from_noise():
    synthrooms = _load("synthrooms")
    rng = np.random.default_rng(3)
    other = rng.uniform(0.1, 0.2, size=20)
    gain, lo, hi = synthrooms.paired_gain_ci(other - 0.01, other, higher=False)  # lower is better: 0.01 better
    assert gain == pytest.approx(0.01) and lo == pytest.approx(0.01) and hi == pytest.approx(0.01)
    noisy = other + rng.normal(0.0, 0.05, size=20)
    gain, lo, hi = synthrooms.paired_gain_ci(noisy, other, higher=True)
    assert lo < gain < hi and lo < 0 < hi


def test_checks_table_names_the_best_other_pruner_and_its_interval():
    synthrooms = _load("synthrooms")

    def rec(pruner, keep, auc, scenes=None):
        r = {"frames": 8, "pruner": pruner, "keep": keep, "abs_rel": 0.2, "auc30": auc, "rra15": 0.5}
        if scenes is not None:
            r["per_scene"] = {"abs_rel": [0.2] * 4, "auc30": scenes, "rra15": [0.5] * 4}
        return r

    records = [rec("none", 1.0, 0.30), rec("grid", 0.5, 0.25, [0.2, 0.3, 0.2, 0.3]),
               rec("random", 0.5, 0.20, [0.2] * 4), rec("learned", 0.5, 0.27, [0.22, 0.32, 0.22, 0.32])]
    rows = [r for r in synthrooms.checks_table(records) if r.startswith("| 8 | 0.5 | auc30")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[4] == "0.25 (grid)" and cells[5] == "yes"
    assert cells[6] == "+0.02 [+0.02, +0.02]"
    assert cells[8] == "+10.0%"  # 0.27 against 0.30 unpruned, higher is better
    records[1].pop("per_scene")
    rows = [r for r in synthrooms.checks_table(records) if r.startswith("| 8 | 0.5 | auc30")]
    assert [c.strip() for c in rows[0].strip("|").split("|")][6] == "-"


def test_synthrooms_script_writes_every_row_and_reuses_the_unpruned_pass(tiny_model, tmp_path):
    synthrooms = _load("synthrooms")
    out = tmp_path / "rows.json"
    argv = ["--model", str(tiny_model), "--size", "42x56", "--frames", "3", "--scenes", "2", "--traj-frames", "8",
            "--pruners", "none", "grid", "--keep", "0.5", "0.3", "--json", str(out), "--md", str(tmp_path / "rows.md")]
    assert synthrooms.main(argv) == 0
    records = json.loads(out.read_text())
    assert [(r["pruner"], r["keep"]) for r in records] == [("none", 1.0), ("grid", 0.5), ("grid", 0.3)]
    none = records[0]
    for key in ("rot_dev_med", "depth_dev_med", "points_dev"):  # the unpruned row is its own reference
        assert none[key] < 1e-5 < records[1][key], key
        assert len(records[1]["per_scene"][key]) == 2
    assert none["median_s"] > 0 and len(none["per_scene"]["abs_rel"]) == 2
    assert all(r["median_s"] > 0 for r in records)
    assert "| none |" in (tmp_path / "rows.md").read_text()


def test_fidelity_table_compares_learned_with_every_other_pruner():
    synthrooms = _load("synthrooms")
    rng = np.random.default_rng(0)
    grid = rng.uniform(4, 6, size=20)

    def record(pruner, keep, values):
        scenes = {k: list(values) for k in synthrooms.FIDELITY_METRICS}
        return {"frames": 8, "pruner": pruner, "keep": keep, **{k: float(np.mean(values)) for k in scenes}, "per_scene": scenes}

    records = [record("grid", 0.3, grid), record("learned", 0.3, grid - 1.0), record("learned", 0.7, grid)]
    rows = [r for r in synthrooms.fidelity_table(records) if r.startswith("| 8 |")]
    assert len(rows) == 4 and all("| 0.3 |" in r for r in rows)  # keep 0.7 is above 0.5: not compared
    assert "gain +1 [+1, +1]" in rows[0]  # learned is exactly 1 closer in every scene


def test_combined_cameras_take_rotations_from_one_set_and_centres_from_the_other():
    import torch
    from scipy.spatial.transform import Rotation

    from pacegeo.evaluation.synthclips import combine_cameras

    def cameras(rotations, centres):
        rot = torch.tensor(rotations.as_matrix(), dtype=torch.float32)
        return torch.cat((rot, -(rot @ torch.tensor(centres, dtype=torch.float32)[..., None])), dim=-1)

    truth = cameras(Rotation.random(5, random_state=0), np.random.default_rng(0).normal(size=(5, 3)))
    other = cameras(Rotation.random(5, random_state=1), np.random.default_rng(1).normal(size=(5, 3)))
    assert torch.allclose(combine_cameras(truth, truth), truth, atol=1e-5)
    mixed = combine_cameras(other, truth)  # other's rotations, the true centres
    assert torch.allclose(mixed[:, :, :3], other[:, :, :3])
    centres = -(mixed[:, :, :3].transpose(1, 2) @ mixed[:, :, 3:])[..., 0]
    true_centres = -(truth[:, :, :3].transpose(1, 2) @ truth[:, :, 3:])[..., 0]
    assert torch.allclose(centres, true_centres, atol=1e-5)


def test_attention_oracle_prunes_by_the_unpruned_models_attention_mass():
    import torch

    from pacegeo.backbone import VGGT, tiny
    from pacegeo.pace import PaceVGGT
    from pacegeo.pruning.distill import attention_targets

    synthrooms = _load("synthrooms")
    torch.manual_seed(0)
    backbone = VGGT(tiny()).eval()
    pace = PaceVGGT(backbone, mode="training-free", amp_dtype=None).eval()
    images = torch.rand(1, 3, 3, 42, 56)
    seen = []
    reduce = pace.reduce
    pace.reduce = lambda feats, scores, counts, ratio: seen.append(scores) or reduce(feats, scores, counts, ratio)
    for queries in ("all", "camera"):
        run = synthrooms.oracle_runner(backbone, pace, queries)
        with torch.inference_mode():
            out = run(images, 0.5)
        expected = attention_targets(backbone, images, queries).log()
        torch.testing.assert_close(seen[-1], expected)  # the scores the selection ranks
        assert "score" not in vars(pace)  # the learned/training-free scores come back afterwards
        assert torch.isfinite(out["depth"]).all()
    assert not torch.allclose(seen[0], seen[1])
