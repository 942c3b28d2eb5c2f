"""Metric library: every value checked against a hand computation or an independent route."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pacegeo import metrics as M
from pacegeo.geometry import transforms as tf

# ---------------------------------------------------------------------------------------------
# fixtures / helpers
# ---------------------------------------------------------------------------------------------


def _random_sim3(seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    R = Rotation.random(random_state=seed).as_matrix()
    return float(rng.uniform(0.3, 3.0)), R, rng.normal(size=3)


def _trajectory_c2w(num: int = 30, seed: int = 0) -> np.ndarray:
    """A smooth random camera-to-world trajectory [num, 4, 4]."""
    rng = np.random.default_rng(seed)
    T = np.tile(np.eye(4), (num, 1, 1))
    T[:, :3, :3] = Rotation.from_rotvec(np.cumsum(rng.normal(0, 0.1, (num, 3)), 0)).as_matrix()
    T[:, :3, 3] = np.cumsum(rng.normal(0, 0.2, (num, 3)), 0)
    return T


def _rotate_camera(c2w: np.ndarray, k: int, deg: float, axis=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Rotate camera k about its own centre by ``deg`` around a camera-frame axis."""
    out = c2w.copy()
    rot = Rotation.from_rotvec(np.radians(deg) * np.asarray(axis) / np.linalg.norm(axis))
    out[k, :3, :3] = out[k, :3, :3] @ rot.as_matrix()
    return out


def _plane_grid(n: int = 40, spacing: float = 0.05) -> np.ndarray:
    x, y = np.meshgrid(np.arange(n) * spacing, np.arange(n) * spacing, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], axis=1)


# ---------------------------------------------------------------------------------------------
# SE(3) / Sim(3) helpers and Umeyama
# ---------------------------------------------------------------------------------------------


