import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pacegeo.errors import InputError
from pacegeo.geometry import (
    cam_to_world_to_extrinsics,
    camera_centers,
    invert_se3,
    depth_to_camera_points,
    depth_to_world_points,
    extri_intri_to_pose_encoding,
    extrinsics_to_cam_to_world,
    matrix_to_quaternion,
    matrix_to_quaternion_scipy,
    pose_encoding_to_extri_intri,
    project_points,
    quaternion_to_matrix,
    relative_to_first,
    to_4x4,
    to_homogeneous,
    transform_points,
    unproject_depth_map_to_point_map,
)

TOL = dict(atol=1e-4, rtol=1e-4)
REF_HW = (70, 98)


@pytest.fixture(scope="module")
def reference(shared_dir):
    from safetensors.torch import load_file

    return load_file(str(shared_dir / "reference" / "vggt_tiny_reference.safetensors"))


def random_extrinsics(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    rotations = Rotation.random(n, random_state=seed).as_matrix()
    translations = np.random.default_rng(seed).normal(size=(n, 3, 1))
    return torch.from_numpy(np.concatenate([rotations, translations], axis=-1)).to(dtype)


def simple_intrinsics(height: int, width: int, fx: float = 80.0, fy: float = 70.0) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, width / 2], [0.0, fy, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)


# ------------------------------------------------------------------ reference (official VGGT)


def test_pose_encoding_matches_reference(reference):
    extrinsics, intrinsics = pose_encoding_to_extri_intri(reference["output.pose_enc"], REF_HW)
    assert extrinsics.shape == (1, 3, 3, 4) and intrinsics.shape == (1, 3, 3, 3)
    assert intrinsics.dtype == torch.float32
    torch.testing.assert_close(extrinsics, reference["derived.extrinsic"], **TOL)
    torch.testing.assert_close(intrinsics, reference["derived.intrinsic"], **TOL)


def test_unprojection_matches_reference(reference):
    extrinsics, intrinsics = pose_encoding_to_extri_intri(reference["output.pose_enc"], REF_HW)
    expected = reference["derived.world_points_from_depth"]
    depth = reference["output.depth"][0]  # [S, H, W, 1]

    points = unproject_depth_map_to_point_map(depth, extrinsics[0], intrinsics[0])
    assert isinstance(points, np.ndarray) and points.dtype == np.float64
    torch.testing.assert_close(torch.from_numpy(points), expected, **TOL)

    depth_np = depth[..., 0].numpy()
    as_tensor = unproject_depth_map_to_point_map(depth_np, extrinsics[0], intrinsics[0], as_tensor=True)
    torch.testing.assert_close(as_tensor, expected, **TOL)

    torch_route = depth_to_world_points(depth[..., 0], extrinsics[0], intrinsics[0])
    torch.testing.assert_close(torch_route.double(), expected, **TOL)


def test_reference_encoding_round_trip(reference):
    pose_enc = reference["output.pose_enc"]
    extrinsics, intrinsics = pose_encoding_to_extri_intri(pose_enc, REF_HW)
    encoded = extri_intri_to_pose_encoding(extrinsics, intrinsics, REF_HW)
    torch.testing.assert_close(encoded[..., :3], pose_enc[..., :3])
    torch.testing.assert_close(encoded[..., 7:], pose_enc[..., 7:])  # fov 0 <-> focal inf
    quat = pose_enc[..., 3:7] / pose_enc[..., 3:7].norm(dim=-1, keepdim=True)
    quat = torch.where(quat[..., 3:] < 0, -quat, quat)
    torch.testing.assert_close(encoded[..., 3:7], quat, **TOL)


# ------------------------------------------------------------------ quaternions


def test_quaternion_to_matrix_matches_scipy_and_ignores_norm():
    rng = np.random.default_rng(1)
    quats = rng.normal(size=(64, 4))  # non-unit, arbitrary sign
    expected = Rotation.from_quat(quats).as_matrix()
    actual = quaternion_to_matrix(torch.from_numpy(quats))
    torch.testing.assert_close(actual, torch.from_numpy(expected))
    scaled = quaternion_to_matrix(torch.from_numpy(quats * 3.7))
    torch.testing.assert_close(scaled, actual)
    torch.testing.assert_close(quaternion_to_matrix(-torch.from_numpy(quats)), actual)


def test_matrix_to_quaternion_torch_and_scipy_agree():
    rotations = Rotation.random(200, random_state=2).as_matrix()
    # Include near-180-degree rotations and the identity, where the w candidate is poorly conditioned.
    extra = Rotation.from_rotvec([[math.pi, 0, 0], [0, math.pi - 1e-7, 0], [0, 0, 0], [1, 1, 1]]).as_matrix()
    mats = torch.from_numpy(np.concatenate([rotations, extra]))
    q_torch = matrix_to_quaternion(mats)
    q_scipy = matrix_to_quaternion_scipy(mats)
    assert (q_torch[..., 3] >= 0).all() and (q_scipy[..., 3] >= 0).all()
    # Sign is only ambiguous when q_w == 0 (180-degree rotations): compare the rotations there.
    torch.testing.assert_close(quaternion_to_matrix(q_torch), mats)
    torch.testing.assert_close(quaternion_to_matrix(q_scipy), mats)
    regular = q_scipy[..., 3] > 1e-6
    torch.testing.assert_close(q_torch[regular], q_scipy[regular])
    torch.testing.assert_close(q_torch.norm(dim=-1), torch.ones(len(mats), dtype=mats.dtype))


