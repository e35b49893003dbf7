"""The Gaussian-process surrogate: space encoding, exact posterior against GPyTorch, incremental
Cholesky updates, hyper-parameter fitting and log expected improvement."""

from __future__ import annotations

import math

import gpytorch
import numpy as np
import pytest
import torch
from scipy.special import ndtr

from medtune.errors import MedtuneError
from medtune.search import Categorical, Float, Int, Ordinal, SearchSpace
from medtune.search.gp import (
    GaussianProcess,
    GPError,
    GPHyper,
    SpaceEncoder,
    fit_hyperparameters,
    kernel_matrix,
    log_expected_improvement,
)

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def mixed_space() -> SearchSpace:
    return SearchSpace([
        Float("shift", -2.0, 6.0),
        Float("lr", 1e-4, 1e-1, log=True),
        Int("epochs", 0, 10),
        Int("batch", 1, 1024, log=True),
        Ordinal("width", [8, 16, 32, 64]),
        Categorical("loss", ["dice", "glf", "ce"]),
        Float("beta2", 0.5, 2.0, condition={"loss": ["glf"]}),
    ])


def assert_same_config(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for name, value in expected.items():
        if isinstance(value, float):
            assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
        else:
            assert got[name] == value and type(got[name]) is type(value), name


# -- SpaceEncoder ------------------------------------------------------------------------------
def test_encoder_columns_and_feature_names() -> None:
    encoder = SpaceEncoder(mixed_space())
    assert encoder.dim == 6 + 3
    assert encoder.feature_names == [
        "shift", "lr", "epochs", "batch", "width", "loss=dice", "loss=glf", "loss=ce", "beta2",
    ]
    assert encoder.slice_of("loss") == slice(5, 8)
    assert encoder.slice_of("beta2") == slice(8, 9)
    assert encoder.continuous.tolist() == [True] * 5 + [False] * 3 + [True]


def test_encoder_maps_each_kind_to_its_unit_position() -> None:
    encoder = SpaceEncoder(mixed_space())
    config = {"shift": 1.0, "lr": 1e-2, "epochs": 3, "batch": 32, "width": 32, "loss": "glf",
              "beta2": 1.25}
    x = encoder.encode([config])
    assert x.dtype == DTYPE and x.shape == (1, encoder.dim)
    expected = [3 / 8, 2 / 3, 0.3, 0.5, 2 / 3, 0.0, 1.0, 0.0, 0.5]
    assert x[0].tolist() == pytest.approx(expected, abs=1e-12)
    # an inactive conditional parameter is absent from the configuration and encoded as 0
    inactive = dict(config, loss="ce")
    del inactive["beta2"]
    row = encoder.encode([inactive])[0]
    assert row[5:].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_encoder_round_trips_random_configurations() -> None:
    space = mixed_space()
    encoder = SpaceEncoder(space)
    rng = np.random.default_rng(0)
    configs = [space.sample(rng) for _ in range(300)]
    x = encoder.encode(configs)
    assert bool(((x >= 0) & (x <= 1)).all())
    assert {c["loss"] for c in configs} == {"dice", "glf", "ce"}
    for config, point in zip(configs, x):
        decoded = encoder.decode(point)
        assert_same_config(decoded, config)
        assert space.validate(decoded) == decoded
        assert ("beta2" in decoded) == (decoded["loss"] == "glf")


def test_encoder_extremes_round_trip() -> None:
    space = mixed_space()
    encoder = SpaceEncoder(space)
    low = {"shift": -2.0, "lr": 1e-4, "epochs": 0, "batch": 1, "width": 8, "loss": "glf",
           "beta2": 0.5}
    high = {"shift": 6.0, "lr": 1e-1, "epochs": 10, "batch": 1024, "width": 64, "loss": "glf",
            "beta2": 2.0}
    x = encoder.encode([low, high])
    assert x[0, [0, 1, 2, 3, 4, 8]].tolist() == pytest.approx([0.0] * 6, abs=1e-12)
    assert x[1, [0, 1, 2, 3, 4, 8]].tolist() == pytest.approx([1.0] * 6, abs=1e-12)
    assert_same_config(encoder.decode(x[0]), low)
    assert_same_config(encoder.decode(x[1]), high)


def test_decode_rounds_to_the_nearest_valid_value() -> None:
    encoder = SpaceEncoder(mixed_space())
    #            shift lr   epochs batch width dice glf  ce   beta2
    point = [0.5, 0.5, 0.34, 0.55, 0.4, 0.2, 0.7, 0.3, 0.9]
    config = encoder.decode(torch.tensor(point, dtype=DTYPE))
    assert config["epochs"] == 3  # 3.4 -> 3
    assert config["batch"] == round(1024**0.55) == 45  # nearest integer on the log scale
    assert config["width"] == 16  # rank 0.4 * 3 = 1.2 -> index 1
    assert config["loss"] == "glf"  # the largest one-hot coordinate
    assert config["lr"] == pytest.approx(10 ** -2.5, rel=1e-12)
    assert config["beta2"] == pytest.approx(0.5 + 0.9 * 1.5)
    point[6] = 0.1  # now "ce" wins: beta2 is inactive, whatever its coordinate
    config = encoder.decode(np.array(point))
    assert config["loss"] == "ce" and "beta2" not in config
    # points outside the cube are clipped onto it
    config = encoder.decode(np.array([-3.0, 2.0, 1.7, -1.0, 9.0, 0.0, 0.0, 1.0, 0.0]))
    assert (config["shift"], config["lr"], config["epochs"], config["batch"], config["width"]) \
        == (-2.0, pytest.approx(1e-1), 10, 1, 64)
    with pytest.raises(GPError, match="expected a point of 9 coordinates, got 3"):
        encoder.decode(np.zeros(3))


def test_encoder_handles_single_valued_parameters() -> None:
    space = SearchSpace([Ordinal("only", [4]), Int("fixed", 3, 3), Float("x", 0.0, 1.0)])
    encoder = SpaceEncoder(space)
    x = encoder.encode([{"only": 4, "fixed": 3, "x": 0.25}])
    assert x[0].tolist() == [0.0, 0.0, 0.25]
    assert encoder.decode(x[0]) == {"only": 4, "fixed": 3, "x": 0.25}


# -- posterior against GPyTorch ----------------------------------------------------------------
def smooth(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(4 * x[:, 0]) + x[:, 1:].pow(2).sum(-1) - 0.5 * x[:, -1]


def dense_posterior(gp: GaussianProcess,
                    x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The standardised posterior of ``gp``'s observations computed from scratch with a dense
    solve (no factor reuse)."""
    hyper = gp.hyper
    ls = hyper.lengthscale_tensor()
    K = kernel_matrix(gp.x, gp.x, ls, hyper.outputscale, hyper.kernel)
    K = K + hyper.noise * torch.eye(gp.n, dtype=DTYPE)
    k_star = kernel_matrix(x_test, gp.x, ls, hyper.outputscale, hyper.kernel)
    y_std = (gp.y - gp.y_mean) / gp.y_scale
    mean = hyper.mean + k_star @ torch.linalg.solve(K, y_std - hyper.mean)
    variance = hyper.outputscale - (k_star * torch.linalg.solve(K, k_star.T).T).sum(-1)
    return mean, variance


def gpytorch_posterior(x: torch.Tensor, y_std: torch.Tensor, hyper: GPHyper,
                       x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent posterior mean and variance of GPyTorch's exact GP with the same hyper-parameters,
    for standardised outputs ``y_std``."""
    d = x.shape[1]

    class Model(gpytorch.models.ExactGP):
        def __init__(self, likelihood):
            super().__init__(x, y_std, likelihood)
            self.mean_module = gpytorch.means.ConstantMean()
            base = (gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=d)
                    if hyper.kernel == "matern52" else gpytorch.kernels.RBFKernel(ard_num_dims=d))
            self.covar_module = gpytorch.kernels.ScaleKernel(base)

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(z),
                                                             self.covar_module(z))

    likelihood = gpytorch.likelihoods.GaussianLikelihood(
        noise_constraint=gpytorch.constraints.GreaterThan(1e-12)).to(DTYPE)
    model = Model(likelihood).to(DTYPE)
    likelihood.noise = hyper.noise
    model.mean_module.constant.data.fill_(hyper.mean)
    model.covar_module.outputscale = hyper.outputscale
    model.covar_module.base_kernel.lengthscale = torch.tensor(hyper.lengthscales, dtype=DTYPE)
    model.eval()
    likelihood.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False), \
            gpytorch.settings.max_cholesky_size(10**9):
        posterior = model(x_test)
        return posterior.mean, posterior.variance


