"""glf_stats: true-positive, false-positive and false-negative sums per sample and class.

``glf_stats(pred, target)`` reads a soft prediction ``pred`` [N, C, *spatial] and a target
that is either a soft/binary mask of the same shape or an integer label map [N, 1, *spatial] /
[N, *spatial] (never expanded to one-hot), and returns, per sample and class,

    true_positives  = sum p * g,   false_positives = sum p * (1 - g),
    false_negatives = sum (1 - p) * g,

in one pass. ``activation="sigmoid" | "softmax"`` applies the activation to ``pred`` inside the
same pass (the losses use this). The backward pass writes d/dpred in one pass from the
per-class output gradients; nothing elementwise is saved between forward and backward.

This file reads top-down: reference, Triton kernels, launchers, registration.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from medtune.kernels._common import (
    KernelError, eager_call, eager_function, load_extension, register_backends, select, tl, triton,
)

ACTIVATIONS = {"none": 0, "sigmoid": 1, "softmax": 2}
LABEL_DTYPES = (torch.uint8, torch.int32, torch.int64)


class GLFStats(NamedTuple):
    """Per-sample, per-class confusion sums, each of shape [N, C]."""

    true_positives: Tensor
    false_positives: Tensor
    false_negatives: Tensor


class Prepared(NamedTuple):
    """Validated inputs in kernel layout."""

    pred: Tensor  # [N, C, S] contiguous
    target: Tensor  # dense [N, C, S] of pred's dtype, or labels [N, S] of an integer dtype
    labels: bool
    activation: int


def prepare(pred: Tensor, target: Tensor, activation: str = "none") -> Prepared:
    """Check shapes, dtypes and devices and bring the inputs into kernel layout."""
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise KernelError("glf_stats: pred and target must be torch.Tensors")
    if activation not in ACTIVATIONS:
        raise KernelError(
            f"glf_stats: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
        )
    if not pred.is_floating_point():
        raise KernelError(f"glf_stats: pred must be a floating-point tensor, got {pred.dtype}")
    if pred.dim() < 3:
        raise KernelError(
            f"glf_stats: pred must be [N, C, *spatial] with at least one spatial dim, "
            f"got shape {tuple(pred.shape)}"
        )
    if pred.device != target.device:
        raise KernelError(
            f"glf_stats: pred is on {pred.device} but target is on {target.device}; "
            "move both to the same device"
        )
    n, c = pred.shape[:2]
    spatial = pred.shape[2:]
    if activation == "softmax" and c == 1:
        raise KernelError(
            "glf_stats: softmax over a single channel is constantly 1; use activation='sigmoid' "
            "for a binary prediction"
        )
    size = spatial.numel()
    pred3 = pred.reshape(n, c, size).contiguous()
    integer = not target.is_floating_point() and not target.is_complex()
    label_shapes = {(n, 1, *spatial), (n, *spatial)}
    if tuple(target.shape) == tuple(pred.shape) and not (integer and c == 1):
        dense = target.reshape(n, c, size).to(pred.dtype).contiguous()
        return Prepared(pred3, dense, False, ACTIVATIONS[activation])
    if integer and tuple(target.shape) in label_shapes:
        labels = target.reshape(n, size)
        if labels.dtype == torch.bool:
            labels = labels.view(torch.uint8)
        elif labels.dtype not in LABEL_DTYPES:
            labels = labels.to(torch.int32)
        return Prepared(pred3, labels.contiguous(), True, ACTIVATIONS[activation])
    if tuple(target.shape) in label_shapes:
        raise KernelError(
            f"glf_stats: target of shape {tuple(target.shape)} looks like a label map but has "
            f"dtype {target.dtype}; pass class indices as an integer tensor (target.long()) or a "
            f"mask of pred's shape {tuple(pred.shape)}"
        )
    raise KernelError(
        f"glf_stats: target shape {tuple(target.shape)} does not fit pred shape "
        f"{tuple(pred.shape)}; expected a mask of pred's shape or an integer label map "
        f"[N, 1, *spatial] / [N, *spatial]"
    )


def output_dtype(pred: Tensor) -> torch.dtype:
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


def check_labels(labels: Tensor, num_classes: int) -> None:
    """Raise if a label lies outside [0, C) (outside {0, 1} for a single-channel prediction)."""
    limit = max(num_classes, 2)
    if labels.numel() and bool(((labels < 0) | (labels >= limit)).any()):
        raise _bad_labels(labels, num_classes)


def _bad_labels(labels: Tensor, num_classes: int) -> KernelError:
    limit = max(num_classes, 2)
    lo, hi = int(labels.min()), int(labels.max())
    return KernelError(
        f"glf_stats: target labels range over [{lo}, {hi}] but must lie in [0, {limit - 1}] for a "
        f"{num_classes}-channel prediction"
    )


# --- reference -------------------------------------------------------------------------------


def _activate(x: Tensor, activation: int) -> Tensor:
    if activation == ACTIVATIONS["sigmoid"]:
        return torch.sigmoid(x)
    if activation == ACTIVATIONS["softmax"]:
        return torch.softmax(x, dim=1)
    return x


def _dense_target(prepared: Prepared, dtype: torch.dtype) -> Tensor:
    if not prepared.labels:
        return prepared.target.to(dtype)
    c = prepared.pred.shape[1]
    classes = torch.arange(c, device=prepared.target.device) if c > 1 else torch.ones(1, device=prepared.target.device)
    return (prepared.target[:, None, :] == classes[None, :, None]).to(dtype)


def glf_stats_reference(pred: Tensor, target: Tensor, activation: str = "none") -> GLFStats:
    """Plain differentiable PyTorch: the ground truth every backend is tested against."""
    prepared = prepare(pred, target, activation)
    if prepared.labels:
        check_labels(prepared.target, prepared.pred.shape[1])
    dtype = output_dtype(pred)
    p = _activate(prepared.pred.to(dtype), prepared.activation)
    g = _dense_target(prepared, dtype)
    tp = (p * g).sum(-1)
    return GLFStats(tp, (p * (1 - g)).sum(-1), ((1 - p) * g).sum(-1))


def _torch_forward(pred: Tensor, target: Tensor, labels: bool, activation: int) -> Tensor:
    prepared = Prepared(pred, target, labels, activation)
    if labels:
        check_labels(target, pred.shape[1])
    dtype = output_dtype(pred)
    p = _activate(pred.to(dtype), activation)
    g = _dense_target(prepared, dtype)
    tp = (p * g).sum(-1)
    return torch.stack([tp, p.sum(-1) - tp, g.sum(-1) - tp], dim=-1)


def _torch_backward(
    pred: Tensor, target: Tensor, labels: bool, activation: int, a: Tensor, b: Tensor
) -> Tensor:
    dtype = output_dtype(pred)
    x = pred.to(dtype)
    g = _dense_target(Prepared(pred, target, labels, activation), dtype)
    dp = a.to(dtype)[..., None] + b.to(dtype)[..., None] * g
    if activation == ACTIVATIONS["sigmoid"]:
        p = torch.sigmoid(x)
        dx = dp * p * (1 - p)
    elif activation == ACTIVATIONS["softmax"]:
        p = torch.softmax(x, dim=1)
        dx = p * (dp - (p * dp).sum(1, keepdim=True))
    else:
        dx = dp
    return dx.to(pred.dtype)


# --- Triton kernels --------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _load_tile(x_ptr, t_ptr, n, k, C, S, LABELS: tl.constexpr, ACT: tl.constexpr,
                   BINARY: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_S: tl.constexpr):
        c = tl.arange(0, BLOCK_C)
        s = k * BLOCK_S + tl.arange(0, BLOCK_S)
        c_ok = c < C
        s_ok = s < S
        ok = c_ok[:, None] & s_ok[None, :]
        offs = (n * C + c.to(tl.int64))[:, None] * S + s[None, :]
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(COMPUTE)
        if ACT == 1:
            p = tl.sigmoid(x)
        elif ACT == 2:
            x = tl.where(c_ok[:, None], x, float("-inf"))
            e = tl.exp(x - tl.max(x, axis=0)[None, :])
            p = e / tl.sum(e, axis=0)[None, :]
        else:
            p = x
        p = tl.where(ok, p, 0.0)
        if LABELS:
            lab = tl.load(t_ptr + n * S + s, mask=s_ok, other=-1).to(tl.int64)
            g = (lab[None, :] == (c + BINARY)[:, None]).to(COMPUTE)
        else:
            g = tl.load(t_ptr + offs, mask=ok, other=0.0).to(COMPUTE)
        g = tl.where(ok, g, 0.0)
        return p, g, offs, ok, c, c_ok

    @triton.jit
    def _glf_stats_fwd_kernel(x_ptr, t_ptr, partial_ptr, C, S, CHUNKS, LABELS: tl.constexpr,
                              ACT: tl.constexpr, BINARY: tl.constexpr, COMPUTE: tl.constexpr,
                              BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        k = tl.program_id(1).to(tl.int64)
        p, g, offs, ok, c, c_ok = _load_tile(x_ptr, t_ptr, n, k, C, S, LABELS, ACT, BINARY,
                                             COMPUTE, BLOCK_C, BLOCK_S)
        out = partial_ptr + ((n * CHUNKS + k) * C + c) * 3
        tl.store(out, tl.sum(p * g, axis=1), mask=c_ok)
        tl.store(out + 1, tl.sum(p, axis=1), mask=c_ok)
        tl.store(out + 2, tl.sum(g, axis=1), mask=c_ok)

    @triton.jit
    def _glf_stats_bwd_kernel(x_ptr, t_ptr, a_ptr, b_ptr, grad_ptr, C, S, LABELS: tl.constexpr,
                              ACT: tl.constexpr, BINARY: tl.constexpr, COMPUTE: tl.constexpr,
                              BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        k = tl.program_id(1).to(tl.int64)
        p, g, offs, ok, c, c_ok = _load_tile(x_ptr, t_ptr, n, k, C, S, LABELS, ACT, BINARY,
                                             COMPUTE, BLOCK_C, BLOCK_S)
        a = tl.load(a_ptr + n * C + c, mask=c_ok, other=0.0).to(COMPUTE)
        b = tl.load(b_ptr + n * C + c, mask=c_ok, other=0.0).to(COMPUTE)
        dp = a[:, None] + b[:, None] * g
        if ACT == 1:
            dx = dp * p * (1.0 - p)
        elif ACT == 2:
            dx = p * (dp - tl.sum(p * dp, axis=0)[None, :])
        else:
            dx = dp
        tl.store(grad_ptr + offs, dx.to(grad_ptr.dtype.element_ty), mask=ok)


# --- launchers -------------------------------------------------------------------------------


def _triton_config(pred: Tensor) -> dict:
    c = pred.shape[1]
    block_c = triton.next_power_of_2(c)
    block_s = max(16, min(1024, 4096 // block_c))
    compute = tl.float64 if pred.dtype == torch.float64 else tl.float32
    return {"BINARY": int(c == 1), "COMPUTE": compute, "BLOCK_C": block_c, "BLOCK_S": block_s}


def _triton_forward(pred: Tensor, target: Tensor, labels: bool, activation: int) -> Tensor:
    n, c, s = pred.shape
    if labels:
        check_labels(target, c)
    config = _triton_config(pred)
    chunks = triton.cdiv(s, config["BLOCK_S"])
    partial = torch.zeros((n, chunks, c, 3), device=pred.device, dtype=output_dtype(pred))
    if n and s:
        _glf_stats_fwd_kernel[(n, chunks)](
            pred, target, partial, c, s, chunks, LABELS=labels, ACT=activation, **config
        )
    sums = partial.to(torch.float64).sum(1)
    tp = sums[..., 0]
    return torch.stack([tp, sums[..., 1] - tp, sums[..., 2] - tp], dim=-1).to(output_dtype(pred))


def _triton_backward(
    pred: Tensor, target: Tensor, labels: bool, activation: int, a: Tensor, b: Tensor
) -> Tensor:
    n, c, s = pred.shape
    config = _triton_config(pred)
    grad = torch.empty_like(pred)
    if n and s:
        _glf_stats_bwd_kernel[(n, triton.cdiv(s, config["BLOCK_S"]))](
            pred, target, a.contiguous(), b.contiguous(), grad, c, s, LABELS=labels,
            ACT=activation, **config,
        )
    return grad


def _cpp_inputs(pred: Tensor, target: Tensor, labels: bool) -> tuple[Tensor, Tensor]:
    if pred.dtype in (torch.float32, torch.float64):
        return pred, target
    return pred.float(), target if labels else target.float()


def _cpp_forward(pred: Tensor, target: Tensor, labels: bool, activation: int) -> Tensor:
    x, t = _cpp_inputs(pred, target, labels)
    stats, invalid = load_extension().glf_stats_forward(x, t, labels, activation)
    if invalid:
        raise _bad_labels(target, pred.shape[1])
    return stats.to(output_dtype(pred))


def _cpp_backward(
    pred: Tensor, target: Tensor, labels: bool, activation: int, a: Tensor, b: Tensor
) -> Tensor:
    x, t = _cpp_inputs(pred, target, labels)
    return load_extension().glf_stats_backward(x, t, labels, activation, a, b).to(pred.dtype)


# --- registration ----------------------------------------------------------------------------


for _op, _torch_fn, _cpp_fn, _triton_fn in (
    ("glf_stats", _torch_forward, _cpp_forward, _triton_forward),
    ("glf_stats_backward", _torch_backward, _cpp_backward, _triton_backward),
):
    register_backends(_op, torch_fn=_torch_fn, cpp_fn=_cpp_fn, triton_fn=_triton_fn)


def _forward(pred: Tensor, target: Tensor, labels: bool, activation: int) -> Tensor:
    return select("glf_stats", pred.device.type).fn(pred, target, labels, activation)


def _backward_pass(
    pred: Tensor, target: Tensor, labels: bool, activation: int, a: Tensor, b: Tensor
) -> Tensor:
    return select("glf_stats_backward", pred.device.type).fn(pred, target, labels, activation, a, b)


@torch.library.custom_op("medtune::glf_stats", mutates_args=())
def _glf_stats_op(pred: Tensor, target: Tensor, labels: bool, activation: int) -> Tensor:
    return _forward(pred, target, labels, activation)


@_glf_stats_op.register_fake
def _(pred: Tensor, target: Tensor, labels: bool, activation: int) -> Tensor:
    return pred.new_empty((pred.shape[0], pred.shape[1], 3), dtype=output_dtype(pred))


@torch.library.custom_op("medtune::glf_stats_backward", mutates_args=())
def glf_stats_backward_op(
    pred: Tensor, target: Tensor, labels: bool, activation: int, a: Tensor, b: Tensor
) -> Tensor:
    """d/dpred of sum over (n, c, voxels) of (a[n, c] + b[n, c] * g) * p, in one pass.

    With a = dL/dFP and b = dL/dTP - dL/dFP - dL/dFN this is dL/dpred for any loss L of the
    confusion sums (used by the backward of ``glf_stats`` and of ``glf_loss``).
    """
    return _backward_pass(pred, target, labels, activation, a, b)


@glf_stats_backward_op.register_fake
def _(pred: Tensor, target: Tensor, labels: bool, activation: int, a: Tensor, b: Tensor) -> Tensor:
    return torch.empty_like(pred)


def _setup_context(ctx, inputs, output) -> None:
    pred, target, labels, activation = inputs
    ctx.save_for_backward(pred, target)
    ctx.labels, ctx.activation = labels, activation


def _backward(ctx, grad_stats: Tensor):
    pred, target = ctx.saved_tensors
    g_tp, g_fp, g_fn = grad_stats.unbind(-1)
    # d/dp of (tp, fp, fn) = (g, 1 - g, -g): dL/dp = g_fp + (g_tp - g_fp - g_fn) * g
    a, b = g_fp.contiguous(), (g_tp - g_fp - g_fn).contiguous()
    step = _backward_pass if eager_call(pred, grad_stats) else glf_stats_backward_op
    return step(pred, target, ctx.labels, ctx.activation, a, b), None, None, None


_glf_stats_op.register_autograd(_backward, setup_context=_setup_context)


# eager calls on plain tensors skip the custom-op dispatcher (see dispatch.eager_call)
_EagerGLFStats = eager_function("GLFStats", _forward, _setup_context, _backward)


def glf_stats(pred: Tensor, target: Tensor, activation: str = "none") -> GLFStats:
    """True-positive, false-positive and false-negative sums per sample and class.

    Args:
        pred: soft prediction [N, C, *spatial] (probabilities, or logits with ``activation``).
        target: a mask of ``pred``'s shape (soft or binary), or an integer label map
            [N, 1, *spatial] / [N, *spatial] with values in [0, C) ({0, 1} when C == 1).
        activation: ``"none"``, ``"sigmoid"`` or ``"softmax"`` (over the class dim), fused.

    Returns:
        ``GLFStats(true_positives, false_positives, false_negatives)``, each [N, C], float64
        for float64 ``pred`` and float32 otherwise; differentiable with respect to ``pred``.
    """
    prepared = prepare(pred, target, activation)
    op = _EagerGLFStats.apply if eager_call(prepared.pred, prepared.target) else _glf_stats_op
    stats = op(*prepared)
    return GLFStats(stats[..., 0], stats[..., 1], stats[..., 2])
