"""The reconstruction pipeline and its writers, on a random tiny model and small synthetic frames."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pacegeo.errors import CheckpointError, InputError, OutputError
from pacegeo.hub import load_backbone
from pacegeo.io.images import load_images
from pacegeo.pipeline import (
    Pipeline,
    PreparedInputs,
    Reconstruction,
    prepare_inputs,
    resolve_model,
    select_frames,
)

from helpers import TARGET, write_frames

# The tensors here are tiny: one thread avoids OpenMP spin-waiting on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# Fixtures (``model_path``, the tiny model saved for ``TARGET`` px, comes from conftest.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    write_frames(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(model_path) -> Pipeline:
    # float32: several tests compare numbers with the float32 backbone
    return Pipeline.from_pretrained(model_path, pruner="training-free", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def rec(pipe, frames_dir) -> Reconstruction:
    return pipe.reconstruct(frames_dir, keep=0.3, progress=False)


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp" in p.name or ".old" in p.name))


# --------------------------------------------------------------------------------------------
# Options and models
# --------------------------------------------------------------------------------------------


def test_select_frames_spreads_evenly_or_strides():
    assert select_frames(10) == list(range(10))
    assert select_frames(25, frames=3) == [0, 12, 24]
    assert select_frames(5, frames=9) == [0, 1, 2, 3, 4]
    assert select_frames(10, stride=4) == [0, 4, 8]
    with pytest.raises(InputError):
        select_frames(10, frames=2, stride=2)
    with pytest.raises(InputError):
        select_frames(10, frames=0)


def test_model_metadata_sets_the_inference_resolution(model_path, pipe):
    choice = resolve_model(model_path)
    assert (choice.target_size, choice.preprocess_mode, choice.notice) == (TARGET, "crop", None)
    assert pipe.target_size == TARGET and pipe.pruner_mode == "training-free"
    assert pipe.device.type == "cpu" and pipe.amp_dtype is None


def test_auto_model_falls_back_to_bundled_tiny_with_a_notice(tmp_path, model_path, monkeypatch):
    import pacegeo.hub

    (tmp_path / "pacegeo-tiny.safetensors").write_bytes(model_path.read_bytes())
    monkeypatch.setenv("PACEGEO_CHECKPOINTS", str(tmp_path))
    monkeypatch.setattr(pacegeo.hub, "is_available_locally", lambda name, cache_dir=None: False)
    pipe = Pipeline.from_pretrained("auto", device="cpu")
    assert pipe.model.name == "pacegeo-tiny"
    assert pipe.notice and "pacegeo-tiny" in pipe.notice and "VGGT-1B" in pipe.notice and "\n" not in pipe.notice
    assert pipe.pruner_mode == "training-free"  # no trained pruner bundled

    (tmp_path / "pacegeo-tiny.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model available"):
        resolve_model("auto")


def test_pruner_checkpoints_load_by_path_and_automatically(tmp_path, model_path, frames_dir, monkeypatch):
    from pacegeo.pace import PaceVGGT
    from pacegeo.pruning.checkpoint import save_pruner
    from pacegeo.pruning.scorer import ScorerConfig, TokenScorer

    backbone = load_backbone(model_path)
    learned = PaceVGGT(backbone, scorer=TokenScorer(ScorerConfig.for_backbone(backbone)), mode="learned")
    bundled = tmp_path / "checkpoints"
    path = save_pruner(learned, bundled / f"{backbone.config.name}-pruner.safetensors")
    by_path = Pipeline.from_pretrained(model_path, pruner=path, device="cpu")
    assert by_path.pruner_mode == "learned"
    assert len(by_path.reconstruct(frames_dir, keep=0.5, progress=False)) == 4
    monkeypatch.setenv("PACEGEO_CHECKPOINTS", str(bundled))
    assert Pipeline.from_pretrained(model_path, pruner="auto", device="cpu").pruner_mode == "learned"
    assert Pipeline.from_pretrained(model_path, pruner="none", device="cpu").pruner is None
    with pytest.raises(InputError, match="unknown pruner"):
        Pipeline.from_pretrained(model_path, pruner="magic", device="cpu")


def test_bad_options_raise_input_errors(pipe, frames_dir):
    for keep in (0, -0.5, 1.5, float("nan"), "0.3", True):
        with pytest.raises(InputError, match="keep"):
            pipe.reconstruct(frames_dir, keep=keep)
    with pytest.raises(InputError, match="fps"):
        pipe.reconstruct(frames_dir, keep=1.0, fps=2.0)
    with pytest.raises(InputError, match="device"):
        Pipeline.from_pretrained(Path("unused"), device="tpu")
    no_pruner = Pipeline(pipe.backbone, pruner=None, target_size=TARGET)
    with pytest.raises(InputError, match="needs a pruner"):
        no_pruner.reconstruct(frames_dir, keep=0.3)


# --------------------------------------------------------------------------------------------
# Reconstruction content
# --------------------------------------------------------------------------------------------


def test_reconstruction_shapes_and_conventions(rec, frames_dir):
    s, h, w = 4, 56, 70
    assert len(rec) == s and rec.inference_hw == (h, w)
    assert rec.depth.shape == rec.depth_conf.shape == rec.world_points_conf.shape == (s, h, w)
    assert rec.world_points.shape == rec.points_from_depth.shape == (s, h, w, 3)
    assert rec.colors.shape == (s, h, w, 3) and rec.colors.dtype == np.uint8
    assert rec.extrinsics.shape == (s, 3, 4) and rec.intrinsics.shape == (s, 3, 3)
    assert rec.image_size.tolist() == [[56, 70]] * s
    assert rec.frame_names == [f"frame_{i:02d}.png" for i in range(s)]
    assert rec.valid_mask.all()
    # Colours are the model input, i.e. the preprocessed frames.
    expected = (load_images(frames_dir, target_size=TARGET).images.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    np.testing.assert_array_equal(rec.colors, expected)
    # Pruning and timing statistics.
    assert rec.keep == 0.3 and rec.tokens_per_frame == 20 and rec.kept_per_frame == [6] * s
    assert {"load", "preprocess", "inference", "export"} <= set(rec.timings)
    assert rec.peak_memory > 0 and rec.memory_estimate > 0
    # Points from depth are the depth unprojected with the predicted cameras.
    from pacegeo.geometry import unproject_depth_map_to_point_map

    np.testing.assert_allclose(
        rec.points_from_depth, unproject_depth_map_to_point_map(rec.depth, rec.extrinsics, rec.intrinsics), rtol=1e-5, atol=1e-5
    )


def test_keep_one_equals_the_unpruned_backbone(pipe, model_path, frames_dir):
    rec = pipe.reconstruct(frames_dir, keep=1.0, progress=False)
    backbone = load_backbone(model_path)
    images = load_images(frames_dir, target_size=TARGET).images
    with torch.inference_mode():
        out = backbone(images[None])
    np.testing.assert_array_equal(rec.depth, out["depth"][0, ..., 0].numpy())
    np.testing.assert_array_equal(rec.world_points, out["world_points"][0].numpy())
    assert rec.kept_per_frame == [20] * 4


def test_reconstruction_is_deterministic(pipe, frames_dir, rec):
    again = pipe.reconstruct(frames_dir, keep=0.3, progress=False)
    np.testing.assert_array_equal(again.depth, rec.depth)
    np.testing.assert_array_equal(again.extrinsics, rec.extrinsics)


def test_point_cloud_filters(rec):
    xyz, rgb = rec.point_cloud(conf_threshold=0)
    assert xyz.shape == (4 * 56 * 70, 3) and rgb.shape == xyz.shape and rgb.dtype == np.uint8
    empty, _ = rec.point_cloud(conf_threshold=1e9)
    assert len(empty) == 0
    half, _ = rec.point_cloud(conf_percentile=50)
    assert 0.4 * len(xyz) <= len(half) <= 0.6 * len(xyz)
    sub1, rgb1 = rec.point_cloud(conf_threshold=0, max_points=100, seed=3)
    sub2, rgb2 = rec.point_cloud(conf_threshold=0, max_points=100, seed=3)
    assert len(sub1) == 100
    np.testing.assert_array_equal(sub1, sub2)
    np.testing.assert_array_equal(rgb1, rgb2)
    pm, _ = rec.point_cloud(conf_threshold=0, source="pointmap")
    np.testing.assert_array_equal(pm, rec.world_points.reshape(-1, 3))
    with pytest.raises(InputError):
        rec.point_cloud(source="mesh")


def test_pad_mode_masks_the_padding(pipe, tmp_path):
    folder = tmp_path / "tall"
    write_frames(folder, count=2, size_hw=(70, 42))  # portrait: padded left and right
    rec = pipe.reconstruct(folder, keep=1.0, mode="pad", progress=False)
    assert rec.inference_hw == (70, 70)
    assert not rec.valid_mask.all() and rec.valid_mask[:, :, 35].all()
    xyz, _ = rec.point_cloud(conf_threshold=0)
    assert len(xyz) == int(rec.valid_mask.sum())
    # Original-image intrinsics map the model's principal point back into the original image.
    k = rec.intrinsics_original[0]
    assert 0 < k[0, 2] < 42 and 0 < k[1, 2] < 70


def test_in_memory_images_and_a_corrupt_file(pipe, tmp_path):
    arrays = [np.full((56, 70, 3), 40 * i, np.uint8) for i in range(3)]
    rec = pipe.reconstruct(arrays, keep=1.0, progress=False)
    assert rec.frame_names == ["<image 0>", "<image 1>", "<image 2>"]

    folder = tmp_path / "mixed"
    write_frames(folder, count=3)
    (folder / "frame_01.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    prepared = prepare_inputs(folder, target_size=TARGET)
    assert prepared.names == ["frame_00.png", "frame_02.png"]
    assert len(prepared.skipped) == 1 and "frame_01.png" in prepared.skipped[0][0]
    with pytest.raises(InputError, match="frame_01.png"):
        prepare_inputs(folder, target_size=TARGET, strict=True)


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def test_ply_round_trip(rec, tmp_path):
    import open3d as o3d

    xyz, rgb = rec.point_cloud(conf_threshold=0)
    path = rec.save_ply(tmp_path / "scene.ply", conf_threshold=0)
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian")
    cloud = o3d.io.read_point_cloud(str(path))
    assert len(cloud.points) == len(xyz) > 0 and cloud.has_colors()
    np.testing.assert_allclose(np.asarray(cloud.points), xyz, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.round(np.asarray(cloud.colors) * 255).astype(np.uint8), rgb)
    assert temp_leftovers(tmp_path) == []


def test_no_points_is_a_clear_error(rec, tmp_path):
    with pytest.raises(InputError, match="no points pass"):
        rec.save_ply(tmp_path / "scene.ply", conf_threshold=1e9)
    assert list(tmp_path.iterdir()) == []


def test_glb_holds_points_and_one_frustum_per_camera(rec, tmp_path):
    import trimesh

    path = rec.save_glb(tmp_path / "scene.glb", conf_threshold=0)
    scene = trimesh.load(str(path), file_type="glb")
    cameras = [name for name in scene.geometry if name.startswith("camera_")]
    assert len(cameras) == len(rec)
    points = scene.geometry["points"]
    xyz, rgb = rec.point_cloud(conf_threshold=0)
    assert len(points.vertices) == len(xyz)
    np.testing.assert_array_equal(np.asarray(points.colors)[:, :3], rgb)
    # OpenCV -> OpenGL: y and z flipped.
    np.testing.assert_allclose(points.vertices, xyz * np.array([1, -1, -1]), rtol=1e-5, atol=1e-5)


def parse_colmap_text(folder: Path) -> tuple[dict, dict, dict]:
    """A minimal reader of COLMAP's text model."""

    def rows(name):
        for line in (folder / name).read_text().splitlines():
            if not line.startswith("#"):
                yield line

    cameras = {}
    for line in rows("cameras.txt"):
        if line.strip():
            parts = line.split()
            cameras[int(parts[0])] = (parts[1], int(parts[2]), int(parts[3]), [float(v) for v in parts[4:]])
    images = {}
    lines = list(rows("images.txt"))
    assert len(lines) % 2 == 0
    for header, points2d in zip(lines[::2], lines[1::2]):
        parts = header.split()
        images[int(parts[0])] = {
            "qvec": np.array([float(v) for v in parts[1:5]]),
            "tvec": np.array([float(v) for v in parts[5:8]]),
            "camera_id": int(parts[8]),
            "name": parts[9],
            "points2d": points2d.split(),
        }
    points = {}
    for line in rows("points3D.txt"):
        if line.strip():
            parts = line.split()
            points[int(parts[0])] = (np.array([float(v) for v in parts[1:4]]), np.array([int(v) for v in parts[4:7]]), float(parts[7]))
    return cameras, images, points