@pytest.mark.parametrize(("kernel", "n", "d"), [("matern52", 50, 3), ("matern52", 200, 6),
                                                 ("rbf", 120, 4)])
def test_posterior_matches_gpytorch(kernel: str, n: int, d: int) -> None:
    generator = torch.Generator().manual_seed(n + d)
    x = torch.rand(n, d, generator=generator, dtype=DTYPE)
    y = 3.0 + 2.0 * smooth(x) + 0.05 * torch.randn(n, generator=generator, dtype=DTYPE)
    x_test = torch.rand(64, d, generator=generator, dtype=DTYPE)
    lengthscales = tuple(0.3 + 0.2 * i for i in range(d))
    hyper = GPHyper(lengthscales, outputscale=1.7, noise=1e-3, mean=0.2, kernel=kernel)

    gp = GaussianProcess(d, kernel)
    gp.set_data(x, y, hyper)
    assert gp.y_mean == pytest.approx(float(y.mean()))
    assert gp.y_scale == pytest.approx(float(y.std()))
    assert torch.allclose(gp.y, y, rtol=0, atol=1e-12)
    mean, variance = gp.predict(x_test)

    y_std = (y - y.mean()) / y.std()
    ref_mean, ref_variance = gpytorch_posterior(x, y_std, hyper, x_test)
    # on the scale the hyper-parameters live on (standardised outputs): the means agree to
    # 1e-8; the variances to GPyTorch's own rounding, 2e-8 (see below)
    standardised = gp.acquisition(x_test, "none")
    assert torch.allclose(standardised.mean, ref_mean, rtol=0, atol=1e-8)
    assert torch.allclose(standardised.variance, ref_variance, rtol=0, atol=2e-8)
    ref_mean = ref_mean * y.std() + y.mean()
    ref_variance = ref_variance * y.std() ** 2
    assert torch.allclose(mean, ref_mean, rtol=0, atol=1e-8)
    # GPyTorch's own variance is only good to ~2e-8 here (its distances expand |a - b|² as
    # |a|² - 2a·b + |b|², which cancels for nearby points): against a dense solve with exact
    # distances, the surrogate is good to 1e-12
    assert torch.allclose(variance, ref_variance, rtol=0, atol=1e-7)
    dense_mean, dense_variance = dense_posterior(gp, x_test)
    assert torch.allclose(mean, dense_mean * gp.y_scale + gp.y_mean, rtol=0, atol=1e-11)
    assert torch.allclose(variance, dense_variance * gp.y_scale**2, rtol=0, atol=1e-12)
    # with noise=True the variance of a new observation adds the noise (on the data's scale)
    _, noisy = gp.predict(x_test, noise=True)
    assert torch.allclose(noisy, variance + hyper.noise * gp.y_scale**2, rtol=0, atol=1e-12)
    # the standardised posterior of acquisition() is the same thing before un-standardising
    posterior = gp.acquisition(x_test, "none")
    assert torch.allclose(posterior.mean * gp.y_scale + gp.y_mean, mean, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kernel", ["matern52", "rbf"])
def test_kernel_matrix_matches_gpytorch(kernel: str) -> None:
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(30, 5, generator=generator, dtype=DTYPE)
    b = torch.rand(20, 5, generator=generator, dtype=DTYPE)
    lengthscales = torch.tensor([0.1, 0.3, 0.5, 1.0, 3.0], dtype=DTYPE)
    base = (gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=5) if kernel == "matern52"
            else gpytorch.kernels.RBFKernel(ard_num_dims=5)).to(DTYPE)
    base.lengthscale = lengthscales
    with torch.no_grad():
        expected = 2.5 * base(a, b).to_dense()
    got = kernel_matrix(a, b, lengthscales, 2.5, kernel)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    # zero distance: the diagonal is the output scale, with a finite gradient
    z = a[:3].clone().requires_grad_(True)
    k = kernel_matrix(z, z, lengthscales, 2.5, kernel)
    assert torch.allclose(k.diagonal(), torch.full((3,), 2.5, dtype=DTYPE))
    (grad,) = torch.autograd.grad(k.sum(), z)
    assert bool(torch.isfinite(grad).all())


