"""Optuna's samplers behind medtune's ask/tell: the ``optuna`` searcher (Optuna is the optional
extra ``medtune[optuna]``).

The searcher keeps an in-memory Optuna study and drives it with Optuna's own ask/tell: each
:meth:`~medtune.search.Searcher.ask` is one ``study.ask()`` whose parameters are suggested in
the space's order (a conditional parameter only when it is active, so Optuna sees medtune's
conditions as a define-by-run space), and each ``tell`` is one ``study.tell``. So a study keeps
medtune's store, executors, tasks, resume and reports, and proposals come from Optuna's
samplers: ``sampler = "tpe"`` (default), ``"cmaes"``, ``"nsga2"``, ``"qmc"`` or ``"gp"``; every
other option is the sampler's own (``n_startup_trials = 5`` becomes
``TPESampler(n_startup_trials=5, seed=...)``).

The mapping of the space: a float is a ``FloatDistribution`` (log scale kept), an int an
``IntDistribution`` (log scale kept), a categorical a ``CategoricalDistribution``, and an
ordinal an ``IntDistribution`` over the *indices* of its values, so that samplers that model
order (TPE, CMA-ES, GP) use it. Where a sampler cannot model a parameter (CMA-ES a categorical
one; CMA-ES, GP and QMC one that a condition makes appear and disappear), Optuna draws it with
the sampler's independent (random) sampler; its warning about this, once per trial, is off
unless ``warn_independent_sampling = true``.

Policies stay medtune's: the base class turns values into scores (lower is better), so the
Optuna study always minimises the score; a failure excluded by ``on_failure = "exclude"`` is an
Optuna FAIL trial, a penalised one a COMPLETE trial valued at the penalty's score. The
sampler is seeded from the searcher's seed (QMC uses it only with ``scramble = true``), so its
suggestions are a deterministic function of the seed and of the calls, as resume needs.
Several objectives become the Optuna study's several directions (each a score to minimise);
every sampler but ``"cmaes"`` handles them. Constraints reach samplers that take a
``constraints_func`` (``"tpe"``, ``"nsga2"``, ``"gp"``) as Optuna's constraint values (the
amount by which each bound is broken; <= 0 is feasible). Optuna may propose a configuration
twice; the search never ends by itself (give the study ``n_trials`` or the searcher
``max_trials``).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from medtune.errors import MedtuneError
from medtune.search.searcher import Proposal, Searcher, SearcherError, Suggestion, split_options
from medtune.search.space import Categorical, Float, Int, Ordinal, Parameter, SearchSpace

#: ``sampler`` names and the Optuna sampler class each builds.
SAMPLERS = {
    "tpe": "TPESampler",
    "cmaes": "CmaEsSampler",
    "nsga2": "NSGAIISampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
}

#: The module a sampler needs besides Optuna and medtune's own dependencies.
SAMPLER_NEEDS = {"cmaes": "cmaes"}

#: What to install for this searcher.
INSTALL = "pip install 'medtune[optuna]'"


def import_optuna(who: str, error: type[MedtuneError] = SearcherError) -> Any:
    """The ``optuna`` module; ``error`` saying that ``who`` needs it and how to install it
    when it is missing."""
    try:
        return importlib.import_module("optuna")
    except ImportError:
        raise error(f"{who} needs Optuna, which is not installed: {INSTALL}") from None


@contextlib.contextmanager
def quiet_optuna(optuna: Any) -> Iterator[None]:
    """Optuna's logging at WARNING (no "A new study created" or per-trial INFO lines) and its
    experimental-feature warnings silenced, for the duration; the previous settings after."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _suggester(parameter: Parameter) -> Callable[[Any], Any]:
    """``suggest(trial) -> value``: one parameter drawn by an Optuna trial (see the module
    docstring for the mapping)."""
    name = parameter.name
    if isinstance(parameter, Float):
        low, high, log = parameter.low, parameter.high, bool(parameter.log)
        return lambda trial: trial.suggest_float(name, low, high, log=log)
    if isinstance(parameter, Int):
        low_int, high_int, log = parameter.low, parameter.high, bool(parameter.log)
        return lambda trial: trial.suggest_int(name, low_int, high_int, log=log)
    if isinstance(parameter, Ordinal):
        values, last = parameter.values, len(parameter.values) - 1
        return lambda trial: values[trial.suggest_int(name, 0, last)]
    if isinstance(parameter, Categorical):
        choices = tuple(parameter.choices)
        return lambda trial: trial.suggest_categorical(name, choices)
    raise SearcherError(f"optuna: parameter {name!r} is a {type(parameter).__name__}, which "
                        "has no Optuna distribution here")


