// supernet_conv: one convolution of a weight-shared super-net for per-sample sub-paths, forward
// and backward, reading the centre crop and channel prefix of the shared weight in place.
//
// Layout: input [N, C_in, H, W] contiguous; weight [C_out_max, C_in_max (1 if depthwise),
// K_max, K_max] with any strides (the crop and prefix are addressed through the strides, never
// copied); bias [C_out_max] or absent; segments a flat list of (batch_start, batch_end, kernel,
// in_channels, out_channels), consecutive and covering the batch (kernels/supernet_conv.py
// validates them). "Same" padding kernel // 2, so every segment has the same output size
// Ho = (H - 1) / stride + 1. Output channels beyond a segment's out_channels are zero.
//
// 1x1 dense sub-paths at stride 1 (the expand and project layers of inverted-residual blocks)
// are matrix products per sample, run by ATen's GEMM on the strided [out, in] view of the
// weight's centre tap. Every other sub-path is a direct convolution: forward and grad_input run
// one (sample, channel) plane per work item, whose inner loop runs along a row with the valid
// range of output columns precomputed. grad_weight runs one
// (out channel, in channel) filter per work item, summed over every segment that uses it, so
// no two threads write the same entry; grad_bias one output channel per item.
#include "medtune.h"

#include <algorithm>
#include <vector>

namespace medtune {
namespace {

struct Segment {
  int64_t start, end, kernel, in_channels, out_channels;
  bool gemm;  // a 1x1 dense sub-path at stride 1: run as a matrix product (see gemm_forward)
};

std::vector<Segment> parse_segments(at::IntArrayRef flat, int64_t N, bool depthwise = true,
                                    int64_t stride = 1) {
  TORCH_CHECK(flat.size() % 5 == 0 && !flat.empty(),
              "supernet_conv: segments must be a non-empty flat list of 5-tuples");
  std::vector<Segment> out;
  for (size_t i = 0; i < flat.size(); i += 5) {
    out.push_back({flat[i], flat[i + 1], flat[i + 2], flat[i + 3], flat[i + 4], false});
  }
  TORCH_CHECK(out.front().start == 0 && out.back().end == N,
              "supernet_conv: segments must cover the batch");
  for (Segment& s : out) s.gemm = !depthwise && stride == 1 && s.kernel == 1;
  return out;
}

// For kernel tap kx (0-based in the crop), the output columns whose input column
// ox * stride + kx - pad lies in [0, W): [lo, hi).
inline void valid_range(int64_t tap, int64_t pad, int64_t stride, int64_t size, int64_t out_size,
                        int64_t& lo, int64_t& hi) {
  const int64_t shift = tap - pad;  // input = o * stride + shift
  lo = shift >= 0 ? 0 : (-shift + stride - 1) / stride;
  const int64_t last = size - 1 - shift;  // o * stride <= last
  hi = last < 0 ? 0 : std::min(out_size, last / stride + 1);
  if (hi < lo) hi = lo;
}

template <typename T>
void forward_kernel(const T* in, const T* w, const T* bias, T* out, const std::vector<Segment>& segs,
                    const std::vector<int64_t>& seg_of, int64_t N, int64_t C_in, int64_t H,
                    int64_t W, int64_t Co, int64_t Ho, int64_t Wo, int64_t K, int64_t stride,
                    bool depthwise, const int64_t* ws) {
  const int64_t plane = Ho * Wo;
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, plane * 9));
  at::parallel_for(0, N * Co, grain, [&](int64_t lo_item, int64_t hi_item) {
    for (int64_t item = lo_item; item < hi_item; ++item) {
      const int64_t n = item / Co, oc = item % Co;
      const Segment& s = segs[seg_of[n]];
      if (s.gemm) continue;
      T* o = out + item * plane;
      if (oc >= s.out_channels) {
        std::fill(o, o + plane, T(0));
        continue;
      }
      std::fill(o, o + plane, bias ? bias[oc * ws[4]] : T(0));
      const int64_t k = s.kernel, pad = k / 2, off = (K - k) / 2;
      const int64_t ic_lo = depthwise ? oc : 0, ic_hi = depthwise ? oc + 1 : s.in_channels;
      for (int64_t ic = ic_lo; ic < ic_hi; ++ic) {
        const T* x = in + (n * C_in + ic) * H * W;
        const T* f = w + oc * ws[0] + (depthwise ? 0 : ic * ws[1]);
        for (int64_t ky = 0; ky < k; ++ky) {
          int64_t oy_lo, oy_hi;
          valid_range(ky, pad, stride, H, Ho, oy_lo, oy_hi);
          for (int64_t kx = 0; kx < k; ++kx) {
            const T wv = f[(off + ky) * ws[2] + (off + kx) * ws[3]];
            int64_t ox_lo, ox_hi;
            valid_range(kx, pad, stride, W, Wo, ox_lo, ox_hi);
            for (int64_t oy = oy_lo; oy < oy_hi; ++oy) {
              const T* xr = x + (oy * stride + ky - pad) * W + kx - pad;
              T* orow = o + oy * Wo;
              if (stride == 1) {
#pragma omp simd
                for (int64_t ox = ox_lo; ox < ox_hi; ++ox) orow[ox] += wv * xr[ox];
              } else {
                for (int64_t ox = ox_lo; ox < ox_hi; ++ox) orow[ox] += wv * xr[ox * stride];
              }
            }
          }
        }
      }
    }
  });
}

