"""warp3d on every available backend against affine_grid + grid_sample, forward and gradients."""

from __future__ import annotations

import pytest
import torch

from medtune.errors import KernelError
from medtune.kernels import use_backend, warp3d, warp3d_reference
from tests.conftest import backend_or_skip

# one intra-op thread: tiny shapes, and a busy machine makes a second thread very slow
pytestmark = pytest.mark.usefixtures("one_thread")

BACKENDS = ["torch", "cpp", "triton"]
TRANSFORMS = ["affine", "displacement", "affine_first", "displacement_first"]
VOLUME = {2: (6, 7), 3: (4, 5, 6)}
FIELD = {2: (4, 5), 3: (3, 4, 5)}  # the displacement's own (coarser) resolution


def _inputs(dims, channels, transform, dtype=torch.float32, seed=0, volume_shape=None):
    gen = torch.Generator().manual_seed(seed)
    n = 2
    shape = volume_shape or VOLUME[dims]
    volume = torch.randn((n, channels, *shape), generator=gen, dtype=torch.float64)
    displacement = affine = None
    if transform != "affine":
        displacement = 0.15 * torch.randn((n, dims, *FIELD[dims]), generator=gen,
                                          dtype=torch.float64)
    if transform != "displacement":
        affine = torch.eye(dims, dims + 1, dtype=torch.float64).expand(n, -1, -1)
        affine = affine + 0.2 * torch.randn((n, dims, dims + 1), generator=gen, dtype=torch.float64)
    compose = transform if transform.endswith("_first") else "affine_first"
    return [t.to(dtype) if t is not None else None for t in (volume, displacement, affine)], compose


def _differentiable(tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


def _compare(backend, tensors, tol, **options):
    got_in, ref_in = _differentiable(tensors), _differentiable(tensors)
    expected = warp3d_reference(*ref_in, **options)
    with use_backend(backend):
        got = warp3d(*got_in, **options)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    if not expected.requires_grad:
        return
    weights = torch.randn_like(expected)
    (weights * expected).sum().backward()
    with use_backend(backend):
        (weights * got).sum().backward()
    for g, e in zip(got_in, ref_in):
        if e is None:
            continue
        scale = max(1.0, float(e.grad.abs().max()))
        torch.testing.assert_close(g.grad, e.grad, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("dims", [2, 3])
def test_matches_reference(backend, dims, padding_mode, align_corners, transform):
    backend_or_skip("warp3d", backend)
    channels = 1 if transform in ("affine", "affine_first") else 3
    tensors, compose = _inputs(dims, channels, transform)
    _compare(backend, tensors, 1e-5, compose=compose, padding_mode=padding_mode,
             align_corners=align_corners)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dims,padding_mode,align_corners,transform", [
    (3, "zeros", False, "affine_first"),
    (3, "border", True, "displacement_first"),
    (2, "zeros", True, "displacement"),
    (2, "border", False, "affine_first"),
])
def test_gradcheck(backend, dims, padding_mode, align_corners, transform):
    backend_or_skip("warp3d", backend)
    shape = (3, 4, 3) if dims == 3 else (4, 5)
    tensors, compose = _inputs(dims, 2, transform, torch.float64, seed=1, volume_shape=shape)
    inputs = [t.requires_grad_(True) for t in tensors if t is not None]
    with_displacement, with_affine = tensors[1] is not None, tensors[2] is not None

    def fn(*args):
        args = list(args)
        volume = args.pop(0)
        displacement = args.pop(0) if with_displacement else None
        affine = args.pop(0) if with_affine else None
        return warp3d(volume, displacement, affine, compose=compose, padding_mode=padding_mode,
                      align_corners=align_corners)

    with use_backend(backend):
        # the Triton interpreter is slow: a directional check there
        fast = backend == "triton"
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dims", [2, 3])
def test_identity_is_exact(backend, dims, align_corners):
    """An identity affine and a zero displacement at the volume's size return it bit for bit,
    for both align_corners conventions (the maps are built in voxel space)."""
    backend_or_skip("warp3d", backend)
    volume = torch.randn(2, 3, *VOLUME[dims])
    identity = torch.eye(dims, dims + 1).expand(2, -1, -1)
    zero = torch.zeros(2, dims, *VOLUME[dims])
    with use_backend(backend):
        for displacement, affine, compose in ((None, None, "affine_first"),
                                              (None, identity, "affine_first"),
                                              (zero, None, "affine_first"),
                                              (zero, identity, "affine_first"),
                                              (zero, identity, "displacement_first")):
            for padding_mode in ("zeros", "border"):
                out = warp3d(volume, displacement, affine, compose=compose,
                             padding_mode=padding_mode, align_corners=align_corners)
                assert torch.equal(out, volume)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dims", [2, 3])