def test_colmap_text_model(rec, tmp_path):
    from scipy.spatial.transform import Rotation

    folder = rec.save_colmap(tmp_path / "scene_colmap", conf_threshold=0, max_points=500)
    assert sorted(p.name for p in folder.iterdir()) == ["cameras.txt", "images.txt", "points3D.txt"]
    cameras, images, points = parse_colmap_text(folder)
    assert len(cameras) == len(images) == len(rec)
    for i in range(len(rec)):
        model, width, height, params = cameras[i + 1]
        assert (model, width, height) == ("PINHOLE", 70, 56)
        k = rec.intrinsics_original[i]
        if np.isfinite(k).all():
            np.testing.assert_allclose(params, [k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5], rtol=1e-6)
        image = images[i + 1]
        assert image["camera_id"] == i + 1 and image["name"] == rec.frame_names[i] and image["points2d"] == []
        q = image["qvec"]
        assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-6
        rotation = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
        np.testing.assert_allclose(rotation, rec.extrinsics[i, :, :3], atol=1e-5)
        np.testing.assert_allclose(image["tvec"], rec.extrinsics[i, :, 3], rtol=1e-6, atol=1e-7)
    xyz, rgb = rec.point_cloud(conf_threshold=0, max_points=500)
    assert len(points) == 500
    np.testing.assert_allclose(np.stack([points[j + 1][0] for j in range(500)]), xyz, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.stack([points[j + 1][1] for j in range(500)]), rgb)
    with pytest.raises(InputError, match="already exists"):
        rec.save_colmap(tmp_path / "scene_colmap", conf_threshold=0)
    rec.save_colmap(tmp_path / "scene_colmap", conf_threshold=0, overwrite=True, max_points=10)
    assert len(parse_colmap_text(folder)[2]) == 10
    assert temp_leftovers(tmp_path) == []


