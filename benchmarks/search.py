"""Search benchmarks: suggestion latency and search quality of medtune's searchers against Optuna.

One module over 600 lines on purpose: its five parts share the problems, the seeds, the
Optuna set-up and the BENCHMARKS.md section, and read best as one protocol.

``python -m benchmarks.search`` runs five parts and writes them into BENCHMARKS.md, between
``<!-- benchmarks:search:begin -->`` and ``<!-- benchmarks:search:end -->`` (the kernel
sections are left alone; a part not run this time keeps its previous tables):

- ``latency``: time of one ``ask()`` + ``tell()`` of medtune's ``bayes`` searcher after n
  observations of Hartmann-6, against Optuna's ``GPSampler`` (``study.ask`` + ``study.tell``
  on a study holding n completed trials);
- ``quality``: evaluations until the best value found is within 1 % and 0.1 % of the minimum
  of Branin and Hartmann-6, over many seeds, for medtune ``bayes`` and ``random`` and Optuna's
  ``GPSampler`` and ``TPESampler``;
- ``finite``: a tabulated space of 34,300 configurations (:class:`TabulatedProblem`):
  evaluations until the best / a top-1 % configuration is found by full-budget searchers, and
  total resource (epochs) until a top-1 % configuration is trained at the full budget by
  ``hyperband`` and ``bohb``;
- ``pruning``: the same table under 4 asynchronous workers, on a simulated clock where one
  epoch of one trial takes one time unit: synchronous Hyperband (workers idle at its rung
  barriers) against random search with the ``asha`` pruner (no barrier), and random search
  with the ``median`` pruner against random search without pruning; time until a top-1 %
  configuration is trained at the full budget, best final loss at equal time, idle share;
- ``pareto``: hypervolume after N evaluations of two-objective problems (ZDT1, and the
  table's final loss against its parameter count) for medtune ``random``, ``evolution``
  (NSGA-II) and ``bayes`` (ParEGO) and Optuna's ``NSGAIISampler`` and ``TPESampler``.

Searchers that are not registered (``medtune.available("searcher")``) and peers that are not
installed get "not available" / "not installed" in the tables instead of numbers. ``--quick``
(few seeds, small budgets, the GP searchers only in the latency part; a smoke test) writes a
file only with ``--output``. A full run takes about 50 minutes on two cores.
"""

from __future__ import annotations

import argparse
import heapq
import importlib.util
import inspect
import math
import shlex
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medtune
from benchmarks import machine
from benchmarks.functions import (
    BRANIN,
    HARTMANN6,
    ZDT1,
    Problem,
    TabulatedProblem,
    TwoObjectiveProblem,
)
from benchmarks.report import format_ms, marker, replace_section, section_pattern
from medtune.plugins.searchers.hyperband import bracket_plan
from medtune.pruners import History
from medtune.search.objectives import Objectives, hypervolume
from medtune.search.space import Categorical, Float, Int, Ordinal, SearchSpace

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "BENCHMARKS.md"
SECTION = "search"
PARTS = ("latency", "quality", "finite", "pruning", "pareto")
TARGETS = (0.01, 0.001)  # relative distance to the minimum: |f - f*| <= target |f*|
R = 27  # full budget (epochs) of the multi-fidelity benchmark
ETA = 3
TABLE_SEED = 0  # seed of the tabulated losses (the searchers' seeds are 0 .. seeds - 1)
WORKERS = 4  # asynchronous workers of the pruning part

NOT_INSTALLED = "not installed"
NOT_AVAILABLE = "not available"
QUICK_SKIP = "not measured (quick run)"
MODEL_BASED = ("bayes", "bohb", "GPSampler")  # left out of quick runs but for the latency


@dataclass(frozen=True)
class Settings:
    """Sizes of one run; :data:`FULL` by default, :data:`QUICK` with ``--quick``."""

    seeds: int
    latency_sizes: tuple[int, ...]
    latency_repetitions: int  # ask + tell timings per size for medtune
    optuna_repetitions: int  # the same for Optuna, whose asks take seconds at n = 2000
    max_optuna_n: int | None
    branin_budget: int
    hartmann_budget: int
    finite_budget: int
    iterations: int  # Hyperband iterations of the multi-fidelity benchmark
    model_based: bool  # run the GP searchers (bayes, bohb, GPSampler) outside the latency part
    threads: int | None  # torch threads (None: torch's choice)
    horizon: float  # simulated time of each run of the pruning part (one epoch: one unit)
    pareto_seeds: int
    pareto_budgets: tuple[int, ...]  # evaluations at which the pareto part reads hypervolumes


FULL = Settings(
    seeds=20, latency_sizes=(100, 300, 1000, 2000), latency_repetitions=7, optuna_repetitions=3,
    max_optuna_n=None, branin_budget=60, hartmann_budget=150, finite_budget=300, iterations=4,
    model_based=True, threads=None, horizon=1000, pareto_seeds=10, pareto_budgets=(60, 120),
)
QUICK = Settings(
    seeds=2, latency_sizes=(20, 50), latency_repetitions=2, optuna_repetitions=2,
    max_optuna_n=None, branin_budget=30, hartmann_budget=30, finite_budget=40, iterations=1,
    model_based=False, threads=1, horizon=120, pareto_seeds=2, pareto_budgets=(10, 20),
)

_START = time.perf_counter()


