"""supernet_conv: one convolution of a weight-shared super-net, for sub-paths chosen per sample.

An elastic super-net (OFA-like, Pourchot2022, ch. 5) keeps one shared weight per layer
[C_out_max, C_in_max, K_max, K_max] (depthwise: [C_max, 1, K_max, K_max]). A sub-path uses the
first ``in_channels`` input channels, the first ``out_channels`` filters and the centre
``kernel x kernel`` crop of each. ``supernet_conv(input, weight, bias, segments, stride,
depthwise)`` runs, in one call, a different sub-path for each of several consecutive slices of
the batch (``segments``), reading the crop and the prefix as views of the shared weight, which
is never copied or modified. Padding is "same" (``kernel // 2``), so every sub-path gives the
same output size; output channels beyond a segment's ``out_channels`` are zero. OFA's kernel
transformation matrices are applied by the front-end, not the op (docs/kernels.md).

Gradients: with respect to the input (zero beyond the channels a segment reads), the weight
(the full shared shape, zero outside every used sub-path, summed over segments) and the bias.

This file reads top-down: validation, reference, PyTorch backend, Triton kernels, launchers,
registration, front-end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from medtune.kernels._common import (
    KernelError, eager_call, eager_function, load_extension, register_backends, select, tl, triton,
)

FLOAT_DTYPES = (torch.float32, torch.float64)
FIELDS = ("batch_start", "batch_end", "kernel_size", "in_channels", "out_channels")


class Segment(NamedTuple):
    """One sub-path applied to the samples ``batch_start:batch_end``."""

    batch_start: int
    batch_end: int
    kernel_size: int
    in_channels: int
    out_channels: int


SegmentsLike = Sequence[Sequence[int]] | Tensor


def _error(message: str) -> KernelError:
    return KernelError(f"supernet_conv: {message}")


def output_size(size: int, stride: int) -> int:
    """Spatial output size of a "same"-padded odd kernel with ``stride``."""
    return (size - 1) // stride + 1


def check_segments(input: Tensor, weight: Tensor, bias: Tensor | None, segments: SegmentsLike,
                   stride: int, depthwise: bool) -> list[Segment]:
    """Validate every argument of the op and return the segments as :class:`Segment` tuples."""
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise _error(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise _error(f"{name} must have 4 dimensions, got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise _error(f"{name} must be float32 or float64, got {t.dtype}; convert it with .float()")
    if weight.dtype != input.dtype:
        raise _error(f"input is {input.dtype} but weight is {weight.dtype}; use one dtype")
    if weight.device != input.device:
        raise _error(f"input is on {input.device} but weight is on {weight.device}; move them to "
                     "the same device")
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.shape != (weight.shape[0],):
            raise _error(f"bias must be None or a tensor of shape ({weight.shape[0]},) "
                         f"(C_out_max), got {getattr(bias, 'shape', type(bias).__name__)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise _error(f"bias must match the input's dtype and device ({input.dtype} on "
                         f"{input.device}), got {bias.dtype} on {bias.device}")
    c_out, c_in, k_max, k_max2 = weight.shape
    if k_max != k_max2 or k_max % 2 == 0:
        raise _error(f"weight must hold square odd kernels [C_out, C_in, K, K], got shape "
                     f"{tuple(weight.shape)}")
    if depthwise and c_in != 1:
        raise _error(f"a depthwise weight is [C, 1, K, K], got shape {tuple(weight.shape)}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise _error(f"stride must be a positive integer, got {stride!r}")
    if isinstance(segments, Tensor):
        if segments.dtype not in (torch.int64, torch.int32) or segments.dim() != 2 or \
                segments.shape[1] != 5:
            raise _error(f"a segments tensor must be integer [S, 5] ({', '.join(FIELDS)}), got "
                         f"{segments.dtype} of shape {tuple(segments.shape)}")
        rows = [tuple(int(v) for v in row) for row in segments.tolist()]
    else:
        rows = []
        for row in segments:
            if len(row) != 5 or not all(isinstance(v, int) and not isinstance(v, bool)
                                        for v in row):
                raise _error(f"each segment is 5 integers ({', '.join(FIELDS)}), got {row!r}")
            rows.append(tuple(row))
    if not rows:
        raise _error("segments is empty; give at least one (batch_start, batch_end, kernel_size, "
                     "in_channels, out_channels)")
    n, channels = input.shape[0], input.shape[1]
    expected_start = 0
    out = []
    for i, row in enumerate(rows):
        seg = Segment(*row)
        where = f"segment {i} {tuple(seg)}"
        if seg.batch_start != expected_start or seg.batch_end <= seg.batch_start:
            raise _error(f"{where}: segments must be consecutive, non-empty slices of the batch "
                         f"starting at 0; expected batch_start {expected_start} < batch_end")
        if seg.batch_end > n:
            raise _error(f"{where}: batch_end is beyond the batch of {n} samples")
        if seg.kernel_size < 1 or seg.kernel_size % 2 == 0 or seg.kernel_size > k_max:
            raise _error(f"{where}: kernel_size must be odd and between 1 and the weight's "
                         f"K_max = {k_max}")
        if not 1 <= seg.out_channels <= c_out:
            raise _error(f"{where}: out_channels must be between 1 and the weight's "
                         f"C_out_max = {c_out}")
        limit = c_out if depthwise else c_in
        if not 1 <= seg.in_channels <= min(limit, channels):
            raise _error(f"{where}: in_channels must be between 1 and {min(limit, channels)} "
                         f"(the weight has {limit}, the input {channels} channels)")
        if depthwise and seg.in_channels != seg.out_channels:
            raise _error(f"{where}: a depthwise segment has in_channels == out_channels")
        out.append(seg)
        expected_start = seg.batch_end
    if expected_start != n:
        raise _error(f"segments cover samples 0:{expected_start} but the batch has {n}; they "
                     "must cover the whole batch")
    return out


def _layout(t: Tensor) -> torch.memory_format:
    """channels-last when the channels of ``t`` are its fastest dimension, else contiguous."""
    return torch.channels_last if t.shape[1] > 1 and t.stride(1) == 1 else torch.contiguous_format


def _flatten(segments: list[Segment]) -> list[int]:
    return [v for seg in segments for v in seg]


def _unflatten(flat: list[int]) -> list[Segment]:
    return [Segment(*flat[i:i + 5]) for i in range(0, len(flat), 5)]


def _sub_weight(weight: Tensor, seg: Segment, depthwise: bool) -> Tensor:
    """The view of ``weight`` that ``seg`` uses (no copy)."""
    off = (weight.shape[2] - seg.kernel_size) // 2
    crop = slice(off, off + seg.kernel_size)
    rows = weight[:seg.out_channels]
    return rows[:, :, crop, crop] if depthwise else rows[:, :seg.in_channels, crop, crop]


# --- reference -------------------------------------------------------------------------------


def supernet_conv_reference(input: Tensor, weight: Tensor, bias: Tensor | None,
                            segments: SegmentsLike, stride: int = 1,
                            depthwise: bool = False) -> Tensor:
    """Per-segment ``F.conv2d`` on sliced views of the shared weight, zero-padded to
    C_out_max channels and concatenated: the ground truth; autograd gives its gradients."""
    segs = check_segments(input, weight, bias, segments, stride, depthwise)
    c_out = weight.shape[0]
    parts = []
    for seg in segs:
        channels = seg.out_channels if depthwise else seg.in_channels
        x = input[seg.batch_start:seg.batch_end, :channels]
        y = F.conv2d(x, _sub_weight(weight, seg, depthwise),
                     bias[:seg.out_channels] if bias is not None else None, stride,
                     seg.kernel_size // 2, groups=seg.out_channels if depthwise else 1)
        parts.append(F.pad(y, (0, 0, 0, 0, 0, c_out - seg.out_channels)))
    return torch.cat(parts)


# --- PyTorch backend ---------------------------------------------------------------------------


def _torch_forward(input: Tensor, weight: Tensor, bias: Tensor | None, segments: list[int],
                   stride: int, depthwise: bool) -> Tensor:
    n, _, h, w = input.shape
    out = input.new_zeros((n, weight.shape[0], output_size(h, stride), output_size(w, stride))
                          ).contiguous(memory_format=_layout(input))
    for seg in _unflatten(segments):
        channels = seg.out_channels if depthwise else seg.in_channels
        out[seg.batch_start:seg.batch_end, :seg.out_channels] = F.conv2d(
            input[seg.batch_start:seg.batch_end, :channels], _sub_weight(weight, seg, depthwise),
            bias[:seg.out_channels] if bias is not None else None, stride,
            seg.kernel_size // 2, groups=seg.out_channels if depthwise else 1)
    return out


def _torch_backward(grad_out: Tensor, input: Tensor, weight: Tensor, segments: list[int],
                    stride: int, depthwise: bool, need_input: bool, need_weight: bool,
                    need_bias: bool) -> list[Tensor]:
    grad_input = torch.zeros_like(input) if need_input else input.new_empty(0)
    grad_weight = torch.zeros_like(weight) if need_weight else weight.new_empty(0)
    grad_bias = weight.new_zeros(weight.shape[0]) if need_bias else weight.new_empty(0)
    k_max = weight.shape[2]
    for seg in _unflatten(segments):
        channels = seg.out_channels if depthwise else seg.in_channels
        rows = slice(seg.batch_start, seg.batch_end)
        sub = _sub_weight(weight, seg, depthwise)
        g_in, g_w, g_b = torch.ops.aten.convolution_backward(
            grad_out[rows, :seg.out_channels].contiguous(), input[rows, :channels],
            sub.contiguous(), [seg.out_channels], [stride, stride],
            [seg.kernel_size // 2] * 2, [1, 1], False, [0, 0],
            seg.out_channels if depthwise else 1, [need_input, need_weight, need_bias])
        if need_input:
            grad_input[rows, :channels] = g_in
        if need_weight:
            off = (k_max - seg.kernel_size) // 2
            crop = slice(off, off + seg.kernel_size)
            grad_weight[:seg.out_channels, :g_w.shape[1], crop, crop] += g_w
        if need_bias:
            grad_bias[:seg.out_channels] += g_b
    return [grad_input, grad_weight, grad_bias]


# --- Triton kernels --------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _supernet_conv_fwd_kernel(in_ptr, w_ptr, b_ptr, out_ptr, params_ptr, C_in, H, W, Co,
                                  Ho, Wo, K, sw0, sw1, sw2, sw3, stride,
                                  HAS_BIAS: tl.constexpr, DEPTHWISE: tl.constexpr,
                                  BLOCK: tl.constexpr):
        """One program: one (sample, output channel) and BLOCK output pixels."""
        item = tl.program_id(0).to(tl.int64)
        n = item // Co
        oc = item % Co
        p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = p < Ho * Wo
        oy = p // Wo
        ox = p % Wo
        k = tl.load(params_ptr + n * 3)
        c_in = tl.load(params_ptr + n * 3 + 1)
        c_out = tl.load(params_ptr + n * 3 + 2)
        pad = k // 2
        off = (K - k) // 2
        acc = tl.zeros((BLOCK,), dtype=out_ptr.dtype.element_ty)
        if oc < c_out:
            if HAS_BIAS:
                acc += tl.load(b_ptr + oc)
            ic_lo = oc if DEPTHWISE else 0
            ic_hi = oc + 1 if DEPTHWISE else c_in
            for ic in range(ic_lo, ic_hi):
                x_base = in_ptr + (n * C_in + ic) * H * W
                f_base = w_ptr + oc * sw0 + (0 if DEPTHWISE else ic * sw1)
                for ky in range(0, k):
                    iy = oy * stride + ky - pad
                    row_ok = mask & (iy >= 0) & (iy < H)
                    for kx in range(0, k):
                        ix = ox * stride + kx - pad
                        ok = row_ok & (ix >= 0) & (ix < W)
                        wv = tl.load(f_base + (off + ky) * sw2 + (off + kx) * sw3)
                        acc += wv * tl.load(x_base + iy * W + ix, mask=ok, other=0.0)
        tl.store(out_ptr + item * Ho * Wo + p, acc, mask=mask)

    @triton.jit
    def _supernet_conv_grad_input_kernel(g_ptr, w_ptr, gin_ptr, params_ptr, C_in, H, W, Co, Ho,
                                         Wo, K, sw0, sw1, sw2, sw3, stride,
                                         DEPTHWISE: tl.constexpr, BLOCK: tl.constexpr):
        """One program: one (sample, input channel) and BLOCK input pixels, gathered from the
        output pixels that read them."""
        item = tl.program_id(0).to(tl.int64)
        n = item // C_in
        ic = item % C_in
        p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = p < H * W
        iy = p // W
        ix = p % W
        k = tl.load(params_ptr + n * 3)
        c_in = tl.load(params_ptr + n * 3 + 1)
        c_out = tl.load(params_ptr + n * 3 + 2)
        pad = k // 2
        off = (K - k) // 2
        acc = tl.zeros((BLOCK,), dtype=gin_ptr.dtype.element_ty)
        used = c_out if DEPTHWISE else c_in
        if ic < used:
            oc_lo = ic if DEPTHWISE else 0
            oc_hi = ic + 1 if DEPTHWISE else c_out
            for oc in range(oc_lo, oc_hi):
                g_base = g_ptr + (n * Co + oc) * Ho * Wo
                f_base = w_ptr + oc * sw0 + (0 if DEPTHWISE else ic * sw1)
                for ky in range(0, k):
                    ty = iy + pad - ky  # = oy * stride
                    oy = ty // stride
                    row_ok = mask & (ty >= 0) & (ty - oy * stride == 0) & (oy < Ho)
                    for kx in range(0, k):
                        tx = ix + pad - kx
                        ox = tx // stride
                        ok = row_ok & (tx >= 0) & (tx - ox * stride == 0) & (ox < Wo)
                        wv = tl.load(f_base + (off + ky) * sw2 + (off + kx) * sw3)
                        acc += wv * tl.load(g_base + oy * Wo + ox, mask=ok, other=0.0)
        tl.store(gin_ptr + item * H * W + p, acc, mask=mask)

    @triton.jit
    def _supernet_conv_grad_weight_kernel(g_ptr, in_ptr, gw_ptr, gb_ptr, params_ptr, N, C_in, H,
                                          W, Co, Ci, Ho, Wo, K, stride,
                                          NEED_BIAS: tl.constexpr, DEPTHWISE: tl.constexpr,
                                          BLOCK: tl.constexpr):
        """One program: one weight entry (oc, ic, y, x) of the full shared shape, summed over
        every sample whose sub-path reads it; the (oc, 0, 0, 0) program also sums the bias."""
        item = tl.program_id(0).to(tl.int64)
        kx_full = item % K
        ky_full = (item // K) % K
        wic = (item // (K * K)) % Ci
        oc = item // (K * K * Ci)
        ic = oc if DEPTHWISE else wic
        lanes = tl.arange(0, BLOCK)
        dtype = gw_ptr.dtype.element_ty
        total = tl.zeros((BLOCK,), dtype=dtype)
        bias_total = tl.zeros((BLOCK,), dtype=dtype)
        for n in range(0, N):
            k = tl.load(params_ptr + n * 3)
            c_in = tl.load(params_ptr + n * 3 + 1)
            c_out = tl.load(params_ptr + n * 3 + 2)
            pad = k // 2
            off = (K - k) // 2
            ky = ky_full - off
            kx = kx_full - off
            used = oc < c_out
            if not DEPTHWISE:
                used = used & (ic < c_in)
            inside = (ky >= 0) & (ky < k) & (kx >= 0) & (kx < k)
            if used:
                g_base = g_ptr + (n * Co + oc) * Ho * Wo
                x_base = in_ptr + (n * C_in + ic) * H * W
                for start in range(0, Ho * Wo, BLOCK):
                    p = start + lanes
                    mask = p < Ho * Wo
                    g = tl.load(g_base + p, mask=mask, other=0.0)
                    if NEED_BIAS:
                        bias_total += g
                    if inside:
                        iy = (p // Wo) * stride + ky - pad
                        ix = (p % Wo) * stride + kx - pad
                        ok = mask & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                        total += g * tl.load(x_base + iy * W + ix, mask=ok, other=0.0)
        tl.store(gw_ptr + item, tl.sum(total))
        if NEED_BIAS:
            if (wic == 0) & (ky_full == 0) & (kx_full == 0):
                tl.store(gb_ptr + oc, tl.sum(bias_total))


# --- launchers -------------------------------------------------------------------------------

TRITON_BLOCK = 128


def _per_sample(segments: list[int], n: int, device: torch.device) -> Tensor:
    """[N, 3] int64: (kernel, in_channels, out_channels) of each sample's sub-path."""
    params = torch.empty((n, 3), dtype=torch.int64)
    for seg in _unflatten(segments):
        params[seg.batch_start:seg.batch_end] = torch.tensor(
            [seg.kernel_size, seg.in_channels, seg.out_channels])
    return params.to(device)


