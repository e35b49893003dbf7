"""Wall-clock timing: warm-up, then interleaved samples; median and inter-quartile range.

The implementations of one case are timed round-robin, the order rotated every round, so slow
drifts and bursts from other processes on a noisy machine hit all of them alike and the ratios
stay fair. A sample is the mean of ``calls`` back-to-back calls, with ``calls`` chosen after the
warm-up so that a sample lasts at least ``min_sample_s`` (1 for anything slower): GPU kernels of
a few microseconds are then not drowned in timer resolution.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_CALLS_PER_SAMPLE = 1000


@dataclass(frozen=True)
class Timing:
    """Per-call times in milliseconds: one value per sample, each the mean of ``calls`` calls."""

    samples_ms: tuple[float, ...]
    calls: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.samples_ms) < 2:
            return self.median, self.median
        q1, _, q3 = statistics.quantiles(self.samples_ms, n=4, method="inclusive")
        return q1, q3

    @property
    def iqr(self) -> float:
        q1, q3 = self.quartiles
        return q3 - q1


def _timed(call: Callable[[], object], calls: int, synchronize: Callable[[], None]) -> float:
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    synchronize()
    return (time.perf_counter() - start) / calls


def time_interleaved(
    calls: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    repetitions: int,
    synchronize: Callable[[], None] = lambda: None,
    min_sample_s: float = 0.01,
) -> dict[str, Timing]:
    """Time every entry of ``calls``; returns ``{key: Timing}`` with ``repetitions`` samples."""
    if repetitions < 1:
        raise ValueError(f"repetitions must be at least 1, got {repetitions}")
    per_sample = {}
    for key, call in calls.items():
        single = _timed(call, 1, synchronize)
        for _ in range(max(warmup - 1, 0)):
            single = min(single, _timed(call, 1, synchronize))
        wanted = math.ceil(min_sample_s / max(single, 1e-9))
        per_sample[key] = max(1, min(MAX_CALLS_PER_SAMPLE, wanted))

    keys = list(calls)
    samples: dict[str, list[float]] = {key: [] for key in keys}
    gc.collect()
    for round_index in range(repetitions):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            seconds = _timed(calls[key], per_sample[key], synchronize)
            samples[key].append(seconds * 1e3)
    return {key: Timing(tuple(samples[key]), per_sample[key]) for key in keys}
