"""The parameters of a search space: :class:`Float` (linear or log scale), :class:`Int`
(inclusive bounds, linear or log scale), :class:`Ordinal` (an ordered list of values:
neighbours are the adjacent values) and :class:`Categorical` (unordered choices: every other
choice is a neighbour), Bertrand2019 sec. 2.1; their validation, prior, local moves and TOML
form (:func:`parameter_from_dict`), and :class:`SearchSpaceError`.

Every parameter's prior is uniform over its range (log-uniform with ``log=True``). Any
parameter may carry a ``condition`` ``{parent: [values]}`` that the space
(:class:`medtune.search.space.SearchSpace`) evaluates.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
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


def parameter_from_dict(name: str, spec: Any, where: str = "space") -> Parameter:
    """The parameter ``name`` of the TOML table ``spec`` (``{"type": ..., ...}``, see
    :meth:`medtune.search.space.SearchSpace.from_dict`). Errors name the key path under
    ``where`` (e.g. ``search.space.lr.low``) and say what was expected."""
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
        return _KINDS[kind](name, **arguments)
    except SearchSpaceError as error:
        raise error.at(where) from None
