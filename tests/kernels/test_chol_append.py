"""chol_append on every available backend against a full factorisation of the assembled matrix,
and the growing CholeskyFactor built on it."""

from __future__ import annotations

import functools

import pytest
import torch

from medtune.errors import KernelError
from medtune.kernels import CholeskyFactor, chol_append, chol_append_reference, use_backend
from tests.conftest import backend_or_skip

BACKENDS = ["torch", "cpp"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-3}


def _gram(m: int, seed: int = 0, noise: float = 1e-3, dtype=torch.float64, dim: int = 6):
    """A squared-exponential Gram matrix of m random points (with `noise` on the diagonal)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(m, dim, generator=gen, dtype=torch.float64)
    K = torch.exp(-0.5 * torch.cdist(x, x).square() / 0.3**2)
    return (K + noise * torch.eye(m, dtype=torch.float64)).to(dtype), x


def _factor(K: torch.Tensor):
    L = torch.linalg.cholesky(K)
    eye = torch.eye(K.shape[0], dtype=K.dtype)
    return L, torch.linalg.solve_triangular(L, eye, upper=False)


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.double() - expected.double()).abs().max() / expected.double().abs().max())


@functools.lru_cache(maxsize=2)
def _problem(n, k, dtype, seed):
    """The Gram matrix, the factors of its first n points and the full reference (cached: the
    n = 4000 problem is shared by the backends)."""
    K, _ = _gram(n + k, seed, dtype=torch.float64)
    expected = chol_append_reference(K, k)
    K = K.to(dtype)
    return K, *_factor(K[:n, :n]), expected


def _check_append(backend, n, k, dtype=torch.float64, seed=0):
    K, L, Linv, expected = _problem(n, k, dtype, seed)
    with use_backend(backend):
        got = chol_append(L, K[n:, :n], K[n:, n:], Linv=Linv)
        only_L = chol_append(L, K[n:, :n], K[n:, n:])
    assert got.jitter_added == 0.0 and only_L.Linv is None
    assert got.L.shape == (n + k, n + k) and got.L.dtype == dtype
    assert torch.equal(got.L, only_L.L)
    assert torch.equal(got.L, got.L.tril()) and torch.equal(got.Linv, got.Linv.tril())
    assert _relative_error(got.L, expected.L) <= TOLERANCE[dtype]
    assert _relative_error(got.Linv, expected.Linv) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
# n = 517 leaves single rows after the C++ kernel's groups of four (in the forward substitution
# and below each 256-column block of B L^-1)
@pytest.mark.parametrize(
    "n,k", [(0, 1), (1, 1), (7, 1), (200, 1), (200, 5), (300, 17), (517, 2), (1000, 1), (1000, 4)]
)
def test_matches_full_factorisation(backend, n, k):
    backend_or_skip("chol_append", backend)
    _check_append(backend, n, k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 8])
def test_matches_full_factorisation_at_4000(backend, k):
    backend_or_skip("chol_append", backend)
    _check_append(backend, 4000, k, seed=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32(backend):
    backend_or_skip("chol_append", backend)
    _check_append(backend, 150, 3, dtype=torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_appends_equal_one_factorisation(backend):
    backend_or_skip("chol_append", backend)
    K, _ = _gram(160, seed=3)
    L, Linv = _factor(K[:100, :100])
    with use_backend(backend):
        for start, stop in ((100, 101), (101, 105), (105, 130), (130, 131), (131, 160)):
            L, Linv, added = chol_append(L, K[start:stop, :start], K[start:stop, start:stop], Linv)
            assert added == 0.0
    expected = chol_append_reference(K, 60)
    assert _relative_error(L, expected.L) <= 1e-10
    assert _relative_error(Linv, expected.Linv) <= 1e-10


def _with_duplicate(n: int, duplicate_of: int, extra: int = 0):
    """A noiseless Gram matrix of n points, then a copy of point `duplicate_of`, then `extra`
    further fresh points."""
    K, x = _gram(n + 1 + extra, seed=5, noise=0.0, dim=10)
    x = torch.cat([x[:n], x[duplicate_of:duplicate_of + 1], x[n + 1:]])
    K = torch.exp(-0.5 * torch.cdist(x, x).square() / 0.3**2)
    return K


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("extra", [0, 2])
def test_duplicate_point_adds_jitter(backend, extra):
    backend_or_skip("chol_append", backend)
    n, k = 50, 1 + extra
    K = _with_duplicate(n, duplicate_of=17, extra=extra)
    L, Linv = _factor(K[:n, :n])
    with use_backend(backend):
        got = chol_append(L, K[n:, :n], K[n:, n:], Linv=Linv)
    # documented remedy: the smallest of 1e-10, 1e-9, ... (times the mean prior variance, 1 here)
    # whose pivots clear the rounding floor (n + k) * eps
    assert got.jitter_added == pytest.approx(1e-10)
    assert torch.isfinite(got.L).all() and torch.isfinite(got.Linv).all()
    expected = chol_append_reference(K, k, jitter_added=got.jitter_added)
    assert _relative_error(got.L, expected.L) <= 1e-8
    identity = got.Linv @ got.L
    assert torch.allclose(identity, torch.eye(n + k, dtype=K.dtype), atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_identical_new_points_add_jitter(backend):
    backend_or_skip("chol_append", backend)
    K, x = _gram(40, seed=6, noise=0.0, dim=10)
    x = torch.cat([x[:38], x[38:39], x[38:39]])
    K = torch.exp(-0.5 * torch.cdist(x, x).square() / 0.3**2)
    L, _ = _factor(K[:38, :38])
    with use_backend(backend):
        got = chol_append(L, K[38:, :38], K[38:, 38:])
    assert got.jitter_added > 0 and torch.isfinite(got.L).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_without_jitter_raises(backend):
    backend_or_skip("chol_append", backend)
    n = 50
    K = _with_duplicate(n, duplicate_of=3)
    L, _ = _factor(K[:n, :n])
    with use_backend(backend), pytest.raises(KernelError, match="not positive definite"):
        chol_append(L, K[n:, :n], K[n:, n:], max_tries=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hopeless_input_raises_instead_of_nan(backend):
    backend_or_skip("chol_append", backend)
    L = torch.eye(3, dtype=torch.float64)
    with use_backend(backend), pytest.raises(KernelError, match="not positive definite"):
        chol_append(L, torch.ones(1, 3, dtype=torch.float64), -torch.ones(1, 1, dtype=torch.float64))


def _bad(message, L=None, K_new_old=None, K_new_new=None, Linv=None, **kw):
    f64 = dict(dtype=torch.float64)
    L = torch.eye(4, **f64) if L is None else L
    K_new_old = torch.zeros(2, 4, **f64) if K_new_old is None else K_new_old
    K_new_new = torch.eye(2, **f64) if K_new_new is None else K_new_new
    with pytest.raises(KernelError, match=message):
        chol_append(L, K_new_old, K_new_new, Linv, **kw)


def test_bad_inputs_raise_clear_errors():
    f64 = dict(dtype=torch.float64)
    _bad("L must be square", L=torch.zeros(4, 3, **f64), K_new_old=torch.zeros(2, 4, **f64))
    _bad("must be a matrix", L=torch.zeros(4, **f64))
    _bad(r"K_new_old must be \[k, n\]", K_new_old=torch.zeros(2, 3, **f64))
    _bad(r"K_new_old must be \[k, n\]", K_new_old=torch.zeros(3, 4, **f64))
    _bad(r"K_new_new must be square", K_new_new=torch.zeros(2, 3, **f64))
    _bad("Linv must have L's shape", Linv=torch.eye(3, **f64))
    _bad("is torch.float32 but L is torch.float64", K_new_new=torch.eye(2))
    _bad("use float64", L=torch.eye(4, dtype=torch.float16))
    _bad("same device|move them together", K_new_new=torch.eye(2, device="meta", **f64))
    _bad("NaN or inf", K_new_new=torch.full((2, 2), float("nan"), **f64))
    _bad("max_tries must be", max_tries=-1)
    _bad("jitter must be positive", jitter=0.0)
    _bad("not differentiable", K_new_old=torch.zeros(2, 4, requires_grad=True, **f64))


def test_fake_impl_traces():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from medtune.kernels.chol_append import _chol_append_op

    with FakeTensorMode():
        buffer = torch.empty(8, 8, dtype=torch.float64)
        added = _chol_append_op(
            buffer, 6, torch.empty(2, 6, dtype=torch.float64),
            torch.empty(2, 2, dtype=torch.float64), buffer.clone(), 1e-10, 3, 1e-14,
        )
    assert added.shape == () and added.dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_buffers_extend_in_place(backend):
    backend_or_skip("chol_append", backend)
    K, _ = _gram(90, seed=8)
    L_buffer = torch.full((100, 100), float("nan"), dtype=torch.float64)
    Linv_buffer = torch.full((100, 100), float("nan"), dtype=torch.float64)
    L, Linv = _factor(K[:60, :60])
    L_buffer[:60, :60], Linv_buffer[:60, :60] = L, Linv  # upper-right of the block stays NaN
    n = 60
    L, Linv = L_buffer[:n, :n], Linv_buffer[:n, :n]
    with use_backend(backend):
        for k in (1, 3, 26):
            L, Linv, _ = chol_append(L, K[n:n + k, :n], K[n:n + k, n:n + k], Linv,
                                     out=(L_buffer, Linv_buffer))
            n += k
            assert L.data_ptr() == L_buffer.data_ptr() and L.shape == (n, n)
    expected = chol_append_reference(K, 30)
    assert _relative_error(L, expected.L) <= 1e-10
    assert _relative_error(Linv, expected.Linv) <= 1e-10
    # a factor that is not the buffer's block is copied in
    L0, _ = _factor(K[:89, :89])
    with use_backend(backend):
        got = chol_append(L0, K[89:, :89], K[89:, 89:], out=(L_buffer, None))
    assert _relative_error(got.L, expected.L) <= 1e-10


def test_out_buffer_errors():
    L = torch.eye(4, dtype=torch.float64)
    with pytest.raises(KernelError, match="allocate a larger buffer"):
        chol_append(L, torch.zeros(2, 4, dtype=torch.float64), torch.eye(2, dtype=torch.float64),
                    out=(torch.empty(5, 5, dtype=torch.float64), None))
    with pytest.raises(KernelError, match="Linv was not"):
        chol_append(L, torch.zeros(1, 4, dtype=torch.float64), torch.eye(1, dtype=torch.float64),
                    out=(torch.empty(5, 5, dtype=torch.float64), torch.empty(5, 5, dtype=torch.float64)))



# --- CholeskyFactor: the growing factor ------------------------------------------------------

def _storage(factor: CholeskyFactor) -> int:
    """Where the factor's buffer lives (the same while appends write in place)."""
    return factor.L.untyped_storage().data_ptr()


