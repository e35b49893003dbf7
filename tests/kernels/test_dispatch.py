"""Backend selection: automatic choice, use_backend, MEDTUNE_KERNEL_BACKEND, plugin kernels."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import medtune.registry as registry_module
from medtune import hookimpl
from medtune.errors import BackendUnavailableError
from medtune.kernels import KernelImpl, dispatch, glf_stats, select, use_backend
from medtune.registry import Registry


def test_cpu_prefers_the_compiled_kernels():
    from tests.conftest import backend_or_skip

    backend_or_skip("glf_stats", "cpp")
    assert select("glf_stats", "cpu").backend == "cpp"
    assert select("glf_stats_backward", "cpu").backend == "cpp"
    assert select("glf_loss", "cpu").backend == "cpp"
    assert select("glf_loss_backward", "cpu").backend == "cpp"


def test_use_backend_overrides_and_restores():
    before = select("glf_stats", "cpu").backend
    with use_backend("torch"):
        assert select("glf_stats", "cpu").backend == "torch"
        with use_backend(None):
            assert select("glf_stats", "cpu").backend == before
    assert select("glf_stats", "cpu").backend == before


def test_unknown_or_impossible_backend_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="unknown kernel backend 'cuda_magic'"):
        with use_backend("cuda_magic"):
            pass
    with use_backend("cpp"), pytest.raises(BackendUnavailableError, match="does not run on 'cuda'"):
        select("glf_stats", "cuda")


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv("MEDTUNE_KERNEL_BACKEND", "torch")
    assert select("glf_stats", "cpu").backend == "torch"
    monkeypatch.setenv("MEDTUNE_KERNEL_BACKEND", "nonexistent")
    with pytest.raises(BackendUnavailableError, match="has no 'nonexistent' backend"):
        select("glf_stats", "cpu")


def test_env_var_reaches_a_fresh_process():
    code = "import medtune.kernels as k; print(k.select('glf_stats', 'cpu').backend)"
    env = dict(os.environ, MEDTUNE_KERNEL_BACKEND="torch")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch"


class _KernelPlugin:
    """A plugin contributing a 'doubled' backend that is the reference times two."""

    calls = 0

    @hookimpl
    def medtune_kernel_impls(self):
        def doubled(pred, target, labels, activation):
            _KernelPlugin.calls += 1
            torch_impl = dispatch._IMPLS["glf_stats"]["torch"].fn
            return 2 * torch_impl(pred, target, labels, activation)

        return {"doubled_glf": KernelImpl("glf_stats", "doubled", doubled, {"cpu": 100})}


def test_kernel_impls_hook_adds_a_backend(monkeypatch):
    reg = Registry(entry_points=[])
    reg.register(_KernelPlugin(), "kernels")
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    monkeypatch.setattr(dispatch, "_IMPLS", {op: dict(t) for op, t in dispatch._IMPLS.items()})
    monkeypatch.setattr(dispatch, "_PLUGINS_LOADED", False)
    monkeypatch.setattr(dispatch, "_AUTOMATIC", {})
    assert select("glf_stats", "cpu").backend == "doubled"  # highest priority wins
    pred, target = torch.rand(1, 1, 4, 4), (torch.rand(1, 1, 4, 4) > 0.5).float()
    tp = glf_stats(pred, target).true_positives
    with use_backend("torch"):
        torch.testing.assert_close(tp, 2 * glf_stats(pred, target).true_positives)
    assert _KernelPlugin.calls == 1


def test_fallback_without_compiler_warns_once_and_stays_correct(tmp_path):
    code = textwrap.dedent(
        """
        import warnings, torch
        warnings.simplefilter("always")
        from medtune.kernels import glf_stats, glf_stats_reference, select
        from medtune.kernels.extension import extension_error
        p, t = torch.rand(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = glf_stats(p, t)
            b = glf_stats(p, t)
        ours = [w for w in caught if "could not be built" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        for x, y in zip(a, glf_stats_reference(p, t)):
            torch.testing.assert_close(x, y)
        assert select("glf_stats", "cpu").backend == "torch"
        print("ERROR:", extension_error())
        """
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), MEDTUNE_CACHE_DIR=str(tmp_path))
    env.pop("MEDTUNE_KERNEL_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR:" in out.stdout


def test_eager_call_only_for_plain_eager_tensors():
    """The front-ends skip the custom-op dispatcher only where nothing traces or transforms the
    call: torch.func transforms, meta and fake tensors must go through the op."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    plain = torch.ones(3)
    assert dispatch.eager_call(plain, None, torch.nn.Parameter(plain))
    assert not dispatch.eager_call(torch.ones(3, device="meta"))
    with FakeTensorMode() as mode:
        assert not dispatch.eager_call(mode.from_tensor(plain))
    seen = []

    def f(x):
        seen.append(dispatch.eager_call(x))
        return x.sum()

    torch.func.grad(f)(plain)
    assert seen == [False]


def test_cuda_runs_the_compiled_triton_kernels():
    """On a CUDA machine every kernel test also runs on the GPU (tests/kernels/conftest.py);
    there every op with a Triton implementation chooses it, compiled rather than interpreted,
    and it agrees with the reference."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA cases of the kernel tests are not generated")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 interprets the Triton kernels; run without it on a GPU")
    from tests.conftest import backend_or_skip

    backend_or_skip("glf_stats", "triton", "cuda")
    from triton.runtime.jit import JITFunction

    from medtune.kernels import backends, candidates, glf_stats_reference, ops

    glf_stats_module = importlib.import_module("medtune.kernels.glf_stats")  # not the function

    for op in ops():
        if "triton" in backends(op):
            chosen = next(impl.backend for impl, reason in candidates(op, "cuda") if reason is None)
            assert chosen == "triton", op
    assert any(isinstance(value, JITFunction) for value in vars(glf_stats_module).values())
    pred = torch.rand(2, 3, 32, 32, device="cuda")
    target = torch.randint(0, 3, (2, 32, 32), device="cuda")
    expected_stats = glf_stats_reference(pred.cpu(), target.cpu())
    for got, expected in zip(glf_stats(pred, target), expected_stats):
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), expected, rtol=2e-5, atol=2e-5 * 1024)