def test_invert_se3_and_camera_centers():
    c2w = _trajectory_c2w(5)
    w2c = tf.invert_se3(c2w)
    np.testing.assert_allclose(w2c @ c2w, np.tile(np.eye(4), (5, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(tf.camera_centers(w2c[:, :3, :]), c2w[:, :3, 3], atol=1e-12)


def test_apply_sim3_to_poses_consistent_with_points():
    s, R, t = _random_sim3(1)
    c2w = _trajectory_c2w(4)
    X_cam = np.array([0.3, -0.2, 2.0])
    moved = tf.apply_sim3_to_c2w(c2w, s, R, t)
    # a point seen by each camera maps to the transformed world point (camera coords scaled by s)
    for i in range(4):
        X_world = c2w[i, :3, :3] @ X_cam + c2w[i, :3, 3]
        expected = tf.apply_sim3_to_points(X_world[None], s, R, t)[0]
        np.testing.assert_allclose(moved[i, :3, :3] @ (s * X_cam) + moved[i, :3, 3], expected)
    np.testing.assert_allclose(
        tf.apply_sim3_to_w2c(tf.invert_se3(c2w), s, R, t), tf.invert_se3(moved), atol=1e-12
    )


def test_umeyama_recovers_exact_sim3():
    s, R, t = _random_sim3(2)
    src = np.random.default_rng(3).normal(size=(50, 3))
    dst = tf.apply_sim3_to_points(src, s, R, t)
    s2, R2, t2 = tf.umeyama(src, dst)
    assert s2 == pytest.approx(s, abs=1e-10)
    np.testing.assert_allclose(R2, R, atol=1e-10)
    np.testing.assert_allclose(t2, t, atol=1e-10)
    # torch input, float32
    s3, R3, _ = tf.umeyama(torch.from_numpy(src).float(), torch.from_numpy(dst).float())
    assert s3 == pytest.approx(s, rel=1e-5)
    np.testing.assert_allclose(R3, R, atol=1e-5)


def test_umeyama_with_noise_and_se3():
    s, R, t = _random_sim3(4)
    rng = np.random.default_rng(5)
    src = rng.normal(size=(500, 3))
    dst = tf.apply_sim3_to_points(src, s, R, t) + rng.normal(0, 0.01, (500, 3))
    s2, R2, t2 = tf.umeyama(src, dst)
    assert s2 == pytest.approx(s, rel=1e-2)
    assert tf.rotation_angle_deg(R2.T @ R) < 0.5
    np.testing.assert_allclose(t2, t, atol=0.05)
    # rigid: scale fixed to 1, rotation still exact on noise-free rigid data
    dst_rigid = tf.apply_sim3_to_points(src, 1.0, R, t)
    s4, R4, t4 = tf.umeyama(src, dst_rigid, with_scale=False)
    assert s4 == 1.0
    np.testing.assert_allclose(R4, R, atol=1e-10)
    np.testing.assert_allclose(t4, t, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Trajectory metrics on camera centres
# ---------------------------------------------------------------------------------------------


def test_ate_zero_for_ground_truth_and_offset_without_alignment():
    gt = _trajectory_c2w()
    assert M.ate(gt, gt) == pytest.approx(0.0, abs=1e-10)
    assert M.are(gt, gt) == pytest.approx(0.0, abs=1e-8)
    shifted = gt.copy()
    offset = np.array([0.03, -0.04, 0.0])  # |offset| = 0.05
    shifted[:, :3, 3] += offset
    assert M.ate(shifted, gt, align=False) == pytest.approx(0.05, abs=1e-12)
    np.testing.assert_allclose(M.ate(shifted, gt, align=False, reduction="none"), 0.05)
    # any alignment removes a constant offset
    assert M.ate(shifted, gt, with_scale=False) == pytest.approx(0.0, abs=1e-10)
    assert M.ate(shifted, gt) == pytest.approx(0.0, abs=1e-10)


def test_ate_invariant_to_global_sim3_of_prediction():
    gt = _trajectory_c2w(seed=1)
    rng = np.random.default_rng(6)
    pred = gt.copy()
    pred[:, :3, 3] += rng.normal(0, 0.05, (len(gt), 3))
    noise = Rotation.from_rotvec(rng.normal(0, 0.03, (len(gt), 3))).as_matrix()
    pred[:, :3, :3] = noise @ pred[:, :3, :3]
    base = M.trajectory_errors(pred, gt)
    assert base["ate"] > 0.01
    s, R, t = _random_sim3(7)
    moved = tf.apply_sim3_to_c2w(pred, s, R, t)
    for key, value in M.trajectory_errors(moved, gt).items():
        assert value == pytest.approx(base[key], rel=1e-8, abs=1e-10), key
    # rigid alignment is invariant to a rigid motion but not to a scale change
    rigid = tf.apply_sim3_to_c2w(pred, 1.0, R, t)
    assert M.ate(rigid, gt, with_scale=False) == pytest.approx(M.ate(pred, gt, with_scale=False))
    assert M.ate(tf.apply_sim3_to_c2w(pred, 2.0, R, t), gt, with_scale=False) > base["ate"]


def test_are_and_rpe_for_one_rotated_camera():
    gt = _trajectory_c2w(10, seed=2)
    pred = _rotate_camera(gt, 4, 5.0)
    per_frame = M.are(pred, gt, align=False, reduction="none")
    expected = np.zeros(10)
    expected[4] = 5.0
    np.testing.assert_allclose(per_frame, expected, atol=1e-9)
    assert M.are(pred, gt, align=False) == pytest.approx(math.sqrt(25.0 / 10))
    rot, trans = M.rpe(pred, gt, align=False, reduction="none")
    expected_pairs = np.zeros(9)
    expected_pairs[[3, 4]] = 5.0  # pairs (3, 4) and (4, 5)
    np.testing.assert_allclose(rot, expected_pairs, atol=1e-9)
    # rotating camera 4 about its centre leaves the motion 3 -> 4 unchanged but not 4 -> 5
    assert trans[3] == pytest.approx(0.0, abs=1e-12)
    assert trans[4] > 0
    np.testing.assert_allclose(np.delete(trans, 4), 0.0, atol=1e-12)


def test_rpe_translation_for_known_scale_error():
    gt = _trajectory_c2w(8, seed=3)
    pred = gt.copy()
    pred[:, :3, 3] *= 2.0
    _, trans = M.rpe(pred, gt, align=False, reduction="none")
    steps = np.linalg.norm(gt[1:, :3, 3] - gt[:-1, :3, 3], axis=-1)
    np.testing.assert_allclose(trans, steps, atol=1e-12)  # relative motion doubled: error = step
    rot, trans_aligned = M.rpe(pred, gt)  # Sim(3) alignment recovers the scale
    assert rot == pytest.approx(0.0, abs=1e-8)
    assert trans_aligned == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------------------------------------
# FastVGGT / evo protocol
# ---------------------------------------------------------------------------------------------


def test_fastvggt_trajectory_errors_perfect_prediction():
    gt_c2w = _trajectory_c2w(12, seed=4)
    gt_c2w[:, :3, 3] += 5.0  # a world frame far from the first camera
    pred_w2c = tf.invert_se3(np.linalg.inv(gt_c2w[0]) @ gt_c2w)[:, :3, :]  # VGGT frame: cam 0 = I
    errs = M.fastvggt_trajectory_errors(pred_w2c, gt_c2w)
    for key, value in errs.items():
        assert value == pytest.approx(0.0, abs=1e-7), key
    # scale of the prediction is corrected by the Sim(3) step (w2c translations scale too)
    scaled = pred_w2c.copy()
    scaled[:, :, 3] *= 3.0
    for key, value in M.fastvggt_trajectory_errors(scaled, gt_c2w).items():
        assert value == pytest.approx(0.0, abs=1e-7), key


def test_evo_trajectory_errors_hand_cases():
    ref = tf.invert_se3(_trajectory_c2w(6, seed=5))
    est = ref.copy()
    est[:, :3, 3] += np.array([0.0, 0.3, 0.4])  # constant position offset of 0.5
    raw = M.evo_trajectory_errors(est, ref, align=False, correct_scale=False, align_origin=False)
    assert raw["ate"] == pytest.approx(0.5)
    assert raw["are"] == pytest.approx(0.0, abs=1e-8)
    # evo's origin alignment left-multiplies by ref_0 est_0^-1, which cancels a pure offset
    origin = M.evo_trajectory_errors(est, ref, align=False, correct_scale=False, align_origin=True)
    assert origin["ate"] == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------------------------------------
# Pairwise relative pose, RRA / RTA / AUC
# ---------------------------------------------------------------------------------------------


def test_relative_pose_errors_one_rotated_camera():
    c2w = _trajectory_c2w(6, seed=6)
    gt_w2c = tf.invert_se3(c2w)[:, :3, :]
    pred_w2c = tf.invert_se3(_rotate_camera(c2w, 2, 5.0, axis=(1.0, 2.0, 0.5)))[:, :3, :]
    rot, trans = M.relative_pose_errors(pred_w2c, gt_w2c)
    pairs = list(zip(*np.triu_indices(6, 1)))
    assert len(rot) == len(trans) == 15
    for (i, j), r, t in zip(pairs, rot, trans):
        assert r == pytest.approx(5.0 if 2 in (i, j) else 0.0, abs=1e-9)
        if i != 2:  # centre of camera j in camera i's frame does not depend on camera 2's rotation
            assert t == pytest.approx(0.0, abs=1e-5)
    r0, t0 = M.relative_pose_errors(gt_w2c, gt_w2c)
    np.testing.assert_allclose(r0, 0.0, atol=1e-9)
    np.testing.assert_allclose(t0, 0.0, atol=1e-5)


def test_relative_translation_direction_sign_and_scale():
    c2w = _trajectory_c2w(4, seed=7)
    gt = tf.invert_se3(c2w)
    scaled = gt.copy()
    scaled[:, :3, 3] *= 7.0  # global scale: directions unchanged
    _, t = M.relative_pose_errors(scaled, gt)
    np.testing.assert_allclose(t, 0.0, atol=1e-5)
    flipped = gt.copy()
    flipped[:, :3, 3] *= -1.0  # every relative translation reversed
    _, t_amb = M.relative_pose_errors(flipped, gt)
    _, t_full = M.relative_pose_errors(flipped, gt, sign_ambiguous=False)
    np.testing.assert_allclose(t_amb, 0.0, atol=1e-5)
    np.testing.assert_allclose(t_full, 180.0, atol=1e-5)


def test_rra_rta_auc_hand_computed():
    rot = np.array([0.5, 2.5, 3.0, 40.0])
    trans = np.array([0.2, 1.0, 10.0, 1.0])
    # RRA@5: 0.5, 2.5, 3.0 < 5 -> 3/4 ; RTA@5: 0.2, 1.0, 1.0 < 5 -> 3/4 ; strict "<"
    assert M.rra(rot, 5) == 0.75
    assert M.rta(trans, 5) == 0.75
    assert M.rra(rot, 3.0) == 0.5
    # max errors 0.5, 2.5, 10, 40 -> bins 0, 2, 10 and one pair beyond 30.
    # cumulative: 0.25 on bins 0-1 (2 bins), 0.5 on 2-9 (8), 0.75 on 10-29 (20): 19.5 / 30
    assert M.auc(rot, trans, 30) == pytest.approx(0.65)
    # AUC@3: cumulative 0.25, 0.25, 0.5 -> 1/3
    assert M.auc(rot, trans, 3) == pytest.approx(1.0 / 3.0)
    assert M.auc(np.zeros(3), np.zeros(3)) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------


def test_depth_metrics_scaling_cases():
    gt = np.random.default_rng(8).uniform(1.0, 5.0, (3, 8, 10))
    zero = M.depth_metrics(gt, gt, align="none")
    assert zero["abs_rel"] == pytest.approx(0.0) and zero["delta_1_25"] == 1.0
    assert zero["rmse"] == pytest.approx(0.0)
    r = M.depth_metrics(1.1 * gt, gt, align="none")
    assert r["abs_rel"] == pytest.approx(0.1)
    assert r["delta_1_25"] == 1.0
    for align in ("median", "lstsq"):
        for per_frame in (True, False):
            r = M.depth_metrics(1.1 * gt, gt, align=align, per_frame=per_frame)
            assert r["abs_rel"] == pytest.approx(0.0, abs=1e-12), (align, per_frame)
    # per-frame scales differ: only per-frame median alignment removes them exactly
    scales = np.array([0.5, 1.0, 2.0])[:, None, None]
    per_frame = M.depth_metrics(scales * gt, gt, per_frame=True)
    assert per_frame["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert M.depth_metrics(scales * gt, gt, per_frame=False)["abs_rel"] > 0.1


def test_depth_metrics_hand_case_and_invalid_pixels():
    gt = np.array([[1.0, 1.0, 1.0, 1.0, 0.0, np.nan, 1.0]])
    pred = np.array([[1.0, 1.2, 1.3, 0.7, 5.0, 1.0, np.inf]])
    r = M.depth_metrics(pred, gt, align="none")
    # valid: first four. ratios 1, 1.2, 1.3, 1/0.7 -> 2 of 4 below 1.25
    assert r["delta_1_25"] == pytest.approx(0.5)
    assert r["abs_rel"] == pytest.approx((0.0 + 0.2 + 0.3 + 0.3) / 4)
    assert r["rmse"] == pytest.approx(math.sqrt((0.04 + 0.09 + 0.09) / 4))
    mask = np.array([[True, False, True, True, True, True, True]])
    r = M.depth_metrics(torch.from_numpy(pred), torch.from_numpy(gt), valid=mask, align="none")
    assert r["abs_rel"] == pytest.approx(0.6 / 3)
    assert r["delta_1_25"] == pytest.approx(1.0 / 3)
    # negative prediction never passes delta
    assert M.depth_metrics(np.array([-1.0]), np.array([1.0]), align="none")["delta_1_25"] == 0.0


# ---------------------------------------------------------------------------------------------
# Point clouds
# ---------------------------------------------------------------------------------------------


def test_chamfer_identical_shifted_and_clipped():
    gt = _plane_grid()
    assert M.chamfer(gt, gt) == pytest.approx(0.0)
    d = 0.01
    shifted = gt + np.array([0.0, 0.0, d])  # along the plane normal: every NN distance is d
    r = M.accuracy_completeness(shifted, gt)
    assert r["acc"] == pytest.approx(d) and r["comp"] == pytest.approx(d)
    assert r["acc_med"] == pytest.approx(d) and r["comp_med"] == pytest.approx(d)
    assert M.chamfer(shifted, gt) == pytest.approx(2 * d)
    assert M.chamfer(shifted, gt, combine="mean") == pytest.approx(d)
    far = gt + np.array([0.0, 0.0, 1.0])
    assert M.chamfer(far, gt) == pytest.approx(2.0)
    assert M.chamfer(far, gt, max_dist=0.5) == pytest.approx(1.0)  # each direction capped at 0.5


def test_chamfer_subsampling_and_voxel_are_deterministic():
    rng = np.random.default_rng(9)
    pred = rng.uniform(0, 1, (3000, 3))
    gt = rng.uniform(0, 1, (2500, 3))
    kw = dict(max_points=1000, seed=33, voxel_size=0.05)
    assert M.chamfer(pred, gt, **kw) == M.chamfer(pred, gt, **kw)
    assert M.chamfer(gt, gt, **kw) == pytest.approx(0.0)
    # same subset as numpy's legacy global generator seeded with 33 (FastVGGT's call)
    state = np.random.get_state()
    try:
        np.random.seed(33)
        idx = np.random.choice(3000, 1000, replace=False)
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(M.subsample_points(pred, 1000, seed=33), pred[idx])
    assert M.fastvggt_chamfer(gt, gt) == pytest.approx(0.0)


def test_voxel_downsample_keeps_cluster_means():
    rng = np.random.default_rng(13)
    grid = np.meshgrid([0.0, 1.0], [0.0, 1.0], [0.0, 1.0], indexing="ij")
    centres = np.stack(grid, -1).reshape(-1, 3)
    clusters = centres[:, None, :] + rng.uniform(-0.01, 0.01, (8, 20, 3))
    down = M.voxel_downsample(clusters.reshape(-1, 3), 0.5)
    assert len(down) == 8
    dist, _ = M.nearest_neighbor_distances(clusters.mean(1), down)
    np.testing.assert_allclose(dist, 0.0, atol=1e-12)


def test_accuracy_completeness_asymmetric_outlier():
    gt = _plane_grid(10, 0.1)  # 100 points
    outlier = np.array([[0.45, 0.45, 2.0]])  # 2.0 above the plane, off-grid in x/y
    pred = np.vstack([gt, outlier])
    nearest = np.linalg.norm(outlier[0] - np.array([0.4, 0.4, 0.0]))
    r = M.accuracy_completeness(pred, gt)
    assert r["acc"] == pytest.approx(nearest / 101)
    assert r["acc_med"] == pytest.approx(0.0)
    assert r["comp"] == pytest.approx(0.0) and r["comp_med"] == pytest.approx(0.0)


def test_align_by_bounding_box():
    src = np.random.default_rng(10).uniform(0, 1, (200, 3))
    tgt = 3.0 * src + np.array([1.0, 2.0, 3.0])
    aligned, scale = M.align_by_bounding_box(src, tgt)
    assert scale == pytest.approx(3.0)
    np.testing.assert_allclose(aligned, tgt, atol=1e-12)


def test_normal_consistency_plane():
    plane = _plane_grid(30, 0.02)
    r = M.normal_consistency(plane, None, plane, None)
    assert r["nc"] == pytest.approx(1.0) and r["nc_med"] == pytest.approx(1.0)
    # given normals: a tilted normal field gives |cos| of the tilt in both directions
    up = np.tile([0.0, 0.0, 1.0], (len(plane), 1))
    tilt = np.tile([0.0, math.sin(math.radians(60)), math.cos(math.radians(60))], (len(plane), 1))
    r = M.normal_consistency(plane, -tilt, plane, up)  # sign is ignored
    assert r["nc1"] == pytest.approx(0.5) and r["nc2"] == pytest.approx(0.5)
    assert r["nc"] == pytest.approx(0.5)


def test_icp_recovers_small_rigid_offset():
    rng = np.random.default_rng(11)
    dst = rng.uniform(-0.5, 0.5, (2000, 3))
    T_true = np.eye(4)
    T_true[:3, :3] = Rotation.from_euler("xyz", [2.0, -1.5, 3.0], degrees=True).as_matrix()
    T_true[:3, 3] = [0.02, -0.01, 0.015]
    src = tf.apply_transform(dst, np.linalg.inv(T_true))
    T, fitness = M.icp_refine(src, dst, threshold=0.1)
    assert fitness == pytest.approx(1.0)
    np.testing.assert_allclose(T, T_true, atol=1e-4)
    np.testing.assert_allclose(tf.apply_transform(src, T), dst, atol=1e-4)


def test_cut3r_reconstruction_metrics_identity():
    rng = np.random.default_rng(12)
    gt = _plane_grid(25, 0.02)
    gt = np.vstack([gt, gt[:, [2, 0, 1]] + rng.normal(0, 1e-9, gt.shape)])  # two planes
    r = M.cut3r_reconstruction_metrics(gt, gt)
    assert r["acc"] == pytest.approx(0.0, abs=1e-6) and r["comp"] == pytest.approx(0.0, abs=1e-6)
    assert r["icp_fitness"] == pytest.approx(1.0)
    assert r["nc"] > 0.95
