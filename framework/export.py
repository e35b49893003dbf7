"""Exported models: ``medtune export`` copies a trial's artifact folder (see
:mod:`medtune.study.artifacts`) out of its study with a manifest, and ``medtune predict`` hands
such a folder, or a study's best trial that kept artifacts, to its task's
:meth:`~medtune.tasks.Task.predict`.

The manifest, ``medtune_model.json`` (:data:`MANIFEST`) in the exported folder, is a JSON
object: ``format_version`` (:data:`FORMAT_VERSION`; a larger one was written by a newer
medtune and is refused), ``task`` (the study's ``[objective] task``, or its
``"module:function"``), ``study`` (its name), ``trial`` (the trial's id), ``value``,
``direction``, ``config`` (the trial's searched configuration), ``medtune_version`` and
``exported`` (UTC, ISO 8601). The rest of the folder is what the trial kept, as it kept it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from medtune import __version__
from medtune.config import parse_config
from medtune.errors import MedtuneError
from medtune.studies import locate
from medtune.study.files import sync_folder
from medtune.study.records import utc_now
from medtune.study.store import DamagedTrialError, StudyStore, StudyStoreError
from medtune.tables import format_number, verbatim
from medtune.tasks import load_task

#: The manifest's file name in an exported folder.
MANIFEST = "medtune_model.json"
#: The manifest format this medtune writes, and the newest it reads.
FORMAT_VERSION = 1


class ExportError(MedtuneError):
    """A model cannot be exported, or predicted with, as asked."""


@dataclass(frozen=True)
class Model:
    """A trained model: its ``folder`` (a trial's artifacts) and its manifest (without
    ``exported`` when it comes from a study)."""

    folder: Path
    manifest: Mapping[str, Any]


def study_model(study_path: str | os.PathLike[str], trial: int | None = None) -> Model:
    """Trial ``trial`` of the study (None: the best COMPLETE trial that keeps artifacts) as a
    model. :class:`ExportError` when that trial keeps no artifacts or does not exist."""
    with StudyStore(study_path, read_only=True) as store:
        config = parse_config(store.config_text, f"{study_path} (stored configuration)")
        why = ("a trial keeps artifacts when its task writes them into "
               "medtune.study.artifacts.trial_folder() and it completes, and only while it is "
               f"among the best [study] keep_best = {config.keep_best} trials (0 keeps every "
               "trial's)")
        if trial is None:
            chosen = store.best_trial(with_artifact=True)
            if chosen is None:
                raise ExportError(f"no trial of {study_path} keeps artifacts: {why}")
        else:
            try:
                chosen = store.trial(trial)
            except DamagedTrialError:
                raise
            except StudyStoreError:
                raise ExportError(f"{study_path} has no trial {trial}: `medtune report "
                                  f"{study_path}` lists its trials") from None
            if chosen.artifact is None:
                kept = ", ".join(map(str, store.artifacts())) or "none"
                raise ExportError(f"trial {trial} of {study_path} ({chosen.state.value}) keeps no "
                                  f"artifacts: {why}; the trials that keep them: {kept}")
        folder = store.artifact_folder(chosen)
        manifest = {
            "format_version": FORMAT_VERSION,
            "task": config.objective,
            "study": store.name,
            "trial": chosen.id,
            "value": chosen.value,
            "direction": store.direction,
            "config": chosen.config,
            "medtune_version": __version__,
        }
    assert folder is not None
    if not folder.is_dir():
        raise ExportError(f"{folder}, the artifact folder of trial {chosen.id} of {study_path}, "
                          "is missing: it was moved or removed; export another trial (--trial)")
    return Model(folder, manifest)


def load_model(reference: str | os.PathLike[str]) -> Model:
    """The model ``reference`` names: a folder ``medtune export`` wrote, or a study (file or
    name, see :func:`medtune.studies.locate`) for its best trial that keeps artifacts."""
    path = Path(reference)
    if not path.is_dir():
        try:
            study = locate(path)
        except StudyStoreError:
            study = None
        if study is None or not study.exists():
            raise ExportError(f"{reference}: no such exported model or study: give a folder "
                              "`medtune export` wrote, a study file, or the name of a study "
                              "under studies/")
        return study_model(study)
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path} has no {MANIFEST}: give a folder `medtune export` wrote, or "
                          "a study") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{manifest_path} cannot be read ({exc}): export the model "
                          "again") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"{manifest_path}: format_version is {version!r}, not a whole number "
                          ">= 1: export the model again")
    if version > FORMAT_VERSION:
        raise ExportError(f"{path} was exported by a newer medtune (format {version}, this one "
                          f"reads up to {FORMAT_VERSION}): upgrade medtune")
    if not isinstance(manifest.get("task"), str):
        raise ExportError(f"{manifest_path} names no task: export the model again")
    return Model(path, manifest)


def export(study_path: str | os.PathLike[str], out: str | os.PathLike[str], console: Console,
           trial: int | None = None) -> Path:
    """Copy trial ``trial``'s artifact folder (None: the best COMPLETE trial's that keeps
    one) to the new folder ``out`` with its manifest; returns ``out``.

    The copy is made under a temporary name beside ``out`` and renamed into place, so ``out``
    is whole or absent. :class:`ExportError` when ``out`` exists, or as
    :func:`study_model` says.
    """
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out} already exists: export into a new folder")
    model = study_model(study_path, trial)
    manifest = {**model.manifest, "exported": utc_now().isoformat()}
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        shutil.copytree(model.folder, temporary)
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n",
                                          encoding="utf-8")
        try:
            os.rename(temporary, out)
        except OSError as exc:
            raise ExportError(f"cannot export to {out} ({exc.strerror or exc}): export into a "
                              "new folder") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    sync_folder(out.parent)
    console.print(f"Exported trial {manifest['trial']} of study {verbatim(manifest['study'])} "
                  f"(value {format_number(manifest['value'])}) to {verbatim(out)}",
                  highlight=False, soft_wrap=True)
    return out


def predict(model: str | os.PathLike[str], inputs: str | os.PathLike[str],
            output: str | os.PathLike[str], console: Console, *,
            labels: str | os.PathLike[str] | None = None, tta: bool = False) -> Mapping[str, Any]:
    """Predict the inputs of the folder ``inputs`` into the new or empty folder ``output``
    with ``model`` (see :func:`load_model`), by its task's
    :meth:`~medtune.tasks.Task.predict`; returns what that returns.

    Everything is checked before ``output`` is made; ``output`` is removed again if this
    made it and the task fails before writing into it. :class:`ExportError` for a model,
    folder or task that does not fit.
    """
    found = load_model(model)
    task_name = found.manifest["task"]
    if ":" in task_name:
        raise ExportError(f"{model} was trained by the objective {task_name}, a function, not a "
                          "task: only a task predicts (medtune.tasks.Task.predict)")
    task = load_task(task_name)
    inputs, output = Path(inputs), Path(output)
    folders = {"--input": inputs, **({"--labels": Path(labels)} if labels is not None else {})}
    for option, folder in folders.items():
        if not folder.is_dir():
            raise ExportError(f"{option} {folder}: no such folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"--output {output} already exists and is not an empty folder: "
                          "predict into a new or empty folder")
    made = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        scores = task.predict(found.folder, inputs, output,
                              labels=folders.get("--labels"), tta=tta, console=console)
    except BaseException:
        if made and not any(output.iterdir()):
            output.rmdir()
        raise
    console.print(f"Predictions of trial {found.manifest['trial']} of study "
                  f"{verbatim(found.manifest['study'])}: {verbatim(output)}",
                  highlight=False, soft_wrap=True)
    return scores
