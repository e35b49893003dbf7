"""``medtune export-optuna STUDY STORAGE_URL``: a medtune study copied into an Optuna storage, so
that ``optuna-dashboard STORAGE_URL`` (or ``optuna.load_study``) shows it; Optuna is the extra
``medtune[optuna]``.

The medtune study is only read. The Optuna study is new, named after the medtune study (or
``--study-name``), with its direction; a storage already holding a study of that name is
refused before anything is written. Each finished trial becomes one Optuna trial, in trial-id
order: COMPLETE with its value, PRUNED with its last value (if it had one), FAIL without one;
RUNNING and REQUEUED trials are left out (a requeued trial's configuration was run again as
a later trial). A trial's parameters are its configuration as medtune stored it, its
intermediate values its reported steps (steps that are not all whole numbers are numbered
0, 1, ... in order and kept as ``steps``), its start and end times its own, and its user
attributes ``medtune_trial_id``, ``seed``, ``resource``, ``metrics``, ``tag`` and, for a
failure, ``failure_reason``.

Distributions come from the ``[space]`` of the study's stored configuration: floats and ints
keep their bounds and log scale; ordinals and categoricals are categorical over their values
(so the dashboard shows the values a trial used, not indices). A parameter the study's space
does not describe, or whose stored values fall outside it, gets bounds (or choices) from the
values the trials took.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from medtune.commands import Command
from medtune.errors import MedtuneError
from medtune.plugins.searchers.optuna_sampler import import_optuna, quiet_optuna
from medtune.search.space import (
    Categorical,
    Float,
    Int,
    Ordinal,
    Parameter,
    SearchSpace,
    SearchSpaceError,
)
from medtune.study.store import FINISHED_STATES, StudyStore, Trial, TrialState


class OptunaExportError(MedtuneError):
    """A study cannot be exported as asked; the message says why and what to do."""


@dataclass(frozen=True)
class OptunaExport:
    """What :func:`export_to_optuna` wrote: the Optuna study's name, its storage, how many
    trials it holds and how many of the medtune study's trials were left out (unfinished)."""

    study_name: str
    storage: str
    trials: int
    left_out: int


def export_to_optuna(study_path: str | Path, storage_url: str, *,
                     study_name: str | None = None) -> OptunaExport:
    """Copy the medtune study at ``study_path`` into a new Optuna study in ``storage_url``
    (an Optuna storage URL, e.g. ``sqlite:///optuna.db``); see the module docstring.

    Raises:
        OptunaExportError: Optuna is not installed, the storage cannot be opened or already
            has a study of that name (nothing is written then), or a trial cannot be written
            (the partly written study is deleted).
        StudyStoreError: ``study_path`` is not a medtune study.
    """
    optuna = import_optuna("export-optuna", OptunaExportError)
    with StudyStore(study_path, read_only=True) as store:
        info = store.info
        trials = store.trials()
    name = info.name if study_name is None else study_name
    finished = [t for t in trials if t.state in FINISHED_STATES]
    distributions = trial_distributions(finished, _stored_space(info.config_text), optuna)
    frozen = [optuna_trial(t, distributions, optuna) for t in finished]
    with quiet_optuna(optuna):
        storage = _open_storage(optuna, storage_url)
        if name in optuna.study.get_all_study_names(storage):
            raise OptunaExportError(
                f"{storage_url} already has an Optuna study named {name!r}; choose another "
                "name with --study-name, or another storage")
        study = optuna.create_study(storage=storage, study_name=name, direction=info.direction)
        try:
            study.set_user_attr("medtune_study", str(Path(study_path).resolve()))
            study.set_user_attr("seed", info.seed)
            study.set_user_attr("medtune_version", info.medtune_version)
            study.add_trials(frozen)
        except Exception as exc:
            optuna.delete_study(study_name=name, storage=storage)
            raise OptunaExportError(f"writing study {name!r} to {storage_url} failed, and it "
                                    f"was removed again: {type(exc).__name__}: "
                                    f"{_first_line(exc)}") from exc
    return OptunaExport(name, storage_url, len(frozen), len(trials) - len(finished))


def _open_storage(optuna: Any, storage_url: str) -> Any:
    try:
        return optuna.storages.get_storage(storage_url)
    except Exception as exc:  # SQLAlchemy's errors for a bad URL, a missing folder, ...
        raise OptunaExportError(
            f"cannot open {storage_url!r} as an Optuna storage ({type(exc).__name__}: "
            f"{_first_line(exc)}); give a database URL such as sqlite:///optuna.db") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _stored_space(config_text: str) -> SearchSpace | None:
    """The ``[space]`` of a study's stored configuration, or None when it has none (a study
    run from Python) or it does not parse."""
    try:
        table = tomllib.loads(config_text).get("space")
        return None if table is None else SearchSpace.from_dict(table)
    except (tomllib.TOMLDecodeError, SearchSpaceError):
        return None


