"""Localize-then-map: map files, retrieval of a map frame, the Sim(3) chaining, and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from pacegeo.backbone import VGGT, tiny
from pacegeo.cli import main
from pacegeo.errors import InputError
from pacegeo.hub import save_backbone
from pacegeo.localize import MapStore, chunk_spans, fit_sim3, localization_confidence
from pacegeo.geometry.transforms import apply_sim3_to_c2w, invert_se3
from pacegeo.pipeline import Pipeline

TARGET = 70  # 56x70 model input, a 4x5 patch grid


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tensors here are tiny: one thread avoids OpenMP spin-waiting on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_frames(folder: Path, count: int = 6, seed: int = 0, prefix: str = "frame") -> list[Path]:
    """Distinct 56x70 PNGs (random blocks of colour, a different palette per frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        blocks = rng.integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
        rgb = np.kron(blocks, np.ones((14, 14, 1), np.uint8))
        rgb = np.clip(rgb.astype(int) + rng.integers(-10, 10, size=rgb.shape), 0, 255).astype(np.uint8)
        path = folder / f"{prefix}_{i:02d}.png"
        Image.fromarray(rgb).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_backbone(VGGT(tiny()).eval(), path, extra={"preprocess": json.dumps({"target_size": TARGET, "mode": "crop"})})


@pytest.fixture(scope="module")
def pipe(model_path) -> Pipeline:
    return Pipeline.from_pretrained(model_path, pruner="training-free", device="cpu", target_size=TARGET)


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    write_frames(folder)
    return folder


@pytest.fixture(scope="module")
def store(pipe, frames) -> MapStore:
    return pipe.build_map(frames, keep=0.5, vpr="gem")


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pacegeo: error: ") and fragment in lines[0], lines[0]


# -- the map ---------------------------------------------------------------------------------


def test_map_contents(store, frames):
    assert len(store) == 6 and store.names == tuple(f"frame_{i:02d}.png" for i in range(6))
    assert store.image_hw == (56, 70) and store.images.dtype == np.uint8
    assert store.descriptors.shape == (6, 64) and np.allclose(np.linalg.norm(store.descriptors, axis=1), 1, atol=1e-5)
    assert np.allclose(store.cam_to_world[0], np.eye(4), atol=1e-5)  # first map frame = identity
    assert np.isfinite(store.cam_to_world).all() and np.isfinite(store.intrinsics).all()
    assert store.vpr == "gem" and store.vpr_identity.startswith("gem")
    # the stored images are the model inputs exactly
    original = np.array(Image.open(frames / "frame_03.png"))
    assert np.array_equal(store.images[3], original)


def test_map_save_load_round_trip(store, tmp_path):
    path = store.save(tmp_path / "room.pgmap")
    assert [p.name for p in tmp_path.iterdir()] == ["room.pgmap"]  # no temporary file left
    loaded = MapStore.load(path)
    assert loaded.source == str(path) and loaded.names == store.names
    for name in ("descriptors", "cam_to_world", "intrinsics", "images", "content_box", "original_hw", "depth_median"):
        assert np.array_equal(getattr(loaded, name), getattr(store, name)), name
    assert loaded.meta() == store.meta()


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match="map file not found"):
        MapStore.load(tmp_path / "absent.pgmap")
    (tmp_path / "text.pgmap").write_text("hello")
    with pytest.raises(InputError, match="is not a pacegeo map"):
        MapStore.load(tmp_path / "text.pgmap")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(InputError, match="is not a pacegeo map"):
        MapStore.load(tmp_path / "other.npz")


def test_map_of_another_model_is_refused(store, model_path, tmp_path):
    torch.manual_seed(1)
    other = save_backbone(VGGT(tiny()).eval(), tmp_path / "other.safetensors")
    other_pipe = Pipeline.from_pretrained(other, pruner="training-free", device="cpu", target_size=TARGET)
    with pytest.raises(InputError, match="was built with model"):
        other_pipe.localize(store.images[:1], store=store)