def test_differentiable_posterior_matches_the_fused_op() -> None:
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(40, 3, generator=generator, dtype=DTYPE)
    gp = GaussianProcess(3)
    gp.set_data(x, smooth(x), GPHyper((0.4, 0.5, 0.6), 1.2, 1e-3, 0.1))
    x_test = torch.rand(16, 3, generator=generator, dtype=DTYPE).requires_grad_(True)
    mean, variance = gp.differentiable_posterior(x_test)
    fused = gp.acquisition(x_test.detach(), "none")
    assert torch.allclose(mean.detach(), fused.mean, rtol=0, atol=1e-10)
    assert torch.allclose(variance.detach(), fused.variance, rtol=0, atol=1e-10)
    (grad,) = torch.autograd.grad(mean.sum() + variance.sum(), x_test)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


# -- incremental updates ----------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 7])
def test_append_equals_a_fresh_factorisation(k: int) -> None:
    n, d = 60, 4  # n + k crosses the initial capacity of 64 rows when k = 7
    generator = torch.Generator().manual_seed(k)
    x = torch.rand(n + k, d, generator=generator, dtype=DTYPE)
    y = smooth(x) + 0.01 * torch.randn(n + k, generator=generator, dtype=DTYPE)
    x_test = torch.rand(50, d, generator=generator, dtype=DTYPE)
    hyper = GPHyper((0.3, 0.4, 0.5, 0.6), 1.3, 1e-3, -0.1)

    gp = GaussianProcess(d)
    gp.set_data(x[:n], y[:n], hyper)
    before = gp.acquisition(x_test, "none")
    y_mean, y_scale = gp.y_mean, gp.y_scale
    gp.append(x[n:], y[n:])
    assert gp.n == n + k and gp.jitter_added == 0.0
    assert (gp.y_mean, gp.y_scale) == (y_mean, y_scale)  # fixed at set_data time
    assert torch.equal(gp.x, x) and torch.allclose(gp.y, y, rtol=0, atol=1e-12)

    # the extended factor equals the Cholesky factor of the full matrix, and so does its inverse
    K = kernel_matrix(x, x, hyper.lengthscale_tensor(), hyper.outputscale) \
        + hyper.noise * torch.eye(n + k, dtype=DTYPE)
    L = torch.linalg.cholesky(K)
    assert torch.allclose(gp.factor.L, L, rtol=0, atol=1e-10)
    assert torch.allclose(gp.factor.Linv @ L, torch.eye(n + k, dtype=DTYPE), rtol=0, atol=1e-8)
    fresh = GaussianProcess(d)
    fresh.set_data(x, y, hyper)  # other standardisation, same factor
    assert torch.allclose(gp.factor.L, fresh.factor.L, rtol=0, atol=1e-10)

    after = gp.acquisition(x_test, "none")
    mean, variance = dense_posterior(gp, x_test)
    scale = float(mean.abs().max())
    assert torch.allclose(after.mean, mean, rtol=0, atol=1e-10 * scale)
    assert torch.allclose(after.variance, variance, rtol=0, atol=1e-10)
    assert not torch.allclose(after.mean, before.mean, atol=1e-6)  # the new points count

    # dropping the appended points gives back exactly the earlier predictions
    gp.truncate(n)
    again = gp.acquisition(x_test, "none")
    assert torch.equal(again.mean, before.mean) and torch.equal(again.variance, before.variance)
    # and appending after a truncation overwrites the dropped rows
    gp.append(x[n:], y[n:])
    assert torch.allclose(gp.acquisition(x_test, "none").mean, after.mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("outputscale", [1.0, 1e9])
def test_appending_a_duplicate_point_stays_finite(outputscale: float) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(20, 2, generator=generator, dtype=DTYPE)
    y = smooth(x)
    gp = GaussianProcess(2)
    gp.set_data(x, y, GPHyper((0.5, 0.5), outputscale, 1e-6, 0.0))
    assert gp.jitter_added == 0.0
    gp.append(x[:1], y[:1])  # an observed point again
    gp.append(x[5:6].repeat(2, 1), y[5:6].repeat(2))  # twice in one block
    assert gp.n == 23
    # noise / outputscale = 1e-15 is below double precision: the update needs jitter
    assert (gp.jitter_added > 0) == (outputscale > 1)
    posterior = gp.acquisition(torch.rand(10, 2, generator=generator, dtype=DTYPE), "ei")
    for values in posterior:
        assert bool(torch.isfinite(values).all())
    assert bool(torch.isfinite(gp.alpha()).all())
    mean, _ = gp.predict(x[5:6])
    assert float(mean) == pytest.approx(float(y[5]), abs=1e-3)


def test_repeated_observations_average_out() -> None:
    generator = torch.Generator().manual_seed(4)
    x = torch.cat([torch.full((4, 2), 0.5, dtype=DTYPE), torch.rand(6, 2, generator=generator,
                                                                      dtype=DTYPE)])
    y = torch.tensor([1.0, 2.0, 3.0, 4.0] + [0.0] * 6, dtype=DTYPE)
    gp = GaussianProcess(2)
    gp.set_data(x, y, GPHyper((0.5, 0.5), outputscale=1.0, noise=1e-6))  # the noise floor
    mean, variance = gp.predict(x[:1])
    assert float(mean) == pytest.approx(2.5, abs=1e-3)
    assert 0 < float(variance) < 1e-5


# -- hyper-parameter fitting ------------------------------------------------------------------
def standardise(y: torch.Tensor) -> torch.Tensor:
    return (y - y.mean()) / y.std()


def test_fit_finds_the_relevant_dimension() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(30, 4, generator=generator, dtype=DTYPE)
    y = standardise(torch.sin(6 * x[:, 0]) + 0.5 * x[:, 0])
    hyper = fit_hyperparameters(x, y, restarts=0, seed=0)
    values = (*hyper.lengthscales, hyper.outputscale, hyper.noise)
    assert all(math.isfinite(v) and v > 0 for v in values) and math.isfinite(hyper.mean)
    assert len(hyper.lengthscales) == 4 and hyper.kernel == "matern52"
    relevance = 1.0 / np.array(hyper.lengthscales)
    assert int(np.argmax(relevance)) == 0
    assert relevance[0] > 5 * relevance[1:].max()
    assert hyper.noise < 0.05  # noiseless data


def test_fitted_gp_predicts_held_out_points() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(240, 2, generator=generator, dtype=DTYPE)
    y = 5 + 3 * (torch.sin(5 * x[:, 0]) * torch.cos(3 * x[:, 1]) + x[:, 1])
    gp = GaussianProcess(2, "rbf")
    hyper = gp.fit(x[:40], y[:40], restarts=1, seed=0)
    assert gp.hyper == hyper and gp.n == 40 and hyper.kernel == "rbf"
    assert gp.y_mean == pytest.approx(float(y[:40].mean()))
    mean, variance = gp.predict(x[40:])
    correlation = np.corrcoef(mean.numpy(), y[40:].numpy())[0, 1]
    assert correlation > 0.9
    assert bool((variance > 0).all())
    # a warm-started refit on more data, fitted on a subsample, still predicts every point
    gp.fit(x[:120], y[:120], restarts=0, seed=1, subsample=60)
    assert gp.n == 120
    mean, _ = gp.predict(x[120:])
    assert np.corrcoef(mean.numpy(), y[120:].numpy())[0, 1] > 0.95


def test_fit_is_seeded() -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(20, 3, generator=generator, dtype=DTYPE)
    y = standardise(smooth(x))
    assert fit_hyperparameters(x, y, seed=4, restarts=1, max_iter=10) \
        == fit_hyperparameters(x, y, seed=4, restarts=1, max_iter=10)


# -- log expected improvement -----------------------------------------------------------------
def closed_form_ei(mean: np.ndarray, sigma: np.ndarray, best: float) -> np.ndarray:
    z = (best - mean) / sigma
    return sigma * (np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) + z * ndtr(z))


