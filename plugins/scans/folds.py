"""Cross-validation folds grouped by patient: the cases of one patient are never split between
training and validation, so a score is never inflated by a second scan of a patient seen in
training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medtune.plugins.scans.layout import ScanCase, ScanDataError


@dataclass(frozen=True)
class Fold:
    """One split: the fold's ``index`` and its training and validation case names (sorted)."""

    index: int
    train: tuple[str, ...]
    validation: tuple[str, ...]


def patient_folds(cases: Sequence[ScanCase], k: int, seed: int = 0,
                  holdout: float = 0.2) -> list[Fold]:
    """Split ``cases`` by patient into ``k`` folds (``k >= 2``) or one hold-out split (``k == 1``).

    ``k >= 2``: every patient's cases lie in the validation set of exactly one fold, and folds
    hold about the same number of cases: patients, in an order drawn with ``seed`` and then by
    decreasing number of cases, go one by one to the fold with the fewest cases so far.
    ``k == 1``: the patients, in an order drawn with ``seed``, fill the validation set until it
    holds the nearest to ``holdout`` of the cases (at least one patient, and at least one left
    for training). The result depends only on the cases (not their order), ``k``, ``seed`` and
    ``holdout``.

    Raises:
        ScanDataError: fewer than 2 patients, ``k`` outside 1 .. number of patients, a case
            listed twice, or ``holdout`` outside (0, 1).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ScanDataError(f"folds must be an integer >= 1 (1: one hold-out split), got {k!r}")
    patients: dict[str, list[str]] = {}
    names: set[str] = set()
    for case in cases:
        if case.name in names:
            raise ScanDataError(f"case {case.name!r} is listed twice; give each case once")
        names.add(case.name)
        patients.setdefault(case.patient, []).append(case.name)
    if len(patients) < 2:
        raise ScanDataError(
            f"cross-validation needs cases of at least 2 patients, found {len(patients)} "
            f"({len(names)} case(s)); add cases, or fix groups.csv if it joins them in one patient"
        )
    if k > len(patients):
        raise ScanDataError(f"folds={k} but the cases come from {len(patients)} patients; use "
                            f"at most folds={len(patients)}, so every fold validates a patient")
    ordered = sorted(patients)
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    if k == 1:
        return [_holdout(shuffled, patients, len(names), holdout)]
    shuffled.sort(key=lambda patient: -len(patients[patient]))  # stable: ties stay shuffled
    validation: list[list[str]] = [[] for _ in range(k)]
    for patient in shuffled:
        smallest = min(range(k), key=lambda fold: len(validation[fold]))
        validation[smallest].extend(patients[patient])
    return [Fold(index, tuple(sorted(names - set(held))), tuple(sorted(held)))
            for index, held in enumerate(validation)]


def _holdout(shuffled: list[str], patients: dict[str, list[str]], count: int,
             holdout: float) -> Fold:
    """The one hold-out split: the prefix of ``shuffled`` patients nearest to ``holdout``."""
    if not 0.0 < holdout < 1.0:
        raise ScanDataError(f"holdout must lie strictly between 0 and 1, got {holdout!r}")
    target = holdout * count
    sizes = np.cumsum([len(patients[patient]) for patient in shuffled[:-1]])
    taken = 1 + int(np.argmin(np.abs(sizes - target)))  # first minimum: the fewest patients
    held = sorted(name for patient in shuffled[:taken] for name in patients[patient])
    names = {name for group in patients.values() for name in group}
    return Fold(0, tuple(sorted(names - set(held))), tuple(held))
