"""warp3d: trilinear (or nearest) resampling of a volume through an affine and a displacement field.

One module over 600 lines on purpose: it reads top-down as every kernel file does (reference,
Triton kernels, launchers, registration), and the op's three backends share its argument checks.

``warp3d(volume, displacement, affine)`` resamples ``volume`` [N, C, D, H, W] (2D: [N, C, H, W])
at the points ``q(x)`` of an output grid, in one pass and without materialising a sampling grid.
Coordinates are ``grid_sample``'s normalised [-1, 1], last axis ordered (x, y, z) = (W, H, D);
``affine`` is [N, 3, 4] (2D: [N, 2, 3]) as for ``affine_grid``; ``displacement`` is
[N, 3, d, h, w] (2D: [N, 2, h, w]) in normalised units at its own resolution, sampled
trilinearly with border padding (and the call's ``align_corners``) where it applies:

    compose="affine_first"        q = p + u(p), p = A x   (template composition φ0 ∘ L ∘ G,
                                                           Bertrand2019, eq. 4.7)
    compose="displacement_first"  q = A (x + u(x))
    no affine                     q = x + u(x)            (the registration warp)
    no displacement               q = A x

Inside, both conventions of ``align_corners`` and the output/input/displacement resolutions are
folded into per-sample voxel-space maps: the volume voxel sampled for output voxel ``i`` is
``Mv [i, 1] + B u(Mu [i, 1])`` with ``Mv``, ``Mu`` [N, 3, 4] and ``B`` [N, 3, K] built from the
affine by ordinary differentiable torch ops, so the kernels only return gradients with respect
to these small matrices and autograd carries them to the affine. Identity maps are therefore
exact: an identity affine and/or a zero displacement at the volume's size return the volume
bit for bit, for both ``align_corners`` (``affine_grid`` + ``grid_sample`` itself is only
exact up to rounding). 2D inputs run through the same kernels as volumes of depth 1 whose z
voxel coordinate is exactly 0. Without an affine the maps depend on the shapes alone and are
built once per shape. A displacement at the output's size read at the output voxel's own index
(the registration warp, and ``displacement_first``) is read there directly, not interpolated.

Gradients: only those the call needs, wrt the volume (scattered; atomics on Triton; on the
CPU, when a thread does not own whole samples, into per-thread windows summed afterwards), the
displacement (through its trilinear weights, including the chain rule through sampling u at p)
and the affine. ``mode="nearest"`` (label maps, float or integer) passes gradients to a float
volume only: those wrt the displacement and affine are zero, as with ``grid_sample``.

Dispatch: the backend's kernels, except for small 2D calls, which run as ``affine_grid`` +
``grid_sample`` when the automatic choice is the C++ backend (``runs_as_grid_sample``, the one
rule, with the reasons next to it).

This file reads top-down: reference, PyTorch backend, Triton kernels, launchers, registration,
dispatch rule, front-end.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from medtune.kernels._common import (
    KernelError, eager_call, eager_function, load_extension, register_backends, select, tl, triton,
)
from medtune.kernels.dispatch import forced_backend

COMPOSITIONS = ("affine_first", "displacement_first")
MODES = ("bilinear", "nearest")
PADDING_MODES = ("zeros", "border")
FLOAT_DTYPES = (torch.float32, torch.float64)
# Integer label maps go through the float kernels: exact for labels below 2**24 in float32.
EXACT_LABEL_LIMIT = {torch.float32: 2**24, torch.float64: 2**53}
NUM_GRAD_SLOTS = 33  # per-sample gradient sums: Mv (12), Mu (12), B (3 x K <= 9)


class Prepared(NamedTuple):
    """Validated inputs: 3D views, the affine as [N, 3, 4] (or None), and the options."""

    volume: Tensor  # [N, C, D, H, W] floating (integer label maps converted)
    displacement: Tensor | None  # [N, K, d, h, w], K = 2 (2D) or 3
    affine: Tensor | None  # [N, 3, 4] (2D affines embedded)
    affine_first: bool
    nearest: bool
    border: bool
    align_corners: bool
    size: tuple[int, int, int]  # output (D, H, W); D = 1 in 2D
    two_d: bool
    label_dtype: torch.dtype | None  # the integer dtype to return, for label maps


def _error(message: str) -> KernelError:
    return KernelError(f"warp3d: {message}")


def prepare(volume: Tensor, displacement: Tensor | None, affine: Tensor | None, compose: str,
            mode: str, padding_mode: str, align_corners: bool,
            size: tuple[int, ...] | list[int] | torch.Size | None) -> Prepared:
    """Check shapes, dtypes, devices and options; bring everything into the 3D layout."""
    if not isinstance(volume, Tensor):
        raise _error(f"volume must be a torch.Tensor, got {type(volume).__name__}")
    if compose not in COMPOSITIONS:
        raise _error(f"compose must be one of {COMPOSITIONS}, got {compose!r}")
    if mode not in MODES:
        raise _error(f"mode must be one of {MODES}, got {mode!r}")
    if padding_mode not in PADDING_MODES:
        raise _error(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if volume.dim() not in (4, 5):
        raise _error(
            f"volume must be [N, C, D, H, W] or [N, C, H, W], got shape {tuple(volume.shape)}"
        )
    dims = volume.dim() - 2
    n = volume.shape[0]
    if volume.numel() == 0:
        raise _error(f"volume must not be empty, got shape {tuple(volume.shape)}")
    floats = [t for t in (displacement, affine) if t is not None]
    for name, t in (("displacement", displacement), ("affine", affine)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise _error(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.device != volume.device:
            raise _error(f"volume is on {volume.device} but {name} is on {t.device}; "
                         "move them to the same device")
        if t.dtype not in FLOAT_DTYPES:
            raise _error(f"{name} must be float32 or float64, got {t.dtype}")
    integer = not volume.is_floating_point()
    if integer:
        if volume.is_complex():
            raise _error(f"volume must be real, got {volume.dtype}")
        if mode != "nearest":
            raise _error(f"an integer volume ({volume.dtype}) is a label map: resample it with "
                         "mode='nearest', or convert it to float for bilinear interpolation")
        dtype = floats[0].dtype if floats else torch.float32
    else:
        if volume.dtype not in FLOAT_DTYPES:
            raise _error(f"volume must be float32, float64 or an integer label map, got "
                         f"{volume.dtype}; convert it with .float()")
        dtype = volume.dtype
    for t in floats:
        if t.dtype != dtype:
            raise _error(f"volume, displacement and affine must share one dtype, got "
                         f"{', '.join(str(x.dtype) for x in (volume, *floats))}")
    if displacement is not None:
        if displacement.dim() != dims + 2 or displacement.shape[:2] != (n, dims):
            want = "[N, 3, d, h, w]" if dims == 3 else "[N, 2, h, w]"
            raise _error(f"displacement must be {want} with N = {n} for a {dims}D volume of shape "
                         f"{tuple(volume.shape)}, got {tuple(displacement.shape)}")
        if displacement.numel() == 0:
            raise _error(f"displacement must not be empty, got {tuple(displacement.shape)}")
    if affine is not None:
        if affine.shape == (dims, dims + 1):
            affine = affine.expand(n, dims, dims + 1)
        if affine.shape != (n, dims, dims + 1):
            raise _error(f"affine must be [N, {dims}, {dims + 1}] (or [{dims}, {dims + 1}]) with "
                         f"N = {n} for a {dims}D volume, got {tuple(affine.shape)}")
    if size is None:
        size = (displacement if displacement is not None else volume).shape[2:]
    size = tuple(size)
    if len(size) != dims or not all(isinstance(s, int) and s > 0 for s in size):
        raise _error(f"size must be {dims} positive integers (the output's spatial size), "
                     f"got {size!r}")
    label_dtype = None
    if integer:
        label_dtype = volume.dtype
        limit = EXACT_LABEL_LIMIT[dtype]
        # only a dtype that can exceed the limit is checked: comparing an int32 map with 2**53
        # would wrap the limit to int32 and reject every label
        if volume.dtype != torch.bool and torch.iinfo(volume.dtype).max > limit and bool(
                (volume.abs() > limit).any()):
            raise _error(f"label values beyond ±{limit} are not exact in {dtype}; pass a float64 "
                         "displacement/affine or relabel")
        volume = volume.to(dtype)
    if dims == 2:
        volume = volume.unsqueeze(2)
        displacement = displacement.unsqueeze(2) if displacement is not None else None
        if affine is not None:  # [[a, b, t], [c, d, s]] -> x, y rows and columns of a 3 x 4 map
            affine = F.pad(affine, (0, 1)).index_select(2, torch.tensor([0, 1, 3, 2],
                                                                        device=affine.device))
            affine = F.pad(affine, (0, 0, 0, 1))
        size = (1, *size)
    return Prepared(volume, displacement, affine, compose == "affine_first", mode == "nearest",
                    padding_mode == "border", bool(align_corners), size, dims == 2, label_dtype)


# --- reference -------------------------------------------------------------------------------


def warp3d_reference(volume: Tensor, displacement: Tensor | None = None,
                     affine: Tensor | None = None, *, compose: str = "affine_first",
                     mode: str = "bilinear", padding_mode: str = "zeros",
                     align_corners: bool = False,
                     size: tuple[int, ...] | None = None) -> Tensor:
    """``affine_grid`` + ``grid_sample`` (the displacement itself sampled with ``grid_sample``
    unless it is read at its own voxels): the ground truth every backend is tested against;
    autograd gives its gradients."""
    prepare(volume, displacement, affine, compose, mode, padding_mode, align_corners, size)
    return _grid_sample_path(volume, displacement, affine, compose, mode, padding_mode,
                             align_corners, size)


def _grid_sample_path(volume: Tensor, displacement: Tensor | None, affine: Tensor | None,
                      compose: str, mode: str, padding_mode: str, align_corners: bool,
                      size: tuple[int, ...] | None) -> Tensor:
    """warp3d_reference on validated arguments."""
    dims = volume.dim() - 2
    n = volume.shape[0]
    integer = not volume.is_floating_point()
    dtype = next((t.dtype for t in (displacement, affine) if t is not None), torch.float32)
    field = volume.to(dtype) if integer else volume
    if size is None:
        size = (displacement if displacement is not None else volume).shape[2:]
    shape = (n, 1, *size)
    eye = torch.eye(dims, dims + 1, dtype=field.dtype, device=field.device).expand(n, -1, -1)
    if affine is not None and affine.dim() == 2:
        affine = affine.expand(n, -1, -1)
    affine_first = compose == "affine_first"
    grid = F.affine_grid(affine if affine is not None and affine_first else eye, shape,
                         align_corners=align_corners)  # [N, *size, dims]
    if displacement is not None:
        if tuple(displacement.shape[2:]) == tuple(size) and (affine is None or not affine_first):
            u = displacement  # at the identity grid: its own voxels, which grid_sample rounds
        else:
            u = F.grid_sample(displacement, grid, mode="bilinear", padding_mode="border",
                              align_corners=align_corners)
        grid = grid + u.movedim(1, -1)
    if affine is not None and not affine_first:
        grid = grid @ affine[:, None, :, :dims].transpose(-1, -2).reshape(
            (n,) + (1,) * (dims - 1) + (dims, dims)) + affine[:, :, dims].reshape(
            (n,) + (1,) * dims + (dims,))
    out = F.grid_sample(field, grid, mode=mode, padding_mode=padding_mode,
                        align_corners=align_corners)
    return out.round().to(volume.dtype) if integer else out


# --- voxel-space maps ------------------------------------------------------------------------


def _half_extent(sizes: Tensor, align_corners: bool) -> Tensor:
    return (sizes - 1) / 2 if align_corners else sizes / 2


def _voxel_map(affine: Tensor, grid_size, out_size, align_corners: bool) -> Tensor:
    """[N, 3, 4]: output voxel (x, y, z, 1) -> voxel of a grid of ``grid_size`` at ``A x``."""
    dtype, device = affine.dtype, affine.device
    sizes_in = torch.tensor(grid_size[::-1], dtype=torch.float64)  # (W, H, D)
    sizes_out = torch.tensor(out_size[::-1], dtype=torch.float64)
    s_in, c_in = _half_extent(sizes_in, align_corners), (sizes_in - 1) / 2
    h_out, c_out = _half_extent(sizes_out, align_corners), (sizes_out - 1) / 2
    ratio = torch.where(h_out[None, :] > 0, s_in[:, None] / h_out.clamp_min(0.5)[None, :], 0.0)
    # a single division per entry keeps an identity map exactly one (and its shift exactly 0)
    s_in, c_in, c_out, ratio = (t.to(dtype=dtype, device=device)
                                for t in (s_in, c_in, c_out, ratio))
    linear = affine[:, :, :3] * ratio
    shift = s_in * affine[:, :, 3] + c_in - (linear * c_out).sum(-1)
    return torch.cat([linear, shift[..., None]], dim=-1)


def voxel_maps(prepared: Prepared) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(Mv [N,3,4], Mu [N,3,4] or None, B [N,3,K] or None) for the prepared call."""
    volume, disp = prepared.volume, prepared.displacement
    shapes = (volume.shape[0], tuple(volume.shape[2:]),
              tuple(disp.shape[1:]) if disp is not None else None, prepared.size,
              prepared.affine_first, prepared.align_corners, prepared.two_d, volume.dtype,
              volume.device)
    if prepared.affine is None and not torch.compiler.is_compiling():
        return _maps_of_shapes(*shapes)  # the shapes alone decide them: built once
    return _maps(prepared.affine, *shapes)


