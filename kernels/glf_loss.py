"""glf_loss: the generalized overlap loss of Seo2021 on top of the one-pass glf_stats kernel.

Every overlap loss medtune ships (Dice, Tversky, Effectiveness, GLF) is one ratio of the
confusion sums, per sample and class,

    loss = 1 - (w * TP + smooth_nr) / (w * TP + a * FP + b * FN + smooth_dr),

with (w, a, b) = (2, 1, 1) for Dice, (1, alpha, beta) for Tversky, (1 + beta2, 1, beta2) for
Effectiveness, and (1 + beta2, alpha_p, beta2 * alpha_n) for the GLF (see
``medtune.plugins.losses.glf`` for the algebra). The forward is one fused pass over the
prediction (activation included) and the target; the backward derives the loss gradient with
respect to the [N, C] sums in closed form and writes the input gradient in one pass from them.
Nothing elementwise is kept between forward and backward.

The two steps are the kernel ops ``glf_loss`` and ``glf_loss_backward``: the C++ backend runs
each as one call (the [N, C] arithmetic next to its pass, so a small input does not pay for a
dozen tensor ops), the torch and Triton backends compose their ``glf_stats`` passes with the
same arithmetic written in PyTorch below.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from medtune.kernels._common import (
    KernelError, eager_call, eager_function, load_extension, register_backends, select,
)
from medtune.kernels.glf_stats import (
    GLFStats,
    _bad_labels,
    _cpp_inputs,
    _torch_backward,
    _torch_forward,
    _triton_backward,
    _triton_forward,
    glf_stats_reference,
    output_dtype,
    prepare,
)


def overlap_ratio_loss(
    stats: GLFStats,
    tp_weight: float | Tensor,
    fp_weight: float | Tensor,
    fn_weight: float | Tensor,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> Tensor:
    """``1 - (w TP + smooth_nr) / (w TP + a FP + b FN + smooth_dr)`` per sample and class.

    With ``batch=True`` the sums are first added over the batch (MONAI's convention) and the
    result has shape [C]; otherwise [N, C].
    """
    tp, fp, fn = stats
    if batch:
        tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
    numerator = tp_weight * tp + smooth_nr
    return 1.0 - numerator / (tp_weight * tp + fp_weight * fp + fn_weight * fn + smooth_dr)


def _weights(pred: Tensor, *weights: float | Tensor) -> Tensor:
    for weight in weights:
        if isinstance(weight, Tensor) and weight.requires_grad:
            raise KernelError(
                "glf_loss: the TP/FP/FN weights are not differentiated; pass them detached "
                "(weight.detach())"
            )
    dtype = output_dtype(pred)
    if not any(isinstance(weight, Tensor) for weight in weights):  # one small tensor, not four
        return torch.tensor(weights, dtype=dtype, device=pred.device)
    return torch.stack([torch.as_tensor(w, dtype=dtype, device=pred.device) for w in weights])


# --- implementations: the [N, C] arithmetic around a backend's two glf_stats passes ------------


def _loss_of_sums(stats: Tensor, weights: Tensor, smooth_nr: float, smooth_dr: float,
                  batch: bool) -> Tensor:
    tp_weight, fp_weight, fn_weight = weights
    return overlap_ratio_loss(
        GLFStats(*stats.unbind(-1)), tp_weight, fp_weight, fn_weight, smooth_nr, smooth_dr, batch
    )


def _coefficients(stats: Tensor, weights: Tensor, grad_loss: Tensor, grad_stats: Tensor,
                  smooth_nr: float, smooth_dr: float, batch: bool) -> tuple[Tensor, Tensor]:
    """(a, b) [N, C] with dL/dp = a + b * g, from the upstream gradients of loss and sums."""
    tp, fp, fn = stats.unbind(-1)
    if batch:
        tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
    w, a, b = weights
    # loss = 1 - U / D with U = w TP + smooth_nr and D = w TP + a FP + b FN + smooth_dr
    numerator = w * tp + smooth_nr
    denominator = w * tp + a * fp + b * fn + smooth_dr
    scale = grad_loss / denominator**2
    d_tp = -w * (denominator - numerator) * scale
    d_fp, d_fn = numerator * a * scale, numerator * b * scale
    g_tp, g_fp, g_fn = (grad_stats + torch.stack([d_tp, d_fp, d_fn], -1)).unbind(-1)
    # d/dp of (tp, fp, fn) = (g, 1 - g, -g): dL/dp = g_fp + (g_tp - g_fp - g_fn) * g
    return g_fp.contiguous(), (g_tp - g_fp - g_fn).contiguous()


def _composed(stats_forward, stats_backward) -> tuple[Callable, Callable]:
    """glf_loss forward and backward of a backend from its glf_stats passes."""

    def forward(pred, target, labels, activation, weights, smooth_nr, smooth_dr, batch):
        stats = stats_forward(pred, target, labels, activation)
        return _loss_of_sums(stats, weights, smooth_nr, smooth_dr, batch), stats

    def backward(pred, target, labels, activation, weights, stats, grad_loss, grad_stats,
                 smooth_nr, smooth_dr, batch):
        a, b = _coefficients(stats, weights, grad_loss, grad_stats, smooth_nr, smooth_dr, batch)
        return stats_backward(pred, target, labels, activation, a, b)

    return forward, backward


def _cpp_forward(pred, target, labels, activation, weights, smooth_nr, smooth_dr, batch):
    x, t = _cpp_inputs(pred, target, labels)
    loss, stats, invalid = load_extension().glf_loss_forward(
        x, t, labels, activation, weights, smooth_nr, smooth_dr, batch
    )
    if invalid:
        raise _bad_labels(target, pred.shape[1])
    return loss, stats


def _cpp_backward(pred, target, labels, activation, weights, stats, grad_loss, grad_stats,
                  smooth_nr, smooth_dr, batch):
    x, t = _cpp_inputs(pred, target, labels)
    grad = load_extension().glf_loss_backward(
        x, t, labels, activation, weights, stats, grad_loss, grad_stats, smooth_nr, smooth_dr, batch
    )
    return grad.to(pred.dtype)


# --- registration ----------------------------------------------------------------------------

_TORCH = _composed(_torch_forward, _torch_backward)
_TRITON = _composed(_triton_forward, _triton_backward)
_CPP = (_cpp_forward, _cpp_backward)
for _step, _op in enumerate(("glf_loss", "glf_loss_backward")):
    register_backends(_op, torch_fn=_TORCH[_step], cpp_fn=_CPP[_step], triton_fn=_TRITON[_step])


def _forward(pred, target, labels, activation, weights, smooth_nr, smooth_dr, batch):
    impl = select("glf_loss", pred.device.type)
    return impl.fn(pred, target, labels, activation, weights, smooth_nr, smooth_dr, batch)


def _backward_pass(pred, target, labels, activation, weights, stats, grad_loss, grad_stats,
                   smooth_nr, smooth_dr, batch):
    impl = select("glf_loss_backward", pred.device.type)
    return impl.fn(pred, target, labels, activation, weights, stats, grad_loss, grad_stats,
                   smooth_nr, smooth_dr, batch)


@torch.library.custom_op("medtune::glf_loss", mutates_args=())
def _glf_loss_op(
    pred: Tensor,
    target: Tensor,
    labels: bool,
    activation: int,
    weights: Tensor,
    smooth_nr: float,
    smooth_dr: float,
    batch: bool,
) -> tuple[Tensor, Tensor]:
    return _forward(pred, target, labels, activation, weights, smooth_nr, smooth_dr, batch)


@_glf_loss_op.register_fake
def _(pred, target, labels, activation, weights, smooth_nr, smooth_dr, batch):
    n, c = pred.shape[:2]
    dtype = output_dtype(pred)
    loss = pred.new_empty((c,) if batch else (n, c), dtype=dtype)
    return loss, pred.new_empty((n, c, 3), dtype=dtype)


@torch.library.custom_op("medtune::glf_loss_backward", mutates_args=())
def _glf_loss_backward_op(
    pred: Tensor,
    target: Tensor,
    labels: bool,
    activation: int,
    weights: Tensor,
    stats: Tensor,
    grad_loss: Tensor,
    grad_stats: Tensor,
    smooth_nr: float,
    smooth_dr: float,
    batch: bool,
) -> Tensor:
    return _backward_pass(pred, target, labels, activation, weights, stats, grad_loss, grad_stats,
                          smooth_nr, smooth_dr, batch)


@_glf_loss_backward_op.register_fake
def _(pred, target, labels, activation, weights, stats, grad_loss, grad_stats, smooth_nr,
      smooth_dr, batch):
    return torch.empty_like(pred)


def _setup_context(ctx, inputs, output) -> None:
    pred, target, labels, activation, weights, smooth_nr, smooth_dr, batch = inputs
    ctx.save_for_backward(pred, target, weights, output[1])
    ctx.labels, ctx.activation = labels, activation
    ctx.smooth_nr, ctx.smooth_dr, ctx.batch = smooth_nr, smooth_dr, batch


def _backward(ctx, grad_loss: Tensor, grad_stats: Tensor):
    pred, target, weights, stats = ctx.saved_tensors
    step = _backward_pass if eager_call(pred, grad_loss, grad_stats) else _glf_loss_backward_op
    grad = step(pred, target, ctx.labels, ctx.activation, weights, stats, grad_loss, grad_stats,
                ctx.smooth_nr, ctx.smooth_dr, ctx.batch)
    return grad, None, None, None, None, None, None, None


_glf_loss_op.register_autograd(_backward, setup_context=_setup_context)


# eager calls on plain tensors skip the custom-op dispatcher (see dispatch.eager_call)
_EagerGLFLoss = eager_function("GLFLoss", _forward, _setup_context, _backward)


def glf_loss(
    input: Tensor,
    target: Tensor,
    tp_weight: float | Tensor,
    fp_weight: float | Tensor,
    fn_weight: float | Tensor,
    activation: str = "none",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> tuple[Tensor, GLFStats]:
    """Unreduced overlap loss ([N, C], or [C] with ``batch``) and the confusion sums it used.

    ``input`` holds probabilities, or logits with ``activation="sigmoid" | "softmax"``;
    ``target`` is a mask of ``input``'s shape or an integer label map (see ``glf_stats``).
    The weights are constants for autograd (the adaptive strategies update them by rule).
    One custom op ``medtune::glf_loss``: a single pass forward, and a backward that derives
    d loss / d(TP, FP, FN) in closed form and writes d loss / d input in a single pass.
    """
    prepared = prepare(input, target, activation)
    weights = _weights(input, tp_weight, fp_weight, fn_weight)
    op = _EagerGLFLoss.apply if eager_call(prepared.pred, prepared.target) else _glf_loss_op
    loss, stats = op(*prepared, weights, float(smooth_nr), float(smooth_dr), batch)
    return loss, GLFStats(stats[..., 0], stats[..., 1], stats[..., 2])


def glf_loss_reference(
    input: Tensor,
    target: Tensor,
    tp_weight: float | Tensor,
    fp_weight: float | Tensor,
    fn_weight: float | Tensor,
    activation: str = "none",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> Tensor:
    """The same loss in plain differentiable PyTorch (the ground truth of the tests)."""
    stats = glf_stats_reference(input, target, activation)
    return overlap_ratio_loss(stats, tp_weight, fp_weight, fn_weight, smooth_nr, smooth_dr, batch)

