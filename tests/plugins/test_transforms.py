"""Transform builders of template deformation: the similarity of eq. 4.8 and its inverse (3D and
2D), through affine_grid/grid_sample on a phantom blob; displacement smoothing and upsampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medtune.errors import MedtuneError
from medtune.plugins.deformations import (
    TransformError,
    compose_affine,
    gaussian_kernel1d,
    rotation_matrix,
    similarity_inverse,
    similarity_inverse_2d,
    similarity_matrix,
    similarity_matrix_2d,
    smooth_displacement,
    upsample_displacement,
)


def random_params(count: int, dims: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Translations in [-0.3, 0.3], angles in [-pi, pi], scales in [0.6, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    rotations = 3 if dims == 3 else 1
    translation = (torch.rand(count, dims, generator=g, dtype=dtype) - 0.5) * 0.6
    angles = (torch.rand(count, rotations, generator=g, dtype=dtype) - 0.5) * 2 * math.pi
    scales = 0.6 + 0.9 * torch.rand(count, dims, generator=g, dtype=dtype)
    return torch.cat([translation, angles, scales], dim=1)


def homogeneous(matrix: torch.Tensor) -> torch.Tensor:
    d = matrix.shape[1]
    bottom = torch.zeros(matrix.shape[0], 1, d + 1, dtype=matrix.dtype)
    bottom[:, 0, d] = 1
    return torch.cat([matrix, bottom], dim=1)


def apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """matrix [N, d, d+1] applied to points [N, d]."""
    return (matrix[:, :, :-1] @ points[:, :, None])[:, :, 0] + matrix[:, :, -1]


IDENTITY_3D = [[0, 0, 0, 0, 0, 0, 1, 1, 1]]


def test_identity_parameters_give_the_identity():
    eye = torch.eye(3, 4)[None]
    torch.testing.assert_close(similarity_matrix(torch.tensor(IDENTITY_3D, dtype=torch.float32)), eye)
    torch.testing.assert_close(similarity_inverse(torch.tensor(IDENTITY_3D, dtype=torch.float32)), eye)
    center = torch.tensor([0.2, -0.1, 0.4])
    with_center = similarity_matrix(torch.tensor(IDENTITY_3D, dtype=torch.float32), center=center)
    torch.testing.assert_close(with_center, eye)
    torch.testing.assert_close(similarity_matrix_2d(torch.tensor([[0.0, 0, 0, 1, 1]])), torch.eye(2, 3)[None])
    torch.testing.assert_close(similarity_matrix(torch.tensor([[0.0, 0, 0, 0, 0, 0, 1]])), eye)  # isotropic


def test_matrix_follows_equation_4_8_factor_by_factor():
    params = random_params(3, 3, torch.float64, seed=5)
    center = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    tx, ty, tz, rx, ry, rz, sx, sy, sz = params[1].tolist()
    T, Cp, Cm, S = (torch.eye(4, dtype=torch.float64) for _ in range(4))
    T[:3, 3] = torch.tensor([tx, ty, tz], dtype=torch.float64)
    Cp[:3, 3], Cm[:3, 3] = center, -center
    S[:3, :3] = torch.diag(torch.tensor([sx, sy, sz], dtype=torch.float64))
    c, s = math.cos, math.sin
    Rx = torch.tensor([[1, 0, 0, 0], [0, c(rx), -s(rx), 0], [0, s(rx), c(rx), 0], [0, 0, 0, 1]], dtype=torch.float64)
    Ry = torch.tensor([[c(ry), 0, -s(ry), 0], [0, 1, 0, 0], [s(ry), 0, c(ry), 0], [0, 0, 0, 1]], dtype=torch.float64)
    Rz = torch.tensor([[c(rz), -s(rz), 0, 0], [s(rz), c(rz), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    expected = (T @ Cp @ Rz @ Ry @ Rx @ S @ Cm)[:3]
    torch.testing.assert_close(similarity_matrix(params, center)[1], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("with_center", [False, True])
def test_inverse_is_analytic_and_composes_to_identity(dtype, tolerance, with_center):
    params = random_params(16, 3, dtype)
    center = (torch.rand(16, 3, dtype=dtype) - 0.5) if with_center else None
    forward, inverse = similarity_matrix(params, center), similarity_inverse(params, center)
    eye = torch.eye(3, 4, dtype=dtype).expand(16, -1, -1)
    # scales >= 0.6 amplify rounding by < 2; tolerance is per element
    torch.testing.assert_close(compose_affine(forward, inverse), eye, atol=2 * tolerance, rtol=0)
    torch.testing.assert_close(compose_affine(inverse, forward), eye, atol=2 * tolerance, rtol=0)
    torch.testing.assert_close(homogeneous(inverse), torch.linalg.inv(homogeneous(forward)),
                               atol=10 * tolerance, rtol=0)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_2d_inverse_composes_to_identity(dtype, tolerance):
    params = random_params(16, 2, dtype, seed=1)
    center = torch.rand(16, 2, dtype=dtype) - 0.5
    forward, inverse = similarity_matrix_2d(params, center), similarity_inverse_2d(params, center)
    eye = torch.eye(2, 3, dtype=dtype).expand(16, -1, -1)
    torch.testing.assert_close(compose_affine(forward, inverse), eye, atol=2 * tolerance, rtol=0)
    torch.testing.assert_close(homogeneous(inverse), torch.linalg.inv(homogeneous(forward)),
                               atol=10 * tolerance, rtol=0)


def test_rotations_are_orthonormal_with_determinant_one():
    angles = random_params(32, 3, torch.float64)[:, 3:6]
    rotation = rotation_matrix(angles)
    eye = torch.eye(3, dtype=torch.float64).expand(32, -1, -1)
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(32, dtype=torch.float64))
    unit_scale = torch.cat([torch.zeros(32, 3, dtype=torch.float64), angles, torch.ones(32, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(similarity_matrix(unit_scale)[:, :, :3], rotation)
    planar = similarity_matrix_2d(torch.tensor([[0.0, 0.0, 0.7, 1.0]], dtype=torch.float64))[:, :, :2]
    torch.testing.assert_close(torch.linalg.det(planar), torch.ones(1, dtype=torch.float64))


def test_the_centre_is_the_fixed_point_of_rotation_and_scaling():
    params = random_params(8, 3, torch.float64, seed=2)
    params[:, :3] = 0
    center = torch.rand(8, 3, dtype=torch.float64) - 0.5
    torch.testing.assert_close(apply(similarity_matrix(params, center), center), center)
    params[:, :3] = 0.1
    torch.testing.assert_close(apply(similarity_matrix(params, center), center), center + 0.1)


def blob(shape: tuple[int, ...], center: list[float], width: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian blob [1, 1, *shape] at ``center`` (normalised (x, y, ...)) and the voxel grid."""
    dims = len(shape)
    grid = F.affine_grid(torch.eye(dims, dims + 1, dtype=torch.float64)[None], [1, 1, *shape], align_corners=False)
    distance2 = ((grid - torch.tensor(center, dtype=torch.float64)) ** 2).sum(-1)
    return torch.exp(-distance2 / (2 * width**2))[None], grid


