"""supernet_conv on every available backend against per-segment F.conv2d, forward and gradients."""

from __future__ import annotations

import random

import pytest
import torch

from medtune.errors import KernelError
from medtune.kernels import supernet_conv, supernet_conv_reference, use_backend
from tests.conftest import backend_or_skip

pytestmark = pytest.mark.usefixtures("one_thread")

# Triton runs on the CPU only in its (slow) interpreter: its exhaustive cases are slow tests
SLOW_TRITON = ["torch", "cpp", pytest.param("triton", marks=pytest.mark.slow)]
C_IN, C_OUT, K_MAX = 5, 6, 7


def _random_segments(n, depthwise, rng, parts, c_in=C_IN, c_out=C_OUT, k_max=K_MAX):
    cuts = sorted(rng.sample(range(1, n), parts - 1)) if parts > 1 else []
    bounds = [0, *cuts, n]
    segments = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        k = rng.choice([k for k in (1, 3, 5, 7) if k <= k_max])
        o = rng.randint(1, c_out)
        i = o if depthwise else rng.randint(1, c_in)
        segments.append((a, b, k, i, o))
    return segments


def _tensors(n, depthwise, dtype, seed, size=(7, 6), bias=True):
    gen = torch.Generator().manual_seed(seed)
    channels = C_OUT if depthwise else C_IN
    x = torch.randn((n, channels, *size), generator=gen, dtype=dtype)
    w = torch.randn((C_OUT, 1 if depthwise else C_IN, K_MAX, K_MAX), generator=gen, dtype=dtype)
    b = torch.randn((C_OUT,), generator=gen, dtype=dtype) if bias else None
    return x, w, b


