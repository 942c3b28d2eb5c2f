"""SynthRooms generator: layout, ground-truth consistency, determinism, safety of writes."""

import json

import numpy as np
import open3d as o3d
import pytest
from PIL import Image

from pacegeo.data import synth
from pacegeo.data.frames import depth_reprojection_error
from pacegeo.geometry.transforms import invert_se3
from pacegeo.data.scannet import read_scannet_scene
from pacegeo.errors import InputError

W, H = 160, 120
FRAMES = 6
SEED = 11


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    paths = synth.generate_dataset(out, num_scenes=2, num_frames=FRAMES, seed=SEED, width=W, height=H,
                                   preview=True, progress=False)
    return out, paths


def test_layout_and_files(dataset):
    out, paths = dataset
    assert [p.name for p in paths] == ["scene_00011", "scene_00012"]
    assert not list(out.glob("*.tmp"))
    for scene in paths:
        for sub, ext in (("color", "jpg"), ("depth", "png"), ("pose", "txt")):
            assert sorted(int(p.stem) for p in (scene / sub).glob(f"*.{ext}")) == list(range(FRAMES))
        for name in ("intrinsic_color.txt", "intrinsic_depth.txt"):
            K4 = np.loadtxt(scene / "intrinsic" / name)
            assert K4.shape == (4, 4)
            np.testing.assert_allclose(K4[3], [0, 0, 0, 1])
            assert K4[0, 2] == pytest.approx((W - 1) / 2) and K4[1, 2] == pytest.approx((H - 1) / 2)
        with Image.open(scene / "color" / "0.jpg") as im:
            assert im.mode == "RGB" and im.size == (W, H)
        with Image.open(scene / "depth" / "0.png") as im:
            depth = np.asarray(im)
        assert depth.dtype == np.uint16 and depth.shape == (H, W)
        assert (depth > 0).mean() > 0.5
        pose = np.loadtxt(scene / "pose" / "3.txt")
        assert pose.shape == (4, 4) and np.isfinite(pose).all()
        np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6)
        mesh = o3d.io.read_triangle_mesh(str(scene / f"{scene.name}_vh_clean_2.ply"))
        assert len(mesh.vertices) > 1000 and mesh.has_vertex_colors() and len(mesh.triangles) > 0
        meta = json.loads((scene / "synth_meta.json").read_text())
        assert meta["seed"] == int(scene.name.split("_")[1]) and meta["num_frames"] == FRAMES


def test_written_depth_matches_render(dataset):
    _, paths = dataset
    scene = synth.make_scene(SEED)
    poses = synth.make_trajectory(scene, FRAMES)
    K = synth.scene_intrinsics(scene, W, H)
    rgb, depth = synth.render_frame(scene, poses[2], K, W, H, frame_index=2)
    with Image.open(paths[0] / "depth" / "2.png") as im:
        mm = np.asarray(im).astype(np.float64)
    np.testing.assert_allclose(mm / 1000.0, depth, atol=0.0006)
    np.testing.assert_allclose(np.loadtxt(paths[0] / "pose" / "2.txt"), poses[2], atol=1e-8)
    with Image.open(paths[0] / "color" / "2.jpg") as im:
        jpg = np.asarray(im).astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / np.mean((jpg - rgb) ** 2))
    assert psnr > 25.0  # JPEG quality 90 with 4:2:0 chroma on a small, noisy image


def test_multiview_consistency_through_scannet_reader(dataset):
    """Depth of frame A lifted with its pose and projected into B agrees with B's depth."""
    _, paths = dataset
    for scene in paths:
        seq = read_scannet_scene(scene)
        assert len(seq) == FRAMES
        for a, b in ((0, 1), (2, 3), (0, 3)):
            fa, fb = seq[a], seq[b]
            err = depth_reprojection_error(fa.depth, fa.K, fa.cam_to_world, fb.depth, fb.K, fb.cam_to_world)
            assert len(err) > 0.5 * (fa.depth > 0).sum()  # strong overlap between nearby frames
            assert np.median(err) < 0.005


def test_mesh_lies_on_rendered_surfaces(dataset):
    """Mesh vertices seen by a frame sit on that frame's depth (the PLY is a usable GT cloud)."""
    _, paths = dataset
    seq = read_scannet_scene(paths[0])
    f = seq[0]
    pts = np.asarray(o3d.io.read_point_cloud(str(paths[0] / f"{paths[0].name}_vh_clean_2.ply")).points)
    w2c = invert_se3(f.cam_to_world)
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    front = z > 0.1
    u = np.rint(f.K[0, 0] * cam[front, 0] / z[front] + f.K[0, 2]).astype(int)
    v = np.rint(f.K[1, 1] * cam[front, 1] / z[front] + f.K[1, 2]).astype(int)
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    d = f.depth[v[inside], u[inside]]
    rel = np.abs(z[front][inside] - d) / np.maximum(d, 1e-6)
    assert inside.sum() > 500
    assert (rel < 0.02).mean() > 0.6  # the rest is occluded from this frame


def test_preview_written(dataset):
    out, _ = dataset
    with Image.open(out / "preview.png") as im:
        sheet = np.asarray(im.convert("RGB"))
    assert sheet.shape[0] > 200 and sheet.shape[1] > 400
    assert sheet.std() > 20


