"""The C++ kernels under AddressSanitizer: no out-of-bounds access on the fuzzed kernel surface.

Builds ``csrc/*.cpp`` once with ``-fsanitize=address`` into a temporary folder and, in a
subprocess with ``libasan`` preloaded (Python itself is not instrumented), swaps that build in
for ``medtune._C`` and runs (1) a fixed set of edge-case calls of every op, forward and
backward (one voxel, 1x1x1x4096, empty observation sets, in-place factor buffers, two OpenMP
threads), then (2) the hypothesis property tests of ``test_properties.py`` on the ``cpp``
backend (its profile follows ``MEDTUNE_HYPOTHESIS_PROFILE``). Any ASan report fails the test.

Marked slow (the build alone takes minutes): run it with
``python -m pytest -m slow tests/kernels/test_asan.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

CFLAGS = ["-O1", "-g", "-std=c++17", "-fopenmp", "-fsanitize=address", "-fno-omit-frame-pointer"]
LDFLAGS = ["-fopenmp", "-fsanitize=address"]
DONE = "ASAN-RUN-COMPLETE"

DRIVER = textwrap.dedent(
    '''
    """``build``: compile the ASan extension (not loaded: that needs libasan preloaded).
    ``run``: load it as medtune._C, run every op on edge cases, then the cpp property tests."""
    import glob, json, sys

    import torch
    from torch.utils import cpp_extension

    mode, root, build = sys.argv[1], sys.argv[2], sys.argv[3]
    cflags, ldflags = json.loads(sys.argv[4]), json.loads(sys.argv[5])
    sys.path.insert(0, root)
    if mode == "build":
        cpp_extension._import_module_from_library = lambda *args, **kwargs: None
    module = cpp_extension.load(name="medtune_C_asan", sources=sorted(glob.glob(root + "/csrc/*.cpp")),
                                extra_cflags=cflags, extra_ldflags=ldflags, build_directory=build)
    if mode == "build":
        sys.exit(0)
    from medtune.kernels import extension
    extension._state.update(tried=True, module=module, error=None)
    sys.modules["medtune._C"] = module

    import medtune.kernels as K
    torch.manual_seed(0)

    def glf(shape, channels, labels, activation, dtype=torch.float32, layout=None):
        n, spatial = shape[0], shape[1:]
        pred = torch.randn((n, channels, *spatial), dtype=dtype, requires_grad=True)
        if labels is not None:
            target = torch.randint(0, max(channels, 2), (n, 1, *spatial)).to(labels)
        else:
            target = torch.rand((n, channels, *spatial)).to(dtype)
        x = pred if layout is None else pred.contiguous(memory_format=layout)
        tp, fp, fn = K.glf_stats(x, target, activation)
        (tp + 2 * fp - fn).sum().backward()
        loss, _ = K.glf_loss(x, target, 1.0, 0.5, 0.5, activation=activation)
        loss.sum().backward()

    def warp(volume_shape, field_shape, affine_scale, mode="bilinear", padding="zeros",
             align=False, labels=False, size=None):
        dims = len(volume_shape) - 2
        volume = torch.randn(volume_shape, dtype=torch.float64)
        volume = volume.round().long() if labels else volume.requires_grad_(True)
        n = volume_shape[0]
        disp = None if field_shape is None else (0.3 * torch.randn(n, dims, *field_shape, dtype=torch.float64)).requires_grad_(True)
        affine = (affine_scale * torch.eye(dims, dims + 1, dtype=torch.float64).expand(n, -1, -1)
                  + 0.2 * torch.randn(n, dims, dims + 1, dtype=torch.float64)).requires_grad_(True)
        for compose in ("affine_first", "displacement_first"):
            out = K.warp3d(volume, disp, affine, compose=compose, mode=mode, padding_mode=padding,
                           align_corners=align, size=size)
            if not labels:
                out.square().sum().backward()

    def chol(n, k, inverse=True, in_place=False, duplicate=False):
        x = torch.rand(n + k, 3, dtype=torch.float64)
        if duplicate and n:
            x[n] = x[0]
        K_full = torch.exp(-4 * torch.cdist(x, x).square()) + 1e-3 * torch.eye(n + k, dtype=torch.float64)
        if duplicate and n:
            order = list(range(n + k)); order[n] = 0
            K_full = K_full[order][:, order]
        L = torch.linalg.cholesky(K_full[:n, :n])
        Linv = torch.linalg.inv(L) if inverse else None
        out = None
        if in_place:
            buffers = [torch.zeros(n + k + 2, n + k + 2, dtype=torch.float64) for _ in range(2)]
            buffers[0][:n, :n] = L
            L = buffers[0][:n, :n]
            if inverse:
                buffers[1][:n, :n] = Linv
                Linv = buffers[1][:n, :n]
            out = (buffers[0], buffers[1] if inverse else None)
        K.chol_append(L, K_full[n:, :n], K_full[n:, n:], Linv=Linv, out=out)

    def gp(m, n, d, dtype=torch.float64):
        train_x = torch.rand(n, d, dtype=dtype)
        Kn = torch.exp(-torch.cdist(train_x, train_x).square()) + 1e-2 * torch.eye(n, dtype=dtype)
        Linv = torch.linalg.inv(torch.linalg.cholesky(Kn)) if n else torch.zeros(0, 0, dtype=dtype)
        for acquisition in ("ei", "pi", "ucb", "none"):
            for kernel in ("matern52", "rbf"):
                K.gp_acquisition(torch.rand(m, d, dtype=dtype), train_x, Linv, torch.randn(n, dtype=dtype),
                                 torch.full((d,), 0.5, dtype=dtype), 1.0, kernel=kernel,
                                 acquisition=acquisition, best_f=0.0)

    with K.use_backend("cpp"):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for shape in ((1, 1), (1, 1, 1, 1), (1, 1, 1, 4096), (2, 4096), (3, 5, 1, 7), (2, 300)):
                for channels in (1, 3):
                    for labels in (None, torch.uint8, torch.int32, torch.int64):
                        for activation in ("none", "sigmoid", "softmax"):
                            if activation == "softmax" and channels == 1:
                                continue
                            glf(shape, channels, labels, activation)
            glf((2, 6, 5), 3, None, "softmax", torch.float16, torch.channels_last)
            glf((1, 2, 2, 3), 2, torch.int64, "sigmoid", torch.float64, torch.channels_last_3d)
            for volume, field in (((1, 1, 1, 1, 1), (1, 1, 1)), ((1, 2, 1, 1, 4096), (1, 1, 64)),
                                  ((2, 1, 5, 4, 3), (2, 3, 1)), ((1, 1, 1, 1), (1, 1)),
                                  ((3, 2, 9, 1), (4, 2)), ((1, 1, 34, 34, 34), (5, 5, 5))):
                for scale in (1.0, 3.0, -0.5):
                    for padding in ("zeros", "border"):
                        for align in (False, True):
                            warp(volume, field, scale, padding=padding, align=align)
                            warp(volume, None, scale, mode="nearest", padding=padding,
                                 align=align, labels=True)
                warp(volume, field, 1.0, size=(1,) * (len(volume) - 2))
                warp(volume, field, 1.0, mode="nearest", size=(2,) * (len(volume) - 2))
            for n, k in ((0, 1), (1, 1), (1, 4), (37, 5), (64, 1)):
                for inverse in (False, True):
                    for in_place in (False, True):
                        chol(n, k, inverse, in_place)
                chol(n, k, duplicate=True)
            for m, n, d in ((0, 5, 2), (7, 0, 3), (1, 1, 1), (4096, 3, 1), (33, 64, 6), (65, 65, 2)):
                gp(m, n, d)
                gp(m, n, d, torch.float32)
    print("edge cases done", flush=True)

    import pytest
    code = pytest.main([root + "/tests/kernels/test_properties.py", "-q", "-k", "cpp",
                        "-p", "no:cacheprovider", "-o", "addopts=", "-W", "ignore::DeprecationWarning"])
    print("ASAN-RUN-COMPLETE" if code == 0 else f"property tests failed: exit code {code}", flush=True)
    sys.exit(int(code))
    '''
)


def _runtime_library(compiler: str, name: str) -> Path | None:
    """The shared library ``name`` of ``compiler``'s runtime, or None."""
    found = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True,
                           text=True).stdout.strip()
    path = Path(found)
    return path.resolve() if path.is_absolute() and path.exists() else None


