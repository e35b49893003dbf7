// glf_stats: per-sample, per-class true-positive, false-positive and false-negative sums of a
// soft prediction against a soft mask or an integer label map, with an optional fused
// sigmoid/softmax, in one pass; and its backward, in one pass from the per-class weights.
// glf_loss_forward/backward wrap the two passes with the overlap ratio loss of the sums and
// its closed-form derivative, so that a loss step costs two calls instead of a dozen small
// tensor ops around each pass.
//
// Layout: pred [N, C, S] contiguous (S = flattened spatial size); target either dense
// [N, C, S] of pred's dtype, or a label map [N, S] (class c is `label == c`; with C == 1 the
// foreground is `label == 1`).
#include "medtune.h"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace medtune {
namespace {

template <typename scalar_t>
struct DenseTarget {
  const scalar_t* data;
  int64_t C, S;
  const scalar_t* row(int64_t n, int64_t c) const { return data + (n * C + c) * S; }
  static scalar_t at(const scalar_t* row, int64_t s) { return row[s]; }
};

// One class of a label map: the labels of one sample and the class they are compared with.
template <typename label_t>
struct LabelRow {
  const label_t* p;
  int64_t cls;
};

template <typename scalar_t, typename label_t>
struct LabelTarget {
  const label_t* data;
  int64_t C, S;
  using Row = LabelRow<label_t>;
  Row row(int64_t n, int64_t c) const { return {data + n * S, C == 1 ? 1 : c}; }
  static scalar_t at(const Row& row, int64_t s) {
    return static_cast<int64_t>(row.p[s]) == row.cls ? scalar_t(1) : scalar_t(0);
  }
};

constexpr int64_t kBlock = 256;  // voxels per softmax sub-block

template <int64_t ACT, typename scalar_t>
inline scalar_t activate(scalar_t x) {
  if constexpr (ACT == kSigmoid) {
    return sigmoid(x);
  } else {
    return x;
  }
}

// Sums (p*g, p, g) of class c over voxels [begin, end) for an elementwise activation. The
// sums of one chunk are kept in scalar_t so the loop vectorises; chunks are added in double.
template <int64_t ACT, typename scalar_t, typename Target>
void chunk_sums(const scalar_t* x, const Target& target, int64_t n, int64_t C, int64_t S,
                int64_t begin, int64_t end, double* out) {
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* xr = x + (n * C + c) * S;
    const auto tr = target.row(n, c);
    scalar_t spg = 0, sp = 0, sg = 0;
#pragma omp simd reduction(+ : spg, sp, sg)
    for (int64_t s = begin; s < end; ++s) {
      const scalar_t p = activate<ACT>(xr[s]);
      const scalar_t g = Target::at(tr, s);
      spg += p * g;
      sp += p;
      sg += g;
    }
    out[c * 3 + 0] = spg;
    out[c * 3 + 1] = sp;
    out[c * 3 + 2] = sg;
  }
}

// Softmax of one block of `len` voxels over the C channels: prob [C, kBlock] holds p_c of each
// voxel. Every exponential is taken once (then scaled by 1 / sum), so a pass costs C
// exponentials per voxel, not 2C.
template <typename scalar_t>
void softmax_block(const scalar_t* x0, int64_t C, int64_t S, int64_t len, scalar_t* prob) {
  scalar_t mx[kBlock], den[kBlock];
  for (int64_t i = 0; i < len; ++i) mx[i] = x0[i], den[i] = 0;
  for (int64_t c = 1; c < C; ++c) {
    const scalar_t* xr = x0 + c * S;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) mx[i] = xr[i] > mx[i] ? xr[i] : mx[i];
  }
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* xr = x0 + c * S;
    scalar_t* pr = prob + c * kBlock;
#ifdef MEDTUNE_AVX512
    if constexpr (std::is_same_v<scalar_t, float>) {
      for_each16(0, len, [&](int64_t i, __mmask16 m) {
        const __m512 shifted =
            _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + i), _mm512_maskz_loadu_ps(m, mx + i));
        const __m512 e = exp16(shifted);
        _mm512_mask_storeu_ps(pr + i, m, e);
        _mm512_mask_storeu_ps(den + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, den + i), e));
      });
      continue;
    }
