"""Cross-validation folds by patient: every case validated exactly once, a patient's cases
always on one side, balanced folds, deterministic from the seed, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtune.plugins.scans.folds import Fold, patient_folds
from medtune.plugins.scans.layout import ScanCase, ScanDataError


def make_cases(sizes: list[int]) -> list[ScanCase]:
    """Cases of patients owning ``sizes[p]`` cases each."""
    cases, number = [], 0
    for patient, size in enumerate(sizes):
        for _ in range(size):
            cases.append(ScanCase(f"case_{number:03d}", (Path(f"case_{number:03d}_0000.nii.gz"),),
                                  None, f"patient_{patient:02d}"))
            number += 1
    return cases


def patient_of(cases: list[ScanCase]) -> dict[str, str]:
    return {case.name: case.patient for case in cases}


def random_configurations(count: int = 60):
    rng = np.random.default_rng(1234)
    for _ in range(count):
        sizes = list(rng.integers(1, 4, size=int(rng.integers(2, 25))))
        k = int(rng.integers(2, min(len(sizes), 6) + 1))
        yield sizes, k, int(rng.integers(0, 1000))


def test_every_case_validated_exactly_once_and_patients_never_split():
    for sizes, k, seed in random_configurations():
        cases = make_cases(sizes)
        owner = patient_of(cases)
        folds = patient_folds(cases, k, seed=seed)
        assert [fold.index for fold in folds] == list(range(k))
        validated = [name for fold in folds for name in fold.validation]
        assert sorted(validated) == sorted(owner)  # once each
        seen_patients: set[str] = set()
        for fold in folds:
            assert isinstance(fold, Fold) and fold.validation and fold.train
            assert set(fold.train).isdisjoint(fold.validation)
            assert set(fold.train) | set(fold.validation) == set(owner)
            assert list(fold.train) == sorted(fold.train)
            validation_patients = {owner[name] for name in fold.validation}
            assert validation_patients.isdisjoint({owner[name] for name in fold.train})
            assert validation_patients.isdisjoint(seen_patients)  # never in two validation folds
            seen_patients |= validation_patients


def test_folds_are_balanced_by_number_of_cases():
    for sizes, k, seed in random_configurations():
        lengths = [len(fold.validation) for fold in patient_folds(make_cases(sizes), k, seed=seed)]
        assert max(lengths) - min(lengths) <= max(sizes), (sizes, k, lengths)
    lengths = [len(f.validation) for f in patient_folds(make_cases([1] * 23), 5)]
    assert sorted(lengths) == [4, 4, 5, 5, 5]
    lengths = [len(f.validation) for f in patient_folds(make_cases([2, 2, 2, 2, 1, 1, 1, 1]), 3)]
    assert max(lengths) - min(lengths) <= 1


def test_deterministic_and_independent_of_case_order():
    cases = make_cases([1, 2, 1, 3, 1, 1, 2, 1, 1])
    first = patient_folds(cases, 4, seed=7)
    assert patient_folds(cases, 4, seed=7) == first
    assert patient_folds(list(reversed(cases)), 4, seed=7) == first
    others = {tuple(f.validation for f in patient_folds(cases, 4, seed=s)) for s in range(10)}
    assert len(others) > 1  # the seed changes the split


def test_holdout_split_by_patient():
    for sizes, _, seed in random_configurations(40):
        cases = make_cases(sizes)
        owner = patient_of(cases)
        (fold,) = patient_folds(cases, 1, seed=seed, holdout=0.25)
        assert fold.index == 0 and fold.validation and fold.train
        assert sorted(fold.train + fold.validation) == sorted(owner)
        assert {owner[n] for n in fold.validation}.isdisjoint({owner[n] for n in fold.train})
        if len(sizes) > 4:
            assert abs(len(fold.validation) - 0.25 * len(cases)) <= max(sizes)
    (fold,) = patient_folds(make_cases([1] * 10), 1, holdout=0.2)
    assert len(fold.validation) == 2
    (fold,) = patient_folds(make_cases([3, 1]), 1, holdout=0.9)
    assert len(fold.train) >= 1  # at least one patient left to train on


def test_two_cases_of_the_sample_patient_stay_together(tmp_path):
    from medtune.plugins.scans.sample import write_sample

    dataset = write_sample(tmp_path / "data", cases=8, size=16)
    owner = patient_of(list(dataset.training))
    for fold in patient_folds(dataset.training, 5):
        assert {owner[n] for n in fold.validation}.isdisjoint({owner[n] for n in fold.train})


@pytest.mark.parametrize("sizes, k, message", [
    ([2, 1, 1], 4, "folds=4 but the cases come from 3 patients"),
    ([3], 2, "at least 2 patients, found 1"),
    ([3], 1, "at least 2 patients, found 1"),
    ([1, 1], 0, "folds must be an integer >= 1"),
])
def test_errors(sizes, k, message):
    with pytest.raises(ScanDataError, match=message):
        patient_folds(make_cases(sizes), k)


def test_duplicate_cases_and_bad_holdout():
    cases = make_cases([1, 1, 1])
    with pytest.raises(ScanDataError, match="'case_000' is listed twice"):
        patient_folds(cases + cases[:1], 2)
    with pytest.raises(ScanDataError, match="holdout"):
        patient_folds(cases, 1, holdout=1.0)