def test_log_ei_equals_the_closed_form() -> None:
    mean = torch.linspace(-3.0, 3.99, 200, dtype=DTYPE)  # z from 5 down to -4.99
    variance = torch.full_like(mean, 0.49)
    log_ei = log_expected_improvement(mean, variance, best=0.5)
    ei = closed_form_ei(mean.numpy(), 0.7, 0.5)
    assert ei.min() > 1e-9  # z >= -5: EI is far from underflow
    assert np.allclose(log_ei.numpy(), np.log(ei), rtol=0, atol=1e-10)
    # xi shifts the incumbent
    mean = mean[mean < 3.7]
    shifted = log_expected_improvement(mean, variance[: len(mean)], best=0.5, xi=0.2)
    assert np.allclose(shifted.numpy(), np.log(closed_form_ei(mean.numpy(), 0.7, 0.3)),
                       rtol=0, atol=1e-10)


def test_log_ei_far_from_the_incumbent() -> None:
    z = torch.linspace(-40.0, -5.0, 400, dtype=DTYPE)
    mean = (-z).clone().requires_grad_(True)  # best 0, sigma 1: z = -mean
    log_ei = log_expected_improvement(mean, torch.ones_like(z), best=0.0)
    assert bool(torch.isfinite(log_ei).all())
    (grad,) = torch.autograd.grad(log_ei.sum(), mean)
    assert bool(torch.isfinite(grad).all()) and bool((grad < 0).all())
    # equal to log EI computed with 50 significant digits (no cancellation, no switch-over jump)
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    for i in range(0, 400, 37):
        zi = mpmath.mpf(float(z[i]))
        exact = float(mpmath.log(mpmath.npdf(zi) + zi * mpmath.ncdf(zi)))
        assert abs(float(log_ei[i].detach()) - exact) <= 1e-12 * abs(exact)
    # gradients with respect to the variance are finite too
    variance = torch.full((5,), 1e-4, dtype=DTYPE, requires_grad=True)
    value = log_expected_improvement(torch.full((5,), 0.4, dtype=DTYPE), variance, best=0.0)
    (grad,) = torch.autograd.grad(value.sum(), variance)
    assert bool(torch.isfinite(value).all()) and bool(torch.isfinite(grad).all())