def _maps(affine: Tensor | None, n: int, vol_size: tuple[int, ...],
          disp_shape: tuple[int, ...] | None, out: tuple[int, ...], affine_first: bool,
          ac: bool, two_d: bool, dtype: torch.dtype,
          device: torch.device) -> tuple[Tensor, Tensor | None, Tensor | None]:
    eye = torch.eye(3, 4, dtype=dtype, device=device).expand(n, 3, 4)
    a = affine if affine is not None else eye
    mv = _voxel_map(a, vol_size, out, ac)
    mu = b = None
    if disp_shape is not None:
        k, disp_size = disp_shape[0], disp_shape[1:]
        s_in = _half_extent(torch.tensor(vol_size[::-1], dtype=torch.float64), ac).to(
            dtype=dtype, device=device)
        if affine_first or affine is None:
            mu = _voxel_map(a, disp_size, out, ac)
            b = torch.diag(s_in)[:, :k].expand(n, 3, k)
        else:
            mu = _voxel_map(eye, disp_size, out, ac)
            b = s_in[None, :, None] * a[:, :, :k]
    if two_d:  # the z voxel coordinate is exactly 0
        keep = torch.tensor([1.0, 1.0, 0.0], dtype=dtype, device=device)[:, None]
        mv = mv * keep
        mu = mu * keep if mu is not None else None
        b = b * keep if b is not None else None
    return tuple(t.contiguous() if t is not None else None for t in (mv, mu, b))


