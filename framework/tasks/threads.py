"""The ``threads`` setting of every built-in task: torch's intra-op threads for one trial.

The networks of a CPU-scale run are made of small ops, which extra OpenMP threads slow down many
times over when other jobs share the cores; ``threads = 1`` is the robust choice there. A
positive integer sets the threads for the trial and restores the previous setting afterwards;
0 (or no value) keeps PyTorch's setting. A process-pool executor already gives each worker its
share of the cores; this setting narrows it further per trial.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from medtune.errors import MedtuneError


def check_threads(task: str, value: Any) -> int:
    """``value`` as a thread count, 0 meaning "keep PyTorch's setting"; raises
    :class:`~medtune.errors.MedtuneError` naming ``task`` for anything but a whole number >= 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MedtuneError(f"{task} task: threads must be a whole number >= 1, or 0 to keep "
                           f"PyTorch's setting, got {value!r}")
    return value


@contextlib.contextmanager
def trial_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (0: unchanged), restored on exit."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count:
            torch.set_num_threads(previous)


def threaded(task: str, defaults: Mapping[str, Any]) -> Callable[[Callable], Callable]:
    """Decorator of a task's ``train_*(config, resource, seed, report)``: runs it under the
    ``threads`` of ``config`` (else of the task's ``defaults``), checked first."""

    def wrap(train: Callable) -> Callable:
        @functools.wraps(train)
        def run(config: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
            count = check_threads(task, config.get("threads", defaults["threads"]))
            with trial_threads(count):
                return train(config, *args, **kwargs)

        return run

    return wrap
