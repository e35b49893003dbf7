"""Every kernel test that takes a ``backend`` runs on every available device.

On a machine with CUDA, each such test is collected once per device (ids ``...-cpu`` and
``...-cuda``; select the GPU cases with ``-k cuda``); backends that do not run on CUDA (the
C++ kernels) get no CUDA case. On a machine without CUDA nothing is added: the CUDA cases are
absent, and ``test_dispatch.py::test_cuda_runs_the_compiled_triton_kernels`` is the one skip
that says so.

A CUDA case runs the unchanged test body: the autouse fixture :func:`kernel_device` replaces,
in the test's module, the kernel front-ends (``glf_stats``, ``warp3d``, ...) by
:func:`on_device` wrappers and binds ``backend_or_skip`` to the device. A wrapper moves the
CPU tensors it is given to the GPU, strides, storage offsets and aliasing included (a factor
that is a block of an ``out`` buffer stays one there), runs the op there, writes what the op
wrote in place back into the CPU tensors, and returns its results on the CPU (a result that is
a view of an argument as that view of the CPU argument). The moves are differentiable, so the
test's reference comparison, ``backward`` and ``gradcheck`` on the CPU check the GPU kernels'
gradients too. A test that calls below the front-end (``torch.ops.medtune...``) takes the
``kernel_device`` fixture and puts its tensors on that device itself; the wrappers leave
tensors that are already on the device where they are.

The Triton kernels run compiled on CUDA only without ``TRITON_INTERPRET=1``; with it set, the
Triton CUDA cases are skipped (``benchmarks/gpu_check.sh`` runs them without it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import pytest
import torch

import medtune.kernels as kernels
from tests.conftest import backend_or_skip

DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
FRONT_ENDS = (kernels.glf_stats, kernels.glf_loss, kernels.warp3d, kernels.chol_append,
              kernels.gp_acquisition, kernels.supernet_conv)


def _backends_on(device: str) -> set[str]:
    return {impl.backend for op in kernels.ops() for impl, _ in kernels.candidates(op, device)}


def _parametrised_names(mark: pytest.Mark) -> list[str]:
    names = mark.args[0]
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A ``kernel_device`` case per device for each test parametrised over ``backend``."""
    if len(DEVICES) > 1 and any(
        "backend" in _parametrised_names(mark)
        for mark in metafunc.definition.iter_markers("parametrize")
    ):
        metafunc.parametrize("kernel_device", DEVICES, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the CUDA cases of backends that do not run on CUDA."""
    if len(DEVICES) == 1:
        return
    on_cuda = _backends_on("cuda")
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params is not None else {}
        if params.get("kernel_device") == "cuda" and params.get("backend") not in on_cuda:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def kernel_device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The device this test's kernels run on (``"cpu"`` unless parametrised with CUDA)."""
    device = getattr(request, "param", "cpu")
    if device == "cpu":
        return device
    backend = request.node.callspec.params.get("backend")
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 interprets the Triton kernels; run the CUDA cases "
                    "without it to test them compiled")
    module = request.module
    for name, value in list(vars(module).items()):
        if any(value is front_end for front_end in FRONT_ENDS):
            monkeypatch.setattr(module, name, on_device(value, device))
    if hasattr(module, "backend_or_skip"):
        monkeypatch.setattr(module, "backend_or_skip",
                            functools.partial(backend_or_skip, device=device))
    return device


# --------------------------------------------------------------- moving a call to a device


class _ToDevice(torch.autograd.Function):
    """``tensor`` on ``device`` with its strides and storage offset (a copy of its whole
    storage); the gradient goes back to the CPU."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, device: str) -> torch.Tensor:
        return _mirror(tensor, _copy_storage(tensor.untyped_storage(), device))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.to("cpu"), None


def _copy_storage(storage: torch.UntypedStorage, device: str) -> torch.UntypedStorage:
    copy = torch.UntypedStorage(storage.nbytes(), device=device)
    copy.copy_(storage)
    return copy


def _mirror(tensor: torch.Tensor, storage: torch.UntypedStorage) -> torch.Tensor:
    """A tensor with ``tensor``'s dtype, size, strides and offset on ``storage``."""
    return torch.empty(0, dtype=tensor.dtype, device=storage.device).set_(
        storage, tensor.storage_offset(), tensor.size(), tensor.stride())


def on_device(op: Callable, device: str) -> Callable:
    """``op`` run on ``device`` for CPU arguments, as described in this module's docstring."""

    @functools.wraps(op)
    def call(*args, **kwargs):
        copies: dict[int, tuple[torch.UntypedStorage, torch.UntypedStorage]] = {}
        moved = []

        def to_device(value):
            if not isinstance(value, torch.Tensor):
                return _map(to_device, value)
            if value.device.type != "cpu":
                return value
            moved.append(value)
            if value.requires_grad:
                return _ToDevice.apply(value, device)
            host = value.untyped_storage()
            if host.data_ptr() not in copies:
                copies[host.data_ptr()] = (host, _copy_storage(host, device))
            return _mirror(value, copies[host.data_ptr()][1])

        result = op(*to_device(args), **to_device(kwargs))
        if not moved:
            return result
        host_of = {}
        for host, copy in copies.values():  # what the op wrote in place
            host.copy_(copy)
            host_of[copy.data_ptr()] = host

        def to_host(value):
            if not isinstance(value, torch.Tensor):
                return _map(to_host, value)
            host = host_of.get(value.untyped_storage().data_ptr())
            if host is not None and not value.requires_grad:
                return _mirror(value, host)
            return value.to("cpu")

        return to_host(result)

    return call


def _map(fn: Callable, value):
    """``fn`` applied to the items of a tuple, named tuple, list or dict; other values as
    they are."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(fn(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(fn(v) for v in value)
    if isinstance(value, dict):
        return {k: fn(v) for k, v in value.items()}
    return value
