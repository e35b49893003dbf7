"""Search spaces: typed hyper-parameters, conditions, and the operations searchers build on.

A :class:`SearchSpace` holds parameters of four kinds (seed 004, sec. 2.1):

- :class:`Float` (linear or log scale), :class:`Int` (inclusive bounds, linear or log scale),
- :class:`Ordinal` (an ordered list of values: neighbours are the adjacent values),
- :class:`Categorical` (unordered choices: every other choice is a neighbour).

Any parameter may carry a ``condition`` ``{parent: [values]}``: it is *active* only when every
named parent is active and takes one of the listed values (e.g. ``beta2`` only for
``loss = "glf"``). A configuration is a plain ``dict`` holding exactly the active parameters;
inactive ones are absent. Values are plain Python scalars, so configurations serialise to JSON
and :meth:`SearchSpace.key` gives a canonical string to store and deduplicate them.

A space without floats is finite: it can be counted (:meth:`SearchSpace.size`), enumerated in
nested-loop order (the first parameter varies slowest) and sampled without replacement
(:class:`UniqueSampler`). :meth:`SearchSpace.neighbours` and :meth:`SearchSpace.mutate` are the
moves of greedy local search (seed 001, ch. 4.3.3) and of the (1+1)-ES (seed 001, ch. 5.3.4).

Every parameter's prior is uniform over its range (log-uniform with ``log=True``); a
conditional parameter is drawn only when it is active. On a space with uniform priors and no
conditions, the prior is uniform over configurations, which is what the random-search theory
of seed 004 sec. 2.4.1 assumes (see :mod:`medtune.search.theory`).
"""

from __future__ import annotations

import abc
import difflib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

import numpy as np

from medtune.errors import MedtuneError

#: JSON scalars a categorical or ordinal value may be (TOML has no null; Python users may use None).
Scalar = str | int | float | bool | None

PARAMETER_TYPES = ("float", "int", "ordinal", "categorical")


class SearchSpaceError(MedtuneError, ValueError):
    """A search space or a configuration is invalid.

    ``parameter`` and ``field`` locate the problem (e.g. ``"lr"`` and ``"low"``); :meth:`at`
    rewrites the message as a key path of a config file (``search.space.lr.low: ...``).
    """

    def __init__(self, detail: str, *, parameter: str | None = None, field: str | None = None):
        self.detail = detail
        self.parameter = parameter
        self.field = field
        if parameter is not None and field is not None:
            message = f"parameter {parameter!r}, {field}: {detail}"
        elif parameter is not None:
            message = f"parameter {parameter!r}: {detail}"
        else:
            message = detail
        super().__init__(message)

    def at(self, prefix: str) -> SearchSpaceError:
        """The same error, located by the key path ``prefix.parameter.field``."""
        path = ".".join(p for p in (prefix, self.parameter, self.field) if p)
        error = SearchSpaceError(self.detail, parameter=self.parameter, field=self.field)
        error.args = (f"{path}: {self.detail}",)
        return error


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _native(value: Any) -> Any:
    """numpy scalars as Python scalars, so that configurations serialise to JSON."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _reflect(unit: float) -> float:
    """Fold a real number into [0, 1] by reflection at the bounds."""
    unit = math.fmod(abs(unit), 2.0)
    return 2.0 - unit if unit > 1.0 else unit


class Parameter(abc.ABC):
    """Base of the four parameter kinds; see the module docstring."""

    #: a discrete parameter has finitely many values and may be a condition's parent
    discrete: ClassVar[bool]

    name: str
    condition: Mapping[str, Sequence[Any]] | None
    default: Any

    def _error(self, detail: str, field: str | None = None) -> SearchSpaceError:
        return SearchSpaceError(detail, parameter=self.name, field=field)

    def _check_common(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SearchSpaceError(f"a parameter name must be a non-empty string, got {self.name!r}")
        if self.condition is not None:
            if not isinstance(self.condition, Mapping) or not self.condition:
                raise self._error(
                    f"expected a non-empty mapping {{parent: [values]}}, got {self.condition!r}",
                    "condition",
                )
            condition = {}
            for parent, values in self.condition.items():
                if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
                    raise self._error(
                        f"expected a list of values of {parent!r}, got {values!r}",
                        f"condition.{parent}",
                    )
                if not values:
                    raise self._error(
                        f"the list of values of {parent!r} is empty, so the parameter could "
                        "never be active",
                        f"condition.{parent}",
                    )
                condition[parent] = list(values)
            object.__setattr__(self, "condition", condition)

    # -- interface implemented by each kind --------------------------------------------------
    @abc.abstractmethod
    def normalize(self, value: Any) -> Any:
        """``value`` as this parameter stores it; raises :class:`SearchSpaceError` if invalid."""

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> Any:
        """One value drawn from the parameter's prior."""

    @abc.abstractmethod
    def neighbours(self, value: Any) -> list[Any]:
        """The values one local-search step away from ``value`` (never ``value`` itself)."""

    @abc.abstractmethod
    def mutate(self, value: Any, rng: np.random.Generator, scale: float) -> Any:
        """A value different from ``value`` when the parameter has more than one value.

        Numeric and ordinal parameters move by a Gaussian step of standard deviation ``scale``
        measured in units of their (log-)range; categorical ones jump to another choice.
        """

    @property
    @abc.abstractmethod
    def changeable(self) -> bool:
        """True when the parameter can take more than one value."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The TOML form understood by :meth:`SearchSpace.from_dict`."""

    def _common_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.condition is not None:
            out["condition"] = {k: list(v) for k, v in self.condition.items()}
        return out