def test_chunked_map_places_every_frame(pipe, frames):
    chunked = pipe.build_map(frames, keep=0.5, chunk=4, overlap=2, vpr="gem")
    assert chunked.chunk == 4 and chunked.overlap == 2
    assert np.isfinite(chunked.cam_to_world).all()
    assert np.allclose(chunked.cam_to_world[0], np.eye(4), atol=1e-5)


def test_chunk_spans_cover_with_overlap():
    assert chunk_spans(10, None) == [(0, 10)]
    assert chunk_spans(48, 16, 4) == [(0, 16), (12, 28), (24, 40), (36, 48)]
    for count in range(5, 60):
        spans = chunk_spans(count, 8, 3)
        assert spans[0][0] == 0 and spans[-1][1] == count
        assert all(b[0] == a[1] - 3 for a, b in zip(spans, spans[1:]))


# -- localization ----------------------------------------------------------------------------


def test_localizing_a_map_frame_retrieves_it_first(pipe, store, frames):
    locs = pipe.localize([frames / "frame_02.png", frames / "frame_04.png"], store=store, top_k=3)
    assert [loc.name for loc in locs] == ["frame_02.png", "frame_04.png"]
    for loc, index in zip(locs, (2, 4)):
        assert loc.retrieved[0] == f"frame_{index:02d}.png" and loc.retrieved_indices[0] == index
        assert loc.scores[0] == pytest.approx(1.0, abs=1e-4) and len(loc.retrieved) == 3
        assert np.array_equal(loc.retrieval_cam_to_world, store.cam_to_world[index])
        assert loc.cam_to_world.shape == (4, 4) and np.isfinite(loc.cam_to_world).all()
        assert 0.0 <= loc.confidence <= 1.0
        json.dumps(loc.to_dict())


def test_localize_uses_the_last_map_by_default(model_path, frames):
    fresh = Pipeline.from_pretrained(model_path, pruner="training-free", device="cpu", target_size=TARGET)
    with pytest.raises(InputError, match="no map"):
        fresh.localize([frames / "frame_00.png"])
    fresh.build_map(frames, vpr="gem")
    assert fresh.localize([frames / "frame_00.png"], top_k=2)[0].retrieved[0] == "frame_00.png"


# -- the Sim(3) chaining ---------------------------------------------------------------------


def random_c2w(rng, n: int, spread: float = 2.0) -> np.ndarray:
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = Rotation.random(n, random_state=int(rng.integers(1 << 31))).as_matrix()
    poses[:, :3, 3] = rng.normal(size=(n, 3)) * spread
    return poses


@pytest.mark.parametrize("layout", ["general", "collinear", "two", "single"])
def test_sim3_chaining_recovers_the_query_pose_exactly(layout):
    rng = np.random.default_rng(7)
    n = {"general": 4, "collinear": 4, "two": 2, "single": 1}[layout]
    stored = random_c2w(rng, n)  # map frames in the map frame
    if layout == "collinear":
        stored[:, :3, 3] = np.array([1.0, -2.0, 0.5]) + np.linspace(0, 3, n)[:, None] * np.array([0.6, 0.0, 0.8])
    query = random_c2w(rng, 1)[0]  # ground truth in the map frame
    depth_map = rng.uniform(1, 3, size=n)
    # The joint reconstruction's frame: map frame -> reconstruction by a known similarity.
    s, R, t = 0.37, Rotation.random(random_state=3).as_matrix(), np.array([0.4, -1.2, 2.0])
    predicted = apply_sim3_to_c2w(stored, s, R, t)
    predicted_query = apply_sim3_to_c2w(query[None], s, R, t)[0]
    fit = fit_sim3(predicted, stored, depth_map * s, depth_map)
    expected = {"general": "umeyama", "collinear": "rotation-mean", "two": "rotation-mean", "single": "single-frame"}
    assert fit.method == expected[layout]
    assert fit.scale == pytest.approx(1 / s, rel=1e-9)
    recovered = fit.apply_c2w(predicted_query[None])[0]
    assert np.allclose(recovered, query, atol=1e-9)
    assert fit.residual < 1e-9 and fit.rotation_residual_deg < 1e-5
    assert localization_confidence(1.0, fit) == pytest.approx({"umeyama": 1.0, "rotation-mean": 0.5, "single-frame": 0.25}[fit.method], rel=1e-6)


