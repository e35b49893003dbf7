"""Study configuration: a TOML file validated into typed objects before anything is written.

Layout::

    [study]                          # all keys optional except where noted
    name = "search_small_lesions"
    direction = "maximize"           # or "minimize"
    # objectives = ["dice", "hd95"]  # several objectives: values the objective returns by
    # directions = ["maximize", "minimize"]  #   name ("value" first, if at all), one direction
    #                                #   each (instead of direction); results form a Pareto front
    # constraints = ["params <= 2e6"]  # "name <= number" (>=, <, >) on returned values; trials
    #                                #   that break one are kept, marked infeasible
    n_trials = 12                    # and/or timeout = seconds
    trial_timeout = 600              # seconds one trial may run, then it fails (reason timeout);
                                     # default: the task's own limit (built-in tasks: none); 0: none
    seed = 0
    storage = "studies/search_small_lesions.sqlite"   # default: studies/<name>.sqlite (from the cwd)
    executor = "inline"              # "process" or "ray"
    n_workers = 1
    address = "auto"                 # ray only: "auto", "local" or "ray://host:port"
    on_failure = "exclude"           # or "penalize" (with penalty = value)
    keep_best = 5                    # trials whose artifacts are kept (the best ones); 0: all

    [searcher]
    name = "hyperband"               # any plugin of kind "searcher"; other keys are its options
    R = 9
    eta = 3

    [pruner]                         # optional: stop trials early from their reports
    name = "asha"                    # any plugin of kind "pruner"; other keys are its options
    min_resource = 1                 # (it judges in the study's direction)

    [objective]
    task = "segmentation"            # a task plugin, or function = "package.module:function"
    [objective.settings]             # fixed settings merged under every configuration
    epochs = 9

    [space.lr]                       # one table per parameter (see medtune.search.space)
    type = "float"
    low = 1e-4
    high = 1e-2
    log = true

    [table]                          # optional: a results table shaped like a paper's
    title = "Dice by learning rate"
    rows = ["lr"]                    # configuration keys that name a row
    columns = ["value"]              # the objective's value and/or its named metrics

    [scale]                          # optional: what `medtune run --scale S` multiplies by S
    settings = ["epochs"]            # objective settings
    searcher = ["R"]                 # searcher options
    study = ["timeout"]              # study keys (n_trials, timeout)
    # factor = 4                     # written by `--scale 4` into the stored configuration

    [replay]                         # optional: replay searchers over the finished study
    searchers = ["random", "bayes"]  # searcher plugins; [replay.options.<name>] their options
    runs = 200
    goals = ["best", "within 1%", "top 5%"]

Scaling: integer values become ``max(1, round(value * S))``, floats ``value * S``. A scaled
study is named ``<name>_x<S>`` (and stored in ``<storage stem>_x<S>.sqlite``), so it never
mixes with the default-size one.

Every error names the file, the key path and what was expected.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.errors import MedtuneError
from medtune.registry import available
from medtune.search.replay import Goal, ReplayError
from medtune.search.objectives import Constraint, Objectives, ObjectivesError
from medtune.search.searcher import DIRECTIONS, FAILURE_POLICIES
from medtune.study.artifacts import KEEP_BEST, check_keep_best
from medtune.study.executors import EXECUTORS
from medtune.tasks import check_settings, load_task


class ConfigError(MedtuneError, ValueError):
    """A study configuration is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class TableSpec:
    """A results table: completed trials grouped by the configuration keys ``rows``, each of
    ``columns`` (``"value"`` or a metric the objective returns) as mean ± std per group."""

    title: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]


@dataclass(frozen=True)
class ScaleSpec:
    """What ``medtune run --scale S`` multiplies: names of objective settings, searcher
    options and study keys; ``factor`` is the S this configuration was scaled by."""

    settings: tuple[str, ...]
    searcher: tuple[str, ...]
    study: tuple[str, ...]
    factor: float = 1.0


