"""medtune's benchmark runner: measures medtune's kernels against their peers, writes BENCHMARKS.md.

Run ``python -m benchmarks`` from the repository root (``--help`` lists the options) or
``medtune bench``. The package is not installed with medtune; it lives next to the sources.

Modules: ``cases`` (what is measured and against whom), ``timing`` (medians over interleaved
runs), ``memory`` (peak extra memory of one call), ``worker`` (each measurement in a fresh
process), ``machine`` (what ran it), ``report`` (the markdown) and ``runner`` (the command
line, ``main(argv)``).
"""
