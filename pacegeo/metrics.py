"""Evaluation metrics for camera poses, depth maps and point clouds.

All functions accept numpy arrays or torch tensors (converted with ``detach().cpu()``) and compute
in float64. Results are Python floats or float64 numpy arrays.

Conventions
-----------
* Points are ``[N, 3]`` arrays in metres (or the unit of the inputs; nothing is rescaled unless a
  function says so).
* Camera extrinsics follow OpenCV: x right, y down, z forward.
  - ``w2c`` (world-to-camera, VGGT's ``extrinsic``) maps a world point ``X`` to camera coordinates
    ``x = R X + t``; given as ``[S, 3, 4]`` or ``[S, 4, 4]``.
  - ``c2w`` (camera-to-world, the ScanNet / 7-Scenes ``pose.txt``) is its inverse; its last column
    is the camera centre in world coordinates; given as ``[S, 3, 4]`` or ``[S, 4, 4]``.
* A similarity ``(s, R, t)`` maps a point ``X`` to ``s R X + t``; rigid and similarity transforms
  and their fitting are in :mod:`pacegeo.geometry.transforms`.
* Angles are returned in degrees.

Two families of trajectory metrics are provided:

* :func:`ate`, :func:`are`, :func:`rpe`, :func:`trajectory_errors`: camera-to-world poses, Umeyama
  alignment of *camera centres*. This is the geometrically meaningful definition.
* :func:`fastvggt_trajectory_errors` (built on :func:`evo_trajectory_errors`): the ScanNet-50
  protocol exactly as the FastVGGT / LiteVGGT evaluation runs it through ``evo``, which feeds
  *world-to-camera* matrices to evo, so its "positions" are w2c translations, not camera centres.
  Use it only to reproduce numbers published with that protocol.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from pacegeo.extras import require

from pacegeo.geometry.transforms import (
    ArrayLike,
    _points,
    apply_sim3_to_c2w,
    apply_transform,
    invert_se3,
    rotation_angle_deg,
    sim3_matrix,
    to_4x4,
    to_numpy,
    umeyama,
)
from pacegeo.geometry.transforms import poses_4x4 as _poses

Reduction = Literal["rmse", "mean", "median", "none"]

__all__ = [
    "ate",
    "are",
    "rpe",
    "trajectory_errors",
    "evo_trajectory_errors",
    "fastvggt_trajectory_errors",
    "relative_pose_errors",
    "rra",
    "rta",
    "auc",
    "depth_metrics",
    "nearest_neighbor_distances",
    "subsample_points",
    "voxel_downsample",
    "accuracy_completeness",
    "chamfer",
    "fastvggt_chamfer",
    "align_by_bounding_box",
    "estimate_normals",
    "normal_consistency",
    "icp_refine",
    "cut3r_reconstruction_metrics",
]


def _project_rotations(R: np.ndarray) -> np.ndarray:
    """Nearest rotations to ``[..., 3, 3]`` matrices (scipy's quaternion round trip)."""
    shape = R.shape
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_matrix().reshape(shape)


def _reduce(errors: np.ndarray, reduction: Reduction) -> Union[float, np.ndarray]:
    if reduction == "none":
        return errors
    if errors.size == 0:
        return float("nan")
    if reduction == "rmse":
        return float(np.sqrt(np.mean(errors**2)))
    if reduction == "mean":
        return float(np.mean(errors))
    if reduction == "median":
        return float(np.median(errors))
    raise ValueError(f"reduction must be rmse, mean, median or none, got {reduction!r}")


# ---------------------------------------------------------------------------------------------
# Trajectory metrics on camera centres (camera-to-world poses)
# ---------------------------------------------------------------------------------------------


def _check_same_length(P: np.ndarray, G: np.ndarray) -> None:
    if P.shape[0] != G.shape[0]:
        raise ValueError(f"prediction has {P.shape[0]} poses, ground truth {G.shape[0]}")


def _aligned_c2w(
    pred_c2w: ArrayLike, gt_c2w: ArrayLike, align: bool, with_scale: bool
) -> tuple[np.ndarray, np.ndarray]:
    P = _poses(pred_c2w, "pred_c2w")
    G = _poses(gt_c2w, "gt_c2w")
    _check_same_length(P, G)
    if align:
        s, R, t = umeyama(P[:, :3, 3], G[:, :3, 3], with_scale=with_scale)
        P = apply_sim3_to_c2w(P, s, R, t)
    return P, G


def ate(
    pred_c2w: ArrayLike,
    gt_c2w: ArrayLike,
    *,
    align: bool = True,
    with_scale: bool = True,
    reduction: Reduction = "rmse",
) -> Union[float, np.ndarray]:
    """Absolute trajectory error of camera centres.

    The predicted centres are aligned to the ground truth with Umeyama (Sim(3) when ``with_scale``,
    SE(3) otherwise; no alignment when ``align=False``), then the per-frame Euclidean distances
    ``|C_pred_i - C_gt_i|`` are reduced (RMSE by default).

    Args:
        pred_c2w, gt_c2w: camera-to-world poses ``[S, 3|4, 4]``; world-to-camera extrinsics must be
            converted first with :func:`invert_se3`.

    Returns:
        Error in the ground-truth unit (float), or ``[S]`` per-frame errors for
        ``reduction="none"``.
    """
    P, G = _aligned_c2w(pred_c2w, gt_c2w, align, with_scale)
    return _reduce(np.linalg.norm(P[:, :3, 3] - G[:, :3, 3], axis=-1), reduction)


def are(
    pred_c2w: ArrayLike,
    gt_c2w: ArrayLike,
    *,
    align: bool = True,
    with_scale: bool = True,
    reduction: Reduction = "rmse",
) -> Union[float, np.ndarray]:
    """Absolute rotation error in degrees after the same alignment as :func:`ate`.

    Per frame the angle of ``R_gt_i^T (R_align R_pred_i)`` (camera-to-world rotations), reduced by
    ``reduction`` (RMSE by default, ``[S]`` for ``"none"``).
    """
    P, G = _aligned_c2w(pred_c2w, gt_c2w, align, with_scale)
    rel = np.swapaxes(G[:, :3, :3], -1, -2) @ P[:, :3, :3]
    return _reduce(rotation_angle_deg(rel), reduction)


def rpe(
    pred_c2w: ArrayLike,
    gt_c2w: ArrayLike,
    *,
    delta: int = 1,
    align: bool = True,
    with_scale: bool = True,
    reduction: Reduction = "rmse",
) -> tuple[Union[float, np.ndarray], Union[float, np.ndarray]]:
    """Relative pose error over frame pairs ``(i, i + delta)``.

    With relative motions ``Q = G_i^-1 G_{i+d}`` (ground truth) and ``P = P_i^-1 P_{i+d}``
    (prediction after alignment; only the Sim(3) scale changes relative motions), the error is
    ``E = Q^-1 P``. Rotation error is the angle of ``E`` in degrees, translation error ``|E_t|`` in
    the ground-truth unit.

    Args:
        pred_c2w, gt_c2w: camera-to-world poses ``[S, 3|4, 4]``.

    Returns:
        ``(rpe_rot_deg, rpe_trans)``, each reduced by ``reduction`` (``[S - delta]`` arrays for
        ``"none"``).
    """
    if delta < 1:
        raise ValueError(f"delta must be >= 1, got {delta}")
    P, G = _aligned_c2w(pred_c2w, gt_c2w, align, with_scale)
    if P.shape[0] <= delta:
        raise ValueError(f"need more than delta={delta} poses, got {P.shape[0]}")
    Q_rel = invert_se3(G[:-delta]) @ G[delta:]
    P_rel = invert_se3(P[:-delta]) @ P[delta:]
    E = invert_se3(Q_rel) @ P_rel
    rot = rotation_angle_deg(E[:, :3, :3])
    trans = np.linalg.norm(E[:, :3, 3], axis=-1)
    return _reduce(rot, reduction), _reduce(trans, reduction)


def trajectory_errors(
    pred_c2w: ArrayLike,
    gt_c2w: ArrayLike,
    *,
    align: bool = True,
    with_scale: bool = True,
    delta: int = 1,
) -> dict[str, float]:
    """ATE, ARE (deg), RPE rotation (deg) and RPE translation (all RMSE) of camera-to-world poses.

    Returns ``{"ate", "are", "rpe_rot", "rpe_trans"}``; see :func:`ate`, :func:`are`, :func:`rpe`.
    """
    kw = dict(align=align, with_scale=with_scale)
    rpe_rot, rpe_trans = rpe(pred_c2w, gt_c2w, delta=delta, **kw)
    return {
        "ate": ate(pred_c2w, gt_c2w, **kw),
        "are": are(pred_c2w, gt_c2w, **kw),
        "rpe_rot": rpe_rot,
        "rpe_trans": rpe_trans,
    }


# ---------------------------------------------------------------------------------------------
# The evo-based ScanNet-50 protocol of FastVGGT / LiteVGGT
# ---------------------------------------------------------------------------------------------


def _evo_align(
    est: np.ndarray, ref: np.ndarray, align: bool, correct_scale: bool, align_origin: bool
) -> np.ndarray:
    """Replicates evo's ``traj_est.align(...)`` followed by ``traj_est.align_origin(...)``."""
    est = est.copy()
    if align or correct_scale:
        s, R, t = umeyama(est[:, :3, 3], ref[:, :3, 3], with_scale=correct_scale)
        if correct_scale:
            est[:, :3, 3] *= s
        if align:  # evo: scale first, then left-multiply by the rigid part
            est = sim3_matrix(1.0, R, t) @ est
    if align_origin:
        est = (ref[0] @ invert_se3(est[0]))[None] @ est
    return est


def evo_trajectory_errors(
    est_poses: ArrayLike,
    ref_poses: ArrayLike,
    *,
    align: bool = True,
    correct_scale: bool = True,
    align_origin: bool = True,
    delta: int = 1,
) -> dict[str, float]:
    """APE / RPE as ``evo.main_ape.ape`` and ``evo.main_rpe.rpe`` compute them, on generic poses.

    evo treats each 4x4 matrix ``T_i`` as a pose whose "position" is ``T_i[:3, 3]``. Rotations are
    first projected to the nearest rotation (the quaternion round trip of ``PoseTrajectory3D``).
    Then, as in evo:

    1. ``align`` / ``correct_scale``: Umeyama on positions (est -> ref); positions are multiplied by
       ``s`` and every pose is left-multiplied by ``[R | t]``.
    2. ``align_origin``: every pose is left-multiplied by ``ref_0 est_0^-1`` so that the first poses
       coincide exactly.
    3. ATE = RMSE of ``|p_est_i - p_ref_i|``; ARE = RMSE of the angle of ``est_i^-1 ref_i`` (deg);
       RPE over pairs ``(i, i + delta)`` with ``E = (ref_i^-1 ref_j)^-1 (est_i^-1 est_j)``:
       rpe_rot = RMSE of the angle of ``E`` (deg), rpe_trans = RMSE of ``|E_t|``.

    Both alignment steps run one after the other, as in the evo releases FastVGGT was run with;
    recent evo releases refuse ``align`` together with ``align_origin``.

    Args:
        est_poses, ref_poses: ``[S, 3|4, 4]`` in whatever convention the caller chooses.

    Returns:
        ``{"ate", "are", "rpe_rot", "rpe_trans"}``.
    """
    est = _poses(est_poses, "est_poses")
    ref = _poses(ref_poses, "ref_poses")
    _check_same_length(est, ref)
    est[:, :3, :3] = _project_rotations(est[:, :3, :3])
    ref[:, :3, :3] = _project_rotations(ref[:, :3, :3])
    est = _evo_align(est, ref, align, correct_scale, align_origin)

    ate_err = np.linalg.norm(est[:, :3, 3] - ref[:, :3, 3], axis=-1)
    are_err = rotation_angle_deg(np.swapaxes(est[:, :3, :3], -1, -2) @ ref[:, :3, :3])
    if est.shape[0] <= delta:
        raise ValueError(f"need more than delta={delta} poses, got {est.shape[0]}")
    Q_rel = invert_se3(ref[:-delta]) @ ref[delta:]
    P_rel = invert_se3(est[:-delta]) @ est[delta:]
    E = invert_se3(Q_rel) @ P_rel
    return {
        "ate": _reduce(ate_err, "rmse"),
        "are": _reduce(are_err, "rmse"),
        "rpe_rot": _reduce(rotation_angle_deg(E[:, :3, :3]), "rmse"),
        "rpe_trans": _reduce(np.linalg.norm(E[:, :3, 3], axis=-1), "rmse"),
    }


def fastvggt_trajectory_errors(pred_w2c: ArrayLike, gt_c2w: ArrayLike) -> dict[str, float]:
    """ScanNet-50 camera metrics exactly as FastVGGT's ``eval_scannet.py`` computes them.

    Reproduces ``vggt/utils/eval_utils.py`` (``load_poses`` + ``evaluate_scene_and_save`` +
    ``eval_trajectory(align=True)``):

    1. ground-truth camera-to-world poses are re-based on the first frame
       (``c2w_i <- c2w_0^-1 c2w_i``) and inverted to world-to-camera;
    2. the predicted world-to-camera extrinsics (VGGT's ``extrinsic``, first frame = identity) are
       used as they are;
    3. both w2c trajectories go to evo with ``align=True, correct_scale=True, align_origin=True``
       (:func:`evo_trajectory_errors`), RPE with ``delta=1`` frame.

    Because w2c matrices are fed to evo, Umeyama runs on w2c translations ``t_i = -R_i C_i``, not on
    camera centres, and the result is not invariant to a similarity of the predicted world. Use
    :func:`trajectory_errors` for the camera-centre definition.

    Args:
        pred_w2c: predicted world-to-camera extrinsics ``[S, 3|4, 4]``.
        gt_c2w: ground-truth camera-to-world poses ``[S, 3|4, 4]`` (ScanNet ``pose/*.txt``).

    Returns:
        ``{"ate", "are", "rpe_rot", "rpe_trans"}`` (ATE / RPE-trans in GT units, angles in degrees).
    """
    gt = _poses(gt_c2w, "gt_c2w")
    gt = np.linalg.inv(gt[0])[None] @ gt
    gt_w2c = np.linalg.inv(gt)
    return evo_trajectory_errors(_poses(pred_w2c, "pred_w2c"), gt_w2c)


# ---------------------------------------------------------------------------------------------
# Pairwise relative pose (VGGT / PoseDiffusion protocol)
# ---------------------------------------------------------------------------------------------


def relative_pose_errors(
    pred_extrinsics: ArrayLike, gt_extrinsics: ArrayLike, *, sign_ambiguous: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Relative rotation and translation-direction errors over all frame pairs ``i < j``.

    As VGGT's ``se3_to_relative_pose_error``: with world-to-camera extrinsics ``T``, the relative
    pose of a pair is ``T_i T_j^-1`` (camera j -> camera i). The rotation error is the angle between
    predicted and ground-truth relative rotations; the translation error is the angle between the
    relative translation directions, folded to ``[0, 90]`` (``arccos |cos|``) when
    ``sign_ambiguous`` (VGGT's default), in ``[0, 180]`` otherwise. Pairs are ordered like
    ``torch.combinations`` / ``np.triu_indices(S, 1)``.

    VGGT computes the angles through quaternions with an ``eps = 1e-15`` floor, which turns an exact
    match into ~4e-6 deg; here exact matches give 0.

    Args:
        pred_extrinsics, gt_extrinsics: world-to-camera (OpenCV) extrinsics ``[S, 3|4, 4]``.

    Returns:
        ``(rot_err_deg [M], trans_dir_err_deg [M])`` with ``M = S (S - 1) / 2``.
    """
    P = _poses(pred_extrinsics, "pred_extrinsics")
    G = _poses(gt_extrinsics, "gt_extrinsics")
    _check_same_length(P, G)
    i, j = np.triu_indices(P.shape[0], k=1)
    rel_p = P[i] @ invert_se3(P[j])
    rel_g = G[i] @ invert_se3(G[j])
    rot_err = rotation_angle_deg(np.swapaxes(rel_g[:, :3, :3], -1, -2) @ rel_p[:, :3, :3])
    tp = rel_p[:, :3, 3]
    tg = rel_g[:, :3, 3]
    eps = 1e-15
    cos = np.sum(tp * tg, axis=-1) / (
        (np.linalg.norm(tp, axis=-1) + eps) * (np.linalg.norm(tg, axis=-1) + eps)
    )
    if sign_ambiguous:
        cos = np.abs(cos)
    trans_err = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return rot_err, trans_err


def rra(rot_err_deg: ArrayLike, tau: float) -> float:
    """Relative rotation accuracy: fraction of pairs with error ``< tau`` degrees."""
    e = to_numpy(rot_err_deg).ravel()
    return float(np.mean(e < tau)) if e.size else float("nan")


def rta(trans_err_deg: ArrayLike, tau: float) -> float:
    """Relative translation (direction) accuracy: fraction of pairs with error ``< tau`` degrees."""
    return rra(trans_err_deg, tau)


def auc(rot_err_deg: ArrayLike, trans_err_deg: ArrayLike, max_threshold: int = 30) -> float:
    """Pose AUC@``max_threshold`` as VGGT / PoseDiffusion ``calculate_auc_np`` compute it.

    Per pair the larger of the two errors is taken, histogrammed into 1-degree bins
    ``[0, 1), ..., [max_threshold - 1, max_threshold]`` (the last bin closed), normalised by the
    number of pairs; the AUC is the mean of the cumulative histogram, in ``[0, 1]``.
    """
    r = to_numpy(rot_err_deg).ravel()
    t = to_numpy(trans_err_deg).ravel()
    if r.shape != t.shape:
        raise ValueError(f"error arrays differ in size: {r.size} vs {t.size}")
    if r.size == 0:
        return float("nan")
    max_err = np.maximum(r, t)
    hist, _ = np.histogram(max_err, bins=np.arange(int(max_threshold) + 1))
    return float(np.mean(np.cumsum(hist / float(max_err.size))))


# ---------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------


def _depth_scale(p: np.ndarray, g: np.ndarray, align: str) -> float:
    if align == "none":
        return 1.0
    if align == "median":
        return float(np.median(g) / np.median(p))
    if align == "lstsq":
        return float(np.dot(p, g) / np.dot(p, p))
    raise ValueError(f"align must be 'median', 'lstsq' or 'none', got {align!r}")


def _depth_errors(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p > 0, np.maximum(p / g, g / p), np.inf)
    return {
        "abs_rel": float(np.mean(np.abs(p - g) / g)),
        "delta_1_25": float(np.mean(ratio < 1.25)),
        "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
    }


def depth_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    valid: Optional[ArrayLike] = None,
    align: Literal["median", "lstsq", "none"] = "median",
    per_frame: bool = True,
) -> dict[str, float]:
    """AbsRel, delta<1.25 and RMSE of depth maps after optional scale alignment.

    Pixels are used where ``gt > 0``, both maps are finite and ``valid`` (if given) is true.
    The prediction is multiplied by a scale ``s``: ``median(gt) / median(pred)`` (``"median"``),
    the least-squares ``sum(p g) / sum(p^2)`` (``"lstsq"``) or 1 (``"none"``).

    * ``per_frame=True``: one scale per frame, metrics per frame, then the mean over frames that
      have valid pixels.
    * ``per_frame=False``: one scale for the whole sequence, metrics over all valid pixels pooled.

    delta<1.25 counts pixels with ``max(p/g, g/p) < 1.25``; a non-positive prediction fails it.

    Args:
        pred, gt: depth ``[S, H, W]`` or ``[H, W]`` (same unit; RMSE is in that unit).
        valid: optional boolean mask of the same shape.

    Returns:
        ``{"abs_rel", "delta_1_25", "rmse"}`` (NaN when no pixel is valid).
    """
    p_all = to_numpy(pred)
    g_all = to_numpy(gt)
    if p_all.shape != g_all.shape:
        raise ValueError(f"pred {p_all.shape} and gt {g_all.shape} differ in shape")
    if p_all.ndim == 2:
        p_all, g_all = p_all[None], g_all[None]
    mask = np.isfinite(g_all) & np.isfinite(p_all)
    mask &= np.where(mask, g_all, 0.0) > 0
    if valid is not None:
        mask &= to_numpy(valid).reshape(mask.shape) != 0

    nan = {"abs_rel": float("nan"), "delta_1_25": float("nan"), "rmse": float("nan")}
    if per_frame:
        frames = []
        for p_f, g_f, m_f in zip(p_all, g_all, mask):
            if not m_f.any():
                continue
            p, g = p_f[m_f], g_f[m_f]
            frames.append(_depth_errors(_depth_scale(p, g, align) * p, g))
        if not frames:
            return nan
        return {k: float(np.mean([f[k] for f in frames])) for k in nan}
    if not mask.any():
        return nan
    p, g = p_all[mask], g_all[mask]
    return _depth_errors(_depth_scale(p, g, align) * p, g)


# ---------------------------------------------------------------------------------------------
# Point clouds
# ---------------------------------------------------------------------------------------------


def nearest_neighbor_distances(
    query: ArrayLike, reference: ArrayLike, workers: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """For each query point ``[N, 3]`` the distance ``[N]`` and index ``[N]`` of its nearest
    reference point ``[M, 3]`` (``scipy.spatial.cKDTree``)."""
    Q = _points(query, "query")
    Rf = _points(reference, "reference")
    if Rf.shape[0] == 0:
        raise ValueError("reference point cloud is empty")
    dist, idx = cKDTree(Rf).query(Q, k=1, workers=workers)
    return dist, idx


def subsample_points(points: ArrayLike, max_points: int, seed: int = 33) -> np.ndarray:
    """Random subset of at most ``max_points`` rows, drawn without replacement.

    Uses ``np.random.RandomState(seed).choice``, which draws the same subset as FastVGGT's
    ``np.random.seed(33); np.random.choice(...)`` without touching numpy's global state.
    """
    P = _points(points, "points")
    if P.shape[0] <= max_points:
        return P
    idx = np.random.RandomState(seed).choice(P.shape[0], max_points, replace=False)
    return P[idx]


def voxel_downsample(points: ArrayLike, voxel_size: float) -> np.ndarray:
    """Open3D ``voxel_down_sample``: the mean point of each occupied voxel of edge ``voxel_size``.

    Open3D places the grid origin half a voxel below the cloud's minimum corner.
    """
    o3d = require("open3d", "point-cloud registration")

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_points(points, "points")))
    return np.asarray(pcd.voxel_down_sample(float(voxel_size)).points, dtype=np.float64)


def _prepare_cloud(
    points: ArrayLike, name: str, max_points: Optional[int], seed: int, voxel_size: Optional[float]
) -> np.ndarray:
    P = _points(points, name)
    if max_points is not None:
        P = subsample_points(P, max_points, seed)
    if voxel_size is not None and voxel_size > 0:
        P = voxel_downsample(P, voxel_size)
    if P.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return P


def accuracy_completeness(
    pred: ArrayLike,
    gt: ArrayLike,
    *,
    max_points: Optional[int] = None,
    seed: int = 33,
    voxel_size: Optional[float] = None,
    max_dist: Optional[float] = None,
) -> dict[str, float]:
    """Accuracy (pred -> nearest gt) and completeness (gt -> nearest pred) distances.

    Optional preprocessing, in this order: random subsampling of each cloud to ``max_points``
    (seeded), Open3D voxel downsampling, clipping distances at ``max_dist``.

    Args:
        pred: ``[N, 3]`` predicted points; gt: ``[M, 3]`` ground-truth points (same unit).

    Returns:
        ``{"acc", "acc_med", "comp", "comp_med"}``: mean and median distances in that unit.
    """
    P = _prepare_cloud(pred, "pred", max_points, seed, voxel_size)
    G = _prepare_cloud(gt, "gt", max_points, seed, voxel_size)
    d_acc, _ = nearest_neighbor_distances(P, G)
    d_comp, _ = nearest_neighbor_distances(G, P)
    if max_dist is not None:
        d_acc = np.clip(d_acc, 0.0, max_dist)
        d_comp = np.clip(d_comp, 0.0, max_dist)
    return {
        "acc": float(np.mean(d_acc)),
        "acc_med": float(np.median(d_acc)),
        "comp": float(np.mean(d_comp)),
        "comp_med": float(np.median(d_comp)),
    }


def chamfer(
    pred: ArrayLike,
    gt: ArrayLike,
    *,
    max_points: Optional[int] = None,
    seed: int = 33,
    voxel_size: Optional[float] = None,
    max_dist: Optional[float] = None,
    combine: Literal["sum", "mean"] = "sum",
) -> float:
    """Chamfer distance ``mean(pred -> gt) + mean(gt -> pred)`` (``combine="mean"`` halves it).

    Preprocessing as in :func:`accuracy_completeness` (subsample, voxelise, clip). The default
    ``"sum"`` is the FastVGGT / LiteVGGT definition; see :func:`fastvggt_chamfer` for its settings.
    """
    r = accuracy_completeness(
        pred, gt, max_points=max_points, seed=seed, voxel_size=voxel_size, max_dist=max_dist
    )
    total = r["acc"] + r["comp"]
    if combine == "sum":
        return total
    if combine == "mean":
        return total / 2.0
    raise ValueError(f"combine must be 'sum' or 'mean', got {combine!r}")


def fastvggt_chamfer(pred: ArrayLike, gt: ArrayLike, max_dist: float = 0.5) -> float:
    """ScanNet-50 Chamfer distance with FastVGGT's settings.

    Each cloud randomly subsampled to at most 100,000 points (seed 33), 5 cm voxel downsampling,
    distances clipped at ``max_dist`` (0.5 m in the published runs), CD = sum of the two means.
    The prediction is expected to be already scaled by :func:`align_by_bounding_box`.
    """
    return chamfer(pred, gt, max_points=100_000, seed=33, voxel_size=0.05, max_dist=max_dist)


def align_by_bounding_box(source: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, float]:
    """FastVGGT's ``align_point_clouds_scale``: match bounding-box diagonal and centre.

    The source ``[N, 3]`` is scaled about its bounding-box centre by
    ``diag(target) / diag(source)`` and moved onto the target's bounding-box centre. No rotation.

    Returns:
        ``(aligned_source [N, 3], scale)``.
    """
    S = _points(source, "source")
    T = _points(target, "target")
    s_min, s_max = S.min(0), S.max(0)
    t_min, t_max = T.min(0), T.max(0)
    s_diag = float(np.linalg.norm(s_max - s_min))
    t_diag = float(np.linalg.norm(t_max - t_min))
    scale = 1.0 if s_diag < 1e-8 else t_diag / s_diag
    aligned = (S - (s_min + s_max) / 2) * scale + (t_min + t_max) / 2
    return aligned, scale


def estimate_normals(points: ArrayLike, knn: int = 30) -> np.ndarray:
    """Unit normals ``[N, 3]`` from Open3D ``estimate_normals`` with a ``knn``-neighbour search.

    ``knn=30`` equals Open3D's default search used by the CUT3R protocol. Signs are arbitrary.
    """
    o3d = require("open3d", "point-cloud registration")

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_points(points, "points")))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=int(knn)))
    return np.asarray(pcd.normals, dtype=np.float64)


def _unit(n: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    return n / np.where(norm > 0, norm, 1.0)


def normal_consistency(
    pred_pts: ArrayLike,
    pred_normals: Optional[ArrayLike],
    gt_pts: ArrayLike,
    gt_normals: Optional[ArrayLike],
    *,
    knn: int = 30,
) -> dict[str, float]:
    """Normal consistency as in the CUT3R / Spann3R 7-Scenes protocol.

    NC1 (accuracy direction): for every predicted point, ``|n_gt(nearest gt) . n_pred|``.
    NC2 (completeness direction): for every gt point, ``|n_gt . n_pred(nearest pred)|``.
    The reported NC is ``(NC1 + NC2) / 2``, for the means and for the medians.
    Missing normals are estimated with :func:`estimate_normals`; given normals are normalised.

    Args:
        pred_pts ``[N, 3]``, pred_normals ``[N, 3]`` or None, gt_pts ``[M, 3]``, gt_normals
        ``[M, 3]`` or None.

    Returns:
        ``{"nc", "nc_med", "nc1", "nc1_med", "nc2", "nc2_med"}`` in ``[0, 1]``.
    """
    P = _points(pred_pts, "pred_pts")
    G = _points(gt_pts, "gt_pts")
    if pred_normals is None:
        nP = estimate_normals(P, knn)
    else:
        nP = _unit(_points(pred_normals, "pred_normals"))
    if gt_normals is None:
        nG = estimate_normals(G, knn)
    else:
        nG = _unit(_points(gt_normals, "gt_normals"))
    if nP.shape != P.shape or nG.shape != G.shape:
        raise ValueError("normals must have the same shape as their points")
    _, idx_pg = nearest_neighbor_distances(P, G)
    _, idx_gp = nearest_neighbor_distances(G, P)
    dot1 = np.abs(np.sum(nG[idx_pg] * nP, axis=-1))
    dot2 = np.abs(np.sum(nG * nP[idx_gp], axis=-1))
    nc1, nc1_med = float(np.mean(dot1)), float(np.median(dot1))
    nc2, nc2_med = float(np.mean(dot2)), float(np.median(dot2))
    return {
        "nc": (nc1 + nc2) / 2,
        "nc_med": (nc1_med + nc2_med) / 2,
        "nc1": nc1,
        "nc1_med": nc1_med,
        "nc2": nc2,
        "nc2_med": nc2_med,
    }


def icp_refine(
    src_pts: ArrayLike,
    dst_pts: ArrayLike,
    threshold: float = 0.1,
    init: Optional[ArrayLike] = None,
    with_scaling: bool = False,
    max_iterations: int = 30,
) -> tuple[np.ndarray, float]:
    """Open3D point-to-point ICP registering ``src_pts`` ``[N, 3]`` onto ``dst_pts`` ``[M, 3]``.

    Args:
        threshold: maximum correspondence distance (0.1 in the 7-Scenes / NRGBD protocol).
        init: initial 4x4 transform (identity when None, as in the protocol).
        with_scaling: also estimate a scale (Sim(3) ICP).
        max_iterations: Open3D's default is 30.

    Returns:
        ``(T [4, 4], fitness)``: ``apply_transform(src_pts, T)`` lies on ``dst_pts``; fitness is the
        fraction of source points with a correspondence within ``threshold``.
    """
    o3d = require("open3d", "point-cloud registration")

    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_points(src_pts, "src_pts")))
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_points(dst_pts, "dst_pts")))
    T0 = np.eye(4) if init is None else to_4x4(init)
    reg = o3d.pipelines.registration
    result = reg.registration_icp(
        src,
        dst,
        float(threshold),
        T0,
        reg.TransformationEstimationPointToPoint(with_scaling=with_scaling),
        reg.ICPConvergenceCriteria(max_iteration=int(max_iterations)),
    )
    return np.asarray(result.transformation, dtype=np.float64).copy(), float(result.fitness)


def cut3r_reconstruction_metrics(
    pred_pts: ArrayLike, gt_pts: ArrayLike, icp_threshold: float = 0.1
) -> dict[str, float]:
    """7-Scenes / NRGBD point-cloud metrics as the CUT3R-derived evaluation computes them.

    The prediction ``[N, 3]`` (already cropped, masked and scale/shift-aligned by the caller) is
    registered to the ground truth ``[M, 3]`` by point-to-point ICP (identity init,
    ``icp_threshold``), normals of both clouds are estimated with Open3D defaults (30 neighbours),
    then Acc / Comp (mean and median) and NC1 / NC2 / NC are computed.

    Returns:
        ``{"acc", "acc_med", "comp", "comp_med", "nc", "nc_med", "nc1", "nc1_med", "nc2",
        "nc2_med", "icp_fitness"}``.
    """
    P = _points(pred_pts, "pred_pts")
    G = _points(gt_pts, "gt_pts")
    T, fitness = icp_refine(P, G, threshold=icp_threshold)
    P = apply_transform(P, T)
    out = accuracy_completeness(P, G)
    out.update(normal_consistency(P, None, G, None))
    out["icp_fitness"] = fitness
    return out