def test_nearest_label_map(backend, dims):
    backend_or_skip("warp3d", backend)
    (volume, displacement, affine), _ = _inputs(dims, 1, "affine_first", seed=2)
    labels = torch.randint(0, 5, volume.shape, generator=torch.Generator().manual_seed(3))
    options = dict(mode="nearest", padding_mode="zeros", align_corners=False)
    expected = warp3d_reference(labels, displacement, affine, **options)
    with use_backend(backend):
        got = warp3d(labels, displacement, affine, **options)
    assert got.dtype == torch.int64
    assert torch.equal(got, expected)
    # float volumes: the same values, a gradient wrt the volume, none through the transform
    _compare(backend, [volume, displacement, affine], 1e-5, **options)


@pytest.mark.parametrize("samples", [1, 3])
def test_many_chunks_and_threads(samples):
    """The C++ kernels with two threads and several chunks: one sample scatters with atomic
    adds, three with one sample per thread."""
    backend_or_skip("warp3d", "cpp")
    tensors, compose = _inputs(3, 1, "affine_first", volume_shape=(34, 34, 34))
    tensors = [t[:1].expand(samples, *t.shape[1:]).contiguous() for t in tensors]
    tensors[1] = torch.nn.functional.interpolate(tensors[1], size=(34, 34, 34))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _compare("cpp", tensors, 1e-4, compose=compose, padding_mode="border")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_size(backend):
    backend_or_skip("warp3d", backend)
    (volume, _, affine), _ = _inputs(3, 2, "affine")
    _compare(backend, [volume, None, affine], 1e-5, size=(3, 2, 5), align_corners=True)
    _compare(backend, [volume, None, affine[0]], 1e-5, size=(1, 4, 1))


@pytest.mark.parametrize("args,kwargs,message", [
    ((torch.rand(2, 1, 4),), {}, r"volume must be \[N, C, D, H, W\] or \[N, C, H, W\]"),
    ((torch.rand(2, 1, 4, 4), torch.rand(2, 3, 4, 4)), {}, r"displacement must be \[N, 2, h, w\]"),
    ((torch.rand(2, 1, 4, 4, 4), torch.rand(1, 3, 4, 4, 4)), {}, "with N = 2"),
    ((torch.rand(2, 1, 4, 4, 4), None, torch.rand(2, 2, 3)), {}, r"affine must be \[N, 3, 4\]"),
    ((torch.rand(2, 1, 4, 4), None, torch.rand(2, 2, 3).double()), {}, "share one dtype"),
    ((torch.rand(2, 1, 4, 4).half(),), {}, "must be float32, float64 or an integer"),
    ((torch.randint(0, 3, (2, 1, 4, 4)),), {}, "mode='nearest'"),
    ((torch.rand(2, 1, 4, 4),), {"padding_mode": "reflection"}, "padding_mode must be one of"),
    ((torch.rand(2, 1, 4, 4),), {"mode": "bicubic"}, "mode must be one of"),
    ((torch.rand(2, 1, 4, 4),), {"compose": "both"}, "compose must be one of"),
    ((torch.rand(2, 1, 4, 4),), {"size": (4, 4, 4)}, "size must be 2 positive integers"),
    ((torch.rand(2, 1, 4, 4),), {"size": (0, 4)}, "size must be 2 positive integers"),
    ((torch.rand(2, 1, 4, 4), torch.rand(2, 2, 4, 4, device="meta")), {}, "same device"),
    ((torch.rand(2, 1, 0, 4),), {}, "must not be empty"),
])
def test_bad_inputs_raise_clear_errors(args, kwargs, message):
    with pytest.raises(KernelError, match=message):
        warp3d(*args, **kwargs)


def test_torch_compile_has_no_graph_break():
    (volume, displacement, affine), compose = _inputs(3, 2, "affine_first")
    displacement.requires_grad_(True)
    affine.requires_grad_(True)

    def loss_fn(v, u, a):
        return warp3d(v, u, a, compose=compose).square().mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    value = compiled(volume, displacement, affine)
    grads = torch.autograd.grad(value, (displacement, affine))
    expected = loss_fn(volume, displacement, affine)
    torch.testing.assert_close(value, expected)
    for g, e in zip(grads, torch.autograd.grad(expected, (displacement, affine))):
        torch.testing.assert_close(g, e)
