"""Chunked reconstruction (pacegeo.sequence): the robust point-map Sim(3), the stitching of chunks
against an exactly known scene, and the real pipeline with and without --chunk."""

import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pacegeo.errors import InputError
from pacegeo.geometry.transforms import invert_se3, sim3_matrix, umeyama
from pacegeo.reconstruction import Reconstruction
from pacegeo.sequence import check_chunking, chunk_spans, fit_points_sim3, reconstruct_in_chunks

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "synthrooms-16")


def _similarity(seed: int):
    rng = np.random.default_rng(seed)
    return float(rng.uniform(0.5, 2.0)), Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3)


# -- the point-map fit ---------------------------------------------------------------------------


def test_point_fit_recovers_a_known_similarity_despite_outliers():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(4000, 3)) * [2.0, 1.0, 3.0]
    s, R, t = _similarity(1)
    dst = s * src @ R.T + t + rng.normal(scale=0.01, size=src.shape)
    bad = rng.random(len(src)) < 0.3  # 30% of the pixels wrong in one chunk
    dst[bad] += rng.normal(scale=3.0, size=(bad.sum(), 3))
    fit = fit_points_sim3(src, dst)
    assert fit.ok and abs(fit.scale - s) < 0.01 * s
    assert np.degrees(np.arccos(np.clip((np.trace(fit.rotation.T @ R) - 1) / 2, -1, 1))) < 0.5
    assert np.allclose(fit.translation, t, atol=0.05)
    assert 0.6 < fit.inliers < 0.8  # the corrupted 30% are found out
    plain_scale, _, _ = umeyama(src, dst)  # plain least squares is pulled away by the same outliers
    assert abs(plain_scale - s) > 5 * abs(fit.scale - s)


def test_point_fit_follows_confidence_and_refuses_too_few_points():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(500, 3))
    s, R, t = _similarity(3)
    dst = s * src @ R.T + t
    dst[:250] = rng.normal(size=(250, 3)) * 10  # half wrong, but with zero confidence
    weights = np.r_[np.zeros(250), np.ones(250)]
    fit = fit_points_sim3(src, dst, weights, iterations=0)
    assert fit.ok and np.isclose(fit.scale, s) and np.allclose(fit.rotation, R, atol=1e-9)
    src[::2] = np.nan
    assert not fit_points_sim3(src[:100], dst[:100]).ok  # 50 finite pairs: below MIN_POINTS


def test_chunk_options_are_checked_where_they_enter():
    assert check_chunking(None, None) == (None, None)
    assert check_chunking(8, 3) == (8, 3)
    for chunk, overlap, message in ((1, None, "chunk must be"), (8, 8, "smaller than"), (None, 2, "needs"), (8, 0, "overlap must")):
        with pytest.raises(InputError, match=message):
            check_chunking(chunk, overlap)
    assert chunk_spans(20, 8, 3) == [(0, 8), (5, 13), (10, 18), (15, 20)]


# -- stitching, against a scene known exactly -----------------------------------------------------


@dataclass
class _Prepared:
    """The part of PreparedInputs the chunked reconstruction reads."""

    names: list
    images: torch.Tensor
    transforms: list
    paths: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    seconds: float = 0.0
    mode: str = "crop"

    def __len__(self):
        return len(self.names)


def _prepared(count: int) -> _Prepared:
    return _Prepared([f"{i:03d}" for i in range(count)], torch.zeros(count, 1), list(range(count)))


