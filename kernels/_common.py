"""What every kernel file imports: errors, dispatch, the compiled extension, optional Triton.

A kernel file takes its preamble from here in one import, and registers its built-in
implementations with :func:`register_backends`: the PyTorch path on every device, the C++ one
(``medtune._C``) on the CPU, the Triton one on CUDA. ``triton`` and ``tl`` are ``None`` when
Triton is not installed (the extra ``medtune[triton]``); a file defines its Triton kernels
under ``if triton is not None:``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from medtune.errors import KernelError
from medtune.kernels.dispatch import (
    KernelImpl,
    eager_call,
    eager_function,
    register_impl,
    select,
    triton_priority,
    triton_unavailable,
)
from medtune.kernels.extension import load_extension, unavailable_reason

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the extra ``medtune[triton]``
    triton = None
    tl = None

__all__ = [
    "KernelError",
    "eager_call",
    "eager_function",
    "load_extension",
    "register_backends",
    "select",
    "tl",
    "triton",
]

#: Rank of the PyTorch path where nothing better is available: every device, lowest.
TORCH_PRIORITY = {"*": 0}
#: Rank of the C++ path: chosen on the CPU.
CPP_PRIORITY = {"cpu": 10}


def register_backends(
    op: str,
    *,
    torch_fn: Callable[..., object],
    cpp_fn: Callable[..., object],
    triton_fn: Callable[..., object] | None = None,
    torch_priority: Mapping[str, int] = TORCH_PRIORITY,
) -> None:
    """Register the built-in implementations of kernel op ``op``.

    ``torch_fn`` runs on every device (ranked by ``torch_priority``, lowest by default),
    ``cpp_fn`` on the CPU when ``medtune._C`` loads, ``triton_fn`` (if given) on CUDA when
    Triton is installed (:func:`~medtune.kernels.dispatch.triton_priority`).
    """
    register_impl(KernelImpl(op, "torch", torch_fn, dict(torch_priority)))
    register_impl(KernelImpl(op, "cpp", cpp_fn, dict(CPP_PRIORITY), unavailable_reason))
    if triton_fn is not None:
        register_impl(KernelImpl(op, "triton", triton_fn, triton_priority(), triton_unavailable))