class DiscreteParameter(Parameter):
    """A parameter with finitely many values, indexed 0..count-1."""

    discrete = True

    @abc.abstractmethod
    def count(self) -> int:
        """Number of values."""

    @abc.abstractmethod
    def index(self, value: Any) -> int:
        """Position of ``value`` among the values; raises :class:`SearchSpaceError`."""

    @abc.abstractmethod
    def domain(self) -> Sequence[Any]:
        """Every value, in order (a lazy ``range`` for integers)."""

    def probability(self, value: Any) -> float:
        """Prior probability of ``value``."""
        return 1.0 / self.count()

    @property
    def changeable(self) -> bool:
        return self.count() > 1


# -- the four kinds ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=True)
class Float(Parameter):
    """A real number in [low, high], drawn uniformly (log-uniformly with ``log=True``).

    ``step`` is the local-search move, a fraction of the range (of the log-range with ``log``);
    ``default`` (the midpoint, geometric with ``log``, when omitted) is the value a neighbour
    takes when a condition change makes this parameter active.
    """

    name: str
    low: float
    high: float
    log: bool = False
    _: KW_ONLY
    step: float = 0.1
    condition: Mapping[str, Sequence[Any]] | None = None
    default: float | None = None

    discrete: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self._check_common()
        for field in ("low", "high"):
            value = getattr(self, field)
            if not _is_number(value) or not math.isfinite(value):
                raise self._error(f"expected a finite number, got {value!r}", field)
            object.__setattr__(self, field, float(value))
        if not self.low < self.high:
            raise self._error(
                f"expected low < high, got low={self.low!r} and high={self.high!r}", "high"
            )
        if not isinstance(self.log, (bool, np.bool_)):
            raise self._error(f"expected true or false, got {self.log!r}", "log")
        if self.log and self.low <= 0:
            raise self._error(f"a log-scale parameter needs low > 0, got low={self.low!r}", "low")
        if not _is_number(self.step) or not 0 < self.step <= 1:
            raise self._error(
                f"expected a fraction of the range in (0, 1], got {self.step!r}", "step"
            )
        default = self.from_unit(0.5) if self.default is None else self.normalize(self.default)
        object.__setattr__(self, "default", default)

    def to_unit(self, value: float) -> float:
        """Position of ``value`` in [0, 1] along the (log-)range."""
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, unit: float) -> float:
        """The value at position ``unit`` in [0, 1] along the (log-)range."""
        if self.log:
            value = math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + unit * (self.high - self.low)
        return min(max(value, self.low), self.high)

    def normalize(self, value: Any) -> float:
        if not _is_number(value) or not math.isfinite(value):
            raise self._error(f"expected a finite number in [{self.low}, {self.high}], got {value!r}")
        if not self.low <= value <= self.high:
            raise self._error(f"{value!r} is outside [{self.low}, {self.high}]")
        return float(value)

    def sample(self, rng: np.random.Generator) -> float:
        return self.from_unit(float(rng.random()))

    def neighbours(self, value: float) -> list[float]:
        unit = self.to_unit(value)
        out = []
        for moved in (unit - self.step, unit + self.step):
            candidate = self.from_unit(min(max(moved, 0.0), 1.0))
            if candidate != value and candidate not in out:
                out.append(candidate)
        return out

    def mutate(self, value: float, rng: np.random.Generator, scale: float) -> float:
        return self.from_unit(_reflect(self.to_unit(value) + scale * float(rng.standard_normal())))

    @property
    def changeable(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high, "log": self.log}
        out.update(step=self.step, default=self.default, **self._common_dict())
        return out


