"""warp3d's one dispatch rule: small 2D calls run as affine_grid + grid_sample when the automatic
choice is the C++ backend; everything else runs on the kernels."""

from __future__ import annotations

import importlib

import pytest
import torch

from medtune.kernels import select, use_backend, warp3d, warp3d_reference
from tests.conftest import backend_or_skip

module = importlib.import_module("medtune.kernels.warp3d")


@pytest.fixture
def calls(monkeypatch) -> list[tuple]:
    """The calls that took the grid_sample path, recorded."""
    recorded = []
    original = module._grid_sample_path

    def spy(*args):
        recorded.append(args)
        return original(*args)

    monkeypatch.setattr(module, "_grid_sample_path", spy)
    return recorded


@pytest.fixture
def automatic_cpp(monkeypatch) -> None:
    """The automatic choice is the C++ backend (nothing forced), as on a CPU with a compiler."""
    monkeypatch.delenv("MEDTUNE_KERNEL_BACKEND", raising=False)
    backend_or_skip("warp3d", "cpp")
    if select("warp3d", "cpu").backend != "cpp":
        pytest.skip("the C++ backend is not the automatic choice here")


def _registration(n: int, spatial: tuple[int, ...], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    volume = torch.rand((n, 1, *spatial), generator=gen)
    displacement = 0.05 * torch.randn((n, len(spatial), *spatial), generator=gen)
    return volume, displacement


def _side_below_threshold(n: int) -> int:
    side = int((module.GRID_SAMPLE_2D_BELOW / n) ** 0.5)
    while n * side * side >= module.GRID_SAMPLE_2D_BELOW:
        side -= 1
    return side


def test_small_2d_runs_as_grid_sample_with_its_values_and_gradients(automatic_cpp, calls):
    volume, displacement = _registration(2, (24, 20))
    ours = [volume.clone().requires_grad_(True), displacement.clone().requires_grad_(True)]
    ref = [volume.clone().requires_grad_(True), displacement.clone().requires_grad_(True)]
    out = warp3d(*ours, padding_mode="border", align_corners=True)
    assert len(calls) == 1
    expected = warp3d_reference(*ref, padding_mode="border", align_corners=True)
    assert torch.equal(out, expected)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (weights * out).sum().backward()
    (weights * expected).sum().backward()
    for got, want in zip(ours, ref):
        assert torch.equal(got.grad, want.grad)


def test_the_threshold_counts_output_voxels_of_the_batch(automatic_cpp, calls):
    n = 4
    side = _side_below_threshold(n)
    below = _registration(n, (side, side))
    warp3d(*below)
    assert len(calls) == 1
    # at the threshold: the kernels (an output size reaching it, from a smaller field too)
    volume, displacement = _registration(1, (8, 8))
    size = (1, module.GRID_SAMPLE_2D_BELOW)
    warp3d(volume, displacement, size=size)
    assert len(calls) == 1


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_volumes_always_run_on_the_kernels(automatic_cpp, calls, mode):
    volume, displacement = _registration(1, (6, 7, 8))
    warp3d(volume, displacement, mode=mode)
    warp3d(volume, None, torch.eye(3, 4), mode=mode)
    assert calls == []


def test_a_forced_backend_always_runs(automatic_cpp, calls, monkeypatch):
    volume, displacement = _registration(1, (16, 16))
    with use_backend("cpp"):
        out = warp3d(volume, displacement)
    assert calls == []
    monkeypatch.setenv("MEDTUNE_KERNEL_BACKEND", "cpp")
    warp3d(volume, displacement)
    assert calls == []
    torch.testing.assert_close(out, warp3d_reference(volume, displacement), rtol=1e-5,
                               atol=1e-5)


def test_only_the_cpp_backend_gives_way(monkeypatch):
    """Where the automatic choice is another backend (no compiler: the PyTorch path), the rule
    does not apply: it compares grid_sample with the C++ kernels only."""
    monkeypatch.delenv("MEDTUNE_KERNEL_BACKEND", raising=False)
    volume, displacement = _registration(1, (16, 16))
    prepared = module.prepare(volume, displacement, None, "affine_first", "bilinear", "zeros",
                              False, None)
    automatic = select("warp3d", "cpu").backend
    assert module.runs_as_grid_sample(prepared) == (automatic == "cpp")


def test_label_maps_keep_their_dtype_on_the_grid_sample_path(automatic_cpp, calls):
    volume, displacement = _registration(1, (12, 10))
    labels = (volume * 5).long()
    out = warp3d(labels, displacement, mode="nearest")
    assert len(calls) == 1
    assert out.dtype == torch.int64
    assert torch.equal(out, warp3d_reference(labels, displacement, mode="nearest"))


def test_traced_calls_run_the_op(automatic_cpp):
    volume, displacement = _registration(1, (16, 16))
    displacement.requires_grad_(True)

    def loss(u):
        return warp3d(volume, u, align_corners=True).square().mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    value = compiled(displacement)
    (grad,) = torch.autograd.grad(value, displacement)
    expected = loss(displacement)
    (expected_grad,) = torch.autograd.grad(expected, displacement)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_identity_transforms_stay_on_the_exact_kernels(automatic_cpp, calls):
    """grid_sample is exact only up to rounding; an identity transform (zero field, identity
    affine) at the volume's size stays on the kernels and returns the volume bit for bit."""
    volume = torch.randn(2, 3, 9, 11)
    identity = torch.eye(2, 3)
    for align_corners in (False, True):
        for displacement, affine in ((torch.zeros(2, 2, 9, 11), None), (None, identity),
                                     (None, identity.expand(2, -1, -1)),
                                     (torch.zeros(2, 2, 9, 11), identity)):
            out = warp3d(volume, displacement, affine, align_corners=align_corners)
            assert torch.equal(out, volume)
    assert calls == []
    warp3d(volume, None, identity, size=(9, 12))  # another size: not an identity
    assert len(calls) == 1