#: chunk sizes appended one after the other: single points and blocks, 200 points in all
CHUNKS = [1, 1, 2, 1, 3, 1, 7, 1, 1, 14, 1, 1, 30, 1, 1, 1, 60, 1, 1, 72]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("inverse", [False, True])
def test_growing_factor_equals_a_fresh_factorisation(backend, dtype, inverse):
    """From empty, capacity 4, through six doublings (4 -> 256): after every append the factor
    is torch.linalg.cholesky of the kernel matrix so far, and the buffers are reallocated only
    when full (between doublings the append writes in place, no copy of the factor)."""
    backend_or_skip("chol_append", backend)
    K, _ = _gram(sum(CHUNKS), seed=11)
    factor = CholeskyFactor(inverse=inverse, capacity=4, dtype=dtype)
    assert len(factor) == 0 and factor.L.shape == (0, 0) and factor.inverse == inverse
    capacities, n = [factor.capacity], 0
    with use_backend(backend):
        for k in CHUNKS:
            buffer, room = _storage(factor), factor.capacity
            K_new_old, K_new_new = K[n:n + k, :n].to(dtype), K[n:n + k, n:n + k].to(dtype)
            assert factor.append(K_new_old, K_new_new) == 0.0
            n += k
            assert len(factor) == n and factor.L.shape == (n, n) and factor.L.dtype == dtype
            if n <= room:
                assert factor.capacity == room and _storage(factor) == buffer
            else:
                assert factor.capacity == max(n, 2 * room)
                capacities.append(factor.capacity)
            expected = torch.linalg.cholesky(K[:n, :n])
            assert _relative_error(factor.L, expected) <= TOLERANCE[dtype], n
            assert torch.equal(factor.L, factor.L.tril())
            if inverse:
                eye = torch.eye(n, dtype=torch.float64)
                assert _relative_error(factor.Linv, torch.linalg.solve_triangular(
                    expected, eye, upper=False)) <= TOLERANCE[dtype]
            else:
                assert factor.Linv is None
    assert capacities == [4, 8, 16, 32, 64, 128, 256]


