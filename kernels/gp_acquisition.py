"""gp_acquisition: GP posterior mean, variance and EI / PI / UCB for a batch of candidates.

For an exact GP with a constant mean, an ARD Matérn 5/2 or squared-exponential kernel scaled by
``outputscale``, and a factorisation of the training covariance given as ``Linv = L⁻¹`` (``L``
the lower Cholesky factor of ``K + noise·I``) and ``alpha = (K + noise·I)⁻¹ (y - mean)``, every
candidate ``x*`` gets

    k*       = outputscale · k(x*, X)                       (the kernel row, [n])
    mean     = mean_constant + k*ᵀ alpha
    variance = max(outputscale - ‖Linv k*‖², MIN_VARIANCE)   (latent f, without the noise)

and an acquisition score, higher is better. By default the objective is minimised: with
``σ = sqrt(variance)``, ``u = best_f - mean - xi`` (``mean - best_f - xi`` when
``maximize=True``) and ``z = u / σ``,

    ei  = σ · (φ(z) + z Φ(z))          pi = Φ(z)
    ucb = -mean + sqrt(beta) · σ       (mean + sqrt(beta) · σ when maximising; BoTorch's beta)
    none: the score is all zeros (only the posterior is wanted).

The compiled backends do this in one fused pass per block of candidates, never materialising
the candidates × observations matrix. The outputs carry no gradients.

This file reads top-down: reference, Triton kernel, launcher, registration.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from medtune.kernels._common import (
    KernelError, load_extension, register_backends, select, tl, triton,
)

KERNELS = {"matern52": 0, "rbf": 1}
ACQUISITIONS = {"none": 0, "ei": 1, "pi": 2, "ucb": 3}
# Floor of the posterior variance, as GPyTorch's ``settings.min_variance``: the subtraction
# ``outputscale - ‖Linv k*‖²`` cancels at training points and could go to zero or below.
MIN_VARIANCE = {torch.float64: 1e-10, torch.float32: 1e-6}


class GPAcquisition(NamedTuple):
    """Posterior mean, latent variance and acquisition score per candidate, each [m]."""

    mean: Tensor
    variance: Tensor
    score: Tensor


class Prepared(NamedTuple):
    """Validated inputs in kernel layout (the arguments of the custom op)."""

    candidates: Tensor  # [m, d] contiguous
    train_x: Tensor  # [n, d] contiguous
    linv: Tensor  # [n, n] contiguous, lower triangular (the upper triangle is never read)
    alpha: Tensor  # [n] contiguous
    lengthscales: Tensor  # [d] contiguous
    outputscale: float
    kernel: int
    mean_constant: float
    acquisition: int
    best_f: float
    xi: float
    beta: float
    maximize: bool


def _scalar(name: str, value: float | Tensor) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise KernelError(f"gp_acquisition: {name} must be a number, got a tensor of shape "
                              f"{tuple(value.shape)}")
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise KernelError(f"gp_acquisition: {name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise KernelError(f"gp_acquisition: {name} must be finite, got {value}")
    return value


def prepare(
    candidates: Tensor,
    train_x: Tensor,
    Linv: Tensor,
    alpha: Tensor,
    lengthscales: Tensor,
    outputscale: float | Tensor,
    kernel: str = "matern52",
    mean_constant: float | Tensor = 0.0,
    acquisition: str = "ei",
    best_f: float | Tensor | None = None,
    xi: float = 0.0,
    beta: float = 2.0,
    maximize: bool = False,
) -> Prepared:
    """Check shapes, dtypes, devices and values and bring the inputs into kernel layout."""
    tensors = {"candidates": candidates, "train_x": train_x, "Linv": Linv, "alpha": alpha,
               "lengthscales": lengthscales}
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise KernelError(f"gp_acquisition: {name} must be a torch.Tensor, got {type(t).__name__}")
    if kernel not in KERNELS:
        raise KernelError(f"gp_acquisition: kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    if acquisition not in ACQUISITIONS:
        raise KernelError(
            f"gp_acquisition: acquisition must be one of {sorted(ACQUISITIONS)}, got {acquisition!r}"
        )
    dtype = candidates.dtype
    if dtype not in MIN_VARIANCE:
        raise KernelError(f"gp_acquisition: candidates must be float32 or float64, got {dtype}")
    for name, t in tensors.items():
        if t.dtype != dtype:
            raise KernelError(f"gp_acquisition: {name} is {t.dtype} but candidates are {dtype}; "
                              "pass every tensor in one dtype (float64 is recommended)")
        if t.device != candidates.device:
            raise KernelError(f"gp_acquisition: {name} is on {t.device} but candidates are on "
                              f"{candidates.device}; move every tensor to one device")
    if candidates.dim() != 2 or candidates.shape[1] < 1:
        raise KernelError(f"gp_acquisition: candidates must be [m, d] with d >= 1, got shape "
                          f"{tuple(candidates.shape)}")
    m, d = candidates.shape
    if train_x.dim() != 2 or train_x.shape[1] != d:
        raise KernelError(f"gp_acquisition: train_x must be [n, {d}] like the candidates, got "
                          f"shape {tuple(train_x.shape)}")
    n = train_x.shape[0]
    if tuple(Linv.shape) != (n, n):
        raise KernelError(f"gp_acquisition: Linv must be [{n}, {n}] for {n} observations, got "
                          f"shape {tuple(Linv.shape)}")
    if tuple(alpha.shape) != (n,):
        raise KernelError(f"gp_acquisition: alpha must be [{n}] for {n} observations, got shape "
                          f"{tuple(alpha.shape)}")
    if tuple(lengthscales.shape) != (d,):
        raise KernelError(f"gp_acquisition: lengthscales must be [{d}] (one per input dimension, "
                          f"ARD), got shape {tuple(lengthscales.shape)}")
    if not bool((lengthscales > 0).all()):
        raise KernelError("gp_acquisition: every lengthscale must be positive")
    outputscale = _scalar("outputscale", outputscale)
    if outputscale <= 0:
        raise KernelError(f"gp_acquisition: outputscale must be positive, got {outputscale}")
    if acquisition in ("ei", "pi") and best_f is None:
        raise KernelError(f"gp_acquisition: acquisition {acquisition!r} needs best_f, the best "
                          "observed value (the smallest, or the largest with maximize=True)")
    best_f = 0.0 if best_f is None else _scalar("best_f", best_f)
    beta = _scalar("beta", beta)
    if beta < 0:
        raise KernelError(f"gp_acquisition: beta must be non-negative, got {beta}")
    return Prepared(
        candidates.contiguous(), train_x.contiguous(), Linv.contiguous(), alpha.contiguous(),
        lengthscales.contiguous(), outputscale, KERNELS[kernel],
        _scalar("mean_constant", mean_constant), ACQUISITIONS[acquisition], best_f,
        _scalar("xi", xi), beta, bool(maximize),
    )


# --- reference -------------------------------------------------------------------------------


def _kernel_matrix(x1: Tensor, x2: Tensor, lengthscales: Tensor, outputscale: float,
                   kernel: int) -> Tensor:
    diff = x1[:, None, :] / lengthscales - x2[None, :, :] / lengthscales
    r2 = (diff * diff).sum(-1)
    if kernel == KERNELS["rbf"]:
        return outputscale * torch.exp(-0.5 * r2)
    r = torch.sqrt(r2)
    s5r = math.sqrt(5.0) * r
    return outputscale * (1.0 + s5r + (5.0 / 3.0) * r2) * torch.exp(-s5r)


def _acquire(mean: Tensor, variance: Tensor, acquisition: int, best_f: float, xi: float,
             beta: float, maximize: bool) -> Tensor:
    if acquisition == ACQUISITIONS["none"]:
        return torch.zeros_like(mean)
    sigma = torch.sqrt(variance)
    if acquisition == ACQUISITIONS["ucb"]:
        return (mean if maximize else -mean) + math.sqrt(beta) * sigma
    u = (mean - best_f - xi) if maximize else (best_f - mean - xi)
    z = u / sigma
    cdf = 0.5 * torch.special.erfc(-z / math.sqrt(2.0))
    if acquisition == ACQUISITIONS["pi"]:
        return cdf
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return sigma * (pdf + z * cdf)


def _torch_forward(candidates: Tensor, train_x: Tensor, linv: Tensor, alpha: Tensor,
                   lengthscales: Tensor, outputscale: float, kernel: int, mean_constant: float,
                   acquisition: int, best_f: float, xi: float, beta: float,
                   maximize: bool) -> Tensor:
    k_star = _kernel_matrix(candidates, train_x, lengthscales, outputscale, kernel)  # [m, n]
    mean = mean_constant + k_star @ alpha
    v = k_star @ linv.tril().T
    variance = (outputscale - (v * v).sum(-1)).clamp_min(MIN_VARIANCE[candidates.dtype])
    score = _acquire(mean, variance, acquisition, best_f, xi, beta, maximize)
    return torch.stack([mean, variance, score])


def gp_acquisition_reference(candidates: Tensor, train_x: Tensor, Linv: Tensor, alpha: Tensor,
                             lengthscales: Tensor, outputscale: float | Tensor,
                             kernel: str = "matern52", mean_constant: float | Tensor = 0.0,
                             acquisition: str = "ei", best_f: float | Tensor | None = None,
                             xi: float = 0.0, beta: float = 2.0,
                             maximize: bool = False) -> GPAcquisition:
    """Plain PyTorch, materialising the m × n kernel matrix: the ground truth of the tests."""
    prepared = prepare(candidates, train_x, Linv, alpha, lengthscales, outputscale, kernel,
                       mean_constant, acquisition, best_f, xi, beta, maximize)
    return GPAcquisition(*_torch_forward(*prepared).unbind(0))


# --- Triton kernel ---------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _kernel_tile(c_ptr, x_ptr, ls_ptr, rows, rows_ok, cols, cols_ok, D, outputscale,
                     KERNEL: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
        """outputscale · k(candidates[rows], train_x[cols]), zero outside the valid range."""
        r2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=COMPUTE)
        for k in range(D):
            ls = tl.load(ls_ptr + k).to(COMPUTE)
            a = tl.load(c_ptr + rows * D + k, mask=rows_ok, other=0.0).to(COMPUTE) / ls
            b = tl.load(x_ptr + cols * D + k, mask=cols_ok, other=0.0).to(COMPUTE) / ls
            diff = a[:, None] - b[None, :]
            r2 += diff * diff
        if KERNEL == 1:
            kv = tl.exp(-0.5 * r2)
        else:
            s5r = 2.23606797749979 * tl.sqrt(r2)
            kv = (1.0 + s5r + (5.0 / 3.0) * r2) * tl.exp(-s5r)
        return tl.where(rows_ok[:, None] & cols_ok[None, :], outputscale * kv, 0.0)

    @triton.jit
    def _gp_acquisition_kernel(c_ptr, x_ptr, linv_ptr, alpha_ptr, ls_ptr, out_ptr, M, N, D,
                               outputscale, mean_constant, best_f, xi, sqrt_beta, min_variance,
                               KERNEL: tl.constexpr, ACQ: tl.constexpr, MAXIMIZE: tl.constexpr,
                               COMPUTE: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rows_ok = rows < M
        # mean = mean_constant + k*ᵀ alpha, one tile of observations at a time
        mean = tl.zeros((BLOCK_M,), dtype=COMPUTE)
        for j0 in range(0, N, BLOCK_N):
            cols = j0 + tl.arange(0, BLOCK_N)
            cols_ok = cols < N
            kt = _kernel_tile(c_ptr, x_ptr, ls_ptr, rows, rows_ok, cols, cols_ok, D, outputscale,
                              KERNEL, COMPUTE, BLOCK_M, BLOCK_N)
            a = tl.load(alpha_ptr + cols, mask=cols_ok, other=0.0).to(COMPUTE)
            mean += tl.sum(kt * a[None, :], axis=1)
        mean += mean_constant
        # ‖Linv k*‖²: v for a tile of rows i of Linv at a time, from its lower-triangular tiles
        # (the kernel tiles are recomputed per row tile instead of being stored)
        sq = tl.zeros((BLOCK_M,), dtype=COMPUTE)
        for i0 in range(0, N, BLOCK_N):
            irows = i0 + tl.arange(0, BLOCK_N)
            v = tl.zeros((BLOCK_M, BLOCK_N), dtype=COMPUTE)
            for j0 in range(0, i0 + BLOCK_N, BLOCK_N):
                cols = j0 + tl.arange(0, BLOCK_N)
                cols_ok = cols < N
                kt = _kernel_tile(c_ptr, x_ptr, ls_ptr, rows, rows_ok, cols, cols_ok, D,
                                  outputscale, KERNEL, COMPUTE, BLOCK_M, BLOCK_N)
                lower = (irows[:, None] < N) & cols_ok[None, :] & (cols[None, :] <= irows[:, None])
                lt = tl.load(linv_ptr + irows[:, None] * N + cols[None, :], mask=lower,
                             other=0.0).to(COMPUTE)
                v += tl.dot(kt, tl.trans(lt), input_precision="ieee", out_dtype=COMPUTE)
            sq += tl.sum(v * v, axis=1)
        variance = outputscale - sq
        # the floor keeps a NaN (tl.maximum would return the floor, hiding a NaN candidate)
        variance = tl.where(variance != variance, variance, tl.maximum(variance, min_variance))
        sigma = tl.sqrt(variance)
        if ACQ == 0:
            score = tl.zeros((BLOCK_M,), dtype=COMPUTE)
        elif ACQ == 3:
            if MAXIMIZE:
                score = mean + sqrt_beta * sigma
            else:
                score = sqrt_beta * sigma - mean
        else:
            if MAXIMIZE:
                z = (mean - best_f - xi) / sigma
            else:
                z = (best_f - mean - xi) / sigma
            cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
            if ACQ == 2:
                score = cdf
            else:
                score = sigma * (0.3989422804014327 * tl.exp(-0.5 * z * z) + z * cdf)
        tl.store(out_ptr + rows, mean.to(out_ptr.dtype.element_ty), mask=rows_ok)
        tl.store(out_ptr + M + rows, variance.to(out_ptr.dtype.element_ty), mask=rows_ok)
        tl.store(out_ptr + 2 * M + rows, score.to(out_ptr.dtype.element_ty), mask=rows_ok)


# --- launchers -------------------------------------------------------------------------------

TRITON_BLOCK_M = 32
TRITON_BLOCK_N = 32


def _triton_forward(candidates: Tensor, train_x: Tensor, linv: Tensor, alpha: Tensor,
                    lengthscales: Tensor, outputscale: float, kernel: int, mean_constant: float,
                    acquisition: int, best_f: float, xi: float, beta: float,
                    maximize: bool) -> Tensor:
    m, d = candidates.shape
    n = train_x.shape[0]
    out = torch.empty((3, m), device=candidates.device, dtype=candidates.dtype)
    if m:
        compute = tl.float64 if candidates.dtype == torch.float64 else tl.float32
        _gp_acquisition_kernel[(triton.cdiv(m, TRITON_BLOCK_M),)](
            candidates, train_x, linv, alpha, lengthscales, out, m, n, d, outputscale,
            mean_constant, best_f, xi, math.sqrt(beta), MIN_VARIANCE[candidates.dtype],
            KERNEL=kernel, ACQ=acquisition, MAXIMIZE=maximize, COMPUTE=compute,
            BLOCK_M=TRITON_BLOCK_M, BLOCK_N=TRITON_BLOCK_N,
        )
    return out


def _cpp_forward(candidates: Tensor, train_x: Tensor, linv: Tensor, alpha: Tensor,
                 lengthscales: Tensor, outputscale: float, kernel: int, mean_constant: float,
                 acquisition: int, best_f: float, xi: float, beta: float,
                 maximize: bool) -> Tensor:
    return load_extension().gp_acquisition_forward(
        candidates, train_x, linv, alpha, lengthscales, outputscale, kernel, mean_constant,
        acquisition, best_f, xi, math.sqrt(beta), maximize, MIN_VARIANCE[candidates.dtype],
    )


# --- registration ----------------------------------------------------------------------------


register_backends("gp_acquisition", torch_fn=_torch_forward, cpp_fn=_cpp_forward,
                  triton_fn=_triton_forward)


@torch.library.custom_op("medtune::gp_acquisition", mutates_args=())
def _gp_acquisition_op(candidates: Tensor, train_x: Tensor, linv: Tensor, alpha: Tensor,
                       lengthscales: Tensor, outputscale: float, kernel: int,
                       mean_constant: float, acquisition: int, best_f: float, xi: float,
                       beta: float, maximize: bool) -> Tensor:
    impl = select("gp_acquisition", candidates.device.type)
    return impl.fn(candidates, train_x, linv, alpha, lengthscales, outputscale, kernel,
                   mean_constant, acquisition, best_f, xi, beta, maximize)


@_gp_acquisition_op.register_fake
def _(candidates: Tensor, train_x: Tensor, linv: Tensor, alpha: Tensor, lengthscales: Tensor,
      outputscale: float, kernel: int, mean_constant: float, acquisition: int, best_f: float,
      xi: float, beta: float, maximize: bool) -> Tensor:
    return candidates.new_empty((3, candidates.shape[0]))


def gp_acquisition(
    candidates: Tensor,
    train_x: Tensor,
    Linv: Tensor,
    alpha: Tensor,
    lengthscales: Tensor,
    outputscale: float | Tensor,
    kernel: str = "matern52",
    mean_constant: float | Tensor = 0.0,
    acquisition: str = "ei",
    best_f: float | Tensor | None = None,
    xi: float = 0.0,
    beta: float = 2.0,
    maximize: bool = False,
) -> GPAcquisition:
    """Posterior mean and variance of an exact GP and an acquisition score for each candidate.

    Args:
        candidates: points to score [m, d] (float32 or float64; every tensor in one dtype).
        train_x: the observed inputs [n, d].
        Linv: L⁻¹ [n, n], L the lower Cholesky factor of K(train_x, train_x) + noise·I; only its
            lower triangle is read.
        alpha: (K + noise·I)⁻¹ (y - mean_constant) [n].
        lengthscales: one positive length-scale per input dimension [d] (ARD).
        outputscale: the kernel's signal variance (positive).
        kernel: ``"matern52"`` (Matérn ν = 5/2) or ``"rbf"`` (squared exponential).
        mean_constant: the GP's constant prior mean.
        acquisition: ``"ei"``, ``"pi"``, ``"ucb"`` or ``"none"`` (score all zeros).
        best_f: the best observed value; needed by ``"ei"`` and ``"pi"``.
        xi: exploration margin subtracted from the improvement (ei, pi).
        beta: UCB's exploration weight, used as ``sqrt(beta) · σ`` (as in BoTorch).
        maximize: score improvements above ``best_f`` instead of below (the default minimises).

    Returns:
        ``GPAcquisition(mean, variance, score)``, each [m] in the candidates' dtype. The variance
        is that of the latent function (no observation noise), floored at ``MIN_VARIANCE``
        (1e-10 in float64, 1e-6 in float32, as GPyTorch). The score is higher-is-better. The
        outputs carry no gradients (autograd is not implemented yet).
    """
    prepared = prepare(candidates, train_x, Linv, alpha, lengthscales, outputscale, kernel,
                       mean_constant, acquisition, best_f, xi, beta, maximize)
    with torch.no_grad():
        out = _gp_acquisition_op(*prepared)
    return GPAcquisition(*out.unbind(0))
