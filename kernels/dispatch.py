"""Backend registry and selection for medtune's kernel ops.

Each op has one implementation per backend (``torch`` reference, ``cpp``, ``triton``, or one
contributed by a plugin through the ``medtune_kernel_impls`` hook). At call time the op asks
:func:`select` for the implementation to run on the tensors' device: the one forced by
:func:`use_backend` or ``MEDTUNE_KERNEL_BACKEND`` if set, else the available one with the
highest priority for that device.

:func:`eager_call` lets an op's front-end skip the ``torch.library`` custom-op dispatcher on
plain eager calls; ``torch.compile``, ``torch.func`` and fake tensors still go through the op.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from medtune.errors import BackendUnavailableError, PluginError

ENV_VAR = "MEDTUNE_KERNEL_BACKEND"
ANY_DEVICE = "*"


def _always_available() -> str | None:
    return None


@dataclass(frozen=True)
class KernelImpl:
    """One implementation of one op for one backend.

    ``priority`` maps a device type (``"cpu"``, ``"cuda"``, or ``"*"`` for any) to the rank of
    this implementation in automatic selection; a device type that is absent is not supported.
    ``unavailable`` returns ``None`` when the implementation can run, else the reason it cannot
    (no compiler, no Triton, ...).
    """

    op: str
    backend: str
    fn: Callable[..., object]
    priority: Mapping[str, int]
    unavailable: Callable[[], str | None] = field(default=_always_available)

    def rank(self, device_type: str) -> int | None:
        if device_type in self.priority:
            return self.priority[device_type]
        return self.priority.get(ANY_DEVICE)


_IMPLS: dict[str, dict[str, KernelImpl]] = {}
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("medtune_backend", default=None)
_PLUGINS_LOADED = False
_LOCK = threading.Lock()
_AUTOMATIC: dict[tuple[str, str], KernelImpl] = {}  # (op, device type) -> automatic choice


def triton_priority() -> dict[str, int]:
    """Ranks of a Triton implementation: chosen on CUDA; on the CPU it runs only in Triton's
    (slow) interpreter (``TRITON_INTERPRET=1``), so there it is selectable but never chosen."""
    priority = {"cuda": 10}
    if os.environ.get("TRITON_INTERPRET") == "1":
        priority["cpu"] = -10
    return priority


def triton_unavailable() -> str | None:
    """Why Triton implementations cannot run, or ``None``."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'medtune[triton]')"
    return None


def register_impl(impl: KernelImpl, *, replace: bool = False) -> None:
    """Add an implementation; an existing (op, backend) pair is only replaced on request."""
    if not isinstance(impl, KernelImpl):
        raise TypeError(f"expected a medtune.kernels.KernelImpl, got {type(impl).__name__}")
    table = _IMPLS.setdefault(impl.op, {})
    if impl.backend in table and not replace:
        raise PluginError(f"op {impl.op!r} already has a {impl.backend!r} implementation")
    table[impl.backend] = impl
    _AUTOMATIC.clear()


def _load_plugin_impls() -> None:
    global _PLUGINS_LOADED
    with _LOCK:
        if _PLUGINS_LOADED:
            return
        _PLUGINS_LOADED = True
        from medtune.registry import registry

        for entry in registry().kernel_impls():
            impl = entry.factory
            problem = None
            if not isinstance(impl, KernelImpl):
                problem = f"returned {type(impl).__name__} for kernel impl {entry.name!r}, expected KernelImpl"
            elif impl.op not in _IMPLS:
                problem = f"contributed kernel impl {entry.name!r} for unknown op {impl.op!r}"
            elif impl.backend in _IMPLS[impl.op]:
                problem = f"contributed kernel impl {entry.name!r} for {impl.op}/{impl.backend}, which exists already"
            if problem:
                entry.plugin.problems.append(problem)
                warnings.warn(f"medtune: {entry.plugin.label} {problem}; it is skipped.", stacklevel=3)
                continue
            register_impl(impl)


def ops() -> list[str]:
    """Names of the registered ops."""
    _load_plugin_impls()
    return sorted(_IMPLS)


