"""Held-out SynthRooms clips and the metrics of one prediction on them (shared by the SynthRooms
benchmarks: ``eval/synthrooms.py`` and ``eval/peers.py``).

A clip is ``frames`` frames of a scene's default trajectory (first frame plus a uniform stride),
rendered with exact ground truth and normalised (:func:`pacegeo.data.clips.normalize_clip`).
:func:`clip_metrics` scores a model output against it: depth (AbsRel, delta<1.25 after per-frame
median scaling), relative poses over all frame pairs (rotation and translation-direction errors,
RRA/RTA@15, AUC@30), point Chamfer after a Sim(3) fit, and, given the unpruned run of the same
clip (:func:`run_reference`), the fidelity to it (:func:`pacegeo.fidelity.fidelity`).
"""

from __future__ import annotations

import numpy as np
import torch

from pacegeo.data.clips import normalize_clip
from pacegeo.data.stream import intrinsics_for_fov
from pacegeo.data.synth import make_scene, make_trajectory, render_frame
from pacegeo.fidelity import fidelity
from pacegeo.geometry import camera_centers, depth_to_world_points, pose_encoding_to_extri_intri
from pacegeo.geometry.transforms import umeyama
from pacegeo.metrics import auc, chamfer, depth_metrics, relative_pose_errors, rra, rta

__all__ = ["clip_metrics", "combine_cameras", "eval_clip", "predicted_cameras", "run_reference"]


def eval_clip(seed: int, frames: int, height: int, width: int, traj_frames: int = 64) -> dict[str, torch.Tensor]:
    """Ground-truth clip of ``frames`` frames of scene ``seed``'s default trajectory."""
    scene = make_scene(seed)
    traj = make_trajectory(scene, max(traj_frames, frames))
    idx = np.unique(np.linspace(0, len(traj) - 1, frames).round().astype(int))
    K = intrinsics_for_fov(scene.fov_deg, height, width)
    rgbs, depths = zip(*(render_frame(scene, traj[i], K, width, height, frame_index=int(i)) for i in idx))
    return normalize_clip(np.stack(rgbs), np.stack(depths), np.repeat(K[None], len(idx), 0), traj[idx])


def predicted_cameras(out: dict, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera extrinsics ``[S, 3, 4]`` and intrinsics ``[S, 3, 3]`` of a model output."""
    return pose_encoding_to_extri_intri(out["pose_enc"][0].float().cpu(), hw)


def combine_cameras(rotations_of: torch.Tensor, centres_of: torch.Tensor) -> torch.Tensor:
    """World-to-camera extrinsics ``[S, 3, 4]`` with the rotations of one set of cameras and the
    camera centres of another (``t = -R c``); both inputs world-to-camera ``[S, 3|4, 4]``."""
    rot = rotations_of[:, :3, :3].double()
    centres = camera_centers(centres_of[:, :3].double())
    return torch.cat((rot, -torch.einsum("sij,sj->si", rot, centres)[..., None]), dim=-1).float()


def run_reference(out: dict, hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """What the fidelity metrics compare against: cameras and depth of a (unpruned) run."""
    ext, intr = predicted_cameras(out, hw)
    return {"extrinsics": ext, "intrinsics": intr, "depth": out["depth"][0, ..., 0].float().cpu()}


def clip_metrics(out: dict, clip: dict[str, torch.Tensor], max_points: int = 20000,
                 reference: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Depth, camera and point metrics of one prediction against its ground-truth clip; with
    ``reference`` (:func:`run_reference` of the unpruned model on the same clip) also its fidelity
    to that run (:func:`pacegeo.fidelity.fidelity`: ``rot_dev_med``, ``trans_dev_med``,
    ``depth_dev_med``, ``points_dev``)."""
    hw = tuple(clip["images"].shape[-2:])
    ext, intr = predicted_cameras(out, hw)
    gt_ext = clip["extrinsics"]
    valid = clip["valid"].numpy()
    gt_depth = clip["depths"].numpy() * valid
    pred_depth = out["depth"][0, ..., 0].float().cpu()
    d = depth_metrics(pred_depth.numpy(), gt_depth, align="median")
    d0 = depth_metrics(np.ones_like(gt_depth), gt_depth, align="median")
    rot, trans = relative_pose_errors(ext, gt_ext)
    rot_id, _ = relative_pose_errors(torch.eye(4)[:3].expand_as(gt_ext), gt_ext)
    # Where translation-direction errors come from: the predicted centres with true rotations, and
    # the predicted rotations with true centres.
    _, trans_gt_rot = relative_pose_errors(combine_cameras(gt_ext, ext), gt_ext)
    _, trans_gt_centres = relative_pose_errors(combine_cameras(ext, gt_ext), gt_ext)
    pred_pts = depth_to_world_points(pred_depth, ext, intr).numpy()[valid]
    gt_pts = clip["world_points"].numpy()[valid]
    rng = np.random.default_rng(0)
    sel = rng.choice(len(gt_pts), size=min(max_points, len(gt_pts)), replace=False)
    s, R, t = umeyama(pred_pts[sel], gt_pts[sel], with_scale=True)
    aligned = s * pred_pts[sel] @ R.T + t
    deviation = {}
    if reference is not None:
        deviation = fidelity(pred_depth, ext, intr, reference["depth"], reference["extrinsics"], reference["intrinsics"],
                             valid=valid)
    return deviation | {
        "abs_rel": d["abs_rel"],
        "delta_1_25": d["delta_1_25"],
        "abs_rel_constant": d0["abs_rel"],
        "delta_1_25_constant": d0["delta_1_25"],
        "rot_err_med": float(np.median(rot)),
        "rot_err_identity_med": float(np.median(rot_id)),
        "trans_err_med": float(np.median(trans)),
        "rra15": rra(rot, 15),
        "rta15": rta(trans, 15),
        "rta15_true_rotations": rta(trans_gt_rot, 15),
        "rta15_true_centres": rta(trans_gt_centres, 15),
        "auc30": auc(rot, trans, 30),
        "rra15_identity": rra(rot_id, 15),
        "chamfer": chamfer(aligned, gt_pts[sel], combine="mean"),
    }