#endif
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      pr[i] = exp_approx(xr[i] - mx[i]);
      den[i] += pr[i];
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) den[i] = scalar_t(1) / den[i];
  for (int64_t c = 0; c < C; ++c) {
    scalar_t* pr = prob + c * kBlock;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) pr[i] *= den[i];
  }
}

// Same sums with a softmax over the channels, block by block.
template <typename scalar_t, typename Target>
void chunk_sums_softmax(const scalar_t* x, const Target& target, int64_t n, int64_t C, int64_t S,
                        int64_t begin, int64_t end, double* out) {
  std::fill(out, out + C * 3, 0.0);
  std::vector<scalar_t> prob(C * kBlock);
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t len = std::min(kBlock, end - b0);
    softmax_block(x + n * C * S + b0, C, S, len, prob.data());
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* pr = prob.data() + c * kBlock;
      const auto tr = target.row(n, c);
      scalar_t spg = 0, sp = 0, sg = 0;
#pragma omp simd reduction(+ : spg, sp, sg)
      for (int64_t i = 0; i < len; ++i) {
        const scalar_t p = pr[i];
        const scalar_t g = Target::at(tr, b0 + i);
        spg += p * g;
        sp += p;
        sg += g;
      }
      out[c * 3 + 0] += spg;
      out[c * 3 + 1] += sp;
      out[c * 3 + 2] += sg;
    }
  }
}

#ifdef MEDTUNE_AVX512
// The sigmoid passes on float predictions, 16 voxels per step (see sigmoid16).

// Target values of voxels [s, s + 16) as floats; lanes outside `m` are 0.
inline __m512 target16(const float* row, int64_t s, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, row + s);
}

template <typename label_t>
inline __m512 target16(const LabelRow<label_t>& row, int64_t s, __mmask16 m) {
  const label_t* p = row.p + s;
  __mmask16 hit;
  if constexpr (sizeof(label_t) == 1) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p));
    hit = _mm512_mask_cmpeq_epi32_mask(m, v, _mm512_set1_epi32(static_cast<int32_t>(row.cls)));
  } else if constexpr (sizeof(label_t) == 4) {
    const __m512i v = _mm512_maskz_loadu_epi32(m, p);
    hit = _mm512_mask_cmpeq_epi32_mask(m, v, _mm512_set1_epi32(static_cast<int32_t>(row.cls)));
  } else {
    const __m512i cls = _mm512_set1_epi64(row.cls);
    const __mmask8 lo = __mmask8(m), hi = __mmask8(m >> 8);
    const __mmask8 lo_hit = _mm512_mask_cmpeq_epi64_mask(lo, _mm512_maskz_loadu_epi64(lo, p), cls);
    const __mmask8 hi_hit = _mm512_mask_cmpeq_epi64_mask(hi, _mm512_maskz_loadu_epi64(hi, p + 8), cls);
    hit = __mmask16(lo_hit | (unsigned(hi_hit) << 8));
  }
  return _mm512_maskz_mov_ps(hit, _mm512_set1_ps(1.0f));
}

template <typename Target>
void chunk_sums_sigmoid16(const float* x, const Target& target, int64_t n, int64_t C, int64_t S,
                          int64_t begin, int64_t end, double* out) {
  for (int64_t c = 0; c < C; ++c) {
    const float* xr = x + (n * C + c) * S;
    const auto tr = target.row(n, c);
    __m512 spg = _mm512_setzero_ps(), sp = spg, sg = spg;
    auto add = [&](int64_t s, __mmask16 m) {
      const __m512 p = _mm512_maskz_mov_ps(m, sigmoid16(_mm512_maskz_loadu_ps(m, xr + s)));
      const __m512 g = target16(tr, s, m);
      spg = _mm512_fmadd_ps(p, g, spg);
      sp = _mm512_add_ps(sp, p);
      sg = _mm512_add_ps(sg, g);
    };
    for_each16(begin, end, add);
    out[c * 3 + 0] = _mm512_reduce_add_ps(spg);
    out[c * 3 + 1] = _mm512_reduce_add_ps(sp);
    out[c * 3 + 2] = _mm512_reduce_add_ps(sg);
  }
}

