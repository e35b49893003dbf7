"""A tiny deterministic searcher and importable objectives for the study tests.

Objectives live here (not in the test modules) so that spawned worker processes, Ray workers
and driver subprocesses can import them by name.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from medtune.search import Float, Proposal, Searcher, SearchSpace, Suggestion


class FakeSearcher(Searcher):
    """Proposes ``{"index", "x", "seen"}`` configurations, ``limit`` of them at most.

    Deterministic given the seed and the order of ask/tell calls; ``seen`` is how many results
    it had been told when it proposed, so a replay in the wrong interleaving is caught.
    ``batch`` limits proposals without results (like a Hyperband rung that waits). The other
    arguments are the :class:`~medtune.search.Searcher` ones (direction, failure policy).
    ``told`` lists ``(suggestion id, score, failed)`` per result, as the base class scored it.
    """

    name = "fake"

    def __init__(self, seed: int, limit: int | None = None, batch: int | None = None,
                 resource: float | None = None, **shared: Any):
        super().__init__(SearchSpace([Float("x", -1.0, 1.0)]), seed=seed, **shared)
        self._random = random.Random(seed)
        self.limit = limit
        self.batch = batch
        self.resource = resource
        self.told: list[tuple[int, float | None, bool]] = []

    def _propose(self) -> Proposal | None:
        if self.batch is not None and self.asked - len(self.told) >= self.batch:
            return None
        config = {"index": self.asked, "x": self._random.uniform(-1, 1), "seen": len(self.told)}
        return Proposal(config, self.resource, {"batch": self.batch})

    def _observe(self, suggestion: Suggestion, score: float | None, failed: bool) -> None:
        self.told.append((suggestion.id, score, failed))

    def _exhausted(self) -> bool:  # a limit it does not plan: no planned_trials
        return self.limit is not None and self.asked >= self.limit


def quadratic(config, resource, seed, report):
    """(x - 0.3)^2, reporting two intermediate values."""
    value = (config["x"] - 0.3) ** 2
    report(1, value + 1.0)
    report(2, value + 0.5)
    return value


#: index % 6 -> what the trial does
FAILURE_KINDS = {1: "exception", 2: "nan", 3: "memory", 4: "cuda_oom", 5: "pruned"}


def failing(config, resource, seed, report):
    """Fails in a different way for each ``index % 6`` (see FAILURE_KINDS)."""
    kind = FAILURE_KINDS.get(config["index"] % 6)
    report(1, 0.5)
    if kind == "exception":
        raise ValueError(f"diverged on trial {config['index']}")
    if kind == "nan":
        return math.nan
    if kind == "memory":
        raise MemoryError("simulated host out of memory")
    if kind == "cuda_oom":
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    if kind == "pruned":
        from medtune.study import TrialPruned

        raise TrialPruned()
    return config["x"] ** 2


def dies_on_index_1(config, resource, seed, report):
    """Kills its own process on trial index 1 (a segfault stand-in), sleeps a little otherwise."""
    if config["index"] == 1:
        os._exit(7)
    time.sleep(0.05)
    return config["x"] ** 2


def sleeps(config, resource, seed, report):
    """Sleeps ``MEDTUNE_TEST_SLEEP`` seconds (default 0.5), then returns x^2."""
    time.sleep(float(os.environ.get("MEDTUNE_TEST_SLEEP", "0.5")))
    return config["x"] ** 2


def logged(config, resource, seed, report):
    """Appends ``<session> <index> <pid>`` to ``MEDTUNE_TEST_SIDE_FILE`` when it starts, then
    sleeps ``MEDTUNE_TEST_SLEEP`` seconds and returns x^2."""
    line = f"{os.environ['MEDTUNE_TEST_SESSION']} {config['index']} {os.getpid()}\n"
    with open(os.environ["MEDTUNE_TEST_SIDE_FILE"], "a") as side:
        side.write(line)
        side.flush()
        os.fsync(side.fileno())
    time.sleep(float(os.environ.get("MEDTUNE_TEST_SLEEP", "0.3")))
    return config["x"] ** 2


def interrupt_on_index_3(config, resource, seed, report):
    """Stands in for Ctrl-C in the driver while trial index 3 runs (inline executor)."""
    if config["index"] == 3 and os.environ.get("MEDTUNE_TEST_INTERRUPT") == "1":
        raise KeyboardInterrupt
    return config["x"] ** 2


#: calls of ``synthetic`` in this process (reset it in tests)
calls = 0


def synthetic(config, resource, seed, report):
    """A smooth score of lr, width and depth, growing with the resource. The call numbered
    ``MEDTUNE_TEST_INTERRUPT_AT`` in this process raises KeyboardInterrupt (Ctrl-C stand-in)."""
    global calls
    calls += 1
    if calls == int(os.environ.get("MEDTUNE_TEST_INTERRUPT_AT", "0")):
        raise KeyboardInterrupt
    budget = 1.0 if resource is None else resource
    return math.log10(config["lr"]) * -budget * config["width"] / (1 + config["depth"])


@dataclass(frozen=True)
class Scaled:
    """A callable objective object (like a configured objective): ``factor * x^2``."""

    factor: float

    def __call__(self, config, resource, seed, report):
        return self.factor * config["x"] ** 2


def torch_threads(config, resource, seed, report):
    """The number of threads torch uses in the process that runs the trial."""
    import torch

    return float(torch.get_num_threads())


def with_metrics(config, resource, seed, report):
    """``{"value", "double", "seed_parity"}``: named metrics beside the value; a config with
    ``"broken": "no_value"`` forgets ``"value"``, ``"text"`` returns a word as a metric,
    ``"series_value"`` a sequence as the value."""
    broken = config.get("broken")
    if broken == "no_value":
        return {"score": 1.0}
    if broken == "text":
        return {"value": 1.0, "label": "good"}
    if broken == "series_value":
        return {"value": [1.0, 2.0]}
    value = config["x"] ** 2
    return {"value": value, "double": 2 * value, "seed_parity": float(seed % 2),
            "curve": [value, float("nan"), 3.0]}