@pytest.mark.parametrize("backend", BACKENDS)
def test_growing_factor_from_a_factor_truncates_and_solves(backend):
    backend_or_skip("chol_append", backend)
    K, _ = _gram(90, seed=12)
    L, Linv = _factor(K[:50, :50])
    factor = CholeskyFactor(L, inverse=True, capacity=8)
    assert factor.capacity == 50 and factor.dtype == torch.float64 and len(factor) == 50
    assert torch.equal(factor.L, L) and _relative_error(factor.Linv, Linv) <= 1e-12
    L[0, 0] = 7.0  # the factor holds a copy
    assert factor.L[0, 0] != 7.0
    with use_backend(backend):
        # one point as a vector and a scalar
        assert factor.append(K[50, :50], K[50, 50]) == 0.0
        factor.append(K[51:90, :51], K[51:90, 51:90])
    assert factor.capacity == 100
    expected = chol_append_reference(K, 40)
    assert _relative_error(factor.L, expected.L) <= 1e-10
    assert _relative_error(factor.Linv, expected.Linv) <= 1e-10

    gen = torch.Generator().manual_seed(0)
    b = torch.randn(90, 3, generator=gen, dtype=torch.float64)
    solved = torch.linalg.solve(K, b)
    assert _relative_error(factor.solve(b), solved) <= 1e-8
    assert _relative_error(factor.solve(b[:, 0]), solved[:, 0]) <= 1e-8
    assert factor.solve(b[:, 0]).shape == (90,)

    # fantasies: truncate drops the last points in O(1), and appending others is exact
    factor.truncate(60)
    assert len(factor) == 60 and factor.L.shape == (60, 60)
    _, x = _gram(90, seed=12)
    x = torch.cat([x[:60], x[80:]])
    K2 = torch.exp(-0.5 * torch.cdist(x, x).square() / 0.3**2)
    K2 = K2 + 1e-3 * torch.eye(70, dtype=torch.float64)
    with use_backend(backend):
        factor.append(K2[60:, :60], K2[60:, 60:])
    assert _relative_error(factor.L, torch.linalg.cholesky(K2)) <= 1e-10
    assert _relative_error(factor.solve(b[:70]), torch.linalg.solve(K2, b[:70])) <= 1e-8
    factor.reset()
    assert len(factor) == 0 and factor.solve(b[:0]).shape == (0, 3)
    factor.reset(L[:5, :5] + torch.ones(5, 5, dtype=torch.float64).triu(1))  # upper ignored
    assert len(factor) == 5 and factor.capacity == 100 and torch.equal(factor.L, L[:5, :5].tril())