@dataclass(frozen=True, eq=True)
class Int(DiscreteParameter):
    """An integer in [low, high] (both included), uniform or, with ``log=True``, log-uniform.

    The log prior draws log-uniformly in [low - 1/2, high + 1/2] and rounds (low >= 1).
    Neighbours are the integers one below and one above.
    """

    name: str
    low: int
    high: int
    log: bool = False
    _: KW_ONLY
    condition: Mapping[str, Sequence[Any]] | None = None
    default: int | None = None


    def __post_init__(self) -> None:
        self._check_common()
        for field in ("low", "high"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
                raise self._error(f"expected an integer, got {value!r}", field)
            object.__setattr__(self, field, int(value))
        if not self.low <= self.high:
            raise self._error(
                f"expected low <= high, got low={self.low!r} and high={self.high!r}", "high"
            )
        if not isinstance(self.log, (bool, np.bool_)):
            raise self._error(f"expected true or false, got {self.log!r}", "log")
        if self.log and self.low < 1:
            raise self._error(f"a log-scale integer needs low >= 1, got low={self.low!r}", "low")
        if self.default is None:
            middle = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
            default = min(max(int(round(middle)), self.low), self.high)
        else:
            default = self.normalize(self.default)
        object.__setattr__(self, "default", default)

    def _log_edges(self) -> tuple[float, float]:
        return math.log(self.low - 0.5), math.log(self.high + 0.5)

    def count(self) -> int:
        return self.high - self.low + 1

    def normalize(self, value: Any) -> int:
        if _is_number(value) and float(value).is_integer() and self.low <= value <= self.high:
            return int(value)
        raise self._error(f"expected an integer in [{self.low}, {self.high}], got {value!r}")

    def index(self, value: Any) -> int:
        return self.normalize(value) - self.low

    def domain(self) -> range:
        return range(self.low, self.high + 1)

    def probability(self, value: Any) -> float:
        if not self.log:
            return 1.0 / self.count()
        start, stop = self._log_edges()
        value = self.normalize(value)
        return (math.log(value + 0.5) - math.log(value - 0.5)) / (stop - start)

    def sample(self, rng: np.random.Generator) -> int:
        if not self.log:
            return int(rng.integers(self.low, self.high + 1))
        start, stop = self._log_edges()
        value = int(round(math.exp(start + float(rng.random()) * (stop - start))))
        return min(max(value, self.low), self.high)

    def neighbours(self, value: int) -> list[int]:
        return [v for v in (value - 1, value + 1) if self.low <= v <= self.high]

    def _to_unit(self, value: float) -> float:
        if self.high == self.low:
            return 0.0
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def _from_unit(self, unit: float) -> int:
        if self.log:
            value = math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + unit * (self.high - self.low)
        return min(max(int(round(value)), self.low), self.high)

    def mutate(self, value: int, rng: np.random.Generator, scale: float) -> int:
        if not self.changeable:
            return value
        moved = self._from_unit(_reflect(self._to_unit(value) + scale * float(rng.standard_normal())))
        if moved == value:  # the step rounded away: take the nearest integer in a random direction
            options = self.neighbours(value)
            moved = options[int(rng.integers(len(options)))]
        return moved

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "int", "low": self.low, "high": self.high, "log": self.log}
        out.update(default=self.default, **self._common_dict())
        return out


