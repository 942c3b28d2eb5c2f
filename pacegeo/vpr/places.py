"""Place-recognition data rendered from SynthRooms scenes (:mod:`pacegeo.data.synth`).

Two uses:

* **training places** (:func:`render_places`): a *place* is a camera pose on a scene's trajectory
  (the centre); its views are rendered from poses jittered around the centre (within
  ``view_radius`` metres and ``view_angle`` degrees), each with its own sensor noise and exposure.
  Centres of one scene are at least ``min_separation`` metres apart, or look in directions at
  least ``min_separation_angle`` degrees apart, so different places never count as the same place;
  places of different scenes are different by construction.
* **an evaluation set** (:func:`make_place_set`): the database holds every ``db_stride``-th view of
  a trajectory per scene; the queries are other (held-out) trajectory views, jittered and rendered
  with different photometric noise; the positives of a query are the database views of the same
  scene within ``same_distance`` metres and ``same_angle`` degrees
  (:func:`pacegeo.vpr.recall.positives_from_poses`).

Everything is deterministic given the seeds. Poses are camera-to-world (OpenCV camera, z-up world).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from pacegeo.data.synth import make_scene, make_trajectory, render_frame, scene_intrinsics
from pacegeo.vpr.recall import positives_from_poses

logger = logging.getLogger(__name__)

__all__ = ["TRAIN_SCENE_OFFSET", "VAL_SCENE_OFFSET", "VIEWS_PER_BATCH_PLACE", "PlaceConfig", "PlaceSet",
           "images_to_tensor", "jitter_pose", "photometric_jitter", "make_place_set", "place_centres", "render_places", "sample_places",
           "training_places", "validation_places"]

#: Room seeds of the VPR trainings: training rooms 10000, 10001, ..., validation rooms 20000, ...
TRAIN_SCENE_OFFSET = 10_000
VAL_SCENE_OFFSET = 20_000


@dataclass(frozen=True)
class PlaceConfig:
    """Rendering and place-definition parameters (metres, degrees, pixels)."""

    width: int = 154
    height: int = 112
    trajectory_frames: int = 240
    view_radius: float = 0.25  # largest offset of a training view from its place centre
    view_angle: float = 10.0  # largest rotation of a training view from its place centre
    min_separation: float = 1.0  # place centres of one scene: this far apart ...
    min_separation_angle: float = 45.0  # ... or looking this differently
    same_distance: float = 0.5  # evaluation ground truth: same place within this distance
    same_angle: float = 20.0  # ... and this viewing-angle difference
    db_stride: int = 5  # evaluation database: every db_stride-th trajectory view
    query_radius: float = 0.15  # evaluation queries: jitter of the held-out trajectory views
    query_angle: float = 6.0


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = (np.trace(a[:3, :3].T @ b[:3, :3]) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def jitter_pose(scene, pose: np.ndarray, radius: float, angle_deg: float, rng: np.random.Generator,
                tries: int = 10) -> np.ndarray:
    """A pose within ``radius`` metres (mostly horizontal) and ``angle_deg`` degrees of ``pose``
    ``[4, 4]`` whose position stays in the scene's free space (the original pose if none is found)."""
    for _ in range(tries):
        offset = rng.normal(size=3) * np.array([1.0, 1.0, 0.3])
        offset *= radius * rng.uniform() ** (1 / 3) / max(np.linalg.norm(offset), 1e-9)
        axis = rng.normal(size=3)
        rotvec = axis / max(np.linalg.norm(axis), 1e-9) * np.radians(angle_deg) * rng.uniform()
        out = pose.copy()
        out[:3, 3] = pose[:3, 3] + offset
        out[:3, :3] = pose[:3, :3] @ Rotation.from_rotvec(rotvec).as_matrix()
        if bool(scene.free_space.is_free(out[None, :2, 3], slack=0.15)[0]):
            return out
    return pose.copy()


