"""What a report reads from a study file: its finished trials in completion order, its stored
configuration and search space; and the error of a report that cannot be made."""

from __future__ import annotations

from medtune.config import ConfigError, StudyConfig, parse_config
from medtune.errors import MedtuneError
from medtune.search.space import SearchSpace
from medtune.study.store import StudyStore, Trial


class ReportError(MedtuneError, ValueError):
    """A report or comparison was asked of studies that cannot give it."""


def finished_trials(store: StudyStore) -> list[Trial]:
    """The study's finished trials (COMPLETE, PRUNED, FAIL) in the order they were recorded."""
    trials = [t for t in store.trials() if t.completion_order is not None]
    return sorted(trials, key=lambda t: t.completion_order)


def stored_config(store: StudyStore) -> StudyConfig | None:
    """The study's stored configuration, or None when it has none that parses."""
    if not store.config_text.strip():
        return None
    try:
        return parse_config(store.config_text, f"{store.path} (stored configuration)")
    except ConfigError:
        return None


def study_space(store: StudyStore) -> SearchSpace | None:
    """The search space of the study's stored configuration (None without one that parses):
    the plots draw ordinal and categorical parameters as categories, in the space's order."""
    config = stored_config(store)
    if config is None:
        return None
    try:
        return SearchSpace.from_dict(config.space)
    except MedtuneError:
        return None
