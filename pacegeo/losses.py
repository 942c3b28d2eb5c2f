"""Training objectives of VGGT-style models: camera, depth and point-map losses.

Ground truth follows VGGT's training normalisation (frame 0 = identity, scene scale divided by the
mean distance of valid points), which :mod:`pacegeo.data.clips` produces. All losses return a scalar
and a dict of detached float components for logging. They compute in float32, also on predictions
made under autocast (bf16 heads on the CPU).
"""

import torch
import torch.nn.functional as F

from pacegeo.geometry import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri, quaternion_to_matrix


def _float32(outputs: dict) -> dict:
    """The floating-point tensors of an output dict (and of its lists) in float32 (differentiable)."""

    def convert(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.float()
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return {key: convert(value) for key, value in outputs.items()}


def geodesic_angle(R_a: torch.Tensor, R_b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Angle in radians of ``R_a^T R_b`` for rotation matrices ``[..., 3, 3]``."""
    trace = (R_a.transpose(-1, -2) @ R_b).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.acos(((trace - 1) / 2).clamp(-1 + eps, 1 - eps))


def camera_loss(
    pose_enc_list: list[torch.Tensor],
    gt_extrinsics: torch.Tensor,
    gt_intrinsics: torch.Tensor,
    image_hw: tuple[int, int],
    weight_trans: float = 1.0,
    weight_rot: float = 2.0,
    weight_fov: float = 0.5,
    weight_quat: float = 1.0,
    gamma: float = 0.6,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Camera loss over the refinement iterations (later iterations weigh more: ``gamma^(n-1-i)``).

    Translation and field of view use a Huber (smooth L1) loss on the pose encoding; rotation uses
    the geodesic angle between predicted and true rotations, so that 10-20 degree errors carry a
    weight comparable to the translation term (an L1 on quaternion components would not).

    The geodesic angle does not depend on the quaternion's norm, so on its own it leaves the norm
    free to drift; under Adam it grows step after step (every update is orthogonal to ``q``), and
    the rotation's effective learning rate falls as ``1/|q|^2`` until the head is stuck near its
    mean pose. A Huber term on the quaternion components (sign-aligned with the prediction, as in
    VGGT's own L1 pose loss) pins the norm near 1; ``weight_quat`` sets its weight.

    Args:
        pose_enc_list: per-iteration predictions ``[B, S, 9]``.
        gt_extrinsics: ``[B, S, 3, 4]`` OpenCV camera-from-world; gt_intrinsics ``[B, S, 3, 3]``.
    """
    gt = extri_intri_to_pose_encoding(gt_extrinsics, gt_intrinsics, image_hw).detach()
    R_gt = gt_extrinsics[..., :3, :3]
    n = len(pose_enc_list)
    total = gt.new_zeros(())
    parts = {"trans": 0.0, "rot_deg": 0.0, "fov": 0.0, "quat_norm": 0.0, "rot_identity_deg": 0.0}
    for i, pred in enumerate(pose_enc_list):
        w = gamma ** (n - 1 - i)
        l_t = F.smooth_l1_loss(pred[..., :3], gt[..., :3], beta=0.1)
        q_pred = pred[..., 3:7]
        angle = geodesic_angle(quaternion_to_matrix(q_pred), R_gt)
        l_r = angle.mean()
        q_gt = gt[..., 3:7]
        q_gt = torch.where((q_gt * q_pred.detach()).sum(-1, keepdim=True) < 0, -q_gt, q_gt)
        l_q = F.smooth_l1_loss(q_pred, q_gt, beta=0.1)
        l_f = F.smooth_l1_loss(pred[..., 7:], gt[..., 7:], beta=0.1)
        total = total + w * (weight_trans * l_t + weight_rot * l_r + weight_quat * l_q + weight_fov * l_f)
        if i == n - 1:
            parts = {
                "trans": l_t.item(),
                "rot_deg": torch.rad2deg(l_r).item(),
                "fov": l_f.item(),
                "quat_norm": q_pred.detach().norm(dim=-1).mean().item(),
                "rot_identity_deg": torch.rad2deg(geodesic_angle(torch.eye(3, device=R_gt.device).expand_as(R_gt), R_gt).mean()).item(),
            }
    return total, parts


def _gradient_loss(err: torch.Tensor, mask: torch.Tensor, conf: torch.Tensor | None) -> torch.Tensor:
    """Mean absolute spatial gradient of an error map ``[N, H, W, C]`` over valid neighbours."""
    dx = (err[:, :, 1:] - err[:, :, :-1]).abs().sum(-1)
    dy = (err[:, 1:] - err[:, :-1]).abs().sum(-1)
    mx = mask[:, :, 1:] & mask[:, :, :-1]
    my = mask[:, 1:] & mask[:, :-1]
    if conf is not None:
        dx = dx * conf[:, :, 1:]
        dy = dy * conf[:, 1:]
    denom = (mx.sum() + my.sum()).clamp(min=1)
    return ((dx * mx).sum() + (dy * my).sum()) / denom


def confidence_regression_loss(
    pred: torch.Tensor,
    conf: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    alpha: float = 0.2,
    weight_grad: float = 1.0,
    scales: int = 3,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Confidence-aware regression (VGGT): ``conf * ||pred - gt|| - alpha * log(conf)`` on valid
    pixels, plus a multi-scale gradient term on the confidence-weighted error.

    Args:
        pred, gt: ``[B, S, H, W, C]``; conf: ``[B, S, H, W]`` (> 0); valid: ``[B, S, H, W]`` bool.
    """
    err = pred - gt
    dist = err.norm(dim=-1)
    mask = valid
    n_valid = mask.sum().clamp(min=1)
    reg = (dist * mask).sum() / n_valid
    conf_term = ((conf * dist - alpha * torch.log(conf)) * mask).sum() / n_valid
    flat = lambda t: t.flatten(0, 1)  # noqa: E731  [B*S, ...]
    e, m, c = flat(err), flat(mask), flat(conf)
    grad = err.new_zeros(())
    for s in range(scales):
        step = 2**s
        grad = grad + _gradient_loss(e[:, ::step, ::step], m[:, ::step, ::step], c[:, ::step, ::step])
    total = conf_term + weight_grad * grad / scales
    return total, {"reg": reg.item(), "grad": (grad / scales).item()}


def vggt_loss(
    outputs: dict,
    batch: dict[str, torch.Tensor],
    weight_camera: float = 1.0,
    weight_depth: float = 1.0,
    weight_points: float = 1.0,
    camera_kwargs: dict | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of camera, depth and point losses for the heads present in ``outputs``.

    ``batch`` holds ``images [B,S,3,H,W]``, ``depths [B,S,H,W]``, ``valid [B,S,H,W]``,
    ``extrinsics [B,S,3,4]``, ``intrinsics [B,S,3,3]``, ``world_points [B,S,H,W,3]``.
    """
    outputs = _float32(outputs)
    hw = tuple(batch["images"].shape[-2:])
    total = batch["images"].new_zeros(())
    logs: dict[str, float] = {}
    if "pose_enc_list" in outputs and weight_camera:
        loss, parts = camera_loss(outputs["pose_enc_list"], batch["extrinsics"], batch["intrinsics"], hw, **(camera_kwargs or {}))
        total = total + weight_camera * loss
        logs.update({f"cam_{k}": v for k, v in parts.items()})
        logs["loss_camera"] = loss.item()
    if "depth" in outputs and weight_depth:
        loss, parts = confidence_regression_loss(
            outputs["depth"], outputs["depth_conf"], batch["depths"].unsqueeze(-1), batch["valid"]
        )
        total = total + weight_depth * loss
        logs.update({f"depth_{k}": v for k, v in parts.items()})
        logs["loss_depth"] = loss.item()
    if "world_points" in outputs and weight_points:
        loss, parts = confidence_regression_loss(
            outputs["world_points"], outputs["world_points_conf"], batch["world_points"], batch["valid"]
        )
        total = total + weight_points * loss
        logs.update({f"points_{k}": v for k, v in parts.items()})
        logs["loss_points"] = loss.item()
    logs["loss"] = total.item()
    return total, logs


# Teacher terms: a pruned model against the unpruned backbone's own outputs (pruner stage 2).


def teacher_loss(student: dict, teacher: dict, weight_camera: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Distance of the pruned model's outputs to the unpruned backbone's (scale-free for depth).

    Returns the loss and its parts (``camera``, ``depth``, ``points``, unweighted). The camera part
    is a smooth L1 on the pose encodings; it is about ten times smaller than the other two at equal
    relative error, hence ``weight_camera``.
    """
    student, teacher = _float32(student), _float32(teacher)
    parts = {"camera": F.smooth_l1_loss(student["pose_enc"], teacher["pose_enc"], beta=0.05)}
    log_ratio = torch.log(student["depth"].clamp(min=1e-6)) - torch.log(teacher["depth"].clamp(min=1e-6))
    parts["depth"] = log_ratio.abs().mean()
    if "world_points" in student:
        parts["points"] = (student["world_points"] - teacher["world_points"]).norm(dim=-1).mean()
    loss = weight_camera * parts["camera"] + sum(v for k, v in parts.items() if k != "camera")
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def relative_pose_deviation(student_enc: torch.Tensor, teacher_enc: torch.Tensor, eps: float = 1e-8,
                            baseline_weighted: bool = False) -> torch.Tensor:
    """How far the student's relative poses are from the teacher's, over all frame pairs ``i < j``.

    Pose encodings ``[B, S, 9]``. The sum of the mean chordal distance between relative rotations
    (``|R_s - R_t|_F``, about ``sqrt(2)`` times the angle in radians when small) and the mean
    distance between unit relative-translation directions (sign-folded, as the RTA metric): the
    quantities RRA and RTA threshold, unlike the pose-encoding distance. 0 for one frame.

    The direction of a pair that barely moved is ill-defined, and the teacher's is mostly noise
    there. ``baseline_weighted`` weighs each pair's direction distance by the teacher's baseline
    (relative-translation length) over its mean in the clip, so well-separated pairs dominate.
    """
    s = student_enc.shape[1]
    if s < 2:
        return student_enc.new_zeros(())
    i, j = torch.triu_indices(s, s, offset=1, device=student_enc.device)

    def relative(enc):
        ext, _ = pose_encoding_to_extri_intri(enc.float(), (1, 1), build_intrinsics=False)
        rot, trans = ext[..., :3], ext[..., 3]
        rel_rot = rot[:, i] @ rot[:, j].transpose(-1, -2)  # camera j -> camera i
        rel_trans = trans[:, i] - (rel_rot @ trans[:, j, :, None])[..., 0]
        length = rel_trans.norm(dim=-1, keepdim=True)
        return rel_rot, rel_trans / (length + 1e-6), length[..., 0]

    rot_s, dir_s, _ = relative(student_enc)
    rot_t, dir_t, baseline = relative(teacher_enc.detach())
    rot_dist = ((rot_s - rot_t).square().sum(dim=(-1, -2)) + eps).sqrt()
    dir_dist = torch.minimum((dir_s - dir_t).norm(dim=-1), (dir_s + dir_t).norm(dim=-1))
    if baseline_weighted:
        dir_dist = dir_dist * baseline / (baseline.mean(dim=-1, keepdim=True) + 1e-6)
    return rot_dist.mean() + dir_dist.mean()
