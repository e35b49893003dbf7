"""What medtune's ``optuna`` searcher adds to calling Optuna directly, per suggestion.

``python -m benchmarks.optuna_overhead [--quick]`` prints one table: for Optuna's TPE and GP
samplers and a few history sizes n, the median time of one ask + tell through medtune
(``searcher.ask()`` + ``searcher.tell(...)``) and through Optuna itself (``study.ask(
distributions)`` + ``study.tell(...)``), and their difference, the overhead (the issue's
target: under 5 ms).

Both sides run the same sampler class with the same seed over Hartmann-6 (six floats in
[0, 1]) and start from the same n random completed trials, added to each in-memory study with
``add_trials``, so each timed suggestion asks the sampler for the same work; the two
sides' timed calls alternate, and every suggestion of one side is checked to equal the
other's. Writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from benchmarks.functions import HARTMANN6
from medtune.plugins.searchers.optuna_sampler import SAMPLERS, OptunaSearcher

#: (sampler, history sizes, timed suggestions per size): full run, then --quick
FULL = (("tpe", (100, 300, 1000), 15), ("gp", (100, 300), 7))
QUICK = (("tpe", (50, 200), 5), ("gp", (50,), 3))


def _random_history(optuna: Any, count: int, seed: int) -> list[Any]:
    """``count`` completed Hartmann-6 trials at uniformly random points."""
    distributions = {f"x{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(6)}
    points = np.random.default_rng(seed).random((count, 6))
    return [optuna.trial.create_trial(params=params, distributions=distributions,
                                      value=HARTMANN6.objective(params))
            for params in ({f"x{i}": float(v) for i, v in enumerate(row)} for row in points)]


def _timed(call: Callable[[], dict[str, float]]) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    config = call()
    return 1e3 * (time.perf_counter() - start), config


def measure(optuna: Any, sampler: str, n: int, repetitions: int) -> tuple[list[float], list[float]]:
    """Milliseconds per ask + tell, ``(medtune, Optuna)``, after ``n`` trials of history."""
    history = _random_history(optuna, n, seed=n)
    searcher = OptunaSearcher(HARTMANN6.space, sampler=sampler, seed=0)
    searcher.study.add_trials(history)
    direct = optuna.create_study(direction="minimize",
                                 sampler=getattr(optuna.samplers, SAMPLERS[sampler])(
                                     seed=0, **searcher.sampler_options))
    direct.add_trials(history)
    distributions = history[0].distributions

    def through_medtune() -> dict[str, float]:
        suggestion = searcher.ask()
        searcher.tell(suggestion, HARTMANN6.objective(suggestion.config))
        return suggestion.config

    def through_optuna() -> dict[str, float]:
        trial = direct.ask(distributions)
        direct.tell(trial, HARTMANN6.objective(trial.params))
        return trial.params

    medtune_ms, optuna_ms = [], []
    for _ in range(repetitions + 1):  # the first pair warms up
        medtune_time, medtune_config = _timed(through_medtune)
        optuna_time, optuna_config = _timed(through_optuna)
        if medtune_config != optuna_config:
            raise RuntimeError(f"{sampler}, n = {n}: medtune suggested {medtune_config}, "
                               f"Optuna {optuna_config}: not the same work, not comparable")
        medtune_ms.append(medtune_time)
        optuna_ms.append(optuna_time)
    return medtune_ms[1:], optuna_ms[1:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.optuna_overhead",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller histories, fewer calls")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the GP sampler's; default 1)")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    torch.set_num_threads(args.threads)
    print(f"Optuna {optuna.__version__}, torch {torch.__version__} ({args.threads} thread(s)); "
          "median ms per ask + tell on Hartmann-6\n")
    print("| sampler | n | Optuna directly | medtune optuna | overhead |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for sampler, sizes, repetitions in QUICK if args.quick else FULL:
        for n in sizes:
            medtune_ms, optuna_ms = measure(optuna, sampler, n, repetitions)
            through, direct = statistics.median(medtune_ms), statistics.median(optuna_ms)
            overhead = statistics.median(m - o for m, o in zip(medtune_ms, optuna_ms))
            print(f"| {sampler} | {n} | {direct:.2f} | {through:.2f} | {overhead:+.2f} |",
                  flush=True)
    print("\noverhead: median over the calls of (medtune - Optuna), each pair proposing the "
          "same configuration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