def _sanitizer_links(compiler: str, folder: Path) -> str | None:
    """None if ``compiler`` builds and runs a program with -fsanitize=address, else why not."""
    source = folder / "probe.cpp"
    source.write_text("int main() { int a[2] = {0, 1}; return a[1] - 1; }\n")
    build = subprocess.run([compiler, "-fsanitize=address", str(source), "-o", str(folder / "probe")],
                           capture_output=True, text=True)
    if build.returncode != 0:
        return f"{compiler} cannot build with -fsanitize=address: {build.stderr.strip()[:300]}"
    run = subprocess.run([str(folder / "probe")], capture_output=True, text=True)
    if run.returncode != 0:
        return f"an ASan-instrumented program does not run here: {run.stderr.strip()[:300]}"
    return None


def test_cpp_kernels_under_address_sanitizer(tmp_path):
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    runtime = _runtime_library(compiler, "libasan.so")
    if runtime is None:
        pytest.skip(f"{compiler} -print-file-name=libasan.so finds no ASan runtime "
                    "(install libasan, e.g. the libasan8 package)")
    # preloaded too: Python does not link libstdc++, and without it ASan cannot find the real
    # __cxa_throw and aborts on the first C++ exception (every error raised inside an op)
    stdcxx = _runtime_library(compiler, "libstdc++.so.6")
    if stdcxx is None:
        pytest.skip(f"{compiler} -print-file-name=libstdc++.so.6 finds no libstdc++")
    reason = _sanitizer_links(compiler, tmp_path)
    if reason is not None:
        pytest.skip(reason)
    driver = tmp_path / "asan_driver.py"
    driver.write_text(DRIVER)
    build = tmp_path / "build"
    build.mkdir()
    flags = [json.dumps(CFLAGS), json.dumps(LDFLAGS)]
    # the compiler runs without libasan preloaded: it needs none, and is slower under it
    compiled = subprocess.run([sys.executable, str(driver), "build", str(ROOT), str(build), *flags],
                              capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert compiled.returncode == 0, (compiled.stdout + compiled.stderr)[-6000:]
    reports = tmp_path / "asan"
    env = dict(
        os.environ,
        LD_PRELOAD=f"{runtime} {stdcxx}",
        # Python and torch allocate for good at exit: leaks are not what this test is about.
        # Reports go to files: the inner pytest captures file descriptor 2.
        ASAN_OPTIONS=f"detect_leaks=0:halt_on_error=1:exitcode=99:log_path={reports}",
        MAX_JOBS="2",
    )
    for name in ("TRITON_INTERPRET", "MEDTUNE_KERNEL_BACKEND"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, str(driver), "run", str(ROOT), str(build), *flags],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    found = "".join(path.read_text() for path in sorted(tmp_path.glob("asan.*")))
    assert not found, found[:8000]
    output = result.stdout + result.stderr
    assert result.returncode == 0 and DONE in result.stdout, output[-6000:]
