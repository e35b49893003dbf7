"""Recorded results of the tiny example studies: the same seeds must give the same trials.

:func:`check_recorded` reads a finished study's trials (id, state, configuration, resource,
value and the scalar metrics) and compares them with the entry of ``recorded_values.json``
under the same name: the same trials with the same configurations, states and resources,
values and metrics equal within a tolerance. A study stopped by a time budget (its ``[study]
timeout``) trains more or fewer trials from run to run, many fewer on a loaded machine: there
the trials both runs have are compared, by id, and at least one must have run.

Training is deterministic for one CPU model and one number of torch threads, not across
either: on the machine of the recording (:func:`machine`) values and metrics must agree to
:data:`SAME_MACHINE`, elsewhere to the looser :data:`OTHER_MACHINE`. Metrics that measure time
(:data:`TIMING_METRICS`, :data:`TIME_DEPENDENT`) are not compared.

``MEDTUNE_RECORD_VALUES=1`` records instead of comparing: it rewrites the entry of each study
that runs and keeps the others. Re-record only for a deliberate change of results (a new
default, a fixed bug in training), never to make a refactoring pass. On a loaded machine
``OMP_WAIT_POLICY=PASSIVE`` lets the time-budgeted studies record more trials, with the same
results.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RECORDED = Path(__file__).with_name("recorded_values.json")


@dataclass(frozen=True)
class Tolerance:
    relative: float  # of values and metrics
    absolute: float  # of values and metrics
    config: float  # relative, of the float parameters of a configuration (0: exactly)


#: Two runs in a row on one machine give the same bits; the margin admits last-bit changes
#: (a sum taken in another order), nowhere near what a change of training moves.
SAME_MACHINE = Tolerance(relative=1e-4, absolute=1e-6, config=0.0)
#: Another CPU model or thread count sums floats in another order: one torch thread instead of
#: two moved metrics by up to 1e-3 after one epoch, and the Gaussian-process searchers (bayes,
#: bohb) then proposed learning rates differing by up to 1e-4 relative. Choices, whole numbers,
#: states and resources stay exact.
OTHER_MACHINE = Tolerance(relative=0.0, absolute=0.05, config=1e-3)
#: metrics that measure time, which differ from run to run: never compared
TIMING_METRICS = re.compile(r"(^|_)(seconds|duration|time)(_|$)")
#: metrics computed from a measured time, never compared either: the nas task's plain random
#: search gets the seconds the weight-sharing search took, so its regret and the statistics
#: comparing the two searches follow the machine's speed
TIME_DEPENDENT = frozenset({"regret_rs_pp", "regret_gain_pp", "cohen_d", "p_value"})


def cpu_model() -> str:
    """The "model name" of /proc/cpuinfo, or "unknown" where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found = re.search(r"(?m)^model name\s*:\s*(.*)$", text)
    return found.group(1).strip() if found else "unknown"


def machine() -> dict[str, Any]:
    """What the results depend on besides the code: CPU model and torch's intra-op threads."""
    return {"cpu": cpu_model(), "threads": torch.get_num_threads()}


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _timed(metric: str) -> bool:
    return metric in TIME_DEPENDENT or TIMING_METRICS.search(metric) is not None


def read_trials(study_path: Path) -> list[dict[str, Any]]:
    """The trials of a study file, by id: state, config, resource, value, scalar metrics."""
    with contextlib.closing(sqlite3.connect(study_path)) as db:
        rows = db.execute("SELECT id, state, config, resource, value, metrics FROM trials "
                          "ORDER BY id").fetchall()
    trials = []
    for trial_id, state, config, resource, value, metrics in rows:
        metrics = json.loads(metrics or "{}")
        trials.append({
            "id": trial_id, "state": state, "config": json.loads(config), "resource": resource,
            "value": value,
            "metrics": {key: metrics[key] for key in sorted(metrics)
                        if _scalar(metrics[key]) and not _timed(key)},
        })
    return trials


def _time_budget(study_path: Path) -> float | None:
    """The ``[study] timeout`` of the configuration the study was run with, or None."""
    with contextlib.closing(sqlite3.connect(study_path)) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'config_toml'").fetchone()
    if not row or not row[0]:
        return None
    return tomllib.loads(row[0]).get("study", {}).get("timeout")