def test_sim3_fit_of_w2c_extrinsics_chains_through_inversion():
    """Predicted extrinsics are world-to-camera: inverting them gives the poses the fit expects."""
    rng = np.random.default_rng(2)
    stored = random_c2w(rng, 5)
    s, R, t = 2.5, Rotation.random(random_state=5).as_matrix(), np.array([0.0, 1.0, -3.0])
    extrinsics = invert_se3(apply_sim3_to_c2w(stored, s, R, t))[:, :3, :]
    fit = fit_sim3(invert_se3(extrinsics), stored)
    assert np.allclose(fit.apply_c2w(invert_se3(extrinsics)), stored, atol=1e-9)


def test_noisy_fit_lowers_confidence():
    rng = np.random.default_rng(4)
    stored = random_c2w(rng, 4)
    noisy = stored.copy()
    noisy[:, :3, 3] += rng.normal(size=(4, 3)) * 0.5
    clean_fit, noisy_fit = fit_sim3(stored, stored), fit_sim3(noisy, stored)
    assert noisy_fit.residual > clean_fit.residual
    assert localization_confidence(0.9, noisy_fit) < localization_confidence(0.9, clean_fit)
    nan_fit = fit_sim3(np.full((3, 4, 4), np.nan), stored[:3])
    assert nan_fit.method == "failed" and localization_confidence(1.0, nan_fit) == 0.0


# -- the command line ------------------------------------------------------------------------


def test_cli_map_then_localize(model_path, frames, tmp_path, capsys):
    out = tmp_path / "room.pgmap"
    code, stdout, err = run(["map", frames, "-o", out, "--model", model_path, "--vpr", "gem", "--quiet"], capsys)
    assert code == 0, err
    assert MapStore.load(out).names[0] == "frame_00.png"
    report = tmp_path / "loc.json"
    code, stdout, err = run(["localize", out, frames / "frame_01.png", "--top-k", "2", "--json", report], capsys)
    assert code == 0, err
    assert "frame_01.png: position (" in stdout and "retrieved: frame_01.png (1.000)" in stdout
    data = json.loads(report.read_text())
    assert data["queries"][0]["retrieved"][0]["name"] == "frame_01.png"


def test_cli_map_refuses_existing_output(model_path, frames, tmp_path, capsys):
    out = tmp_path / "room.pgmap"
    out.write_bytes(b"x")
    code, _, err = run(["map", frames, "-o", out, "--model", model_path], capsys)
    assert_one_line_error(code, err, "already exists")
    code, _, err = run(["map", frames, "-o", tmp_path / "room.npz", "--model", model_path], capsys)
    assert_one_line_error(code, err, "must end in .pgmap")
    code, _, err = run(["map", tmp_path / "nothing", "-o", tmp_path / "new.pgmap"], capsys)
    assert_one_line_error(code, err, "input not found")


def test_cli_localize_missing_map(frames, tmp_path, capsys):
    code, _, err = run(["localize", tmp_path / "absent.pgmap", frames], capsys)
    assert_one_line_error(code, err, "map file not found")


def test_cli_localize_not_a_map(frames, tmp_path, capsys):
    bogus = tmp_path / "bogus.pgmap"
    bogus.write_text("not a map")
    code, _, err = run(["localize", bogus, frames], capsys)
    assert_one_line_error(code, err, "is not a pacegeo map")


def test_cli_localize_empty_query_folder(store, tmp_path, capsys):
    path = store.save(tmp_path / "room.pgmap")
    (tmp_path / "empty").mkdir()
    code, _, err = run(["localize", path, tmp_path / "empty"], capsys)
    assert_one_line_error(code, err, "no image files in query folder")
    code, _, err = run(["localize", path, tmp_path / "absent.png"], capsys)
    assert_one_line_error(code, err, "query not found")
    code, _, err = run(["localize", path, tmp_path / "room.pgmap", "--top-k", "0"], capsys)
    assert_one_line_error(code, err, "--top-k")
    with pytest.raises(SystemExit) as exit_info:
        main(["localize", str(path)])
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "required")