def _leaves(tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


def _compare(backend, tensors, segments, stride, depthwise, tol):
    got_in, ref_in = _leaves(tensors), _leaves(tensors)
    expected = supernet_conv_reference(*ref_in, segments, stride, depthwise)
    with use_backend(backend):
        got = supernet_conv(*got_in, segments, stride, depthwise)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    weights = torch.randn_like(expected)
    (weights * expected).sum().backward()
    with use_backend(backend):
        (weights * got).sum().backward()
    for g, e in zip(got_in, ref_in):
        if e is not None:
            torch.testing.assert_close(g.grad, e.grad, rtol=tol, atol=tol * max(1.0, float(
                e.grad.abs().max())))
    return got_in, segments


@pytest.mark.parametrize("backend", SLOW_TRITON)
@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_matches_reference_on_random_multi_segment_batches(backend, depthwise, stride):
    backend_or_skip("supernet_conv", backend)
    rng = random.Random(stride * 10 + depthwise)
    for trial in range(3):
        segments = _random_segments(6, depthwise, rng, parts=1 + trial)
        tensors = _tensors(6, depthwise, torch.float32, trial, bias=trial != 1)
        _compare(backend, tensors, segments, stride, depthwise, 1e-4)


@pytest.mark.parametrize("depthwise,stride", [(False, 2),
                                              pytest.param(True, 1, marks=pytest.mark.slow)])
def test_triton_matches_reference_on_a_small_two_segment_batch(depthwise, stride):
    backend_or_skip("supernet_conv", "triton")
    segments = [(0, 1, 3, 2, 2), (1, 2, 5, 3, 3)] if depthwise else [(0, 1, 3, 2, 4),
                                                                     (1, 2, 7, 5, 2)]
    _compare("triton", _tensors(2, depthwise, torch.float32, 1, size=(4, 5)), segments, stride,
             depthwise, 1e-4)


@pytest.mark.parametrize("backend", SLOW_TRITON)
def test_unused_weight_gets_zero_gradient_and_outputs_beyond_width_are_zero(backend):
    backend_or_skip("supernet_conv", backend)
    segments = [(0, 2, 3, 2, 3), (2, 3, 5, 4, 2)]
    (x, w, b), _ = _compare(backend, _tensors(3, False, torch.float32, 5), segments, 1, False,
                            1e-4)
    with use_backend(backend):
        out = supernet_conv(x.detach(), w.detach(), b.detach(), segments)
    assert out[:2, 3:].abs().max() == 0 and out[2:, 2:].abs().max() == 0
    used = torch.zeros_like(w, dtype=torch.bool)
    used[:3, :2, 2:5, 2:5] = True
    used[:2, :4, 1:6, 1:6] = True
    assert w.grad[~used].abs().max() == 0 and w.grad[used].abs().min() > 0
    assert b.grad[3:].abs().max() == 0
    assert x.grad[:2, 2:].abs().max() == 0 and x.grad[2:, 4:].abs().max() == 0


@pytest.mark.parametrize("backend", SLOW_TRITON)
@pytest.mark.parametrize("depthwise", [False, True])
def test_gradcheck_float64(backend, depthwise):
    backend_or_skip("supernet_conv", backend)
    x, w, b = _leaves(_tensors(3, depthwise, torch.float64, 7, size=(4, 5)))
    segments = [(0, 1, 3, 2, 2), (1, 3, 5, 3, 3)] if depthwise else [(0, 1, 1, 2, 4),
                                                                      (1, 3, 7, 5, 2)]
    for stride in (1, 2):
        with use_backend(backend):
            assert torch.autograd.gradcheck(
                lambda x, w, b: supernet_conv(x, w, b, segments, stride, depthwise), (x, w, b))


def test_weight_is_read_in_place_from_a_strided_view():
    """A non-contiguous shared weight (a view of a larger tensor) gives the same result."""
    x, w, b = _tensors(4, False, torch.float32, 3)
    big = torch.randn(C_OUT, 2 * C_IN, K_MAX, K_MAX)
    big[:, ::2] = w
    view = big[:, ::2]
    assert not view.is_contiguous()
    segments = torch.tensor([[0, 2, 5, 3, 4], [2, 4, 3, 5, 6]])
    expected = supernet_conv_reference(x, w, b, segments)
    for backend in ("torch", "cpp"):
        backend_or_skip("supernet_conv", backend)
        with use_backend(backend):
            torch.testing.assert_close(supernet_conv(x, view, b, segments), expected)


@pytest.mark.parametrize("backend", SLOW_TRITON)
@pytest.mark.parametrize("depthwise", [False, True])
def test_channels_last_input_matches_reference_and_keeps_its_layout(backend, depthwise):
    """A channels-last input (also a channel slice of one) gives the reference's values and
    gradients, and the output and the input gradient are channels-last too."""
    backend_or_skip("supernet_conv", backend)
    x, w, b = _tensors(4, depthwise, torch.float32, 11, size=(5, 6))
    x_last = x.contiguous(memory_format=torch.channels_last)
    segments = [(0, 3, 5, 4, 4), (3, 4, 3, 5, 5)] if depthwise else [(0, 3, 5, 4, 6),
                                                                     (3, 4, 3, 5, 2)]
    for stride in (1, 2):
        got_in, ref_in = _leaves((x_last, w, b)), _leaves((x, w, b))
        expected = supernet_conv_reference(*ref_in, segments, stride, depthwise)
        with use_backend(backend):
            got = supernet_conv(*got_in, segments, stride, depthwise)
            single = supernet_conv(got_in[0], got_in[1], got_in[2],
                                   [(0, 4, 3, C_OUT if depthwise else C_IN, C_OUT)], stride,
                                   depthwise)
            sliced = supernet_conv(x_last[:, :5], w, b, [(0, 4, 3, 5, 5)], stride, depthwise)
        assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
        assert single.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sliced, supernet_conv_reference(
            x[:, :5], w, b, [(0, 4, 3, 5, 5)], stride, depthwise), rtol=1e-4, atol=1e-4)
        weights = torch.randn_like(expected)
        (weights * expected).sum().backward()
        with use_backend(backend):
            (weights * got).sum().backward()
        assert got_in[0].grad.is_contiguous(memory_format=torch.channels_last)
        for g, e in zip(got_in, ref_in):
            torch.testing.assert_close(g.grad, e.grad, rtol=1e-4, atol=1e-4 * max(
                1.0, float(e.grad.abs().max())))


