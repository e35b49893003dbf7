"""Transform builders of template deformation (Bertrand2019, sec. 4.3-4.4): the global similarity
``G`` of eq. 4.8 with its analytic inverse (3D and 2D), and the smoothing (eq. 4.5, 4.9) and
upsampling of the local displacement field.

Conventions are those of ``torch.nn.functional.affine_grid``/``grid_sample``: matrices act on
normalised coordinates in ``[-1, 1]`` ordered ``(x, y, z) = (W, H, D)`` and are returned
batched without the homogeneous row (``[N, 3, 4]``, 2D ``[N, 2, 3]``); ``theta =
similarity_matrix(p)`` resamples a template as ``phi_0 ∘ G``, ``similarity_inverse(p)`` moves
content by ``G``. The 9 parameters are ``(tx, ty, tz, rx, ry, rz, sx, sy, sz)`` (7 with one
isotropic scale; 2D ``(tx, ty, angle, sx, sy)``). Displacement fields are in normalised units,
so an upsampled field needs no rescaling. The composition of ``G`` and the typos of
Bertrand2019 it corrects: docs/deformations.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medtune.errors import MedtuneError


class TransformError(MedtuneError, ValueError):
    """A transform builder got an argument of the wrong shape, type or value."""


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """``Rz·Ry·Rx`` of eq. 4.8 for angles ``[N, 3]`` = ``(rx, ry, rz)`` in radians -> ``[N, 3, 3]``."""
    if not isinstance(angles, torch.Tensor) or angles.dim() != 2 or angles.shape[1] != 3:
        raise TransformError(f"angles must be a tensor [N, 3] of (rx, ry, rz), got {_describe(angles)}")
    rx, ry, rz = angles.unbind(1)
    one, zero = torch.ones_like(rx), torch.zeros_like(rx)
    rot_x = _matrix([[one, zero, zero], [zero, rx.cos(), -rx.sin()], [zero, rx.sin(), rx.cos()]])
    rot_y = _matrix([[ry.cos(), zero, -ry.sin()], [zero, one, zero], [ry.sin(), zero, ry.cos()]])
    rot_z = _matrix([[rz.cos(), -rz.sin(), zero], [rz.sin(), rz.cos(), zero], [zero, zero, one]])
    return rot_z @ rot_y @ rot_x


def similarity_matrix(params: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """``G = T·C₊·Rz·Ry·Rx·S·C₋`` (eq. 4.8) as ``[N, 3, 4]``, i.e. ``G(x) = t + c + R·S·(x - c)``.

    Args:
        params: ``[N, 9]`` = ``(tx, ty, tz, rx, ry, rz, sx, sy, sz)``, or ``[N, 7]`` with one
            isotropic scale last. Floating point; scales must be non-zero.
        center: rotation/scaling centre in normalised ``(x, y, z)``, ``[3]`` or ``[N, 3]``;
            ``None`` is the volume centre (the origin).
    """
    translation, angles, scales = _split_params(params, dims=3)
    rotation = rotation_matrix(angles)
    linear = rotation * scales[:, None, :]  # R·S: column j scaled by s_j
    return _with_center(linear, translation, _center(center, params, dims=3))


def similarity_inverse(params: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """``G⁻¹ = C₊·S⁻¹·Rx⁻¹·Ry⁻¹·Rz⁻¹·C₋·T⁻¹`` as ``[N, 3, 4]``, from the inverse factors.

    Same arguments as :func:`similarity_matrix`; ``G⁻¹(y) = c + S⁻¹·Rᵀ·(y - t - c)``.
    """
    translation, angles, scales = _split_params(params, dims=3)
    rotation = rotation_matrix(angles)
    linear = rotation.transpose(1, 2) / scales[:, :, None]  # S⁻¹·Rᵀ: row i divided by s_i
    return _inverse_with_center(linear, translation, _center(center, params, dims=3))


def similarity_matrix_2d(params: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """The 2D analogue ``G = T·C₊·R·S·C₋`` as ``[N, 2, 3]`` (for ``affine_grid`` on ``[N, C, H, W]``).

    Args:
        params: ``[N, 5]`` = ``(tx, ty, angle, sx, sy)``, or ``[N, 4]`` with one isotropic scale.
        center: centre in normalised ``(x, y)``, ``[2]`` or ``[N, 2]``; ``None`` is the origin.
    """
    translation, angle, scales = _split_params(params, dims=2)
    linear = _rotation_2d(angle[:, 0]) * scales[:, None, :]
    return _with_center(linear, translation, _center(center, params, dims=2))


def similarity_inverse_2d(params: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """The analytic inverse of :func:`similarity_matrix_2d`, ``[N, 2, 3]``."""
    translation, angle, scales = _split_params(params, dims=2)
    linear = _rotation_2d(angle[:, 0]).transpose(1, 2) / scales[:, :, None]
    return _inverse_with_center(linear, translation, _center(center, params, dims=2))


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The affine map ``outer ∘ inner`` (apply ``inner`` first) of two ``[N, d, d+1]`` matrices.

    ``d`` is 2 or 3; a batch of 1 broadcasts against a batch of ``N``.
    """
    for name, matrix in (("outer", outer), ("inner", inner)):
        if not isinstance(matrix, torch.Tensor) or matrix.dim() != 3 or matrix.shape[1] not in (2, 3) \
                or matrix.shape[2] != matrix.shape[1] + 1:
            raise TransformError(f"{name} must be an affine matrix [N, 3, 4] or [N, 2, 3], got {_describe(matrix)}")
    if outer.shape[1] != inner.shape[1]:
        raise TransformError(f"outer {tuple(outer.shape)} and inner {tuple(inner.shape)} differ in dimension")
    if outer.shape[0] != inner.shape[0] and 1 not in (outer.shape[0], inner.shape[0]):
        raise TransformError(f"outer and inner have batch sizes {outer.shape[0]} and {inner.shape[0]}; "
                             "use equal sizes or a batch of 1")
    linear = outer[:, :, :-1] @ inner[:, :, :-1]
    offset = outer[:, :, :-1] @ inner[:, :, -1:] + outer[:, :, -1:]
    return torch.cat([linear, offset], dim=2)


