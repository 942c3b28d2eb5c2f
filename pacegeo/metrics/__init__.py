"""Evaluation metrics for camera poses (:mod:`pacegeo.metrics.poses`), depth maps
(:mod:`pacegeo.metrics.depth`) and point clouds (:mod:`pacegeo.metrics.points`).

All functions accept numpy arrays or torch tensors (converted with ``detach().cpu()``) and compute
in float64. Results are Python floats or float64 numpy arrays. Rigid and similarity transforms and
their fitting are in :mod:`pacegeo.geometry.transforms`.

Re-exports the public names of the three modules, so ``from pacegeo.metrics import chamfer`` and
``pacegeo.metrics.chamfer`` both work.
"""

from pacegeo.metrics.depth import depth_metrics
from pacegeo.metrics.points import (
    accuracy_completeness,
    align_by_bounding_box,
    chamfer,
    cut3r_reconstruction_metrics,
    estimate_normals,
    fastvggt_chamfer,
    icp_refine,
    nearest_neighbor_distances,
    normal_consistency,
    subsample_points,
    voxel_downsample,
)
from pacegeo.metrics.poses import (
    are,
    ate,
    auc,
    evo_trajectory_errors,
    fastvggt_trajectory_errors,
    relative_pose_errors,
    rpe,
    rra,
    rta,
    trajectory_errors,
)

from pacegeo.metrics import depth as _depth, points as _points, poses as _poses

__all__ = [*_poses.__all__, *_depth.__all__, *_points.__all__]
