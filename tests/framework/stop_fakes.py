"""Importable objectives for the tests of how trials and runs stop: hanging, exiting, running
out of memory, declaring a time limit.

They live in a module (not in the test files) so that spawned workers, Ray workers and driver
subprocesses can import them by name. Configurations carry ``index`` and ``x``, as those of
``study_fakes.FakeSearcher`` do, or only ``x`` (a real searcher's space).
"""

from __future__ import annotations

import os
import sys
import time


def hangs_on_index_1(config, resource, seed, report):
    """Trial index 1 sleeps for an hour (a hung data loader, a deadlock); the others return
    x^2 at once."""
    if config["index"] == 1:
        time.sleep(3600)
    return config["x"] ** 2


def spins_on_index_1(config, resource, seed, report):
    """Trial index 1 loops forever in Python; the others return x^2 at once."""
    if config["index"] == 1:
        while True:
            pass
    return config["x"] ** 2


def catches_every_stop(config, resource, seed, report):
    """Sleeps, catching whatever interrupts it, three times; then returns 1.0."""
    for _ in range(3):
        try:
            time.sleep(3600)
        except BaseException:  # noqa: BLE001 - what a careless objective does
            continue
    return 1.0


def declares_a_limit(config, resource, seed, report):
    """x^2; declares that one of its trials may run 0.5 s."""
    return config["x"] ** 2


declares_a_limit.trial_timeout = 0.5


def allocates_too_much(config, resource, seed, report):
    """Asks torch for 4 PiB of host memory (refused at once)."""
    import torch

    torch.empty(2**50)
    return 0.0


def exits(config, resource, seed, report):
    """Calls sys.exit(3) on trial index 1."""
    if config["index"] == 1:
        sys.exit(3)
    return config["x"] ** 2


def hangs_after_two(config, resource, seed, report):
    """Appends its process id to ``MEDTUNE_TEST_SIDE_FILE`` when it starts; from the third
    trial on, hangs while ``MEDTUNE_TEST_HANG`` is 1. Returns (x - 0.3)^2."""
    side = os.environ["MEDTUNE_TEST_SIDE_FILE"]
    with open(side, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    with open(side) as handle:
        started = len(handle.read().splitlines())
    if started > 2 and os.environ.get("MEDTUNE_TEST_HANG") == "1":
        time.sleep(3600)
    return (config["x"] - 0.3) ** 2
