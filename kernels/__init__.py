"""medtune's kernel ops: one front-end per op, dispatched to the best available backend.

Backends: ``torch`` (the pure-PyTorch reference, every device), ``cpp`` (``medtune._C``,
C++/OpenMP, CPU) and ``triton`` (CUDA; on the CPU only under ``TRITON_INTERPRET=1``, for
tests). Force one with :func:`use_backend` or ``MEDTUNE_KERNEL_BACKEND``.

A Cholesky factor that grows by appended points is a :class:`CholeskyFactor` (in-place
``chol_append`` into buffers that double when full); ``chol_append`` is its one-shot op.
"""

from medtune.kernels.dispatch import (
    KernelImpl,
    backends,
    candidates,
    forced_backend,
    ops,
    register_impl,
    select,
    use_backend,
)
from medtune.kernels.chol_append import (
    CholAppend,
    CholeskyFactor,
    chol_append,
    chol_append_reference,
)
from medtune.kernels.glf_loss import glf_loss, glf_loss_reference, overlap_ratio_loss
from medtune.kernels.glf_stats import GLFStats, glf_stats, glf_stats_reference
from medtune.kernels.gp_acquisition import (
    GPAcquisition,
    gp_acquisition,
    gp_acquisition_reference,
)
from medtune.kernels.supernet_conv import supernet_conv, supernet_conv_reference
from medtune.kernels.warp3d import warp3d, warp3d_reference

__all__ = [
    "CholAppend",
    "CholeskyFactor",
    "GLFStats",
    "GPAcquisition",
    "KernelImpl",
    "backends",
    "candidates",
    "chol_append",
    "chol_append_reference",
    "forced_backend",
    "glf_loss",
    "glf_loss_reference",
    "glf_stats",
    "glf_stats_reference",
    "gp_acquisition",
    "gp_acquisition_reference",
    "ops",
    "overlap_ratio_loss",
    "register_impl",
    "select",
    "supernet_conv",
    "supernet_conv_reference",
    "use_backend",
    "warp3d",
    "warp3d_reference",
]