class _ValueList(DiscreteParameter):
    """Shared machinery of :class:`Ordinal` and :class:`Categorical`: a list of scalars."""

    _field: ClassVar[str]

    def _items(self) -> tuple[Any, ...]:
        return getattr(self, self._field)

    def _check_values(self) -> None:
        items = getattr(self, self._field)
        if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)) or not items:
            raise self._error(f"expected a non-empty list, got {items!r}", self._field)
        items = tuple(_native(v) for v in items)
        lookup: dict[Any, int] = {}
        for i, item in enumerate(items):
            if not (item is None or isinstance(item, (str, bool)) or _is_number(item)):
                raise self._error(
                    f"values must be strings, numbers, booleans or None, got {item!r}",
                    f"{self._field}[{i}]",
                )
            if isinstance(item, float) and not math.isfinite(item):
                raise self._error(f"values must be finite, got {item!r}", f"{self._field}[{i}]")
            token = self._token(item)
            if token in lookup:
                raise self._error(
                    f"{item!r} appears twice (positions {lookup[token]} and {i})", self._field
                )
            lookup[token] = i
        object.__setattr__(self, self._field, items)
        object.__setattr__(self, "_lookup", lookup)

    @staticmethod
    def _token(value: Any) -> tuple[str, Any]:
        # bools and numbers compare equal in Python (True == 1); keep them apart
        if isinstance(value, (bool, np.bool_)):
            return ("bool", bool(value))
        if _is_number(value):
            return ("number", value)
        return (type(value).__name__, value)

    def count(self) -> int:
        return len(self._items())

    def index(self, value: Any) -> int:
        try:
            return self._lookup[self._token(_native(value))]  # type: ignore[attr-defined]
        except (KeyError, TypeError):
            items = list(self._items())
            shown = repr(items)
            if len(items) > 12:
                shown = f"{repr(items[:12])[:-1]}, ...] ({len(items)} values)"
            raise self._error(f"expected one of {shown}, got {value!r}") from None

    def domain(self) -> tuple[Any, ...]:
        return self._items()

    def normalize(self, value: Any) -> Any:
        return self._items()[self.index(value)]

    def sample(self, rng: np.random.Generator) -> Any:
        return self._items()[int(rng.integers(self.count()))]


@dataclass(frozen=True, eq=True)
class Ordinal(_ValueList):
    """One of an ordered list of values (e.g. widths 8, 16, 32): neighbours are adjacent values.

    ``default`` (the middle value when omitted) is the value a neighbour takes when a
    condition change makes this parameter active.
    """

    name: str
    values: tuple[Scalar, ...]
    _: KW_ONLY
    condition: Mapping[str, Sequence[Any]] | None = None
    default: Scalar = None

    _field: ClassVar[str] = "values"

    def __post_init__(self) -> None:
        self._check_common()
        self._check_values()
        middle = self.values[(len(self.values) - 1) // 2]
        default = middle if self.default is None else self.normalize(self.default)
        object.__setattr__(self, "default", default)

    def neighbours(self, value: Any) -> list[Any]:
        i = self.index(value)
        return [self.values[j] for j in (i - 1, i + 1) if 0 <= j < len(self.values)]

    def mutate(self, value: Any, rng: np.random.Generator, scale: float) -> Any:
        n = len(self.values)
        if n == 1:
            return value
        i = self.index(value)
        unit = _reflect(i / (n - 1) + scale * float(rng.standard_normal()))
        j = int(round(unit * (n - 1)))
        if j == i:  # the step rounded away: move to an adjacent value
            options = [k for k in (i - 1, i + 1) if 0 <= k < n]
            j = options[int(rng.integers(len(options)))]
        return self.values[j]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "ordinal", "values": list(self.values)}
        out.update(default=self.default, **self._common_dict())
        return out


