"""Point-cloud metrics: nearest-neighbour distances, accuracy / completeness and Chamfer distance
(with FastVGGT's ScanNet-50 settings), normal consistency, ICP refinement and the CUT3R 7-Scenes /
NRGBD reconstruction metrics.

Inputs are numpy arrays or torch tensors (converted with ``detach().cpu()``); computation is in
float64 and results are Python floats or float64 numpy arrays. Points are ``[N, 3]`` arrays in
metres (or the unit of the inputs; nothing is rescaled unless a function says so). Voxel
downsampling, normals and ICP use Open3D (an optional dependency, loaded on use).
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
from scipy.spatial import cKDTree

from pacegeo.extras import require
from pacegeo.geometry.transforms import ArrayLike, _points, apply_transform, to_4x4

__all__ = [
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