@functools.lru_cache(maxsize=64)
def _maps_of_shapes(*shapes) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The maps without an affine (nothing to differentiate), kept per shape: building them
    takes a few dozen small tensor ops, more than a small warp itself. Built as ordinary
    tensors even under ``torch.inference_mode``, so that a later call with autograd can save
    them."""
    with torch.inference_mode(False):
        return _maps(None, *shapes)


# --- PyTorch backend (gathers and scatters in voxel space) ------------------------------------


def _prepare_axes(coords: Tensor, sizes: tuple[int, int, int], border: bool):
    """Per axis: the coordinate to sample at and d(it)/d(coordinate) (0 where border-clipped,
    as ``grid_sample``: strictly inside counts as inside)."""
    axes, slopes = [], []
    for a, s in enumerate(sizes):
        v = coords[:, a]
        slope = torch.ones_like(v)
        if border:
            inside = (v > 0) & (v < s - 1)
            slope = inside.to(v.dtype)
            v = torch.where(inside, v, v.clamp(0, s - 1))
        axes.append(torch.nan_to_num(v, nan=-2.0).clamp(-2, s + 1))
        slopes.append(slope)
    return axes, slopes


def _taps(field: Tensor, axes: list[Tensor], nearest: bool):
    """Yield (linear index [N, S], validity [N, S], weight [N, S], d weight / d axis [3 x [N, S]])
    for each of the 8 (nearest: 1) corners around the sampling points."""
    sizes = (field.shape[4], field.shape[3], field.shape[2])

    def index(idx):
        valid = torch.ones_like(idx[0], dtype=torch.bool)
        for i, s in zip(idx, sizes):
            valid &= (i >= 0) & (i < s)
        x, y, z = (i.clamp(0, s - 1) for i, s in zip(idx, sizes))
        return (z * sizes[1] + y) * sizes[0] + x, valid

    if nearest:
        lin, valid = index([torch.round(v).long() for v in axes])
        yield lin, valid, torch.ones_like(axes[0]), None
        return
    low = [torch.floor(v) for v in axes]
    frac = [v - lo for v, lo in zip(axes, low)]
    low = [lo.long() for lo in low]
    for corner in itertools.product((0, 1), repeat=3):
        factors = [f if c else 1 - f for c, f in zip(corner, frac)]
        lin, valid = index([lo + c for lo, c in zip(low, corner)])
        slopes = []
        for a, c in enumerate(corner):
            other = factors[(a + 1) % 3] * factors[(a + 2) % 3]
            slopes.append(other if c else -other)
        yield lin, valid, factors[0] * factors[1] * factors[2], slopes


def _gather(flat: Tensor, lin: Tensor, valid: Tensor) -> Tensor:
    n, k = flat.shape[:2]
    vals = flat.gather(2, lin[:, None, :].expand(n, k, lin.shape[-1]))
    return torch.where(valid[:, None, :], vals, 0.0)


def _sample(field: Tensor, coords: Tensor, border: bool, nearest: bool) -> Tensor:
    """``field`` [N, K, D, H, W] at voxel coordinates ``coords`` [N, 3, S] (x, y, z)."""
    sizes = (field.shape[4], field.shape[3], field.shape[2])
    flat = field.reshape(*field.shape[:2], -1)
    axes, _ = _prepare_axes(coords, sizes, border)
    out = 0
    for lin, valid, weight, _ in _taps(field, axes, nearest):
        out = out + weight[:, None, :] * _gather(flat, lin, valid)
    return out


def _sample_backward(field: Tensor, coords: Tensor, grad: Tensor, border: bool, nearest: bool,
                     need_field: bool) -> tuple[Tensor, Tensor]:
    """(d/d field, d/d coords [N, 3, S]) of ``sum(grad * _sample(field, coords))``."""
    n, k = field.shape[:2]
    sizes = (field.shape[4], field.shape[3], field.shape[2])
    flat = field.reshape(n, k, -1)
    grad_field = torch.zeros_like(flat)
    grad_coords = torch.zeros_like(coords)
    axes, clip_slopes = _prepare_axes(coords, sizes, border)
    for lin, valid, weight, slopes in _taps(field, axes, nearest):
        if need_field:
            contribution = grad * (weight * valid)[:, None, :]
            grad_field.scatter_add_(2, lin[:, None, :].expand(n, k, lin.shape[-1]), contribution)
        if slopes is not None:
            dot = (grad * _gather(flat, lin, valid)).sum(1)
            for a in range(3):
                grad_coords[:, a] += dot * slopes[a]
    grad_coords *= torch.stack(clip_slopes, dim=1)
    return grad_field.reshape(field.shape), grad_coords


def _output_grid(size: list[int], like: Tensor) -> Tensor:
    """[4, S]: the output voxel indices (x, y, z, 1) in the matrices' dtype."""
    axes = [torch.arange(s, dtype=like.dtype, device=like.device) for s in size]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([x, y, z, torch.ones_like(x)]).reshape(4, -1)