@dataclass(frozen=True)
class ReplaySpec:
    """Searchers replayed ``runs`` times each over a finished study's tabulated values."""

    searchers: tuple[str, ...]
    runs: int
    goals: tuple[Goal, ...]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class StudyConfig:
    """A validated study configuration."""

    name: str
    direction: str
    n_trials: int | None
    timeout: float | None
    seed: int
    storage: Path
    executor: str
    n_workers: int
    address: str | None
    on_failure: str
    penalty: float | None
    searcher: str
    searcher_options: dict[str, Any]
    objective: str
    settings: dict[str, Any]
    space: dict[str, Any]
    table: TableSpec | None = None
    scale: ScaleSpec | None = None
    replay: ReplaySpec | None = None
    pruner: str | None = None  # a pruner plugin's name; None: no early stopping
    pruner_options: dict[str, Any] = field(default_factory=dict)
    trial_timeout: float | None = None  # None: the task's own limit; 0: no limit
    keep_best: int = KEEP_BEST  # the best trials that keep their artifacts; 0: every trial
    #: what the study optimises: named values, their directions, constraints (one "value"
    #: in ``direction`` by default)
    objectives: Objectives = field(default_factory=Objectives)
    source: str = ""
    path: Path | None = field(default=None, repr=False)


def _expect(table: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = None,
            required: bool = False) -> Any:
    if key not in table:
        if required:
            raise ConfigError(f"{where}: missing key {key!r}")
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where}.{key}: expected {_names(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{where}.{key}: expected {_names(kinds)}, got {type(value).__name__} {value!r}")
    return value


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number",
                        "dict": "a table", "bool": "true/false"}.get(k.__name__, k.__name__) for k in kinds)


