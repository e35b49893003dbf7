"""The Gaussian-process surrogate of Bayesian optimisation (Bertrand2019, sec. 2.2, 2.3, app. A).

Three pieces, used by the ``bayes`` and ``bohb`` searchers and by study reports:

- :class:`SpaceEncoder` maps configurations to the unit cube and back: floats and integers by
  their (log-)range, ordinal values by their rank, categories one-hot; a parameter left
  inactive by a condition is encoded as 0.
- :func:`fit_hyperparameters` fits the kernel hyper-parameters (ARD length-scales, output
  scale, observation noise, constant mean) by maximising the marginal likelihood with
  GPyTorch (L-BFGS, several restarts, weak priors that keep small data sets sane).
- :class:`GaussianProcess` holds observations, their Cholesky factor ``L`` of
  ``K + noise·I`` and its inverse in a :class:`~medtune.kernels.CholeskyFactor`, and
  predicts. Between refits, new observations are appended to the factor in place (one
  :func:`~medtune.kernels.chol_append`, O(n²) per point, in buffers that double when full)
  instead of a new O(n³) factorisation; appended points can be dropped again (fantasies of
  pending suggestions), which only moves a counter. Predictions and acquisition scores come
  from the fused :func:`~medtune.kernels.gp_acquisition` op.

Outputs are standardised at each fit (mean 0, standard deviation 1) and the hyper-parameters
live on that scale; :meth:`GaussianProcess.predict` answers on the scale of the data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medtune.errors import MedtuneError
from medtune.kernels.chol_append import CholeskyFactor
from medtune.kernels.gp_acquisition import GPAcquisition, gp_acquisition
from medtune.search.space import Categorical, Float, Int, Ordinal, SearchSpace

KERNELS = ("matern52", "rbf")
DTYPE = torch.float64
#: smallest observation noise (standardised units): keeps K + noise·I well conditioned
NOISE_FLOOR = 1e-6


class GPError(MedtuneError, ValueError):
    """Invalid input to the Gaussian-process surrogate."""


# --- encoding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One coordinate of the unit cube: the parameter it encodes, and for a category its
    choice index (None otherwise)."""

    parameter: str
    choice: int | None = None