def _torch_forward(volume: Tensor, displacement: Tensor | None, mv: Tensor, mu: Tensor | None,
                   b: Tensor | None, nearest: bool, border: bool, size: list[int]) -> Tensor:
    grid = _output_grid(size, mv)
    pv = mv @ grid
    if displacement is not None:
        pv = pv + b @ _sample(displacement, mu @ grid, border=True, nearest=False)
    return _sample(volume, pv, border, nearest).reshape(*volume.shape[:2], *size)


def _empties(like: Tensor, count: int) -> list[Tensor]:
    """Distinct empty tensors standing for the gradients of absent inputs (an op's outputs
    may not alias one another)."""
    return [like.new_empty(0) for _ in range(count)]


def _torch_backward(grad_out: Tensor, volume: Tensor, displacement: Tensor | None, mv: Tensor,
                    mu: Tensor | None, b: Tensor | None, nearest: bool, border: bool,
                    needs: list[bool]) -> list[Tensor]:
    need_volume, need_transform = needs[0], any(needs[1:])
    n, c = volume.shape[:2]
    grid = _output_grid(list(grad_out.shape[2:]), mv)
    grad = grad_out.reshape(n, c, -1)
    pv = mv @ grid
    u = pu = None
    if displacement is not None:
        pu = mu @ grid
        u = _sample(displacement, pu, border=True, nearest=False)
        pv = pv + b @ u
    grad_volume, grad_pv = _sample_backward(volume, pv, grad, border, nearest, need_volume)
    if not need_volume:
        grad_volume = volume.new_empty(0)
    if not need_transform or nearest:
        grad_pv = torch.zeros_like(grad_pv)
    grad_mv = grad_pv @ grid.T
    if displacement is None:
        return [grad_volume, *_empties(grad_volume, 1), grad_mv, *_empties(grad_volume, 2)]
    grad_b = grad_pv @ u.transpose(1, 2)
    grad_disp, grad_pu = _sample_backward(displacement, pu, b.transpose(1, 2) @ grad_pv,
                                          border=True, nearest=False, need_field=needs[1])
    if not needs[1]:
        grad_disp = volume.new_empty(0)
    return [grad_volume, grad_disp, grad_mv, grad_pu @ grid.T, grad_b]