def trial_distributions(trials: Sequence[Trial], space: SearchSpace | None,
                        optuna: Any) -> dict[str, Any]:
    """An Optuna distribution for every parameter the ``trials`` set: the space's (see the
    module docstring) when it holds all their values, else one spanning those values."""
    values: dict[str, list[Any]] = {}
    for trial in trials:
        for name, value in trial.config.items():
            values.setdefault(name, []).append(value)
    distributions = {}
    for name, seen in values.items():
        parameter = space[name] if space is not None and name in space.names else None
        if parameter is not None and _holds(parameter, seen):
            distributions[name] = _declared(parameter, optuna)
        else:
            distributions[name] = _spanning(seen, optuna)
    return distributions


def _holds(parameter: Parameter, values: list[Any]) -> bool:
    try:
        return all(parameter.normalize(value) == value for value in values)
    except SearchSpaceError:
        return False


def _declared(parameter: Parameter, optuna: Any) -> Any:
    kinds = optuna.distributions
    if isinstance(parameter, Float):
        return kinds.FloatDistribution(parameter.low, parameter.high, log=parameter.log)
    if isinstance(parameter, Int):
        return kinds.IntDistribution(parameter.low, parameter.high, log=parameter.log)
    if isinstance(parameter, Ordinal):
        return kinds.CategoricalDistribution(parameter.values)
    assert isinstance(parameter, Categorical)
    return kinds.CategoricalDistribution(parameter.choices)


def _spanning(values: list[Any], optuna: Any) -> Any:
    """Integers: their range; numbers: their range as floats; anything else: the distinct
    values (``True`` and ``1`` apart) as categories, in first-seen order."""
    kinds = optuna.distributions
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values) and all(math.isfinite(v) for v in numbers):
        if all(isinstance(v, int) for v in numbers):
            return kinds.IntDistribution(min(numbers), max(numbers))
        return kinds.FloatDistribution(float(min(numbers)), float(max(numbers)))
    choices: list[Any] = []
    for value in values:
        if not any(type(c) is type(value) and c == value for c in choices):
            choices.append(value)
    return kinds.CategoricalDistribution(choices)


def optuna_trial(trial: Trial, distributions: Mapping[str, Any], optuna: Any) -> Any:
    """The Optuna ``FrozenTrial`` of a finished medtune ``trial`` (see the module docstring)."""
    states = optuna.trial.TrialState
    value = trial.value if trial.value is not None and not math.isnan(trial.value) else None
    state = {TrialState.COMPLETE: states.COMPLETE, TrialState.PRUNED: states.PRUNED,
             TrialState.FAIL: states.FAIL}[trial.state]
    user_attrs: dict[str, Any] = {"medtune_trial_id": trial.id, "seed": trial.seed,
                                  "resource": trial.resource, "metrics": trial.metrics,
                                  "tag": trial.tag}
    if trial.failure_reason is not None:
        user_attrs["failure_reason"] = trial.failure_reason.value
    steps = sorted(trial.intermediate)
    if all(float(step).is_integer() for step in steps):
        intermediate = {int(step): trial.intermediate[step] for step in steps}
    else:
        intermediate = {i: trial.intermediate[step] for i, step in enumerate(steps)}
        user_attrs["steps"] = steps
    frozen = optuna.trial.create_trial(
        state=state, value=None if state == states.FAIL else value, params=dict(trial.config),
        distributions={name: distributions[name] for name in trial.config},
        user_attrs=user_attrs, intermediate_values=intermediate)
    frozen.datetime_start = _local(trial.started)
    frozen.datetime_complete = _local(trial.finished or trial.started)
    return frozen


def _local(moment: datetime) -> datetime:
    """A stored (UTC) time as the naive local time Optuna records."""
    return moment.astimezone().replace(tzinfo=None)


class ExportOptunaCommand(Command):
    """``medtune export-optuna STUDY STORAGE_URL [--study-name NAME]``."""

    name = "export-optuna"
    help = "copy a study into an Optuna storage, to view it with optuna-dashboard"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("study", metavar="STUDY", help="study file (.sqlite), or a "
                                                           "study's name, looked up as "
                                                           "studies/NAME.sqlite")
        parser.add_argument("storage_url", metavar="STORAGE_URL",
                            help="Optuna storage URL, e.g. sqlite:///optuna.db (created if "
                                 "missing)")
        parser.add_argument("--study-name", default=None, metavar="NAME",
                            help="name of the Optuna study (default: the medtune study's)")

    def run(self, args: argparse.Namespace, console: Any) -> int:
        from medtune.studies import locate

        study = locate(args.study)
        done = export_to_optuna(study, args.storage_url, study_name=args.study_name)
        left_out = f" ({done.left_out} unfinished left out)" if done.left_out else ""
        console.print(f"Exported {done.trials} trials{left_out} of {study} to the Optuna study "
                      f"{done.study_name!r} in {done.storage}; view it with `optuna-dashboard "
                      f"{done.storage}`.", markup=False, highlight=False, soft_wrap=True)
        return 0


#: ``{name: factory}`` for the ``medtune_commands`` hook.
COMMANDS = {ExportOptunaCommand.name: ExportOptunaCommand}
