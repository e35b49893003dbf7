// gp_acquisition: posterior mean and latent variance of an exact GP (constant mean, ARD Matérn
// 5/2 or squared-exponential kernel) and EI / PI / UCB for a batch of candidates, in one fused
// pass per block of candidates: kernel row, mean, v = Linv k* and its squared norm, score.
// Each thread holds the kernel rows of one block of kBlock candidates, never the m x n matrix.
//
// Layout: candidates [m, d], train_x [n, d], linv [n, n] (lower triangle read), alpha [n],
// lengthscales [d], all contiguous and of one floating dtype; output [3, m] = mean, variance,
// score.
#include "medtune.h"

#include <vector>

namespace medtune {
namespace {

enum GPKernel : int64_t { kMatern52 = 0, kRBF = 1 };
enum Acquisition : int64_t { kAcqNone = 0, kEI = 1, kPI = 2, kUCB = 3 };

constexpr int64_t kBlock = 16;  // candidates per block: the vector width of the inner loops
constexpr int64_t kRows = 4;    // rows of Linv per pass over a block's kernel rows

// exp for double that GCC vectorises under `omp simd`: Cody-Waite reduction to |r| <= ln2/2
// and a degree-12 Taylor polynomial (relative error below 1e-15); arguments below -708 give
// exp(-708) ~ 3e-308 instead of a subnormal or zero. Only used for x <= 0 here.
inline double exp_poly(double x) {
  const double xc = x < -708.0 ? -708.0 : x;
  const double n = std::nearbyint(xc * 1.4426950408889634);
  const double r = (xc - n * 0.6931471803691238) - n * 1.9082149292705877e-10;
  double p = 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t bits = (static_cast<int64_t>(n) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float exp_poly(float x) { return exp_approx(x); }

struct Params {
  double outputscale, mean_constant, best_f, xi, sqrt_beta, min_variance;
  int64_t acquisition;
  bool maximize;
};

template <typename scalar_t>
scalar_t acquire(scalar_t mean, scalar_t variance, const Params& p) {
  const scalar_t sigma = std::sqrt(variance);
  switch (p.acquisition) {
    case kUCB: return (p.maximize ? mean : -mean) + scalar_t(p.sqrt_beta) * sigma;
    case kEI:
    case kPI: {
      const scalar_t u = p.maximize ? mean - scalar_t(p.best_f) - scalar_t(p.xi)
                                    : scalar_t(p.best_f) - mean - scalar_t(p.xi);
      const scalar_t z = u / sigma;
      const scalar_t cdf = scalar_t(0.5) * std::erfc(-z * scalar_t(0.7071067811865476));
      if (p.acquisition == kPI) return cdf;
      const scalar_t pdf = scalar_t(0.3989422804014327) * std::exp(scalar_t(-0.5) * z * z);
      return sigma * (pdf + z * cdf);
    }
    default: return scalar_t(0);
  }
}

// Scores candidates [c0, c0 + len) (len <= kBlock). `xt` is train_x divided by the
// length-scales; `lt` is Linv's lower triangle padded with zero rows to a multiple of kRows;
// `kt` [n, kBlock] and `xc` [d, kBlock] are this thread's scratch.
template <int64_t KERNEL, typename scalar_t>
void score_block(const scalar_t* cand, const scalar_t* ls, const scalar_t* xt, const scalar_t* lt,
                 const scalar_t* alpha, int64_t c0, int64_t len, int64_t n, int64_t d, int64_t M,
                 const Params& p, scalar_t* kt, scalar_t* xc, scalar_t* out) {
  for (int64_t k = 0; k < d; ++k) {  // scaled candidates, transposed; padding repeats the last
    for (int64_t b = 0; b < kBlock; ++b) {
      xc[k * kBlock + b] = cand[(c0 + std::min(b, len - 1)) * d + k] / ls[k];
    }
  }
  const scalar_t os = scalar_t(p.outputscale);
  scalar_t mean[kBlock], sq[kBlock];
  for (int64_t b = 0; b < kBlock; ++b) mean[b] = scalar_t(0), sq[b] = scalar_t(0);
  for (int64_t j = 0; j < n; ++j) {  // kernel rows and the mean
    scalar_t r2[kBlock] = {};
    for (int64_t k = 0; k < d; ++k) {
      const scalar_t x = xt[j * d + k];
#pragma omp simd
      for (int64_t b = 0; b < kBlock; ++b) {
        const scalar_t diff = xc[k * kBlock + b] - x;
        r2[b] += diff * diff;
      }
    }
    scalar_t* kj = kt + j * kBlock;
    const scalar_t aj = alpha[j];
    scalar_t r[kBlock];
    if constexpr (KERNEL == kMatern52) {
      // its own loop: without -fno-math-errno GCC keeps sqrt scalar, and the next loop vectorises
      for (int64_t b = 0; b < kBlock; ++b) r[b] = std::sqrt(r2[b]);
    }
#pragma omp simd
    for (int64_t b = 0; b < kBlock; ++b) {
      scalar_t kv;
      if constexpr (KERNEL == kRBF) {
        kv = exp_poly(scalar_t(-0.5) * r2[b]);
      } else {
        const scalar_t s5r = scalar_t(2.23606797749979) * r[b];
        kv = (scalar_t(1) + s5r + scalar_t(5.0 / 3.0) * r2[b]) * exp_poly(-s5r);
      }
      kj[b] = os * kv;
      mean[b] += kj[b] * aj;
    }
  }
  for (int64_t i = 0; i < n; i += kRows) {  // v = Linv k*, kRows rows at a time, and ‖v‖²
    scalar_t acc[kRows][kBlock] = {};
    const int64_t jend = std::min(i + kRows, n);  // lower triangle: j <= i + r
    const scalar_t* l0 = lt + i * n;
    for (int64_t j = 0; j < jend; ++j) {
      const scalar_t* kj = kt + j * kBlock;
      const scalar_t w0 = l0[j], w1 = l0[n + j], w2 = l0[2 * n + j], w3 = l0[3 * n + j];
#pragma omp simd
      for (int64_t b = 0; b < kBlock; ++b) {
        acc[0][b] += w0 * kj[b];
        acc[1][b] += w1 * kj[b];
        acc[2][b] += w2 * kj[b];
        acc[3][b] += w3 * kj[b];
      }
    }
    for (int64_t r = 0; r < kRows; ++r) {
#pragma omp simd
      for (int64_t b = 0; b < kBlock; ++b) sq[b] += acc[r][b] * acc[r][b];
    }
  }
  for (int64_t b = 0; b < len; ++b) {
    const scalar_t mu = scalar_t(p.mean_constant) + mean[b];
    const scalar_t var = std::max(os - sq[b], scalar_t(p.min_variance));
    out[c0 + b] = mu;
    out[M + c0 + b] = var;
    out[2 * M + c0 + b] = acquire(mu, var, p);
  }
}

template <int64_t KERNEL, typename scalar_t>
void forward_kernel(const scalar_t* cand, const scalar_t* ls, const scalar_t* xt,
                    const scalar_t* lt, const scalar_t* alpha, int64_t M, int64_t n, int64_t d,
                    const Params& p, scalar_t* out) {
  const int64_t blocks = (M + kBlock - 1) / kBlock;
  // about kParallelGrain multiply-adds per work item, so small problems stay on one thread
  const int64_t work = kBlock * (n * (n / 2 + d + 1) + 1);
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / work);
  at::parallel_for(0, blocks, grain, [&](int64_t lo, int64_t hi) {
    std::vector<scalar_t> kt(std::max<int64_t>(n, 1) * kBlock), xc(d * kBlock);
    for (int64_t blk = lo; blk < hi; ++blk) {
      const int64_t c0 = blk * kBlock;
      score_block<KERNEL>(cand, ls, xt, lt, alpha, c0, std::min(kBlock, M - c0), n, d, M, p,
                          kt.data(), xc.data(), out);
    }
  });
}

}  // namespace

at::Tensor gp_acquisition_forward(const at::Tensor& candidates, const at::Tensor& train_x,
                                  const at::Tensor& linv, const at::Tensor& alpha,
                                  const at::Tensor& lengthscales, double outputscale,
                                  int64_t kernel, double mean_constant, int64_t acquisition,
                                  double best_f, double xi, double sqrt_beta, bool maximize,
                                  double min_variance) {
  TORCH_CHECK(candidates.dim() == 2 && train_x.dim() == 2 && candidates.size(1) == train_x.size(1),
              "gp_acquisition: candidates [m, d] and train_x [n, d] expected");
  const int64_t M = candidates.size(0), d = candidates.size(1), n = train_x.size(0);
  TORCH_CHECK(linv.dim() == 2 && linv.size(0) == n && linv.size(1) == n, "gp_acquisition: linv must be [n, n]");
  TORCH_CHECK(alpha.numel() == n && lengthscales.numel() == d,
              "gp_acquisition: alpha must be [n] and lengthscales [d]");
  for (const auto* t : {&candidates, &train_x, &linv, &alpha, &lengthscales}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == candidates.scalar_type(),
                "gp_acquisition: contiguous CPU tensors of one dtype expected");
  }
  TORCH_CHECK(candidates.scalar_type() == at::kFloat || candidates.scalar_type() == at::kDouble,
              "gp_acquisition: float32 or float64 expected");
  auto out = at::empty({3, M}, candidates.options());
  if (M == 0) return out;
  const int64_t rows = (n + kRows - 1) / kRows * kRows;
  auto lt = at::zeros({rows, n}, linv.options());
  lt.narrow(0, 0, n).copy_(at::tril(linv));
  auto xt = (train_x / lengthscales).contiguous();
  const Params p{outputscale, mean_constant, best_f, xi, sqrt_beta, min_variance, acquisition, maximize};
  AT_DISPATCH_FLOATING_TYPES(candidates.scalar_type(), "gp_acquisition", [&] {
    const scalar_t* args[] = {candidates.data_ptr<scalar_t>(), lengthscales.data_ptr<scalar_t>(),
                              xt.data_ptr<scalar_t>(), lt.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>()};
    scalar_t* o = out.data_ptr<scalar_t>();
    if (kernel == kRBF) {
      forward_kernel<kRBF>(args[0], args[1], args[2], args[3], args[4], M, n, d, p, o);
    } else {
      forward_kernel<kMatern52>(args[0], args[1], args[2], args[3], args[4], M, n, d, p, o);
    }
  });
  return out;
}

}  // namespace medtune