template <typename T>
void grad_input_kernel(const T* gout, const T* w, T* gin, const std::vector<Segment>& segs,
                       const std::vector<int64_t>& seg_of, int64_t N, int64_t C_in, int64_t H,
                       int64_t W, int64_t Co, int64_t Ho, int64_t Wo, int64_t K, int64_t stride,
                       bool depthwise, const int64_t* ws) {
  const int64_t plane = H * W;
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, plane * 9));
  at::parallel_for(0, N * C_in, grain, [&](int64_t lo_item, int64_t hi_item) {
    for (int64_t item = lo_item; item < hi_item; ++item) {
      const int64_t n = item / C_in, ic = item % C_in;
      const Segment& s = segs[seg_of[n]];
      if (s.gemm) continue;
      T* gi = gin + item * plane;
      std::fill(gi, gi + plane, T(0));
      const int64_t used = depthwise ? s.out_channels : s.in_channels;
      if (ic >= used) continue;
      const int64_t k = s.kernel, pad = k / 2, off = (K - k) / 2;
      const int64_t oc_lo = depthwise ? ic : 0, oc_hi = depthwise ? ic + 1 : s.out_channels;
      for (int64_t oc = oc_lo; oc < oc_hi; ++oc) {
        const T* g = gout + (n * Co + oc) * Ho * Wo;
        const T* f = w + oc * ws[0] + (depthwise ? 0 : ic * ws[1]);
        for (int64_t ky = 0; ky < k; ++ky) {
          int64_t oy_lo, oy_hi;
          valid_range(ky, pad, stride, H, Ho, oy_lo, oy_hi);
          for (int64_t kx = 0; kx < k; ++kx) {
            const T wv = f[(off + ky) * ws[2] + (off + kx) * ws[3]];
            int64_t ox_lo, ox_hi;
            valid_range(kx, pad, stride, W, Wo, ox_lo, ox_hi);
            for (int64_t oy = oy_lo; oy < oy_hi; ++oy) {
              T* xr = gi + (oy * stride + ky - pad) * W + kx - pad;
              const T* grow = g + oy * Wo;
              if (stride == 1) {
#pragma omp simd
                for (int64_t ox = ox_lo; ox < ox_hi; ++ox) xr[ox] += wv * grow[ox];
              } else {
                for (int64_t ox = ox_lo; ox < ox_hi; ++ox) xr[ox * stride] += wv * grow[ox];
              }
            }
          }
        }
      }
    }
  });
}