def test_npz_and_cameras_json(rec, tmp_path):
    data = np.load(rec.save_npz(tmp_path / "scene.npz"))
    s, h, w = 4, 56, 70
    shapes = {
        "extrinsics": (s, 3, 4),
        "intrinsics": (s, 3, 3),
        "depth": (s, h, w),
        "depth_conf": (s, h, w),
        "world_points": (s, h, w, 3),
        "world_points_conf": (s, h, w),
        "image_size": (s, 2),
        "frame_names": (s,),
        "keep": (),
    }
    for key, shape in shapes.items():
        assert data[key].shape == shape, key
    np.testing.assert_array_equal(data["depth"], rec.depth)
    assert data["frame_names"].tolist() == rec.frame_names and float(data["keep"]) == pytest.approx(0.3)

    cameras = json.loads(rec.save_cameras_json(tmp_path / "cameras.json").read_text())
    assert list(cameras) == rec.frame_names
    entry = cameras["frame_00.png"]
    assert {"extrinsic", "intrinsic", "image_size", "camera_center"} <= set(entry)
    assert np.array(entry["extrinsic"], dtype=float).shape == (3, 4) and entry["image_size"] == [56, 70]
    np.testing.assert_allclose(np.array(entry["camera_center"], dtype=float), rec.camera_centers[0], rtol=1e-6)