def _triton_forward(input: Tensor, weight: Tensor, bias: Tensor | None, segments: list[int],
                    stride: int, depthwise: bool) -> Tensor:
    layout = _layout(input)
    input = input.contiguous()
    n, c_in, h, w = input.shape
    c_out, k = weight.shape[0], weight.shape[2]
    ho, wo = output_size(h, stride), output_size(w, stride)
    out = input.new_empty((n, c_out, ho, wo))
    params = _per_sample(segments, n, input.device)
    grid = (n * c_out, triton.cdiv(ho * wo, TRITON_BLOCK))
    _supernet_conv_fwd_kernel[grid](
        input, weight, bias if bias is not None else weight, out, params, c_in, h, w, c_out, ho,
        wo, k, *weight.stride(), stride, HAS_BIAS=bias is not None, DEPTHWISE=depthwise,
        BLOCK=TRITON_BLOCK)
    return out.contiguous(memory_format=layout)


def _triton_backward(grad_out: Tensor, input: Tensor, weight: Tensor, segments: list[int],
                     stride: int, depthwise: bool, need_input: bool, need_weight: bool,
                     need_bias: bool) -> list[Tensor]:
    layout = _layout(input)
    input = input.contiguous()
    n, c_in, h, w = input.shape
    c_out, ci, k = weight.shape[0], weight.shape[1], weight.shape[2]
    ho, wo = grad_out.shape[2:]
    params = _per_sample(segments, n, input.device)
    grad_out = grad_out.contiguous()
    grad_input = input.new_empty(0)
    if need_input:
        grad_input = torch.empty_like(input)
        _supernet_conv_grad_input_kernel[(n * c_in, triton.cdiv(h * w, TRITON_BLOCK))](
            grad_out, weight, grad_input, params, c_in, h, w, c_out, ho, wo, k, *weight.stride(),
            stride, DEPTHWISE=depthwise, BLOCK=TRITON_BLOCK)
        grad_input = grad_input.contiguous(memory_format=layout)
    grad_weight = weight.new_empty(0)
    grad_bias = weight.new_empty(0)
    if need_weight or need_bias:
        full = weight.new_empty((c_out, ci, k, k))
        bias_sums = weight.new_zeros(c_out)
        _supernet_conv_grad_weight_kernel[(full.numel(),)](
            grad_out, input, full, bias_sums, params, n, c_in, h, w, c_out, ci, ho, wo, k, stride,
            NEED_BIAS=need_bias, DEPTHWISE=depthwise, BLOCK=TRITON_BLOCK)
        grad_weight = full if need_weight else grad_weight
        grad_bias = bias_sums if need_bias else grad_bias
    return [grad_input, grad_weight, grad_bias]


