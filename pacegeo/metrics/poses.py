"""Camera-pose metrics: trajectory errors (ATE, ARE, RPE), the evo-based ScanNet-50 protocol of
FastVGGT / LiteVGGT, and pairwise relative-pose errors with RRA, RTA and AUC.

All functions accept numpy arrays or torch tensors (converted with ``detach().cpu()``) and compute
in float64. Results are Python floats or float64 numpy arrays.

Conventions
-----------
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

from typing import Literal, Union

import numpy as np
from scipy.spatial.transform import Rotation

from pacegeo.geometry.transforms import (
    ArrayLike,
    apply_sim3_to_c2w,
    invert_se3,
    rotation_angle_deg,
    sim3_matrix,
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