template <typename Target>
void chunk_grad_sigmoid16(const float* x, const Target& target, int64_t n, int64_t C, int64_t S,
                          int64_t begin, int64_t end, const float* a, const float* b, float* grad) {
  for (int64_t c = 0; c < C; ++c) {
    const float* xr = x + (n * C + c) * S;
    float* gr = grad + (n * C + c) * S;
    const auto tr = target.row(n, c);
    const __m512 ac = _mm512_set1_ps(a[n * C + c]), bc = _mm512_set1_ps(b[n * C + c]);
    auto write = [&](int64_t s, __mmask16 m) {
      const __m512 p = sigmoid16(_mm512_maskz_loadu_ps(m, xr + s));
      const __m512 dp = _mm512_fmadd_ps(bc, target16(tr, s, m), ac);
      _mm512_mask_storeu_ps(gr + s, m, _mm512_mul_ps(dp, _mm512_fnmadd_ps(p, p, p)));  // dp p (1 - p)
    };
    for_each16(begin, end, write);
  }
}
#endif

// partial: [N, chunks, C, 3] sums of (p*g, p, g), one slot per (sample, chunk).
template <int64_t ACT, typename scalar_t, typename Target>
void forward_kernel(const scalar_t* x, const Target& target, int64_t N, int64_t C, int64_t S,
                    double* partial) {
  for_each_chunk(N, S, [&](int64_t n, int64_t k, int64_t begin, int64_t end) {
    double* out = partial + ((n * num_chunks(S) + k) * C) * 3;
    if constexpr (ACT == kSoftmax) {
      chunk_sums_softmax(x, target, n, C, S, begin, end, out);
#ifdef MEDTUNE_AVX512
    } else if constexpr (ACT == kSigmoid && std::is_same_v<scalar_t, float>) {
      chunk_sums_sigmoid16(x, target, n, C, S, begin, end, out);
#endif
    } else {
      chunk_sums<ACT>(x, target, n, C, S, begin, end, out);
    }
  });
}

// grad = dL/dx for dL/dp = a + b * g, through an elementwise activation.
template <int64_t ACT, typename scalar_t, typename Target>
void chunk_grad(const scalar_t* x, const Target& target, int64_t n, int64_t C, int64_t S,
                int64_t begin, int64_t end, const scalar_t* a, const scalar_t* b, scalar_t* grad) {
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* xr = x + (n * C + c) * S;
    scalar_t* gr = grad + (n * C + c) * S;
    const auto tr = target.row(n, c);
    const scalar_t ac = a[n * C + c], bc = b[n * C + c];
#pragma omp simd
    for (int64_t s = begin; s < end; ++s) {
      const scalar_t dp = ac + bc * Target::at(tr, s);
      if constexpr (ACT == kSigmoid) {
        const scalar_t p = sigmoid(xr[s]);
        gr[s] = dp * p * (scalar_t(1) - p);
      } else {
        gr[s] = dp;
      }
    }
  }
}

// Softmax backward: grad_c = p_c * (dL/dp_c - sum_k p_k dL/dp_k), block by block.
template <typename scalar_t, typename Target>
void chunk_grad_softmax(const scalar_t* x, const Target& target, int64_t n, int64_t C, int64_t S,
                        int64_t begin, int64_t end, const scalar_t* a, const scalar_t* b,
                        scalar_t* grad) {
  std::vector<scalar_t> prob(C * kBlock);
  scalar_t dot[kBlock];
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t len = std::min(kBlock, end - b0);
    scalar_t* g0 = grad + n * C * S + b0;
    softmax_block(x + n * C * S + b0, C, S, len, prob.data());
    for (int64_t i = 0; i < len; ++i) dot[i] = 0;
    for (int64_t c = 0; c < C; ++c) {  // store p_c * dL/dp_c, accumulate the dot product
      const scalar_t* pr = prob.data() + c * kBlock;
      scalar_t* gr = g0 + c * S;
      const auto tr = target.row(n, c);
      const scalar_t ac = a[n * C + c], bc = b[n * C + c];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const scalar_t pd = pr[i] * (ac + bc * Target::at(tr, b0 + i));
        gr[i] = pd;
        dot[i] += pd;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* pr = prob.data() + c * kBlock;
      scalar_t* gr = g0 + c * S;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) gr[i] -= pr[i] * dot[i];
    }
  }
}