// grad_weight [Co, Ci, K, K] (contiguous, zero-initialised) and grad_bias [Co] (or null).
template <typename T>
void grad_weight_kernel(const T* gout, const T* in, T* gw, T* gb, const std::vector<Segment>& segs,
                        int64_t C_in, int64_t H, int64_t W, int64_t Co, int64_t Ci, int64_t Ho,
                        int64_t Wo, int64_t K, int64_t stride, bool depthwise) {
  const int64_t filters = Co * Ci;
  at::parallel_for(0, filters, 1, [&](int64_t lo_item, int64_t hi_item) {
    for (int64_t item = lo_item; item < hi_item; ++item) {
      const int64_t oc = item / Ci, wic = item % Ci;
      const int64_t ic = depthwise ? oc : wic;
      T* f = gw + item * K * K;
      for (const Segment& s : segs) {
        if (s.gemm || oc >= s.out_channels || (!depthwise && ic >= s.in_channels)) continue;
        const int64_t k = s.kernel, pad = k / 2, off = (K - k) / 2;
        for (int64_t n = s.start; n < s.end; ++n) {
          const T* g = gout + (n * Co + oc) * Ho * Wo;
          const T* x = in + (n * C_in + ic) * H * W;
          if (gb && wic == 0) {
            T total = T(0);
#pragma omp simd reduction(+ : total)
            for (int64_t i = 0; i < Ho * Wo; ++i) total += g[i];
            gb[oc] += total;
          }
          for (int64_t ky = 0; ky < k; ++ky) {
            int64_t oy_lo, oy_hi;
            valid_range(ky, pad, stride, H, Ho, oy_lo, oy_hi);
            for (int64_t kx = 0; kx < k; ++kx) {
              int64_t ox_lo, ox_hi;
              valid_range(kx, pad, stride, W, Wo, ox_lo, ox_hi);
              T total = T(0);
              for (int64_t oy = oy_lo; oy < oy_hi; ++oy) {
                const T* xr = x + (oy * stride + ky - pad) * W + kx - pad;
                const T* grow = g + oy * Wo;
                if (stride == 1) {
#pragma omp simd reduction(+ : total)
                  for (int64_t ox = ox_lo; ox < ox_hi; ++ox) total += grow[ox] * xr[ox];
                } else {
                  for (int64_t ox = ox_lo; ox < ox_hi; ++ox) total += grow[ox] * xr[ox * stride];
                }
              }
              f[(off + ky) * K + off + kx] += total;
            }
          }
        }
      }
    }
  });
}

// The [out_channels, in_channels] centre tap of a 1x1 sub-path: a strided view, no copy.
at::Tensor centre_tap(const at::Tensor& weight, const Segment& s) {
  const int64_t off = weight.size(2) / 2;
  return weight.select(3, off).select(2, off).slice(0, 0, s.out_channels).slice(1, 0,
                                                                                s.in_channels);
}

// Sample n's first `channels` planes as a [channels, pixels] matrix (a view of a contiguous
// tensor).
at::Tensor planes(const at::Tensor& t, int64_t n, int64_t channels) {
  return t.select(0, n).slice(0, 0, channels).flatten(1);
}

// 1x1 dense sub-paths at stride 1 are matrix products over the pixels of each sample, written
// straight into the output (no copied weight, input or output).
void gemm_forward(const at::Tensor& input, const at::Tensor& weight,
                  const c10::optional<at::Tensor>& bias, const Segment& s, at::Tensor& out) {
  const auto tap = centre_tap(weight, s);
  for (int64_t n = s.start; n < s.end; ++n) {
    auto target = planes(out, n, s.out_channels);
    if (bias.has_value()) {
      target.copy_(bias->slice(0, 0, s.out_channels).unsqueeze(1).expand_as(target));
      target.addmm_(tap, planes(input, n, s.in_channels));
    } else {
      at::mm_out(target, tap, planes(input, n, s.in_channels));
    }
    out.select(0, n).slice(0, s.out_channels).zero_();
  }
}

void gemm_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                   const Segment& s, at::Tensor& grad_input, at::Tensor& grad_weight,
                   at::Tensor& grad_bias) {
  const auto tap = centre_tap(weight, s);
  for (int64_t n = s.start; n < s.end; ++n) {
    const auto g = planes(grad_out, n, s.out_channels);
    if (grad_input.numel()) {
      auto target = planes(grad_input, n, s.in_channels);
      at::mm_out(target, tap.t(), g);
      grad_input.select(0, n).slice(0, s.in_channels).zero_();
    }
    if (grad_weight.numel()) {
      auto gw = centre_tap(grad_weight, s);
      gw.addmm_(g, planes(input, n, s.in_channels).t());
    }
    if (grad_bias.numel()) grad_bias.slice(0, 0, s.out_channels).add_(g.sum(1));
  }
}

