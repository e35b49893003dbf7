"""chol_append: extend a Cholesky factor (and its inverse) by k new rows in O(n²k).

Given the lower-triangular factor ``L`` of a Gram matrix K_nn = L Lᵀ (and optionally its
inverse ``Linv`` = L⁻¹) and the blocks of k new points, K_kn = K(new, old) [k, n] and
K_kk = K(new, new) [k, k], ``chol_append`` returns the factor of the extended matrix
(Bertrand2019, sec. 2.3 and appendix A, eqs. A.2 and A.3):

    B = K_kn L⁻ᵀ,   S = K_kk − B Bᵀ,   L' = [[L, 0], [B, chol(S)]]   (and L'⁻¹ likewise)

A new point that duplicates an old one makes S singular: the op then retries with escalating
jitter on the diagonal of the new points only and returns the amount (``jitter_added``); it
never returns NaN for finite inputs. Not differentiable. The jitter schedule, memory and
backends: docs/kernels.md.

To append repeatedly, use :class:`CholeskyFactor`: it keeps the factor in buffers whose side
doubles when full and extends it in place, O(n²k) per append of k points, the growth amortised.
``chol_append`` alone allocates and copies an [n+k, n+k] result on every call (O((n+k)²)
memory traffic, more than the append itself at large n) unless given ``out=`` buffers.

This file reads top-down: validation, reference, torch implementation, C++ launcher,
registration, front-end, the growing factor.
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
            O((n+k)²) memory cost that dominates for k = 1 at large n. To append repeatedly,
            use :class:`CholeskyFactor`, which manages such buffers (growing them by
            doubling) and is what the bayes searcher's GP uses.

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


# --- the growing factor ----------------------------------------------------------------------


class CholeskyFactor:
    """A Cholesky factor that grows point by point: the public way to append repeatedly.

    The factor L of K = L Lᵀ (and optionally L⁻¹) lives in the top-left n × n block of square
    buffers whose side doubles when full, so an append of k points is one in-place
    :func:`chol_append` (O(n²k), writing only the new rows) and the O(n²) copy into a larger
    buffer happens once per doubling: amortised, appending costs O(n²) per point, against an
    O(n²) allocation and copy on every call of ``chol_append`` without ``out=``.

    Typical use::

        factor = CholeskyFactor(torch.linalg.cholesky(K))   # or CholeskyFactor() to start empty
        jitter = factor.append(K_new_old, K_new_new)        # [k, n] and [k, k] blocks
        alpha = factor.solve(y)                             # K⁻¹ y
        factor.L, len(factor)                               # view [n, n], n

    Args:
        L: the lower factor [n, n] to start from (its lower triangle is copied), or ``None``
            for an empty factor (n = 0).
        inverse: also keep L⁻¹ (computed from ``L`` by a triangular solve, then extended by
            each append), at twice the memory.
        capacity: initial side of the buffers (at least n).
        dtype, device: of an empty factor (default float64, CPU); a given ``L`` sets both.

    Raises:
        KernelError: ``L`` is not a square float32/float64 matrix, or ``capacity`` < 1.
    """

    def __init__(
        self,
        L: Tensor | None = None,
        *,
        inverse: bool = False,
        capacity: int = 64,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise KernelError(f"CholeskyFactor: capacity must be an integer >= 1, got {capacity!r}")
        if L is not None:
            dtype, device = getattr(L, "dtype", dtype), getattr(L, "device", device)
        dtype = torch.float64 if dtype is None else dtype
        if dtype not in DTYPES:
            raise KernelError(
                f"CholeskyFactor: dtype {dtype} is not supported; use float64 (recommended) or "
                "float32"
            )
        self._L = torch.empty((capacity, capacity), dtype=dtype, device=device)
        self._Linv = torch.empty_like(self._L) if inverse else None
        self._n = 0
        if L is not None:
            self.reset(L)

    # -- state -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"CholeskyFactor(n={self._n}, capacity={self.capacity}, dtype={self.dtype}, "
                f"device={self.device}, inverse={self.inverse})")

    @property
    def inverse(self) -> bool:
        """Whether L⁻¹ is kept."""
        return self._Linv is not None

    @property
    def capacity(self) -> int:
        """Rows the buffers hold before the next doubling."""
        return self._L.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self._L.dtype

    @property
    def device(self) -> torch.device:
        return self._L.device

    @property
    def L(self) -> Tensor:
        """The lower factor [n, n]: a view into the buffer, valid until the next append,
        truncate or reset (clone it to keep it)."""
        return self._L[: self._n, : self._n]

    @property
    def Linv(self) -> Tensor | None:
        """L⁻¹ [n, n] (a view, like :attr:`L`), or ``None`` without ``inverse=True``."""
        return None if self._Linv is None else self._Linv[: self._n, : self._n]

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` rows: the side at least doubles, so growth is amortised."""
        if rows <= self.capacity:
            return
        side = max(rows, 2 * self.capacity)
        n = self._n
        grown = self._L.new_empty((side, side))
        grown[:n, :n] = self._L[:n, :n]
        self._L = grown
        if self._Linv is not None:
            grown_inverse = self._Linv.new_empty((side, side))
            grown_inverse[:n, :n] = self._Linv[:n, :n]
            self._Linv = grown_inverse

    # -- changes -----------------------------------------------------------------------------
    def reset(self, L: Tensor | None = None) -> None:
        """Start again from the factor ``L`` [n, n] (its lower triangle copied into the
        buffers, which are kept when large enough; L⁻¹ is recomputed when kept), or empty with
        ``None``."""
        if L is None:
            self._n = 0
            return
        if not isinstance(L, Tensor) or L.dim() != 2 or L.shape[0] != L.shape[1]:
            shape = tuple(L.shape) if isinstance(L, Tensor) else type(L).__name__
            raise KernelError(f"CholeskyFactor: L must be a square matrix [n, n], got {shape}")
        if L.dtype != self.dtype or L.device != self.device:
            raise KernelError(
                f"CholeskyFactor: L is {L.dtype} on {L.device} but the factor holds {self.dtype} "
                f"on {self.device}; convert it (or start a new CholeskyFactor from it)"
            )
        n = L.shape[0]
        self._n = 0  # nothing to carry over into grown buffers
        self._reserve(n)
        L = L.detach().tril()
        self._L[:n, :n] = L
        if self._Linv is not None:
            eye = torch.eye(n, dtype=L.dtype, device=L.device)
            self._Linv[:n, :n] = torch.linalg.solve_triangular(L, eye, upper=False)
        self._n = n

    def append(
        self,
        K_new_old: Tensor,
        K_new_new: Tensor,
        jitter: float | None = None,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> float:
        """Append k points in place by :func:`chol_append`; returns the jitter it added.

        Args:
            K_new_old: K(new, old) [k, n] ([n] for one point).
            K_new_new: K(new, new) [k, k] (a scalar or [1] for one point).
            jitter, max_tries: the escalation for duplicates, as in :func:`chol_append`.

        Raises:
            KernelError: what :func:`chol_append` raises (bad shapes, dtypes or devices,
                non-finite blocks, a Schur complement not positive definite even with
                jitter); the factor is then unchanged.
        """
        if isinstance(K_new_old, Tensor) and isinstance(K_new_new, Tensor) and K_new_old.dim() == 1:
            if K_new_new.numel() != 1:
                raise KernelError(
                    f"CholeskyFactor.append: one point's K_new_old [n] needs a scalar K_new_new, "
                    f"got shape {tuple(K_new_new.shape)}"
                )
            K_new_old, K_new_new = K_new_old[None], K_new_new.reshape(1, 1)
        _check(self.L, K_new_old, K_new_new, self.Linv)
        self._reserve(self._n + K_new_new.shape[0])
        result = chol_append(self.L, K_new_old, K_new_new, self.Linv, jitter, max_tries,
                             out=(self._L, self._Linv))
        self._n = result.L.shape[0]
        return result.jitter_added

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` points only (e.g. drop fantasies): O(1), the factor of the
        leading block is its leading block."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self._n:
            raise KernelError(f"CholeskyFactor.truncate: n must be in [0, {self._n}], got {n!r}")
        self._n = n

    # -- use ---------------------------------------------------------------------------------
    def solve(self, rhs: Tensor) -> Tensor:
        """K⁻¹ ``rhs`` for ``rhs`` [n] or [n, m], by two triangular solves with L.

        Raises:
            KernelError: ``rhs`` of another length, dtype or device.
        """
        if not isinstance(rhs, Tensor) or rhs.dim() not in (1, 2) or rhs.shape[0] != self._n:
            shape = tuple(rhs.shape) if isinstance(rhs, Tensor) else type(rhs).__name__
            raise KernelError(
                f"CholeskyFactor.solve: rhs must be [n] or [n, m] with n = {self._n}, got {shape}"
            )
        if rhs.dtype != self.dtype or rhs.device != self.device:
            raise KernelError(
                f"CholeskyFactor.solve: rhs is {rhs.dtype} on {rhs.device} but the factor is "
                f"{self.dtype} on {self.device}"
            )
        columns = rhs[:, None] if rhs.dim() == 1 else rhs
        solved = torch.cholesky_solve(columns, self.L, upper=False)
        return solved[:, 0] if rhs.dim() == 1 else solved
