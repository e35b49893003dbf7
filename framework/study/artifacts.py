"""Trial artifacts: the files a trial keeps (its trained weights, its plan...), one folder per
trial beside the study file.

While a trial of a study runs, :func:`trial_folder` is the folder where its objective writes
what it keeps; outside a study it is None, so an objective writes artifacts only when asked
to. The folder is ``<study>.artifacts/trial_<id>.partial/`` (made on the first call) while the
trial runs; when the trial completes, :func:`run_trial <medtune.study.executors.run_trial>`
renames it to ``trial_<id>/`` in one step, so a folder without ``.partial`` is always whole.
A trial that is pruned or fails keeps nothing. Write paths relative to the folder inside it:
it is renamed, then perhaps exported elsewhere.

The driver records the kept folder in the trial's ``artifact`` column (relative to the study
file's folder) and keeps the artifacts of the best ``keep_best`` COMPLETE trials only
(:data:`KEEP_BEST` by default, 0 keeps all): after each result, the others' ``artifact`` is set
to NULL, then their folders are removed. The store is therefore the list of what is kept; a
resumed study removes every trial folder it does not list (:func:`remove_unlisted`): the
``.partial`` folders of trials that were in flight, and a folder whose trial the killed driver
never recorded.

:func:`trial_folder` reads a state of this process, set only while the objective runs: every
executor runs one trial per process at a time, and threads the objective starts see it too;
a process the objective starts does not. With Ray across machines, the study file and so its
artifact folder must be on a file system every node mounts at the same path.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from medtune.errors import MedtuneError
from medtune.study.files import sync_folder

#: How many COMPLETE trials keep their artifacts unless a study says otherwise (``[study]
#: keep_best``); 0 keeps every trial's.
KEEP_BEST = 5

_PARTIAL = ".partial"
_TRIAL_FOLDER = re.compile(r"trial_(\d+)(\.partial)?")


class ArtifactError(MedtuneError):
    """A study's artifact folder is not as the study expects it."""


class TrialArtifacts:
    """The artifact folder of trial ``trial_id`` under the study's artifact ``root``."""

    def __init__(self, root: str | os.PathLike[str], trial_id: int):
        self.root = Path(root)
        self.trial_id = trial_id
        self.final = self.root / folder_name(trial_id)
        self.partial = self.root / f"{folder_name(trial_id)}{_PARTIAL}"

    def folder(self) -> Path:
        """The folder the running trial writes into, made if it is not there yet."""
        self.partial.mkdir(parents=True, exist_ok=True)
        return self.partial

    def finish(self, keep: bool) -> bool:
        """End the trial: with ``keep`` (a COMPLETE trial), rename what it wrote to its final
        name; otherwise remove it. Returns whether a folder was kept. ``OSError`` when the
        rename fails (what the trial wrote is then removed)."""
        if not self.partial.is_dir():
            return False
        try:
            if keep:
                os.rename(self.partial, self.final)
                sync_folder(self.root)
                return True
        finally:
            shutil.rmtree(self.partial, ignore_errors=True)
        return False

    def discard(self) -> None:
        """Remove whatever the trial wrote, kept or not."""
        for folder in (self.partial, self.final):
            shutil.rmtree(folder, ignore_errors=True)


_running: TrialArtifacts | None = None


def trial_folder() -> Path | None:
    """The folder where the running trial keeps its files, or None outside a study.

    Made on the first call; kept as ``trial_<id>/`` beside the study file when the trial
    completes (and stays among the best ``keep_best``), removed otherwise.
    """
    return None if _running is None else _running.folder()


@contextlib.contextmanager
def collecting(artifacts: TrialArtifacts | None) -> Iterator[None]:
    """Make ``artifacts`` what :func:`trial_folder` gives for the block (None: nothing)."""
    global _running
    previous, _running = _running, artifacts
    try:
        yield
    finally:
        _running = previous


def folder_name(trial_id: int) -> str:
    """The name of trial ``trial_id``'s kept folder in its study's artifact root."""
    return f"trial_{trial_id}"


def artifact_root(study_path: str | os.PathLike[str]) -> Path:
    """Where the trials of the study file ``study_path`` keep artifacts: the folder
    ``<file stem>.artifacts`` beside it."""
    path = Path(study_path)
    return path.with_name(f"{path.stem}.artifacts")


def relative_folder(study_path: str | os.PathLike[str], trial_id: int) -> str:
    """Trial ``trial_id``'s kept folder as the store records it: relative to the study file's
    folder, with ``/``."""
    return f"{artifact_root(study_path).name}/{folder_name(trial_id)}"


def require_absent(study_path: str | os.PathLike[str]) -> None:
    """Refuse to start a study whose artifact root already holds trial folders (those of an
    earlier study file of the same name): its trials would mix with them."""
    root = artifact_root(study_path)
    if root.is_dir() and any(_TRIAL_FOLDER.fullmatch(entry.name) for entry in root.iterdir()):
        raise ArtifactError(
            f"{root} already holds trial artifacts, of an earlier study stored as "
            f"{Path(study_path).name}: move or remove that folder, or store the new study "
            "elsewhere (study.storage)")


def remove_unlisted(study_path: str | os.PathLike[str], listed: Collection[str]) -> list[Path]:
    """Remove the trial folders under the study's artifact root that the store does not list
    (``listed``: the ``artifact`` column's values), ``.partial`` ones included; return them.
    Other files in the root are left alone."""
    root = artifact_root(study_path)
    if not root.is_dir():
        return []
    kept = {Path(relative).name for relative in listed}
    removed = []
    for entry in sorted(root.iterdir()):
        if _TRIAL_FOLDER.fullmatch(entry.name) and entry.name not in kept:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def check_keep_best(value: Any) -> int:
    """``value`` as a ``keep_best`` (how many of the best COMPLETE trials keep their
    artifacts; 0: all), else ``ValueError`` saying what it must be."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"keep_best must be a whole number >= 0 (how many of the best trials "
                         f"keep their artifacts; 0 keeps every trial's), got {value!r}")
    return value