class _ExactPipeline:
    """Reconstructs any chunk of a known scene exactly, in the chunk's own frame: its first camera
    at the origin and its scale multiplied by a factor that differs from chunk to chunk."""

    weight_paths: list = []
    model, pruner, pruner_mode, device, amp_dtype = None, None, None, "cpu", None
    config = SimpleNamespace(name="exact")
    backbone = torch.nn.Linear(1, 1)

    def __init__(self, count: int, hw=(12, 16), seed: int = 0):
        rng = np.random.default_rng(seed)
        self.c2w = np.stack([np.eye(4)] * count)
        self.c2w[:, :3, :3] = Rotation.from_rotvec(rng.normal(scale=0.2, size=(count, 3))).as_matrix()
        self.c2w[:, :3, 3] = np.cumsum(rng.normal(scale=0.3, size=(count, 3)), axis=0)
        self.depth = rng.uniform(1.0, 4.0, size=(count, *hw))
        h, w = hw
        self.K = np.array([[20.0, 0, w / 2], [0, 20.0, h / 2], [0, 0, 1]])
        self.calls = []

    def reconstruct(self, prepared, keep=1.0, seed=0, progress=None, check_memory=True):
        idx = np.array([int(n) for n in prepared.names])
        self.calls.append((int(idx[0]), int(idx[-1]) + 1))
        scale = 1.0 + 0.25 * len(self.calls)
        to_chunk = invert_se3(self.c2w[idx[0]])  # world -> the chunk's first camera
        c2w = np.einsum("ij,sjk->sik", to_chunk, self.c2w[idx])
        c2w[:, :3, 3] *= scale
        depth = self.depth[idx] * scale
        s, h, w = depth.shape
        v, u = np.mgrid[0:h, 0:w]
        rays = np.stack([(u - self.K[0, 2]) / self.K[0, 0], (v - self.K[1, 2]) / self.K[1, 1], np.ones((h, w))], -1)
        points = np.einsum("sij,shwj->shwi", c2w[:, :3, :3], rays[None] * depth[..., None]) + c2w[:, None, None, :3, 3]
        points = points.astype(np.float32)
        return Reconstruction(
            depth=depth.astype(np.float32), depth_conf=np.full((s, h, w), 2.0, np.float32), world_points=points,
            world_points_conf=np.full((s, h, w), 2.0, np.float32), points_from_depth=points,
            colors=np.zeros((s, h, w, 3), np.uint8), valid_mask=np.ones((s, h, w), bool),
            extrinsics=invert_se3(c2w)[:, :3, :4].astype(np.float32), intrinsics=np.stack([self.K] * s).astype(np.float32),
            intrinsics_original=np.stack([self.K] * s), image_size=np.tile([h, w], (s, 1)),
            frame_names=list(prepared.names), keep=keep, timings={"inference": 1.0, "load": 2.0}, peak_memory=len(self.calls),
        )


def test_stitched_chunks_give_the_scene_in_the_first_cameras_frame():
    count = 20
    pipe = _ExactPipeline(count)
    rec = reconstruct_in_chunks(pipe, _prepared(count), chunk=8, overlap=3)
    assert pipe.calls == [(0, 8), (5, 13), (10, 18), (15, 20)]
    # the truth in the first camera's frame, at the first chunk's scale (1.25)
    truth = np.einsum("ij,sjk->sik", invert_se3(pipe.c2w[0]), pipe.c2w)
    truth[:, :3, 3] *= 1.25
    got = invert_se3(rec.extrinsics.astype(np.float64))
    assert np.allclose(got[:, :3, :3], truth[:, :3, :3], atol=1e-4)
    assert np.allclose(got[:, :3, 3], truth[:, :3, 3], atol=1e-3)
    assert np.allclose(rec.depth, 1.25 * pipe.depth, rtol=1e-4)
    assert np.array_equal(rec.depth[:8], (1.25 * pipe.depth[:8]).astype(np.float32))  # the first chunk as it came
    assert [c["start"] for c in rec.pruning["chunks"]] == [0, 5, 10, 15]
    assert all(c["fit"]["ok"] and c["fit"]["inliers"] > 0.99 for c in rec.pruning["chunks"])
    assert rec.timings["inference"] == 4.0 and rec.timings["load"] == 2.0 and rec.peak_memory == 4