def _choice(value: str, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return value


#: The keys of the [study] table.
STUDY_KEYS = frozenset({"name", "direction", "n_trials", "timeout", "seed", "storage", "executor",
                        "n_workers", "address", "on_failure", "penalty", "trial_timeout",
                        "keep_best", "objectives", "directions", "constraints"})

SECTIONS = ("study", "searcher", "pruner", "objective", "space", "table", "scale", "replay")


def parse_config(text: str, path: str | Path = "<string>", scale: float | None = None) -> StudyConfig:
    """Validate TOML ``text`` (read from ``path``) into a :class:`StudyConfig`.

    ``scale`` (``medtune run --scale S``) multiplies what the ``[scale]`` section lists by S;
    the returned config's ``source`` then records the factor, so the study resumes scaled.
    """
    where = str(path)
    if scale is not None:
        text = _with_factor(text, scale, where)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown table(s) {', '.join(unknown)}; expected "
                          f"{', '.join(SECTIONS)}")
    study = dict(_expect(data, "study", dict, where, {}))
    scale_spec = _scale_spec(_expect(data, "scale", dict, where), where)
    extra = sorted(set(study) - STUDY_KEYS)
    if extra:
        raise ConfigError(f"{where}: [study] has unknown key(s) {', '.join(extra)}; known: "
                          f"{', '.join(sorted(STUDY_KEYS))}")
    w = f"{where}: study"
    name = _expect(study, "name", str, w, Path(where).stem if where != "<string>" else "study")
    n_trials = _expect(study, "n_trials", int, w)
    timeout = _expect(study, "timeout", (int, float), w)
    if n_trials is not None and n_trials < 1:
        raise ConfigError(f"{w}.n_trials: expected a positive integer, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"{w}.timeout: expected a positive number of seconds, got {timeout}")
    trial_timeout = _expect(study, "trial_timeout", (int, float), w)
    if trial_timeout is not None and not 0 <= trial_timeout < math.inf:
        raise ConfigError(f"{w}.trial_timeout: expected a positive number of seconds (0 for no "
                          f"limit), got {trial_timeout}")
    n_workers = _expect(study, "n_workers", int, w, 1)  # checked with the executor's settings
    keep_best = _expect(study, "keep_best", int, w, KEEP_BEST)
    try:
        check_keep_best(keep_best)
    except ValueError as exc:
        raise ConfigError(f"{w}.{exc}") from None
    on_failure = _choice(_expect(study, "on_failure", str, w, "exclude"), FAILURE_POLICIES, f"{w}.on_failure")
    penalty = _expect(study, "penalty", (int, float), w)
    if penalty is not None and not math.isfinite(penalty):
        raise ConfigError(f"{w}.penalty: expected a finite number, got {penalty!r}")
    objectives = _objectives(study, w)
    if objectives.multi and penalty is not None:
        raise ConfigError(f"{w}.penalty: one value cannot penalise several objectives; remove "
                          "penalty (a failure counts as the worst value told per objective)")
    if on_failure == "penalize" and penalty is None and not objectives.multi:
        raise ConfigError(f"{w}.penalty: on_failure = \"penalize\" needs a penalty value")
    storage = Path(_expect(study, "storage", str, w, f"studies/{name}.sqlite"))

    searcher_table = dict(_expect(data, "searcher", dict, where, {"name": "random"}))
    searcher = _expect(searcher_table, "name", str, f"{where}: searcher", required=True)
    searcher_table.pop("name")
    _refuse_misplaced(searcher_table, "searcher", where)
    pruner, pruner_options = _pruner(_expect(data, "pruner", dict, where), where)

    objective_table = _expect(data, "objective", dict, where, {"task": "segmentation"})
    ow = f"{where}: objective"
    _refuse_misplaced(objective_table, "objective", where)
    extra = sorted(set(objective_table) - {"task", "function", "settings"})
    if extra:
        raise ConfigError(f"{ow}: unknown key(s) {', '.join(extra)}; known: task, function, settings")
    task = _expect(objective_table, "task", str, ow)
    function = _expect(objective_table, "function", str, ow)
    if (task is None) == (function is None):
        raise ConfigError(f"{ow}: give exactly one of task = \"{'|'.join(available('task'))}\" or "
                          "function = \"module:function\"")
    task_plugin = None
    if task is not None:  # a task plugin, found through the registry (did-you-mean when unknown)
        try:
            task_plugin = load_task(task)
        except MedtuneError as exc:
            raise ConfigError(f"{ow}.task: {exc}") from None
        objective = task
    else:
        if ":" not in function:
            raise ConfigError(f"{ow}.function: expected \"package.module:function\", got {function!r}")
        objective = function
    settings = dict(_expect(objective_table, "settings", dict, ow, {}))
    if scale_spec is not None and scale_spec.factor != 1:
        factor = scale_spec.factor
        _scale_values(settings, scale_spec.settings, factor, f"{where}: scale.settings",
                      "[objective.settings]")
        _scale_values(searcher_table, scale_spec.searcher, factor, f"{where}: scale.searcher",
                      "[searcher]")
        scaled_study = {key: study[key] for key in ("n_trials", "timeout") if key in study}
        _scale_values(scaled_study, scale_spec.study, factor, f"{where}: scale.study",
                      "[study] (n_trials, timeout)")
        n_trials = scaled_study.get("n_trials", n_trials)
        timeout = scaled_study.get("timeout", timeout)
        suffix = f"_x{factor:g}"
        name += suffix
        storage = storage.with_name(storage.stem + suffix + storage.suffix)

    if task_plugin is not None:  # the fixed settings' names and types, before anything runs
        try:
            check_settings(task_plugin.name, task_plugin.settings, settings)
        except MedtuneError as exc:
            raise ConfigError(f"{ow}.settings: {exc}") from None

    space = _expect(data, "space", dict, where, required=True)
    for parameter, table in space.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: space.{parameter}: expected a table with a type, got {table!r}")
    table = _expect(data, "table", dict, where)
    if table is None and task_plugin is not None:
        table = task_plugin.default_table(space)
    table_spec = _table_spec(table, space, name, where)
    replay_spec = _replay_spec(_expect(data, "replay", dict, where), where)
    return StudyConfig(
        name=name,
        direction=objectives.directions[0],
        objectives=objectives,
        n_trials=n_trials,
        timeout=float(timeout) if timeout is not None else None,
        trial_timeout=float(trial_timeout) if trial_timeout is not None else None,
        keep_best=keep_best,
        seed=_seed(_expect(study, "seed", int, w, 0), f"{w}.seed"),
        storage=storage if storage.is_absolute() else Path.cwd() / storage,
        executor=_choice(_expect(study, "executor", str, w, "inline"), EXECUTORS, f"{w}.executor"),
        n_workers=n_workers,
        address=_expect(study, "address", str, w),
        on_failure=on_failure,
        penalty=float(penalty) if penalty is not None else None,
        searcher=searcher,
        searcher_options=searcher_table,
        objective=objective,
        settings=settings,
        space=space,
        table=table_spec,
        scale=scale_spec,
        replay=replay_spec,
        pruner=pruner,
        pruner_options=pruner_options,
        source=text,
        path=Path(path) if where != "<string>" else None,
    )


def _objectives(study: dict, w: str) -> Objectives:
    """``objectives``, ``directions`` (or one ``direction``, default ``"maximize"``) and
    ``constraints`` of the [study] table, checked."""
    names = _expect(study, "objectives", list, w)
    directions = _expect(study, "directions", list, w)
    direction = _expect(study, "direction", str, w)
    texts = _expect(study, "constraints", list, w, [])
    if direction is not None:
        _choice(direction, DIRECTIONS, f"{w}.direction")
        if directions is not None:
            raise ConfigError(f"{w}.direction: give direction (one objective) or directions (one "
                              "per objective), not both; remove direction")
    if names is not None and (not names or not all(isinstance(n, str) and n for n in names)):
        raise ConfigError(f"{w}.objectives: expected a non-empty list of names of values the "
                          f"objective returns, e.g. [\"dice\", \"hd95\"], got {names!r}")
    if directions is None:
        if names is not None and len(names) > 1:
            raise ConfigError(f"{w}.directions: objectives names {len(names)} values; add "
                              f"directions = [...], one \"minimize\" or \"maximize\" per objective")
        directions = [direction or "maximize"]
    elif names is None and len(directions) > 1:
        raise ConfigError(f"{w}.objectives: directions has {len(directions)} entries; name the "
                          "values they apply to with objectives = [\"dice\", \"hd95\", ...]")
    if names is not None and len(names) != len(directions):
        raise ConfigError(f"{w}.directions: {len(directions)} entries for {len(names)} "
                          "objectives; give exactly one direction per objective")
    for entry in directions:
        if entry not in DIRECTIONS:
            raise ConfigError(f"{w}.directions: expected \"minimize\" or \"maximize\" for each "
                              f"objective, got {entry!r}")
    constraints = []
    for text in texts:
        try:
            constraints.append(Constraint.parse(text))
        except ObjectivesError as exc:
            raise ConfigError(f"{w}.constraints: {exc}") from None
    try:
        return Objectives(tuple(names or ["value"]), tuple(directions), tuple(constraints))
    except ObjectivesError as exc:
        raise ConfigError(f"{w}.objectives: {exc}") from None


def _seed(value: int, where: str) -> int:
    """A study seed: trial seeds are drawn from it by ``numpy.random.SeedSequence``, which takes
    non-negative integers only."""
    if value < 0:
        raise ConfigError(f"{where}: expected a non-negative integer, got {value}")
    return value


def _pruner(table: dict | None, where: str) -> tuple[str | None, dict[str, Any]]:
    """The ``[pruner]`` table: its plugin's name and options (checked when it is built)."""
    if table is None:
        return None, {}
    options = dict(table)
    name = _expect(options, "name", str, f"{where}: pruner", required=True)
    options.pop("name")
    _refuse_misplaced(options, "pruner", where)  # direction too: it judges in the study's
    return name, options


def _refuse_misplaced(table: dict, section: str, where: str) -> None:
    """A [study] key written in another section: name the section it belongs in."""
    misplaced = sorted(set(table) & STUDY_KEYS)
    if misplaced:
        keys = ", ".join(misplaced)
        raise ConfigError(f"{where}: [{section}] {keys}: {'these belong' if len(misplaced) > 1 else 'it belongs'} "
                          f"in [study], not in [{section}]; move {'them' if len(misplaced) > 1 else 'it'} there")


def _table_spec(table: dict | None, space: dict[str, Any], name: str, where: str) -> TableSpec | None:
    if table is None:
        return None
    tw = f"{where}: table"
    extra = sorted(set(table) - {"title", "rows", "columns"})
    if extra:
        raise ConfigError(f"{tw}: unknown key(s) {', '.join(extra)}; known: title, rows, columns")
    keys = {}
    for key in ("rows", "columns"):
        value = _expect(table, key, list, tw, required=True)
        if not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{tw}.{key}: expected a non-empty list of names, got {value!r}")
        keys[key] = tuple(value)
    missing = [row for row in keys["rows"] if row not in space]
    if missing:
        raise ConfigError(f"{tw}.rows: {', '.join(map(repr, missing))} not in the space; rows "
                          f"name searched parameters: {', '.join(space)}")
    title = _expect(table, "title", str, tw, f"{name}: mean ± std by {', '.join(keys['rows'])}")
    return TableSpec(title=title, rows=keys["rows"], columns=keys["columns"])


def _with_factor(text: str, scale: float, where: str) -> str:
    """``text`` with ``factor = scale`` written at the top of its ``[scale]`` table."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or scale <= 0:
        raise ConfigError(f"{where}: --scale must be a positive number, got {scale!r}")
    lines = text.splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[scale\]\s*(#.*)?$", line)]
    if not headers:
        raise ConfigError(f"{where}: --scale needs a [scale] table listing what to multiply, "
                          'e.g. [scale] settings = ["train_size", "epochs"]; this file has none')
    if any(re.match(r"\s*factor\s*=", line) for line in lines[headers[0] + 1:]):
        raise ConfigError(f"{where}: scale.factor is already set (a stored, scaled configuration); "
                          "run --scale on the original file instead")
    lines.insert(headers[0] + 1, f"factor = {float(scale)!r}\n")
    return "".join(lines)


def _scale_spec(table: dict | None, where: str) -> ScaleSpec | None:
    if table is None:
        return None
    sw = f"{where}: scale"
    extra = sorted(set(table) - {"settings", "searcher", "study", "factor"})
    if extra:
        raise ConfigError(f"{sw}: unknown key(s) {', '.join(extra)}; known: settings, searcher, "
                          "study, factor")
    lists = {}
    for key in ("settings", "searcher", "study"):
        value = _expect(table, key, list, sw, [])
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{sw}.{key}: expected a list of names, got {value!r}")
        lists[key] = tuple(value)
    if not any(lists.values()):
        raise ConfigError(f"{sw}: lists nothing to multiply; give settings, searcher and/or "
                          "study, e.g. settings = [\"epochs\"]")
    bad = [key for key in lists["study"] if key not in ("n_trials", "timeout")]
    if bad:
        raise ConfigError(f"{sw}.study: {', '.join(map(repr, bad))} cannot be scaled; only "
                          "n_trials and timeout can")
    factor = _expect(table, "factor", (int, float), sw, 1.0)
    if not math.isfinite(factor) or factor <= 0:
        raise ConfigError(f"{sw}.factor: expected a positive number, got {factor!r}")
    return ScaleSpec(lists["settings"], lists["searcher"], lists["study"], float(factor))


def _scale_values(values: dict[str, Any], names: tuple[str, ...], factor: float, where: str,
                  table: str) -> None:
    """Multiply ``values[name]`` by ``factor`` in place for each of ``names``: integers rounded
    (at least 1), floats multiplied."""
    for name in names:
        if name not in values:
            raise ConfigError(f"{where}: {name!r} is not set in {table}; list only keys the "
                              f"file sets ({', '.join(values) or 'none'})")
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {name} = {value!r} is not a number, so it cannot be "
                              "scaled; remove it from the list")
        values[name] = max(1, round(value * factor)) if isinstance(value, int) else value * factor


def _replay_spec(table: dict | None, where: str) -> ReplaySpec | None:
    if table is None:
        return None
    rw = f"{where}: replay"
    extra = sorted(set(table) - {"searchers", "runs", "goals", "options"})
    if extra:
        raise ConfigError(f"{rw}: unknown key(s) {', '.join(extra)}; known: searchers, runs, "
                          "goals, options")
    searchers = _expect(table, "searchers", list, rw, required=True)
    if not searchers or not all(isinstance(v, str) for v in searchers):
        raise ConfigError(f"{rw}.searchers: expected a non-empty list of searcher names, got "
                          f"{searchers!r}")
    runs = _expect(table, "runs", int, rw, 100)
    if runs < 1:
        raise ConfigError(f"{rw}.runs: expected a positive integer, got {runs}")
    goal_texts = _expect(table, "goals", list, rw, ["best", "within 1%", "within 5%", "top 5%"])
    if not goal_texts:
        raise ConfigError(f"{rw}.goals: expected a non-empty list such as [\"best\", \"top 5%\"]")
    goals = tuple(_goal(text, f"{rw}.goals") for text in goal_texts)
    options = dict(_expect(table, "options", dict, rw, {}))
    for name, value in options.items():
        if name not in searchers:
            raise ConfigError(f"{rw}.options.{name}: {name!r} is not one of replay.searchers "
                              f"({', '.join(searchers)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{rw}.options.{name}: expected a table of searcher options, got "
                              f"{value!r}")
    return ReplaySpec(tuple(searchers), runs, goals, options)


def _goal(text: Any, where: str) -> Goal:
    """``"best"``, ``"within x%"`` or ``"top x%"`` as a :class:`Goal`."""
    match = re.fullmatch(r"\s*(best|within|top)\s*(?:([0-9.]+)\s*%)?\s*", str(text).lower())
    if not isinstance(text, str) or match is None or (match[1] == "best") != (match[2] is None):
        raise ConfigError(f'{where}: expected "best", "within x%" or "top x%", got {text!r}')
    try:
        return Goal(match[1], float(match[2]) / 100 if match[2] else 0.0)
    except (ReplayError, ValueError) as exc:
        raise ConfigError(f"{where}: {text!r}: {exc}") from None


def load_config(path: str | Path, scale: float | None = None) -> StudyConfig:
    """Read and validate a study TOML file (scaled by ``scale``, see :func:`parse_config`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}: "
                          f"{exc.object[exc.start:exc.start + 1]!r}); save the configuration as "
                          "UTF-8 TOML") from None
    return parse_config(text, path, scale)