class SpaceEncoder:
    """Configurations ↔ points of the unit cube [0, 1]^dim; see the module docstring."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.columns: list[Column] = []
        self._slices: dict[str, slice] = {}
        for parameter in space.parameters:
            start = len(self.columns)
            if isinstance(parameter, Categorical):
                self.columns += [Column(parameter.name, i) for i in range(parameter.count())]
            else:
                self.columns.append(Column(parameter.name))
            self._slices[parameter.name] = slice(start, len(self.columns))
        self.dim = len(self.columns)
        #: True for the coordinates gradient refinement may move (not one-hot categories)
        self.continuous = np.array([c.choice is None for c in self.columns])

    @property
    def feature_names(self) -> list[str]:
        """A readable name per coordinate: ``lr``, or ``loss=dice`` for a one-hot column."""
        names = []
        for column in self.columns:
            if column.choice is None:
                names.append(column.parameter)
            else:
                parameter = self.space[column.parameter]
                choice = parameter.domain()[column.choice]  # type: ignore[attr-defined]
                names.append(f"{column.parameter}={choice}")
        return names

    def slice_of(self, name: str) -> slice:
        """The coordinates of parameter ``name``."""
        return self._slices[name]

    def encode(self, configs: Sequence[Mapping[str, Any]]) -> Tensor:
        """Configurations → [n, dim] float64 points of the unit cube."""
        out = np.zeros((len(configs), self.dim))
        for row, config in enumerate(configs):
            for parameter in self.space.parameters:
                if parameter.name not in config:
                    continue
                value = config[parameter.name]
                where = self._slices[parameter.name]
                if isinstance(parameter, Categorical):
                    out[row, where.start + parameter.index(value)] = 1.0
                elif isinstance(parameter, Float):
                    out[row, where.start] = parameter.to_unit(float(value))
                elif isinstance(parameter, Int):
                    out[row, where.start] = parameter._to_unit(float(value))
                else:
                    count = parameter.count()  # type: ignore[attr-defined]
                    index = parameter.index(value)  # type: ignore[attr-defined]
                    out[row, where.start] = index / (count - 1) if count > 1 else 0.0
        return torch.from_numpy(out)

    def decode(self, point: Tensor | np.ndarray) -> dict[str, Any]:
        """The configuration nearest to a point of the cube (values rounded to the space,
        the largest one-hot coordinate chosen, inactive parameters left out)."""
        x = np.clip(np.asarray(point, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if x.shape[0] != self.dim:
            raise GPError(f"decode: expected a point of {self.dim} coordinates, got {x.shape[0]}")
        config: dict[str, Any] = {}
        for parameter in self.space.parameters:
            if not self.space.is_active(parameter.name, config):
                continue
            where = self._slices[parameter.name]
            if isinstance(parameter, Categorical):
                config[parameter.name] = parameter.choices[int(np.argmax(x[where]))]
            elif isinstance(parameter, Float):
                config[parameter.name] = parameter.from_unit(float(x[where.start]))
            elif isinstance(parameter, Int):
                config[parameter.name] = parameter._from_unit(float(x[where.start]))
            else:
                assert isinstance(parameter, Ordinal)
                index = int(round(float(x[where.start]) * (parameter.count() - 1)))
                config[parameter.name] = parameter.values[index]
        return config


# --- kernels --------------------------------------------------------------------------------


def kernel_matrix(x1: Tensor, x2: Tensor, lengthscales: Tensor, outputscale: float,
                  kernel: str = "matern52") -> Tensor:
    """``outputscale · k(x1, x2)`` [n1, n2] for the ARD Matérn 5/2 or squared-exponential
    kernel; differentiable everywhere (also at zero distance)."""
    diff = x1[:, None, :] / lengthscales - x2[None, :, :] / lengthscales
    r2 = (diff * diff).sum(-1)
    if kernel == "rbf":
        return outputscale * torch.exp(-0.5 * r2)
    r = torch.sqrt(r2.clamp_min(1e-30))
    s5r = math.sqrt(5.0) * r
    return outputscale * (1.0 + s5r + (5.0 / 3.0) * r2) * torch.exp(-s5r)


# --- hyper-parameters -----------------------------------------------------------------------


@dataclass(frozen=True)
class GPHyper:
    """Kernel hyper-parameters on the standardised scale of the outputs."""

    lengthscales: tuple[float, ...]
    outputscale: float = 1.0
    noise: float = 1e-4
    mean: float = 0.0
    kernel: str = "matern52"

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise GPError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        values = (*self.lengthscales, self.outputscale, self.noise)
        if not all(math.isfinite(v) and v > 0 for v in values) or not math.isfinite(self.mean):
            raise GPError(f"hyper-parameters must be finite and positive, got {self}")

    def lengthscale_tensor(self) -> Tensor:
        return torch.tensor(self.lengthscales, dtype=DTYPE)


#: Gamma(3, 6) prior on every length-scale in the unit cube (mean 0.5, mode 1/3): keeps a
#: dimension from being declared irrelevant after a few points near one local optimum. (The
#: dimension-scaled log-normal of Hvarfner et al. 2024 favours long length-scales, and on
#: Hartmann-6 it froze two dimensions and stalled at the second-best minimum.)
LENGTHSCALE_PRIOR = (3.0, 6.0)
#: where L-BFGS starts without a warm start: the prior's mode
LENGTHSCALE_START = (LENGTHSCALE_PRIOR[0] - 1.0) / LENGTHSCALE_PRIOR[1]
LENGTHSCALE_MAX = 2.0


def fit_hyperparameters(
    x: Tensor,
    y: Tensor,
    kernel: str = "matern52",
    restarts: int = 2,
    seed: int = 0,
    start: GPHyper | None = None,
    max_iter: int = 50,
) -> GPHyper:
    """Kernel hyper-parameters maximising the marginal likelihood (with weak priors) of
    standardised outputs ``y`` [n] at inputs ``x`` [n, d] in the unit cube, fitted with
    GPyTorch: L-BFGS from ``start`` (when given, else from the prior's mode) and from
    ``restarts`` random length-scales; the best optimum wins. A restart that fails
    numerically is skipped; if all fail, ``start`` (or the prior's centre) is returned."""
    with warnings.catch_warnings():  # GPyTorch's import uses the deprecated torch.jit.script
        warnings.simplefilter("ignore", DeprecationWarning)
        import gpytorch

    if kernel not in KERNELS:
        raise GPError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    x = x.to(DTYPE)
    y = y.to(DTYPE)
    n, d = x.shape
    generator = np.random.default_rng(seed)
    starts: list[np.ndarray] = []
    if start is not None:
        starts.append(np.clip(start.lengthscales, 2e-3, 0.999 * LENGTHSCALE_MAX))
    else:
        starts.append(np.full(d, LENGTHSCALE_START))
    for _ in range(restarts):
        starts.append(np.exp(generator.uniform(math.log(0.05), math.log(0.9 * LENGTHSCALE_MAX), d)))

    class Model(gpytorch.models.ExactGP):
        def __init__(self, likelihood: Any) -> None:
            super().__init__(x, y, likelihood)
            self.mean_module = gpytorch.means.ConstantMean()
            base = (
                gpytorch.kernels.MaternKernel(
                    nu=2.5, ard_num_dims=d,
                    lengthscale_prior=gpytorch.priors.GammaPrior(*LENGTHSCALE_PRIOR),
                    lengthscale_constraint=gpytorch.constraints.Interval(1e-3, LENGTHSCALE_MAX),
                )
                if kernel == "matern52"
                else gpytorch.kernels.RBFKernel(
                    ard_num_dims=d,
                    lengthscale_prior=gpytorch.priors.GammaPrior(*LENGTHSCALE_PRIOR),
                    lengthscale_constraint=gpytorch.constraints.Interval(1e-3, LENGTHSCALE_MAX),
                )
            )
            self.covar_module = gpytorch.kernels.ScaleKernel(
                base, outputscale_prior=gpytorch.priors.GammaPrior(2.0, 0.15)
            )

        def forward(self, z: Tensor) -> Any:
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(z), self.covar_module(z)
            )

    best: tuple[float, GPHyper] | None = None
    for lengthscales in starts:
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_prior=gpytorch.priors.LogNormalPrior(-8.0, 2.0),
            noise_constraint=gpytorch.constraints.GreaterThan(NOISE_FLOOR),
        ).to(DTYPE)
        model = Model(likelihood).to(DTYPE)
        model.covar_module.base_kernel.lengthscale = torch.as_tensor(lengthscales, dtype=DTYPE)
        if start is not None and lengthscales is starts[0]:
            model.covar_module.outputscale = start.outputscale
            likelihood.noise = max(start.noise, 2 * NOISE_FLOOR)
            model.mean_module.constant.data.fill_(start.mean)
        model.train()
        likelihood.train()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
        optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter,
                                      line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = -mll(model(x), y)
            loss.backward()
            return loss

        try:
            with gpytorch.settings.max_cholesky_size(10**9), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optimizer.step(closure)
                with torch.no_grad():
                    loss = float(-mll(model(x), y))
        except (RuntimeError, ValueError):  # a non-PD matrix or NaN along the way
            continue
        if not math.isfinite(loss):
            continue
        with torch.no_grad():
            hyper = GPHyper(
                tuple(float(v) for v in model.covar_module.base_kernel.lengthscale.reshape(-1)),
                float(model.covar_module.outputscale),
                float(likelihood.noise.reshape(-1)[0]),
                float(model.mean_module.constant),
                kernel,
            )
        if best is None or loss < best[0]:
            best = (loss, hyper)
    if best is not None:
        return best[1]
    if start is not None:
        return start
    return GPHyper((LENGTHSCALE_START,) * d, kernel=kernel)