def _cpp_forward(input: Tensor, weight: Tensor, bias: Tensor | None, segments: list[int],
                 stride: int, depthwise: bool) -> Tensor:
    return load_extension().supernet_conv_forward(input, weight, bias, segments, stride,
                                                  depthwise)


def _cpp_backward(grad_out: Tensor, input: Tensor, weight: Tensor, segments: list[int],
                  stride: int, depthwise: bool, need_input: bool, need_weight: bool,
                  need_bias: bool) -> list[Tensor]:
    return list(load_extension().supernet_conv_backward(
        grad_out, input, weight, segments, stride, depthwise, need_input, need_weight,
        need_bias))


# --- registration ----------------------------------------------------------------------------


for _op, _torch_fn, _cpp_fn, _triton_fn in (
    ("supernet_conv", _torch_forward, _cpp_forward, _triton_forward),
    ("supernet_conv_backward", _torch_backward, _cpp_backward, _triton_backward),
):
    register_backends(_op, torch_fn=_torch_fn, cpp_fn=_cpp_fn, triton_fn=_triton_fn)


def _forward(input: Tensor, weight: Tensor, bias: Tensor | None, segments: list[int],
             stride: int, depthwise: bool) -> Tensor:
    impl = select("supernet_conv", input.device.type)
    return impl.fn(input, weight, bias, segments, stride, depthwise)


