"""ScanNet raw-layout reader: ordering, invalid poses, depth decoding, ScanNet-50 selection rules."""

import numpy as np
import pytest
from PIL import Image

from pacegeo.data.scannet import (
    list_scannet_scenes,
    load_scannet_frames,
    read_scannet_scene,
    select_frames,
    select_test_scenes,
)
from pacegeo.errors import InputError

K_COLOR = np.array([[500.0, 0, 31.5], [0, 500.0, 23.5], [0, 0, 1]])
K_DEPTH = np.array([[250.0, 0, 15.5], [0, 250.0, 11.5], [0, 0, 1]])


def _write_4x4(path, K3):
    M = np.eye(4)
    M[:3, :3] = K3
    np.savetxt(path, M, fmt="%f")


def make_fake_scene(root, ids=(0, 1, 2, 10, 11), bad_pose=(2,), no_pose=(11,), depth_value=1500):
    """A tiny ScanNet-style scene: 64x48 colour, 32x24 depth, identity-ish poses."""
    for sub in ("color", "depth", "pose", "intrinsic"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    _write_4x4(root / "intrinsic" / "intrinsic_color.txt", K_COLOR)
    _write_4x4(root / "intrinsic" / "intrinsic_depth.txt", K_DEPTH)
    for i in ids:
        Image.fromarray(np.full((48, 64, 3), i * 10, np.uint8)).save(root / "color" / f"{i}.jpg")
        depth = np.full((24, 32), depth_value, np.uint16)
        depth[0, :5] = 0
        Image.fromarray(depth).save(root / "depth" / f"{i}.png")
        if i in no_pose:
            continue
        pose = np.eye(4)
        pose[0, 3] = i
        if i in bad_pose:
            pose[:] = -np.inf
        with open(root / "pose" / f"{i}.txt", "w") as f:  # ScanNet writes "-inf" literally
            for row in pose:
                f.write(" ".join("-inf" if np.isinf(x) else f"{x:f}" for x in row) + "\n")
    return root


def test_reads_sorted_and_drops_invalid_poses(tmp_path):
    seq = read_scannet_scene(make_fake_scene(tmp_path / "scene0000_00"))
    assert seq.names == ["0", "1", "10"]  # numeric order; 2 has -inf pose, 11 has no pose
    assert seq.name == "scene0000_00"
    np.testing.assert_allclose(seq.poses[:, 0, 3], [0, 1, 10])
    f = seq[2]
    assert f.name == "10"
    assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8
    assert f.depth.shape == (24, 32) and f.depth.dtype == np.float32
    assert f.depth[5, 5] == pytest.approx(1.5)
    assert (f.depth[0, :5] == 0).all()
    np.testing.assert_allclose(f.K, K_COLOR)
    np.testing.assert_allclose(f.K_depth, K_DEPTH)
    np.testing.assert_allclose(f.depth_K, K_DEPTH)
    assert f.cam_to_world.shape == (4, 4) and f.extrinsic.shape == (3, 4)


def test_loading_is_lazy(tmp_path):
    root = make_fake_scene(tmp_path / "s")
    seq = read_scannet_scene(root)
    (root / "color" / "1.jpg").write_bytes(b"not a jpeg")  # only fails when accessed
    assert seq[0].image.shape == (48, 64, 3)
    with pytest.raises(InputError, match="cannot read image"):
        seq[1]


def test_select_and_no_depth(tmp_path):
    seq = read_scannet_scene(make_fake_scene(tmp_path / "s"), load_depth=False)
    assert seq[0].depth is None
    sub = seq.select([2, 0])
    assert sub.names == ["10", "0"] and len(sub) == 2
    assert load_scannet_frames(tmp_path / "s", 2).names == ["0", "1"]


def test_select_frames_rule():
    assert select_frames(5, 10) == [0, 1, 2, 3, 4]
    assert select_frames(10, 10) == list(range(10))
    assert select_frames(100, 1) == [0]
    # 1000 frames, N = 4: remaining = 1..999 (999 frames), stride 999 // 3 = 333
    assert select_frames(1000, 4) == [0, 1, 334, 667]
    # stride 1 when there are barely more frames than requested
    assert select_frames(11, 10) == list(range(10))
    sel = select_frames(5578, 300)
    assert len(sel) == 300 and sel[0] == 0 and sel[1] == 1
    assert np.all(np.diff(sel[1:]) == (5577 // 299))
    with pytest.raises(InputError):
        select_frames(10, 0)


def test_scene_listing_and_test_selection(tmp_path):
    for k in range(7):
        make_fake_scene(tmp_path / f"scene{k:04d}_00", ids=(0,), bad_pose=(), no_pose=())
    (tmp_path / "not_a_scene").mkdir()
    scenes = list_scannet_scenes(tmp_path)
    assert [p.name for p in scenes] == [f"scene{k:04d}_00" for k in range(7)]
    assert [p.name for p in select_test_scenes(tmp_path, 3)] == ["scene0000_00", "scene0002_00", "scene0004_00"]
    assert len(select_test_scenes(tmp_path, 50)) == 7  # fewer scenes than asked: all, stride 1


def test_errors(tmp_path):
    with pytest.raises(InputError, match="not a ScanNet scene"):
        read_scannet_scene(tmp_path)
    root = make_fake_scene(tmp_path / "s", ids=(0,), bad_pose=(0,), no_pose=())
    with pytest.raises(InputError, match="no frames"):
        read_scannet_scene(root)