@pytest.mark.parametrize("segments,message", [
    ([], "segments is empty"),
    ([(0, 2, 3, 2, 2)], "must cover the whole batch"),
    ([(0, 2, 3, 2, 2), (3, 4, 3, 2, 2)], "consecutive"),
    ([(0, 5, 3, 2, 2)], "beyond the batch"),
    ([(0, 4, 9, 2, 2)], "K_max = 7"),
    ([(0, 4, 4, 2, 2)], "kernel_size must be odd"),
    ([(0, 4, 3, 6, 2)], "in_channels must be between 1 and 5"),
    ([(0, 4, 3, 2, 7)], "C_out_max = 6"),
    ([(0, 4, 3, 2)], "5 integers"),
    (torch.zeros(1, 5), "integer \\[S, 5\\]"),
])
def test_bad_segments_are_clear_errors(segments, message):
    x, w, b = _tensors(4, False, torch.float32, 0)
    with pytest.raises(KernelError, match=message):
        supernet_conv(x, w, b, segments)


def test_bad_tensors_are_clear_errors():
    x, w, b = _tensors(2, False, torch.float32, 0)
    segments = [(0, 2, 3, 2, 2)]
    with pytest.raises(KernelError, match="input is torch.float32 but weight is torch.float64"):
        supernet_conv(x, w.double(), None, segments)
    with pytest.raises(KernelError, match="bias must match"):
        supernet_conv(x, w, b.double(), segments)
    with pytest.raises(KernelError, match="square odd kernels"):
        supernet_conv(x, w[:, :, :6, :6], None, segments)
    with pytest.raises(KernelError, match="depthwise weight is \\[C, 1, K, K\\]"):
        supernet_conv(x, w, None, segments, depthwise=True)
    with pytest.raises(KernelError, match="depthwise segment has in_channels == out_channels"):
        supernet_conv(x, w[:, :1], None, [(0, 2, 3, 2, 3)], depthwise=True)
    with pytest.raises(KernelError, match="float32 or float64"):
        supernet_conv(x.half(), w.half(), None, segments)
    with pytest.raises(KernelError, match="stride must be a positive integer"):
        supernet_conv(x, w, None, segments, stride=0)
    if torch.cuda.is_available():
        with pytest.raises(KernelError, match="same device"):
            supernet_conv(x.cuda(), w, None, segments)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("depthwise", [False, True])
def test_eager_path_equals_the_custom_op(backend, depthwise, kernel_device):
    """Eager calls skip the custom-op dispatcher; the op itself (what torch.compile and
    torch.func see) must give the same output and gradients, with the weight a Parameter."""
    from medtune.kernels.supernet_conv import _flatten

    backend_or_skip("supernet_conv", backend)
    x, w, b = (t.to(kernel_device) for t in _tensors(5, depthwise, torch.float64, seed=3))
    segments = _random_segments(5, depthwise, random.Random(3), parts=2)
    eager_in = [x.clone().requires_grad_(True), torch.nn.Parameter(w.clone()),
                b.clone().requires_grad_(True)]
    op_in = _leaves((x, w, b))
    with use_backend(backend):
        out = supernet_conv(*eager_in, segments, 1, depthwise)
        op_out = torch.ops.medtune.supernet_conv(*op_in, _flatten(segments), 1, depthwise)
        weights = torch.randn_like(out)
        (weights * out).sum().backward()
        (weights * op_out).sum().backward()
    assert "SupernetConv" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, op_out, rtol=0, atol=0)
    for got, expected in zip(eager_in, op_in):
        torch.testing.assert_close(got.grad, expected.grad, rtol=0, atol=0)
