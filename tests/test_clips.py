"""Training clips: VGGT normalisation, geometric consistency, determinism, augmentation."""

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from pacegeo.data import synth
from pacegeo.data.clips import ClipConfig, SceneClips, SynthClips, adjust_intrinsics, clip_indices
from pacegeo.data.frames import unproject_depth
from pacegeo.geometry.transforms import invert_se3
from pacegeo.data.scannet import read_scannet_scene
from pacegeo.errors import InputError

CFG = ClipConfig(num_frames=3, height=42, width=56, max_gap=2)


def check_normalised(item, S=3, H=42, W=56):
    assert item["images"].shape == (S, 3, H, W) and item["images"].dtype == torch.float32
    assert 0.0 <= item["images"].min() and item["images"].max() <= 1.0
    assert item["depths"].shape == (S, H, W) and item["valid"].dtype == torch.bool
    assert item["extrinsics"].shape == (S, 3, 4) and item["intrinsics"].shape == (S, 3, 3)
    assert item["world_points"].shape == (S, H, W, 3)
    torch.testing.assert_close(item["extrinsics"][0], torch.eye(4)[:3])
    valid = item["valid"]
    assert valid.float().mean() > 0.5
    assert (item["depths"][~valid] == 0).all() and (item["depths"][valid] > 0).all()
    dist = item["world_points"][valid].norm(dim=-1)
    assert dist.mean().item() == pytest.approx(1.0, rel=1e-4)
    # world points = depth lifted with the intrinsics and moved by the inverse extrinsics
    for i in range(S):
        E = np.eye(4)
        E[:3] = item["extrinsics"][i].double().numpy()
        pts = unproject_depth(item["depths"][i].numpy(), item["intrinsics"][i].double().numpy(), invert_se3(E))
        m = valid[i].numpy()
        np.testing.assert_allclose(pts[m], item["world_points"][i].numpy()[m], atol=2e-5)
        R = E[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)


def test_clip_indices_respect_gaps():
    rng = np.random.default_rng(0)
    cfg = ClipConfig(num_frames=5, height=14, width=14, min_gap=2, max_gap=4)
    for _ in range(50):
        idx = clip_indices(rng, 40, cfg)
        assert len(idx) == 5 and idx[0] >= 0 and idx[-1] < 40
        assert ((np.diff(idx) >= 2) & (np.diff(idx) <= 4)).all()
    idx = clip_indices(rng, 5, cfg)  # too short for the gaps: fall back to consecutive frames
    np.testing.assert_array_equal(idx, np.arange(5))
    with pytest.raises(InputError):
        clip_indices(rng, 4, cfg)


def test_config_validation():
    with pytest.raises(InputError, match="multiples of 14"):
        ClipConfig(height=100)
    with pytest.raises(InputError):
        ClipConfig(min_gap=3, max_gap=2)


def test_adjust_intrinsics_pixel_centres():
    K = np.array([[100.0, 0, 31.5], [0, 100.0, 23.5], [0, 0, 1]])  # 64x48 centred
    K2 = adjust_intrinsics(K, 0.5, 0.5, 0, 0)  # 32x24
    np.testing.assert_allclose(K2[:2, 2], [15.5, 11.5])
    np.testing.assert_allclose(K2[[0, 1], [0, 1]], [50, 50])
    np.testing.assert_allclose(adjust_intrinsics(K, 1, 1, 4, 2)[:2, 2], [27.5, 21.5])


@pytest.fixture(scope="module")
def synth_clips():
    return SynthClips([3, 4], CFG, frames_per_scene=12, length=4, seed=7)


def test_synth_clips_normalisation(synth_clips):
    item = synth_clips[0]
    check_normalised(item)
    assert item["scale"] > 0.1
    gaps = np.diff(item["frame_indices"].numpy())
    assert ((gaps >= 1) & (gaps <= 2)).all()
    assert item["scene_index"].item() == 0 and synth_clips[1]["scene_index"].item() == 1


def test_synth_clips_deterministic(synth_clips):
    a = synth_clips[2]
    b = SynthClips([3, 4], CFG, frames_per_scene=12, length=4, seed=7)[2]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    synth_clips.set_epoch(1)
    c = synth_clips[2]
    synth_clips.set_epoch(0)
    assert not torch.equal(a["frame_indices"], c["frame_indices"]) or not torch.equal(a["images"], c["images"])


def test_synth_clips_augmentation_varies_intrinsics():
    cfg = ClipConfig(num_frames=3, height=42, width=56, max_gap=1, augment=True, zoom=(1.2, 1.6))
    ds = SynthClips([5], cfg, frames_per_scene=8, length=2, seed=1)
    item = ds[0]
    check_normalised(item)
    base = synth.scene_intrinsics(ds._scene(5)[0], 56, 42)
    K = item["intrinsics"].double().numpy()
    assert (K[:, 0, 0] > 1.15 * base[0, 0]).all()
    assert len({round(float(k), 3) for k in K[:, 0, 2]}) > 1


def test_scene_clips_from_disk(tmp_path):
    paths = synth.generate_dataset(tmp_path, 1, 8, 30, width=112, height=84, progress=False)
    ds = SceneClips(tmp_path, CFG, length=3, seed=0)
    assert len(ds) == 3
    item = ds[1]
    check_normalised(item)
    # Points of the resized/cropped clip land on the original full-resolution depth of frame 0.
    seq = read_scannet_scene(paths[0])
    f0 = seq[int(item["frame_indices"][0])]
    for i in range(3):
        m = item["valid"][i].numpy()
        pts = item["world_points"][i].double().numpy()[m] * item["scale"].item()  # first camera frame
        uvw = pts @ f0.K.T
        u, v, z = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2], pts[:, 2]
        inside = (u > 0) & (u < 111) & (v > 0) & (v < 83)
        d = map_coordinates(f0.depth.astype(np.float64), [v[inside], u[inside]], order=1)
        rel = np.abs(d - z[inside]) / z[inside]
        assert inside.sum() > 100 and np.median(rel) < 0.01
    ds.set_max_gap(1)
    assert (np.diff(ds[0]["frame_indices"].numpy()) == 1).all()