def test_preview_png(rec, tmp_path):
    path = rec.save_preview(tmp_path / "preview.png", conf_threshold=0)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 800 and img.height > 300
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10  # something was drawn
    assert rec.files_written[-1] == path and rec.timings["export"] > 0


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def test_a_failing_writer_leaves_no_file(rec, tmp_path, monkeypatch):
    def broken_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken_savez)
    with pytest.raises(OutputError, match="disk full"):
        rec.save_npz(tmp_path / "scene.npz")
    assert list(tmp_path.iterdir()) == []

    # An existing file keeps its content.
    (tmp_path / "scene.npz").write_bytes(b"old")
    with pytest.raises(OutputError):
        rec.save_npz(tmp_path / "scene.npz")
    assert (tmp_path / "scene.npz").read_bytes() == b"old" and temp_leftovers(tmp_path) == []


def test_a_failing_colmap_writer_leaves_no_folder(rec, tmp_path, monkeypatch):
    def broken_savetxt(handle, *args, **kwargs):
        handle.write("1 0.5 0.5 0.5 10 20 30 0.1\n")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savetxt", broken_savetxt)
    with pytest.raises(OutputError, match="disk full"):
        rec.save_colmap(tmp_path / "scene_colmap", conf_threshold=0)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_ply_export_leaves_no_file(rec, tmp_path, monkeypatch):
    import pacegeo.io.export

    def broken(handle, *args, **kwargs):
        handle.write(b"ply\n")
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(pacegeo.io.export, "ply_into", broken)
    with pytest.raises(RuntimeError):
        rec.save_ply(tmp_path / "scene.ply", conf_threshold=0)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Memory preflight
# --------------------------------------------------------------------------------------------


