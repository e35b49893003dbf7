"""Choosing an executor by name: :data:`EXECUTORS`, :func:`check_executor` (its settings
checked without starting anything) and :func:`make_executor` (one built for an objective)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from medtune.study.executors.base import Executor, check_workers
from medtune.study.executors.inline import InlineExecutor
from medtune.study.executors.process import ProcessExecutor
from medtune.study.executors.ray import RayExecutor
from medtune.study.executors.trial import (
    ExecutorError,
    Objective,
    check_time_limit,
    declared_trial_timeout,
)

#: The executors by name.
EXECUTORS: dict[str, type[Executor]] = {
    "inline": InlineExecutor,
    "process": ProcessExecutor,
    "ray": RayExecutor,
}

#: Arguments every executor takes; the others of its constructor are its own options.
_COMMON = frozenset({"trial_timeout", "import_path"})


def executor_class(name: str) -> type[Executor]:
    """The executor called ``name``; an unknown name is an error listing the executors and
    suggesting the closest."""
    found = EXECUTORS.get(name) if isinstance(name, str) else None
    if found is None:
        close = difflib.get_close_matches(str(name), list(EXECUTORS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ExecutorError(f"unknown executor {name!r}{hint}: choose one of "
                            f"{', '.join(EXECUTORS)}")
    return found


def options_of(executor: type[Executor]) -> frozenset[str]:
    """The options of ``executor`` besides those every executor takes: the keyword-only
    arguments of its constructor (for ``ray``: ``address``, ``cpus_per_trial``...)."""
    parameters = inspect.signature(executor.__init__).parameters.values()
    return frozenset(p.name for p in parameters
                     if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON)


def check_executor(name: str, n_workers: int = 1, trial_timeout: float | None = None,
                   options: Mapping[str, Any] | None = None) -> type[Executor]:
    """Check an executor's settings without building it (no worker starts, no cluster is
    reached): a known ``name``, ``n_workers`` it can run, a valid ``trial_timeout`` and only
    options it takes. Returns its class; raises :class:`ExecutorError`."""
    executor = executor_class(name)
    check_workers(n_workers, executor)
    check_time_limit(trial_timeout)
    own = options_of(executor)
    unknown = sorted(set(options or {}) - own)
    if unknown:
        takes = "takes no options" if not own else f"takes the options {', '.join(sorted(own))}"
        elsewhere = [f"{option} is for executor {other!r}" for option in unknown
                     for other, cls in EXECUTORS.items() if option in options_of(cls)]
        raise ExecutorError(f"the {name} executor {takes}, got {', '.join(unknown)}"
                            + (f" ({'; '.join(elsewhere)})" if elsewhere else ""))
    return executor


def make_executor(
    name: str,
    objective: str | Objective,
    n_workers: int = 1,
    *,
    trial_timeout: float | None = None,
    import_path: Sequence[str] = (),
    **options: Any,
) -> Executor:
    """Build the executor called ``name`` (see :data:`EXECUTORS`) for ``objective``.

    ``trial_timeout``: seconds one trial may run; None for the limit the objective declares
    (:func:`declared_trial_timeout`), 0 for no limit. ``import_path``: folders where a
    ``"module:function"`` objective is looked for besides the installed packages and
    PYTHONPATH, in the driver and in the workers. ``options`` go to the executor (for
    ``ray``: ``address``, ``cpus_per_trial``, ``gpus_per_trial``, ``init_options``). A Ray
    executor connects to its cluster here: build the executor before writing anything that an
    unreachable cluster should not leave behind.
    """
    executor = check_executor(name, n_workers, trial_timeout, options)
    if trial_timeout is None:
        trial_timeout = declared_trial_timeout(objective, import_path)
    return executor(objective, n_workers, trial_timeout=trial_timeout, import_path=import_path,
                    **options)