def test_same_seed_same_bytes(dataset, tmp_path):
    out, paths = dataset
    again = synth.generate_dataset(tmp_path, num_scenes=1, num_frames=FRAMES, seed=SEED, width=W, height=H,
                                   progress=False)[0]
    for rel in ("color/4.jpg", "depth/4.png", "pose/4.txt", "intrinsic/intrinsic_color.txt",
                f"{again.name}_vh_clean_2.ply"):
        assert (again / rel).read_bytes() == (paths[0] / rel).read_bytes(), rel


def test_in_memory_determinism_and_variety():
    a, b = synth.make_scene(3), synth.make_scene(3)
    pa, pb = synth.make_trajectory(a, 5), synth.make_trajectory(b, 5)
    np.testing.assert_array_equal(pa, pb)
    K = synth.scene_intrinsics(a, 64, 48)
    ra, da = synth.render_frame(a, pa[4], K, 64, 48, frame_index=4)
    rb, db = synth.render_frame(b, pb[4], K, 64, 48, frame_index=4)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_array_equal(da, db)
    others = [synth.make_scene(s) for s in (4, 5, 6)]
    assert len({round(s.fov_deg, 3) for s in [a, *others]}) == 4
    assert len({tuple(np.round(s.footprint.max(0), 3)) for s in [a, *others]}) == 4


def test_fov_range_is_configurable():
    cfg = synth.SynthConfig(fov=(60.0, 60.0))
    scene = synth.make_scene(7, cfg)
    K = synth.scene_intrinsics(scene, 200, 100)
    assert scene.fov_deg == pytest.approx(60.0)
    assert 2 * np.degrees(np.arctan(100 / K[0, 0])) == pytest.approx(60.0)


def test_trajectory_is_smooth_and_stays_in_free_space():
    scene = synth.make_scene(21)
    poses = synth.make_trajectory(scene, 40)
    centres = poses[:, :3, 3]
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert steps.max() < 0.12 and steps.min() > 0.005
    rel = np.einsum("nij,nik->njk", poses[:-1, :3, :3], poses[1:, :3, :3])
    angles = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert angles.max() < 10.0
    assert scene.free_space.is_free(centres[:, :2], slack=0.2).all()
    lo, hi = scene.config.camera_height
    assert (centres[:, 2] > lo - 0.05).all() and (centres[:, 2] < hi + 0.05).all()
    R = poses[:, :3, :3]
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
    # the camera looks roughly horizontally and stays upright (image y axis points down in the world)
    assert (R[:, 2, 1] < -0.5).all()


def test_depth_encoding_marks_invalid_as_zero():
    d = np.array([[0.0, 1.2345, np.inf], [np.nan, 70.0, -1.0]], np.float32)
    mm = synth.depth_to_mm(d)
    assert mm.dtype == np.uint16
    np.testing.assert_array_equal(mm, [[0, 1234, 0], [0, 0, 0]])  # float32 1.2345 -> 1234.4999


def test_window_rays_give_invalid_depth():
    found = False
    for seed in range(8):
        scene = synth.make_scene(seed, synth.SynthConfig(window_prob=1.0))
        K = synth.scene_intrinsics(scene, 32, 24)
        for pose in synth.make_trajectory(scene, 60)[::6]:
            rgb, depth = synth.render_frame(scene, pose, K, 32, 24)
            if (depth == 0).any():
                found = True
                assert (rgb[depth == 0].mean(axis=-1) > 100).all()  # bright sky behind the window
                break
        if found:
            break
    assert found


def test_refuses_to_overwrite(dataset, tmp_path):
    synth.generate_dataset(tmp_path, 1, 2, 40, width=32, height=24, progress=False)
    with pytest.raises(InputError, match="already exists"):
        synth.generate_dataset(tmp_path, 1, 2, 40, width=32, height=24, progress=False)
    (tmp_path / "scene_00040" / "marker").write_text("old")
    synth.generate_dataset(tmp_path, 1, 2, 40, width=32, height=24, overwrite=True, progress=False)
    assert not (tmp_path / "scene_00040" / "marker").exists()


def test_a_failed_run_leaves_no_scene_and_no_temporary_folder(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("pacegeo.data.synth.writer.write_mesh_ply", boom)  # where generate_dataset looks it up
    with pytest.raises(RuntimeError):
        synth.generate_dataset(tmp_path, 1, 2, 50, width=32, height=24, progress=False)
    assert list(tmp_path.iterdir()) == []  # no scene, no temporary folder
    monkeypatch.undo()
    synth.generate_dataset(tmp_path, 1, 2, 50, width=32, height=24, progress=False)
    assert (tmp_path / "scene_00050" / "pose" / "1.txt").is_file()
    assert not (tmp_path / "scene_00050.tmp").exists()


@pytest.mark.parametrize("kwargs", [dict(num_scenes=0), dict(num_frames=0), dict(width=8), dict(seed=-1)])
def test_bad_arguments(tmp_path, kwargs):
    args = dict(out_dir=tmp_path, num_scenes=1, num_frames=2, seed=0, width=32, height=24, progress=False)
    args.update(kwargs)
    with pytest.raises(InputError):
        synth.generate_dataset(**args)


def test_parallel_workers_give_identical_output(tmp_path):
    a = synth.generate_scenes(tmp_path / "a", [60], 4, 48, 32, progress=False, workers=1)[0]
    b = synth.generate_scenes(tmp_path / "b", [60], 4, 48, 32, progress=False, workers=2)[0]
    for rel in ("color/3.jpg", "depth/3.png", "pose/3.txt", "scene_00060_vh_clean_2.ply"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
