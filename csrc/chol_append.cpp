// chol_append: extend a lower Cholesky factor L [n, n] (and optionally L^-1) by k new rows
// (Bertrand2019, appendix A):  B = K_kn L^-T,  S = K_kk - B B^T,  L_kk = chol(S),
//   L'  = [[L, 0], [B, L_kk]],   L'^-1 = [[L^-1, 0], [-L_kk^-1 B L^-1, L_kk^-1]].
// The forward substitution is blocked: each block of rows first subtracts the contribution of
// all solved rows (dot products, parallel over the block's rows), then solves its small
// triangle serially. The k x k Cholesky runs in double with jitter escalation; a pivot whose
// square is not above `floor` counts as a failure (duplicate point). B L^-1 is accumulated in
// parallel over column ranges. The factors live in preallocated [m, m] buffers (m >= n + k)
// and are extended in place: only the k new rows and the k new columns are written, so an
// append costs O(n^2 k) reads and O(nk) writes. One dtype (float32 or float64), CPU.
#include "medtune.h"

#include <vector>

namespace medtune {
namespace {

constexpr int64_t kRowBlock = 256;  // rows per block of the forward substitution: fewer barriers
// than smaller blocks, a shorter serial triangle than larger ones (measured best at n = 4,000)
constexpr int64_t kColumnBlock = 256;  // columns per work item of B L^-1

template <typename scalar_t>
inline double dot(const scalar_t* a, const scalar_t* b, int64_t len) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < len; ++i) sum += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return sum;
}

// The dot products of four consecutive rows of L (leading dimension ld) with one vector: four
// memory streams at once keep more loads in flight than one row at a time, and each element
// of the vector is loaded once for four rows.
template <typename scalar_t>
inline void dot4(const scalar_t* rows, int64_t ld, const scalar_t* b, int64_t len, double* sums) {
  const scalar_t *a0 = rows, *a1 = rows + ld, *a2 = rows + 2 * ld, *a3 = rows + 3 * ld;
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t j = 0; j < len; ++j) {
    const double v = static_cast<double>(b[j]);
    s0 += static_cast<double>(a0[j]) * v;
    s1 += static_cast<double>(a1[j]) * v;
    s2 += static_cast<double>(a2[j]) * v;
    s3 += static_cast<double>(a3[j]) * v;
  }
  sums[0] = s0, sums[1] = s1, sums[2] = s2, sums[3] = s3;
}

// Solves L x_r = rhs_r for the k rows of x [k, n] in place (x holds K_kn on entry).
template <typename scalar_t>
void forward_substitution(const scalar_t* L, int64_t ld, scalar_t* x, int64_t n, int64_t k) {
  for (int64_t i0 = 0; i0 < n; i0 += kRowBlock) {
    const int64_t i1 = std::min(n, i0 + kRowBlock);
    if (i0 > 0) {
      const int64_t grain = std::max<int64_t>(1, kParallelGrain / (i0 * k));
      at::parallel_for(i0, i1, grain, [&](int64_t lo, int64_t hi) {
        int64_t i = lo;
        for (; i + 4 <= hi; i += 4)
          for (int64_t r = 0; r < k; ++r) {
            double sums[4];
            dot4(L + i * ld, ld, x + r * n, i0, sums);
            for (int64_t q = 0; q < 4; ++q) x[r * n + i + q] -= sums[q];
          }
        for (; i < hi; ++i)
          for (int64_t r = 0; r < k; ++r) x[r * n + i] -= dot(L + i * ld, x + r * n, i0);
      });
    }
    for (int64_t i = i0; i < i1; ++i) {
      const scalar_t* row = L + i * ld;
      for (int64_t r = 0; r < k; ++r) {
        scalar_t* xr = x + r * n;
        xr[i] = static_cast<scalar_t>((xr[i] - dot(row + i0, xr + i0, i - i0)) / row[i]);
      }
    }
  }
}

