"""Hyperband whose configurations come from a Gaussian process (Bertrand2019, sec. 2.5).

Brackets, rungs and promotions are those of :mod:`~medtune.plugins.searchers.hyperband`; only
the configurations that start a bracket are chosen differently. Every result, at every rung,
is given to the model with its resource. Two modes:

- ``mode="budget"`` (Bertrand2019, sec. 2.5.2): the training budget is one more GP input (its
  log, scaled to [0, 1] over [smallest rung resource, R]), so every evaluation of every rung is
  an observation of one model. A candidate is scored at the resource of the bracket's first
  rung (the evaluation it is proposed for), and improvements are measured from the best value
  observed at that resource. Bertrand2019 used the squared-exponential kernel and sampled from
  the normalised EI (``kernel="rbf", parallel="sample"``); the defaults here are Matérn 5/2 and
  constant-liar batches, because of what it found (sec. 2.5.4: the normalised-EI distribution
  is close to uniform).
- ``mode="per_budget"`` (as BOHB, Falkner et al. 2018): one model per resource level, fit on
  the results at the largest resource that has at least ``min_points`` of them (default: the
  encoded dimension + 2); below that everywhere, configurations are random.

In both modes a fraction ``random_fraction`` of the configurations is drawn at random (BOHB's
1/3 by default), which keeps the search consistent when the model is wrong. The suggestion
that starts a configuration carries ``tag["model"]`` as the ``bayes`` searcher's (with the
``resource`` the prediction is for), next to Hyperband's keys. The default, ``per_budget``, is
the mode that measured better in ``python -m benchmarks.search`` (docs/search.md has the
numbers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from medtune.plugins.searchers.bayes import BayesSearcher
from medtune.plugins.searchers.hyperband import HyperbandSearcher, _Bracket, bracket_plan
from medtune.search.searcher import Proposal, SearcherError, Suggestion, split_options
from medtune.search.gp import DTYPE, GaussianProcess
from medtune.search.space import SearchSpace

MODES = ("per_budget", "budget")


class _BudgetModel(BayesSearcher):
    """The GP proposer inside :class:`BOHBSearcher`: learns from results at any resource."""

    name = "bohb"

    def __init__(self, space: SearchSpace | Mapping[str, Any], *, mode: str,
                 resources: list[float], random_fraction: float, min_points: int | None,
                 **options: Any) -> None:
        super().__init__(space, n_initial=1, **options)
        self.mode = mode
        self.random_fraction = random_fraction
        self.min_points = self.encoder.dim + 2 if min_points is None else min_points
        self._log_min, self._log_max = math.log(min(resources)), math.log(max(resources))
        self.target_resource = min(resources)
        self._by_resource: dict[float, tuple[list, list, list]] = {}
        self._modelled: float | None = None  # the resource level the per-budget model is on
        self._started: dict[str, dict[str, Any]] = {}  # every configuration proposed
        if mode == "budget":
            self.gp = GaussianProcess(self.encoder.dim + 1, self.kernel)
            self._all: tuple[list, list, list] = ([], [], [])

    def _unit(self, resource: float) -> float:
        span = self._log_max - self._log_min
        return 0.0 if span == 0 else (math.log(resource) - self._log_min) / span

    def _model_input(self, config: Mapping[str, Any], resource: float | None) -> torch.Tensor:
        x = self.encoder.encode([config])
        if self.mode == "per_budget":
            return x
        assert resource is not None
        return torch.cat([x, torch.full((1, 1), self._unit(resource), dtype=DTYPE)], 1)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "per_budget":
            return x
        column = torch.full((x.shape[0], 1), self._unit(self.target_resource), dtype=DTYPE)
        return torch.cat([x, column], 1)

    def _incumbent(self) -> float | None:
        if self.mode == "per_budget":
            return None
        _, _, scores = self._by_resource.get(self.target_resource, (None, None, []))
        if not scores:
            return None
        return (min(scores) - self.gp.y_mean) / self.gp.y_scale

    def observe_at(self, config: Mapping[str, Any], resource: float, score: float) -> None:
        """One result of any rung, as a score (lower is better)."""
        configs, inputs, scores = self._by_resource.setdefault(resource, ([], [], []))
        configs.append(dict(config))
        inputs.append(self._model_input(config, resource))
        scores.append(score)
        if self.mode == "budget":
            for store, item in zip(self._all, (configs[-1], inputs[-1], score)):
                store.append(item)

    def _observe(self, suggestion: Suggestion, score: float | None, failed: bool) -> None:
        self._pending_x.pop(suggestion.id, None)  # results arrive through observe_at

    def _add_fantasies(self) -> None:
        """Pending configurations as the parent's fantasies; besides, a per-budget model
        believes its own prediction at every started configuration it has no result for at its
        level (trained at another budget, or lost to a failure): the variance there collapses,
        so the same optimum is not proposed again, without the constant liar's claim that a
        promoted (good) configuration was bad."""
        super()._add_fantasies()
        if self.mode != "per_budget" or self._modelled is None:
            return
        modelled = {self.space.key(c) for c in self._by_resource[self._modelled][0]}
        pending = {self.space.key(s.config) for s in self.pending}
        others = [config for key, config in self._started.items()
                  if key not in modelled and key not in pending]
        if others:
            points = self.encoder.encode(others)
            mean, _ = self.gp.predict(points)
            self.gp.append(points, mean)

    def _random(self) -> Proposal | None:
        return self._started_proposal(super()._random())

    def _model_proposal(self) -> Proposal | None:
        return self._started_proposal(super()._model_proposal())

    def _started_proposal(self, proposal: Proposal | None) -> Proposal | None:
        if proposal is not None:
            self._started[self.space.key(proposal.config)] = dict(proposal.config)
        return proposal

    def _select_data(self) -> bool:
        """Point the model at the observations it learns from; False when too few."""
        if self.mode == "budget":
            self._configs, self._inputs, self._scores = self._all
            return len(self._scores) >= self.min_points
        levels = [r for r, (_, _, s) in self._by_resource.items() if len(s) >= self.min_points]
        if not levels:
            return False
        level = max(levels)
        if level != self._modelled:
            self._modelled, self._fitted_at, self._in_model = level, 0, 0
        self._configs, self._inputs, self._scores = self._by_resource[level]
        return True

    def _propose(self) -> Proposal | None:
        if not self._select_data() or self.rng.random() < self.random_fraction:
            return self._random()
        return self._model_proposal()

    def _details(self, score: torch.Tensor, mean: torch.Tensor,
                 variance: torch.Tensor) -> dict[str, Any]:
        details = super()._details(score, mean, variance)
        details["resource"] = (self.target_resource if self.mode == "budget"
                               else self._modelled)
        return details


class BOHBSearcher(HyperbandSearcher):
    """Hyperband with GP-proposed configurations; see the module docstring.

    Args:
        R, eta, iterations, overlap_brackets: Hyperband's (default: run brackets until
            ``max_trials`` or a finite space is exhausted).
        mode: ``"per_budget"`` or ``"budget"`` (see the module docstring).
        random_fraction: share of configurations drawn at random.
        min_points: results a model needs before it is used.
        **options: the :class:`~medtune.search.Searcher` arguments (all but ``max_trials``
            apply to the model too), and options of the ``bayes`` searcher (kernel,
            acquisition, parallel, restarts, candidates, ...).
    """

    name = "bohb"

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Any],
        *,
        R: float = 81,
        eta: float = 3,
        mode: str = "per_budget",
        random_fraction: float = 1 / 3,
        min_points: int | None = None,
        iterations: int | None = None,
        overlap_brackets: bool = True,
        **options: Any,
    ) -> None:
        if mode not in MODES:
            raise SearcherError(f"bohb: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(random_fraction, (int, float)) or not 0 <= random_fraction <= 1:
            raise SearcherError(f"bohb: random_fraction must be in [0, 1], got {random_fraction!r}")
        if min_points is not None and (not isinstance(min_points, int) or min_points < 2):
            raise SearcherError(f"bohb: min_points must be an integer >= 2, got {min_points!r}")
        shared, bayes_options = split_options(options)
        resources = [r for plan in bracket_plan(R, eta) for _, r in plan.rungs]
        delegated = {k: v for k, v in shared.items() if k != "max_trials"}
        model = _BudgetModel(space, mode=mode, resources=resources,
                             random_fraction=float(random_fraction), min_points=min_points,
                             **delegated, **bayes_options)
        super().__init__(model.space, R=R, eta=eta, searcher=model, iterations=iterations,
                         overlap_brackets=overlap_brackets, **shared)
        self.mode = mode
        self.model = model

    def _propose_in(self, bracket: _Bracket) -> Proposal | None:
        self.model.target_resource = bracket.plan.rungs[0][1]
        proposal = super()._propose_in(bracket)
        if proposal is not None and proposal.tag.get("rung") == 0:
            sub = self._proposed.get(self.asked)
            if sub is not None:
                proposal.tag["model"] = sub.tag.get("model")
        return proposal

    def _observe(self, suggestion: Suggestion, score: float | None, failed: bool) -> None:
        if score is not None and math.isfinite(score) and suggestion.resource is not None:
            self.model.observe_at(suggestion.config, suggestion.resource, score)
        super()._observe(suggestion, score, failed)
