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


# --- gradients of some inputs only, and scatters split among threads ------------------------


def _with_gradients(tensors, needs):
    return [t.detach().clone().requires_grad_(need) if t is not None else None
            for t, need in zip(tensors, needs)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (True, True, False),
                                   (False, True, True)])
@pytest.mark.parametrize("case", [
    # (dims, transform, field at the volume's size: read directly, not interpolated)
    (3, "displacement", True), (2, "displacement", True), (3, "displacement_first", True),
    (3, "affine_first", False), (2, "affine_first", False), (3, "affine", False),
])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_gradients_of_some_inputs_only(backend, needs, case, mode):
    """Each gradient alone and in pairs (the kernels compute only those asked for), with the
    displacement read at its own voxels or interpolated."""
    backend_or_skip("warp3d", backend)
    dims, transform, direct = case
    tensors, compose = _inputs(dims, 2, transform)
    if direct:  # the field at the volume's size, so that its voxels are the output's
        tensors[1] = 0.15 * torch.randn((2, dims, *VOLUME[dims]),
                                        generator=torch.Generator().manual_seed(5))
    if transform == "displacement_first":
        tensors[2] = torch.eye(dims, dims + 1).expand(2, -1, -1) + 0.1 * tensors[2]
    options = dict(compose=compose, mode=mode, padding_mode="zeros", align_corners=False)
    got_in = _with_gradients(tensors, needs)
    ref_in = _with_gradients(tensors, needs)
    if not any(t is not None and t.requires_grad for t in got_in):
        pytest.skip("no input of this case is asked for a gradient")
    expected = warp3d_reference(*ref_in, **options)
    with use_backend(backend):
        got = warp3d(*got_in, **options)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(6))
    (weights * expected).sum().backward()
    with use_backend(backend):
        (weights * got).sum().backward()
    for g, e, need in zip(got_in, ref_in, needs):
        if e is None:
            continue
        if not need:
            assert g.grad is None
            continue
        scale = max(1.0, float(e.grad.abs().max()))
        torch.testing.assert_close(g.grad, e.grad, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("transform", ["registration", "template", "rotation"])
@pytest.mark.parametrize("dims", [2, 3])
def test_scatters_split_among_threads(threads, transform, dims):
    """One sample on several threads: each scatters into a window of the gradients of its own
    and the windows are added, or, where they would be too large (a rotation mapping z to x
    gives every thread the whole volume), atomic adds; both agree with the reference."""
    backend_or_skip("warp3d", "cpp")
    gen = torch.Generator().manual_seed(7)
    spatial = (34, 34, 34) if dims == 3 else (200, 200)
    volume = torch.randn((1, 2, *spatial), generator=gen)
    displacement = affine = None
    if transform == "registration":  # the field read directly, the volume's gradient scattered
        displacement = torch.nn.functional.interpolate(
            0.05 * torch.randn((1, dims, *(5,) * dims), generator=gen), size=spatial)
    elif transform == "template":  # the field interpolated and scattered too
        displacement = 0.05 * torch.randn((1, dims, *(9,) * dims), generator=gen)
        affine = torch.eye(dims, dims + 1) + 0.05 * torch.randn((1, dims, dims + 1), generator=gen)
    else:  # swaps x with z (2D: with y), off the voxel grid (where slopes jump)
        affine = 0.01 * torch.randn((1, dims, dims + 1), generator=gen)
        affine[0, 0, dims - 1] += 1.0
        affine[0, dims - 1, 0] += 1.0
        if dims == 3:
            affine[0, 1, 1] += 1.0
    # the affine's gradient only where it is smooth: at a right angle on a noise volume it
    # jumps wherever float32 rounding moves a point across a voxel face
    needs = (True, True, transform == "template")
    got_in, ref_in = _with_gradients([volume, displacement, affine], needs), \
        _with_gradients([volume, displacement, affine], needs)
    expected = warp3d_reference(*ref_in, padding_mode="border", size=spatial)
    weights = torch.randn(expected.shape, generator=gen)
    (weights * expected).sum().backward()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with use_backend("cpp"):
            got = warp3d(*got_in, padding_mode="border", size=spatial)
            (weights * got).sum().backward()
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for g, e in zip(got_in, ref_in):
        if e is not None and e.requires_grad:
            scale = max(1.0, float(e.grad.abs().max()))
            torch.testing.assert_close(g.grad, e.grad, rtol=1e-4, atol=1e-4 * scale)


def test_maps_built_under_inference_mode_serve_autograd_later():
    """Without an affine the voxel maps are built once per shape; a first call under
    ``torch.inference_mode`` (a validation pass) must not leave maps that a training step
    cannot save for backward."""
    volume = torch.rand(1, 1, 5, 6, 7)
    displacement = 0.1 * torch.randn(1, 3, 5, 6, 7)
    with torch.inference_mode():
        warp3d(volume, displacement, align_corners=True, padding_mode="border")
    displacement.requires_grad_(True)
    warp3d(volume, displacement, align_corners=True, padding_mode="border").sum().backward()
    assert displacement.grad is not None and displacement.grad.shape == displacement.shape
