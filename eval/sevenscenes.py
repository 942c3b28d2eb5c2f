"""7-Scenes multi-view reconstruction evaluation, as the CUT3R-derived code of FastVGGT/LiteVGGT runs it.

Usage::

    python eval/sevenscenes.py --root DIR [--stride 3] [--max-frames N] [--keep 1.0 0.5 0.3] \\
        [--pruner training-free] [--model pacegeo-tiny] [--size 518] --out OUTDIR

``DIR`` is the 7-Scenes root (``<scene>/seq-XX/frame-XXXXXX.*`` with ``TestSplit.txt`` per scene),
one scene folder, or one sequence folder holding the frames directly.

Protocol (``eval/mv_recon`` of CUT3R, as FastVGGT / LiteVGGT use it):

1. sequences: every ``TestSplit.txt`` entry of every scene (18 sequences on the full dataset);
2. frames: every ``--stride``-th frame (FastVGGT paper and LiteVGGT: 3); ``--max-frames`` keeps
   the first N of those (for small runs; not part of the protocol);
3. input: the model's size (518 px wide for VGGT-1B, 392 high for 640x480);
4. prediction: the point-map head (FastVGGT; ``--points depth`` unprojects the depth head with the
   predicted cameras as LiteVGGT does); ground truth: the depth maps unprojected and expressed in
   the first camera's frame; the predicted world is the first predicted camera's frame;
5. alignment (``Regr3D_t_ScaleShiftInv``, ``norm_mode=False, gt_scale=True``): over the valid
   ground-truth pixels of all frames, each cloud's median z is subtracted, then the prediction is
   scaled by ``median|gt - median(gt)| / median|pred - median(pred)|`` (lower medians, as
   ``torch.nanmedian``);
6. only a central 224 x 224 crop of each frame and the valid ground-truth pixels are kept (no
   confidence filter);
7. Open3D point-to-point ICP (threshold 0.1, identity initialisation), normals with Open3D's
   defaults, then Acc / Comp (nearest-neighbour distances) and NC, each as mean and median
   (:func:`pacegeo.metrics.cut3r_reconstruction_metrics`). Scores are averaged over sequences.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pacegeo import evaluation as common

PROTOCOL = "7scenes"

COLUMNS = (
    common.Column("acc", "Acc"),
    common.Column("acc_med", "Acc med"),
    common.Column("comp", "Comp"),
    common.Column("comp_med", "Comp med"),
    common.Column("nc", "NC", ".4f", lower_is_better=False),
    common.Column("nc_med", "NC med", ".4f", lower_is_better=False),
    common.Column("rot_dev_med", "rot. dev.° from keep 1", ".3f"),
    common.Column("depth_dev_med", "depth dev. from keep 1"),
)
FRONTIER = (COLUMNS[0], COLUMNS[4])


@dataclass(frozen=True)
class SevenScenesProtocol:
    """Settings of the 7-Scenes metric computation (the CUT3R / FastVGGT values by default).

    Attributes:
        crop: side of the central crop (pixels of the model input) whose valid pixels are scored;
            clamped to the image for inputs smaller than that.
        icp_threshold: maximum correspondence distance of the ICP (ground-truth units, metres).
        max_points: clouds above this size are randomly subsampled (same indices for both).
        seed: seed of that subsampling.
        points: ``"pointmap"`` (point-map head) or ``"depth"`` (depth head + predicted cameras).
    """

    crop: int = 224
    icp_threshold: float = 0.1
    max_points: int = 1_000_000
    seed: int = 42
    points: str = "pointmap"


@dataclass
class SevenScenesGT:
    """Ground truth of one sequence on the model-input grid.

    Attributes:
        cam_to_world: ``[S, 4, 4]`` camera-to-world poses.
        depth: ``[S, H, W]`` metres, 0 = invalid.
        intrinsics: ``[S, 3, 3]`` in model-input pixels.
    """

    cam_to_world: np.ndarray
    depth: np.ndarray
    intrinsics: np.ndarray


# ---------------------------------------------------------------------------------------------
# Metric computation (pure: no model, no files)
# ---------------------------------------------------------------------------------------------


def lower_median(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """``torch.nanmedian`` semantics on finite data: the lower of the two middle values."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    if n == 0:
        raise ValueError("median of an empty set")
    k = (n - 1) // 2
    return np.take(np.partition(x, k, axis=axis), k, axis=axis)