@pytest.mark.parametrize("backend", BACKENDS)
def test_growing_factor_jitter_and_failure(backend):
    """A duplicate gets the jitter chol_append adds; a hopeless append raises chol_append's
    error and leaves the factor as it was, even when it had to grow first."""
    backend_or_skip("chol_append", backend)
    n = 50
    K = _with_duplicate(n, duplicate_of=17)
    factor = CholeskyFactor(torch.linalg.cholesky(K[:n, :n]), inverse=True, capacity=n)
    before, before_inverse = factor.L.clone(), factor.Linv.clone()
    with use_backend(backend):
        with pytest.raises(KernelError, match="not positive definite"):
            factor.append(K[n:, :n], K[n:, n:], max_tries=0)
        assert len(factor) == n and torch.equal(factor.L, before)
        assert torch.equal(factor.Linv, before_inverse)
        assert factor.append(K[n:, :n], K[n:, n:]) == pytest.approx(1e-10)
    assert len(factor) == n + 1 and torch.isfinite(factor.L).all()
    expected = chol_append_reference(K, 1, jitter_added=1e-10)
    assert _relative_error(factor.L, expected.L) <= 1e-8


def test_growing_factor_errors():
    f64 = dict(dtype=torch.float64)
    factor = CholeskyFactor(torch.eye(4, **f64))

    def bad(message, K_new_old, K_new_new, **kw):
        with pytest.raises(KernelError, match=message):
            factor.append(K_new_old, K_new_new, **kw)
        assert len(factor) == 4 and torch.equal(factor.L, torch.eye(4, **f64))

    bad(r"K_new_old must be \[k, n\]", torch.zeros(1, 3, **f64), torch.eye(1, **f64))
    bad(r"K_new_new must be square", torch.zeros(2, 4, **f64), torch.zeros(2, 3, **f64))
    bad("needs a scalar K_new_new", torch.zeros(4, **f64), torch.eye(2, **f64))
    bad("is torch.float32 but L is torch.float64", torch.zeros(1, 4), torch.eye(1, **f64))
    bad("move them together", torch.zeros(1, 4, device="meta", **f64), torch.eye(1, **f64))
    bad("must be a torch.Tensor", [[0.0] * 4], torch.eye(1, **f64))
    bad("NaN or inf", torch.zeros(1, 4, **f64), torch.full((1, 1), float("inf"), **f64))
    bad("not differentiable", torch.zeros(1, 4, requires_grad=True, **f64), torch.eye(1, **f64))
    bad("jitter must be positive", torch.zeros(1, 4, **f64), torch.eye(1, **f64), jitter=-1.0)
    with pytest.raises(KernelError, match="capacity must be an integer >= 1"):
        CholeskyFactor(capacity=0)
    with pytest.raises(KernelError, match="use float64"):
        CholeskyFactor(dtype=torch.float16)
    with pytest.raises(KernelError, match="use float64"):
        CholeskyFactor(torch.eye(3, dtype=torch.bfloat16))
    with pytest.raises(KernelError, match=r"L must be a square matrix \[n, n\], got \(3, 2\)"):
        CholeskyFactor(torch.zeros(3, 2, **f64))
    with pytest.raises(KernelError, match="L is torch.float32 on cpu but the factor holds"):
        factor.reset(torch.eye(3))
    with pytest.raises(KernelError, match=r"truncate: n must be in \[0, 4\]"):
        factor.truncate(5)
    with pytest.raises(KernelError, match=r"rhs must be \[n\] or \[n, m\] with n = 4"):
        factor.solve(torch.zeros(3, **f64))
    with pytest.raises(KernelError, match="rhs is torch.float32"):
        factor.solve(torch.zeros(4))


