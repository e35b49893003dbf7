"""Study configuration: a TOML file validated into typed objects before anything is written.

Layout::

    [study]                          # all keys optional except where noted
    name = "search_small_lesions"
    direction = "maximize"           # or "minimize"
    n_trials = 12                    # and/or timeout = seconds
    seed = 0
    storage = "studies/search_small_lesions.sqlite"   # default: studies/<name>.sqlite (from the cwd)
    executor = "inline"              # "process" or "ray"
    n_workers = 1
    address = "auto"                 # ray only: "auto", "local" or "ray://host:port"
    on_failure = "exclude"           # or "penalize" (with penalty = value)

    [searcher]
    name = "hyperband"               # any plugin of kind "searcher"; other keys are its options
    R = 9
    eta = 3

    [objective]
    task = "segmentation"            # a built-in task, or function = "package.module:function"
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

Every error names the file, the key path and what was expected.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.errors import MedtuneError

TASKS = {
    "segmentation": "medtune.tasks.segmentation:train_segmentation",
    "transfer": "medtune.tasks.transfer:train_transfer",
    "template": "medtune.tasks.template:train_template",
}
EXECUTORS = ("inline", "process", "ray")
DIRECTIONS = ("minimize", "maximize")
FAILURE_POLICIES = ("exclude", "penalize")


class ConfigError(MedtuneError, ValueError):
    """A study configuration is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class TableSpec:
    """A results table: completed trials grouped by the configuration keys ``rows``, each of
    ``columns`` (``"value"`` or a metric the objective returns) as mean ± std per group."""

    title: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]


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


def parse_config(text: str, path: str | Path = "<string>") -> StudyConfig:
    """Validate TOML ``text`` (read from ``path``) into a :class:`StudyConfig`."""
    where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"study", "searcher", "objective", "space", "table"})
    if unknown:
        raise ConfigError(f"{where}: unknown table(s) {', '.join(unknown)}; expected study, "
                          "searcher, objective, space, table")
    study = _expect(data, "study", dict, where, {})
    known = {"name", "direction", "n_trials", "timeout", "seed", "storage", "executor", "n_workers",
             "address", "on_failure", "penalty"}
    extra = sorted(set(study) - known)
    if extra:
        raise ConfigError(f"{where}: [study] has unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")
    w = f"{where}: study"
    name = _expect(study, "name", str, w, Path(where).stem if where != "<string>" else "study")
    n_trials = _expect(study, "n_trials", int, w)
    timeout = _expect(study, "timeout", (int, float), w)
    if n_trials is not None and n_trials < 1:
        raise ConfigError(f"{w}.n_trials: expected a positive integer, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"{w}.timeout: expected a positive number of seconds, got {timeout}")
    n_workers = _expect(study, "n_workers", int, w, 1)
    if n_workers < 1:
        raise ConfigError(f"{w}.n_workers: expected a positive integer, got {n_workers}")
    on_failure = _choice(_expect(study, "on_failure", str, w, "exclude"), FAILURE_POLICIES, f"{w}.on_failure")
    penalty = _expect(study, "penalty", (int, float), w)
    if on_failure == "penalize" and penalty is None:
        raise ConfigError(f"{w}.penalty: on_failure = \"penalize\" needs a penalty value")
    storage = Path(_expect(study, "storage", str, w, f"studies/{name}.sqlite"))

    searcher_table = dict(_expect(data, "searcher", dict, where, {"name": "random"}))
    searcher = _expect(searcher_table, "name", str, f"{where}: searcher", required=True)
    searcher_table.pop("name")

    objective_table = _expect(data, "objective", dict, where, {"task": "segmentation"})
    ow = f"{where}: objective"
    extra = sorted(set(objective_table) - {"task", "function", "settings"})
    if extra:
        raise ConfigError(f"{ow}: unknown key(s) {', '.join(extra)}; known: task, function, settings")
    task = _expect(objective_table, "task", str, ow)
    function = _expect(objective_table, "function", str, ow)
    if (task is None) == (function is None):
        raise ConfigError(f"{ow}: give exactly one of task = \"{'|'.join(TASKS)}\" or function = \"module:function\"")
    if task is not None:
        objective = TASKS.get(task)
        if objective is None:
            raise ConfigError(f"{ow}.task: expected one of {', '.join(TASKS)}, got {task!r}")
    else:
        if ":" not in function:
            raise ConfigError(f"{ow}.function: expected \"package.module:function\", got {function!r}")
        objective = function
    settings = dict(_expect(objective_table, "settings", dict, ow, {}))

    space = _expect(data, "space", dict, where, required=True)
    for parameter, table in space.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: space.{parameter}: expected a table with a type, got {table!r}")
    table_spec = _table_spec(_expect(data, "table", dict, where), space, name, where)
    return StudyConfig(
        name=name,
        direction=_choice(_expect(study, "direction", str, w, "maximize"), DIRECTIONS, f"{w}.direction"),
        n_trials=n_trials,
        timeout=float(timeout) if timeout is not None else None,
        seed=_expect(study, "seed", int, w, 0),
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
        source=text,
        path=Path(path) if where != "<string>" else None,
    )


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


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study TOML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror or exc}") from None
    return parse_config(text, path)