def centre_of_mass(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    weights = volume[0, 0][..., None]
    return (weights * grid[0]).flatten(0, -2).sum(0) / weights.sum()


def test_warping_a_blob_moves_it_by_g_and_scales_its_volume():
    shape = (24, 28, 32)  # (D, H, W): unequal so that x, y, z cannot be mixed up
    start = [0.1, -0.15, 0.05]
    image, grid = blob(shape, start)
    params = torch.tensor([[0.2, -0.1, 0.15, 0.3, -0.2, 0.5, 1.2, 0.9, 1.1]], dtype=torch.float64)
    center = torch.tensor([0.05, 0.0, -0.05], dtype=torch.float64)
    # affine_grid samples the input at theta(x): theta = G⁻¹ moves the content by G
    theta = similarity_inverse(params, center)
    moved = F.grid_sample(image, F.affine_grid(theta, [1, 1, *shape], align_corners=False), align_corners=False)
    expected = apply(similarity_matrix(params, center), torch.tensor([start], dtype=torch.float64))[0]
    voxel = 2 / torch.tensor([shape[2], shape[1], shape[0]], dtype=torch.float64)  # voxel size in (x, y, z)
    assert torch.all((centre_of_mass(moved, grid) - expected).abs() < 0.5 * voxel)
    ratio = moved.sum() / image.sum()
    assert abs(ratio.item() - 1.2 * 0.9 * 1.1) < 0.02
    # theta = G moves the content by G⁻¹ (the template resampling phi_0 ∘ G of eq. 4.7)
    pulled = F.grid_sample(image, F.affine_grid(similarity_matrix(params, center), [1, 1, *shape],
                                                align_corners=False), align_corners=False)
    expected = apply(similarity_inverse(params, center), torch.tensor([start], dtype=torch.float64))[0]
    assert torch.all((centre_of_mass(pulled, grid) - expected).abs() < 0.5 * voxel)


def test_pure_translation_moves_the_blob_along_the_named_axes():
    shape = (20, 24, 28)
    image, grid = blob(shape, [0.0, 0.0, 0.0])
    params = torch.tensor([[0.3, 0.0, -0.2, 0, 0, 0, 1, 1, 1]], dtype=torch.float64)
    moved = F.grid_sample(image, F.affine_grid(similarity_inverse(params), [1, 1, *shape], align_corners=False),
                          align_corners=False)
    shift = centre_of_mass(moved, grid) - centre_of_mass(image, grid)
    torch.testing.assert_close(shift, torch.tensor([0.3, 0.0, -0.2], dtype=torch.float64), atol=0.02, rtol=0)


def test_2d_warp_moves_the_blob_by_g():
    shape = (40, 48)
    start = [0.1, -0.1]
    image, grid = blob(shape, start)
    params = torch.tensor([[-0.15, 0.2, 0.6, 1.3, 0.8]], dtype=torch.float64)
    theta = similarity_inverse_2d(params)
    moved = F.grid_sample(image, F.affine_grid(theta, [1, 1, *shape], align_corners=False), align_corners=False)
    expected = apply(similarity_matrix_2d(params), torch.tensor([start], dtype=torch.float64))[0]
    torch.testing.assert_close(centre_of_mass(moved, grid), expected, atol=0.02, rtol=0)
    assert abs((moved.sum() / image.sum()).item() - 1.3 * 0.8) < 0.02


def test_gradients_flow_to_the_parameters():
    params = random_params(2, 3, torch.float64).requires_grad_()
    center = (torch.rand(2, 3, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(similarity_matrix, (params, center))
    assert torch.autograd.gradcheck(similarity_inverse, (params, center))
    params_2d = random_params(2, 2, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(similarity_matrix_2d, (params_2d,))
    assert torch.autograd.gradcheck(similarity_inverse_2d, (params_2d,))
    isotropic = random_params(2, 3, torch.float64)[:, :7].clone().requires_grad_()
    assert torch.autograd.gradcheck(similarity_inverse, (isotropic,))
    field = torch.randn(1, 3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: smooth_displacement(v, sigma=0.6), (field,))
    assert torch.autograd.gradcheck(lambda v: upsample_displacement(v, (3, 4, 4)), (field,))


@pytest.mark.parametrize("method", ["gaussian", "mean"])
@pytest.mark.parametrize("padding_mode", ["replicate", "reflect"])
def test_smoothing_preserves_a_constant_field_and_reduces_noise(method, padding_mode):
    constant = torch.tensor([0.1, -0.2, 0.3]).reshape(1, 3, 1, 1, 1).expand(2, 3, 8, 9, 10).contiguous()
    smoothed = smooth_displacement(constant, method=method, sigma=1.5, size=3, padding_mode=padding_mode)
    torch.testing.assert_close(smoothed, constant)
    noise = torch.randn(2, 3, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    smoothed = smooth_displacement(noise, method=method, sigma=1.0, size=3, padding_mode=padding_mode)
    assert smoothed.shape == noise.shape
    assert smoothed.var() < 0.5 * noise.var()
    noise_2d = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    assert smooth_displacement(noise_2d, method=method, padding_mode=padding_mode).var() < 0.5 * noise_2d.var()


def test_gaussian_smoothing_of_a_delta_is_the_sampled_kernel():
    sigma = (1.0, 0.7, 1.3)
    field = torch.zeros(1, 3, 15, 15, 15, dtype=torch.float64)
    field[:, :, 7, 7, 7] = 1.0
    smoothed = smooth_displacement(field, sigma=sigma, padding_mode="zeros")
    kd, kh, kw = (gaussian_kernel1d(s, dtype=torch.float64) for s in sigma)
    expected = kd[:, None, None] * kh[None, :, None] * kw[None, None, :]
    rd, rh, rw = ((k.numel() - 1) // 2 for k in (kd, kh, kw))
    window = smoothed[0, :, 7 - rd:8 + rd, 7 - rh:8 + rh, 7 - rw:8 + rw]
    for channel in range(3):
        torch.testing.assert_close(window[channel], expected, atol=1e-14, rtol=0)
    assert abs(smoothed.sum().item() - 3.0) < 1e-12  # nothing leaks outside the kernel window
    x = torch.arange(-3, 4, dtype=torch.float64)
    reference = torch.exp(-x**2 / 2)
    torch.testing.assert_close(gaussian_kernel1d(1.0, dtype=torch.float64), reference / reference.sum())


def test_mean_filter_of_a_delta_is_a_box():
    field = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    field[:, :, 4, 4] = 1.0
    smoothed = smooth_displacement(field, method="mean", size=3, padding_mode="zeros")
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[3:6, 3:6] = 1 / 9
    torch.testing.assert_close(smoothed[0, 1], expected)


@pytest.mark.parametrize("align_corners", [False, True])
def test_upsampling_reproduces_constant_fields(align_corners):
    constant = torch.tensor([0.1, -0.2, 0.3]).reshape(1, 3, 1, 1, 1).expand(1, 3, 5, 6, 7)
    up = upsample_displacement(constant, (10, 12, 14), align_corners=align_corners)
    torch.testing.assert_close(up, constant[:, :, :1, :1, :1].expand(1, 3, 10, 12, 14))
    assert upsample_displacement(torch.zeros(1, 2, 4, 4), 9).shape == (1, 2, 9, 9)


def test_upsampling_reproduces_a_linear_field_in_normalised_units():
    """A field linear in the normalised coordinates keeps its values: no rescaling is needed."""
    coefficients = torch.tensor([[0.3, -0.1, 0.2], [0.05, 0.4, -0.2], [-0.3, 0.1, 0.25]], dtype=torch.float64)

    def linear_field(shape: tuple[int, int, int], align_corners: bool) -> torch.Tensor:
        grid = F.affine_grid(torch.eye(3, 4, dtype=torch.float64)[None], [1, 1, *shape], align_corners=align_corners)
        return (grid @ coefficients.T).permute(0, 4, 1, 2, 3)

    low, high = (5, 6, 7), (16, 18, 20)
    exact = upsample_displacement(linear_field(low, True), high, align_corners=True)
    torch.testing.assert_close(exact, linear_field(high, True), atol=1e-12, rtol=0)
    # align_corners=False: exact away from the border half-voxel, where values are clamped
    approx = upsample_displacement(linear_field(low, False), high, align_corners=False)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    torch.testing.assert_close(approx[inner], linear_field(high, False)[inner], atol=1e-12, rtol=0)


@pytest.mark.parametrize("call,argument", [
    (lambda: similarity_matrix(torch.zeros(2, 8)), "params"),
    (lambda: similarity_matrix(torch.zeros(9)), "params"),
    (lambda: similarity_matrix(torch.zeros(2, 9, dtype=torch.int64)), "params"),
    (lambda: similarity_inverse(torch.zeros(2, 9), center=torch.zeros(2)), "center"),
    (lambda: similarity_matrix_2d(torch.zeros(2, 9)), "params"),
    (lambda: rotation_matrix(torch.zeros(2, 2)), "angles"),
    (lambda: compose_affine(torch.zeros(2, 3, 4), torch.zeros(2, 3, 3)), "inner"),
    (lambda: compose_affine(torch.zeros(2, 3, 4), torch.zeros(2, 2, 3)), "dimension"),
    (lambda: smooth_displacement(torch.zeros(1, 2, 4, 4, 4)), "field"),
    (lambda: smooth_displacement(torch.zeros(3, 4, 4, 4)), "field"),
    (lambda: smooth_displacement(torch.zeros(1, 3, 4, 4, 4), method="median"), "method"),
    (lambda: smooth_displacement(torch.zeros(1, 3, 4, 4, 4), method="mean", size=4), "size"),
    (lambda: smooth_displacement(torch.zeros(1, 3, 4, 4, 4), sigma=-1.0), "sigma"),
    (lambda: smooth_displacement(torch.zeros(1, 3, 4, 4, 4), sigma=(1.0, 1.0)), "sigma"),
    (lambda: smooth_displacement(torch.zeros(1, 3, 4, 4, 4), sigma=3.0, padding_mode="reflect"), "padding_mode"),
    (lambda: smooth_displacement(torch.zeros(1, 3, 4, 4, 4), padding_mode="wrap"), "padding_mode"),
    (lambda: upsample_displacement(torch.zeros(1, 3, 4, 4, 4), (8, 8)), "size"),
    (lambda: upsample_displacement(torch.zeros(1, 3, 4, 4), 8), "field"),
])
def test_wrong_arguments_raise_a_medtune_error_naming_them(call, argument):
    with pytest.raises(TransformError, match=argument) as error:
        call()
    assert isinstance(error.value, MedtuneError) and isinstance(error.value, ValueError)