template <int64_t ACT, typename scalar_t, typename Target>
void backward_kernel(const scalar_t* x, const Target& target, int64_t N, int64_t C, int64_t S,
                     const scalar_t* a, const scalar_t* b, scalar_t* grad) {
  for_each_chunk(N, S, [&](int64_t n, int64_t k, int64_t begin, int64_t end) {
    if constexpr (ACT == kSoftmax) {
      chunk_grad_softmax(x, target, n, C, S, begin, end, a, b, grad);
#ifdef MEDTUNE_AVX512
    } else if constexpr (ACT == kSigmoid && std::is_same_v<scalar_t, float>) {
      chunk_grad_sigmoid16(x, target, n, C, S, begin, end, a, b, grad);
#endif
    } else {
      chunk_grad<ACT>(x, target, n, C, S, begin, end, a, b, grad);
    }
  });
}

template <typename label_t>
int64_t count_invalid_labels(const label_t* labels, int64_t numel, int64_t num_labels) {
  return at::parallel_reduce(
      0, numel, kParallelGrain, int64_t(0),
      [&](int64_t begin, int64_t end, int64_t invalid) {
        // one unsigned comparison catches negative labels too; a plain pointer and a count
        // keep GCC from turning the loads into gathers (which made this pass cost more than
        // the whole forward pass of a label map)
        const label_t* p = labels + begin;
        const uint64_t limit = static_cast<uint64_t>(num_labels);
#pragma omp simd reduction(+ : invalid)
        for (int64_t i = 0; i < end - begin; ++i) {
          invalid += static_cast<uint64_t>(static_cast<int64_t>(p[i])) >= limit;
        }
        return invalid;
      },
      std::plus<int64_t>());
}

void check_inputs(const at::Tensor& pred, const at::Tensor& target, bool labels) {
  TORCH_CHECK(pred.dim() == 3 && pred.is_contiguous(), "glf_stats: pred must be contiguous [N, C, S]");
  TORCH_CHECK(pred.device().is_cpu() && target.device().is_cpu(), "glf_stats: CPU tensors only");
  TORCH_CHECK(pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble,
              "glf_stats: pred must be float32 or float64");
  TORCH_CHECK(target.is_contiguous(), "glf_stats: target must be contiguous");
  if (labels) {
    TORCH_CHECK(target.dim() == 2 && target.size(0) == pred.size(0) && target.size(1) == pred.size(2),
                "glf_stats: label map must be [N, S]");
  } else {
    TORCH_CHECK(target.sizes() == pred.sizes() && target.scalar_type() == pred.scalar_type(),
                "glf_stats: dense target must match pred in shape and dtype");
  }
}

// Calls fn(x, target_accessor) with the typed pointers for pred's dtype and target's kind.
template <typename Fn>
void dispatch(const at::Tensor& pred, const at::Tensor& target, bool labels, Fn&& fn) {
  const int64_t C = pred.size(1), S = pred.size(2);
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "glf_stats", [&] {
    const scalar_t* x = pred.data_ptr<scalar_t>();
    if (labels) {
      MEDTUNE_DISPATCH_LABELS(target.scalar_type(), "glf_stats", [&] {
        fn(x, LabelTarget<scalar_t, label_t>{target.data_ptr<label_t>(), C, S});
      });
    } else {
      fn(x, DenseTarget<scalar_t>{target.data_ptr<scalar_t>(), C, S});
    }
  });
}

}  // namespace