def _load() -> dict[str, Any]:
    return json.loads(RECORDED.read_text()) if RECORDED.exists() else {}


def record(name: str, study_path: Path) -> None:
    """Write the trials of ``study_path`` as the entry ``name``, keeping every other entry."""
    recorded = _load()
    recorded[name] = {**machine(), "time_budget": _time_budget(study_path),
                      "trials": read_trials(study_path)}
    RECORDED.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


def _close(now: Any, then: Any, relative: float, absolute: float = 0.0) -> bool:
    if isinstance(now, bool) or isinstance(then, bool) or not (
            isinstance(now, (int, float)) and isinstance(then, (int, float))):
        return now == then  # strings, None, flags: exactly
    if isinstance(now, int) and isinstance(then, int):
        return now == then
    if math.isnan(now) or math.isnan(then):
        return math.isnan(now) and math.isnan(then)
    return math.isclose(now, then, rel_tol=relative, abs_tol=absolute)


def _config_differs(now: dict, then: dict, tolerance: Tolerance) -> bool:
    return now.keys() != then.keys() or not all(
        _close(now[key], then[key], tolerance.config) for key in then)


def differences(name: str, trials: list[dict], entry: dict, tolerance: Tolerance) -> list[str]:
    """What differs between ``trials`` (this run) and the recorded ``entry``, one line each."""
    recorded = {trial["id"]: trial for trial in entry["trials"]}
    present = {trial["id"]: trial for trial in trials}
    problems = []
    if entry["time_budget"] is None:  # every trial of the recording, no other
        problems += [f"{name}: trial {i} missing" for i in sorted(recorded.keys() - present.keys())]
        problems += [f"{name}: trial {i} not recorded"
                     for i in sorted(present.keys() - recorded.keys())]
    elif recorded and not present:  # as many trials as the budget allowed, at least one
        problems.append(f"{name}: no trial within the time budget, recorded {len(recorded)}")
    for trial_id in sorted(recorded.keys() & present.keys()):
        now, then = present[trial_id], recorded[trial_id]
        where = f"{name}: trial {trial_id}"
        if _config_differs(now["config"], then["config"], tolerance):
            problems.append(f"{where}: config {now['config']!r}, recorded {then['config']!r}")
        for field in ("state", "resource"):
            if now[field] != then[field]:
                problems.append(f"{where}: {field} {now[field]!r}, recorded {then[field]!r}")
        if not _close(now["value"], then["value"], tolerance.relative, tolerance.absolute):
            problems.append(f"{where}: value {now['value']!r}, recorded {then['value']!r}")
        for key in sorted(now["metrics"].keys() | then["metrics"].keys()):
            if key not in now["metrics"] or key not in then["metrics"]:
                side = "missing" if key not in now["metrics"] else "not recorded"
                problems.append(f"{where}: metric {key} {side}")
            elif not _close(now["metrics"][key], then["metrics"][key], tolerance.relative,
                            tolerance.absolute):
                problems.append(f"{where}: metric {key} {now['metrics'][key]!r}, "
                                f"recorded {then['metrics'][key]!r}")
    return problems


def check_recorded(name: str, study_path: Path) -> None:
    """Compare the trials of ``study_path`` with the entry ``name`` of the recorded values
    (record them instead when ``MEDTUNE_RECORD_VALUES=1``); fails naming what differs."""
    assert Path(study_path).is_file(), f"{name}: no study file {study_path}"
    if os.environ.get("MEDTUNE_RECORD_VALUES") == "1":
        record(name, study_path)
        return
    entry = _load().get(name)
    assert entry is not None, (f"no recorded values for {name} in {RECORDED.name}: record "
                               f"them with MEDTUNE_RECORD_VALUES=1")
    here = machine()
    there = {key: entry.get(key) for key in here}
    tolerance = SAME_MACHINE if here == there else OTHER_MACHINE
    problems = differences(name, read_trials(study_path), entry, tolerance)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise AssertionError(
            f"{name} differs from its recorded values, {len(problems)} differences ({tolerance}; "
            f"recorded on {there}, running on {here}):\n  {shown}{more}")