def test_log_ei_is_monotone_in_the_mean() -> None:
    mean = torch.linspace(-6.0, 40.0, 5000, dtype=DTYPE)  # z from 6 down to -40, through -5
    log_ei = log_expected_improvement(mean, torch.ones_like(mean), best=0.0)
    assert bool((log_ei[1:] < log_ei[:-1]).all())
    # and increasing in the variance for a mean above the incumbent
    variance = torch.linspace(0.01, 4.0, 100, dtype=DTYPE)
    log_ei = log_expected_improvement(torch.full_like(variance, 1.0), variance, best=0.0)
    assert bool((log_ei[1:] > log_ei[:-1]).all())


# -- errors -----------------------------------------------------------------------------------
def test_gp_error_is_a_medtune_error() -> None:
    assert issubclass(GPError, MedtuneError) and issubclass(GPError, ValueError)


def test_invalid_inputs_raise_gp_errors() -> None:
    hyper = GPHyper((0.5, 0.5))
    x = torch.rand(5, 2, dtype=DTYPE)
    y = torch.rand(5, dtype=DTYPE)
    with pytest.raises(GPError, match="kernel must be one of matern52, rbf, got 'linear'"):
        GaussianProcess(2, kernel="linear")
    with pytest.raises(GPError, match="kernel must be one of"):
        GPHyper((0.5,), kernel="periodic")
    with pytest.raises(GPError, match="kernel must be one of"):
        fit_hyperparameters(x, y, kernel="matern32")
    with pytest.raises(GPError, match="dim must be >= 1"):
        GaussianProcess(0)
    for bad in ((0.5, 0.0), (0.5, -1.0), (0.5, math.nan)):
        with pytest.raises(GPError, match="finite and positive"):
            GPHyper(bad)
    with pytest.raises(GPError, match="finite and positive"):
        GPHyper((0.5, 0.5), noise=0.0)
    with pytest.raises(GPError, match="finite and positive"):
        GPHyper((0.5, 0.5), mean=math.inf)

    gp = GaussianProcess(2)
    with pytest.raises(GPError, match="no observations yet"):
        gp.predict(x)
    with pytest.raises(GPError, match="call fit or set_data first"):
        gp.append(x, y)
    with pytest.raises(GPError, match="no hyper-parameters yet"):
        gp.relevance()
    with pytest.raises(GPError, match=r"inputs must be \[n, 2\], got shape \(5, 3\)"):
        gp.set_data(torch.rand(5, 3, dtype=DTYPE), y, hyper)
    with pytest.raises(GPError, match=r"inputs must be \[n, 2\], got shape \(10,\)"):
        gp.set_data(torch.rand(10, dtype=DTYPE), y, hyper)
    with pytest.raises(GPError, match="got 5 inputs but 4 outputs"):
        gp.set_data(x, y[:4], hyper)
    with pytest.raises(GPError, match="outputs contain NaN"):
        gp.set_data(x, torch.tensor([1.0, math.nan, 2.0, 3.0, 4.0], dtype=DTYPE), hyper)
    with pytest.raises(GPError, match="outputs contain NaN or inf"):
        gp.fit(x, torch.tensor([1.0, math.inf, 2.0, 3.0, 4.0], dtype=DTYPE))
    with pytest.raises(GPError, match="inputs contain NaN"):
        gp.set_data(x.clone().fill_(math.nan), y, hyper)
    with pytest.raises(GPError, match="3 length-scales for 2 input dimensions"):
        gp.set_data(x, y, GPHyper((0.5, 0.5, 0.5)))
    with pytest.raises(GPError, match="at least one observation"):
        gp.fit(x[:0], y[:0])

    gp.set_data(x, y, hyper)
    with pytest.raises(GPError, match="outputs contain NaN"):
        gp.append(x[:1], torch.tensor([math.nan], dtype=DTYPE))
    assert gp.n == 5  # a rejected append changes nothing
    with pytest.raises(GPError, match=r"inputs must be \[n, 2\]"):
        gp.predict(torch.rand(3, 4, dtype=DTYPE))
    with pytest.raises(GPError, match=r"truncate: n must be in \[0, 5\], got 6"):
        gp.truncate(6)
    with pytest.raises(GPError, match=r"truncate: n must be in \[0, 5\], got -1"):
        gp.truncate(-1)