def sampler_options(sampler: str, optuna: Any) -> list[str]:
    """The options the Optuna sampler ``sampler`` takes from a configuration (its keyword
    arguments but ``seed``, which the searcher gives)."""
    factory = getattr(optuna.samplers, SAMPLERS[sampler])
    return [name for name, parameter in inspect.signature(factory).parameters.items()
            if name != "seed" and parameter.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                      inspect.Parameter.POSITIONAL_OR_KEYWORD)]


class OptunaSearcher(Searcher):
    """An Optuna sampler behind medtune's ask/tell; see the module docstring.

    Args:
        sampler: ``"tpe"`` (default), ``"cmaes"``, ``"nsga2"``, ``"qmc"`` or ``"gp"``.
        **options: the :class:`~medtune.search.Searcher` arguments, and the sampler's own
            keyword arguments (all but ``seed``), passed on unchanged.

    Attributes:
        study: the in-memory Optuna study (its trials in ask order, valued by score); read it,
            but ask and tell the searcher, not the study.
        sampler_options: the keyword arguments the sampler was built with, besides ``seed``.

    Raises:
        SearcherError: Optuna (or a package the sampler needs) is not installed, the sampler
            is unknown, or an option is not one the sampler takes; the message says the fix.
    """

    name = "optuna"
    multi_objective = True

    def __init__(self, space: SearchSpace | Mapping[str, Any], *, sampler: str = "tpe",
                 **options: Any) -> None:
        shared, own = split_options(options)
        super().__init__(space, **shared)
        if not isinstance(sampler, str) or sampler not in SAMPLERS:
            close = difflib.get_close_matches(str(sampler), list(SAMPLERS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SearcherError(f"optuna: sampler must be one of {', '.join(SAMPLERS)}, got "
                                f"{sampler!r}{hint}")
        optuna = import_optuna("the optuna searcher")
        module = SAMPLER_NEEDS.get(sampler)
        if module is not None:
            try:
                importlib.import_module(module)
            except ImportError:
                raise SearcherError(f"optuna: sampler {sampler!r} needs the {module} package, "
                                    f"which is not installed: {INSTALL}") from None
        if sampler == "cmaes" and self.objectives.multi:
            raise SearcherError("optuna: sampler \"cmaes\" optimises one objective; for several "
                                "use \"tpe\", \"nsga2\", \"qmc\" or \"gp\"")
        accepted = sampler_options(sampler, optuna)
        for option in own:
            if option not in accepted:
                close = difflib.get_close_matches(option, accepted, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SearcherError(f"optuna: sampler {sampler!r} has no option {option!r}"
                                    f"{hint}; it takes {', '.join(accepted)}")
        factory = getattr(optuna.samplers, SAMPLERS[sampler])
        warns = inspect.signature(factory).parameters.get("warn_independent_sampling")
        if warns is not None and warns.default is True:  # a warning per trial, off unless asked
            own.setdefault("warn_independent_sampling", False)
        constraints = len(self.objectives.constraints)
        if constraints and "constraints_func" in inspect.signature(factory).parameters:
            own.setdefault("constraints_func", lambda trial: trial.user_attrs.get(
                "medtune_constraints", [0.0] * constraints))
        self.sampler = sampler
        self.sampler_options = dict(own)
        self._optuna = optuna
        self._suggesters = [(p.name, bool(p.condition), _suggester(p))
                            for p in self.space.parameters]
        with quiet_optuna(optuna):
            try:
                built = factory(seed=self.seed % 2**32, **own)
            except (TypeError, ValueError) as exc:
                raise SearcherError(f"optuna: sampler {sampler!r}: {exc}") from None
            # the scores (one per objective), each minimised
            self.study = optuna.create_study(
                sampler=built, directions=["minimize"] * len(self.objectives.names))
        self._trials: dict[int, Any] = {}  # suggestion id -> its Optuna trial, until told

    def _propose(self) -> Proposal:
        trial = self.study.ask()
        config: dict[str, Any] = {}
        for name, conditional, suggest in self._suggesters:
            if not conditional or self.space.is_active(name, config):
                config[name] = suggest(trial)
        self._trials[self._next_id] = trial  # the id ask() gives this proposal
        return Proposal(config)

    def _observe_constraints(self, suggestion: Suggestion, values: tuple[float, ...]) -> None:
        self._trials[suggestion.id].set_user_attr("medtune_constraints", [
            -c.slack(v) for c, v in zip(self.objectives.constraints, values)])

    def _observe(self, suggestion: Suggestion, score: Any, failed: bool) -> None:
        trial = self._trials.pop(suggestion.id)
        if score is None:  # an excluded failure
            self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, list(score) if isinstance(score, tuple) else score)