def gt_points_first_camera(gt: SevenScenesGT) -> np.ndarray:
    """Ground-truth depth unprojected into the first camera's frame, ``[S, H, W, 3]``."""
    from pacegeo.data.frames import unproject_depth

    c2w = np.asarray(gt.cam_to_world, dtype=np.float64)
    rel = np.linalg.inv(c2w[0])[None] @ c2w
    return np.stack([unproject_depth(d, K, T) for d, K, T in zip(gt.depth, gt.intrinsics, rel)])


def prediction_points(pred: common.Prediction, source: str) -> np.ndarray:
    """Predicted points ``[S, H, W, 3]`` in the predicted world (the first predicted camera)."""
    if source == "pointmap":
        if pred.world_points is None:
            raise ValueError("the model has no point-map head; use --points depth")
        return np.asarray(pred.world_points, dtype=np.float64)
    if source == "depth":
        from pacegeo.geometry import unproject_depth_map_to_point_map

        return unproject_depth_map_to_point_map(pred.depth, pred.extrinsics, pred.intrinsics)
    raise ValueError(f"points must be 'pointmap' or 'depth', got {source!r}")


def align_shift_scale(pred_pts: np.ndarray, gt_pts: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """``Regr3D_t_ScaleShiftInv(norm_mode=False, gt_scale=True)`` on ``[S, H, W, 3]`` clouds.

    Subtract each cloud's median z over ``mask``; scale the prediction by the ratio of the median
    distances to the per-axis median centre (ground truth over prediction, the prediction's
    clipped to ``[1e-3, 1e3]``); finally add the ground truth's median z back to both (as the
    protocol does before moving them to the world frame).

    Returns:
        ``(pred_aligned, gt_shifted_back, info)`` with ``info = {gt_shift_z, pred_shift_z,
        gt_scale, pred_scale}``.
    """
    pred = np.array(pred_pts, dtype=np.float64, copy=True)
    gt = np.array(gt_pts, dtype=np.float64, copy=True)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("no valid ground-truth pixel")
    gt_shift = float(lower_median(gt[..., 2][m]))
    pred_shift = float(lower_median(pred[..., 2][m]))
    gt[..., 2] -= gt_shift
    pred[..., 2] -= pred_shift

    def scale_of(p: np.ndarray) -> float:
        v = p[m]
        centre = lower_median(v, axis=0)
        return float(lower_median(np.linalg.norm(v - centre, axis=-1)))

    gt_scale = scale_of(gt)
    pred_scale = float(np.clip(scale_of(pred), 1e-3, 1e3))
    pred *= gt_scale / pred_scale
    pred[..., 2] += gt_shift
    gt[..., 2] += gt_shift
    info = {"gt_shift_z": gt_shift, "pred_shift_z": pred_shift, "gt_scale": gt_scale, "pred_scale": pred_scale}
    return pred, gt, info


def central_crop(hw: tuple[int, int], crop: int) -> tuple[slice, slice]:
    """Row and column slices of the central ``crop x crop`` window (``cx - crop/2 .. cx + crop/2``
    around ``cx = W // 2``), clamped to the image."""
    h, w = hw
    cy, cx = h // 2, w // 2
    half = crop // 2
    return slice(max(0, cy - half), min(h, cy + half)), slice(max(0, cx - half), min(w, cx + half))


def evaluate_scene(
    pred: common.Prediction, gt: SevenScenesGT, cfg: SevenScenesProtocol = SevenScenesProtocol()
) -> dict:
    """7-Scenes metrics of one sequence.

    Args:
        pred: predictions on the model grid (predicted world = first predicted camera).
        gt: ground truth on the same grid.
        cfg: protocol settings.

    Returns:
        ``{"metrics": {acc, acc_med, comp, comp_med, nc, nc_med, nc1, nc1_med, nc2, nc2_med,
        icp_fitness, num_points, gt_scale, pred_scale}, "errors": [...]}``.
    """
    from pacegeo.geometry.transforms import apply_transform
    from pacegeo.metrics import cut3r_reconstruction_metrics

    pred_pts = prediction_points(pred, cfg.points)
    gt_pts = gt_points_first_camera(gt)
    mask = (np.asarray(gt.depth) > 0) & np.isfinite(pred_pts).all(axis=-1)
    pred_al, gt_al, info = align_shift_scale(pred_pts, gt_pts, mask)
    rows, cols = central_crop(mask.shape[1:], cfg.crop)
    m = mask[:, rows, cols]
    p = pred_al[:, rows, cols][m]
    g = gt_al[:, rows, cols][m]
    if len(p) == 0:
        raise ValueError("no valid ground-truth pixel inside the central crop")
    first = np.asarray(gt.cam_to_world[0], dtype=np.float64)
    p = apply_transform(p, first)  # back to the ground-truth world, as the protocol does
    g = apply_transform(g, first)
    if len(p) > cfg.max_points:
        idx = np.random.default_rng(cfg.seed).choice(len(p), cfg.max_points, replace=False)
        p, g = p[idx], g[idx]
    metrics = cut3r_reconstruction_metrics(p, g, icp_threshold=cfg.icp_threshold)
    metrics["num_points"] = float(len(p))
    metrics["gt_scale"] = info["gt_scale"]
    metrics["pred_scale"] = info["pred_scale"]
    return {"metrics": metrics, "errors": []}


def gt_as_prediction(gt: SevenScenesGT) -> common.Prediction:
    """The ground truth dressed as a prediction (world = first camera): Acc/Comp ~0, NC ~1."""
    from pacegeo.geometry.transforms import invert_se3, to_4x4

    c2w = to_4x4(gt.cam_to_world)
    rel = np.linalg.inv(c2w[0])[None] @ c2w
    depth = np.asarray(gt.depth, dtype=np.float32)
    return common.Prediction(
        extrinsics=invert_se3(rel)[:, :3, :],
        intrinsics=np.asarray(gt.intrinsics, dtype=np.float64),
        depth=depth,
        depth_conf=np.where(depth > 0, np.inf, 0.0).astype(np.float32),
        world_points=gt_points_first_camera(gt).astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def find_sequences(root: Path) -> list[tuple[str, Path]]:
    """The test sequences under ``root`` as ``[(name, folder)]``.

    ``root`` may be the dataset root (``<scene>/seq-XX`` with ``TestSplit.txt``), one scene folder or
    one sequence folder holding the frames directly. Names are the folder paths relative to ``root``
    (``chess/seq-03``), or the folder's own name when ``root`` is the sequence.
    """
    from pacegeo.data.sevenscenes import list_sevenscenes_sequences

    seqs = list_sevenscenes_sequences(root, split="test")
    names = []
    for seq in seqs:
        rel = seq.relative_to(root).as_posix() if seq != root else ""
        names.append(rel if rel and rel != "." else root.name)
    return list(zip(names, seqs))


def uses_projected_depth(seq_dir: Path) -> bool:
    """Whether the sequence has SimpleRecon's ``frame-*.depth.proj.png`` (depth re-rendered into the
    colour camera), which the protocol reads with fx = fy = 525, c = (320, 240)."""
    return any(seq_dir.glob("frame-*.depth.proj.png"))


def load_sequence(
    seq_dir: Path, stride: int, max_frames: int | None, size: int
) -> tuple[common.PreparedFrames, SevenScenesGT, str]:
    """Every ``stride``-th frame (the first ``max_frames`` of them), preprocessed, with ground truth.

    Depth: ``depth.proj.png`` with the SimpleRecon intrinsics when present (the protocol's choice),
    else the raw ``depth.png`` with the sequence's intrinsics (``camera-intrinsics.txt`` or 585).

    Returns:
        ``(prepared, gt, depth_kind)`` with ``depth_kind`` ``"proj"`` or ``"raw"``.
    """
    from pacegeo.data.sevenscenes import SIMPLERECON_K, read_sevenscenes_sequence
    from pacegeo.errors import InputError

    if uses_projected_depth(seq_dir):
        frames = read_sevenscenes_sequence(
            seq_dir, stride=stride, intrinsics=SIMPLERECON_K, depth_suffix="depth.proj.png"
        )
        kind = "proj"
    else:
        frames = read_sevenscenes_sequence(seq_dir, stride=stride)
        kind = "raw"
    if max_frames:
        frames = frames.select(range(min(max_frames, len(frames))))
    prepared = common.prepare_frames(frames, size, with_depth=True)
    if prepared.depth is None:
        raise InputError(f"7-Scenes frames in {seq_dir} carry no depth maps")
    return prepared, SevenScenesGT(prepared.cam_to_world, prepared.depth, prepared.intrinsics), kind


# ---------------------------------------------------------------------------------------------
# Script
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval/sevenscenes.py",
        description="7-Scenes reconstruction protocol (CUT3R / FastVGGT): Acc, Comp, NC after ICP.",
    )
    p.add_argument("--root", required=True, help="7-Scenes root, a scene folder, or a folder of frames")
    p.add_argument("--stride", type=int, default=3, help="keyframe stride (default: %(default)s)")
    p.add_argument("--max-frames", type=int, default=None, help="cap on frames per sequence (small runs)")
    p.add_argument(
        "--points",
        choices=("pointmap", "depth"),
        default="pointmap",
        help="point-map head (FastVGGT) or depth head + cameras (LiteVGGT) (default: %(default)s)",
    )
    p.add_argument("--crop", type=int, default=224, help="central crop side in pixels (default: %(default)s)")
    common.add_model_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return common.run_script(build_parser(), _run, argv)


def _evaluate_or_error(pred: common.Prediction, gt: SevenScenesGT, cfg: SevenScenesProtocol) -> dict:
    """:func:`evaluate_scene`, or no metrics and the reason when they cannot be computed."""
    try:
        return evaluate_scene(pred, gt, cfg)
    except ValueError as err:
        return {"metrics": {}, "errors": [str(err)]}


def _run(args: argparse.Namespace) -> int:
    from pacegeo.errors import InputError

    root = common.check_root(args.root, "7-Scenes")
    if args.stride < 1:
        raise InputError(f"--stride must be at least 1, got {args.stride}")
    if args.max_frames is not None and args.max_frames < 2:
        raise InputError(f"--max-frames must be at least 2, got {args.max_frames}")
    folders = dict(find_sequences(root))  # raises a one-line InputError when there is none
    run = common.ProtocolRun(args, PROTOCOL)
    model = run.model
    if args.points == "pointmap" and not model.has_point_head:
        raise InputError(f"model {model.label} has no point-map head; use --points depth")
    cfg = SevenScenesProtocol(crop=args.crop, points=args.points)
    mine = run.shard(list(folders))
    if run.is_main:
        cap = f", at most {args.max_frames} frames" if args.max_frames else ""
        print(
            f"7-Scenes: {len(folders)} sequences, stride {args.stride}{cap}, model {model.label} "
            f"({model.input_size} px, {run.device}), pruner {model.pruner}, keep {run.keep_text}"
        )
    for name in run.pending(mine, "sequence"):
        prepared, gt, depth_kind = load_sequence(folders[name], args.stride, args.max_frames, model.input_size)
        config = asdict(cfg) | {"stride": args.stride, "max_frames": args.max_frames, "depth": depth_kind}
        run.evaluate(name, prepared, config, lambda pred: _evaluate_or_error(pred, gt, cfg))
    notes = [
        f"7-Scenes protocol (CUT3R / FastVGGT), keyframe stride {args.stride}"
        + (f", first {args.max_frames} keyframes" if args.max_frames else "")
        + f"; {args.points} points; median shift/scale, central {args.crop}x{args.crop} crop, "
        "ICP (0.1); sequence means. Latency: forward pass only.",
    ]
    run.finish(COLUMNS, FRONTIER, "7-Scenes", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