# --- Triton kernels --------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _round_half_even(v):
        r = tl.floor(v + 0.5)
        odd = (r * 0.5) != tl.floor(r * 0.5)
        return tl.where(((r - v) == 0.5) & odd, r - 1.0, r)

    @triton.jit
    def _axis(v, size, BORDER: tl.constexpr, NEAREST: tl.constexpr):
        """Neighbouring indices (clamped), fraction, in-range flags and border-clip slope."""
        hi = tl.zeros_like(v) + (size - 1)
        slope = tl.zeros_like(v) + 1.0
        if BORDER:
            inside = (v > 0.0) & (v < hi)
            slope = tl.where(inside, slope, 0.0)
            v = tl.where(inside, v, tl.where(v > 0.0, hi, 0.0))
        v = tl.where(v > -2.0, v, -2.0)
        v = tl.where(v < size + 1.0, v, size + 1.0)
        if NEAREST:
            lo = _round_half_even(v)
        else:
            lo = tl.floor(v)
        i = lo.to(tl.int32)
        f = v - lo
        ok0 = (i >= 0) & (i < size)
        ok1 = (i + 1 >= 0) & (i + 1 < size)
        i0 = tl.minimum(tl.maximum(i, 0), size - 1)
        i1 = tl.minimum(tl.maximum(i + 1, 0), size - 1)
        return i0, i1, f, ok0, ok1, slope

    @triton.jit
    def _map(m_ptr, x, y, z, r: tl.constexpr):
        return (tl.load(m_ptr + 4 * r) * x + tl.load(m_ptr + 4 * r + 1) * y
                + tl.load(m_ptr + 4 * r + 2) * z + tl.load(m_ptr + 4 * r + 3))

    @triton.jit
    def _corner(c: tl.constexpr, a0, a1, fa, ok0, ok1):
        """Index, weight factor, weight-factor slope and flag of corner ``c`` along one axis."""
        if c == 1:
            return a1, fa, 1.0, ok1
        else:
            return a0, 1.0 - fa, -1.0, ok0

    @triton.jit
    def _interp(ptr, ax, ay, az, H, W, mask, NEAREST: tl.constexpr, GRAD: tl.constexpr):
        """Value (and its derivatives wrt x, y, z when GRAD) of one channel at the points."""
        x0, x1, fx, okx0, okx1, _sx = ax
        y0, y1, fy, oky0, oky1, _sy = ay
        z0, z1, fz, okz0, okz1, _sz = az
        if NEAREST:
            ok = mask & okx0 & oky0 & okz0
            val = tl.load(ptr + (z0 * H + y0) * W + x0, mask=ok, other=0.0)
            return val, val * 0.0, val * 0.0, val * 0.0
        val = fx * 0.0
        gx = fx * 0.0
        gy = fx * 0.0
        gz = fx * 0.0
        for cz in tl.static_range(2):
            zi, wz, sz, okz = _corner(cz, z0, z1, fz, okz0, okz1)
            for cy in tl.static_range(2):
                yi, wy, sy, oky = _corner(cy, y0, y1, fy, oky0, oky1)
                for cx in tl.static_range(2):
                    xi, wx, sx, okx = _corner(cx, x0, x1, fx, okx0, okx1)
                    v = tl.load(ptr + (zi * H + yi) * W + xi, mask=mask & okx & oky & okz,
                                other=0.0)
                    val += wx * wy * wz * v
                    if GRAD:
                        gx += sx * wy * wz * v
                        gy += wx * sy * wz * v
                        gz += wx * wy * sz * v
        return val, gx, gy, gz

    @triton.jit
    def _scatter(ptr, ax, ay, az, H, W, g, mask, NEAREST: tl.constexpr):
        """Atomically add ``g`` times each corner's weight to the corners."""
        x0, x1, fx, okx0, okx1, _sx = ax
        y0, y1, fy, oky0, oky1, _sy = ay
        z0, z1, fz, okz0, okz1, _sz = az
        if NEAREST:
            tl.atomic_add(ptr + (z0 * H + y0) * W + x0, g, mask=mask & okx0 & oky0 & okz0)
        else:
            for cz in tl.static_range(2):
                zi, wz, sz, okz = _corner(cz, z0, z1, fz, okz0, okz1)
                for cy in tl.static_range(2):
                    yi, wy, sy, oky = _corner(cy, y0, y1, fy, oky0, oky1)
                    for cx in tl.static_range(2):
                        xi, wx, sx, okx = _corner(cx, x0, x1, fx, okx0, okx1)
                        tl.atomic_add(ptr + (zi * H + yi) * W + xi, g * (wx * wy * wz),
                                      mask=mask & okx & oky & okz)

    @triton.jit
    def _locate(disp_ptr, mv_ptr, mu_ptr, b_ptr, n, s, mask, d, h, w, oH, oW,
                HAS_DISP: tl.constexpr, K: tl.constexpr):
        """Output voxel (x, y, z), the displacement's sampling axes and the volume voxel."""
        dtype = mv_ptr.dtype.element_ty
        x = (s % oW).to(dtype)
        y = ((s // oW) % oH).to(dtype)
        z = (s // (oW * oH)).to(dtype)
        mv = mv_ptr + n * 12
        px = _map(mv, x, y, z, 0)
        py = _map(mv, x, y, z, 1)
        pz = _map(mv, x, y, z, 2)
        ux = _axis(x, 1, False, False)
        uy = ux
        uz = ux
        if HAS_DISP:
            mu = mu_ptr + n * 12
            ux = _axis(_map(mu, x, y, z, 0), w, True, False)
            uy = _axis(_map(mu, x, y, z, 1), h, True, False)
            uz = _axis(_map(mu, x, y, z, 2), d, True, False)
            for k in tl.static_range(K):
                u, _gx, _gy, _gz = _interp(disp_ptr + (n * K + k) * (d * h * w), ux, uy, uz, h,
                                           w, mask, False, False)
                px += tl.load(b_ptr + n * 3 * K + k) * u
                py += tl.load(b_ptr + n * 3 * K + K + k) * u
                pz += tl.load(b_ptr + n * 3 * K + 2 * K + k) * u
        return x, y, z, ux, uy, uz, px, py, pz

    @triton.jit
    def _warp3d_fwd_kernel(vol_ptr, disp_ptr, mv_ptr, mu_ptr, b_ptr, out_ptr, C, D, H, W, d, h, w,
                           oD, oH, oW, HAS_DISP: tl.constexpr, K: tl.constexpr,
                           NEAREST: tl.constexpr, BORDER: tl.constexpr, BLOCK: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        S = oD * oH * oW
        mask = s < S
        x, y, z, ux, uy, uz, px, py, pz = _locate(disp_ptr, mv_ptr, mu_ptr, b_ptr, n, s, mask, d,
                                                  h, w, oH, oW, HAS_DISP, K)
        ax = _axis(px, W, BORDER, NEAREST)
        ay = _axis(py, H, BORDER, NEAREST)
        az = _axis(pz, D, BORDER, NEAREST)
        for c in range(C):
            v, _gx, _gy, _gz = _interp(vol_ptr + (n * C + c) * (D * H * W), ax, ay, az, H, W,
                                       mask, NEAREST, False)
            tl.store(out_ptr + (n * C + c) * S + s, v, mask=mask)

    @triton.jit
    def _store_outer(ptr, gx, gy, gz, x, y, z):
        """Block sums of the outer product (gx, gy, gz) ⊗ (x, y, z, 1) into ptr[0:12]."""
        tl.store(ptr + 0, tl.sum(gx * x))
        tl.store(ptr + 1, tl.sum(gx * y))
        tl.store(ptr + 2, tl.sum(gx * z))
        tl.store(ptr + 3, tl.sum(gx))
        tl.store(ptr + 4, tl.sum(gy * x))
        tl.store(ptr + 5, tl.sum(gy * y))
        tl.store(ptr + 6, tl.sum(gy * z))
        tl.store(ptr + 7, tl.sum(gy))
        tl.store(ptr + 8, tl.sum(gz * x))
        tl.store(ptr + 9, tl.sum(gz * y))
        tl.store(ptr + 10, tl.sum(gz * z))
        tl.store(ptr + 11, tl.sum(gz))

    @triton.jit
    def _warp3d_bwd_kernel(grad_ptr, vol_ptr, disp_ptr, mv_ptr, mu_ptr, b_ptr, gvol_ptr,
                           gdisp_ptr, partial_ptr, C, D, H, W, d, h, w, oD, oH, oW, BLOCKS,
                           HAS_DISP: tl.constexpr, K: tl.constexpr, NEAREST: tl.constexpr,
                           BORDER: tl.constexpr, NEED_VOLUME: tl.constexpr,
                           NEED_TRANSFORM: tl.constexpr, BLOCK: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
        s = blk * BLOCK + tl.arange(0, BLOCK)
        S = oD * oH * oW
        mask = s < S
        x, y, z, ux, uy, uz, px, py, pz = _locate(disp_ptr, mv_ptr, mu_ptr, b_ptr, n, s, mask, d,
                                                  h, w, oH, oW, HAS_DISP, K)
        ax = _axis(px, W, BORDER, NEAREST)
        ay = _axis(py, H, BORDER, NEAREST)
        az = _axis(pz, D, BORDER, NEAREST)
        gpx = px * 0.0
        gpy = px * 0.0
        gpz = px * 0.0
        for c in range(C):
            g = tl.load(grad_ptr + (n * C + c) * S + s, mask=mask, other=0.0)
            if NEED_VOLUME:
                _scatter(gvol_ptr + (n * C + c) * (D * H * W), ax, ay, az, H, W, g, mask,
                         NEAREST)
            if NEED_TRANSFORM:
                _v, dx, dy, dz = _interp(vol_ptr + (n * C + c) * (D * H * W), ax, ay, az, H, W,
                                         mask, NEAREST, True)
                gpx += g * dx
                gpy += g * dy
                gpz += g * dz
        if NEED_TRANSFORM:
            gpx = gpx * ax[5]
            gpy = gpy * ay[5]
            gpz = gpz * az[5]
            out = partial_ptr + (n * BLOCKS + blk) * 33
            _store_outer(out, gpx, gpy, gpz, x, y, z)
            if HAS_DISP:
                gux = px * 0.0
                guy = px * 0.0
                guz = px * 0.0
                for k in tl.static_range(K):
                    uptr = disp_ptr + (n * K + k) * (d * h * w)
                    u, dx, dy, dz = _interp(uptr, ux, uy, uz, h, w, mask, False, True)
                    bx = tl.load(b_ptr + n * 3 * K + k)
                    by = tl.load(b_ptr + n * 3 * K + K + k)
                    bz = tl.load(b_ptr + n * 3 * K + 2 * K + k)
                    tl.store(out + 24 + k, tl.sum(gpx * u))
                    tl.store(out + 24 + K + k, tl.sum(gpy * u))
                    tl.store(out + 24 + 2 * K + k, tl.sum(gpz * u))
                    gu = bx * gpx + by * gpy + bz * gpz
                    _scatter(gdisp_ptr + (n * K + k) * (d * h * w), ux, uy, uz, h, w, gu, mask,
                             False)
                    gux += gu * dx
                    guy += gu * dy
                    guz += gu * dz
                _store_outer(out + 12, gux * ux[5], guy * uy[5], guz * uz[5], x, y, z)


# --- launchers -------------------------------------------------------------------------------

TRITON_BLOCK = 128


def _triton_shapes(volume: Tensor, displacement: Tensor | None) -> tuple:
    dims = tuple(volume.shape[1:])  # C, D, H, W
    fdims = tuple(displacement.shape[2:]) if displacement is not None else (1, 1, 1)
    return (*dims, *fdims)


def _triton_forward(volume: Tensor, displacement: Tensor | None, mv: Tensor, mu: Tensor | None,
                    b: Tensor | None, nearest: bool, border: bool, size: list[int]) -> Tensor:
    n = volume.shape[0]
    out = volume.new_empty((n, volume.shape[1], *size))
    blocks = triton.cdiv(size[0] * size[1] * size[2], TRITON_BLOCK)
    has_disp = displacement is not None
    _warp3d_fwd_kernel[(n, blocks)](
        volume, displacement if has_disp else mv, mv, mu if has_disp else mv,
        b if has_disp else mv, out, *_triton_shapes(volume, displacement), *size,
        HAS_DISP=has_disp, K=displacement.shape[1] if has_disp else 1, NEAREST=nearest,
        BORDER=border, BLOCK=TRITON_BLOCK,
    )
    return out


def _triton_backward(grad_out: Tensor, volume: Tensor, displacement: Tensor | None, mv: Tensor,
                     mu: Tensor | None, b: Tensor | None, nearest: bool, border: bool,
                     needs: list[bool]) -> list[Tensor]:
    need_volume, need_transform = needs[0], any(needs[1:])
    n = volume.shape[0]
    size = list(grad_out.shape[2:])
    blocks = triton.cdiv(size[0] * size[1] * size[2], TRITON_BLOCK)
    has_disp = displacement is not None
    grad_volume = torch.zeros_like(volume) if need_volume else volume.new_empty(0)
    grad_disp = torch.zeros_like(displacement) if has_disp else volume.new_empty(0)
    partial = torch.zeros((n, blocks, NUM_GRAD_SLOTS), dtype=volume.dtype, device=volume.device)
    unused = partial  # stands for the pointers a launch does not touch
    _warp3d_bwd_kernel[(n, blocks)](
        grad_out.contiguous(), volume, displacement if has_disp else mv, mv,
        mu if has_disp else mv, b if has_disp else mv, grad_volume if need_volume else unused,
        grad_disp if has_disp else unused, partial, *_triton_shapes(volume, displacement),
        *size, blocks, HAS_DISP=has_disp, K=displacement.shape[1] if has_disp else 1,
        NEAREST=nearest, BORDER=border, NEED_VOLUME=need_volume,
        NEED_TRANSFORM=need_transform and not nearest, BLOCK=TRITON_BLOCK,
    )
    if not needs[1]:
        grad_disp = volume.new_empty(0)
    return _split_sums([grad_volume, grad_disp, partial.to(torch.float64).sum(1)], displacement)


def _cpp_forward(volume: Tensor, displacement: Tensor | None, mv: Tensor, mu: Tensor | None,
                 b: Tensor | None, nearest: bool, border: bool, size: list[int]) -> Tensor:
    return load_extension().warp3d_forward(volume, displacement, mv, mu, b, nearest, border, size)


def _cpp_backward(grad_out: Tensor, volume: Tensor, displacement: Tensor | None, mv: Tensor,
                  mu: Tensor | None, b: Tensor | None, nearest: bool, border: bool,
                  needs: list[bool]) -> list[Tensor]:
    return load_extension().warp3d_backward(grad_out.contiguous(), volume, displacement, mv, mu,
                                            b, nearest, border, needs)


def _split_sums(grads: list[Tensor], displacement: Tensor | None) -> list[Tensor]:
    """(grad volume, grad displacement, sums [N, 33]) -> the five gradients of the op."""
    grad_volume, grad_disp, sums = grads
    n, dtype = sums.shape[0], grad_volume.dtype
    grad_mv = sums[:, :12].reshape(n, 3, 4).to(dtype, copy=True)  # copies: outputs never alias
    if displacement is None:
        return [grad_volume, *_empties(grad_volume, 1), grad_mv, *_empties(grad_volume, 2)]
    k = displacement.shape[1]
    grad_mu = sums[:, 12:24].reshape(n, 3, 4).to(dtype, copy=True)
    grad_b = sums[:, 24:24 + 3 * k].reshape(n, 3, k).to(dtype, copy=True)
    return [grad_volume, grad_disp, grad_mv, grad_mu, grad_b]


# --- registration ----------------------------------------------------------------------------


for _op, _torch_fn, _cpp_fn, _triton_fn in (
    ("warp3d", _torch_forward, _cpp_forward, _triton_forward),
    ("warp3d_backward", _torch_backward, _cpp_backward, _triton_backward),
):
    register_backends(_op, torch_fn=_torch_fn, cpp_fn=_cpp_fn, triton_fn=_triton_fn)


def _forward(volume: Tensor, displacement: Tensor | None, mv: Tensor, mu: Tensor | None,
             b: Tensor | None, nearest: bool, border: bool, size: list[int]) -> Tensor:
    impl = select("warp3d", volume.device.type)
    return impl.fn(volume, displacement, mv, mu, b, nearest, border, size)


@torch.library.custom_op("medtune::warp3d", mutates_args=())
def _warp3d_op(volume: Tensor, displacement: Tensor | None, mv: Tensor, mu: Tensor | None,
               b: Tensor | None, nearest: bool, border: bool, size: list[int]) -> Tensor:
    return _forward(volume, displacement, mv, mu, b, nearest, border, size)


@_warp3d_op.register_fake
def _(volume: Tensor, displacement: Tensor | None, mv: Tensor, mu: Tensor | None,
      b: Tensor | None, nearest: bool, border: bool, size: list[int]) -> Tensor:
    return volume.new_empty((volume.shape[0], volume.shape[1], *size))


@torch.library.custom_op("medtune::warp3d_backward", mutates_args=())
def warp3d_backward_op(grad_out: Tensor, volume: Tensor, displacement: Tensor | None,
                       mv: Tensor, mu: Tensor | None, b: Tensor | None, nearest: bool,
                       border: bool, needs: list[bool]) -> list[Tensor]:
    """Gradients of ``warp3d`` wrt (volume, displacement, Mv, Mu, B), in one pass.

    ``needs`` says which of the five are wanted; a backend may skip the others. Absent inputs
    (no displacement) get empty tensors, and so do the volume and the displacement when not
    wanted; the maps' gradients are zeros when not wanted and in nearest mode.
    """
    return _backward_pass(grad_out, volume, displacement, mv, mu, b, nearest, border, needs)


def _backward_pass(grad_out: Tensor, volume: Tensor, displacement: Tensor | None, mv: Tensor,
                   mu: Tensor | None, b: Tensor | None, nearest: bool, border: bool,
                   needs: list[bool]) -> list[Tensor]:
    impl = select("warp3d_backward", volume.device.type)
    return impl.fn(grad_out, volume, displacement, mv, mu, b, nearest, border, needs)


@warp3d_backward_op.register_fake
def _(grad_out: Tensor, volume: Tensor, displacement: Tensor | None, mv: Tensor,
      mu: Tensor | None, b: Tensor | None, nearest: bool, border: bool,
      needs: list[bool]) -> list[Tensor]:
    grad_volume = torch.empty_like(volume) if needs[0] else volume.new_empty(0)
    if displacement is None:
        return [grad_volume, *_empties(volume, 1), torch.empty_like(mv), *_empties(volume, 2)]
    grad_disp = torch.empty_like(displacement) if needs[1] else volume.new_empty(0)
    return [grad_volume, grad_disp, *(torch.empty_like(t) for t in (mv, mu, b))]


def _setup_context(ctx, inputs, output) -> None:
    volume, displacement, mv, mu, b, nearest, border, size = inputs
    ctx.save_for_backward(volume, displacement, mv, mu, b)
    ctx.nearest, ctx.border = nearest, border


def _backward(ctx, grad_out: Tensor):
    volume, displacement, mv, mu, b = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:5])
    if displacement is None:
        needs[1] = needs[3] = needs[4] = False
    grad_out = grad_out.contiguous()
    step = _backward_pass if eager_call(grad_out, volume, displacement) else warp3d_backward_op
    grads = step(grad_out, volume, displacement, mv, mu, b, ctx.nearest, ctx.border, needs)
    return (*(g if need else None for g, need in zip(grads, needs)), None, None, None)


_warp3d_op.register_autograd(_backward, setup_context=_setup_context)
# eager calls on plain tensors skip the custom-op dispatcher (see dispatch.eager_call)
_EagerWarp3d = eager_function("Warp3d", _forward, _setup_context, _backward)


# --- dispatch rule: the kernels or grid_sample ------------------------------------------------

#: A 2D call with fewer output voxels than this (N × H × W) runs as ``affine_grid`` +
#: ``grid_sample`` when the automatic choice is the C++ backend: ATen's 2D sampler is as
#: vectorised as the kernels, so on a small image the fixed cost of a medtune call (the voxel
#: maps, the op's autograd node) is not paid back. Volumes always run on the kernels (ATen's 3D
#: sampler is scalar code, and the grid it needs is three times the volume), and so does an
#: identity transform, which the kernels return bit for bit and grid_sample only up to rounding.
GRID_SAMPLE_2D_BELOW = 2**18


def runs_as_grid_sample(prepared: Prepared) -> bool:
    """Whether an eager call runs as ``affine_grid`` + ``grid_sample`` instead of the kernels.

    That is the rule above, applied only to the automatic choice: a backend forced with
    ``use_backend`` or ``MEDTUNE_KERNEL_BACKEND`` always runs, and so do traced calls.
    """
    if not prepared.two_d or torch.compiler.is_compiling():
        return False
    voxels = prepared.volume.shape[0] * math.prod(prepared.size)
    return (voxels < GRID_SAMPLE_2D_BELOW and forced_backend() is None
            and select("warp3d", prepared.volume.device.type).backend == "cpp"
            and not _is_identity(prepared))


def _is_identity(prepared: Prepared) -> bool:
    """Whether the prepared 2D call is an identity transform at the volume's size."""
    volume, displacement, affine = prepared.volume, prepared.displacement, prepared.affine
    if tuple(volume.shape[2:]) != prepared.size:
        return False
    if displacement is not None and bool(displacement.any()):
        return False
    if affine is not None:  # the 2D affine embedded in [N, 3, 4]: no z row
        identity = torch.eye(3, 4, dtype=affine.dtype, device=affine.device)
        identity[2, 2] = 0.0
        return torch.equal(affine, identity.expand_as(affine))
    return True


# --- front-end -------------------------------------------------------------------------------


def warp3d(volume: Tensor, displacement: Tensor | None = None, affine: Tensor | None = None, *,
           compose: str = "affine_first", mode: str = "bilinear", padding_mode: str = "zeros",
           align_corners: bool = False, size: tuple[int, ...] | None = None) -> Tensor:
    """Resample ``volume`` through an affine and/or a displacement field, in one pass.

    Args:
        volume: [N, C, D, H, W] or [N, C, H, W], float32/float64; an integer (or bool) label
            map with ``mode="nearest"``.
        displacement: [N, 3, d, h, w] (2D: [N, 2, h, w]) in normalised units, channels ordered
            (x, y, z) = (W, H, D), at any resolution; sampled trilinearly with border padding
            where it applies. ``None``: no local deformation.
        affine: [N, 3, 4] (2D: [N, 2, 3]), or one unbatched matrix, as for ``affine_grid``.
            ``None``: the identity.
        compose: with both transforms, ``"affine_first"`` samples at ``p + u(p)``, ``p = A x``
            (template ∘ L ∘ G, Bertrand2019, eq. 4.7), ``"displacement_first"`` at ``A (x + u(x))``.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"`` (label maps; ties to even, as
            ``grid_sample``). Nearest mode gives zero gradients wrt the displacement and affine.
        padding_mode: ``"zeros"`` or ``"border"``: the volume's value outside its extent.
        align_corners: ``grid_sample``'s convention, for the volume, the displacement and the
            output grid alike.
        size: output spatial size; default the displacement's, else the volume's.

    Returns:
        [N, C, *size] in the volume's dtype, differentiable wrt volume, displacement and affine.
        Equals ``warp3d_reference`` (``affine_grid`` + ``grid_sample``) up to rounding; on the
        kernels, identity transforms at the volume's size return the volume exactly. A small
        2D call may run as ``affine_grid`` + ``grid_sample`` itself, where that is faster (see
        ``runs_as_grid_sample``).
    """
    p = prepare(volume, displacement, affine, compose, mode, padding_mode, align_corners, size)
    if runs_as_grid_sample(p):
        return _grid_sample_path(volume, displacement, affine, compose, mode, padding_mode,
                                 align_corners, size)
    mv, mu, b = voxel_maps(p)
    volume = p.volume.contiguous()
    disp = p.displacement.contiguous() if p.displacement is not None else None
    op = _EagerWarp3d.apply if eager_call(volume, disp, mv) else _warp3d_op
    out = op(volume, disp, mv, mu, b, p.nearest, p.border, list(p.size))
    if p.two_d:
        out = out.squeeze(2)
    if p.label_dtype is not None:
        out = out.round().to(p.label_dtype)
    return out