def gaussian_kernel1d(sigma: float, truncate: float = 3.0, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """The sampled Gaussian ``K_σ`` (eq. 4.5) on ``[-r, r]``, ``r = ceil(truncate·σ)``, summing to 1.

    ``sigma`` is in voxels; ``sigma = 0`` gives the identity kernel ``[1]``.
    """
    if not sigma >= 0 or not math.isfinite(sigma):
        raise TransformError(f"sigma must be a finite number >= 0 (voxels), got {sigma}")
    if not truncate > 0:
        raise TransformError(f"truncate must be > 0, got {truncate}")
    if sigma == 0:
        return torch.ones(1, dtype=dtype, device=device)
    radius = max(1, math.ceil(truncate * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def smooth_displacement(
    field: torch.Tensor,
    method: str = "gaussian",
    sigma: float | Sequence[float] = 1.0,
    size: int | Sequence[int] = 3,
    truncate: float = 3.0,
    padding_mode: str = "replicate",
) -> torch.Tensor:
    """Smooth a displacement field ``[N, 3, D, H, W]`` (or ``[N, 2, H, W]``) channel by channel.

    A separable convolution, one 1D pass per axis: ``method="gaussian"`` is ``K_σ * v`` of
    eq. 4.5/4.9 (``sigma`` in voxels, per axis ``(D, H, W)`` or one for all, kernel from
    :func:`gaussian_kernel1d`); ``method="mean"`` is Bertrand2019's box filter (sec. 4.4.2, ``size``
    odd, 3 in Bertrand2019). ``padding_mode`` is ``"replicate"`` (a constant field stays constant),
    ``"reflect"`` or ``"zeros"``.
    """
    spatial = _check_field(field)
    if method == "gaussian":
        sigmas = _per_axis(sigma, spatial, "sigma")
        kernels = [gaussian_kernel1d(float(s), truncate, field.dtype, field.device) for s in sigmas]
    elif method == "mean":
        sizes = _per_axis(size, spatial, "size")
        if any(int(k) != k or k < 1 or k % 2 == 0 for k in sizes):
            raise TransformError(f"size must be odd integers >= 1 for the mean filter, got {size}")
        kernels = [torch.full((int(k),), 1.0 / int(k), dtype=field.dtype, device=field.device) for k in sizes]
    else:
        raise TransformError(f"method must be 'gaussian' or 'mean', got {method!r}")
    if padding_mode not in ("replicate", "reflect", "zeros"):
        raise TransformError(f"padding_mode must be 'replicate', 'reflect' or 'zeros', got {padding_mode!r}")
    channels = field.shape[1]
    conv = F.conv3d if spatial == 3 else F.conv2d
    out = field
    for axis, kernel in enumerate(kernels):
        radius = (kernel.numel() - 1) // 2
        if radius == 0:
            continue
        shape = [channels, 1] + [1] * spatial
        shape[2 + axis] = kernel.numel()
        weight = kernel.reshape(1, 1, -1).expand(channels, 1, -1).reshape(shape)
        if padding_mode == "zeros":
            padding = [0] * spatial
            padding[axis] = radius
            out = conv(out, weight, padding=tuple(padding), groups=channels)
            continue
        if padding_mode == "reflect" and radius >= out.shape[2 + axis]:
            raise TransformError(f"padding_mode='reflect' needs a kernel radius ({radius}) smaller than the "
                                 f"field's axis {axis} ({out.shape[2 + axis]} voxels); lower sigma/size")
        pad = [0] * (2 * spatial)  # F.pad lists the last axis first
        pad[2 * (spatial - 1 - axis)] = pad[2 * (spatial - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode=padding_mode), weight, groups=channels)
    return out


def upsample_displacement(
    field: torch.Tensor, size: int | Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """Resize a low-resolution displacement field to ``size`` (``(D, H, W)`` or ``(H, W)``).

    Trilinear (bilinear in 2D) interpolation, as Bertrand2019 resizes its predicted field to the
    template's size (sec. 4.4.2). Values are in normalised units, which do not depend on the grid
    size, so they are not rescaled. Use the ``align_corners`` the warp will use (torch's default,
    ``False``, is the default here too); with ``True``, a field linear in the normalised
    coordinates is reproduced exactly.
    """
    spatial = _check_field(field)
    sizes = _per_axis(size, spatial, "size")
    if any(int(s) != s or s < 1 for s in sizes):
        raise TransformError(f"size must be positive integers, got {size}")
    mode = "trilinear" if spatial == 3 else "bilinear"
    return F.interpolate(field, size=tuple(int(s) for s in sizes), mode=mode, align_corners=align_corners)


def _split_params(params: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(translation [N, d], angles [N, 3 or 1], scales [N, d])`` from the parameter vector."""
    rotations = 3 if dims == 3 else 1
    full, isotropic = 2 * dims + rotations, dims + rotations + 1
    expected = "(tx, ty, tz, rx, ry, rz, sx, sy, sz)" if dims == 3 else "(tx, ty, angle, sx, sy)"
    if not isinstance(params, torch.Tensor) or params.dim() != 2 or params.shape[1] not in (full, isotropic):
        raise TransformError(f"params must be a tensor [N, {full}] {expected} or [N, {isotropic}] with one "
                             f"isotropic scale, got {_describe(params)}")
    if not params.is_floating_point():
        raise TransformError(f"params must be floating point, got {params.dtype}")
    translation = params[:, :dims]
    angles = params[:, dims:dims + rotations]
    scales = params[:, dims + rotations:]
    if scales.shape[1] == 1:
        scales = scales.expand(-1, dims)
    return translation, angles, scales


def _center(center: torch.Tensor | None, params: torch.Tensor, dims: int) -> torch.Tensor | None:
    if center is None:
        return None
    center = torch.as_tensor(center, dtype=params.dtype, device=params.device)
    if center.dim() == 1:
        center = center[None]
    if center.dim() != 2 or center.shape[1] != dims or center.shape[0] not in (1, params.shape[0]):
        raise TransformError(f"center must be [{dims}] or [N, {dims}] in normalised coordinates "
                             f"with N = {params.shape[0]}, got {tuple(center.shape)}")
    return center.expand(params.shape[0], -1)


def _with_center(linear: torch.Tensor, translation: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """``[A | t + c - A·c]``: the map ``x -> t + c + A·(x - c)``."""
    offset = translation
    if center is not None:
        offset = translation + center - (linear @ center[:, :, None])[:, :, 0]
    return torch.cat([linear, offset[:, :, None]], dim=2)


def _inverse_with_center(inverse_linear: torch.Tensor, translation: torch.Tensor,
                         center: torch.Tensor | None) -> torch.Tensor:
    """``[A⁻¹ | c - A⁻¹·(t + c)]``: the map ``y -> c + A⁻¹·(y - t - c)``."""
    shifted = translation if center is None else translation + center
    offset = -(inverse_linear @ shifted[:, :, None])[:, :, 0]
    if center is not None:
        offset = offset + center
    return torch.cat([inverse_linear, offset[:, :, None]], dim=2)


def _rotation_2d(angle: torch.Tensor) -> torch.Tensor:
    return _matrix([[angle.cos(), -angle.sin()], [angle.sin(), angle.cos()]])


def _matrix(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """``[N, r, c]`` from nested lists of ``[N]`` tensors."""
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def _check_field(field: torch.Tensor) -> int:
    if not isinstance(field, torch.Tensor) or field.dim() not in (4, 5) or field.shape[1] != field.dim() - 2:
        raise TransformError(f"field must be a displacement field [N, 3, D, H, W] or [N, 2, H, W], "
                             f"got {_describe(field)}")
    if not field.is_floating_point():
        raise TransformError(f"field must be floating point, got {field.dtype}")
    return field.dim() - 2


def _per_axis(value: float | Sequence[float], spatial: int, name: str) -> list[float]:
    values = list(value) if isinstance(value, Sequence) else [value] * spatial
    if len(values) != spatial:
        raise TransformError(f"{name} must be one number or {spatial} (one per spatial axis), got {value}")
    return values


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)}"
    return type(value).__name__