def test_matrix_to_quaternion_batched_and_differentiable():
    mats = torch.from_numpy(Rotation.random(6, random_state=3).as_matrix()).reshape(2, 3, 3, 3)
    assert matrix_to_quaternion(mats).shape == (2, 3, 4)
    assert matrix_to_quaternion_scipy(mats.float()).dtype == torch.float32
    mats = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1).requires_grad_()
    matrix_to_quaternion(mats).sum().backward()
    assert torch.isfinite(mats.grad).all()


def test_quaternion_to_matrix_gradcheck():
    quats = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(quaternion_to_matrix, (quats,))


# ------------------------------------------------------------------ pose encoding


@pytest.mark.parametrize("image_hw", [(70, 98), (518, 518), (392, 518)])
def test_encode_decode_round_trip(image_hw):
    n = 32
    height, width = image_hw
    extrinsics = random_extrinsics(n, seed=4)
    gen = torch.Generator().manual_seed(5)
    fov = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 1.5 + 0.2
    focal_y = (height / 2) / torch.tan(fov[:, 0] / 2)
    focal_x = (width / 2) / torch.tan(fov[:, 1] / 2)
    intrinsics = torch.zeros(n, 3, 3, dtype=torch.float64)
    intrinsics[:, 0, 0], intrinsics[:, 1, 1] = focal_x, focal_y
    intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 2, 2] = width / 2, height / 2, 1.0

    encoding = extri_intri_to_pose_encoding(extrinsics, intrinsics, image_hw)
    assert encoding.shape == (n, 9)
    torch.testing.assert_close(encoding[:, 7:], fov)
    torch.testing.assert_close(encoding[:, 3:7], matrix_to_quaternion_scipy(extrinsics[:, :, :3]))

    extrinsics2, intrinsics2 = pose_encoding_to_extri_intri(encoding, image_hw, intrinsics_dtype=None)
    torch.testing.assert_close(extrinsics2, extrinsics)
    torch.testing.assert_close(intrinsics2, intrinsics)
    extrinsics3, intrinsics3 = pose_encoding_to_extri_intri(encoding.float(), image_hw)
    torch.testing.assert_close(extrinsics3, extrinsics.float(), **TOL)
    assert intrinsics3.dtype == torch.float32


def test_pose_encoding_fov_order_and_batch_dims():
    encoding = torch.zeros(2, 3, 4, 9)
    encoding[..., 6] = 1.0
    encoding[..., 7] = 2 * math.atan(0.5)  # fov_h: f_y = (H/2) / 0.5 = H
    encoding[..., 8] = math.pi / 2  # fov_w: f_x = W/2
    extrinsics, intrinsics = pose_encoding_to_extri_intri(encoding, (40, 60))
    assert extrinsics.shape == (2, 3, 4, 3, 4) and intrinsics.shape == (2, 3, 4, 3, 3)
    expected_k = torch.tensor([[30.0, 0, 30], [0, 40.0, 20], [0, 0, 1]])
    torch.testing.assert_close(intrinsics, expected_k.expand_as(intrinsics))
    torch.testing.assert_close(extrinsics[..., :3], torch.eye(3).expand(2, 3, 4, 3, 3))
    assert pose_encoding_to_extri_intri(encoding, (40, 60), build_intrinsics=False)[1] is None


def test_pose_encoding_decode_is_differentiable():
    encoding = torch.randn(3, 9, dtype=torch.float64)
    encoding[:, 7:] = encoding[:, 7:].abs() + 0.5
    encoding.requires_grad_()
    extrinsics, intrinsics = pose_encoding_to_extri_intri(encoding, (28, 42), intrinsics_dtype=None)
    (extrinsics.sum() + intrinsics.sum()).backward()
    assert torch.isfinite(encoding.grad).all() and (encoding.grad[:, 7:] != 0).all()


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError):
        pose_encoding_to_extri_intri(torch.zeros(3, 7), (14, 14))
    with pytest.raises(InputError):
        pose_encoding_to_extri_intri(torch.zeros(3, 9), (14, 14), pose_encoding_type="relT_quaR_FoV")
    with pytest.raises(InputError):
        invert_se3(torch.zeros(3, 3))
    skewed = simple_intrinsics(4, 5)
    skewed[0, 1] = 0.1
    with pytest.raises(InputError):
        depth_to_camera_points(torch.ones(4, 5), skewed)


