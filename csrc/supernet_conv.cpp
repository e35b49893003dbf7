// supernet_conv: one convolution of a weight-shared super-net for per-sample sub-paths, forward
// and backward, on the centre crop and channel prefix of the shared weight.
//
// Layout: input [N, C_in, H, W], contiguous or channels-last (the output and the gradients
// follow the input's layout; channels-last lets oneDNN skip its layout reorders); weight
// [C_out_max, C_in_max (1 if depthwise), K_max, K_max] with any strides; bias [C_out_max] or
// absent; segments a flat list of (batch_start, batch_end, kernel, in_channels, out_channels),
// consecutive and covering the batch (kernels/supernet_conv.py validates them). "Same" padding kernel // 2, so every segment has the
// same output size Ho = (H - 1) / stride + 1. Output channels beyond a segment's out_channels are
// zero.
//
// Each segment is one call of ATen's convolution (oneDNN on the CPU: blocked, vectorised and
// multi-threaded for dense, 1x1 and depthwise layers) on the strided view of its sub-weight. The
// view is made dense first: a copy of a few kilobytes, which the convolution would make
// anyway, while the shared weight itself stays untouched. The backward is ATen's
// convolution_backward per segment; the weight gradient of every segment is added into its crop
// and prefix of one gradient of the full shared shape. With one segment that uses every output
// channel, the convolution's result is returned as it is (no zero padding, no copy).
#include "medtune.h"

#include <array>
#include <vector>

namespace medtune {
namespace {

struct Segment {
  int64_t start, end, kernel, in_channels, out_channels;
};

std::vector<Segment> parse_segments(at::IntArrayRef flat, int64_t N) {
  TORCH_CHECK(flat.size() % 5 == 0 && !flat.empty(),
              "supernet_conv: segments must be a non-empty flat list of 5-tuples");
  std::vector<Segment> out;
  for (size_t i = 0; i < flat.size(); i += 5) {
    out.push_back({flat[i], flat[i + 1], flat[i + 2], flat[i + 3], flat[i + 4]});
  }
  TORCH_CHECK(out.front().start == 0 && out.back().end == N,
              "supernet_conv: segments must cover the batch");
  return out;
}

// The [out, in (1 if depthwise), k, k] crop and prefix of `weight` that `s` uses (a view).
at::Tensor sub_weight(const at::Tensor& weight, const Segment& s, bool depthwise) {
  const int64_t off = (weight.size(2) - s.kernel) / 2;
  auto rows = weight.slice(0, 0, s.out_channels);
  if (!depthwise) rows = rows.slice(1, 0, s.in_channels);
  return rows.slice(2, off, off + s.kernel).slice(3, off, off + s.kernel);
}

// The samples of `s` and the input channels it reads (a view).
at::Tensor sub_input(const at::Tensor& input, const Segment& s, bool depthwise) {
  return input.slice(0, s.start, s.end).slice(1, 0, depthwise ? s.out_channels : s.in_channels);
}

int64_t groups_of(const Segment& s, bool depthwise) { return depthwise ? s.out_channels : 1; }

void check_common(const at::Tensor& input, const at::Tensor& weight, bool depthwise,
                  int64_t stride) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "supernet_conv: float32 or float64 only");
  TORCH_CHECK(input.dim() == 4 && input.device().is_cpu() &&
                  (input.is_contiguous() || input.is_contiguous(at::MemoryFormat::ChannelsLast)),
              "supernet_conv: input must be a contiguous or channels-last CPU tensor [N, C, H, W]");
  TORCH_CHECK(weight.dim() == 4 && weight.scalar_type() == dtype && weight.device().is_cpu(),
              "supernet_conv: weight must be [C_out, C_in, K, K] on the CPU in the input's dtype");
  TORCH_CHECK(!depthwise || weight.size(1) == 1, "supernet_conv: depthwise weight is [C, 1, K, K]");
  TORCH_CHECK(stride >= 1, "supernet_conv: stride must be positive");
}

}  // namespace

at::Tensor supernet_conv_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef segments,
                                 int64_t stride, bool depthwise) {
  check_common(input, weight, depthwise, stride);
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3), Co = weight.size(0);
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  const auto segs = parse_segments(segments, N);
  const auto layout = input.suggest_memory_format();
  at::Tensor out;
  for (const Segment& s : segs) {
    c10::optional<at::Tensor> b;
    if (bias.has_value()) b = bias->slice(0, 0, s.out_channels);
    auto y = at::conv2d(sub_input(input, s, depthwise),
                        sub_weight(weight, s, depthwise).contiguous(layout), b, {stride, stride},
                        {s.kernel / 2, s.kernel / 2}, {1, 1}, groups_of(s, depthwise));
    if (segs.size() == 1 && s.out_channels == Co) return y.contiguous(layout);
    if (!out.defined()) out = at::empty({N, Co, Ho, Wo}, input.options().memory_format(layout));
    auto rows = out.slice(0, s.start, s.end);
    rows.slice(1, 0, s.out_channels).copy_(y);
    rows.slice(1, s.out_channels).zero_();
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> supernet_conv_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef segments, int64_t stride, bool depthwise, bool need_input, bool need_weight,
    bool need_bias) {
  check_common(input, weight, depthwise, stride);
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  const int64_t Co = weight.size(0), Ci = weight.size(1), K = weight.size(2);
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({N, Co, Ho, Wo}) &&
                  grad_out.scalar_type() == input.scalar_type(),
              "supernet_conv: grad_out must be [N, C_out_max, Ho, Wo] in the input's dtype");
  const auto segs = parse_segments(segments, N);
  const auto layout = input.suggest_memory_format();
  at::Tensor grad_input = need_input ? at::zeros_like(input) : input.new_empty({0});
  at::Tensor grad_weight =
      need_weight ? at::zeros({Co, Ci, K, K}, weight.options()) : weight.new_empty({0});
  at::Tensor grad_bias = need_bias ? at::zeros({Co}, weight.options()) : weight.new_empty({0});
  if (!need_input && !need_weight && !need_bias) return {grad_input, grad_weight, grad_bias};
  for (const Segment& s : segs) {
    const auto g =
        grad_out.slice(0, s.start, s.end).slice(1, 0, s.out_channels).contiguous(layout);
    const std::vector<int64_t> bias_sizes = {s.out_channels};
    auto grads = at::convolution_backward(
        g, sub_input(input, s, depthwise), sub_weight(weight, s, depthwise).contiguous(layout),
        at::IntArrayRef(bias_sizes), {stride, stride}, {s.kernel / 2, s.kernel / 2}, {1, 1},
        false, {0, 0}, groups_of(s, depthwise),
        std::array<bool, 3>{need_input, need_weight, need_bias});
    if (need_input) sub_input(grad_input, s, depthwise).copy_(std::get<0>(grads));
    if (need_weight) sub_weight(grad_weight, s, depthwise).add_(std::get<1>(grads));
    if (need_bias) grad_bias.slice(0, 0, s.out_channels).add_(std::get<2>(grads));
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace medtune
