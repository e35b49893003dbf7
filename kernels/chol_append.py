"""chol_append: extend a Cholesky factor (and its inverse) by k new rows in O(n²k).

Given the lower-triangular factor ``L`` of a Gram matrix K_nn = L Lᵀ (and optionally its
inverse ``Linv`` = L⁻¹) and the blocks of k new points, K_kn = K(new, old) [k, n] and
K_kk = K(new, new) [k, k], ``chol_append`` returns the factor of the extended matrix
(Bertrand2019, sec. 2.3 and appendix A, eqs. A.2 and A.3):

    B = K_kn L⁻ᵀ,   S = K_kk − B Bᵀ,   L' = [[L, 0], [B, chol(S)]]   (and L'⁻¹ likewise)

A new point that duplicates an old one makes S singular: the op then retries with escalating
jitter on the diagonal of the new points only and returns the amount (``jitter_added``); it
never returns NaN for finite inputs. Callers that append repeatedly pass ``out=`` buffers with
spare rows, which the op extends in place. Not differentiable. The jitter schedule, memory and
backends: docs/kernels.md.

This file reads top-down: validation, reference, torch implementation, C++ launcher,
registration, front-end.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from medtune.kernels._common import KernelError, load_extension, register_backends, select

DTYPES = (torch.float32, torch.float64)
DEFAULT_JITTER = {torch.float64: 1e-10, torch.float32: 1e-6}
DEFAULT_MAX_TRIES = 8


class CholAppend(NamedTuple):
    """The extended factor [n+k, n+k], its inverse (``None`` unless ``Linv`` was given) and
    the jitter added to the diagonal of the new points (0.0 when none was needed)."""

    L: Tensor
    Linv: Optional[Tensor]
    jitter_added: float


def _check(L: Tensor, K_new_old: Tensor, K_new_new: Tensor, Linv: Tensor | None) -> None:
    named = {"L": L, "K_new_old": K_new_old, "K_new_new": K_new_new}
    if Linv is not None:
        named["Linv"] = Linv
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise KernelError(f"chol_append: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise KernelError(f"chol_append: {name} must be a matrix, got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise KernelError(
                f"chol_append: {name} has dtype {t.dtype}; use float64 (recommended) or float32"
            )
        if t.dtype != L.dtype:
            raise KernelError(f"chol_append: {name} is {t.dtype} but L is {L.dtype}; use one dtype")
        if t.device != L.device:
            raise KernelError(
                f"chol_append: {name} is on {t.device} but L is on {L.device}; move them together"
            )
        if t.requires_grad and torch.is_grad_enabled():
            raise KernelError(
                f"chol_append: {name} requires grad, but chol_append is not differentiable; "
                "pass detached tensors (or call it under torch.no_grad())"
            )
    n = L.shape[0]
    k = K_new_new.shape[0]
    if L.shape[1] != n:
        raise KernelError(f"chol_append: L must be square [n, n], got shape {tuple(L.shape)}")
    if Linv is not None and tuple(Linv.shape) != (n, n):
        raise KernelError(
            f"chol_append: Linv must have L's shape {(n, n)}, got {tuple(Linv.shape)}"
        )
    if K_new_new.shape[1] != k or k == 0:
        raise KernelError(
            f"chol_append: K_new_new must be square [k, k] with k >= 1, got {tuple(K_new_new.shape)}"
        )
    if tuple(K_new_old.shape) != (k, n):
        raise KernelError(
            f"chol_append: K_new_old must be [k, n] = {(k, n)} (new points × old points), "
            f"got {tuple(K_new_old.shape)}"
        )


# --- reference -------------------------------------------------------------------------------


def chol_append_reference(
    K: Tensor, num_new: int, jitter_added: float = 0.0, with_inverse: bool = True
) -> CholAppend:
    """Ground truth: factorise the assembled Gram matrix ``K`` [n+k, n+k] from scratch.

    ``jitter_added`` is added to the diagonal of the last ``num_new`` rows, as chol_append does
    when it had to add jitter; ``Linv`` is computed by a triangular solve against I.
    """
    K = 0.5 * (K + K.mT)
    if jitter_added:
        K = K.clone()
        diag = K.diagonal()
        diag[K.shape[0] - num_new:] += jitter_added
    L = torch.linalg.cholesky(K)
    Linv = None
    if with_inverse:
        eye = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
        Linv = torch.linalg.solve_triangular(L, eye, upper=False)
    return CholAppend(L, Linv, float(jitter_added))


# --- torch implementation (BLAS / cuBLAS) -----------------------------------------------------


def _factor_schur(S: Tensor, jitter: float, max_tries: int, floor: float) -> tuple[Tensor, float]:
    """Cholesky of the k × k Schur complement with jitter escalation (see module docstring)."""
    eye = torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
    for attempt in range(max_tries + 1):
        added = 0.0 if attempt == 0 else jitter * 10.0 ** (attempt - 1)
        factor, info = torch.linalg.cholesky_ex(S + added * eye if added else S)
        if int(info) == 0:
            pivots = factor.diagonal().double()
            if bool(torch.isfinite(pivots).all()) and bool((pivots * pivots > floor).all()):
                return factor, added
    raise _not_positive_definite(S.shape[0], jitter, max_tries)


def _not_positive_definite(k: int, jitter: float, max_tries: int) -> KernelError:
    largest = jitter * 10.0 ** (max_tries - 1) if max_tries > 0 else 0.0
    return KernelError(
        f"chol_append: the Schur complement of the {k} new point(s) is not positive definite "
        f"even with {largest:.3g} added to its diagonal ({max_tries} tries of jitter "
        "escalation); a new point duplicates an old one (or another new one), or the inputs "
        "are not finite or not a Gram matrix. Drop or merge the duplicate, or allow more "
        "jitter (larger `jitter` or `max_tries`)"
    )


def _torch_append_(
    L_buffer: Tensor, n: int, K_new_old: Tensor, K_new_new: Tensor, Linv_buffer: Tensor | None,
    jitter: float, max_tries: int, floor: float,
) -> Tensor:
    k = K_new_new.shape[0]
    L = L_buffer[:n, :n]
    # B Lᵀ = K_kn, solved against Lᵀ: for a contiguous L that is column-major, so LAPACK/cuBLAS
    # take it without a copy (a view into a larger buffer is copied by torch)
    B = torch.linalg.solve_triangular(L.mT, K_new_old, upper=True, left=False)
    S = 0.5 * (K_new_new + K_new_new.mT) - B @ B.mT
    L_kk, added = _factor_schur(S, jitter, max_tries, floor)
    if Linv_buffer is not None:  # before L_buffer changes: B L⁻¹ reads only the old block
        eye = torch.eye(k, dtype=L.dtype, device=L.device)
        L_kk_inv = torch.linalg.solve_triangular(L_kk, eye, upper=False)
        _write_new_rows(Linv_buffer, n, -L_kk_inv @ (B @ Linv_buffer[:n, :n]), L_kk_inv)
    _write_new_rows(L_buffer, n, B, L_kk)
    return torch.tensor(added, dtype=torch.float64)


def _write_new_rows(buffer: Tensor, n: int, bottom_left: Tensor, bottom_right: Tensor) -> None:
    k = bottom_right.shape[0]
    buffer[:n, n:n + k] = 0
    buffer[n:n + k, :n] = bottom_left
    buffer[n:n + k, n:n + k] = bottom_right


# --- C++ launcher ----------------------------------------------------------------------------


def _cpp_append_(
    L_buffer: Tensor, n: int, K_new_old: Tensor, K_new_new: Tensor, Linv_buffer: Tensor | None,
    jitter: float, max_tries: int, floor: float,
) -> Tensor:
    inverse = Linv_buffer if Linv_buffer is not None else L_buffer.new_empty((0,))
    added, ok = load_extension().chol_append_(
        L_buffer, n, K_new_old.contiguous(), K_new_new.contiguous(), inverse,
        jitter, max_tries, floor,
    )
    if not ok:
        raise _not_positive_definite(K_new_new.shape[0], jitter, max_tries)
    return torch.tensor(added, dtype=torch.float64)


# --- registration ----------------------------------------------------------------------------

# No Triton kernel: on CUDA the torch path (cuBLAS) is the choice.
register_backends("chol_append", torch_fn=_torch_append_, cpp_fn=_cpp_append_,
                  torch_priority={"*": 0, "cuda": 10})


@torch.library.custom_op("medtune::chol_append_", mutates_args=("L_buffer", "Linv_buffer"))
def _chol_append_op(
    L_buffer: Tensor, n: int, K_new_old: Tensor, K_new_new: Tensor,
    Linv_buffer: Optional[Tensor], jitter: float, max_tries: int, floor: float,
) -> Tensor:
    """Extend in place the factor held in the top-left n × n block of ``L_buffer`` (and of
    ``Linv_buffer``) by the k new rows and columns; returns the jitter added (0-dim float64)."""
    impl = select("chol_append", L_buffer.device.type)
    return impl.fn(L_buffer, n, K_new_old, K_new_new, Linv_buffer, jitter, max_tries, floor)


@_chol_append_op.register_fake
def _(L_buffer, n, K_new_old, K_new_new, Linv_buffer, jitter, max_tries, floor):
    return L_buffer.new_empty((), dtype=torch.float64)


def _buffer_for(name: str, factor: Tensor, buffer: Tensor | None, size: int) -> Tensor:
    """The [m, m] buffer the factor is extended in: ``buffer`` (with ``factor`` copied into its
    top-left block unless it is that block already) or a new one of side ``size``."""
    n = factor.shape[0]
    if buffer is None:
        buffer = factor.new_empty((size, size))
        buffer[:n, :n] = factor
        return buffer
    if not isinstance(buffer, Tensor) or buffer.dim() != 2 or buffer.shape[0] != buffer.shape[1]:
        raise KernelError(f"chol_append: out {name} buffer must be a square matrix")
    if buffer.shape[0] < size:
        raise KernelError(
            f"chol_append: out {name} buffer is {tuple(buffer.shape)} but n + k = {size}; "
            "allocate a larger buffer (e.g. double its side)"
        )
    if buffer.dtype != factor.dtype or buffer.device != factor.device or not buffer.is_contiguous():
        raise KernelError(
            f"chol_append: out {name} buffer must be contiguous, {factor.dtype}, on {factor.device}"
        )
    in_place = (
        factor.data_ptr() == buffer.data_ptr()
        and (n <= 1 or factor.stride() == buffer.stride())
    )
    if not in_place:
        buffer[:n, :n] = factor
    return buffer


def chol_append(
    L: Tensor,
    K_new_old: Tensor,
    K_new_new: Tensor,
    Linv: Tensor | None = None,
    jitter: float | None = None,
    max_tries: int = DEFAULT_MAX_TRIES,
    out: tuple[Tensor, Tensor | None] | None = None,
) -> CholAppend:
    """Extend the Cholesky factor ``L`` of K_nn (and its inverse) by k new points in O(n²k).

    Args:
        L: lower-triangular factor [n, n] of K_nn (as ``torch.linalg.cholesky`` returns it;
            used as given, so its upper triangle should be zero). n may be 0.
        K_new_old: K(new, old) [k, n].
        K_new_new: K(new, new) [k, k] (symmetrised before use).
        Linv: optional L⁻¹ [n, n]; when given, the extended inverse is returned too.
        jitter: first relative jitter of the escalation (default 1e-10 for float64, 1e-6 for
            float32), scaled by the mean diagonal of ``K_new_new``.
        max_tries: how many jitters (each 10x the previous) to try after S itself fails;
            0 disables jitter, so a duplicate point raises.
        out: optional preallocated buffers ``(L_buffer, Linv_buffer)``, square, contiguous,
            of side m >= n + k (``Linv_buffer`` may be ``None`` when ``Linv`` is). When ``L``
            (``Linv``) is the top-left block ``buffer[:n, :n]``, the factor is extended in
            place: only the k new rows and columns are written, O(nk), and the returned
            factors are the views ``buffer[:n+k, :n+k]``. Otherwise it is copied in first.
            Without ``out`` new [n+k, n+k] tensors are allocated and ``L`` is copied, an
            O((n+k)²) memory cost that dominates for k = 1 at large n. This is how a caller
            that appends repeatedly (the bayes searcher) avoids the copies: allocate a buffer
            with spare rows once, pass ``L = buffer[:n, :n]``.

    Returns:
        ``CholAppend(L, Linv, jitter_added)``: the factor [n+k, n+k] of
        [[K_nn, K_knᵀ], [K_kn, K_kk + jitter_added·I]], its inverse (``None`` without
        ``Linv``), and the jitter that was added.

    Raises:
        KernelError: bad shapes, dtypes or devices, inputs requiring grad, non-finite new
            blocks, or a Schur complement that stays not positive definite after
            ``max_tries`` jitters. Not differentiable.
    """
    _check(L, K_new_old, K_new_new, Linv)
    if max_tries < 0:
        raise KernelError(f"chol_append: max_tries must be >= 0, got {max_tries}")
    relative = DEFAULT_JITTER[L.dtype] if jitter is None else float(jitter)
    if not relative > 0:
        raise KernelError(f"chol_append: jitter must be positive, got {jitter}")
    if not (bool(torch.isfinite(K_new_old).all()) and bool(torch.isfinite(K_new_new).all())):
        raise KernelError("chol_append: K_new_old or K_new_new contains NaN or inf")
    n, k = L.shape[0], K_new_new.shape[0]
    scale = float(K_new_new.diagonal().abs().double().mean())
    scale = scale if scale > 0 else 1.0
    floor = (n + k) * torch.finfo(L.dtype).eps * scale
    L_out, Linv_out = (None, None) if out is None else out
    if Linv is None and Linv_out is not None:
        raise KernelError("chol_append: an out buffer for Linv was given but Linv was not")
    L_buffer = _buffer_for("L", L, L_out, n + k)
    Linv_buffer = None if Linv is None else _buffer_for("Linv", Linv, Linv_out, n + k)
    added = _chol_append_op(
        L_buffer, n, K_new_old, K_new_new, Linv_buffer, relative * scale, int(max_tries), floor
    )
    m = n + k
    return CholAppend(
        L_buffer[:m, :m], None if Linv_buffer is None else Linv_buffer[:m, :m], float(added)
    )