# ------------------------------------------------------------------ SE(3)


def test_invert_se3():
    extrinsics = random_extrinsics(10, seed=6).reshape(2, 5, 3, 4)
    inverse = invert_se3(extrinsics)
    assert inverse.shape == (2, 5, 4, 4)
    torch.testing.assert_close(inverse, torch.linalg.inv(to_4x4(extrinsics)))
    torch.testing.assert_close(invert_se3(to_4x4(extrinsics)), inverse)
    torch.testing.assert_close(invert_se3(inverse)[..., :3, :], extrinsics)
    identity = to_4x4(extrinsics) @ inverse
    torch.testing.assert_close(identity, torch.eye(4, dtype=identity.dtype).expand_as(identity))


def test_camera_centers_and_cam_to_world_helpers():
    extrinsics = random_extrinsics(7, seed=7)
    centers = camera_centers(extrinsics)
    assert centers.shape == (7, 3)
    # The centre maps to the camera origin.
    origin = transform_points(extrinsics, centers.unsqueeze(-2)).squeeze(-2)
    torch.testing.assert_close(origin, torch.zeros_like(origin))
    cam_to_world = extrinsics_to_cam_to_world(extrinsics)
    torch.testing.assert_close(cam_to_world[:, :3, 3], centers)
    torch.testing.assert_close(cam_to_world_to_extrinsics(cam_to_world), extrinsics)
    torch.testing.assert_close(cam_to_world_to_extrinsics(cam_to_world[:, :3]), extrinsics)


def test_relative_to_first():
    extrinsics = random_extrinsics(8, seed=8).reshape(2, 4, 3, 4)
    relative = relative_to_first(extrinsics)
    eye = torch.eye(3, 4, dtype=extrinsics.dtype)
    torch.testing.assert_close(relative[:, 0], eye.expand(2, 3, 4))
    # Camera-frame coordinates of a point are unchanged once the point moves with the world.
    points = torch.randn(2, 4, 5, 3, dtype=extrinsics.dtype)
    moved = transform_points(extrinsics[:, :1], points)
    torch.testing.assert_close(transform_points(relative, moved), transform_points(extrinsics, points))


def test_to_homogeneous():
    points = torch.randn(2, 5, 3)
    homog = to_homogeneous(points)
    assert homog.shape == (2, 5, 4) and (homog[..., 3] == 1).all()
    torch.testing.assert_close(homog[..., :3], points)


# ------------------------------------------------------------------ depth and projection


def test_depth_to_camera_points_grid_convention():
    depth = torch.full((3, 4), 2.0, dtype=torch.float64)
    k = simple_intrinsics(3, 4, fx=1.0, fy=1.0)  # c = (2, 1.5)
    points = depth_to_camera_points(depth, k)
    assert points.shape == (3, 4, 3)
    torch.testing.assert_close(points[0, 0], torch.tensor([-4.0, -3.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(points[2, 3], torch.tensor([2.0, 1.0, 2.0], dtype=torch.float64))


def test_projection_of_unprojected_points_returns_pixel_grid():
    s, h, w = 3, 6, 9
    extrinsics = random_extrinsics(s, seed=9)
    intrinsics = torch.stack([simple_intrinsics(h, w, fx=10.0 + i, fy=12.0 - i) for i in range(s)])
    depth = torch.rand(s, h, w, dtype=torch.float64) + 0.5
    world = depth_to_world_points(depth, extrinsics, intrinsics)
    assert world.shape == (s, h, w, 3)
    uv, z = project_points(world, extrinsics, intrinsics)
    assert uv.shape == (s, h, w, 2) and z.shape == (s, h, w)
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([u, v], dim=-1).to(uv.dtype).expand_as(uv)
    torch.testing.assert_close(uv, grid)
    torch.testing.assert_close(z, depth)
    # Flat point lists and the numpy route agree as well.
    uv_flat, _ = project_points(world.reshape(s, -1, 3), extrinsics, intrinsics)
    torch.testing.assert_close(uv_flat, grid.reshape(s, -1, 2))
    numpy_route = unproject_depth_map_to_point_map(depth.numpy(), extrinsics.numpy(), intrinsics.numpy())
    torch.testing.assert_close(torch.from_numpy(numpy_route), world, **TOL)


def test_depth_to_world_points_batch_dims_and_grad():
    extrinsics = random_extrinsics(6, seed=10).reshape(2, 3, 3, 4).float()
    intrinsics = torch.from_numpy(np.stack([simple_intrinsics(4, 5).numpy()] * 6)).reshape(2, 3, 3, 3).float()
    depth = (torch.rand(2, 3, 4, 5) + 1.0).requires_grad_()
    world = depth_to_world_points(depth, extrinsics, intrinsics)
    assert world.shape == (2, 3, 4, 5, 3) and world.dtype == torch.float32
    world.sum().backward()
    assert depth.grad is not None and torch.isfinite(depth.grad).all()