def _backward_pass(grad_out: Tensor, input: Tensor, weight: Tensor, segments: list[int],
                   stride: int, depthwise: bool, need_input: bool, need_weight: bool,
                   need_bias: bool) -> list[Tensor]:
    impl = select("supernet_conv_backward", input.device.type)
    return impl.fn(grad_out, input, weight, segments, stride, depthwise, need_input,
                   need_weight, need_bias)


@torch.library.custom_op("medtune::supernet_conv", mutates_args=())
def _supernet_conv_op(input: Tensor, weight: Tensor, bias: Tensor | None, segments: list[int],
                      stride: int, depthwise: bool) -> Tensor:
    return _forward(input, weight, bias, segments, stride, depthwise)


@_supernet_conv_op.register_fake
def _(input: Tensor, weight: Tensor, bias: Tensor | None, segments: list[int], stride: int,
      depthwise: bool) -> Tensor:
    n, _, h, w = input.shape
    return input.new_empty((n, weight.shape[0], output_size(h, stride), output_size(w, stride))
                           ).contiguous(memory_format=_layout(input))


@torch.library.custom_op("medtune::supernet_conv_backward", mutates_args=())
def supernet_conv_backward_op(grad_out: Tensor, input: Tensor, weight: Tensor,
                              segments: list[int], stride: int, depthwise: bool,
                              need_input: bool, need_weight: bool,
                              need_bias: bool) -> list[Tensor]:
    """Gradients of ``supernet_conv`` wrt (input, weight, bias); an unneeded one is empty."""
    return _backward_pass(grad_out, input, weight, segments, stride, depthwise, need_input,
                          need_weight, need_bias)