void check_common(const at::Tensor& input, const at::Tensor& weight, bool depthwise,
                  int64_t stride) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "supernet_conv: float32 or float64 only");
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous() && input.device().is_cpu(),
              "supernet_conv: input must be a contiguous CPU tensor [N, C, H, W]");
  TORCH_CHECK(weight.dim() == 4 && weight.scalar_type() == dtype && weight.device().is_cpu(),
              "supernet_conv: weight must be [C_out, C_in, K, K] on the CPU in the input's dtype");
  TORCH_CHECK(!depthwise || weight.size(1) == 1, "supernet_conv: depthwise weight is [C, 1, K, K]");
  TORCH_CHECK(stride >= 1, "supernet_conv: stride must be positive");
}

std::vector<int64_t> sample_segments(const std::vector<Segment>& segs, int64_t N) {
  std::vector<int64_t> seg_of(N);
  for (size_t i = 0; i < segs.size(); ++i) {
    for (int64_t n = segs[i].start; n < segs[i].end; ++n) seg_of[n] = static_cast<int64_t>(i);
  }
  return seg_of;
}

}  // namespace

at::Tensor supernet_conv_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef segments,
                                 int64_t stride, bool depthwise) {
  check_common(input, weight, depthwise, stride);
  const int64_t N = input.size(0), C_in = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = weight.size(0), K = weight.size(2);
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  const auto segs = parse_segments(segments, N, depthwise, stride);
  const auto seg_of = sample_segments(segs, N);
  auto out = at::empty({N, Co, Ho, Wo}, input.options());
  for (const Segment& s : segs) {
    if (s.gemm) gemm_forward(input, weight, bias, s, out);
  }
  int64_t ws[5] = {weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3), 0};
  if (bias.has_value()) ws[4] = bias->stride(0);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "supernet_conv_forward", [&] {
    forward_kernel<scalar_t>(input.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                             bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr,
                             out.data_ptr<scalar_t>(), segs, seg_of, N, C_in, H, W, Co, Ho, Wo, K,
                             stride, depthwise, ws);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> supernet_conv_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef segments, int64_t stride, bool depthwise, bool need_input, bool need_weight,
    bool need_bias) {
  check_common(input, weight, depthwise, stride);
  const int64_t N = input.size(0), C_in = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = weight.size(0), Ci = weight.size(1), K = weight.size(2);
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({N, Co, Ho, Wo}) && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == input.scalar_type(),
              "supernet_conv: grad_out must be contiguous [N, C_out_max, Ho, Wo]");
  const auto segs = parse_segments(segments, N, depthwise, stride);
  const auto seg_of = sample_segments(segs, N);
  at::Tensor grad_input = need_input ? at::empty_like(input) : input.new_empty({0});
  at::Tensor grad_weight =
      need_weight ? at::zeros({Co, Ci, K, K}, weight.options()) : weight.new_empty({0});
  at::Tensor grad_bias = need_bias ? at::zeros({Co}, weight.options()) : weight.new_empty({0});
  int64_t ws[5] = {weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3), 0};
  for (const Segment& s : segs) {
    if (s.gemm) gemm_backward(grad_out, input, weight, s, grad_input, grad_weight, grad_bias);
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "supernet_conv_backward", [&] {
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    if (need_input) {
      grad_input_kernel<scalar_t>(g, weight.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(),
                                  segs, seg_of, N, C_in, H, W, Co, Ho, Wo, K, stride, depthwise,
                                  ws);
    }
    if (need_weight) {
      grad_weight_kernel<scalar_t>(g, input.data_ptr<scalar_t>(), grad_weight.data_ptr<scalar_t>(),
                                   need_bias ? grad_bias.data_ptr<scalar_t>() : nullptr, segs,
                                   C_in, H, W, Co, Ci, Ho, Wo, K, stride, depthwise);
    } else if (need_bias) {
      scalar_t* gb = grad_bias.data_ptr<scalar_t>();
      for (const Segment& s : segs) {
        if (s.gemm) continue;
        for (int64_t n = s.start; n < s.end; ++n) {
          for (int64_t oc = 0; oc < s.out_channels; ++oc) {
            const scalar_t* p = g + (n * Co + oc) * Ho * Wo;
            scalar_t total = scalar_t(0);
            for (int64_t i = 0; i < Ho * Wo; ++i) total += p[i];
            gb[oc] += total;
          }
        }
      }
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace medtune
