"""Search spaces: typed hyper-parameters, conditions, and the operations searchers build on.

A :class:`SearchSpace` holds parameters of four kinds (Bertrand2019, sec. 2.1, defined in
:mod:`medtune.search.parameters` and importable from here too): :class:`Float`, :class:`Int`,
:class:`Ordinal` and :class:`Categorical`.

Any parameter may carry a ``condition`` ``{parent: [values]}``: it is *active* only when every
named parent is active and takes one of the listed values (e.g. ``beta2`` only for
``loss = "glf"``). A configuration is a plain ``dict`` holding exactly the active parameters;
inactive ones are absent. Values are plain Python scalars, so configurations serialise to JSON
and :meth:`SearchSpace.key` gives a canonical string to store and deduplicate them.

A space without floats is finite: it can be counted (:meth:`SearchSpace.size`), enumerated in
nested-loop order (the first parameter varies slowest) and sampled without replacement
(:class:`UniqueSampler`). :meth:`SearchSpace.neighbours` and :meth:`SearchSpace.mutate` are the
moves of greedy local search (Pourchot2022, ch. 4.3.3) and of the (1+1)-ES (Pourchot2022,
ch. 5.3.4).

Every parameter's prior is uniform over its range (log-uniform with ``log=True``); a
conditional parameter is drawn only when it is active. On a space with uniform priors and no
conditions, the prior is uniform over configurations, which is what the random-search theory
of Bertrand2019 (sec. 2.4.1) assumes (see :mod:`medtune.search.theory`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from medtune.search.parameters import (
    PARAMETER_TYPES,
    Categorical,
    DiscreteParameter,
    Float,
    Int,
    Ordinal,
    Parameter,
    Scalar,
    SearchSpaceError,
    parameter_from_dict,
)

__all__ = [
    "EXACT_SAMPLING_LIMIT",
    "PARAMETER_TYPES",
    "Categorical",
    "DiscreteParameter",
    "Float",
    "Int",
    "Ordinal",
    "Parameter",
    "Scalar",
    "SearchSpace",
    "SearchSpaceError",
    "UniqueSampler",
]

#: above this many configurations, a space is never materialised to sample without replacement
EXACT_SAMPLING_LIMIT = 200_000


class SearchSpace:
    """An ordered set of parameters, with conditions; see the module docstring.

    Parameters are kept in declaration order, except that a conditional parameter is moved
    after the parents its condition names (:attr:`names` gives the resulting order, which is
    also the nested-loop order of :meth:`enumerate`).
    """

    def __init__(self, parameters: Iterable[Parameter]) -> None:
        declared = list(parameters)
        by_name: dict[str, Parameter] = {}
        for parameter in declared:
            if not isinstance(parameter, Parameter):
                raise SearchSpaceError(
                    "a search space holds Float, Int, Ordinal or Categorical parameters, got "
                    f"{parameter!r}"
                )
            if parameter.name in by_name:
                raise SearchSpaceError("declared twice", parameter=parameter.name)
            by_name[parameter.name] = parameter
        if not by_name:
            raise SearchSpaceError("a search space needs at least one parameter")
        self._by_name = by_name
        # condition parents as {parent: set of value indices}
        self._conditions: dict[str, dict[str, frozenset[int]]] = {}
        for parameter in declared:
            self._conditions[parameter.name] = self._check_condition(parameter)
        self._parameters: tuple[Parameter, ...] = self._topological(declared)
        self._referenced = {p for c in self._conditions.values() for p in c}
        self._count_cache: dict[tuple, int] = {}

    def _check_condition(self, parameter: Parameter) -> dict[str, frozenset[int]]:
        if parameter.condition is None:
            return {}
        out = {}
        for parent_name, allowed in parameter.condition.items():
            field = f"condition.{parent_name}"
            if parent_name == parameter.name:
                raise SearchSpaceError("a parameter cannot be conditioned on itself",
                                       parameter=parameter.name, field=field)
            parent = self._by_name.get(parent_name)
            if parent is None:
                close = difflib.get_close_matches(parent_name, list(self._by_name), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SearchSpaceError(
                    f"names an unknown parameter {parent_name!r}{hint}; the space has "
                    f"{', '.join(map(repr, self._by_name))}",
                    parameter=parameter.name, field=field,
                )
            if not isinstance(parent, DiscreteParameter):
                raise SearchSpaceError(
                    f"{parent_name!r} is a float; conditions can only name int, ordinal or "
                    "categorical parameters",
                    parameter=parameter.name, field=field,
                )
            indices = set()
            for value in allowed:
                try:
                    indices.add(parent.index(value))
                except SearchSpaceError as error:
                    raise SearchSpaceError(error.detail, parameter=parameter.name,
                                           field=field) from None
            out[parent_name] = frozenset(indices)
        return out

    def _topological(self, declared: list[Parameter]) -> tuple[Parameter, ...]:
        placed: list[Parameter] = []
        done: set[str] = set()
        pending = list(declared)
        while pending:
            for parameter in pending:
                if all(parent in done for parent in self._conditions[parameter.name]):
                    placed.append(parameter)
                    done.add(parameter.name)
                    pending.remove(parameter)
                    break
            else:
                cycle = ", ".join(repr(p.name) for p in pending)
                raise SearchSpaceError(f"the conditions of {cycle} form a cycle; a parameter "
                                       "cannot depend, even indirectly, on itself")
        return tuple(placed)

    # -- description -----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Parameter names, parents before the parameters they condition."""
        return [p.name for p in self._parameters]

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        """The parameters, in :attr:`names` order."""
        return self._parameters

    def __getitem__(self, name: str) -> Parameter:
        try:
            return self._by_name[name]
        except KeyError:
            raise SearchSpaceError(
                f"no parameter {name!r}; the space has {', '.join(map(repr, self.names))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SearchSpace({list(self._parameters)!r})"

    @property
    def is_finite(self) -> bool:
        """True when every parameter is discrete (no float), so the space can be enumerated."""
        return all(isinstance(p, DiscreteParameter) for p in self._parameters)

    def is_active(self, name: str, config: Mapping[str, Any]) -> bool:
        """Whether parameter ``name`` is active given the (parent) values in ``config``."""
        for parent, allowed in self._conditions[name].items():
            if parent not in config:
                return False
            if self._by_name[parent].index(config[parent]) not in allowed:  # type: ignore[attr-defined]
                return False
        return True

    # -- configurations --------------------------------------------------------------------
    def validate(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` checked and normalised (ints as int, floats as float), in :attr:`names` order.

        Raises :class:`SearchSpaceError` naming the parameter that is unknown, missing, out of
        range, or present although its condition makes it inactive.
        """
        if not isinstance(config, Mapping):
            raise SearchSpaceError(f"a configuration is a mapping {{name: value}}, got {config!r}")
        unknown = [name for name in config if name not in self._by_name]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), list(self._by_name), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SearchSpaceError(
                f"not in the search space{hint}; the space has {', '.join(map(repr, self.names))}",
                parameter=str(unknown[0]),
            )
        out: dict[str, Any] = {}
        for parameter in self._parameters:
            name = parameter.name
            if self.is_active(name, out):
                if name not in config:
                    raise SearchSpaceError(f"missing{self._because(name, out)}", parameter=name)
                out[name] = parameter.normalize(config[name])
            elif name in config:
                raise SearchSpaceError(
                    f"must be absent: it is only active when {self._describe_condition(name)}, "
                    f"and {self._describe_values(name, out)}",
                    parameter=name,
                )
        return out

    def _because(self, name: str, config: Mapping[str, Any]) -> str:
        parents = self._conditions[name]
        if not parents:
            return ""
        return " (it is active because " + ", ".join(f"{p}={config[p]!r}" for p in parents) + ")"

    def _describe_condition(self, name: str) -> str:
        parameter = self._by_name[name]
        assert parameter.condition is not None
        return " and ".join(f"{p} is one of {list(v)!r}" for p, v in parameter.condition.items())

    def _describe_values(self, name: str, config: Mapping[str, Any]) -> str:
        return ", ".join(
            f"{p}={config[p]!r}" if p in config else f"{p} is inactive"
            for p in self._conditions[name]
        )

    def key(self, config: Mapping[str, Any]) -> str:
        """A canonical string for ``config``: sorted JSON of its normalised values.

        Equal configurations (``{"width": 16.0}`` and ``{"width": 16}`` for an int) get the
        same key; use it to deduplicate and to store configurations.
        """
        return self._key(self.validate(config))

    @staticmethod
    def _key(normalized: Mapping[str, Any]) -> str:
        return json.dumps(normalized, sort_keys=True, separators=(",", ":"), allow_nan=False)

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One configuration from the prior: each active parameter drawn in :attr:`names` order."""
        config: dict[str, Any] = {}
        for parameter in self._parameters:
            if self.is_active(parameter.name, config):
                config[parameter.name] = parameter.sample(rng)
        return config

    def probability(self, config: Mapping[str, Any]) -> float:
        """Prior probability of ``config`` (finite spaces only)."""
        self._require_finite("compute the probability of a configuration")
        config = self.validate(config)
        probability = 1.0
        for name, value in config.items():
            probability *= self._by_name[name].probability(value)  # type: ignore[attr-defined]
        return probability

    def _complete(
        self, config: Mapping[str, Any], fill: Callable[[Parameter], Any]
    ) -> dict[str, Any]:
        """``config`` made consistent with the conditions: parameters that became active take
        ``fill(parameter)``, those that became inactive are dropped."""
        out: dict[str, Any] = {}
        for parameter in self._parameters:
            if self.is_active(parameter.name, out):
                name = parameter.name
                out[name] = config[name] if name in config else fill(parameter)
        return out

    def neighbours(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Configurations one step from ``config``: one active parameter moved to an adjacent
        value (see each parameter kind); parameters this activates take their ``default``,
        those it deactivates are dropped. ``config`` itself is not included."""
        config = self.validate(config)
        out = []
        for name, value in config.items():
            for moved in self._by_name[name].neighbours(value):
                changed = dict(config)
                changed[name] = moved
                out.append(self._complete(changed, lambda p: p.default))
        return out

    def mutate(
        self,
        config: Mapping[str, Any],
        rate: float,
        rng: np.random.Generator,
        scale: float = 0.2,
    ) -> dict[str, Any]:
        """A child of ``config``: each active parameter is mutated with probability ``rate``.

        At least one parameter always changes (one is picked uniformly when none was drawn),
        so a child never repeats its parent unless no parameter can change. Numeric and
        ordinal parameters take a Gaussian step of standard deviation ``scale`` (a fraction
        of their (log-)range); categorical ones jump to another choice. Parameters that the
        mutation activates are drawn from their prior.
        """
        if not 0.0 <= rate <= 1.0:
            raise SearchSpaceError(f"a mutation rate is a probability in [0, 1], got {rate!r}")
        config = self.validate(config)
        candidates = [name for name in config if self._by_name[name].changeable]
        if not candidates:
            return dict(config)
        chosen = [name for name, u in zip(candidates, rng.random(len(candidates))) if u < rate]
        if not chosen:
            chosen = [candidates[int(rng.integers(len(candidates)))]]
        child = dict(config)
        for name in chosen:
            child[name] = self._by_name[name].mutate(config[name], rng, scale)
        return self._complete(child, lambda p: p.sample(rng))

    # -- finite spaces ---------------------------------------------------------------------
    def _require_finite(self, what: str) -> None:
        if not self.is_finite:
            floats = ", ".join(repr(p.name) for p in self._parameters if not p.discrete)
            raise SearchSpaceError(
                f"cannot {what}: the float parameter(s) {floats} make the space infinite; "
                "discretize them first (space.discretize(points), or the grid searcher's "
                "grid_points option)"
            )

    def size(self) -> int | None:
        """Number of distinct configurations, counting conditions; None for an infinite space."""
        if not self.is_finite:
            return None
        return self._count(0, ())

    def _count(self, start: int, assignment: tuple[tuple[str, int], ...]) -> int:
        """Configurations of parameters[start:] given the parents' value indices so far."""
        if start == len(self._parameters):
            return 1
        # only the parents that later parameters still look at matter for the count
        later = {p for q in self._parameters[start:] for p in self._conditions[q.name]}
        relevant = tuple((n, i) for n, i in assignment if n in later)
        memo_key = (start, relevant)
        if memo_key in self._count_cache:
            return self._count_cache[memo_key]
        parameter = self._parameters[start]
        assert isinstance(parameter, DiscreteParameter)
        if not self._active_by_index(parameter.name, dict(relevant)):
            total = self._count(start + 1, relevant)
        elif parameter.name not in later:
            total = parameter.count() * self._count(start + 1, relevant)
        else:
            total = sum(
                self._count(start + 1, relevant + ((parameter.name, i),))
                for i in range(parameter.count())
            )
        self._count_cache[memo_key] = total
        return total

    def _active_by_index(self, name: str, indices: Mapping[str, int]) -> bool:
        return all(
            parent in indices and indices[parent] in allowed
            for parent, allowed in self._conditions[name].items()
        )

    def enumerate(self) -> Iterator[dict[str, Any]]:
        """Every configuration once, in nested-loop order (the first parameter slowest).

        Raises :class:`SearchSpaceError` for a space with floats (see :meth:`discretize`).
        """
        self._require_finite("enumerate the space")
        return self._enumerate(0, {})

    def _enumerate(self, start: int, config: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if start == len(self._parameters):
            yield dict(config)
            return
        parameter = self._parameters[start]
        if not self.is_active(parameter.name, config):
            yield from self._enumerate(start + 1, config)
            return
        for value in parameter.domain():  # type: ignore[attr-defined]
            config[parameter.name] = value
            yield from self._enumerate(start + 1, config)
        del config[parameter.name]

    def sample_without_replacement(self, k: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``k`` distinct configurations drawn from the prior (see :class:`UniqueSampler`).

        Raises :class:`SearchSpaceError` when a finite space has fewer than ``k``.
        """
        size = self.size()
        if size is not None and k > size:
            raise SearchSpaceError(
                f"cannot draw {k} distinct configurations from a space of {size}"
            )
        sampler = UniqueSampler(self, rng)
        out = []
        for _ in range(k):
            config = sampler.draw()
            assert config is not None
            out.append(config)
        return out

    def discretize(self, points: int | Mapping[str, int]) -> SearchSpace:
        """This space with each float replaced by an ordinal of ``points`` evenly spaced values
        (geometrically spaced for ``log=True``), bounds included; ``points`` may be a mapping
        ``{float name: points}``. Other parameters are unchanged."""
        parameters: list[Parameter] = []
        for parameter in self._parameters:
            if not isinstance(parameter, Float):
                parameters.append(parameter)
                continue
            if isinstance(points, Mapping):
                if parameter.name not in points:
                    raise SearchSpaceError(
                        "is a float: give its number of grid points (points maps names of "
                        f"floats to counts and has only {list(points)!r})",
                        parameter=parameter.name,
                    )
                count = points[parameter.name]
            else:
                count = points
            if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 2:
                raise SearchSpaceError(
                    f"the number of grid points must be an integer >= 2, got {count!r}",
                    parameter=parameter.name,
                )
            spacing = np.geomspace if parameter.log else np.linspace
            values = [float(v) for v in spacing(parameter.low, parameter.high, int(count))]
            values[0], values[-1] = parameter.low, parameter.high
            parameters.append(Ordinal(parameter.name, values, condition=parameter.condition))
        return SearchSpace(parameters)

    # -- TOML form -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The TOML form: ``{name: {"type": ..., ...}}``, read back by :meth:`from_dict`."""
        return {p.name: p.to_dict() for p in self._parameters}

    @classmethod
    def from_dict(cls, table: Mapping[str, Any], *, where: str = "space") -> SearchSpace:
        """Parse the TOML form of a space.

        Example::

            {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
             "width": {"type": "ordinal", "values": [8, 16, 32]},
             "loss": {"type": "categorical", "choices": ["dice", "glf"]},
             "beta2": {"type": "float", "low": 0.5, "high": 2, "condition": {"loss": ["glf"]}}}

        Errors name the key path under ``where`` (e.g. ``search.space.lr.low``) and say what
        was expected.
        """
        if not isinstance(table, Mapping) or not table:
            raise SearchSpaceError(
                f"{where}: expected a non-empty table of parameters {{name = {{type = ...}}}}, "
                f"got {table!r}"
            )
        parameters = [parameter_from_dict(name, spec, where) for name, spec in table.items()]
        try:
            return cls(parameters)
        except SearchSpaceError as error:
            raise error.at(where) from None


class UniqueSampler:
    """Draws configurations from a space's prior, never the same one twice.

    Each draw is exactly the prior restricted to the configurations not seen yet (drawn here
    or recorded with :meth:`mark`): rejection sampling while unseen configurations are
    plentiful, then, on a finite space, an explicit weighted draw among the unseen ones. With
    uniform priors this is uniform sampling without replacement, as in Bertrand2019, eq. 2.20.
    """

    #: consecutive rejections after which a finite space switches to the explicit draw
    MAX_REJECTIONS = 32
    #: rejections after which an unenumerable space gives up with an error
    GIVE_UP = 100_000

    def __init__(self, space: SearchSpace, rng: np.random.Generator) -> None:
        self.space = space
        self.rng = rng
        self._seen: set[str] = set()
        self._size = space.size()
        self._explicit: list[tuple[str, dict[str, Any], float]] | None = None

    def mark(self, config: Mapping[str, Any]) -> str:
        """Record ``config`` as seen (it will not be drawn); returns its key."""
        key = self.space.key(config)
        self._seen.add(key)
        return key

    def seen(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` was drawn or marked."""
        return self.space.key(config) in self._seen

    @property
    def exhausted(self) -> bool:
        """True when a finite space has no unseen configuration left."""
        return self._size is not None and len(self._seen) >= self._size

    def draw(self) -> dict[str, Any] | None:
        """An unseen configuration, now marked as seen; None once a finite space is exhausted."""
        if self.exhausted:
            return None
        small = self._size is not None and self._size <= EXACT_SAMPLING_LIMIT
        if self._explicit is None and small and 2 * len(self._seen) >= self._size:
            self._start_explicit()
        if self._explicit is None:
            for attempt in range(self.GIVE_UP):
                config = self.space.sample(self.rng)
                key = SearchSpace._key(config)
                if key not in self._seen:
                    self._seen.add(key)
                    return config
                if small and attempt + 1 >= self.MAX_REJECTIONS:
                    self._start_explicit()
                    break
            else:
                raise SearchSpaceError(
                    f"no unseen configuration after {self.GIVE_UP} draws from the prior: almost "
                    "all its mass is on configurations already drawn"
                )
        return self._draw_explicit()

    def _start_explicit(self) -> None:
        space = self.space
        self._explicit = [
            (SearchSpace._key(config), config, space.probability(config))
            for config in space.enumerate()
        ]

    def _draw_explicit(self) -> dict[str, Any]:
        assert self._explicit is not None
        self._explicit = [item for item in self._explicit if item[0] not in self._seen]
        weights = np.cumsum([item[2] for item in self._explicit])
        position = int(np.searchsorted(weights, self.rng.random() * weights[-1], side="right"))
        key, config, _ = self._explicit[min(position, len(self._explicit) - 1)]
        self._seen.add(key)
        return dict(config)