@supernet_conv_backward_op.register_fake
def _(grad_out: Tensor, input: Tensor, weight: Tensor, segments: list[int], stride: int,
      depthwise: bool, need_input: bool, need_weight: bool, need_bias: bool) -> list[Tensor]:
    return [torch.empty_like(input) if need_input else input.new_empty(0),
            torch.empty_like(weight) if need_weight else weight.new_empty(0),
            weight.new_empty(weight.shape[0]) if need_bias else weight.new_empty(0)]


def _setup_context(ctx, inputs, output) -> None:
    input, weight, bias, segments, stride, depthwise = inputs
    ctx.save_for_backward(input, weight)
    ctx.segments, ctx.stride, ctx.depthwise = segments, stride, depthwise


def _backward(ctx, grad_out: Tensor):
    input, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    grad_out = grad_out.contiguous(memory_format=_layout(input))
    step = _backward_pass if eager_call(grad_out, input, weight) else supernet_conv_backward_op
    grads = step(grad_out, input, weight, ctx.segments, ctx.stride, ctx.depthwise, need[0],
                 need[1], need[2])
    return (grads[0] if need[0] else None, grads[1] if need[1] else None,
            grads[2] if need[2] else None, None, None, None)


_supernet_conv_op.register_autograd(_backward, setup_context=_setup_context)
# eager calls on plain tensors skip the custom-op dispatcher (see dispatch.eager_call)
_EagerSupernetConv = eager_function("SupernetConv", _forward, _setup_context, _backward)