def test_a_chunk_that_cannot_be_aligned_is_reported():
    pipe = _ExactPipeline(12)
    original = pipe.reconstruct

    def broken(prepared, **kwargs):
        rec = original(prepared, **kwargs)
        if int(prepared.names[0]) > 0:
            rec.depth_conf[:] = 0.0  # no usable point in the shared frames
        return rec

    pipe.reconstruct = broken
    with pytest.raises(InputError, match=r"chunk 2 \(frames 4-11\) cannot be aligned.*overlap"):
        reconstruct_in_chunks(pipe, _prepared(12), chunk=8, overlap=4)


# -- the real pipeline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipeline():
    from pacegeo import Pipeline

    return Pipeline.from_pretrained("pacegeo-tiny", device="cpu", dtype="float32")


def test_chunk_as_long_as_the_sequence_is_the_single_pass(tiny_pipeline):
    prepared = tiny_pipeline.prepare(EXAMPLE, frames=6)
    plain = tiny_pipeline.reconstruct(prepared, keep=0.5)
    same = tiny_pipeline.reconstruct(prepared, keep=0.5, chunk=6)
    for name in ("depth", "extrinsics", "world_points"):
        assert np.array_equal(getattr(plain, name), getattr(same, name))
    assert "chunks" not in same.pruning


def test_chunked_pipeline_keeps_the_first_chunk_and_places_the_rest(tiny_pipeline):
    prepared = tiny_pipeline.prepare(EXAMPLE, frames=10)
    rec = tiny_pipeline.reconstruct(prepared, keep=0.5, chunk=6, overlap=3)
    first = tiny_pipeline.reconstruct(replace(prepared, images=prepared.images[:6], transforms=prepared.transforms[:6],
                                              names=prepared.names[:6]), keep=0.5)
    assert len(rec) == 10 and rec.frame_names == prepared.names
    assert np.array_equal(rec.depth[:6], first.depth) and np.array_equal(rec.extrinsics[:6], first.extrinsics)
    second = rec.pruning["chunks"][1]
    assert (second["start"], second["end"]) == (3, 9) and second["fit"]["ok"] and second["fit"]["inliers"] > 0.5
    assert np.isfinite(rec.extrinsics).all() and np.isfinite(rec.points_from_depth).all()


