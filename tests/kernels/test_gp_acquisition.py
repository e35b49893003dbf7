"""gp_acquisition on every available backend against the PyTorch reference and GPyTorch."""

from __future__ import annotations

import math

import pytest
import torch

from medtune.errors import KernelError
from medtune.kernels import GPAcquisition, gp_acquisition, gp_acquisition_reference, use_backend
from medtune.kernels.gp_acquisition import MIN_VARIANCE
from tests.conftest import backend_or_skip

BACKENDS = ["torch", "cpp", "triton"]
KERNELS = ["matern52", "rbf"]
ACQUISITIONS = ["ei", "pi", "ucb", "none"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def _gram(x1, x2, lengthscales, outputscale, kernel):
    r2 = torch.cdist(x1 / lengthscales, x2 / lengthscales).square()
    if kernel == "rbf":
        return outputscale * torch.exp(-0.5 * r2)
    r = r2.sqrt()
    return outputscale * (1 + math.sqrt(5) * r + 5 / 3 * r2) * torch.exp(-math.sqrt(5) * r)


def _problem(n, d, m, kernel="matern52", noise=1e-3, dtype=torch.float64, seed=0):
    """A fitted-looking GP: training data, its factorisation and candidates."""
    gen = torch.Generator().manual_seed(seed)
    train_x = torch.rand((n, d), generator=gen, dtype=torch.float64)
    y = torch.sin(6 * train_x).sum(-1) + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    lengthscales = 0.2 + 0.5 * torch.rand(d, generator=gen, dtype=torch.float64)
    outputscale, mean_constant = 1.7, 0.3
    K = _gram(train_x, train_x, lengthscales, outputscale, kernel) + noise * torch.eye(n, dtype=torch.float64)
    L = torch.linalg.cholesky(K)
    Linv = torch.linalg.solve_triangular(L, torch.eye(n, dtype=torch.float64), upper=False)
    alpha = torch.cholesky_solve((y - mean_constant)[:, None], L).squeeze(-1)
    candidates = torch.rand((m, d), generator=gen, dtype=torch.float64)
    k = min(3, m, n)
    candidates[:k] = train_x[:k]  # at training points the variance nearly cancels
    tensors = [t.to(dtype) for t in (candidates, train_x, Linv, alpha, lengthscales)]
    return {"tensors": tensors, "y": y, "noise": noise, "outputscale": outputscale,
            "mean_constant": mean_constant, "best_f": float(y.min())}


def _run(problem, kernel, acquisition, backend=None, **kwargs) -> GPAcquisition:
    args = dict(kernel=kernel, mean_constant=problem["mean_constant"], acquisition=acquisition,
                best_f=problem["best_f"], **kwargs)
    if backend is None:
        return gp_acquisition_reference(*problem["tensors"], problem["outputscale"], **args)
    with use_backend(backend):
        return gp_acquisition(*problem["tensors"], problem["outputscale"], **args)


def _assert_close(got: GPAcquisition, expected: GPAcquisition, tol: float) -> None:
    for name, g, e in zip(GPAcquisition._fields, got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, name
        scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
        torch.testing.assert_close(g, e, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("acquisition", ACQUISITIONS)
@pytest.mark.parametrize("d", [1, 6])
def test_matches_reference(backend, kernel, acquisition, d):
    backend_or_skip("gp_acquisition", backend)
    problem = _problem(n=37, d=d, m=53, kernel=kernel)  # m and n not multiples of any block
    expected = _run(problem, kernel, acquisition)
    _assert_close(_run(problem, kernel, acquisition, backend), expected, TOLERANCE[torch.float64])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("acquisition", ["ei", "pi", "ucb"])
def test_maximize_and_margins(backend, acquisition):
    backend_or_skip("gp_acquisition", backend)
    problem = _problem(n=20, d=2, m=19)
    problem["best_f"] = 0.5
    options = {"maximize": True, "xi": 0.05, "beta": 3.0}
    expected = _run(problem, "matern52", acquisition, **options)
    _assert_close(_run(problem, "matern52", acquisition, backend, **options), expected, 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32(backend):
    backend_or_skip("gp_acquisition", backend)
    problem = _problem(n=25, d=3, m=40, noise=1e-2, dtype=torch.float32)
    got = _run(problem, "matern52", "ei", backend)
    assert all(t.dtype == torch.float32 for t in got)
    _assert_close(got, _run(problem, "matern52", "ei"), TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_sizes(backend):
    backend_or_skip("gp_acquisition", backend)
    problem = _problem(n=5, d=2, m=0)
    got = _run(problem, "rbf", "ei", backend)
    assert all(t.shape == (0,) for t in got)
    # no observations: the prior
    problem = _problem(n=1, d=2, m=7)
    candidates = problem["tensors"][0]
    empty = [torch.zeros((0, 2), dtype=torch.float64), torch.zeros((0, 0), dtype=torch.float64),
             torch.zeros(0, dtype=torch.float64)]
    problem["tensors"] = [candidates, *empty, problem["tensors"][4]]
    got = _run(problem, "matern52", "ucb", backend)
    torch.testing.assert_close(got.mean, torch.full((7,), problem["mean_constant"], dtype=torch.float64))
    torch.testing.assert_close(got.variance, torch.full((7,), problem["outputscale"], dtype=torch.float64))


def test_acquisition_formulas():
    """EI, PI and UCB from the posterior, minimising by default."""
    problem = _problem(n=15, d=2, m=11)
    best = problem["best_f"]
    post = _run(problem, "matern52", "none")
    assert bool((post.score == 0).all())
    sigma = post.variance.sqrt()
    normal = torch.distributions.Normal(0.0, 1.0)
    z = (best - post.mean - 0.01) / sigma
    ei = (best - post.mean - 0.01) * normal.cdf(z) + sigma * normal.log_prob(z).exp()
    torch.testing.assert_close(_run(problem, "matern52", "ei", xi=0.01).score, ei)
    torch.testing.assert_close(_run(problem, "matern52", "pi", xi=0.01).score, normal.cdf(z))
    ucb = -post.mean + math.sqrt(2.5) * sigma
    torch.testing.assert_close(_run(problem, "matern52", "ucb", beta=2.5).score, ucb)
    assert bool((post.variance >= MIN_VARIANCE[torch.float64]).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("d", [1, 6])
def test_matches_gpytorch(backend, kernel, d):
    """Same hyper-parameters: the posterior mean and latent variance of GPyTorch's ExactGP."""
    gpytorch = pytest.importorskip("gpytorch", reason="gpytorch is not installed (pip install gpytorch)")
    backend_or_skip("gp_acquisition", backend)
    problem = _problem(n=40, d=d, m=31, kernel=kernel, noise=1e-3)
    candidates, train_x, _, _, lengthscales = problem["tensors"]

    class Model(gpytorch.models.ExactGP):
        def __init__(self):
            likelihood = gpytorch.likelihoods.GaussianLikelihood()
            super().__init__(train_x, problem["y"], likelihood)
            self.mean_module = gpytorch.means.ConstantMean()
            base = (gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=d) if kernel == "matern52"
                    else gpytorch.kernels.RBFKernel(ard_num_dims=d))
            self.covar_module = gpytorch.kernels.ScaleKernel(base)

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    model = Model().double()
    # float64 tensors: GPyTorch's setters would pass a Python float through float32
    model.likelihood.noise = torch.tensor(problem["noise"], dtype=torch.float64)
    model.mean_module.constant = torch.tensor(problem["mean_constant"], dtype=torch.float64)
    model.covar_module.outputscale = torch.tensor(problem["outputscale"], dtype=torch.float64)
    model.covar_module.base_kernel.lengthscale = lengthscales
    model.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False), \
            gpytorch.settings.skip_posterior_variances(False):
        latent = model(candidates)
        mean, variance = latent.mean, latent.variance
    ours = _run(problem, kernel, "ei", backend)
    torch.testing.assert_close(ours.mean, mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(ours.variance, variance, rtol=0, atol=1e-8)


def _valid():
    problem = _problem(n=6, d=2, m=4)
    candidates, train_x, Linv, alpha, lengthscales = problem["tensors"]
    return dict(candidates=candidates, train_x=train_x, Linv=Linv, alpha=alpha,
                lengthscales=lengthscales, outputscale=1.0, best_f=0.0)


@pytest.mark.parametrize("change,message", [
    ({"candidates": torch.zeros(4, 3, dtype=torch.float64)}, "train_x must be"),
    ({"candidates": torch.zeros(4, dtype=torch.float64)}, "candidates must be"),
    ({"candidates": torch.zeros(4, 2, dtype=torch.float16)}, "float32 or float64"),
    ({"train_x": torch.zeros(6, 2, dtype=torch.float32)}, "one dtype"),
    ({"Linv": torch.zeros(5, 5, dtype=torch.float64)}, "Linv must be"),
    ({"alpha": torch.zeros(5, dtype=torch.float64)}, "alpha must be"),
    ({"lengthscales": torch.ones(3, dtype=torch.float64)}, "lengthscales must be"),
    ({"lengthscales": torch.tensor([1.0, 0.0], dtype=torch.float64)}, "positive"),
    ({"outputscale": -1.0}, "outputscale must be positive"),
    ({"best_f": None}, "needs best_f"),
    ({"kernel": "matern32"}, "kernel must be"),
    ({"acquisition": "kg"}, "acquisition must be"),
    ({"beta": -1.0}, "beta must be"),
    ({"candidates": "x"}, "must be a torch.Tensor"),
])
def test_bad_inputs(change, message):
    args = {**_valid(), **change}
    with pytest.raises(KernelError, match=message):
        gp_acquisition(**args)
