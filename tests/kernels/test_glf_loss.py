"""The fused glf_loss op on every backend against the plain PyTorch composition."""

from __future__ import annotations

import pytest
import torch

from medtune.errors import KernelError
from medtune.kernels import glf_loss, glf_loss_reference, use_backend
from tests.conftest import backend_or_skip

BACKENDS = ["torch", "cpp", "triton"]

CASES = [
    # spatial, channels, activation, labels, weights (w, a, b), batch
    ((8, 9), 1, "sigmoid", True, (2.0, 1.0, 1.0), False),
    ((8, 9), 1, "none", False, (1.0, 0.3, 0.7), True),
    ((4, 5, 6), 3, "softmax", True, (1.5, 0.8, 0.25), False),
    ((4, 5, 6), 2, "sigmoid", False, (1.0, 1.0, 1.0), True),
]


def _inputs(spatial, channels, activation, labels, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((2, channels, *spatial), generator=gen, dtype=dtype)
    if activation == "none":
        x = torch.sigmoid(x)
    if labels:
        target = torch.randint(0, max(channels, 2), (2, 1, *spatial), generator=gen)
    else:
        target = (torch.rand((2, channels, *spatial), generator=gen) > 0.6).to(dtype)
    return x, target


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial,channels,activation,labels,weights,batch", CASES)
def test_forward_and_gradient_match_reference(backend, spatial, channels, activation, labels,
                                              weights, batch):
    backend_or_skip("glf_stats", backend)
    x, target = _inputs(spatial, channels, activation, labels)
    ours_in, ref_in = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with use_backend(backend):
        loss, stats = glf_loss(ours_in, target, *weights, activation=activation, batch=batch)
    expected = glf_loss_reference(ref_in, target, *weights, activation=activation, batch=batch)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    upstream = torch.randn_like(expected)
    # the sums are outputs too: a loss may also use them directly
    with use_backend(backend):
        ((loss * upstream).sum() + 0.01 * stats.false_positives.sum()).backward()
    from medtune.kernels import glf_stats_reference

    ref_fp = glf_stats_reference(ref_in, target, activation).false_positives
    ((expected * upstream).sum() + 0.01 * ref_fp.sum()).backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [False, True])
def test_gradcheck(backend, batch):
    backend_or_skip("glf_stats", backend)
    x, target = _inputs((3, 4, 3), 3, "softmax", True)
    x.requires_grad_(True)
    with use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda v: glf_loss(v, target, 2.0, 0.5, 1.5, activation="softmax", batch=batch)[0],
            (x,),
        )


def test_float32_input_gives_float32_loss():
    x, target = _inputs((16, 16), 1, "sigmoid", True, dtype=torch.float32)
    loss, stats = glf_loss(x, target, 2.0, 1.0, 1.0, activation="sigmoid")
    assert loss.dtype == torch.float32 and stats.true_positives.dtype == torch.float32
    torch.testing.assert_close(
        loss, glf_loss_reference(x, target, 2.0, 1.0, 1.0, activation="sigmoid"), rtol=1e-5, atol=1e-6
    )


def test_tensor_weights_are_accepted_but_not_differentiated():
    x, target = _inputs((6, 6), 1, "sigmoid", True)
    alpha = torch.tensor(0.4, dtype=torch.float64)
    loss, _ = glf_loss(x, target, 1.0, alpha, 0.6, activation="sigmoid")
    torch.testing.assert_close(loss, glf_loss_reference(x, target, 1.0, 0.4, 0.6, "sigmoid"))
    with pytest.raises(KernelError, match="detach"):
        glf_loss(x, target, 1.0, alpha.clone().requires_grad_(True), 0.6, activation="sigmoid")


def test_torch_compile_fullgraph():
    x, target = _inputs((8, 8), 3, "softmax", True, dtype=torch.float32)
    x.requires_grad_(True)

    def step(v):
        return glf_loss(v, target, 2.0, 1.0, 1.0, activation="softmax")[0].mean()

    value = torch.compile(step, fullgraph=True, backend="aot_eager")(x)
    value.backward()
    grad, x.grad = x.grad.clone(), None
    step(x).backward()
    torch.testing.assert_close(grad, x.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial,channels,activation,labels,weights,batch", CASES)
def test_eager_path_equals_the_custom_op(backend, spatial, channels, activation, labels, weights,
                                         batch, kernel_device):
    """Eager calls skip the custom-op dispatcher; the op itself (what torch.compile and
    torch.func see) must give the same loss, sums and gradient."""
    from medtune.kernels.glf_stats import prepare

    backend_or_skip("glf_loss", backend)
    x, target = (t.to(kernel_device) for t in _inputs(spatial, channels, activation, labels))
    eager_in, op_in = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with use_backend(backend):
        loss, stats = glf_loss(eager_in, target, *weights, activation=activation, batch=batch)
        prepared = prepare(op_in, target, activation)
        op_loss, op_stats = torch.ops.medtune.glf_loss(
            *prepared, torch.tensor(weights, dtype=x.dtype, device=x.device), 1e-5, 1e-5, batch)
        (loss.sum() + 0.5 * stats.true_positives.sum()).backward()
        (op_loss.sum() + 0.5 * op_stats[..., 0].sum()).backward()
    assert loss.grad_fn is not None and "GLFLoss" in type(loss.grad_fn).__name__
    torch.testing.assert_close(loss, op_loss, rtol=0, atol=0)
    torch.testing.assert_close(stats.true_positives, op_stats[..., 0], rtol=0, atol=0)
    torch.testing.assert_close(eager_in.grad, op_in.grad, rtol=0, atol=0)