def _progress(message: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


# -- what is installed ------------------------------------------------------------------------
def _optuna() -> Any | None:
    """The optuna module, quietened (logging and ExperimentalWarning), or None if missing."""
    try:
        import optuna
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _searcher_names() -> set[str]:
    """Names of the registered searchers."""
    return set(medtune.available("searcher"))


def _searcher_factory(name: str) -> Callable[..., Any]:
    """The registered factory (class) of the searcher ``name``."""
    from medtune.registry import registry

    return registry().get("searcher", name).factory


def _bohb_modes() -> list[str | None]:
    """The ``mode`` values to run bohb with: every one its module lists in ``MODES`` when it
    takes a ``mode`` option, else only its default (None)."""
    factory = _searcher_factory("bohb")
    if "mode" not in inspect.signature(factory).parameters:
        return [None]
    return list(getattr(inspect.getmodule(factory), "MODES", [None]))


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


# -- running a searcher -----------------------------------------------------------------------
@dataclass
class Trace:
    """One search: the values told, in evaluation order, and the ask + tell time of each."""

    values: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def evaluations_until(self, threshold: float) -> int | None:
        """Evaluations until a value <= ``threshold`` was told (None: never)."""
        for count, value in enumerate(self.values, start=1):
            if value <= threshold:
                return count
        return None

    def best_after(self, evaluations: int) -> float:
        return min(self.values[:evaluations])


Objective = Callable[[Mapping[str, Any]], float]


def run_medtune(
    name: str, space: Mapping[str, Any], seed: int, budget: int, objective: Objective,
    stop_at: float, options: Mapping[str, Any] | None = None,
) -> Trace:
    """``budget`` evaluations of a medtune searcher (full budget each), ask then tell; stops
    early once a value <= ``stop_at`` was told."""
    searcher = _searcher_factory(name)(space=space, seed=seed, direction="minimize",
                                       **(options or {}))
    trace = Trace()
    while len(trace.values) < budget and not searcher.finished:
        start = time.perf_counter()
        suggestion = searcher.ask()
        asked = time.perf_counter() - start
        if suggestion is None:
            raise RuntimeError(f"{name}: ask() returned None with nothing pending")
        value = objective(suggestion.config)
        start = time.perf_counter()
        searcher.tell(suggestion, value)
        trace.seconds.append(asked + time.perf_counter() - start)
        trace.values.append(value)
        if value <= stop_at:
            break
    return trace


def _optuna_space(space: SearchSpace) -> tuple[dict[str, Any], Callable]:
    """Optuna distributions of a space without conditions, and the function that turns a
    trial's parameters into a medtune configuration (ordinal values are suggested by index, so
    that Optuna keeps their order)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    distributions: dict[str, Any] = {}
    ordinals: dict[str, tuple[Any, ...]] = {}
    for parameter in space.parameters:
        if parameter.condition is not None:
            raise ValueError(f"{parameter.name}: conditional parameters have no Optuna form here")
        if isinstance(parameter, Float):
            distributions[parameter.name] = FloatDistribution(
                parameter.low, parameter.high, log=parameter.log
            )
        elif isinstance(parameter, Int):
            distributions[parameter.name] = IntDistribution(
                parameter.low, parameter.high, log=parameter.log
            )
        elif isinstance(parameter, Ordinal):
            distributions[parameter.name] = IntDistribution(0, len(parameter.values) - 1)
            ordinals[parameter.name] = parameter.values
        elif isinstance(parameter, Categorical):
            distributions[parameter.name] = CategoricalDistribution(parameter.choices)

    def to_config(params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: ordinals[name][value] if name in ordinals else value
            for name, value in params.items()
        }

    return distributions, to_config


def run_optuna(
    sampler: Any, space: Mapping[str, Any], budget: int, objective: Objective, stop_at: float
) -> Trace:
    """``budget`` trials of an Optuna sampler through ``study.ask`` / ``study.tell``; stops
    early once a value <= ``stop_at`` was told. Every trial counts, repeated ones too."""
    optuna = _optuna()
    distributions, to_config = _optuna_space(SearchSpace.from_dict(space))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    trace = Trace()
    while len(trace.values) < budget:
        start = time.perf_counter()
        trial = study.ask(distributions)
        asked = time.perf_counter() - start
        value = objective(to_config(trial.params))
        start = time.perf_counter()
        study.tell(trial, value)
        trace.seconds.append(asked + time.perf_counter() - start)
        trace.values.append(value)
        if value <= stop_at:
            break
    return trace


@dataclass(frozen=True)
class Method:
    """A searcher to compare: ``run(space, seed, budget, objective, stop_at) -> Trace``, or
    ``missing`` saying why it cannot run."""

    label: str
    run: Callable[..., Trace] | None
    missing: str | None = None


def _medtune_method(name: str, names: set[str]) -> Method:
    if name not in names:
        return Method(f"medtune {name}", None, NOT_AVAILABLE)
    return Method(
        f"medtune {name}",
        lambda space, seed, budget, objective, stop_at: run_medtune(
            name, space, seed, budget, objective, stop_at
        ),
    )


def _optuna_method(sampler: str) -> Method:
    optuna = _optuna()
    if optuna is None:
        return Method(f"Optuna {sampler}", None, NOT_INSTALLED)
    return Method(
        f"Optuna {sampler}",
        lambda space, seed, budget, objective, stop_at: run_optuna(
            getattr(optuna.samplers, sampler)(seed=seed), space, budget, objective, stop_at
        ),
    )


@dataclass
class Outcome:
    """A method's traces over the seeds, or why it has none."""

    method: Method
    traces: list[Trace] = field(default_factory=list)
    problem: str | None = None  # not installed, not available, not measured (...), failed: ...


def _run_seeds(
    method: Method, seeds: int, what: str, describe: Callable[[Trace], str], **arguments: Any
) -> Outcome:
    outcome = Outcome(method, problem=method.missing)
    if method.run is None:
        _progress(f"{what}, {method.label}: {method.missing}")
        return outcome
    for seed in range(seeds):
        start = time.perf_counter()
        try:
            trace = method.run(seed=seed, **arguments)
        except Exception as exc:  # one broken method must not lose the others' results
            traceback.print_exc()
            outcome.problem = f"failed: {type(exc).__name__}: {exc}"
            outcome.traces = []
            _progress(f"{what}, {method.label}, seed {seed}: {outcome.problem}")
            return outcome
        outcome.traces.append(trace)
        _progress(f"{what}, {method.label}, seed {seed + 1}/{seeds}: {describe(trace)} "
                  f"({time.perf_counter() - start:.1f} s)")
    return outcome


# -- part (a): suggestion latency -------------------------------------------------------------
@dataclass
class LatencyRow:
    n: int
    medtune_ms: list[float] | None = None
    refit_ms: float | None = None
    optuna_ms: list[float] | None = None


@dataclass
class LatencyResult:
    rows: list[LatencyRow]
    medtune_problem: str | None  # why medtune bayes has no numbers
    optuna_problem: str | None
    filled_by: str  # how medtune got its n observations
    botorch: str
    repetitions: tuple[int, int]  # timed calls per size: medtune, Optuna


def _random_points(rng: np.random.Generator, count: int) -> tuple[list[dict], list[float]]:
    configs = [{f"x{i}": float(v) for i, v in enumerate(row)} for row in rng.random((count, 6))]
    return configs, [HARTMANN6.objective(config) for config in configs]


def add_observations(searcher: Any, count: int, rng: np.random.Generator) -> str:
    """Give ``searcher`` ``count`` more Hartmann-6 observations; returns how, for the report.

    This is where a bulk warm start plugs in. A searcher with ``warm_start(configs, values)``
    is first asked and told normally through its random initial phase (its ``n_initial``
    asks, so that the timed asks are model-based), then gets the rest at once as uniformly
    random points. Any other searcher is asked and told ``count`` times (its own suggestions,
    with their true values), which takes minutes at n = 2000.
    """
    bulk = hasattr(searcher, "warm_start")
    one_by_one = min(count, max(0, getattr(searcher, "n_initial", 0) - searcher.asked)) if bulk \
        else count
    for _ in range(one_by_one):
        suggestion = searcher.ask()
        searcher.tell(suggestion, HARTMANN6.objective(suggestion.config))
    if count > one_by_one:
        searcher.warm_start(*_random_points(rng, count - one_by_one))
    if bulk:
        return ("its random initial phase asked and told, the rest given at once with "
                "`warm_start(configs, values)` as uniformly random points")
    return "asked and told one by one (the searcher has no bulk `warm_start`)"


def _time_ask_tell(searcher: Any) -> float:
    """Milliseconds of one ``ask()`` + ``tell()`` (the objective's evaluation not counted)."""
    start = time.perf_counter()
    suggestion = searcher.ask()
    asked = time.perf_counter() - start
    value = HARTMANN6.objective(suggestion.config)
    start = time.perf_counter()
    searcher.tell(suggestion, value)
    return 1e3 * (asked + time.perf_counter() - start)


def _medtune_latency(settings: Settings, rows: list[LatencyRow]) -> str:
    """Fills ``medtune_ms`` (and ``refit_ms`` if the searcher has a ``refit()``): one
    searcher, grown from size to size; returns how it got its observations."""
    searcher = _searcher_factory("bayes")(space=HARTMANN6.space, seed=0, direction="minimize")
    rng = np.random.default_rng(0)
    told = 0
    filled_by = ""
    refit = getattr(searcher, "refit", None)
    for position, row in enumerate(rows):
        _progress(f"latency: medtune bayes, adding observations up to n = {row.n}")
        filled_by = add_observations(searcher, max(0, row.n - told), rng)
        told = row.n
        if position == 0:
            _time_ask_tell(searcher)  # warm-up: first calls import, compile, allocate
            told += 1
        if refit is not None:
            start = time.perf_counter()
            refit()
            row.refit_ms = 1e3 * (time.perf_counter() - start)
        row.medtune_ms = [_time_ask_tell(searcher) for _ in range(settings.latency_repetitions)]
        told += settings.latency_repetitions
        _progress(f"latency: medtune bayes at n = {row.n}: "
                  f"{statistics.median(row.medtune_ms):.1f} ms per ask + tell")
    return filled_by


def _optuna_latency(optuna: Any, settings: Settings, rows: list[LatencyRow]) -> None:
    """Fills ``optuna_ms``: for each n, a study of n completed random trials, then asks."""
    from optuna.distributions import FloatDistribution

    distributions = {f"x{i}": FloatDistribution(0.0, 1.0) for i in range(6)}
    rng = np.random.default_rng(0)
    for position, row in enumerate(rows):
        if settings.max_optuna_n is not None and row.n > settings.max_optuna_n:
            continue
        _progress(f"latency: Optuna GPSampler at n = {row.n}")
        study = optuna.create_study(direction="minimize",
                                    sampler=optuna.samplers.GPSampler(seed=0))
        configs, values = _random_points(rng, row.n)
        study.add_trials([
            optuna.trial.create_trial(params=config, distributions=distributions, value=value)
            for config, value in zip(configs, values)
        ])

        def ask_tell() -> float:
            start = time.perf_counter()
            trial = study.ask(distributions)
            asked = time.perf_counter() - start
            value = HARTMANN6.objective(trial.params)
            start = time.perf_counter()
            study.tell(trial, value)
            return 1e3 * (asked + time.perf_counter() - start)

        if position == 0:
            ask_tell()  # warm-up
        row.optuna_ms = [ask_tell() for _ in range(settings.optuna_repetitions)]
        _progress(f"latency: Optuna GPSampler at n = {row.n}: "
                  f"{statistics.median(row.optuna_ms):.0f} ms per ask + tell")


def run_latency(settings: Settings) -> LatencyResult:
    rows = [LatencyRow(n) for n in settings.latency_sizes]
    medtune_problem = optuna_problem = None
    filled_by = ""
    if "bayes" not in _searcher_names():
        medtune_problem = NOT_AVAILABLE
    else:
        try:
            filled_by = _medtune_latency(settings, rows)
        except Exception as exc:
            traceback.print_exc()
            medtune_problem = f"failed: {type(exc).__name__}: {exc}"
    optuna = _optuna()
    if optuna is None:
        optuna_problem = NOT_INSTALLED
    else:
        try:
            _optuna_latency(optuna, settings, rows)
        except Exception as exc:
            traceback.print_exc()
            optuna_problem = f"failed: {type(exc).__name__}: {exc}"
    if importlib.util.find_spec("botorch") is None:
        botorch_text = "not installed, not measured"
    else:
        botorch_text = "installed, not measured by this benchmark"
    return LatencyResult(rows, medtune_problem, optuna_problem, filled_by, botorch_text,
                         (settings.latency_repetitions, settings.optuna_repetitions))


# -- part (b): search quality on Branin and Hartmann-6 ---------------------------------------
@dataclass
class QualityResult:
    problem: Problem
    budget: int
    seeds: int
    outcomes: list[Outcome]


def _methods(settings: Settings, medtune_names: Sequence[str],
             optuna_samplers: Sequence[str]) -> list[Method]:
    """The methods to compare, medtune's first; in a quick run the model-based ones
    (:data:`MODEL_BASED`, seconds per suggestion) are left out."""
    names = _searcher_names()
    methods = [_medtune_method(name, names) for name in medtune_names]
    methods += [_optuna_method(sampler) for sampler in optuna_samplers]
    return [
        Method(method.label, None, QUICK_SKIP)
        if not settings.model_based and method.run is not None
        and method.label.split()[-1] in MODEL_BASED else method
        for method in methods
    ]


def _threshold(problem: Problem, target: float) -> float:
    return problem.minimum + target * abs(problem.minimum)


def run_quality(settings: Settings) -> list[QualityResult]:
    results = []
    for problem, budget in ((BRANIN, settings.branin_budget),
                            (HARTMANN6, settings.hartmann_budget)):
        thresholds = [_threshold(problem, target) for target in TARGETS]

        def describe(trace: Trace) -> str:
            reached = [trace.evaluations_until(t) for t in thresholds]
            return ", ".join(f"{100 * target:g} % after {_count(count, budget)}"
                             for target, count in zip(TARGETS, reached))

        outcomes = [
            _run_seeds(method, settings.seeds, f"quality: {problem.name}", describe,
                       space=problem.space, budget=budget, objective=problem.objective,
                       stop_at=thresholds[-1])
            for method in _methods(settings, ("bayes", "random"), ("GPSampler", "TPESampler"))
        ]
        results.append(QualityResult(problem, budget, settings.seeds, outcomes))
    return results


# -- part (c): the tabulated finite space -----------------------------------------------------
@dataclass
class MultiFidelityTrace:
    """One multi-fidelity search: resource spent until a top-1 % configuration was trained at
    the full budget, and the best final loss after each Hyperband iteration's worth."""

    resource_to_top: float | None
    best_after_iteration: list[float]


@dataclass
class MultiFidelityOutcome:
    label: str
    traces: list[MultiFidelityTrace] = field(default_factory=list)
    problem: str | None = None
    full_budget_only: bool = False


@dataclass
class FiniteResult:
    table: TabulatedProblem
    budget: int
    seeds: int
    iterations: int
    iteration_resource: float
    correlations: dict[float, float]
    full: list[Outcome]
    multi: list[MultiFidelityOutcome]


def run_multi_fidelity(
    name: str, table: TabulatedProblem, seed: int, iterations: int,
    options: Mapping[str, Any] | None = None,
) -> MultiFidelityTrace:
    """A Hyperband-like searcher on ``table``, ask then tell, for ``iterations`` iterations.

    Every evaluation costs its resource (a promoted configuration is trained again from
    scratch). The best final loss is read whenever the resource spent passes a multiple of one
    Hyperband iteration's budget (exactly its end, for Hyperband itself).
    """
    searcher = _searcher_factory(name)(space=table.space(), seed=seed, direction="minimize",
                                       R=R, eta=ETA, iterations=iterations, **(options or {}))
    per_iteration = sum(plan.budget for plan in bracket_plan(R, ETA))
    spent, best, to_top = 0.0, math.inf, None
    checkpoints: list[float] = []
    while not searcher.finished:
        suggestion = searcher.ask()
        if suggestion is None:
            raise RuntimeError(f"{name}: ask() returned None with nothing pending")
        resource = R if suggestion.resource is None else suggestion.resource
        value = table.loss(suggestion.config, resource)
        searcher.tell(suggestion, value)
        spent += resource
        if resource >= R:
            best = min(best, value)
            if to_top is None and value <= table.top_percent_loss:
                to_top = spent
        while len(checkpoints) < iterations and spent >= per_iteration * (len(checkpoints) + 1):
            checkpoints.append(best)
    checkpoints += [best] * (iterations - len(checkpoints))
    return MultiFidelityTrace(to_top, checkpoints)


def _multi_fidelity_outcome(
    label: str, name: str, table: TabulatedProblem, settings: Settings,
    options: Mapping[str, Any] | None = None,
) -> MultiFidelityOutcome:
    outcome = MultiFidelityOutcome(label)
    for seed in range(settings.seeds):
        start = time.perf_counter()
        try:
            trace = run_multi_fidelity(name, table, seed, settings.iterations, options)
        except Exception as exc:
            traceback.print_exc()
            outcome.problem = f"failed: {type(exc).__name__}: {exc}"
            outcome.traces = []
            _progress(f"finite: {label}, seed {seed}: {outcome.problem}")
            return outcome
        outcome.traces.append(trace)
        top = "never" if trace.resource_to_top is None else f"{trace.resource_to_top:g}"
        _progress(f"finite: {label}, seed {seed + 1}/{settings.seeds}: top 1 % at R after "
                  f"{top} resource, best rank {table.rank(trace.best_after_iteration[-1])} "
                  f"({time.perf_counter() - start:.1f} s)")
    return outcome


def _from_full_budget(
    outcome: Outcome, table: TabulatedProblem, iterations: int, iteration_resource: float
) -> MultiFidelityOutcome:
    """A full-budget searcher's runs read as multi-fidelity ones: each evaluation costs R."""
    converted = MultiFidelityOutcome(f"{outcome.method.label}, full budget only",
                                     problem=outcome.problem, full_budget_only=True)
    for trace in outcome.traces:
        found_best = trace.values[-1] <= table.best_loss
        count = trace.evaluations_until(table.top_percent_loss)
        bests = []
        for iteration in range(1, iterations + 1):
            evaluations = int(iteration * iteration_resource // R)
            if evaluations > len(trace.values) and not found_best:
                bests.append(math.nan)  # beyond the budget of the full-fidelity run
            else:
                bests.append(trace.best_after(evaluations))
        converted.traces.append(MultiFidelityTrace(None if count is None else count * R, bests))
    return converted


def run_finite(settings: Settings) -> FiniteResult:
    from scipy.stats import spearmanr

    table = TabulatedProblem(seed=TABLE_SEED, R=R)
    correlations = {
        resource: float(spearmanr(table.losses_at(resource), table.final, axis=None)[0])
        for resource in (1, 3, 9)
    }
    methods = _methods(settings, ("bayes", "random"), ("TPESampler",))
    budget = settings.finite_budget

    def describe(trace: Trace) -> str:
        return (f"top 1 % after {_count(trace.evaluations_until(table.top_percent_loss), budget)}, "
                f"best after {_count(trace.evaluations_until(table.best_loss), budget)}")

    full = [
        _run_seeds(method, settings.seeds, "finite", describe, space=table.space(),
                   budget=budget, objective=table.loss, stop_at=table.best_loss)
        for method in methods
    ]

    iteration_resource = sum(plan.budget for plan in bracket_plan(R, ETA))
    multi = [_multi_fidelity_outcome("medtune hyperband (random proposals)", "hyperband",
                                     table, settings)]
    if "bohb" not in _searcher_names():
        multi.append(MultiFidelityOutcome("medtune bohb", problem=NOT_AVAILABLE))
    elif not settings.model_based:
        multi.append(MultiFidelityOutcome("medtune bohb", problem=QUICK_SKIP))
    else:
        for mode in _bohb_modes():
            label = "medtune bohb" if mode is None else f"medtune bohb, mode={mode}"
            options = None if mode is None else {"mode": mode}
            multi.append(_multi_fidelity_outcome(label, "bohb", table, settings, options))
    multi += [_from_full_budget(outcome, table, settings.iterations, iteration_resource)
              for outcome in full if outcome.method.label in ("medtune bayes", "medtune random")]
    return FiniteResult(table, budget, settings.seeds, settings.iterations, iteration_resource,
                        correlations, full, multi)


# -- part (d): pruning with asynchronous workers, on a simulated clock ------------------------
@dataclass
class SimulatedRun:
    """One simulated search by :data:`WORKERS` workers up to the horizon: when a top-1 %
    configuration was first trained at R, the final losses trained at R with their times, and
    the worker time spent training."""

    time_to_top: float | None
    finals: list[tuple[float, float]]  # (simulated time, final loss) of each trial trained at R
    busy: float  # worker time spent training, up to the horizon
    trials: int
    pruned: int

    def best_by(self, time: float) -> float:
        """The best final loss trained at R by ``time`` (inf: none)."""
        return min((loss for at, loss in self.finals if at <= time), default=math.inf)


class _Workers:
    """The simulated clock: jobs run on :data:`WORKERS` workers, each taking its duration in
    time units; events (a job's end, or a trial's end of epoch) are handled in time order,
    ties in start order."""

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self.now = 0.0
        self.free = WORKERS
        self.busy = 0.0
        self._events: list[tuple[float, int, Any]] = []
        self._order = 0

    def start(self, duration: float, job: Any) -> None:
        """Occupy a free worker with ``job`` for ``duration`` time units."""
        self.free -= 1
        self.at(self.now + duration, job)

    def at(self, time: float, job: Any) -> None:
        """The busy worker running ``job`` reaches its next event at ``time``."""
        self.busy += min(time, self.horizon) - min(self.now, self.horizon)
        heapq.heappush(self._events, (time, self._order, job))
        self._order += 1

    def next(self) -> Any | None:
        """The next event's job (the clock moves to it), or None past the horizon."""
        if not self._events or self._events[0][0] > self.horizon:
            return None
        self.now, _, job = heapq.heappop(self._events)
        return job


def _trained(run: SimulatedRun, table: TabulatedProblem, time: float, loss: float) -> None:
    run.finals.append((time, loss))
    if run.time_to_top is None and loss <= table.top_percent_loss:
        run.time_to_top = time


def simulate_hyperband(table: TabulatedProblem, seed: int, horizon: float, *,
                       overlap_brackets: bool, resume: bool) -> SimulatedRun:
    """medtune's ``hyperband`` (random proposals, R, eta) driven by the workers: a free worker
    asks; when ``ask()`` returns None (a rung waits for its results) it stays idle until the
    next result. An evaluation at resource r takes r time units, or r minus the resource of the
    evaluation it was promoted from with ``resume`` (training continued from a checkpoint)."""
    searcher = _searcher_factory("hyperband")(
        space=table.space(), seed=seed, direction="minimize", R=R, eta=ETA, iterations=None,
        overlap_brackets=overlap_brackets)
    workers = _Workers(horizon)
    run = SimulatedRun(None, [], 0.0, 0, 0)
    resources: dict[int, float] = {}
    while True:
        while workers.free and not searcher.finished:
            suggestion = searcher.ask()
            if suggestion is None:
                break
            resource = R if suggestion.resource is None else suggestion.resource
            resources[suggestion.id] = resource
            before = resources.get(suggestion.tag.get("promoted_from"), 0.0) if resume else 0.0
            workers.start(resource - before, suggestion)
            run.trials += 1
        suggestion = workers.next()
        if suggestion is None:
            break
        workers.free += 1
        resource = resources[suggestion.id]
        value = table.loss(suggestion.config, resource)
        searcher.tell(suggestion, value)
        if resource >= R:
            _trained(run, table, workers.now, value)
    run.busy = workers.busy
    return run


def simulate_pruned(table: TabulatedProblem, seed: int, horizon: float,
                    pruner: tuple[str, Mapping[str, Any]] | None) -> SimulatedRun:
    """medtune's ``random`` searcher with a pruner (name, options; None: no pruning) driven by
    the workers: each trial trains epoch by epoch up to R, reporting its loss after each epoch
    (one time unit); the pruner judges each report before R against every report so far
    (:class:`medtune.pruners.History`), and a pruned trial's worker asks for the next."""
    searcher = _searcher_factory("random")(space=table.space(), seed=seed, direction="minimize")
    rule = None if pruner is None else medtune.create("pruner", pruner[0], direction="minimize",
                                                      **pruner[1])
    history = History()
    workers = _Workers(horizon)
    run = SimulatedRun(None, [], 0.0, 0, 0)
    steps: dict[int, int] = {}
    while True:
        while workers.free and not searcher.finished:
            suggestion = searcher.ask()
            steps[suggestion.id] = 0
            workers.start(1, suggestion)
            run.trials += 1
        suggestion = workers.next()
        if suggestion is None:
            break
        step = steps[suggestion.id] = steps[suggestion.id] + 1
        value = table.loss(suggestion.config, step)
        history.record(suggestion.id, step, value)
        if step >= R:
            history.complete(suggestion.id)
            _trained(run, table, workers.now, value)
        elif rule is None or rule.should_prune(suggestion.id, step, value, history) is None:
            workers.at(workers.now + 1, suggestion)
            continue
        else:
            run.pruned += 1
        searcher.tell(suggestion, value)  # a pruned trial is told its last value, as in a study
        workers.free += 1
    run.busy = workers.busy
    return run


#: (label, simulate(table, seed, horizon)) of the pruning part's methods, in table order
PRUNING_METHODS: tuple[tuple[str, Callable[[TabulatedProblem, int, float], SimulatedRun]], ...] = (
    ("hyperband, synchronous brackets (overlap_brackets = false), retrain",
     lambda t, s, h: simulate_hyperband(t, s, h, overlap_brackets=False, resume=False)),
    ("hyperband, synchronous brackets, resume promoted trials",
     lambda t, s, h: simulate_hyperband(t, s, h, overlap_brackets=False, resume=True)),
    ("hyperband, overlapping brackets (default), retrain",
     lambda t, s, h: simulate_hyperband(t, s, h, overlap_brackets=True, resume=False)),
    ("random + asha pruner (min_resource = 1, eta = 3)",
     lambda t, s, h: simulate_pruned(t, s, h, ("asha", {"min_resource": 1, "eta": ETA}))),
    ("random + median pruner (n_startup_trials = 5)",
     lambda t, s, h: simulate_pruned(t, s, h, ("median", {"n_startup_trials": 5}))),
    ("random + median pruner (n_startup_trials = 5, n_warmup_steps = 9)",
     lambda t, s, h: simulate_pruned(t, s, h, ("median", {"n_startup_trials": 5,
                                                         "n_warmup_steps": 9}))),
    ("random, no pruning", lambda t, s, h: simulate_pruned(t, s, h, None)),
)


@dataclass
class PruningResult:
    table: TabulatedProblem
    seeds: int
    horizon: float
    checkpoints: tuple[float, ...]
    runs: dict[str, list[SimulatedRun] | str]  # label -> runs, or why none


def run_pruning(settings: Settings) -> PruningResult:
    table = TabulatedProblem(seed=TABLE_SEED, R=R)
    runs: dict[str, list[SimulatedRun] | str] = {}
    names = _searcher_names()
    for label, simulate in PRUNING_METHODS:
        needed = "hyperband" if label.startswith("hyperband") else "random"
        if needed not in names:
            runs[label] = NOT_AVAILABLE
            continue
        runs[label] = []
        for seed in range(settings.seeds):
            start = time.perf_counter()
            try:
                run = simulate(table, seed, settings.horizon)
            except Exception as exc:
                traceback.print_exc()
                runs[label] = f"failed: {type(exc).__name__}: {exc}"
                break
            runs[label].append(run)
            top = "never" if run.time_to_top is None else f"{run.time_to_top:g}"
            _progress(f"pruning: {label}, seed {seed + 1}/{settings.seeds}: top 1 % at R at "
                      f"time {top}, {run.trials} trials, {run.pruned} pruned "
                      f"({time.perf_counter() - start:.1f} s)")
    checkpoints = tuple(settings.horizon * f for f in (0.125, 0.25, 0.5, 1.0))
    return PruningResult(table, settings.seeds, settings.horizon, checkpoints, runs)


# -- part (e): two objectives, hypervolume after N evaluations --------------------------------
TWO_OBJECTIVES = Objectives(("first", "second"), ("minimize", "minimize"))


def run_medtune_pareto(name: str, problem: TwoObjectiveProblem, seed: int, budget: int,
                       options: Mapping[str, Any]) -> list[tuple[float, float]]:
    """``budget`` evaluations of a medtune searcher told both objectives, ask then tell."""
    searcher = _searcher_factory(name)(space=problem.space, seed=seed, objectives=TWO_OBJECTIVES,
                                       **options)
    points: list[tuple[float, float]] = []
    while len(points) < budget and not searcher.finished:
        suggestion = searcher.ask()
        if suggestion is None:
            raise RuntimeError(f"{name}: ask() returned None with nothing pending")
        point = problem.objectives(suggestion.config)
        searcher.tell(suggestion, point)
        points.append(point)
    return points


def run_optuna_pareto(sampler: Any, problem: TwoObjectiveProblem,
                      budget: int) -> list[tuple[float, float]]:
    """``budget`` trials of an Optuna sampler on a two-direction study, ask then tell."""
    optuna = _optuna()
    distributions, to_config = _optuna_space(SearchSpace.from_dict(problem.space))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    points: list[tuple[float, float]] = []
    while len(points) < budget:
        trial = study.ask(distributions)
        point = problem.objectives(to_config(trial.params))
        study.tell(trial, list(point))
        points.append(point)
    return points


@dataclass(frozen=True)
class ParetoMethod:
    """``run(problem, seed, budget) -> points``, or ``missing`` saying why it cannot run."""

    label: str
    run: Callable[[TwoObjectiveProblem, int, int], list[tuple[float, float]]] | None
    missing: str | None = None


def _pareto_methods(settings: Settings, budget: int) -> list[ParetoMethod]:
    names = _searcher_names()
    medtune_runs = (
        ("medtune random", "random", {}),
        ("medtune evolution (NSGA-II, population 20)", "evolution",
         {"algorithm": "nsga2", "population": 20, "budget": budget}),
        ("medtune bayes (ParEGO)", "bayes", {}),
    )
    methods = []
    for label, name, options in medtune_runs:
        if name not in names:
            methods.append(ParetoMethod(label, None, NOT_AVAILABLE))
        elif name == "bayes" and not settings.model_based:
            methods.append(ParetoMethod(label, None, QUICK_SKIP))
        else:
            methods.append(ParetoMethod(label, lambda problem, seed, budget, name=name,
                                        options=options: run_medtune_pareto(
                                            name, problem, seed, budget, options)))
    optuna = _optuna()
    optuna_runs = (
        ("Optuna NSGAIISampler (population 50, its default)", "NSGAIISampler", {}),
        ("Optuna NSGAIISampler (population 20)", "NSGAIISampler", {"population_size": 20}),
        ("Optuna TPESampler", "TPESampler", {}),
    )
    for label, sampler, options in optuna_runs:
        if optuna is None:
            methods.append(ParetoMethod(label, None, NOT_INSTALLED))
            continue
        methods.append(ParetoMethod(label, lambda problem, seed, budget, sampler=sampler,
                                    options=options: run_optuna_pareto(
                                        getattr(optuna.samplers, sampler)(seed=seed, **options),
                                        problem, budget)))
    return methods


@dataclass
class ParetoOutcome:
    label: str
    hypervolumes: list[list[float]] = field(default_factory=list)  # per seed, per budget
    seconds: list[float] = field(default_factory=list)  # per seed: search time / evaluation
    problem: str | None = None


@dataclass
class ParetoResult:
    problem: TwoObjectiveProblem
    budgets: tuple[int, ...]
    seeds: int
    outcomes: list[ParetoOutcome]


def run_pareto(settings: Settings) -> list[ParetoResult]:
    table = TabulatedProblem(seed=TABLE_SEED, R=R)
    budget = max(settings.pareto_budgets)
    results = []
    for problem in (ZDT1, table.two_objectives()):
        outcomes = []
        for method in _pareto_methods(settings, budget):
            outcome = ParetoOutcome(method.label, problem=method.missing)
            outcomes.append(outcome)
            if method.run is None:
                continue
            for seed in range(settings.pareto_seeds):
                start = time.perf_counter()
                try:
                    points = method.run(problem, seed, budget)
                except Exception as exc:
                    traceback.print_exc()
                    outcome.problem = f"failed: {type(exc).__name__}: {exc}"
                    outcome.hypervolumes = []
                    break
                elapsed = time.perf_counter() - start
                volumes = [hypervolume(np.asarray(points[:n]), problem.reference)
                           for n in settings.pareto_budgets]
                outcome.hypervolumes.append(volumes)
                outcome.seconds.append(elapsed / len(points))
                _progress(f"pareto: {problem.name}, {method.label}, seed {seed + 1}/"
                          f"{settings.pareto_seeds}: hypervolume {volumes[-1]:.4g} after "
                          f"{budget} ({elapsed:.1f} s)")
        results.append(ParetoResult(problem, settings.pareto_budgets, settings.pareto_seeds,
                                    outcomes))
    return results


# -- markdown ---------------------------------------------------------------------------------
def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _count(count: float | None, limit: float) -> str:
    return f"> {_number(limit)}" if count is None or math.isinf(count) else _number(count)


def _summary(counts: Sequence[float | None], limit: float) -> list[str]:
    """Median, worst (``> limit`` when some never got there) and ``reached/total``."""
    values = [math.inf if c is None else float(c) for c in counts]
    reached = sum(1 for v in values if not math.isinf(v))
    return [_count(statistics.median(values), limit), _count(max(values), limit),
            f"{reached}/{len(values)}"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _unmeasured(label: str, problem: str, columns: int) -> list[str]:
    return [label] + [problem] * (columns - 1)


def render_latency(result: LatencyResult) -> list[str]:
    lines = [
        "### Suggestion latency (Hartmann-6)",
        "",
        "Time of one `ask()` + `tell()` (the objective's evaluation not counted) once the "
        "searcher holds n observations; medtune's bayes searcher is grown from one size to the "
        "next, Optuna gets a fresh study of n completed random trials (`study.add_trials`) per "
        "size, timed with `study.ask(distributions)` + `study.tell`. One warm-up call at the "
        "first size. Refit: one call of the searcher's `refit()` (hyper-parameter fit and "
        "factorisation from scratch) per size, before the timed calls; medtune's searcher "
        "refits on a schedule, so the timed calls show the cost between refits. Speed-up = "
        "Optuna's median / medtune's median: the ratio is the point, "
        "absolute times on a shared machine are noisy.",
        "",
    ]
    if result.filled_by:
        lines += [f"medtune's observations: {result.filled_by}.", ""]
    lines += [f"BoTorch: {result.botorch}.", ""]
    header = ["observations n", "medtune bayes ask+tell, median ms", "medtune bayes, slowest ms",
              "medtune bayes refit ms", "Optuna GPSampler ask+tell, median ms",
              "speed-up (Optuna / medtune)"]
    rows = []
    for row in result.rows:
        if result.medtune_problem:
            medtune = [result.medtune_problem] * 3
        else:
            medtune = [format_ms(statistics.median(row.medtune_ms)), format_ms(max(row.medtune_ms)),
                       format_ms(row.refit_ms) if row.refit_ms is not None else "not exposed"]
        if result.optuna_problem:
            optuna = result.optuna_problem
        elif row.optuna_ms is None:
            optuna = "not measured (above --max-optuna-n)"
        else:
            optuna = format_ms(statistics.median(row.optuna_ms))
        if result.medtune_problem or row.optuna_ms is None or result.optuna_problem:
            speedup = "n/a"
        else:
            ratio = statistics.median(row.optuna_ms) / statistics.median(row.medtune_ms)
            speedup = f"{ratio:.1f}×"
        rows.append([str(row.n), *medtune, optuna, speedup])
    lines += _table(header, rows)
    medtune, optuna = result.repetitions
    lines += ["", f"Timed calls per size: medtune {medtune}, Optuna {optuna}."]
    return lines


def _evaluation_rows(outcomes: list[Outcome], thresholds: Sequence[float], budget: int,
                     extra: Callable[[Outcome], list[str]] | None = None) -> list[list[str]]:
    rows = []
    columns = 1 + 3 * len(thresholds) + (1 if extra else 0)
    for outcome in outcomes:
        if outcome.problem:
            rows.append(_unmeasured(outcome.method.label, outcome.problem, columns))
            continue
        cells = [outcome.method.label]
        for threshold in thresholds:
            cells += _summary([trace.evaluations_until(threshold) for trace in outcome.traces],
                              budget)
        if extra:
            cells += extra(outcome)
        rows.append(cells)
    return rows


def render_quality(results: list[QualityResult]) -> list[str]:
    lines = [
        "### Search quality: evaluations to get near the minimum",
        "",
        "Each searcher minimises the function from seeds 0 .. seeds - 1 and stops at the "
        "budget or once within 0.1 %. A count is the number of evaluations until the best "
        "value found is within 1 % (or 0.1 %) of the minimum f*, i.e. f - f* <= 0.01 |f*|; "
        "\"> budget\" when it never got there. Median and worst over the seeds, and how many "
        "seeds got there. Optuna trials that repeat a point count as evaluations.",
    ]
    for result in results:
        thresholds = [_threshold(result.problem, target) for target in TARGETS]
        header = ["method"]
        for target in TARGETS:
            percent = f"{100 * target:g} %"
            header += [f"within {percent}: median", f"within {percent}: worst",
                       f"within {percent}: seeds"]
        lines += ["", f"#### {result.problem.title}", "",
                  f"Budget {result.budget} evaluations, {_plural(result.seeds, 'seed')}.", ""]
        lines += _table(header, _evaluation_rows(result.outcomes, thresholds, result.budget))
    return lines


def render_finite(result: FiniteResult) -> list[str]:
    table = result.table
    correlations = ", ".join(f"r = {resource}: {value:.2f}"
                             for resource, value in result.correlations.items())
    lines = [
        "### Finite space: 34,300 tabulated configurations",
        "",
        f"`benchmarks.functions.TabulatedProblem(seed={table.seed})`: 5 parameters "
        f"({' × '.join(map(str, table.shape))} = {table.size:,} configurations), a final "
        "validation loss from a smooth function of the parameters plus seeded noise, and a "
        f"learning-curve term that vanishes at R = {R} epochs. Spearman rank correlation of "
        f"the loss after r epochs with the final loss: {correlations}. Best final loss "
        f"{table.best_loss:.4f}; a top-1 % configuration has a final loss <= "
        f"{table.top_percent_loss:.4f}.",
        "",
        "#### Full-budget searchers",
        "",
        f"Every evaluation at the full budget R; budget {result.budget} evaluations (the "
        f"search of Bertrand2019, sec. 2.6.3 trained 300), {_plural(result.seeds, 'seed')}, "
        "stopped once the best configuration is found; Optuna trials that repeat a "
        "configuration count as evaluations. Ask + tell time: median over every suggestion of "
        "every seed (medtune bayes scores every untested configuration at each ask).",
        "",
    ]
    header = ["method", "best: median", "best: worst", "best: seeds", "top 1 %: median",
              "top 1 %: worst", "top 1 %: seeds", "ask+tell ms (median)"]

    def speed(outcome: Outcome) -> list[str]:
        seconds = [s for trace in outcome.traces for s in trace.seconds]
        return [format_ms(1e3 * statistics.median(seconds))]

    lines += _table(header, _evaluation_rows(
        result.full, [table.best_loss, table.top_percent_loss], result.budget, speed))
    limit = result.iterations * result.iteration_resource
    lines += [
        "",
        "#### Multi-fidelity searchers",
        "",
        f"Hyperband brackets with R = {R}, eta = {ETA}, "
        f"{_plural(result.iterations, 'iteration')} of {result.iteration_resource:g} resource "
        f"units (epochs) each, {_plural(result.seeds, 'seed')}. "
        "Every evaluation costs its resource (a promoted configuration trains again from "
        "scratch). \"Resource to top 1 %\": epochs spent until a top-1 % configuration has "
        "been evaluated at the full budget R. \"Best rank after i\": rank (1 = best of "
        f"{table.size:,}) of the best configuration evaluated at R once i iterations' worth of "
        "resource was spent, median / worst over the seeds. The full-budget rows re-read the "
        f"runs above, each evaluation costing R = {R}.",
        "",
    ]
    header = ["method", "resource to top 1 %: median", "worst", "seeds"]
    header += [f"best rank after {i} ({i * result.iteration_resource:g})"
               for i in range(1, result.iterations + 1)]
    rows = []
    for outcome in result.multi:
        if outcome.problem:
            rows.append(_unmeasured(outcome.label, outcome.problem, len(header)))
            continue
        cells = [outcome.label]
        cells += _summary([trace.resource_to_top for trace in outcome.traces],
                          result.budget * R if outcome.full_budget_only else limit)
        for i in range(result.iterations):
            bests = [trace.best_after_iteration[i] for trace in outcome.traces]
            if any(math.isnan(best) for best in bests):
                cells.append("not measured (budget)")
                continue
            ranks = [table.rank(best) for best in bests]
            cells.append(f"{_number(statistics.median(ranks))} / {max(ranks)}")
        rows.append(cells)
    lines += _table(header, rows)
    return lines


def _rank_cell(table: TabulatedProblem, bests: Sequence[float]) -> str:
    """``median / worst`` rank of the best losses; ``none`` where no trial was trained at R."""
    ranks = [math.inf if math.isinf(best) else table.rank(best) for best in bests]

    def text(rank: float) -> str:
        return "none" if math.isinf(rank) else _number(rank)

    return f"{text(statistics.median(ranks))} / {text(max(ranks))}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or not denominator or math.isinf(numerator) \
            or math.isinf(denominator):
        return "n/a"
    return f"{numerator / denominator:.2f}×"


def render_pruning(result: PruningResult) -> list[str]:
    table = result.table
    lines = [
        f"### Pruning with {WORKERS} asynchronous workers (simulated clock)",
        "",
        f"The table above (R = {R}), searched by {WORKERS} workers on a simulated clock: one "
        "epoch of one trial takes one time unit, whatever the configuration, and asking, "
        "telling and judging take none. The real searchers and pruners run through their "
        "public APIs (`ask`/`tell`, `Pruner.should_prune` on a `medtune.pruners.History` of "
        "every report so far, in time order); a free worker asks at once. Hyperband (random "
        f"proposals, eta = {ETA}): an evaluation at resource r takes r time units (\"retrain\", "
        "as medtune's study runner trains a promoted configuration again), or r minus the "
        "resource it was promoted from (\"resume\", training continued from a checkpoint); "
        "when `ask()` returns None (a rung waits for its results and, with synchronous "
        "brackets, the next bracket waits for the current one) the worker idles until the next "
        "result. With a pruner, each trial of the random searcher trains epoch by epoch up to "
        "R and reports its loss after each epoch; a pruned trial's worker asks for the next "
        f"configuration at once. Each run lasts {result.horizon:g} time units "
        f"({WORKERS * result.horizon:g} worker-epochs), {_plural(result.seeds, 'seed')} "
        "(the searchers' seeds; the table is the same). \"Time to top 1 %\": time until a "
        f"top-1 % configuration (final loss <= {table.top_percent_loss:.4f}) was trained at R, "
        "median / worst over the seeds. \"Best rank by t\": rank (1 = best of "
        f"{table.size:,}) of the best configuration trained at R by time t, median / worst "
        f"(\"none\": no trial trained at R yet); every row has {WORKERS} workers, so equal time "
        "is equal worker time, and for the rows that never idle equal epochs. Idle share: "
        "worker time not training over the run, median.",
        "",
    ]
    header = ["method", "time to top 1 %: median", "worst", "seeds"]
    header += [f"best rank by t = {c:g}" for c in result.checkpoints]
    header += ["idle share", "trials (median)", "pruned (median)"]
    rows = []
    medians: dict[str, float | None] = {}
    for label, runs in result.runs.items():
        if isinstance(runs, str):
            rows.append(_unmeasured(label, runs, len(header)))
            medians[label] = None
            continue
        times = [math.inf if r.time_to_top is None else r.time_to_top for r in runs]
        medians[label] = statistics.median(times)
        cells = [label, *_summary([r.time_to_top for r in runs], result.horizon)]
        cells += [_rank_cell(table, [r.best_by(c) for r in runs]) for c in result.checkpoints]
        idle = statistics.median(1 - r.busy / (WORKERS * result.horizon) for r in runs)
        cells += [f"{100 * idle:.1f} %", _number(statistics.median(r.trials for r in runs)),
                  _number(statistics.median(r.pruned for r in runs))]
        rows.append(cells)
    lines += _table(header, rows)
    labels = [label for label, _ in PRUNING_METHODS]
    sync, asha, median, none = labels[0], labels[3], labels[4], labels[-1]
    lines += ["", "Targets:", ""]
    lines.append(f"- ASHA against synchronous Hyperband (retrain), median time to a top-1 % "
                 f"configuration at R: {_ratio(medians.get(asha), medians.get(sync))} "
                 f"(against \"resume\": {_ratio(medians.get(asha), medians.get(labels[1]))}).")
    median_runs, none_runs = result.runs.get(median), result.runs.get(none)
    if isinstance(median_runs, list) and isinstance(none_runs, list):
        for checkpoint in result.checkpoints:
            pruned = [r.best_by(checkpoint) for r in median_runs]
            plain = [r.best_by(checkpoint) for r in none_runs]
            better = sum(a < b for a, b in zip(pruned, plain))
            ties = sum(a == b for a, b in zip(pruned, plain))
            lines.append(
                f"- Median pruning (n_startup_trials = 5) against no pruning, best final loss "
                f"by t = {checkpoint:g} ({WORKERS * checkpoint:g} epochs each), median "
                f"{_loss(statistics.median(pruned))} against {_loss(statistics.median(plain))}; "
                f"lower with pruning on {better} of {len(pruned)} seeds (same seed, "
                f"{ties} ties).")
    return lines


def _loss(value: float) -> str:
    return "none" if math.isinf(value) else f"{value:.4f}"


def render_pareto(results: list[ParetoResult]) -> list[str]:
    lines = [
        "### Two objectives: hypervolume after N evaluations",
        "",
        "Each method minimises both objectives from seeds 0 .. seeds - 1 for the largest N, "
        "ask then tell, one evaluation at a time; the hypervolume (`medtune.search.objectives."
        "hypervolume`, exact) of the first N points w.r.t. the fixed reference point is read at "
        "each N. Median (and lowest) over the seeds, the median as a percentage of the best "
        "hypervolume any set of points reaches (the true front's), and the median against "
        "Optuna's NSGAIISampler with its default population (the target: at least 1.00×). "
        "Optuna gets ordinal parameters as integer indices. Time: search time per evaluation "
        "(ask + tell + the cheap objective), median over the seeds.",
    ]
    for result in results:
        problem = result.problem
        lines += ["", f"#### {problem.title}", "",
                  f"Best hypervolume {problem.best_hypervolume:.4g}; "
                  f"{_plural(result.seeds, 'seed')}.", ""]
        header = ["method"]
        for n in result.budgets:
            header += [f"after {n}: median (lowest)", f"after {n}: % of best",
                       f"after {n}: vs Optuna NSGA-II"]
        header.append("ms per evaluation")
        reference = next((o for o in result.outcomes if o.label.startswith(
            "Optuna NSGAIISampler (population 50") and not o.problem), None)
        rows = []
        for outcome in result.outcomes:
            if outcome.problem:
                rows.append(_unmeasured(outcome.label, outcome.problem, len(header)))
                continue
            cells = [outcome.label]
            for position, _ in enumerate(result.budgets):
                volumes = [v[position] for v in outcome.hypervolumes]
                median = statistics.median(volumes)
                cells += [f"{median:.4g} ({min(volumes):.4g})",
                          f"{100 * median / problem.best_hypervolume:.1f} %"]
                cells.append("n/a" if reference is None else _ratio(
                    median, statistics.median(v[position] for v in reference.hypervolumes)))
            cells.append(format_ms(1e3 * statistics.median(outcome.seconds)))
            rows.append(cells)
        lines += _table(header, rows)
    return lines


def _machine_rows(command: str, threads: int | None) -> list[tuple[str, str]]:
    from medtune.kernels import select

    rows = [row for row in machine.describe("cpu", command, ROOT, threads)
            if row[0] != "medtune backends"]
    rows.append(("medtune backends",
                 f"gp_acquisition: {select('gp_acquisition', 'cpu').backend}, "
                 f"chol_append: {select('chol_append', 'cpu').backend}"))
    rows.append(("medtune searchers", ", ".join(sorted(_searcher_names()))))
    for distribution in ("optuna", "greenlet", "botorch"):
        rows.append((distribution, _version(distribution)))
    if rows[-2][1] == NOT_INSTALLED and rows[-3][1] != NOT_INSTALLED:
        rows[-2] = ("greenlet", f"{NOT_INSTALLED} (Optuna's GPSampler then optimises its "
                    "acquisition function from each start in turn, more slowly)")
    return rows


def render_section(header: list[str], parts: Mapping[str, str]) -> str:
    """The whole search section: ``header`` lines, then each part's markdown (already
    between its own markers) in :data:`PARTS` order."""
    body = [marker(SECTION, "begin"), *header, ""]
    for part in PARTS:
        if part in parts:
            body += [parts[part], ""]
    body.append(marker(SECTION, "end"))
    return "\n".join(body)


def render_part(part: str, measured: str, lines: list[str]) -> str:
    name = f"{SECTION}:{part}"
    return "\n".join([marker(name, "begin"), *lines, "", measured, marker(name, "end")])


def _header(machine_rows: list[tuple[str, str]], quick: bool) -> list[str]:
    lines = [
        "## Search: quality and suggestion latency",
        "",
        "Written by `python -m benchmarks.search` (options: `--help`); rerun it instead of "
        "editing. A run replaces the parts it ran (`--parts`) and keeps the others; the table "
        "below describes the latest run, and each part says which run measured it.",
        "",
    ]
    if quick:
        lines += ["**Quick run** (`--quick`): few seeds and small budgets, for smoke tests; "
                  "the numbers say nothing about the searchers.", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {item} | {value} |" for item, value in machine_rows]
    return lines


def write(path: Path, header: list[str], parts: Mapping[str, str]) -> str:
    """Write the search section into ``path``: replaces the section if there is one (keeping
    the parts of it not in ``parts``), else appends it; the rest of the file is kept as is.
    Returns the section written."""
    previous = path.read_text() if path.exists() else ""
    found = section_pattern(SECTION).search(previous)
    merged = dict(parts)
    if found:
        for part in PARTS:
            old = section_pattern(f"{SECTION}:{part}").search(found.group(0))
            if part not in merged and old:
                merged[part] = old.group(0)
    section = render_section(header, merged)
    text = replace_section(previous, SECTION, section)
    path.write_text(text)
    return section


# -- command line -----------------------------------------------------------------------------
def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure the suggestion latency and search quality of medtune's searchers "
        "(and its pruners, on a simulated clock) against Optuna and write the search section "
        "of BENCHMARKS.md. A full run takes about 50 minutes on two cores.",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="few seeds, small budgets and sizes, and the GP searchers (bayes, bohb, "
        "GPSampler) only in the latency part: a smoke test, well under a minute; writes a "
        "file only with --output",
    )
    parser.add_argument(
        "--output", type=Path, default=None,
        help=f"markdown file to write (default: {DEFAULT_OUTPUT.name} at the repository root, "
        "except with --quick); only the search section is replaced",
    )
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run (default: {','.join(PARTS)})")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per method in the quality, finite and pruning parts "
                        f"(default: {FULL.seeds}, quick: {QUICK.seeds})")
    parser.add_argument("--pareto-seeds", type=int, default=None,
                        help=f"seeds per method in the pareto part (default: {FULL.pareto_seeds}"
                        f", quick: {QUICK.pareto_seeds})")
    parser.add_argument("--horizon", type=float, default=None,
                        help="simulated time units of each run of the pruning part (default: "
                        f"{FULL.horizon:g}, quick: {QUICK.horizon:g})")
    parser.add_argument("--latency-sizes", default=None,
                        help="comma-separated observation counts n of the latency part (default: "
                        f"{','.join(map(str, FULL.latency_sizes))})")
    parser.add_argument("--max-optuna-n", type=int, default=None,
                        help="time Optuna's GPSampler only up to this many observations "
                        "(its asks take seconds at n = 2000)")
    parser.add_argument("--branin-budget", type=int, default=None,
                        help=f"evaluations per Branin search (default: {FULL.branin_budget})")
    parser.add_argument("--hartmann-budget", type=int, default=None,
                        help=f"evaluations per Hartmann-6 search (default: {FULL.hartmann_budget})")
    parser.add_argument("--finite-budget", type=int, default=None,
                        help="evaluations per full-budget search of the finite space "
                        f"(default: {FULL.finite_budget})")
    parser.add_argument("--iterations", type=int, default=None,
                        help="Hyperband iterations in the finite part "
                        f"(default: {FULL.iterations})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads, for medtune's and Optuna's GP searchers alike "
                        "(default: torch's choice; quick: 1, steadier on a shared machine)")
    return parser


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    for name in ("seeds", "branin_budget", "hartmann_budget", "finite_budget", "iterations",
                 "max_optuna_n", "threads", "pareto_seeds", "horizon"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
            changes[name] = value
    if args.latency_sizes is not None:
        try:
            sizes = tuple(int(part) for part in args.latency_sizes.split(",") if part.strip())
        except ValueError:
            parser.error(f"--latency-sizes: expected comma-separated integers, got "
                         f"{args.latency_sizes!r}")
        if not sizes or any(size < 1 for size in sizes) or list(sizes) != sorted(set(sizes)):
            parser.error("--latency-sizes: expected increasing integers >= 1")
        changes["latency_sizes"] = sizes
    return replace(settings, **changes)


def _parts(parser: argparse.ArgumentParser, text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in PARTS]
    if unknown or not chosen:
        parser.error(f"--parts: expected some of {', '.join(PARTS)}, got {text!r}")
    return [part for part in PARTS if part in chosen]


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.search") -> int:
    """Run the search benchmarks; returns the exit status."""
    parser = _parser(prog)
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(arguments)
    settings = _settings(parser, args)
    parts = _parts(parser, args.parts)
    command = " ".join([prog, *map(shlex.quote, arguments)])
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        machine_rows = _machine_rows(command, settings.threads)
        foreign = machine.ForeignLoad()
        rendered = {}
        for part in parts:
            start = time.perf_counter()
            if part == "latency":
                lines = render_latency(run_latency(settings))
            elif part == "quality":
                lines = render_quality(run_quality(settings))
            elif part == "finite":
                lines = render_finite(run_finite(settings))
            elif part == "pruning":
                lines = render_pruning(run_pruning(settings))
            else:
                lines = render_pareto(run_pareto(settings))
            date = dict(machine_rows)["date"]
            measured = (f"Measured by `{command}` on {date} in "
                        f"{time.perf_counter() - start:.0f} s.")
            rendered[part] = render_part(part, measured, lines)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (tests)
    machine_rows.append(("load average at end (1, 5, 15 min)", machine.load_average()))
    machine_rows.append(("CPU time used by other processes during the run", foreign.describe()))
    header = _header(machine_rows, args.quick)

    output = args.output if args.output is not None else (None if args.quick else DEFAULT_OUTPUT)
    if output is not None:
        print(write(output, header, rendered))
        _progress(f"wrote {output}")
    else:
        print(render_section(header, rendered))
        _progress("quick run: nothing written (pass --output PATH to keep the report)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