def place_centres(trajectory: np.ndarray, num_places: int, cfg: PlaceConfig, rng: np.random.Generator) -> np.ndarray:
    """Up to ``num_places`` trajectory poses ``[P, 4, 4]``, pairwise separated (see module doc)."""
    chosen: list[np.ndarray] = []
    for i in rng.permutation(len(trajectory)):
        pose = trajectory[i]
        if all(np.linalg.norm(pose[:3, 3] - c[:3, 3]) >= cfg.min_separation
               or _angle_deg(pose, c) >= cfg.min_separation_angle for c in chosen):
            chosen.append(pose)
            if len(chosen) == num_places:
                break
    return np.stack(chosen) if chosen else np.zeros((0, 4, 4))


def render_places(scene_seed: int, num_places: int, views_per_place: int, cfg: PlaceConfig = PlaceConfig(),
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training places of one scene.

    Returns:
        ``(images [P, V, H, W, 3] uint8, poses [P, V, 4, 4])`` with ``P <= num_places`` places of
        ``V = views_per_place`` views each.
    """
    rng = np.random.default_rng([int(scene_seed), int(seed), 0x91ACE])
    scene = make_scene(scene_seed)
    trajectory = make_trajectory(scene, cfg.trajectory_frames)
    centres = place_centres(trajectory, num_places, cfg, rng)
    K = scene_intrinsics(scene, cfg.width, cfg.height)
    images = np.zeros((len(centres), views_per_place, cfg.height, cfg.width, 3), np.uint8)
    poses = np.zeros((len(centres), views_per_place, 4, 4))
    for p, centre in enumerate(centres):
        for v in range(views_per_place):
            pose = jitter_pose(scene, centre, cfg.view_radius, cfg.view_angle, rng)
            images[p, v] = render_frame(scene, pose, K, cfg.width, cfg.height,
                                        frame_index=int(rng.integers(1 << 30)))[0]
            poses[p, v] = pose
    return images, poses


@dataclass(frozen=True)
class PlaceSet:
    """A rendered evaluation set.

    Attributes:
        database, queries: ``[M, H, W, 3]`` / ``[Q, H, W, 3]`` uint8 images.
        database_poses, query_poses: camera-to-world ``[M, 4, 4]`` / ``[Q, 4, 4]`` (scene frames).
        database_scene, query_scene: ``[M]`` / ``[Q]`` scene seed of every view.
        positives: ``Q`` arrays of correct database indices.
    """

    database: np.ndarray
    queries: np.ndarray
    database_poses: np.ndarray
    query_poses: np.ndarray
    database_scene: np.ndarray
    query_scene: np.ndarray
    positives: list[np.ndarray]


def make_place_set(scene_seeds: list[int], queries_per_scene: int, cfg: PlaceConfig = PlaceConfig(),
                   seed: int = 0) -> PlaceSet:
    """Evaluation set over several scenes (see the module docstring)."""
    db_img, q_img, db_pose, q_pose, db_scene, q_scene, positives = [], [], [], [], [], [], []
    offset = 0
    for scene_seed in scene_seeds:
        rng = np.random.default_rng([int(scene_seed), int(seed), 0xE7A1])
        scene = make_scene(scene_seed)
        trajectory = make_trajectory(scene, cfg.trajectory_frames)
        K = scene_intrinsics(scene, cfg.width, cfg.height)
        db_idx = np.arange(0, len(trajectory), cfg.db_stride)
        held_out = np.setdiff1d(np.arange(len(trajectory)), db_idx)
        q_idx = np.sort(rng.choice(held_out, size=min(queries_per_scene, len(held_out)), replace=False))
        d_poses = trajectory[db_idx]
        qs = np.stack([jitter_pose(scene, trajectory[i], cfg.query_radius, cfg.query_angle, rng) for i in q_idx])
        for i, pose in zip(db_idx, d_poses):
            db_img.append(render_frame(scene, pose, K, cfg.width, cfg.height, frame_index=int(i))[0])
        for pose in qs:
            q_img.append(render_frame(scene, pose, K, cfg.width, cfg.height, frame_index=int(rng.integers(1 << 30)))[0])
        positives += [p + offset for p in positives_from_poses(d_poses, qs, cfg.same_distance, cfg.same_angle)]
        offset += len(db_idx)
        db_pose.append(d_poses)
        q_pose.append(qs)
        db_scene += [scene_seed] * len(db_idx)
        q_scene += [scene_seed] * len(qs)
    logger.info("SynthRooms place set: %d scenes, %d database views, %d queries", len(scene_seeds), offset, len(q_img))
    return PlaceSet(np.stack(db_img), np.stack(q_img), np.concatenate(db_pose), np.concatenate(q_pose),
                    np.asarray(db_scene), np.asarray(q_scene), positives)


def training_places(scenes: int, places_per_scene: int, views: int, cfg: PlaceConfig, seed: int = 0) -> np.ndarray:
    """Training places of rooms ``TRAIN_SCENE_OFFSET + 0 .. scenes - 1`` (:func:`render_places`
    per room), ``[P, V, H, W, 3]`` uint8."""
    return np.concatenate([render_places(TRAIN_SCENE_OFFSET + i, places_per_scene, views, cfg, seed=seed)[0]
                           for i in range(scenes)])


def validation_places(scenes: int, queries_per_scene: int, cfg: PlaceConfig, seed: int = 0) -> PlaceSet:
    """The validation place set over rooms ``VAL_SCENE_OFFSET + 0 .. scenes - 1``."""
    return make_place_set([VAL_SCENE_OFFSET + i for i in range(scenes)], queries_per_scene, cfg, seed=seed)


#: Views of each place in a training batch (GSV-Cities style: P places x 4 views).
VIEWS_PER_BATCH_PLACE = 4


def sample_places(rng: np.random.Generator, num_places: int, views: int,
                  places_per_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """One training batch: ``min(places_per_batch, num_places)`` distinct places and, for each,
    :data:`VIEWS_PER_BATCH_PLACE` distinct views of its ``views``. Returns ``places [P]`` and
    ``picks [P, 4]``; index a ``[num_places, views, ...]`` array with ``[places[:, None], picks]``."""
    places = rng.choice(num_places, min(places_per_batch, num_places), replace=False)
    picks = np.stack([rng.choice(views, VIEWS_PER_BATCH_PLACE, replace=False) for _ in places])
    return places, picks


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """Rendered views ``[..., H, W, 3]`` uint8 -> ``[M, 3, H, W]`` float32 in [0, 1]."""
    flat = images.reshape(-1, *images.shape[-3:])
    return torch.from_numpy(flat).permute(0, 3, 1, 2).float().div(255.0)


def photometric_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Colour jitter of a training batch ``[M, 3, H, W]`` in [0, 1]: per image, a contrast and a
    saturation factor in ``1 +- strength``, per-channel gains (white balance and exposure) in
    ``1 +- strength / 2`` and a gamma of ``exp(+-strength / 2)``, drawn from ``generator``.
    ``strength`` 0 returns ``images`` unchanged. Rendered views differ only by sensor noise and
    exposure; real cameras also differ in colour balance, contrast and tone curve."""
    if strength <= 0:
        return images
    m = images.shape[0]

    def draw(*shape: int) -> torch.Tensor:  # uniform in [-1, 1]
        return torch.rand(m, *shape, generator=generator).mul(2).sub(1).to(images)

    contrast, saturation = 1 + strength * draw(1, 1, 1), 1 + strength * draw(1, 1, 1)
    gains, gamma = 1 + 0.5 * strength * draw(3, 1, 1), torch.exp(0.5 * strength * draw(1, 1, 1))
    out = images.clamp(0, 1).pow(gamma) * gains
    grey = out.mean(dim=1, keepdim=True)
    out = grey + saturation * (out - grey)
    out = out.mean(dim=(1, 2, 3), keepdim=True) + contrast * (out - out.mean(dim=(1, 2, 3), keepdim=True))
    return out.clamp(0, 1)