// Returns (stats [N, C, 3] float64 holding tp, fp, fn; number of out-of-range labels).
std::tuple<at::Tensor, int64_t> glf_stats_forward(const at::Tensor& pred, const at::Tensor& target,
                                                  bool labels, int64_t activation) {
  check_inputs(pred, target, labels);
  const int64_t N = pred.size(0), C = pred.size(1), S = pred.size(2);
  int64_t invalid = 0;
  if (labels) {
    MEDTUNE_DISPATCH_LABELS(target.scalar_type(), "glf_stats", [&] {
      invalid = count_invalid_labels(target.data_ptr<label_t>(), target.numel(), std::max<int64_t>(C, 2));
    });
    if (invalid > 0) return {at::empty({0}, pred.options().dtype(at::kDouble)), invalid};
  }
  const int64_t chunks = num_chunks(S);
  auto partial = at::zeros({N, chunks, C, 3}, pred.options().dtype(at::kDouble));
  dispatch(pred, target, labels, [&](auto x, const auto& tgt) {
    double* out = partial.data_ptr<double>();
    switch (activation) {
      case kSigmoid: return forward_kernel<kSigmoid>(x, tgt, N, C, S, out);
      case kSoftmax: return forward_kernel<kSoftmax>(x, tgt, N, C, S, out);
      default: return forward_kernel<kNone>(x, tgt, N, C, S, out);
    }
  });
  auto sums = partial.sum(1);  // [N, C, 3]: sum p*g, sum p, sum g
  auto tp = sums.select(2, 0);
  auto stats = at::stack({tp, sums.select(2, 1) - tp, sums.select(2, 2) - tp}, 2);
  return {stats, 0};
}

at::Tensor glf_stats_backward(const at::Tensor& pred, const at::Tensor& target, bool labels,
                              int64_t activation, const at::Tensor& coef_a, const at::Tensor& coef_b) {
  check_inputs(pred, target, labels);
  const int64_t N = pred.size(0), C = pred.size(1), S = pred.size(2);
  auto a = coef_a.to(pred.scalar_type()).contiguous();
  auto b = coef_b.to(pred.scalar_type()).contiguous();
  TORCH_CHECK(a.numel() == N * C && b.numel() == N * C, "glf_stats: coefficients must be [N, C]");
  auto grad = at::empty_like(pred);
  dispatch(pred, target, labels, [&](auto x, const auto& tgt) {
    using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    switch (activation) {
      case kSigmoid: return backward_kernel<kSigmoid>(x, tgt, N, C, S, pa, pb, out);
      case kSoftmax: return backward_kernel<kSoftmax>(x, tgt, N, C, S, pa, pb, out);
      default: return backward_kernel<kNone>(x, tgt, N, C, S, pa, pb, out);
    }
  });
  return grad;
}

// ---- the overlap ratio loss 1 - (w TP + s_nr) / (w TP + a FP + b FN + s_dr) of the sums ----

namespace {

struct RatioLoss {
  double w, a, b, smooth_nr, smooth_dr;

  RatioLoss(const at::Tensor& weights, double nr, double dr) : smooth_nr(nr), smooth_dr(dr) {
    TORCH_CHECK(weights.numel() == 3, "glf_loss: weights must hold (w, a, b)");
    auto v = weights.to(at::kCPU, at::kDouble).contiguous();
    const double* p = v.data_ptr<double>();
    w = p[0], a = p[1], b = p[2];
  }
};

// The sums [rows, C, 3] the loss is taken of: per sample, or added over the batch (rows = 1).
std::vector<double> loss_sums(const at::Tensor& stats, bool batch) {
  auto s = stats.to(at::kDouble).contiguous();
  const double* p = s.data_ptr<double>();
  const int64_t N = s.size(0), row = s.size(1) * 3;
  if (!batch) return std::vector<double>(p, p + N * row);
  std::vector<double> out(row, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < row; ++i) out[i] += p[n * row + i];
  return out;
}

}  // namespace