// In-place lower Cholesky of the k x k matrix a (row-major, double); false if a pivot^2 is not
// above floor or not finite.
bool small_cholesky(std::vector<double>& a, int64_t k, double floor) {
  for (int64_t j = 0; j < k; ++j) {
    double d = a[j * k + j];
    for (int64_t p = 0; p < j; ++p) d -= a[j * k + p] * a[j * k + p];
    if (!(d > floor) || !std::isfinite(d)) return false;
    const double pivot = std::sqrt(d);
    a[j * k + j] = pivot;
    for (int64_t i = j + 1; i < k; ++i) {
      double s = a[i * k + j];
      for (int64_t p = 0; p < j; ++p) s -= a[i * k + p] * a[j * k + p];
      a[i * k + j] = s / pivot;
    }
    for (int64_t i = 0; i < j; ++i) a[i * k + j] = 0;  // clear the upper triangle
  }
  return true;
}

// Inverse of a lower-triangular k x k matrix (double), by forward substitution on I.
std::vector<double> small_lower_inverse(const std::vector<double>& l, int64_t k) {
  std::vector<double> inv(k * k, 0.0);
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t i = c; i < k; ++i) {
      double s = (i == c) ? 1.0 : 0.0;
      for (int64_t p = c; p < i; ++p) s -= l[i * k + p] * inv[p * k + c];
      inv[i * k + c] = s / l[i * k + i];
    }
  }
  return inv;
}

// In a buffer [m, m] (m >= n + k) whose top-left n x n block holds the old factor: zero the
// columns n .. n+k-1 of rows 0 .. n-1, then write rows n .. n+k-1 = [bottom_left, bottom_right].
template <typename scalar_t>
void write_new_rows(scalar_t* buffer, int64_t m, const scalar_t* bottom_left,
                    const std::vector<double>& bottom_right, int64_t n, int64_t k) {
  for (int64_t i = 0; i < n; ++i) std::fill(buffer + i * m + n, buffer + i * m + n + k, scalar_t(0));
  for (int64_t r = 0; r < k; ++r) {
    scalar_t* row = buffer + (n + r) * m;
    std::memcpy(row, bottom_left + r * n, n * sizeof(scalar_t));
    for (int64_t c = 0; c < k; ++c) row[n + c] = static_cast<scalar_t>(bottom_right[r * k + c]);
  }
}

// M [k, n] = B L^-1: M[r, j] = sum_{i >= j} B[r, i] Linv[i, j], parallel over column ranges;
// below a range's triangle, four rows of L^-1 are added at once (one pass over M for four).
template <typename scalar_t>
void times_lower(const scalar_t* B, const scalar_t* Linv, int64_t ld, int64_t n, int64_t k,
                 double* M) {
  const int64_t blocks = (n + kColumnBlock - 1) / kColumnBlock;
  // a block costs up to n * kColumnBlock * k multiply-adds; small problems stay on this thread
  const int64_t grain = std::max<int64_t>(1, 8 * kParallelGrain / std::max<int64_t>(1, n * kColumnBlock * k));
  at::parallel_for(0, blocks, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t blk = lo; blk < hi; ++blk) {
      const int64_t j0 = blk * kColumnBlock, j1 = std::min(n, j0 + kColumnBlock);
      const auto add_row = [&](int64_t i, int64_t end) {  // columns j0 .. end-1 of row i
        const scalar_t* row = Linv + i * ld;
        for (int64_t r = 0; r < k; ++r) {
          const double b = static_cast<double>(B[r * n + i]);
          double* mr = M + r * n;
#pragma omp simd
          for (int64_t j = j0; j < end; ++j) mr[j] += b * static_cast<double>(row[j]);
        }
      };
      int64_t i = j0;
      for (; i < j1; ++i) add_row(i, i + 1);  // the block's triangle: row i ends at column i
      for (; i + 4 <= n; i += 4) {  // below it, full rows of the block, four at a time
        const scalar_t *a0 = Linv + i * ld, *a1 = a0 + ld, *a2 = a0 + 2 * ld, *a3 = a0 + 3 * ld;
        for (int64_t r = 0; r < k; ++r) {
          const scalar_t* b = B + r * n + i;
          const double b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
          double* mr = M + r * n;
#pragma omp simd
          for (int64_t j = j0; j < j1; ++j)
            mr[j] += b0 * static_cast<double>(a0[j]) + b1 * static_cast<double>(a1[j]) +
                     b2 * static_cast<double>(a2[j]) + b3 * static_cast<double>(a3[j]);
        }
      }
      for (; i < n; ++i) add_row(i, j1);  // the last rows, one at a time
    }
  });
}

}  // namespace

