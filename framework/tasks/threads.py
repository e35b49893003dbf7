"""The ``threads`` setting of a task: torch's intra-op threads for one trial.

The networks of a CPU-scale run are made of small ops, which extra OpenMP threads slow down many
times over when other jobs share the cores; ``threads = 1`` is the robust choice there. A
positive integer sets the threads for the trial and restores the previous setting afterwards;
0 (or no value) keeps PyTorch's setting. A process-pool executor already gives each worker its
share of the cores; this setting narrows it further per trial. A task that declares ``threads``
among its settings gets this behaviour from :class:`medtune.tasks.Task`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

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
    if not count:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
