"""Importable objectives for the pruning tests (spawned workers import them by name)."""

from __future__ import annotations

import os
import time

EPOCHS = 6


def curves(config, resource, seed, report):
    """A learning curve whose level is ``x``: ``(x + 1) * epoch / EPOCHS`` at each epoch (to
    maximise), with 10 per-case scores around it; sleeps ``MEDTUNE_TEST_SLEEP`` per epoch."""
    pause = float(os.environ.get("MEDTUNE_TEST_SLEEP", "0"))
    value = 0.0
    for epoch in range(1, EPOCHS + 1):
        value = (config["x"] + 1) * epoch / EPOCHS
        report(epoch, value, scores=[value + 0.02 * ((i * 7) % 5 - 2) for i in range(10)])
        time.sleep(pause)
    return value


def silent(config, resource, seed, report):
    """Never reports."""
    return config["x"]


def never_reports(config, resource, seed, report):
    """Never reports, and says so."""
    return config["x"]


never_reports.reports_intermediate = False


def stubborn(config, resource, seed, report):
    """Catches every stop and returns anyway."""
    for epoch in (1, 2, 3):
        try:
            report(epoch, config["x"])
        except Exception:  # noqa: BLE001 - on purpose
            pass
    return config["x"]
