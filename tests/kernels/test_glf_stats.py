"""glf_stats on every available backend against the PyTorch reference, forward and gradient."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import one_hot

from medtune.errors import KernelError
from medtune.kernels import glf_stats, glf_stats_reference, use_backend
from tests.conftest import backend_or_skip

BACKENDS = ["torch", "cpp", "triton"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _case(spatial, channels, target_kind, activation, dtype=torch.float32, seed=0, empty=False):
    gen = torch.Generator().manual_seed(seed)
    n = 2
    logits = torch.randn((n, channels, *spatial), generator=gen, dtype=torch.float64)
    pred = logits if activation != "none" else torch.sigmoid(logits)
    pred = pred.to(dtype)
    if target_kind == "soft":
        target = torch.rand((n, channels, *spatial), generator=gen).to(dtype)
    elif target_kind == "labels":
        high = max(channels, 2)
        target = torch.randint(0, high, (n, 1, *spatial), generator=gen)
    elif target_kind == "labels_nochannel":
        target = torch.randint(0, max(channels, 2), (n, *spatial), generator=gen).to(torch.int32)
    else:  # binary mask of pred's shape
        target = (torch.rand((n, channels, *spatial), generator=gen) > 0.7).to(dtype)
    if empty:
        target = torch.zeros_like(target)
    return pred, target


def _compare(backend, pred, target, activation, tol):
    pred = pred.detach().requires_grad_(True)
    ref_in = pred.detach().clone().requires_grad_(True)
    expected = glf_stats_reference(ref_in, target, activation)
    with use_backend(backend):
        got = glf_stats(pred, target, activation)
    scale = max(1.0, float(max(e.detach().abs().max() for e in expected)))
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=tol, atol=tol * scale)
    weights = [torch.randn_like(e) for e in expected]
    sum(w * e for w, e in zip(weights, expected)).sum().backward()
    with use_backend(backend):
        sum(w * g for w, g in zip(weights, got)).sum().backward()
    assert pred.grad.dtype == pred.dtype
    torch.testing.assert_close(pred.grad, ref_in.grad, rtol=tol * 10, atol=tol * 10)


CASES = [
    # spatial, channels, target kind, activation
    ((9, 11), 1, "binary", "none"),
    ((9, 11), 1, "labels", "sigmoid"),
    ((9, 11), 1, "labels_nochannel", "none"),
    ((9, 11), 3, "labels", "softmax"),
    ((9, 11), 3, "soft", "none"),
    ((9, 11), 4, "binary", "sigmoid"),
    ((5, 6, 7), 1, "soft", "sigmoid"),
    ((5, 6, 7), 3, "labels", "softmax"),
    ((5, 6, 7), 2, "labels_nochannel", "none"),
    ((300,), 5, "labels", "softmax"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial,channels,target_kind,activation", CASES)
def test_matches_reference(backend, spatial, channels, target_kind, activation):
    backend_or_skip("glf_stats", backend)
    pred, target = _case(spatial, channels, target_kind, activation)
    _compare(backend, pred, target, activation, TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target_kind", ["binary", "labels"])
def test_empty_target(backend, target_kind):
    backend_or_skip("glf_stats", backend)
    pred, target = _case((8, 8), 1, target_kind, "none", empty=True)
    _compare(backend, pred, target, "none", TOLERANCE[torch.float32])
    with use_backend(backend):
        tp, fp, fn = glf_stats(pred, target)
    assert torch.all(tp == 0) and torch.all(fn == 0)
    torch.testing.assert_close(fp, pred.sum((2, 3)).float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_input_spanning_many_chunks(backend):
    backend_or_skip("glf_stats", backend)
    shape = (40, 1000) if backend != "triton" else (20, 300)
    pred, target = _case(shape, 2, "labels", "softmax")
    _compare(backend, pred, target, "softmax", 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("target_kind", ["mask", torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("size", [1, 15, 16, 17, 8192 + 35])
def test_float32_activation_against_float64(backend, activation, target_kind, size):
    """float32 logits with a fused activation, against the float64 reference of the same logits.

    The C++ backend runs these 16 voxels per step (AVX-512): the sizes put every lane count in
    the tail, and across a chunk border; each target kind has its own load; infinite and
    saturated logits must give probabilities of 1 / 0 and no NaN.
    """
    backend_or_skip("glf_stats", backend)
    gen = torch.Generator().manual_seed(size)
    channels = 1 if activation == "sigmoid" else 3
    logits = torch.randn((2, channels, size), generator=gen) * 6
    extremes = torch.tensor([float("inf"), float("-inf"), 100.0, -100.0, 0.0, 87.5, -87.5])
    k = min(len(extremes), logits.numel())
    logits.view(-1)[:k] = extremes[:k]
    if activation == "softmax":  # a +inf logit makes the softmax NaN (inf - inf); -inf is valid
        logits.nan_to_num_(posinf=1e4)
    labels = torch.randint(0, max(channels, 2), (2, 1, size), generator=gen)
    if target_kind == "mask":
        target = (labels == 1) if channels == 1 else one_hot(labels[:, 0], channels).transpose(1, 2)
        target = target.float()
        reference_target = target.double()
    else:
        target = reference_target = labels.to(target_kind)
    ref_in = logits.double().requires_grad_(True)
    ours = logits.clone().requires_grad_(True)
    expected = glf_stats_reference(ref_in, reference_target, activation)
    with use_backend(backend):
        got = glf_stats(ours, target, activation)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e.detach(), rtol=1e-6, atol=1e-6 * size)
    weights = [torch.randn(2, channels, generator=gen, dtype=torch.float64) for _ in expected]
    sum((w * e).sum() for w, e in zip(weights, expected)).backward()
    with use_backend(backend):
        sum((w.float() * g).sum() for w, g in zip(weights, got)).backward()
    assert torch.isfinite(ours.grad).all()
    scale = float(ref_in.grad.abs().max())
    # sigmoid(-inf) is about 1e-38 here, not 0: a gradient of ~1e-38 where the reference has 0
    torch.testing.assert_close(ours.grad.double(), ref_in.grad, rtol=1e-5, atol=1e-6 * scale + 1e-30)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(backend, dtype):
    backend_or_skip("glf_stats", backend)
    pred, target = _case((7, 9), 3, "labels", "softmax", dtype=dtype)
    _compare(backend, pred, target, "softmax", TOLERANCE[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial,channels,target_kind,activation", [
    ((4, 5), 1, "soft", "none"),
    ((4, 5), 1, "labels", "sigmoid"),
    ((3, 4, 3), 3, "labels", "softmax"),
    ((3, 4, 3), 2, "binary", "sigmoid"),
])
def test_gradcheck(backend, spatial, channels, target_kind, activation):
    backend_or_skip("glf_stats", backend)
    pred, target = _case(spatial, channels, target_kind, activation, dtype=torch.float64)
    pred.requires_grad_(True)

    def fn(x):
        return torch.stack(tuple(glf_stats(x, target, activation)))

    with use_backend(backend):
        assert torch.autograd.gradcheck(fn, (pred,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_non_contiguous_and_channels_last(backend):
    backend_or_skip("glf_stats", backend)
    pred, target = _case((6, 10), 3, "soft", "none")
    cl = pred.to(memory_format=torch.channels_last)
    transposed = pred.transpose(2, 3)
    for p, t in ((cl, target), (transposed, target.transpose(2, 3))):
        assert not p.is_contiguous()
        _compare(backend, p, t, "none", TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("spatial", [(4, 4), (131, 257)])
def test_bad_labels_raise(backend, dtype, spatial):
    """Out-of-range labels anywhere (the first voxel, the middle, the last of a vector tail;
    131 x 257 voxels spread over both threads) raise; uint8 has no negative labels."""
    backend_or_skip("glf_stats", backend)
    pred = torch.rand(1, 3, *spatial)
    voxels = spatial[0] * spatial[1]
    for where in (0, voxels // 2, voxels - 1):
        target = torch.zeros(1, 1, *spatial, dtype=dtype)
        target.view(-1)[where] = 3
        with use_backend(backend), pytest.raises(KernelError, match=r"must lie in \[0, 2\]"):
            glf_stats(pred, target)
        if dtype != torch.uint8:
            target.view(-1)[where] = -1
            with use_backend(backend), pytest.raises(KernelError, match=r"range over \[-1, 0\]"):
                glf_stats(pred, target)
    glf_stats(pred, torch.full((1, 1, *spatial), 2, dtype=dtype))  # the largest valid label


@pytest.mark.parametrize("pred,target,message", [
    (torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 5), "does not fit pred shape"),
    (torch.rand(2, 3, 4, 4), torch.rand(2, 1, 4, 4), "pass class indices as an integer tensor"),
    (torch.randint(0, 2, (2, 1, 4, 4)), torch.rand(2, 1, 4, 4), "must be a floating-point"),
    (torch.rand(2, 4), torch.rand(2, 4), "at least one spatial dim"),
    (torch.rand(2, 1, 4), torch.rand(2, 1, 4, device="meta"), "same device"),
])
def test_bad_inputs_raise_clear_errors(pred, target, message):
    with pytest.raises(KernelError, match=message):
        glf_stats(pred, target)


def test_bad_activation_and_single_channel_softmax():
    with pytest.raises(KernelError, match="activation must be one of"):
        glf_stats(torch.rand(1, 2, 3), torch.rand(1, 2, 3), "relu")
    with pytest.raises(KernelError, match="use activation='sigmoid'"):
        glf_stats(torch.rand(1, 1, 3), torch.rand(1, 1, 3), "softmax")


def test_integer_mask_of_pred_shape_is_one_hot():
    pred = torch.rand(2, 3, 5, 5)
    labels = torch.randint(0, 3, (2, 5, 5))
    one_hot = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2)  # int64, pred's shape
    for a, b in zip(glf_stats(pred, one_hot), glf_stats(pred, labels)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_has_no_graph_break(compiler):
    pred = torch.rand(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 8, 8))

    def loss_fn(x, t):
        tp, fp, fn = glf_stats(x, t, "softmax")
        return (1 - 2 * tp / (2 * tp + fp + fn)).mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend=compiler)
    value = compiled(pred, target)
    value.backward()
    grad = pred.grad.clone()
    pred.grad = None
    loss_fn(pred, target).backward()
    torch.testing.assert_close(value, loss_fn(pred, target))
    torch.testing.assert_close(grad, pred.grad)