def backends(op: str | None = None) -> list[str]:
    """Backends registered for ``op`` (or for any op)."""
    _load_plugin_impls()
    tables = [_IMPLS[op]] if op is not None else list(_IMPLS.values())
    return sorted({name for table in tables for name in table})


def forced_backend() -> str | None:
    """The backend forced by :func:`use_backend` or ``MEDTUNE_KERNEL_BACKEND``, if any."""
    return _FORCED.get() or os.environ.get(ENV_VAR) or None


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Run every kernel op inside the block on backend ``name`` (``None``: automatic).

    >>> with medtune.kernels.use_backend("torch"):
    ...     tp, fp, fn = medtune.kernels.glf_stats(pred, target)
    """
    if name is not None and name not in backends():
        raise BackendUnavailableError(
            f"unknown kernel backend {name!r}; known backends: {', '.join(backends())}"
        )
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


def candidates(op: str, device_type: str) -> list[tuple[KernelImpl, str | None]]:
    """Every implementation of ``op`` for ``device_type``, best first, with why it cannot run."""
    _load_plugin_impls()
    found = []
    for impl in _IMPLS.get(op, {}).values():
        rank = impl.rank(device_type)
        if rank is not None:
            found.append((rank, impl))
    found.sort(key=lambda pair: -pair[0])
    return [(impl, impl.unavailable()) for _, impl in found]


def select(op: str, device_type: str) -> KernelImpl:
    """The implementation of ``op`` that runs on ``device_type`` now.

    The automatic choice is made once per (op, device type) and remembered; registering an
    implementation forgets it.
    """
    _load_plugin_impls()
    if op not in _IMPLS:
        raise KeyError(f"unknown kernel op {op!r}")
    forced = forced_backend()
    if forced is not None:
        impl = _IMPLS[op].get(forced)
        if impl is None:
            raise BackendUnavailableError(
                f"kernel op {op!r} has no {forced!r} backend (set by use_backend or "
                f"{ENV_VAR}); it has: {', '.join(sorted(_IMPLS[op]))}"
            )
        if impl.rank(device_type) is None:
            raise BackendUnavailableError(
                f"backend {forced!r} of op {op!r} does not run on {device_type!r} tensors; "
                "move the tensors or choose another backend"
            )
        reason = impl.unavailable()
        if reason is not None:
            raise BackendUnavailableError(f"backend {forced!r} of op {op!r} is unavailable: {reason}")
        return impl
    chosen = _AUTOMATIC.get((op, device_type))
    if chosen is None:
        chosen = next((impl for impl, reason in candidates(op, device_type) if reason is None), None)
        if chosen is None:
            raise BackendUnavailableError(f"no backend of op {op!r} runs on {device_type!r} tensors")
        _AUTOMATIC[(op, device_type)] = chosen
    return chosen


def eager_function(name: str, forward: Callable, setup_context: Callable,
                   backward: Callable) -> type[torch.autograd.Function]:
    """An ``autograd.Function`` named ``name`` that runs an op's ``forward`` (its backend
    dispatch) with the ``setup_context`` and ``backward`` the op registers for autograd: the
    path an op's front-end takes when :func:`eager_call` allows it."""

    def run(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {
        "__doc__": f"{name}: see medtune.kernels.dispatch.eager_function.",
        "forward": staticmethod(run),
        "backward": staticmethod(backward),
    })


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # classes that do not override torch functions


def eager_call(*tensors: torch.Tensor | None) -> bool:
    """True when an op call on ``tensors`` may run its implementation directly.

    That is an eager call (not traced by ``torch.compile``, no ``torch.func`` transform active)
    on plain CPU or CUDA tensors or parameters. The custom op's Python dispatcher (argument
    normalisation, redispatch, the autograd wrapper) can cost more per call than the kernel
    itself on a small patch; a front-end that sees ``True`` runs the same implementation under
    an ``autograd.Function`` of its own, with the same forward and backward, instead.
    """
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    return all(t is None or (type(t) in _PLAIN and t.device.type in ("cpu", "cuda")) for t in tensors)