// Returns (loss [N, C], or [C] with batch; stats [N, C, 3]; number of out-of-range labels),
// both tensors of pred's dtype.
std::tuple<at::Tensor, at::Tensor, int64_t> glf_loss_forward(
    const at::Tensor& pred, const at::Tensor& target, bool labels, int64_t activation,
    const at::Tensor& weights, double smooth_nr, double smooth_dr, bool batch) {
  auto [stats, invalid] = glf_stats_forward(pred, target, labels, activation);
  if (invalid > 0) return {stats, stats, invalid};
  const RatioLoss f(weights, smooth_nr, smooth_dr);
  const int64_t N = pred.size(0), C = pred.size(1);
  const std::vector<double> sums = loss_sums(stats, batch);
  auto loss = batch ? at::empty({C}, stats.options()) : at::empty({N, C}, stats.options());
  double* out = loss.data_ptr<double>();
  for (int64_t i = 0; i < loss.numel(); ++i) {
    const double tp = sums[i * 3], fp = sums[i * 3 + 1], fn = sums[i * 3 + 2];
    out[i] = 1.0 - (f.w * tp + f.smooth_nr) / (f.w * tp + f.a * fp + f.b * fn + f.smooth_dr);
  }
  return {loss.to(pred.scalar_type()), stats.to(pred.scalar_type()), 0};
}

// d loss / d pred for the upstream gradients of the loss and of the sums, in one pass.
at::Tensor glf_loss_backward(const at::Tensor& pred, const at::Tensor& target, bool labels,
                             int64_t activation, const at::Tensor& weights, const at::Tensor& stats,
                             const at::Tensor& grad_loss, const at::Tensor& grad_stats,
                             double smooth_nr, double smooth_dr, bool batch) {
  const RatioLoss f(weights, smooth_nr, smooth_dr);
  const int64_t N = pred.size(0), C = pred.size(1);
  TORCH_CHECK(stats.numel() == N * C * 3 && grad_stats.numel() == N * C * 3,
              "glf_loss: the sums and their gradient must be [N, C, 3]");
  TORCH_CHECK(grad_loss.numel() == (batch ? C : N * C), "glf_loss: the loss gradient has the wrong size");
  const std::vector<double> sums = loss_sums(stats, batch);
  auto upstream = grad_loss.to(at::kDouble).contiguous();
  auto upstream_sums = grad_stats.to(at::kDouble).contiguous();
  const double* gl = upstream.data_ptr<double>();
  const double* gs = upstream_sums.data_ptr<double>();
  // dL/d(TP, FP, FN) of each loss entry, with U = w TP + s_nr and D = w TP + a FP + b FN + s_dr
  std::vector<double> d(sums.size());
  for (size_t i = 0; i < sums.size() / 3; ++i) {
    const double tp = sums[i * 3], fp = sums[i * 3 + 1], fn = sums[i * 3 + 2];
    const double numerator = f.w * tp + f.smooth_nr;
    const double denominator = f.w * tp + f.a * fp + f.b * fn + f.smooth_dr;
    const double scale = gl[i] / (denominator * denominator);
    d[i * 3] = -f.w * (denominator - numerator) * scale;
    d[i * 3 + 1] = numerator * f.a * scale;
    d[i * 3 + 2] = numerator * f.b * scale;
  }
  // d/dp of (tp, fp, fn) = (g, 1 - g, -g): dL/dp = g_fp + (g_tp - g_fp - g_fn) * g
  auto coef_a = at::empty({N, C}, upstream.options());
  auto coef_b = at::empty({N, C}, upstream.options());
  double* ca = coef_a.data_ptr<double>();
  double* cb = coef_b.data_ptr<double>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      const double* dl = d.data() + ((batch ? 0 : n) * C + c) * 3;
      const double* us = gs + (n * C + c) * 3;
      const double g_tp = us[0] + dl[0], g_fp = us[1] + dl[1], g_fn = us[2] + dl[2];
      ca[n * C + c] = g_fp;
      cb[n * C + c] = g_tp - g_fp - g_fn;
    }
  }
  return glf_stats_backward(pred, target, labels, activation, coef_a, coef_b);
}

}  // namespace medtune
