"""pacegeo.fidelity: deviations of a run from its reference, against values built by hand."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pacegeo.fidelity import camera_deviation, depth_deviation, fidelity, points_deviation


def w2c(rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return np.concatenate([rotation, (-rotation @ centre)[:, None]], axis=1)


def cameras(rotations_deg, centres) -> np.ndarray:
    return np.stack([w2c(Rotation.from_euler("y", a, degrees=True).as_matrix(), np.asarray(c, float))
                     for a, c in zip(rotations_deg, centres)])


CENTRES = [(0, 0, 0), (1, 0, 0), (2, 0.5, 0)]


def test_a_run_against_itself_deviates_by_nothing():
    ext = cameras([0, 10, 20], CENTRES)
    k = np.tile(np.array([[50.0, 0, 16], [0, 50.0, 12], [0, 0, 1]]), (3, 1, 1))
    depth = np.random.default_rng(0).uniform(1, 3, size=(3, 24, 32))
    result = fidelity(depth, ext, k, depth, ext, k)
    assert result == pytest.approx({"rot_dev_med": 0.0, "trans_dev_med": 0.0, "depth_dev_med": 0.0, "points_dev": 0.0}, abs=1e-5)


def test_rotating_one_camera_moves_the_pairs_that_contain_it():
    ref = cameras([0, 10, 20], CENTRES)
    moved = cameras([0, 10, 25], CENTRES)  # camera 2 turned 5 degrees more about the same axis
    rot, _ = camera_deviation(moved, ref)
    np.testing.assert_allclose(rot, [0.0, 5.0, 5.0], atol=1e-6)  # pairs (0,1), (0,2), (1,2)


def test_translation_deviation_skips_pairs_with_a_tiny_baseline():
    ref = cameras([0, 0, 0], [(0, 0, 0), (1, 0, 0), (1.001, 0, 0)])
    moved = cameras([0, 0, 0], [(0, 0, 0), (1, 0, 0), (1.001, 0.001, 0)])  # the short pair turns 45 degrees
    _, trans = camera_deviation(moved, ref)
    assert len(trans) == 2  # pairs (0,1), (0,2); (1,2) is 1/1000 of the median baseline
    assert trans.max() < 0.1
    _, unfiltered = camera_deviation(moved, ref, min_baseline=0.0)
    assert unfiltered.max() == pytest.approx(45.0, abs=1e-3)


def test_depth_deviation_is_relative_to_the_reference():
    ref = np.full((2, 4, 4), 2.0)
    dev = depth_deviation(ref * 1.1, ref)
    np.testing.assert_allclose(dev, 0.1)
    valid = np.zeros_like(ref, bool)
    valid[0, 0, 0] = True
    assert depth_deviation(ref * 1.1, ref, valid).shape == (1,)


def test_points_deviation_of_a_shifted_run_is_the_shift_over_the_scene_size():
    # one pixel per frame: the point sets are the camera-centred points, far apart from each other
    k = np.tile(np.eye(3), (3, 1, 1))
    depth = np.ones((3, 1, 1))
    ref = cameras([0, 0, 0], [(0, 0, 0), (4, 0, 0), (0, 4, 0)])
    shifted = cameras([0, 0, 0], [(0.01, 0, 0), (4.01, 0, 0), (0.01, 4, 0)])
    pts = np.array([[0, 0, 1], [4, 0, 1], [0, 4, 1]], float)
    size = np.median(np.linalg.norm(pts - pts.mean(0), axis=1))
    assert points_deviation(depth, shifted, k, depth, ref, k) == pytest.approx(0.01 / size, rel=1e-9)
