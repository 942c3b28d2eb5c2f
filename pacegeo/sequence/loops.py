"""Loop closure for chunked reconstructions: candidates from place recognition, verification by a
joint forward pass, and a robust Sim(3) pose graph over the chunks.

Stitching chunk after chunk accumulates drift: when the camera comes back to a place seen many
chunks earlier, the two visits no longer coincide. This module

1. proposes pairs of frames from chunks that share no frames whose place-recognition descriptors
   are close (:func:`loop_candidates`), at most one per pair of chunks;
2. verifies each by reconstructing the two frames' neighbourhoods together in one forward pass: a
   true loop puts both neighbourhoods in one place, so their point clouds overlap; the two
   neighbourhoods are then fitted onto the stitched reconstruction (robust point-map Sim(3)), and
   the disagreement of the two fits is the loop's measurement (:func:`verify_loop`);
3. solves for one Sim(3) correction per chunk with :func:`scipy.optimize.least_squares`: sequential
   edges say neighbouring chunks stay as stitched, loop edges say the two visits coincide, and a
   Cauchy loss keeps a wrong loop that passed verification from bending the whole sequence
   (:func:`optimise_chunks`);
4. applies each chunk's correction to the frames it placed (:func:`apply_corrections`).

scipy is used rather than a factor-graph library: the graph has one node per chunk (tens to
hundreds), which a dense least-squares solve handles in milliseconds, and scipy is already a
dependency.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from pacegeo.geometry.transforms import sim3_matrix
from pacegeo.sequence.align import PointFit, fit_points_sim3
from pacegeo.sequence.spans import subset

if TYPE_CHECKING:  # pragma: no cover
    from pacegeo.reconstruction import Reconstruction

logger = logging.getLogger(__name__)

__all__ = ["Loop", "apply_corrections", "loop_candidates", "optimise_chunks", "owner_chunks", "verify_loop"]


@dataclass(frozen=True)
class Loop:
    """A verified loop between frames ``i`` and ``j`` (chunks ``a`` and ``b``), and the measured
    relative correction ``X_a^-1 X_b`` (``[4, 4]`` Sim(3) matrix) it asks for."""

    i: int
    j: int
    a: int
    b: int
    score: float
    overlap: float
    measurement: np.ndarray


def owner_chunks(spans: list[tuple[int, int]], count: int) -> np.ndarray:
    """``[count]`` index of the chunk that placed each frame (the first chunk containing it)."""
    owner = np.full(count, -1)
    for index, (start, end) in enumerate(spans):
        free = owner[start:end] < 0
        owner[start:end][free] = index
    return owner


def loop_candidates(descriptors: np.ndarray, spans: list[tuple[int, int]], min_score: float = 0.0,
                    per_frame: int = 3) -> list[tuple[int, int, float]]:
    """``(i, j, score)`` pairs, ``i < j``, best first: the ``per_frame`` most similar frames of each
    frame (cosine of the L2-normalised descriptors ``[S, D]``) placed by chunks at least two apart
    (neighbouring chunks are tied by their shared frames already), above ``min_score``, keeping
    the best pair per pair of chunks."""
    d = np.asarray(descriptors, np.float64)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    count = len(d)
    member = np.zeros((count, len(spans)), bool)
    for index, (start, end) in enumerate(spans):
        member[start:end, index] = True
    owner = owner_chunks(spans, count)
    shared = (member.astype(np.int64) @ member.T.astype(np.int64)).astype(bool)  # a chunk holds both
    distant = np.abs(owner[:, None] - owner[None, :]) >= 2
    sim = np.where(distant & ~shared, d @ d.T, -np.inf)
    best: dict[tuple[int, int], tuple[int, int, float]] = {}
    for i in range(count):
        for j in np.argsort(-sim[i])[:per_frame]:
            score = float(sim[i, j])
            if not np.isfinite(score) or score < min_score:
                continue
            lo, hi = (i, int(j)) if i < j else (int(j), i)
            key = (int(owner[lo]), int(owner[hi]))
            if key not in best or score > best[key][2]:
                best[key] = (lo, hi, score)
    return sorted(best.values(), key=lambda c: -c[2])


def _neighbourhood(frame: int, count: int, window: int) -> np.ndarray:
    return np.arange(max(0, frame - window), min(count, frame + window + 1))


def verify_loop(joint: "Reconstruction", first: np.ndarray, second: np.ndarray, stitched: "Reconstruction",
                min_overlap: float = 0.3, min_inliers: float = 0.5, seed: int = 0) -> tuple[bool, float, np.ndarray]:
    """Check a loop from ``joint``, one reconstruction of the frames ``first`` then ``second``
    (indices into ``stitched``). Returns ``(accepted, overlap, measurement)``: the overlap is the
    share of the second neighbourhood's confident points within a small distance of the first's;
    the measurement is ``T_first T_second^-1``, from the Sim(3) fits of each neighbourhood of
    ``joint`` onto ``stitched``."""
    n1 = len(first)
    fits = []
    for part, frames in ((slice(0, n1), first), (slice(n1, None), second)):
        weights = np.minimum(joint.depth_conf[part], stitched.depth_conf[frames])
        weights = np.where(joint.valid_mask[part] & stitched.valid_mask[frames], weights, 0.0)
        fits.append(fit_points_sim3(joint.points_from_depth[part], stitched.points_from_depth[frames], weights, seed=seed))
    if not all(f.ok and f.inliers >= min_inliers for f in fits):
        return False, 0.0, np.eye(4)
    conf = joint.depth_conf
    pts = joint.points_from_depth.astype(np.float64)
    a = pts[:n1][conf[:n1] >= np.median(conf[:n1])]
    b = pts[n1:][conf[n1:] >= np.median(conf[n1:])]
    rng = np.random.default_rng(seed)
    a = a[rng.choice(len(a), min(len(a), 20000), replace=False)]
    b = b[rng.choice(len(b), min(len(b), 20000), replace=False)]
    scale = float(np.median(np.linalg.norm(a - np.median(a, axis=0), axis=1)))
    overlap = float(np.mean(cKDTree(a).query(b)[0] <= 0.05 * scale)) if scale > 0 else 0.0
    measurement = sim3_matrix(fits[0].scale, fits[0].rotation, fits[0].translation) @ np.linalg.inv(
        sim3_matrix(fits[1].scale, fits[1].rotation, fits[1].translation))
    return overlap >= min_overlap, overlap, measurement


def _matrices(params: np.ndarray) -> np.ndarray:
    """``[K, 7]`` (rotation vector, translation, log scale) -> ``[K, 4, 4]`` Sim(3) matrices."""
    out = np.tile(np.eye(4), (len(params), 1, 1))
    out[:, :3, :3] = np.exp(params[:, 6])[:, None, None] * Rotation.from_rotvec(params[:, :3]).as_matrix()
    out[:, :3, 3] = params[:, 3:6]
    return out


def _logs(matrices: np.ndarray, unit: float) -> np.ndarray:
    """``[K, 4, 4]`` Sim(3) -> ``[K, 7]`` residual vectors (rotation vector, translation / ``unit``, log scale)."""
    s = np.cbrt(np.linalg.det(matrices[:, :3, :3]))
    rotvec = Rotation.from_matrix(matrices[:, :3, :3] / s[:, None, None]).as_rotvec()
    return np.concatenate([rotvec, matrices[:, :3, 3] / unit, np.log(s)[:, None]], axis=1)


def _inverse(matrices: np.ndarray) -> np.ndarray:
    """Inverse of ``[K, 4, 4]`` Sim(3) matrices (``[[sR, t], [0, 1]]`` -> ``[[R^T / s, -R^T t / s], [0, 1]]``)."""
    sr = matrices[:, :3, :3]
    s2 = np.einsum("kij,kij->k", sr, sr) / 3.0  # |sR|_F^2 = 3 s^2
    inv_sr = np.swapaxes(sr, 1, 2) / s2[:, None, None]
    out = np.tile(np.eye(4), (len(matrices), 1, 1))
    out[:, :3, :3] = inv_sr
    out[:, :3, 3] = -np.einsum("kij,kj->ki", inv_sr, matrices[:, :3, 3])
    return out


def optimise_chunks(chunks: int, loops: list[Loop], scene_scale: float, loop_weight: float = 1.0,
                    f_scale: float = 0.05) -> list[np.ndarray]:
    """One Sim(3) correction ``X_c`` (``[4, 4]``) per chunk, ``X_0`` the identity.

    Residuals: ``log(X_{c-1}^-1 X_c)`` for neighbouring chunks (they stay as stitched) and
    ``log(Z^-1 X_a^-1 X_b)`` for each loop's measurement ``Z``, translations in units of
    ``scene_scale``, with a Cauchy loss of scale ``f_scale``. Every residual depends on two chunks
    only, so the finite-difference Jacobian perturbs chunks that share no residual together: a few
    residual evaluations per Jacobian, whatever the number of chunks."""
    if not loops or chunks < 2:
        return [np.eye(4) for _ in range(chunks)]
    unit = max(scene_scale, 1e-12)
    first = np.r_[np.arange(chunks - 1), [loop.a for loop in loops]]
    second = np.r_[np.arange(1, chunks), [loop.b for loop in loops]]
    measured_inv = _inverse(np.stack([np.eye(4)] * (chunks - 1) + [loop.measurement for loop in loops]))
    weights = np.r_[np.ones(chunks - 1), np.full(len(loops), loop_weight)][:, None]

    def poses(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.eye(4)[None], _matrices(x.reshape(chunks - 1, 7))])

    def residuals(x: np.ndarray) -> np.ndarray:
        X = poses(x)
        relative = measured_inv @ _inverse(X[first]) @ X[second]
        return (weights * _logs(relative, unit)).ravel()

    # Finite differences by colour: nodes that share no residual are perturbed together, so a
    # Jacobian costs (colours x 7) residual evaluations; the dense trust-region solve stays exact.
    touching = [set() for _ in range(chunks)]
    for row, (a, b) in enumerate(zip(first, second)):
        touching[a].add(row)
        touching[b].add(row)
    neighbours = [set() for _ in range(chunks)]
    for a, b in zip(first, second):
        neighbours[a].add(b)
        neighbours[b].add(a)
    colour = np.full(chunks, -1)
    for node in range(1, chunks):
        used = {colour[n] for n in neighbours[node]}
        colour[node] = next(c for c in range(chunks) if c not in used)
    step = 1e-6

    def jacobian(x: np.ndarray) -> np.ndarray:
        base = residuals(x).reshape(-1, 7)
        jac = np.zeros((base.size, x.size))
        for c in range(int(colour.max()) + 1):
            nodes = np.flatnonzero(colour == c)
            for k in range(7):
                moved = x.copy()
                moved[(nodes - 1) * 7 + k] += step
                diff = (residuals(moved).reshape(-1, 7) - base) / step
                for node in nodes:
                    rows = sorted(touching[node])
                    jac[np.add.outer(np.array(rows) * 7, np.arange(7)).ravel(), (node - 1) * 7 + k] = diff[rows].ravel()
        return jac

    solution = least_squares(residuals, np.zeros((chunks - 1) * 7), jac=jacobian, loss="cauchy", f_scale=f_scale)
    return list(poses(solution.x))


def apply_corrections(rec: "Reconstruction", owner: np.ndarray, corrections: list[np.ndarray]) -> None:
    """Move each frame of ``rec`` (in place) by the correction of the chunk that placed it."""
    for index, X in enumerate(corrections):
        frames = np.flatnonzero(owner == index)
        if not len(frames) or np.allclose(X, np.eye(4)):
            continue
        for name, values in PointFit.from_matrix(X).move_frames(rec, frames).items():
            getattr(rec, name)[frames] = values


def close_loops(pipeline, prepared, rec: "Reconstruction", spans: list[tuple[int, int]], descriptors: np.ndarray,
                keep: float, seed: int = 0, window: int = 2, max_loops: int = 20, min_score: float = 0.0,
                min_overlap: float = 0.3) -> list[dict]:
    """Find, verify and apply loop closures on a stitched chunked reconstruction ``rec`` (in place).

    Args:
        descriptors: ``[S, D]`` place-recognition descriptors of the frames.
        window: frames on each side of a loop frame reconstructed with it for verification.
        max_loops: candidates verified at most (best first; each costs one forward pass).
        min_score, min_overlap: thresholds of :func:`loop_candidates` and :func:`verify_loop`.

    Returns one record per verified candidate (accepted or not) for the reconstruction's report.
    """
    count = len(prepared)
    owner = owner_chunks(spans, count)
    records, loops = [], []
    for i, j, score in loop_candidates(descriptors, spans, min_score)[:max_loops]:
        first, second = _neighbourhood(i, count, window), _neighbourhood(j, count, window)
        joint = pipeline.reconstruct(subset(prepared, np.r_[first, second]), keep=keep, seed=seed, progress=False)
        accepted, overlap, measurement = verify_loop(joint, first, second, rec, min_overlap=min_overlap, seed=seed)
        a, b = int(owner[i]), int(owner[j])
        records.append({"i": int(i), "j": int(j), "chunks": [a, b], "score": score, "overlap": overlap, "accepted": accepted})
        if accepted:
            loops.append(Loop(int(i), int(j), a, b, score, overlap, measurement))
    logger.info("loop closure: %d of %d candidates verified", len(loops), len(records))
    if loops:
        pts = rec.points_from_depth[rec.valid_mask].astype(np.float64)
        scene = float(np.median(np.linalg.norm(pts - np.median(pts, axis=0), axis=1))) if len(pts) else 1.0
        apply_corrections(rec, owner, optimise_chunks(len(spans), loops, scene))
    return records