def test_memory_preflight_says_what_fits(pipe, frames_dir, monkeypatch):
    import re

    import pacegeo.preflight as preflight

    prepared = pipe.prepare(frames_dir)
    need = pipe.estimate_memory(4, prepared.image_hw, 1.0).activations
    one = pipe.estimate_memory(1, prepared.image_hw, 1.0).activations
    monkeypatch.setattr(preflight, "available_memory", lambda device: (need + one) // 2)
    with pytest.raises(InputError) as err:
        pipe.reconstruct(prepared, keep=1.0)
    message = str(err.value)
    assert "not enough memory" in message and "frames or stride" in message and "\n" not in message
    assert "--frames/--stride" in err.value.cli_message()  # the command line names its flags
    # what it suggests does fit
    frames = int(re.search(r"up to (\d+) fit", message).group(1))
    assert 1 <= frames < 4
    assert len(pipe.reconstruct(pipe.prepare(frames_dir, frames=frames), keep=1.0)) == frames
    keep = re.search(r"a lower keep \(([0-9.]+) fits\)", message)
    if keep:
        assert len(pipe.reconstruct(prepared, keep=float(keep.group(1)))) == 4
    monkeypatch.setattr(preflight, "available_memory", lambda device: need + 1)
    assert len(pipe.reconstruct(prepared, keep=1.0)) == 4
    assert isinstance(prepared, PreparedInputs)


def test_memory_preflight_suggests_a_chunk_size_that_fits(pipe, frames_dir, monkeypatch):
    import re
    from dataclasses import replace

    import torch

    import pacegeo.preflight as preflight

    small = pipe.prepare(frames_dir)
    prepared = replace(small, images=torch.cat([small.images] * 4), transforms=list(small.transforms) * 4,
                       names=[f"{i:02d}" for i in range(4 * len(small))])
    count = len(prepared)
    need = pipe.estimate_memory(count, prepared.image_hw, 1.0).activations
    half = pipe.estimate_memory(count // 2, prepared.image_hw, 1.0).activations
    monkeypatch.setattr(preflight, "available_memory", lambda device: (need + half) // 2)
    with pytest.raises(InputError) as err:
        pipe.reconstruct(prepared, keep=1.0)
    assert "--chunk=" in err.value.cli_message()
    chunk = int(re.search(r"chunk=(\d+)", str(err.value)).group(1))
    assert count // 2 <= chunk < count
    rec = pipe.reconstruct(prepared, keep=1.0, chunk=chunk)  # what it suggests runs under the same limit
    assert len(rec) == count and len(rec.pruning["chunks"]) >= 2


# --------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------


def write_video(path: Path, frames: int = 20, rate: int = 10, size_hw=(56, 70)) -> Path:
    import av

    h, w = size_hw
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(frames):
            rgb = np.stack([(xx * 3 + 10 * i) % 256, (yy * 4) % 256, np.full_like(xx, 128)], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_frames_are_sampled_at_fps(pipe, tmp_path):
    from pacegeo.io.video import probe_video, read_video_frames

    video = write_video(tmp_path / "clip.mp4")
    info = probe_video(video)
    assert (info.width, info.height) == (70, 56) and math.isclose(info.fps, 10)
    frames = read_video_frames(video, fps=2)
    assert [round(f.time_s, 3) for f in frames] == [0.0, 0.5, 1.0, 1.5]
    assert frames[0].rgb.shape == (56, 70, 3) and frames[1].name == "clip_0000500ms.png"
    rec = pipe.reconstruct(video, keep=1.0, fps=5, frames=3, progress=False)
    assert rec.frame_names == ["clip_0000000ms.png", "clip_0000800ms.png", "clip_0001800ms.png"]


def test_corrupt_video_is_an_input_error(tmp_path):
    from pacegeo.io.video import probe_video, read_video_frames

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 20)
    with pytest.raises(InputError, match="cannot read video"):
        probe_video(bad)
    with pytest.raises(InputError, match="cannot read video"):
        read_video_frames(bad)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(InputError, match="unsupported input"):
        prepare_inputs(notes)


# --------------------------------------------------------------------------------------------
# Package surface
# --------------------------------------------------------------------------------------------


def test_import_pacegeo_is_light_and_exports_pipeline_lazily():
    code = (
        "import sys, pacegeo; assert 'torch' not in sys.modules, 'torch imported'; "
        "from pacegeo import Pipeline, Reconstruction; import pacegeo.pipeline as p; "
        "assert Pipeline is p.Pipeline and Reconstruction is p.Reconstruction"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
