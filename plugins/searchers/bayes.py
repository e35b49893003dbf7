"""Bayesian optimisation with a Gaussian process (Bertrand2019, sec. 2.2, 2.3, 2.5 and 2.6.3).

After ``n_initial`` random configurations, each suggestion maximises an acquisition function
(expected improvement by default; probability of improvement or UCB) of a GP surrogate
(:mod:`medtune.search.gp`): Matérn 5/2 with automatic relevance determination (or the squared
exponential), inputs in the unit cube (log scales, integers and ordinal ranks, one-hot
categories), standardised outputs, observation noise.

Cost per suggestion. Kernel hyper-parameters are refit by marginal likelihood (GPyTorch,
L-BFGS, warm start plus ``restarts`` random starts, on at most ``fit_subsample`` points) only
on a schedule: when the observations told since the last fit reach
``max(refit_every, refit_growth · n_at_last_fit)``. Between refits each observation is appended
in place to the Cholesky factor and its inverse, a ``medtune.kernels.CholeskyFactor`` (one
``chol_append``, O(n²); Bertrand2019, sec. 2.3), so a suggestion costs one pass of the fused
``gp_acquisition`` op over the candidates.

Candidates. On a finite space of at most ``finite_limit`` configurations every configuration
not tried yet is scored at every step (Bertrand2019, sec. 2.6.3: 34,300 models). Otherwise the
candidates are ``candidates`` scrambled Sobol points plus ``local_candidates`` perturbations of
the best observations (past 300 observations the Sobol share shrinks as 1/n, to no fewer
than 256, to bound the O(n²)-per-candidate cost, and so does the refinement's iteration
budget, to no fewer than 10); the ``refine_starts`` best are refined by gradient ascent of the
acquisition (log EI, log PI or UCB; L-BFGS-B, at most ``refine_steps`` iterations, on the
continuous coordinates), then rounded to the space. A configuration already tried is never
proposed again.

Parallel suggestions. When results are pending, the pending configurations enter the model as
fantasies, appended to the factor and dropped after the suggestion (an O(1) truncation):

- ``parallel="liar"`` (constant liar): each pending point is told ``liar`` = ``"worst"``
  (default: the "low performance" of Bertrand2019, which pushes the next suggestion away),
  ``"mean"`` or ``"best"`` of the observed values;
- ``parallel="believer"`` (Kriging believer): each is told the model's own prediction;
- ``parallel="sample"``: the normalised-EI sampling of Bertrand2019 (sec. 2.5.2): the suggestion
  is drawn with probability proportional to its expected improvement, with no fantasies.
  Bertrand2019 found the resulting distribution close to uniform (sec. 2.5.4); it is here to
  reproduce that.

Every model-based suggestion carries ``tag["model"]``: the prediction made when it was asked
(``mean`` and ``std`` of the score the searcher minimises - the value, negated when it
maximises - observation noise included), the ``acquisition`` value, the number of
observations and the relevance (inverse length-scale, the largest of a category's columns) of
each parameter. Reports plot them against the observed values.

Several objectives: ParEGO (Knowles 2006). Before each model-based suggestion a weight vector
λ is drawn uniformly from the simplex (seeded by the searcher's generator; Knowles draws from
a fixed lattice of weights), each objective's scores are normalised to [0, 1] over the
observations, and the GP models their augmented Chebyshev scalarisation
``max_j λ_j f_j + 0.05 Σ_j λ_j f_j``; the rest is the single-objective machinery (the
outputs change at every suggestion, so the factor is rebuilt each time; hyper-parameters keep
their refit schedule). ``tag["model"]["weights"]`` records λ.

Constraints (Gardner et al. 2014; Gelbart et al. 2014): one GP per constraint models its
slack (how far inside the bound a result is) over every result that returned it, feasible or
not; EI or PI is multiplied by the probability of feasibility ``Π_k Φ(μ_k / σ_k)`` and
measures improvement from the best *feasible* result; until there is one, the acquisition is
the probability of feasibility alone. UCB has no such weighting and is refused with
constraints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from medtune.search.searcher import Proposal, Searcher, SearcherError, Suggestion
from medtune.search.gp import (
    DTYPE,
    KERNELS,
    GaussianProcess,
    SpaceEncoder,
    log_expected_improvement,
)
from medtune.search.space import (
    Categorical,
    Float,
    Int,
    Ordinal,
    SearchSpace,
    SearchSpaceError,
    UniqueSampler,
)

ACQUISITIONS = ("ei", "pi", "ucb")
#: ParEGO's augmentation weight (Knowles 2006).
PAREGO_RHO = 0.05
PARALLEL = ("liar", "believer", "sample")
LIARS = ("worst", "mean", "best")


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise SearcherError(f"bayes: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SearcherError(f"bayes: {name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


class BayesSearcher(Searcher):
    """GP-based Bayesian optimisation; see the module docstring.

    Args:
        kernel: ``"matern52"`` (default) or ``"rbf"`` (squared exponential).
        acquisition: ``"ei"`` (default), ``"pi"`` or ``"ucb"``.
        xi: exploration margin of EI and PI (standardised units).
        beta: UCB's exploration weight (``sqrt(beta)·σ``).
        n_initial: random configurations before the model takes over (default
            ``max(5, dim + 1)``, dim the encoded dimension, at most 20).
        refit_every, refit_growth: the refit schedule (see the module docstring).
        restarts: random restarts of each hyper-parameter fit (besides the warm start).
        fit_subsample: the most points a hyper-parameter fit uses (a seeded subset).
        candidates, local_candidates: Sobol points and perturbations of the best observations
            scored per suggestion in a continuous or large space.
        refine_starts, refine_steps: gradient refinement of the best candidates (0 disables).
        finite_limit: a finite space up to this size is scored exhaustively.
        parallel: ``"liar"``, ``"believer"`` or ``"sample"`` (see the module docstring).
        liar: the constant liar's value: ``"worst"``, ``"mean"`` or ``"best"``.
        The other arguments are the :class:`Searcher` ones.
    """

    name = "bayes"
    multi_objective = True

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        *,
        kernel: str = "matern52",
        acquisition: str = "ei",
        xi: float = 0.0,
        beta: float = 2.0,
        n_initial: int | None = None,
        refit_every: int = 1,
        refit_growth: float = 0.1,
        restarts: int = 1,
        fit_subsample: int = 500,
        candidates: int = 1024,
        local_candidates: int = 256,
        refine_starts: int = 3,
        refine_steps: int = 50,
        finite_limit: int = 200_000,
        parallel: str = "liar",
        liar: str = "worst",
        **shared: Any,
    ) -> None:
        super().__init__(space, **shared)
        self.kernel = _choice("kernel", kernel, KERNELS)
        self.acquisition = _choice("acquisition", acquisition, ACQUISITIONS)
        self.parallel = _choice("parallel", parallel, PARALLEL)
        self.liar = _choice("liar", liar, LIARS)
        for name, value in (("xi", xi), ("beta", beta), ("refit_growth", refit_growth)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                math.isfinite(value) and value >= 0
            ):
                raise SearcherError(f"bayes: {name} must be a number >= 0, got {value!r}")
        self.xi, self.beta, self.refit_growth = float(xi), float(beta), float(refit_growth)
        self.encoder = SpaceEncoder(self.space)
        default_initial = min(20, max(5, self.encoder.dim + 1))
        self.n_initial = _positive_int("n_initial", default_initial if n_initial is None
                                       else n_initial)
        self.refit_every = _positive_int("refit_every", refit_every)
        self.restarts = _positive_int("restarts", restarts, 0)
        self.fit_subsample = _positive_int("fit_subsample", fit_subsample, 2)
        self.candidates = _positive_int("candidates", candidates)
        self.local_candidates = _positive_int("local_candidates", local_candidates, 0)
        self.refine_starts = _positive_int("refine_starts", refine_starts, 0)
        self.refine_steps = _positive_int("refine_steps", refine_steps, 0)
        finite_limit = _positive_int("finite_limit", finite_limit, 0)
        constraints = self.objectives.constraints
        if constraints and self.acquisition == "ucb":
            raise SearcherError("bayes: constraints weight EI or PI by the probability of "
                                "feasibility; use acquisition = \"ei\" or \"pi\"")
        self._vectors: list[tuple[float, ...]] = []  # ParEGO: the observations' score vectors
        self._weights: np.ndarray | None = None  # ParEGO: the last scalarisation's λ
        self._feasible: list[bool] = []  # per observation, when the study has constraints
        self._constraint_told: dict[int, tuple[float, ...]] = {}
        self._constraint_x: list[torch.Tensor] = []
        self._slacks: list[tuple[float, ...]] = []
        self._constraint_gps = [GaussianProcess(self.encoder.dim, self.kernel)
                                for _ in constraints]
        self._constraints_fitted_at = 0

        self.gp = GaussianProcess(self.encoder.dim, self.kernel)
        self._sampler = UniqueSampler(self.space, self.rng)  # marks every configuration tried
        self._configs: list[dict[str, Any]] = []  # observations the model learns from
        self._inputs: list[torch.Tensor] = []  # their model inputs, [1, gp.dim] each
        self._scores: list[float] = []
        self._warm = 0  # observations given by warm_start
        self._fitted_at = 0  # observations at the last hyper-parameter fit (0: never)
        self._in_model = 0  # observations in the GP factor
        self._pending_x: dict[int, torch.Tensor] = {}
        self._sobol = torch.quasirandom.SobolEngine(self.encoder.dim, scramble=True,
                                                    seed=int(self.rng.integers(2**31)))
        self._has_discrete = any(not isinstance(p, Float) for p in self.space.parameters)
        self._has_conditions = any(p.condition for p in self.space.parameters)
        # A finite space small enough is enumerated once and scored exhaustively.
        size = self.space.size()
        self._table: torch.Tensor | None = None
        self._table_configs: list[dict[str, Any]] = []
        self._table_index: dict[str, int] = {}
        self._untried: np.ndarray | None = None
        if size is not None and size <= finite_limit:
            self._table_configs = list(self.space.enumerate())
            self._table = self.encoder.encode(self._table_configs)
            self._table_index = {self.space.key(c): i for i, c in enumerate(self._table_configs)}
            self._untried = np.ones(len(self._table_configs), dtype=bool)

    # -- observations -------------------------------------------------------------------------
    def warm_start(self, configs: list[Mapping[str, Any]], values: list[float]) -> None:
        """Learn from results obtained elsewhere (another study, a previous run): each
        configuration counts as tried and its value (in the searcher's direction) is modelled
        and counts towards ``n_initial``. All are checked before any is used. The model is
        refit at the next suggestion."""
        if self.objectives.multi:
            raise SearcherError("bayes: warm_start takes one value per configuration; it is "
                                "not available with several objectives")
        if len(configs) != len(values):
            raise SearcherError(f"bayes: warm_start got {len(configs)} configurations and "
                                f"{len(values)} values")
        checked = []
        for config, value in zip(configs, values):
            try:
                config = self.space.validate(config)
            except SearchSpaceError as error:
                raise SearcherError(f"bayes: warm_start configuration {dict(config)!r} does "
                                    f"not fit the space: {error}") from None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                math.isfinite(value)
            ):
                raise SearcherError(f"bayes: warm_start value for {config} must be a finite "
                                    f"number, got {value!r}")
            checked.append((config, self._as_score(float(value))))
        for config, score in checked:
            self._mark(config)
            if self._worst_score is None or score > self._worst_score:
                self._worst_score = score
            if self._best is None or score < self._best[0]:
                self._best = (score, dict(config))
            self._configs.append(config)
            self._inputs.append(self._model_input(config, None))
            self._scores.append(score)
        self._warm += len(checked)
        if checked:
            self._fitted_at = 0

    def _mark(self, config: Mapping[str, Any]) -> None:
        key = self._sampler.mark(config)
        if self._untried is not None:
            self._untried[self._table_index[key]] = False

    def _observe_constraints(self, suggestion: Suggestion, values: tuple[float, ...]) -> None:
        self._constraint_told[suggestion.id] = values

    def _observe(self, suggestion: Suggestion, score: Any, failed: bool) -> None:
        self._pending_x.pop(suggestion.id, None)
        constraints = self.objectives.constraints
        values = self._constraint_told.pop(suggestion.id, None)
        if values is not None:
            self._constraint_x.append(self.encoder.encode([suggestion.config]))
            self._slacks.append(tuple(c.slack(v) for c, v in zip(constraints, values)))
        scores = score if isinstance(score, tuple) else (score,)
        if score is None or not all(math.isfinite(s) for s in scores):
            return  # excluded (or a penalty of inf before any result): never modelled
        if isinstance(score, tuple):
            self._vectors.append(score)
            score = 0.0  # scalarised afresh before each model-based suggestion
        self._configs.append(dict(suggestion.config))
        self._inputs.append(self._model_input(suggestion.config, suggestion.resource))
        self._scores.append(score)
        self._feasible.append(values is not None and all(
            c.satisfied(v) for c, v in zip(constraints, values)))

    def _model_input(self, config: Mapping[str, Any], resource: float | None) -> torch.Tensor:
        """The GP input of an observation [1, gp.dim] (subclasses add e.g. the budget)."""
        return self.encoder.encode([config])

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Candidates in the cube [m, dim] → GP inputs [m, gp.dim] (identity here)."""
        return x

    def _incumbent(self) -> float | None:
        """The standardised value improvements are measured from (None: the best modelled;
        with constraints, the best feasible one)."""
        if not self._slacks:
            return None
        feasible = [s for s, ok in zip(self._scores, self._feasible) if ok]
        if not feasible:
            return None
        return (min(feasible) - self.gp.y_mean) / self.gp.y_scale

    # -- several objectives (ParEGO) and constraints -------------------------------------------
    def _scalarise(self) -> None:
        """Draw ParEGO's weights and rewrite the modelled scores as their augmented Chebyshev
        scalarisation of the normalised score vectors."""
        vectors = np.asarray(self._vectors, dtype=float)
        weights = self.rng.dirichlet(np.ones(vectors.shape[1]))
        low, high = vectors.min(0), vectors.max(0)
        normalised = (vectors - low) / np.where(high > low, high - low, 1.0)
        weighted = weights * normalised
        self._scores[:] = (weighted.max(1) + PAREGO_RHO * weighted.sum(1)).tolist()
        self._weights = weights
        if self._fitted_at and not self._refit_due():  # same hyper-parameters, new outputs
            assert self.gp.hyper is not None
            self.gp.set_data(torch.cat(self._inputs), torch.tensor(self._scores, dtype=DTYPE),
                             self.gp.hyper)
            self._in_model = len(self._scores)

    def _update_constraint_models(self) -> None:
        """Fit (on the refit schedule) or update the constraints' GPs on every slack told."""
        n = len(self._slacks)
        if not n or not self._constraint_gps:
            return
        fitted = self._constraints_fitted_at
        due = not fitted or n - fitted >= max(self.refit_every, self.refit_growth * fitted)
        x = torch.cat(self._constraint_x)
        for k, gp in enumerate(self._constraint_gps):
            y = torch.tensor([slack[k] for slack in self._slacks], dtype=DTYPE)
            if due or gp.hyper is None:
                gp.fit(x, y, restarts=self.restarts, seed=int(self.rng.integers(2**31)),
                       subsample=self.fit_subsample)
            else:
                gp.set_data(x, y, gp.hyper)
        if due:
            self._constraints_fitted_at = n

    def _log_feasibility(self, x: torch.Tensor) -> torch.Tensor | None:
        """log of the modelled probability that candidates ``x`` [m, dim] (in the cube) meet
        every constraint, differentiable; None when no constraint value was told yet."""
        if not self._slacks or not self._constraint_gps:
            return None
        total = torch.zeros(x.shape[0], dtype=DTYPE)
        for gp in self._constraint_gps:
            mean, variance = gp.differentiable_posterior(x)
            zero = -gp.y_mean / gp.y_scale  # slack 0 on the standardised scale
            total = total + torch.special.log_ndtr((mean - zero) / variance.sqrt())
        return total

    # -- the model ------------------------------------------------------------------------------
    def _refit_due(self) -> bool:
        n = len(self._scores)
        if self._fitted_at == 0:
            return True
        return n - self._fitted_at >= max(self.refit_every, self.refit_growth * self._fitted_at)

    def refit(self) -> None:
        """Fit the kernel hyper-parameters on every observation and factorise from scratch."""
        x = torch.cat(self._inputs)
        y = torch.tensor(self._scores, dtype=DTYPE)
        self.gp.fit(x, y, restarts=self.restarts, seed=int(self.rng.integers(2**31)),
                    subsample=self.fit_subsample)
        self._fitted_at = self._in_model = len(self._scores)

    def _update_model(self) -> None:
        if self._refit_due():
            self.refit()
        elif self._in_model < len(self._scores):
            new = slice(self._in_model, len(self._scores))
            self.gp.append(torch.cat(self._inputs[new]),
                           torch.tensor(self._scores[new], dtype=DTYPE))
            self._in_model = len(self._scores)

    def _fantasy_points(self) -> list[torch.Tensor]:
        """GP inputs of the configurations to add as fantasies: the pending ones."""
        return list(self._pending_x.values())

    def _add_fantasies(self) -> None:
        """Pending configurations as fantasies (constant liar or Kriging believer)."""
        fantasies = self._fantasy_points()
        if self.parallel == "sample" or not fantasies:
            return
        points = torch.cat(fantasies)
        if self.parallel == "liar":
            observed = torch.tensor(self._scores, dtype=DTYPE)
            lie = {"worst": observed.max(), "mean": observed.mean(), "best": observed.min()}
            self.gp.append(points, lie[self.liar].expand(points.shape[0]))
            return
        for point in points:
            mean, _ = self.gp.predict(point[None])
            self.gp.append(point[None], mean)

    # -- candidates -----------------------------------------------------------------------------
    def _snap(self, x: torch.Tensor) -> torch.Tensor:
        """Round points of the cube to valid configurations (and back)."""
        if self._has_conditions:
            return self.encoder.encode([self.encoder.decode(row) for row in x])
        x = x.clamp(0.0, 1.0).clone()
        for parameter in self.space.parameters:
            where = self.encoder.slice_of(parameter.name)
            if isinstance(parameter, Categorical):
                block = x[:, where]
                x[:, where] = torch.nn.functional.one_hot(
                    block.argmax(1), block.shape[1]).to(DTYPE)
            elif isinstance(parameter, Int):
                column = x[:, where.start].tolist()
                x[:, where.start] = torch.tensor(
                    [parameter._to_unit(parameter._from_unit(u)) for u in column], dtype=DTYPE)
            elif isinstance(parameter, Ordinal) and parameter.count() > 1:
                steps = parameter.count() - 1
                x[:, where.start] = torch.round(x[:, where.start] * steps) / steps
        return x

    def _continuous_candidates(self) -> torch.Tensor:
        # Scoring costs O(n²) per candidate: past 300 observations the Sobol share shrinks as
        # 1/n (to no fewer than 256), keeping a suggestion's cost near that at n = 300.
        count = max(min(self.candidates, 256), self.candidates * 300 // max(300, self.gp.n))
        points = [self._sobol.draw(count, dtype=DTYPE)]
        if self.local_candidates and self._scores:
            best = np.argsort(self._scores)[:5]
            centres = self.encoder.encode([self._configs[i] for i in best])
            picks = torch.from_numpy(self.rng.integers(len(best), size=self.local_candidates))
            scale = torch.from_numpy(self.rng.choice([0.01, 0.05, 0.2], self.local_candidates))
            noise = torch.from_numpy(self.rng.standard_normal((self.local_candidates,
                                                               self.encoder.dim)))
            points.append((centres[picks] + scale[:, None] * noise).clamp(0.0, 1.0))
        x = torch.cat(points)
        return self._snap(x) if self._has_discrete else x

    def _acquisition_value(self, x: torch.Tensor) -> torch.Tensor:
        """The acquisition to maximise per point, differentiable: log EI, log PI or UCB."""
        mean, variance = self.gp.differentiable_posterior(self._augment(x))
        if self.acquisition == "ucb":
            return -mean + math.sqrt(self.beta) * variance.sqrt()
        incumbent = self._incumbent()
        log_feasibility = self._log_feasibility(x)
        if log_feasibility is not None and incumbent is None:
            return log_feasibility  # nothing feasible yet: look for feasibility alone
        best = self.gp.best_standardised() if incumbent is None else incumbent
        if self.acquisition == "pi":
            value = torch.special.log_ndtr((best - mean - self.xi) / variance.sqrt())
        else:
            value = log_expected_improvement(mean, variance, best, self.xi)
        return value if log_feasibility is None else value + log_feasibility

    def _refine(self, starts: torch.Tensor) -> torch.Tensor:
        """L-BFGS-B ascent of the acquisition from ``starts`` over the continuous coordinates
        (the starts are independent: one bounded problem over all of them at once)."""
        from scipy.optimize import minimize

        mask = torch.from_numpy(self.encoder.continuous)
        # each step reads the n × n inverse factor twice (forward and backward): past 300
        # observations the iteration budget shrinks as 1/n, to no fewer than 10
        steps = max(min(self.refine_steps, 10), self.refine_steps * 300 // max(300, self.gp.n))
        fixed = starts.clone()
        free = fixed[:, mask]

        def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
            z = torch.from_numpy(flat).reshape(free.shape).requires_grad_(True)
            x = fixed.clone()
            x[:, mask] = z
            value = -self._acquisition_value(x).sum()
            (grad,) = torch.autograd.grad(value, z)
            return float(value.detach()), grad.reshape(-1).numpy().astype(np.float64)

        result = minimize(objective, free.reshape(-1).numpy(), jac=True, method="L-BFGS-B",
                          bounds=[(0.0, 1.0)] * free.numel(),
                          options={"maxiter": steps})
        refined = fixed.clone()
        refined[:, mask] = torch.from_numpy(result.x).reshape(free.shape).clamp(0.0, 1.0)
        return self._snap(refined) if self._has_discrete else refined

    def _score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        incumbent = self._incumbent()
        result = self.gp.acquisition(self._augment(x), self.acquisition, xi=self.xi,
                                     beta=self.beta, best=incumbent)
        with torch.no_grad():
            log_feasibility = self._log_feasibility(x)
        if log_feasibility is None:
            return result.score, result.mean, result.variance
        feasibility = log_feasibility.exp()
        score = feasibility if incumbent is None else result.score * feasibility
        return score, result.mean, result.variance

    def _pick(self, scores: torch.Tensor) -> list[int]:
        """Candidate indices in the order to try: normalised-EI sampling or best first."""
        if self.parallel == "sample":
            weights = scores.clamp_min(0).numpy()
            total = weights.sum()
            if total > 0 and math.isfinite(total):
                order = self.rng.choice(len(weights), size=min(len(weights), 64), replace=False,
                                        p=weights / total)
                return [int(i) for i in order]
        k = min(len(scores), 64)
        return [int(i) for i in torch.topk(scores, k).indices]

    # -- proposing ------------------------------------------------------------------------------
    def _random(self) -> Proposal | None:
        config = self._sampler.draw()
        if config is None:
            return None
        if self._untried is not None:
            self._untried[self._table_index[self.space.key(config)]] = False
        return Proposal(config, tag={"model": None})

    def _propose(self) -> Proposal | None:
        if self.asked + self._warm < self.n_initial or not self._scores:
            return self._random()
        return self._model_proposal()

    def _model_proposal(self) -> Proposal | None:
        """The acquisition's choice given the observations (random once nothing is left)."""
        if self._vectors:
            self._scalarise()
        self._update_model()
        self._update_constraint_models()
        observed = self.gp.n
        self._add_fantasies()
        try:
            config, details = self._model_choice()
        finally:
            self.gp.truncate(observed)
        if config is None:
            return self._random()
        self._mark(config)
        return Proposal(config, tag={"model": details})

    def _model_choice(self) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The best untried configuration by the acquisition and its tag (None when none is
        left)."""
        if self._table is not None:
            assert self._untried is not None
            rows = np.flatnonzero(self._untried)
            if rows.size == 0:
                return None, {}
            x = self._table[torch.from_numpy(rows)]
            scores, means, variances = self._score(x)
            choice = self._pick(scores)[0]
            config = self._table_configs[int(rows[choice])]
            return config, self._details(scores[choice], means[choice], variances[choice])
        x = self._continuous_candidates()
        scores, means, variances = self._score(x)
        order = self._pick(scores)
        if self.refine_starts and self.refine_steps and self.parallel != "sample":
            starts = x[order[: self.refine_starts]]
            refined = self._refine(starts)
            r_scores, r_means, r_vars = self._score(refined)
            x = torch.cat([refined, x])
            scores, means, variances = (torch.cat([r_scores, scores]),
                                        torch.cat([r_means, means]),
                                        torch.cat([r_vars, variances]))
            order = [i for i in torch.argsort(r_scores, descending=True).tolist()] + [
                i + refined.shape[0] for i in order]
        for i in order:
            config = self.encoder.decode(x[i])
            if not self._sampler.seen(config):
                return config, self._details(scores[i], means[i], variances[i])
        return None, {}

    def _details(self, score: torch.Tensor, mean: torch.Tensor,
                 variance: torch.Tensor) -> dict[str, Any]:
        relevance = self.gp.relevance()
        by_parameter = {
            p.name: float(relevance[self.encoder.slice_of(p.name)].max())
            for p in self.space.parameters
        }
        details: dict[str, Any] = {} if self._weights is None else {
            "weights": [float(w) for w in self._weights]}
        return details | {
            "mean": float(mean) * self.gp.y_scale + self.gp.y_mean,
            "std": math.sqrt(float(variance) + self.gp.hyper.noise) * self.gp.y_scale,
            "acquisition": float(score),
            "observations": len(self._scores),
            "relevance": by_parameter,
        }

    def ask(self) -> Suggestion | None:
        suggestion = super().ask()
        if suggestion is not None:
            self._pending_x[suggestion.id] = self._augment(self.encoder.encode([suggestion.config]))
        return suggestion

    def _exhausted(self) -> bool:
        return self._sampler.exhausted
