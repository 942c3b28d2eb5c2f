"""ScanNet-50 evaluation: the protocol as FastVGGT's ``eval_scannet.py`` runs it, plus corrected metrics.

Usage::

    python eval/scannet.py --root DIR [--frames 300] [--scenes 50] [--keep 1.0 0.5 0.3] \\
        [--pruner training-free] [--model pacegeo-tiny] [--size 518] --out OUTDIR
    accelerate launch eval/scannet.py ...        # scenes split over processes / GPUs

``DIR`` holds ScanNet scenes in the raw (SensReader) layout, ``<scene>/color/<id>.jpg``,
``<scene>/depth/<id>.png``, ``<scene>/pose/<id>.txt`` (camera-to-world), ``<scene>/intrinsic/``
and the mesh ``<scene>/<scene>_vh_clean_2.ply`` (SynthRooms scenes from ``pacegeo synth`` use the
same layout).

Protocol (FastVGGT, ``fastvggt_*`` keys):

1. scenes: ``sorted(scene folders)[::len // n][:n]`` when there are more than ``n``;
2. frames: ids with an image and a finite pose; if more than ``N``: the first frame plus
   ``remaining[::max(1, len // (N - 1))][:N - 1]``;
3. input: width 518 for VGGT-1B (height 392 for ScanNet's 1296x968), bicubic, centre-cropped if
   taller; other models use their training size or ``--size``;
4. points: the depth head unprojected with the predicted cameras, pixels with depth confidence
   ``>= 3`` (absolute), mapped into the ground-truth world with the *first ground-truth pose*, then
   scaled about the bounding-box centre to the mesh's bounding-box diagonal and moved onto its
   centre (no rotation);
5. Chamfer against the mesh vertices: random subsample to <= 100k points (seed 33), 5 cm voxels,
   distances clipped at 0.5 m, sum of the two means;
6. cameras: evo APE/RPE with Umeyama Sim(3) (``align=True, correct_scale=True, align_origin=True``)
   on *world-to-camera* matrices (:func:`pacegeo.metrics.fastvggt_trajectory_errors`).

Corrected variant (``corrected_*`` keys): camera-centre ATE/ARE/RPE after a Sim(3) Umeyama
alignment of camera centres (:func:`pacegeo.metrics.trajectory_errors`), and the Chamfer distance
(same sampling, voxels and clip) after mapping the predicted points with that same Sim(3).

Also reported: depth AbsRel / delta<1.25 after median scaling (one scale per sequence, and the
per-frame variant), the fraction of pixels passing the confidence threshold, and the forward
latency.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pacegeo import evaluation as common

logger = logging.getLogger("pacegeo.eval.scannet")

PROTOCOL = "scannet"

COLUMNS = (
    common.Column("fastvggt_chamfer", "CD (FastVGGT)"),
    common.Column("fastvggt_ate", "ATE (FastVGGT)"),
    common.Column("fastvggt_are", "ARE° (FastVGGT)", ".3f"),
    common.Column("fastvggt_rpe_rot", "RPE-rot° (FastVGGT)", ".3f"),
    common.Column("fastvggt_rpe_trans", "RPE-trans (FastVGGT)"),
    common.Column("corrected_chamfer", "CD (corrected)"),
    common.Column("corrected_ate", "ATE (corrected)"),
    common.Column("corrected_are", "ARE° (corrected)", ".3f"),
    common.Column("depth_abs_rel", "depth AbsRel"),
    common.Column("depth_delta_1_25", "depth δ<1.25", ".4f", lower_is_better=False),
    common.Column("rot_dev_med", "rot. dev.° from keep 1", ".3f"),
    common.Column("depth_dev_med", "depth dev. from keep 1"),
)
FRONTIER = (COLUMNS[0], COLUMNS[6])


@dataclass(frozen=True)
class ScanNetProtocol:
    """Settings of the ScanNet-50 metric computation (FastVGGT's values by default).

    Attributes:
        conf_thresh: keep predicted depth pixels with ``depth_conf >= conf_thresh`` (absolute).
        chamfer_max_points: random subsample of each cloud before voxelisation.
        chamfer_voxel: voxel size (m) of the Open3D downsampling.
        chamfer_max_dist: clip of nearest-neighbour distances (m).
        seed: seed of the subsampling.
    """

    conf_thresh: float = 3.0
    chamfer_max_points: int = 100_000
    chamfer_voxel: float = 0.05
    chamfer_max_dist: float = 0.5
    seed: int = common.PROTOCOL_SEED


@dataclass
class ScanNetGT:
    """Ground truth of one scene on the model-input grid.

    Attributes:
        cam_to_world: ``[S, 4, 4]`` ground-truth camera-to-world poses (ScanNet ``pose/*.txt``).
        depth: ``[S, H, W]`` metres on the model-input grid (0 = invalid), or None.
        intrinsics: ``[S, 3, 3]`` ground-truth intrinsics in model-input pixels.
        mesh_points: ``[M, 3]`` vertices of ``<scene>_vh_clean_2.ply`` (ground-truth world).
    """

    cam_to_world: np.ndarray
    depth: np.ndarray | None
    intrinsics: np.ndarray
    mesh_points: np.ndarray


# ---------------------------------------------------------------------------------------------
# Metric computation (pure: no model, no files)
# ---------------------------------------------------------------------------------------------


def predicted_points(pred: common.Prediction, conf_thresh: float) -> tuple[np.ndarray, float]:
    """Predicted depth unprojected with the predicted cameras, confidence-filtered.

    As FastVGGT: depth with ``depth_conf < conf_thresh`` is set to NaN before unprojection and
    non-finite points are dropped.

    Returns:
        ``([P, 3]`` points in the predicted world, fraction of pixels kept).
    """
    from pacegeo.geometry import unproject_depth_map_to_point_map

    depth = np.array(pred.depth, dtype=np.float32, copy=True)
    mask = pred.depth_conf >= conf_thresh
    depth[~mask] = np.nan
    world = unproject_depth_map_to_point_map(depth, pred.extrinsics.astype(np.float32), pred.intrinsics.astype(np.float32))
    pts = world.reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    return pts, float(mask.mean())


def _safe(fn, errors: list[str], name: str) -> dict:
    try:
        return fn()
    except (ValueError, np.linalg.LinAlgError) as err:
        errors.append(f"{name}: {err}")
        return {}


def evaluate_scene(pred: common.Prediction, gt: ScanNetGT, cfg: ScanNetProtocol = ScanNetProtocol()) -> dict:
    """All ScanNet metrics of one scene.

    Args:
        pred: predictions on the model grid; the predicted world is camera 0's frame (as VGGT).
        gt: ground truth (see :class:`ScanNetGT`).
        cfg: protocol settings.

    Returns:
        ``{"metrics": {...}, "per_frame": {...}, "errors": [...]}``. Metric keys:
        ``fastvggt_{chamfer,ate,are,rpe_rot,rpe_trans,scale}``,
        ``corrected_{chamfer,ate,are,rpe_rot,rpe_trans,scale}``, ``depth_{abs_rel,delta_1_25,rmse}``,
        ``depth_frame_{abs_rel,delta_1_25}``, ``conf_kept``, ``num_points``. A metric that cannot be
        computed (no confident pixel, degenerate trajectory) is NaN and the reason is in ``errors``.
    """
    from pacegeo import metrics as M
    from pacegeo.geometry import transforms as tf

    errors: list[str] = []
    nan = float("nan")
    out: dict[str, float] = {}
    per_frame: dict[str, list] = {}
    gt_c2w = tf.to_4x4(gt.cam_to_world)
    pred_w2c = tf.to_4x4(pred.extrinsics)
    pred_c2w = tf.invert_se3(pred_w2c)

    # Cameras, FastVGGT: evo on w2c matrices, GT re-based on its first frame.
    fv = _safe(lambda: M.fastvggt_trajectory_errors(pred_w2c, gt_c2w), errors, "fastvggt trajectory")
    for k in ("ate", "are", "rpe_rot", "rpe_trans"):
        out[f"fastvggt_{k}"] = fv.get(k, nan)

    # Cameras, corrected: camera centres, Sim(3).
    co = _safe(lambda: M.trajectory_errors(pred_c2w, gt_c2w), errors, "corrected trajectory")
    for k in ("ate", "are", "rpe_rot", "rpe_trans"):
        out[f"corrected_{k}"] = co.get(k, nan)
    if co:
        per_frame["corrected_ate"] = M.ate(pred_c2w, gt_c2w, reduction="none").tolist()
        per_frame["corrected_are"] = M.are(pred_c2w, gt_c2w, reduction="none").tolist()

    # Points.
    pts, kept = predicted_points(pred, cfg.conf_thresh)
    out["conf_kept"] = kept
    out["num_points"] = float(len(pts))
    mesh = np.asarray(gt.mesh_points, dtype=np.float64)
    chamfer_kw = dict(
        max_points=cfg.chamfer_max_points, seed=cfg.seed, voxel_size=cfg.chamfer_voxel, max_dist=cfg.chamfer_max_dist
    )
    out["fastvggt_chamfer"] = out["corrected_chamfer"] = nan
    out["fastvggt_scale"] = out["corrected_scale"] = nan
    if len(pts) == 0:
        errors.append(f"chamfer: no predicted pixel has depth confidence >= {cfg.conf_thresh:g}")
    else:
        # FastVGGT: first GT pose, then bounding-box scale/centre.
        def fastvggt_cd() -> dict:
            in_gt = tf.apply_transform(pts, gt_c2w[0])
            aligned, scale = M.align_by_bounding_box(in_gt, mesh)
            return {"cd": M.chamfer(aligned, mesh, **chamfer_kw), "scale": scale}

        r = _safe(fastvggt_cd, errors, "fastvggt chamfer")
        out["fastvggt_chamfer"] = r.get("cd", nan)
        out["fastvggt_scale"] = r.get("scale", nan)

        # Corrected: Sim(3) from predicted to GT camera centres.
        def corrected_cd() -> dict:
            s, R, t = tf.umeyama(pred_c2w[:, :3, 3], gt_c2w[:, :3, 3], with_scale=True)
            aligned = tf.apply_sim3_to_points(pts, s, R, t)
            return {"cd": M.chamfer(aligned, mesh, **chamfer_kw), "scale": s}

        r = _safe(corrected_cd, errors, "corrected chamfer")
        out["corrected_chamfer"] = r.get("cd", nan)
        out["corrected_scale"] = r.get("scale", nan)

    # Depth (median scaling; GT-valid pixels only).
    if gt.depth is not None:
        seq = M.depth_metrics(pred.depth, gt.depth, align="median", per_frame=False)
        frm = M.depth_metrics(pred.depth, gt.depth, align="median", per_frame=True)
        out["depth_abs_rel"], out["depth_delta_1_25"], out["depth_rmse"] = (
            seq["abs_rel"], seq["delta_1_25"], seq["rmse"],
        )
        out["depth_frame_abs_rel"], out["depth_frame_delta_1_25"] = frm["abs_rel"], frm["delta_1_25"]
    return {"metrics": out, "per_frame": per_frame, "errors": errors}


def gt_as_prediction(gt: ScanNetGT) -> common.Prediction:
    """The ground truth dressed as a model prediction (world = first camera, confidence +inf on
    valid depth, 0 elsewhere): every metric of :func:`evaluate_scene` should then be ~0."""
    from pacegeo.geometry import transforms as tf

    c2w = tf.to_4x4(gt.cam_to_world)
    rel = np.linalg.inv(c2w[0])[None] @ c2w
    depth = np.zeros_like(gt.depth, dtype=np.float32) if gt.depth is None else gt.depth.astype(np.float32)
    conf = np.where(depth > 0, np.inf, 0.0).astype(np.float32)
    return common.Prediction(
        extrinsics=tf.invert_se3(rel)[:, :3, :], intrinsics=np.asarray(gt.intrinsics, dtype=np.float64),
        depth=depth, depth_conf=conf,
    )


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def select_scenes(root: Path, num_scenes: int) -> list[str]:
    """FastVGGT's scene choice: ``sorted(scenes)[::len // n][:n]`` when there are more than ``n``.

    Only folders in the raw layout (with ``color/`` and ``pose/``) count; FastVGGT takes every
    sub-folder, here stray folders are ignored. Returns scene names (empty when none).
    """
    from pacegeo.data.scannet import list_scannet_scenes

    scenes = [p.name for p in list_scannet_scenes(root)]
    if num_scenes > 0 and len(scenes) > num_scenes:
        scenes = scenes[:: max(1, len(scenes) // num_scenes)][:num_scenes]
    return scenes


def read_mesh_points(scene_dir: Path) -> np.ndarray:
    """Vertices ``[M, 3]`` of ``<scene>/<scene>_vh_clean_2.ply`` (FastVGGT reads the PLY as points)."""
    from pacegeo.errors import InputError
    from pacegeo.extras import require

    o3d = require("open3d", "reading ScanNet meshes")

    path = scene_dir / f"{scene_dir.name}_vh_clean_2.ply"
    if not path.is_file():
        others = sorted(scene_dir.glob("*_vh_clean_2.ply"))
        if len(others) != 1:
            raise InputError(f"ground-truth mesh not found: {path}")
        logger.warning("using %s as the ground-truth mesh of %s", others[0].name, scene_dir.name)
        path = others[0]
    pts = np.asarray(o3d.io.read_point_cloud(str(path)).points, dtype=np.float64)
    if len(pts) == 0:
        raise InputError(f"ground-truth mesh {path} has no vertices")
    return pts


def load_scene(root: Path, scene: str, num_frames: int, size: int) -> tuple[common.PreparedFrames, ScanNetGT]:
    """Read one scene, select frames as FastVGGT does, preprocess for the model, build the GT."""
    from pacegeo.data.scannet import load_scannet_frames

    scene_dir = root / scene
    frames = load_scannet_frames(scene_dir, num_frames)  # valid frames; first + uniform stride
    prepared = common.prepare_frames(frames, size, with_depth=True)
    gt = ScanNetGT(prepared.cam_to_world, prepared.depth, prepared.intrinsics, read_mesh_points(scene_dir))
    return prepared, gt


# ---------------------------------------------------------------------------------------------
# Script
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval/scannet.py",
        description="ScanNet-50 protocol (FastVGGT) plus corrected camera/point metrics.",
    )
    p.add_argument("--root", required=True, help="folder of ScanNet scenes in the raw layout")
    p.add_argument("--frames", type=int, default=300, help="frames per scene, N (default: %(default)s)")
    p.add_argument("--scenes", type=int, default=50, help="number of scenes (default: %(default)s)")
    p.add_argument("--conf-thresh", type=float, default=3.0, help="depth confidence threshold (default: %(default)s)")
    p.add_argument("--max-dist", type=float, default=0.5, help="Chamfer distance clip in m (default: %(default)s)")
    common.add_model_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return common.run_script(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from pacegeo.errors import InputError

    root = common.check_root(args.root, "ScanNet")
    if args.frames < 2:
        raise InputError(f"--frames must be at least 2, got {args.frames}")
    scenes = select_scenes(root, args.scenes)
    if not scenes:
        raise InputError(f"no ScanNet scenes (folders with color/ and pose/) found in {root}")
    cfg = ScanNetProtocol(conf_thresh=args.conf_thresh, chamfer_max_dist=args.max_dist)
    run = common.ProtocolRun(args, PROTOCOL)
    model = run.model
    mine = run.shard(scenes)
    if run.is_main:
        print(
            f"ScanNet: {len(scenes)} scenes, {args.frames} frames, model {model.label} ({model.input_size} px, "
            f"{run.device}), pruner {model.pruner}, keep {run.keep_text}"
        )
        if run.shards.count > 1:
            print(f"{run.shards.count} processes; this one has {len(mine)} scene(s)")
    for scene in run.pending(mine, "scene"):
        prepared, gt = load_scene(root, scene, args.frames, model.input_size)
        run.evaluate(scene, prepared, asdict(cfg), lambda pred: evaluate_scene(pred, gt, cfg))
    notes = [
        f"ScanNet protocol, up to {args.frames} frames per scene; scene means. "
        "FastVGGT columns: first-GT-pose transfer + bounding-box scale (Chamfer), evo Sim(3) on "
        "world-to-camera matrices (ATE/ARE/RPE). Corrected columns: Sim(3) on camera centres for "
        "both. Depth: median-scaled per sequence. Latency: forward pass only.",
    ]
    run.finish(COLUMNS, FRONTIER, "ScanNet", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