def test_gp_keeps_its_factor_in_a_growing_factor():
    """The GP of the bayes searcher appends observations through CholeskyFactor: in place
    between doublings, and equal to a fresh factorisation."""
    from medtune.search.gp import GaussianProcess, GPHyper, kernel_matrix

    gen = torch.Generator().manual_seed(4)
    x = torch.rand(70, 3, generator=gen, dtype=torch.float64)
    y = x.sum(1)
    hyper = GPHyper((0.4, 0.5, 0.6), 1.0, 1e-3)
    gp = GaussianProcess(3, capacity=16)
    gp.set_data(x[:10], y[:10], hyper)
    assert isinstance(gp.factor, CholeskyFactor) and gp.factor.capacity == 16
    buffer = _storage(gp.factor)
    for i in range(10, 16):
        gp.append(x[i:i + 1], y[i:i + 1])
        assert _storage(gp.factor) == buffer and len(gp.factor) == gp.n == i + 1
    gp.append(x[16:70], y[16:70])
    assert gp.factor.capacity == 70 and gp.n == 70
    K = kernel_matrix(x, x, hyper.lengthscale_tensor(), hyper.outputscale) \
        + hyper.noise * torch.eye(70, dtype=torch.float64)
    assert _relative_error(gp.factor.L, torch.linalg.cholesky(K)) <= 1e-10
    gp.truncate(12)
    assert len(gp.factor) == 12