@dataclass(frozen=True, eq=True)
class Categorical(_ValueList):
    """One of unordered choices (e.g. the loss): every other choice is a neighbour."""

    name: str
    choices: tuple[Scalar, ...]
    _: KW_ONLY
    condition: Mapping[str, Sequence[Any]] | None = None
    default: Scalar = None

    _field: ClassVar[str] = "choices"

    def __post_init__(self) -> None:
        self._check_common()
        self._check_values()
        default = self.choices[0] if self.default is None else self.normalize(self.default)
        object.__setattr__(self, "default", default)

    def neighbours(self, value: Any) -> list[Any]:
        i = self.index(value)
        return [c for j, c in enumerate(self.choices) if j != i]

    def mutate(self, value: Any, rng: np.random.Generator, scale: float) -> Any:
        others = self.neighbours(value)
        if not others:
            return value
        return others[int(rng.integers(len(others)))]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "categorical", "choices": list(self.choices)}
        out.update(default=self.default, **self._common_dict())
        return out


_KINDS: dict[str, type[Parameter]] = {
    "float": Float,
    "int": Int,
    "ordinal": Ordinal,
    "categorical": Categorical,
}

#: keys allowed in the TOML table of each parameter kind (besides ``type``), required first
_TOML_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "float": (("low", "high"), ("log", "step", "condition", "default")),
    "int": (("low", "high"), ("log", "condition", "default")),
    "ordinal": (("values",), ("condition", "default")),
    "categorical": (("choices",), ("condition", "default")),
}

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
        parameters = []
        for name, spec in table.items():
            path = f"{where}.{name}"
            if not isinstance(spec, Mapping):
                raise SearchSpaceError(
                    f"{path}: expected a table with a 'type' key ({', '.join(PARAMETER_TYPES)}), "
                    f"got {spec!r}"
                )
            kind = spec.get("type")
            if kind not in _KINDS:
                got = "nothing" if kind is None else repr(kind)
                raise SearchSpaceError(
                    f"{path}.type: expected one of {', '.join(PARAMETER_TYPES)}, got {got}"
                )
            required, optional = _TOML_KEYS[kind]
            for key in spec:
                if key != "type" and key not in required and key not in optional:
                    raise SearchSpaceError(
                        f"{path}.{key}: unknown key for a {kind} parameter; expected "
                        f"{', '.join(required + optional)}"
                    )
            for key in required:
                if key not in spec:
                    raise SearchSpaceError(f"{path}.{key}: missing; a {kind} parameter needs "
                                           f"{' and '.join(required)}")
            arguments = {key: spec[key] for key in spec if key != "type"}
            try:
                parameters.append(_KINDS[kind](name, **arguments))
            except SearchSpaceError as error:
                raise error.at(where) from None
        try:
            return cls(parameters)
        except SearchSpaceError as error:
            raise error.at(where) from None


class UniqueSampler:
    """Draws configurations from a space's prior, never the same one twice.

    Each draw is exactly the prior restricted to the configurations not seen yet (drawn here
    or recorded with :meth:`mark`): rejection sampling while unseen configurations are
    plentiful, then, on a finite space, an explicit weighted draw among the unseen ones. With
    uniform priors this is uniform sampling without replacement, as in seed 004 eq. 2.20.
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