# --- the surrogate --------------------------------------------------------------------------


class GaussianProcess:
    """Exact GP regression with an incrementally extended Cholesky factor.

    Typical use::

        gp = GaussianProcess(dim)
        gp.fit(x, y)                 # standardise y, fit hyper-parameters, factorise
        gp.append(x_new, y_new)      # O(n²) a point (CholeskyFactor), hyper-parameters kept
        mean, variance = gp.predict(x_star)

    Args:
        dim: input dimension (inputs live in the unit cube).
        kernel: ``"matern52"`` or ``"rbf"``.
        capacity: initial rows of the data and factor buffers (grown by doubling).
    """

    def __init__(self, dim: int, kernel: str = "matern52", capacity: int = 64) -> None:
        if kernel not in KERNELS:
            raise GPError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if dim < 1:
            raise GPError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.kernel = kernel
        self.hyper: GPHyper | None = None
        self.y_mean = 0.0
        self.y_scale = 1.0
        self._x = torch.zeros(capacity, dim, dtype=DTYPE)
        self._y = torch.zeros(capacity, dtype=DTYPE)  # standardised
        #: the factor L of K + noise·I over the n observations, and L⁻¹
        self.factor = CholeskyFactor(inverse=True, capacity=capacity, dtype=DTYPE)
        self._alpha: Tensor | None = None
        #: total jitter chol_append added to near-duplicate points since the last factorisation
        self.jitter_added = 0.0

    # -- data ----------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Observations in the model (fantasies included until truncated)."""
        return len(self.factor)

    @property
    def x(self) -> Tensor:
        """Observed inputs [n, dim]."""
        return self._x[: self.n]

    @property
    def y(self) -> Tensor:
        """Observed outputs [n] on the data's scale."""
        return self._y[: self.n] * self.y_scale + self.y_mean

    def _check(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = torch.as_tensor(x, dtype=DTYPE)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise GPError(f"inputs must be [n, {self.dim}], got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise GPError("inputs contain NaN or inf")
        if y is None:
            return x, None
        y = torch.as_tensor(y, dtype=DTYPE).reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise GPError(f"got {x.shape[0]} inputs but {y.shape[0]} outputs")
        if not bool(torch.isfinite(y).all()):
            raise GPError("outputs contain NaN or inf: leave failed trials out or give them a "
                          "penalty value")
        return x, y

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` observations in the data buffers (the factor grows itself)."""
        capacity = self._x.shape[0]
        if rows <= capacity:
            return
        new = max(rows, 2 * capacity)
        x, y = torch.zeros(new, self.dim, dtype=DTYPE), torch.zeros(new, dtype=DTYPE)
        x[:capacity], y[:capacity] = self._x, self._y
        self._x, self._y = x, y

    def set_data(self, x: Tensor, y: Tensor, hyper: GPHyper) -> None:
        """Replace the observations and hyper-parameters and factorise from scratch (the
        outputs are standardised here)."""
        x, y = self._check(x, y)
        if len(hyper.lengthscales) != self.dim:
            raise GPError(f"hyper-parameters have {len(hyper.lengthscales)} length-scales for "
                          f"{self.dim} input dimensions")
        self.hyper = replace(hyper, kernel=hyper.kernel)
        n = x.shape[0]
        self.y_mean = float(y.mean()) if n else 0.0
        scale = float(y.std()) if n > 1 else 0.0
        self.y_scale = scale if scale > 0 else 1.0
        self._reserve(n)
        self._x[:n] = x
        self._y[:n] = (y - self.y_mean) / self.y_scale
        self._factorise(n)

    def fit(self, x: Tensor, y: Tensor, restarts: int = 2, seed: int = 0,
            warm_start: bool = True, max_iter: int = 50,
            subsample: int | None = None) -> GPHyper:
        """Standardise ``y``, fit the hyper-parameters (from the current ones when
        ``warm_start``) and factorise. ``subsample`` caps the points used for the fit itself
        (a seeded random subset; every point is still used for prediction)."""
        x, y = self._check(x, y)
        n = x.shape[0]
        if n == 0:
            raise GPError("fit needs at least one observation")
        mean = float(y.mean())
        scale = float(y.std()) if n > 1 else 0.0
        y_std = (y - mean) / (scale if scale > 0 else 1.0)
        fit_x, fit_y = x, y_std
        if subsample is not None and n > subsample:
            rows = np.sort(np.random.default_rng(seed).choice(n, subsample, replace=False))
            fit_x, fit_y = x[rows], y_std[rows]
        start = self.hyper if warm_start and self.hyper is not None else None
        hyper = fit_hyperparameters(fit_x, fit_y, self.kernel, restarts, seed, start, max_iter)
        self.set_data(x, y, hyper)
        return hyper

    def _factorise(self, n: int) -> None:
        """Factorise the first ``n`` observations from scratch (with jitter if needed)."""
        assert self.hyper is not None
        self.jitter_added = 0.0
        self._alpha = None
        self.factor.reset()
        if n == 0:
            return
        x = self._x[:n]
        K = self._gram(x, x)
        K.diagonal().add_(self.hyper.noise)
        jitter = 0.0
        for attempt in range(8):
            L, info = torch.linalg.cholesky_ex(K + jitter * torch.eye(n, dtype=DTYPE))
            if int(info) == 0:
                break
            jitter = 1e-8 * 10**attempt
        else:
            raise GPError("the kernel matrix is not positive definite even with jitter 1e-1; "
                          "the inputs or hyper-parameters are degenerate")
        self.jitter_added = jitter
        self.factor.reset(L)  # and L⁻¹, by a triangular solve

    def _gram(self, a: Tensor, b: Tensor) -> Tensor:
        assert self.hyper is not None
        return kernel_matrix(a, b, self.hyper.lengthscale_tensor(), self.hyper.outputscale,
                             self.hyper.kernel)

    def append(self, x: Tensor, y: Tensor) -> None:
        """Add observations without refitting: the factor grows in place in O(n²k)."""
        if self.hyper is None:
            raise GPError("append needs hyper-parameters: call fit or set_data first")
        x, y = self._check(x, y)
        k = x.shape[0]
        if k == 0:
            return
        n = self.n
        self._reserve(n + k)
        K_new_old = self._gram(x, self.x)
        K_new_new = self._gram(x, x)
        K_new_new.diagonal().add_(self.hyper.noise)
        self.jitter_added += self.factor.append(K_new_old, K_new_new)
        self._x[n : n + k] = x
        self._y[n : n + k] = (y - self.y_mean) / self.y_scale
        self._alpha = None

    def truncate(self, n: int) -> None:
        """Forget every observation after the first ``n`` (e.g. fantasies): O(1)."""
        if not 0 <= n <= self.n:
            raise GPError(f"truncate: n must be in [0, {self.n}], got {n}")
        if n != self.n:
            self.factor.truncate(n)
            self._alpha = None

    # -- prediction ----------------------------------------------------------------------------
    def _linv(self) -> Tensor:
        Linv = self.factor.Linv
        assert Linv is not None
        return Linv

    def alpha(self) -> Tensor:
        """(K + noise·I)⁻¹ (y - mean) on the standardised scale [n]."""
        if self._alpha is None:
            assert self.hyper is not None
            Linv = self._linv()
            self._alpha = Linv.T @ (Linv @ (self._y[: self.n] - self.hyper.mean))
        return self._alpha

    def best_standardised(self) -> float:
        """The smallest observed output on the standardised scale."""
        return float(self._y[: self.n].min())

    def acquisition(self, x: Tensor, acquisition: str = "ei", xi: float = 0.0,
                    beta: float = 2.0, best: float | None = None) -> GPAcquisition:
        """Posterior and acquisition (minimising) for candidates ``x`` [m, dim], on the
        standardised scale, through the fused op (the best backend available). EI and PI
        measure improvements from ``best`` (standardised; default: the smallest output)."""
        if self.hyper is None or self.n == 0:
            raise GPError("the surrogate has no observations yet")
        x, _ = self._check(x)
        return gp_acquisition(
            x, self.x, self._linv(), self.alpha(), self.hyper.lengthscale_tensor(),
            self.hyper.outputscale, kernel=self.hyper.kernel, mean_constant=self.hyper.mean,
            acquisition=acquisition,
            best_f=(self.best_standardised() if best is None else best)
            if acquisition in ("ei", "pi") else None,
            xi=xi, beta=beta,
        )

    def predict(self, x: Tensor, noise: bool = False) -> tuple[Tensor, Tensor]:
        """Posterior mean and variance [m] on the data's scale (of the latent function, or of
        a new observation with ``noise=True``)."""
        posterior = self.acquisition(x, "none")
        variance = posterior.variance
        if noise:
            assert self.hyper is not None
            variance = variance + self.hyper.noise
        return (posterior.mean * self.y_scale + self.y_mean, variance * self.y_scale**2)

    def differentiable_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised posterior mean and latent variance of ``x`` [m, dim] in plain PyTorch,
        differentiable with respect to ``x`` (for gradient refinement of candidates)."""
        assert self.hyper is not None
        k = self._gram(x, self.x)
        mean = self.hyper.mean + k @ self.alpha()
        v = k @ self._linv().T
        variance = (self.hyper.outputscale - (v * v).sum(-1)).clamp_min(1e-10)
        return mean, variance

    def relevance(self) -> np.ndarray:
        """Inverse length-scales, one per input coordinate: how fast the objective changes
        along each (automatic relevance determination)."""
        if self.hyper is None:
            raise GPError("the surrogate has no hyper-parameters yet")
        return 1.0 / np.asarray(self.hyper.lengthscales)


def log_expected_improvement(mean: Tensor, variance: Tensor, best: float,
                             xi: float = 0.0) -> Tensor:
    """log EI for minimisation, differentiable and finite far from the incumbent, where EI
    itself underflows to 0 and has no gradient (Ament et al. 2023). With
    EI = σ h(z), h(z) = φ(z) + zΦ(z): for z < -1, h(z) = φ(z) (1 + z √(π/2) erfcx(-z/√2)),
    so log h never forms the vanishing φ(z) and Φ(z) themselves."""
    sigma = variance.sqrt()
    z = (best - mean - xi) / sigma
    near = z.clamp_min(-1.0)
    cdf = 0.5 * torch.special.erfc(-near / math.sqrt(2.0))
    pdf = torch.exp(-0.5 * near * near) / math.sqrt(2.0 * math.pi)
    log_h_near = torch.log(pdf + near * cdf)
    far = z.clamp_max(-1.0)
    ratio = 1.0 + far * math.sqrt(math.pi / 2.0) * torch.special.erfcx(-far / math.sqrt(2.0))
    log_h_far = -0.5 * far * far - 0.5 * math.log(2.0 * math.pi) + torch.log(ratio)
    return torch.where(z >= -1.0, log_h_near, log_h_far) + torch.log(sigma)