def test_cli_reconstructs_in_chunks(tmp_path):
    out = tmp_path / "scene.ply"
    run = subprocess.run([sys.executable, "-m", "pacegeo", "reconstruct", EXAMPLE, "--frames", "10",
                          "--chunk", "6", "--overlap", "3", "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "in 3 chunks of up to 6 frames (3 shared)" in run.stdout and out.stat().st_size > 1000
    looped = subprocess.run([sys.executable, "-m", "pacegeo", "reconstruct", EXAMPLE, "--chunk", "6", "--overlap", "2",
                             "--loops", "-o", str(tmp_path / "loops.ply")], capture_output=True, text=True)
    assert looped.returncode == 0, looped.stderr
    assert "loop closure:" in looped.stdout and "candidate loops verified and applied" in looped.stdout
    bad = subprocess.run([sys.executable, "-m", "pacegeo", "reconstruct", EXAMPLE, "--overlap", "3",
                          "-o", str(tmp_path / "x.ply")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "pacegeo: error: --overlap needs --chunk"


# -- resume and processes ---------------------------------------------------------------------------


def test_a_failed_run_resumes_from_its_finished_chunks(tmp_path):
    count = 20
    reference = reconstruct_in_chunks(_ExactPipeline(count), _prepared(count), chunk=8, overlap=3)
    pipe = _ExactPipeline(count)
    original = pipe.reconstruct

    def dies_on_the_third_chunk(prepared, **kwargs):
        if int(prepared.names[0]) == 10:
            raise InputError("out of memory (simulated)")
        return original(prepared, **kwargs)

    pipe.reconstruct = dies_on_the_third_chunk
    with pytest.raises(InputError, match=r"chunk 3 of 4 \(frames 10-17\) failed: out of memory.*rerun the same command"):
        reconstruct_in_chunks(pipe, _prepared(count), chunk=8, overlap=3, work_dir=tmp_path)
    assert sorted(p.name for p in next(tmp_path.iterdir()).iterdir()) == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.failed"]
    pipe.reconstruct = original
    pipe.calls.clear()
    resumed = reconstruct_in_chunks(pipe, _prepared(count), chunk=8, overlap=3, work_dir=tmp_path)
    assert [c[0] for c in pipe.calls] == [10, 15]  # the finished chunks are read, not recomputed
    # the scales of the fake differ by call order; what must hold is the stitched geometry
    assert np.allclose(resumed.extrinsics[:, :3, :3], reference.extrinsics[:, :3, :3], atol=1e-4)
    assert np.allclose(resumed.depth, reference.depth, rtol=1e-4)
    assert list(tmp_path.iterdir()) == []  # cleared after the successful stitch


def test_two_processes_give_the_single_process_result(tmp_path):
    """What ``accelerate launch --num_processes 2`` sets up: RANK and WORLD_SIZE per process."""
    import os

    common = [sys.executable, "-m", "pacegeo", "reconstruct", EXAMPLE, "--frames", "12", "--chunk", "5", "--overlap", "2",
              "--export", "npz", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run(common + ["-o", str(tmp_path / "single.ply")], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    procs = [subprocess.Popen(common + ["-o", str(tmp_path / "multi.ply"), "--work-dir", str(tmp_path / "work")],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2"), stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert not (tmp_path / "multi_1.npz").exists() and not (tmp_path / "multi.npz.tmp").exists()
    with np.load(tmp_path / "single.npz") as a, np.load(tmp_path / "multi.npz") as b:
        assert a.files == b.files
        for name in a.files:
            assert np.array_equal(a[name], b[name]), name
    refused = subprocess.run(common + ["-o", str(tmp_path / "x.ply")], env=dict(env, RANK="0", WORLD_SIZE="2"),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--work-dir they all share" in refused.stderr


# -- loop closure ----------------------------------------------------------------------------------


class _RoomPipeline(_ExactPipeline):
    """Cameras walking a circle inside a box room and looking ahead, so the last frames see what the
    first ones saw. A chunk's reconstruction bends: its k-th frame is turned by k * ``bend`` degrees
    about the vertical axis through the chunk's first camera (the drift that loop closure removes).
    Reconstructions of non-consecutive frames (loop verification) are exact."""

    def __init__(self, count: int, bend: float = 1.5, hw=(24, 32)):
        self.calls, self.bend = [], bend
        yaw = np.linspace(0, 2 * np.pi, count, endpoint=False)
        self.c2w = np.stack([np.eye(4)] * count)
        for k, a in enumerate(yaw):
            forward = np.array([-np.sin(a), 0.0, np.cos(a)])  # tangent of the circle
            right = np.cross([0.0, -1.0, 0.0], forward)
            self.c2w[k, :3, :3] = np.stack([right, [0.0, 1.0, 0.0], forward], 1) @ Rotation.from_euler("y", 20, degrees=True).as_matrix()
            self.c2w[k, :3, 3] = [2.0 * np.cos(a), 0.0, 2.0 * np.sin(a)]
        h, w = hw
        self.K = np.array([[16.0, 0, w / 2], [0, 16.0, h / 2], [0, 0, 1]])
        v, u = np.mgrid[0:h, 0:w]
        rays = np.stack([(u - self.K[0, 2]) / self.K[0, 0], (v - self.K[1, 2]) / self.K[1, 1], np.ones((h, w))], -1)
        dirs = np.einsum("sij,hwj->shwi", self.c2w[:, :3, :3], rays)
        centres = self.c2w[:, None, None, :3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            hits = np.stack([(np.sign(dirs[..., a]) * 5.0 - centres[..., a]) / dirs[..., a] for a in range(3)], -1)
        self.depth = np.min(np.where(hits > 0, hits, np.inf), axis=-1)  # z-depth: rays have unit z

    def reconstruct(self, prepared, keep=1.0, seed=0, progress=None, check_memory=True):
        rec = super().reconstruct(prepared, keep=keep)
        idx = np.array([int(n) for n in prepared.names])
        if np.all(np.diff(idx) == 1):  # a chunk: bend it
            c2w = invert_se3(rec.extrinsics.astype(np.float64))
            for k in range(1, len(idx)):
                R = Rotation.from_euler("y", k * self.bend, degrees=True).as_matrix()
                pts = rec.points_from_depth[k].astype(np.float64)
                rec.points_from_depth[k] = pts @ R.T
                rec.world_points[k] = rec.points_from_depth[k]
                c2w[k, :3, :3] = R @ c2w[k, :3, :3]
                c2w[k, :3, 3] = R @ c2w[k, :3, 3]
            rec.extrinsics = invert_se3(c2w)[:, :3, :4].astype(np.float32)
        return rec


def _ate(pipe, rec) -> float:
    """RMS camera-position error against the truth after a Sim(3) fit of all positions."""
    truth = pipe.c2w[:, :3, 3]
    got = invert_se3(rec.extrinsics.astype(np.float64))[:, :3, 3]
    s, R, t = umeyama(got, truth)
    return float(np.sqrt(np.mean(np.sum((s * got @ R.T + t - truth) ** 2, axis=1))))


def _owner(spans, frame: int) -> int:
    return next(index for index, (start, end) in enumerate(spans) if start <= frame < end)


def test_loop_closure_removes_the_drift_of_a_loop():
    from pacegeo.sequence.loops import close_loops, loop_candidates

    count = 32
    pipe = _RoomPipeline(count, bend=0.5)
    spans = chunk_spans(count, 8, 2)
    drifted = reconstruct_in_chunks(pipe, _prepared(count), chunk=8, overlap=2)
    yaw = np.linspace(0, 2 * np.pi, count, endpoint=False)
    descriptors = np.stack([np.cos(yaw), np.sin(yaw)], 1)  # where each frame stands on the circle
    candidates = loop_candidates(descriptors, spans)
    assert candidates[0][:2] == (0, count - 1)  # the walk's end meets its start
    assert all(abs(_owner(spans, i) - _owner(spans, j)) >= 2 for i, j, _ in candidates)
    before = _ate(pipe, drifted)
    records = close_loops(pipe, _prepared(count), drifted, spans, descriptors, keep=1.0)
    assert records[0]["accepted"] and records[0]["chunks"] == [0, len(spans) - 1]
    after = _ate(pipe, drifted)
    assert after < 0.5 * before, (before, after)


def test_pose_graph_shrugs_off_a_wrong_loop():
    from pacegeo.sequence.loops import Loop, optimise_chunks

    truth = [sim3_matrix(1.0, Rotation.from_euler("y", 3 * c, degrees=True).as_matrix(), [0.1 * c, 0, 0]) for c in range(6)]
    good = [Loop(0, 0, a, b, 1.0, 1.0, np.linalg.inv(truth[a]) @ truth[b]) for a, b in ((0, 5), (1, 5), (0, 4))]
    wrong = Loop(0, 0, 0, 3, 1.0, 1.0, sim3_matrix(1.5, Rotation.from_euler("x", 60, degrees=True).as_matrix(), [3, 1, 0]))
    solved = optimise_chunks(6, good + [wrong], scene_scale=1.0, loop_weight=10.0)
    angle = np.degrees(Rotation.from_matrix((solved[5][:3, :3] @ truth[5][:3, :3].T)).magnitude())
    # a plain least-squares solve is pulled to 0.30 deg and 0.0031 by the wrong loop; the Cauchy loss holds
    assert angle < 0.15 and np.linalg.norm(solved[5][:3, 3] - truth[5][:3, 3]) < 0.0015
