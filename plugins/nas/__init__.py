"""Neural architecture search with weight sharing (Pourchot2022, ch. 3-4).

The NAS-Bench-101-like cell space (:mod:`.cells`), the weight-sharing super-net trained by
uniform single-path sampling and its variants (:mod:`.supernet`), exact batch-norm statistics
recalibration per architecture (:mod:`.recalibration`), the shipped tabular benchmark
(:mod:`.tabular`) and the ranking analysis (:mod:`.analysis`).
"""