// Extends, in place, the factor held in the top-left n x n block of L_buffer [m, m] (and of
// Linv_buffer, unless it is empty) to n + k rows; m >= n + k. Returns (jitter added, success);
// on failure nothing is written.
std::tuple<double, bool> chol_append_(const at::Tensor& L_buffer, int64_t n,
                                      const at::Tensor& K_new_old, const at::Tensor& K_new_new,
                                      const at::Tensor& Linv_buffer, double jitter,
                                      int64_t max_tries, double floor) {
  TORCH_CHECK(L_buffer.dim() == 2 && L_buffer.size(0) == L_buffer.size(1) && L_buffer.is_contiguous(),
              "chol_append: the factor buffer must be a contiguous square matrix");
  const int64_t m = L_buffer.size(0), k = K_new_new.size(0);
  TORCH_CHECK(n >= 0 && n + k <= m, "chol_append: the buffer has no room for n + k rows");
  TORCH_CHECK(K_new_new.dim() == 2 && K_new_new.size(1) == k && K_new_new.is_contiguous(),
              "chol_append: K_new_new must be a contiguous [k, k] matrix");
  TORCH_CHECK(K_new_old.dim() == 2 && K_new_old.size(0) == k && K_new_old.size(1) == n &&
                  K_new_old.is_contiguous(),
              "chol_append: K_new_old must be a contiguous [k, n] matrix");
  const bool inverse = Linv_buffer.numel() > 0;
  TORCH_CHECK(!inverse || (Linv_buffer.sizes() == L_buffer.sizes() && Linv_buffer.is_contiguous()),
              "chol_append: the inverse buffer must be contiguous and of the factor buffer's shape");
  for (const auto* t : {&L_buffer, &K_new_old, &K_new_new}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == L_buffer.scalar_type(),
                "chol_append: CPU tensors of one dtype only");
  }
  TORCH_CHECK(L_buffer.scalar_type() == at::kFloat || L_buffer.scalar_type() == at::kDouble,
              "chol_append: float32 or float64 only");

  double added = 0.0;
  bool ok = false;
  AT_DISPATCH_FLOATING_TYPES(L_buffer.scalar_type(), "chol_append", [&] {
    scalar_t* l = L_buffer.data_ptr<scalar_t>();
    at::Tensor B_tensor = K_new_old.clone();
    scalar_t* B = B_tensor.data_ptr<scalar_t>();
    forward_substitution(l, m, B, n, k);

    const scalar_t* knn = K_new_new.data_ptr<scalar_t>();
    std::vector<double> S(k * k);
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b <= a; ++b) {
        const double sym = 0.5 * (static_cast<double>(knn[a * k + b]) + static_cast<double>(knn[b * k + a]));
        S[a * k + b] = S[b * k + a] = sym - dot(B + a * n, B + b * n, n);
      }
    std::vector<double> factor;
    for (int64_t attempt = 0; attempt <= max_tries && !ok; ++attempt) {
      added = attempt == 0 ? 0.0 : jitter * std::pow(10.0, static_cast<double>(attempt - 1));
      factor = S;
      for (int64_t j = 0; j < k; ++j) factor[j * k + j] += added;
      ok = small_cholesky(factor, k, floor);
    }
    if (!ok) return;
    if (inverse) {  // computed before L_buffer changes: B L^-1 reads only the old block
      scalar_t* li = Linv_buffer.data_ptr<scalar_t>();
      const std::vector<double> factor_inv = small_lower_inverse(factor, k);
      std::vector<double> M(k * n, 0.0);
      times_lower(B, li, m, n, k, M.data());
      std::vector<scalar_t> bottom(k * n);
      for (int64_t r = 0; r < k; ++r) {
        for (int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (int64_t p = 0; p <= r; ++p) s -= factor_inv[r * k + p] * M[p * n + j];
          bottom[r * n + j] = static_cast<scalar_t>(s);
        }
      }
      write_new_rows(li, m, bottom.data(), factor_inv, n, k);
    }
    write_new_rows(l, m, B, factor, n, k);
  });
  return {ok ? added : 0.0, ok};
}

}  // namespace medtune
