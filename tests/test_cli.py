"""`pacegeo reconstruct`: outputs, the summary, and one clear error line for every bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pacegeo.backbone import VGGT, config_to_dict, tiny
from pacegeo.cli import main
from pacegeo.hub import CHECKPOINT_FORMAT, load_backbone
from pacegeo.io.images import load_images

from helpers import TARGET, write_frames

REPO_ROOT = Path(__file__).resolve().parents[1]

# The tensors here are tiny: one thread avoids OpenMP spin-waiting on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def work(tmp_path) -> Path:
    """``frames/`` with four PNGs and an empty ``out/``."""
    write_frames(tmp_path / "frames")
    (tmp_path / "out").mkdir()
    return tmp_path


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"") for p in sorted(folder.rglob("*"))}


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pacegeo: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# Successful runs
# --------------------------------------------------------------------------------------------


def test_reconstruct_writes_every_export_and_a_summary(work, model_path, capsys):
    import open3d as o3d
    import trimesh

    out = work / "out"
    code, stdout, err = run(
        ["reconstruct", work / "frames", "--keep", "0.3", "-o", out / "scene.ply", "--model", model_path,
         "--conf", "0", "--export", "glb,colmap,npz,cameras", "--preview", out / "preview.png"],
        capsys,
    )
    assert code == 0, err
    assert err == ""
    names = sorted(p.name for p in out.iterdir())
    assert names == ["preview.png", "scene.glb", "scene.npz", "scene.ply", "scene_cameras.json", "scene_colmap"]
    for fragment in ("reconstructed 4 frames", "tokens per frame: 6 of 20 patch tokens kept", "time: load",
                     "peak memory", "points written: 15,680", "files written"):
        assert fragment in stdout, stdout

    data = np.load(out / "scene.npz")
    cloud = o3d.io.read_point_cloud(str(out / "scene.ply"))
    assert len(cloud.points) == 4 * 56 * 70 and cloud.has_colors()
    np.testing.assert_allclose(np.asarray(cloud.points), data["points_from_depth"].reshape(-1, 3), rtol=1e-6, atol=1e-6)
    rgb = np.round(np.asarray(cloud.colors) * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb, data["colors"].reshape(-1, 3))

    scene = trimesh.load(str(out / "scene.glb"), file_type="glb")
    assert len([g for g in scene.geometry if g.startswith("camera_")]) == 4
    assert len(scene.geometry["points"].vertices) == len(cloud.points)

    cameras_txt = (out / "scene_colmap" / "cameras.txt").read_text().splitlines()
    assert [line.split()[1:4] for line in cameras_txt if not line.startswith("#")] == [["PINHOLE", "70", "56"]] * 4
    images_txt = [line for line in (out / "scene_colmap" / "images.txt").read_text().splitlines() if not line.startswith("#")]
    assert [line.split()[9] for line in images_txt[::2]] == [f"frame_{i:02d}.png" for i in range(4)]
    points_txt = [line for line in (out / "scene_colmap" / "points3D.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(points_txt) == len(cloud.points)

    cameras = json.loads((out / "scene_cameras.json").read_text())
    assert list(cameras) == [f"frame_{i:02d}.png" for i in range(4)]
    assert data["depth"].shape == (4, 56, 70) and data["frame_names"].tolist() == list(cameras)
    with Image.open(out / "preview.png") as img:
        assert img.format == "PNG"
    assert not [p for p in out.rglob(".*")]  # no temporary files


def test_keep_one_matches_the_unpruned_model(work, model_path, capsys):
    out = work / "out"
    code, stdout, err = run(
        ["reconstruct", work / "frames", "--keep", "1", "-o", out / "scene.ply", "--model", model_path,
         "--conf", "0", "--export", "npz", "-q", "--dtype", "float32"],
        capsys,
    )
    assert code == 0, err
    assert stdout == ""
    backbone = load_backbone(model_path)
    images = load_images(work / "frames", target_size=TARGET).images
    with torch.inference_mode():
        expected = backbone(images[None])
    data = np.load(out / "scene.npz")
    np.testing.assert_array_equal(data["depth"], expected["depth"][0, ..., 0].numpy())
    np.testing.assert_array_equal(data["world_points"], expected["world_points"][0].numpy())
    assert data["kept_per_frame"].tolist() == [20] * 4


def test_overwrite_replaces_outputs(work, model_path, capsys):
    args = ["reconstruct", work / "frames", "-o", work / "out" / "scene.ply", "--model", model_path,
            "--conf-percentile", "50", "--export", "colmap,npz", "-q"]
    assert run(args, capsys)[0] == 0
    code, _, err = run(args + ["--overwrite", "--max-points", "100"], capsys)
    assert code == 0, err
    points = [line for line in (work / "out" / "scene_colmap" / "points3D.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(points) == 100


def test_a_corrupt_image_is_skipped_with_a_warning(work, model_path, capsys):
    (work / "frames" / "frame_02.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, stdout, err = run(
        ["reconstruct", work / "frames", "-o", work / "out" / "scene.ply", "--model", model_path, "--conf", "0"], capsys
    )
    assert code == 0, err
    assert "pacegeo: warning: skipping unreadable image" in err and "frame_02.png" in err
    assert "reconstructed 3 frames" in stdout and "skipped 1 unreadable input(s): frame_02.png" in stdout


def test_video_input(work, model_path, capsys):
    import av

    video = work / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 70, 56, "yuv420p"
        for i in range(20):
            rgb = np.full((56, 70, 3), (10 * i, 80, 160), np.uint8)
            rgb[:, : 3 * i + 5] = (200, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    code, stdout, err = run(
        ["reconstruct", video, "--fps", "2", "-o", work / "out" / "scene.ply", "--model", model_path, "--conf", "0",
         "--export", "cameras"],
        capsys,
    )
    assert code == 0, err
    assert "reconstructed 4 frames from video" in stdout
    assert list(json.loads((work / "out" / "scene_cameras.json").read_text())) == [
        "clip_0000000ms.png", "clip_0000500ms.png", "clip_0001000ms.png", "clip_0001500ms.png"
    ]


def test_auto_model_prints_the_pacegeo_tiny_notice(work, model_path, capsys, monkeypatch):
    import pacegeo.hub

    bundled = work / "checkpoints"
    bundled.mkdir()
    (bundled / "pacegeo-tiny.safetensors").write_bytes(model_path.read_bytes())
    monkeypatch.setenv("PACEGEO_CHECKPOINTS", str(bundled))
    monkeypatch.setattr(pacegeo.hub, "is_available_locally", lambda name, cache_dir=None: False)
    code, stdout, err = run(["reconstruct", work / "frames", "-o", work / "out" / "scene.ply", "--conf", "0"], capsys)
    assert code == 0, err
    assert err.startswith("pacegeo: note: using pacegeo-tiny") and "VGGT-1B" in err and len(err.strip().splitlines()) == 1
    assert "pacegeo-tiny, training-free pruning" in stdout


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_real_photos(shared_dir, tmp_path, model_path, mode, capsys):
    for name, extra in (("kitchen", ["--frames", "3"]), ("room", [])):
        folder = shared_dir / "data" / "images" / name
        out = tmp_path / f"{name}.ply"
        args = ["reconstruct", folder, "-o", out, "--model", model_path, "--mode", mode, "--conf-percentile", "50", *extra]
        if name == "kitchen" and mode == "crop":
            args += ["--preview", tmp_path / "kitchen.png"]
        code, stdout, err = run(args, capsys)
        assert code == 0, err
        assert "Traceback" not in err and "error" not in err
        assert out.stat().st_size > 1000
        frames = 3 if name == "kitchen" else len([p for p in folder.iterdir() if not p.name.startswith(".")])
        assert f"reconstructed {frames} frames" in stdout


# --------------------------------------------------------------------------------------------
# Bad inputs: one line, exit code 2, nothing written
# --------------------------------------------------------------------------------------------


def _wrong_architecture(folder: Path) -> Path:
    """A checkpoint whose recorded architecture (width 32) does not match its tensors (width 64)."""
    state = {k: v.contiguous() for k, v in VGGT(tiny()).state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "config": json.dumps(config_to_dict(tiny(embed_dim=32)))}
    path = folder / "wrong.safetensors"
    save_file(state, str(path), metadata=meta)
    return path


BAD_CASES = {
    "keep zero": (lambda w: ["--keep", "0"], "keep must be in (0, 1]"),
    "keep above one": (lambda w: ["--keep", "1.5"], "keep must be in (0, 1]"),
    "keep negative": (lambda w: ["--keep", "-0.2"], "keep must be in (0, 1]"),
    "keep nan": (lambda w: ["--keep", "nan"], "keep must be in (0, 1]"),
    "missing folder": (lambda w: ["--input", w / "nowhere"], "input not found"),
    "empty folder": (lambda w: ["--input", w / "empty"], "no image files in folder"),
    "only corrupt images": (lambda w: ["--input", w / "corrupt"], "no readable images"),
    "corrupt image with --strict": (lambda w: ["--input", w / "mixed", "--strict"], "cannot read image"),
    "unsupported video": (lambda w: ["--input", w / "bad.mp4"], "cannot read video"),
    "unsupported file": (lambda w: ["--input", w / "notes.txt"], "unsupported input"),
    "fps on a folder": (lambda w: ["--fps", "2"], "fps applies to video input only"),
    "output folder missing": (lambda w: ["-o", w / "out" / "missing" / "scene.ply"], "does not exist"),
    "output folder is a file": (lambda w: ["-o", w / "notes.txt" / "scene.ply"], "is not a folder"),
    "output not a ply": (lambda w: ["-o", w / "out" / "scene.obj"], "output must be a .ply file"),
    "unknown export": (lambda w: ["--export", "glb,fbx"], "unknown export format 'fbx'"),
    "wrong architecture": (lambda w: ["--model", _wrong_architecture(w)], "does not match the model architecture"),
    "missing checkpoint": (lambda w: ["--model", w / "missing.safetensors"], "missing.safetensors not found"),
    "keep without pruner": (lambda w: ["--pruner", "none", "--keep", "0.5"], "needs a pruner"),
    "unknown pruner": (lambda w: ["--pruner", "magic"], "unknown pruner"),
    "no point passes the confidence": (lambda w: ["--conf", "1000"], "no points pass the confidence filter"),
    "bad percentile": (lambda w: ["--conf-percentile", "100"], "--conf-percentile must be in [0, 100)"),
    "bad frames": (lambda w: ["--frames", "0"], "--frames must be a positive integer"),
    "target size": (lambda w: ["--target-size", "50"], "multiple of 14"),
    "cuda missing": (lambda w: ["--device", "cuda:7"], "cuda"),
}


@pytest.fixture
def bad_inputs(work, model_path) -> Path:
    (work / "empty").mkdir()
    (work / "corrupt").mkdir()
    (work / "corrupt" / "a.png").write_bytes(b"not a png")
    write_frames(work / "mixed", count=2)
    (work / "mixed" / "frame_01.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (work / "bad.mp4").write_bytes(b"this is not a video" * 50)
    (work / "notes.txt").write_text("hello")
    return work


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_gives_one_error_line(case, bad_inputs, model_path, capsys, monkeypatch):
    if case == "cuda missing" and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    work = bad_inputs
    extra, fragment = BAD_CASES[case]
    options = [str(a) for a in extra(work)]
    source = work / "frames"
    if "--input" in options:
        i = options.index("--input")
        source = options[i + 1]
        del options[i : i + 2]
    output = work / "out" / "scene.ply"
    if "-o" in options:
        i = options.index("-o")
        output = options[i + 1]
        del options[i : i + 2]
    argv = ["reconstruct", source, "-o", output, "--model", model_path]
    if "--model" in options:
        argv = argv[:-2]
    argv += options
    before = listing(work)
    code, stdout, err = run(argv, capsys)
    assert_one_line_error(code, err, fragment)
    assert listing(work) == before  # nothing written, nothing left behind


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--keep", "abc"], "argument --keep: invalid float value"),
        (["--frames", "2", "--stride", "3"], "not allowed with argument"),
        (["--mode", "square"], "invalid choice"),
        (["--conf", "1", "--conf-percentile", "50"], "not allowed with argument"),
    ],
)
def test_usage_errors_are_one_line_too(options, fragment, work, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reconstruct", str(work / "frames"), "-o", str(work / "out" / "scene.ply"), *options])
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, fragment)
    assert list((work / "out").iterdir()) == []


def test_unwritable_output_folder_is_refused_before_any_work(work, model_path, capsys, monkeypatch):
    import pacegeo.pipeline

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran before the output was checked")

    monkeypatch.setattr(pacegeo.pipeline.Pipeline, "from_pretrained", no_inference)
    code, _, err = run(["reconstruct", work / "frames", "-o", "/proc/scene.ply", "--model", model_path], capsys)
    assert_one_line_error(code, err, "no file can be created in /proc")


@pytest.mark.parametrize("existing", ["scene.ply", "scene.glb", "scene_colmap", "scene.npz", "scene_cameras.json", "preview.png"])
def test_existing_outputs_need_overwrite(existing, work, model_path, capsys):
    out = work / "out"
    target = out / existing
    if existing == "scene_colmap":
        target.mkdir()
        (target / "cameras.txt").write_text("old")
    else:
        target.write_bytes(b"old")
    before = listing(work)
    code, _, err = run(
        ["reconstruct", work / "frames", "-o", out / "scene.ply", "--model", model_path, "--conf", "0",
         "--export", "glb,colmap,npz,cameras", "--preview", out / "preview.png"],
        capsys,
    )
    assert_one_line_error(code, err, "already exists; pass --overwrite")
    assert existing in err
    assert listing(work) == before


def test_memory_preflight_failure_is_one_line(work, model_path, capsys, monkeypatch):
    import pacegeo.preflight

    monkeypatch.setattr(pacegeo.preflight, "available_memory", lambda device: 1024)
    before = listing(work)
    code, _, err = run(["reconstruct", work / "frames", "-o", work / "out" / "scene.ply", "--model", model_path], capsys)
    assert_one_line_error(code, err, "not enough memory")
    assert listing(work) == before


# --------------------------------------------------------------------------------------------
# The installed entry point
# --------------------------------------------------------------------------------------------


def test_python_dash_m_entry_point(work, model_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    ok = subprocess.run(
        [sys.executable, "-m", "pacegeo", "reconstruct", str(work / "frames"), "--keep", "0.5", "-o",
         str(work / "out" / "scene.ply"), "--model", str(model_path), "--conf", "0", "-q"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert (work / "out" / "scene.ply").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "pacegeo", "reconstruct", str(work / "nowhere"), "-o", str(work / "out" / "x.ply")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"pacegeo: error: input not found: {work / 'nowhere'}"]
    help_text = subprocess.run([sys.executable, "-m", "pacegeo", "reconstruct", "--help"], capture_output=True, text=True, env=env)
    assert help_text.returncode == 0 and "--export" in help_text.stdout


@pytest.mark.parametrize("extra,fragment", [
    (["--encoder-layer", "0"], "--encoder-layer"),
    (["--encoder-layer", "2", "--pruner", "none", "--keep", "1"], "--encoder-layer"),
    (["--encoder-layer", "1"], "ViT encoder"),  # the test model's patch embedding is convolutional
])
def test_encoder_layer_errors_are_one_line_and_write_nothing(work, model_path, capsys, extra, fragment):
    before = listing(work)
    code, _, err = run(["reconstruct", work / "frames", "-o", work / "out" / "scene.ply", "--model", model_path, *extra], capsys)
    assert_one_line_error(code, err, fragment)
    assert listing(work) == before
