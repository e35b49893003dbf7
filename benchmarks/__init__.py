"""medtune's benchmark runner: measures medtune's kernels against their peers, writes BENCHMARKS.md.

Run ``python -m benchmarks`` from the repository root (``--help`` lists the options) or
``medtune bench``. The package is not installed with medtune; it lives next to the sources.

Modules: ``cases`` (what is measured and against whom), ``timing`` (medians over interleaved
runs), ``memory`` (peak extra memory of one call), ``worker`` (each measurement in a fresh
process), ``machine`` (what ran it), ``report`` (the markdown) and ``runner`` (the command
line, ``main(argv)``).

``python -m benchmarks.search`` (module ``search``, test problems in ``functions``) measures
the searchers instead: suggestion latency of ``bayes`` against Optuna's GPSampler, and search
quality on Branin, Hartmann-6 and a tabulated 34,300-configuration space against random
search, Optuna's GPSampler and TPESampler, Hyperband and ``bohb``; it writes its own section
of BENCHMARKS.md.
"""