# --- front-end -------------------------------------------------------------------------------


def supernet_conv(input: Tensor, weight: Tensor, bias: Tensor | None, segments: SegmentsLike,
                  stride: int = 1, depthwise: bool = False) -> Tensor:
    """Convolve slices of a batch with sub-paths of one shared super-net weight, in one call.

    Args:
        input: [N, C, H, W], float32/float64, contiguous or channels-last (the output
            follows its layout). A segment reads its first ``in_channels`` channels
            (depthwise: its first ``out_channels``).
        weight: the shared weight [C_out_max, C_in_max, K_max, K_max], or [C_max, 1, K_max,
            K_max] when ``depthwise``; K_max odd. Any strides: the crop and the channel
            prefix are read in place.
        bias: [C_out_max] or ``None``; a segment adds its first ``out_channels`` entries.
        segments: (batch_start, batch_end, kernel_size, in_channels, out_channels) per slice,
            as a list of 5-tuples or an integer tensor [S, 5]; consecutive slices covering the
            batch from 0 to N. ``kernel_size`` odd, at most K_max: the centre crop of the shared
            kernels. Depthwise segments have ``in_channels == out_channels``.
        stride: the convolution's stride; padding is ``kernel_size // 2`` ("same").
        depthwise: groups = channels (one K x K filter per channel) instead of a dense layer.

    Returns:
        [N, C_out_max, (H - 1) // stride + 1, (W - 1) // stride + 1]; channels beyond a
        segment's ``out_channels`` are zero. Differentiable wrt input, weight and bias (the
        weight's gradient has the full shared shape, summed over segments, zero where no
        segment reads). OFA kernel transformation matrices are applied by the caller before the
        op (see the module docstring).

    Raises:
        KernelError: a segment out of range, not covering the batch, with an even kernel or one
            larger than K_max, more channels than the weight or the input holds; mismatched
            dtypes or devices.
    """
    segs = check_segments(input, weight, bias, segments, stride, depthwise)
    input = input.contiguous(memory_format=_layout(input))
    op = _EagerSupernetConv.apply if eager_call(input, weight, bias) else _supernet_conv_op
    return op(input, weight, bias, _flatten(segs), stride, depthwise)
