// Shared helpers for medtune's C++ CPU kernels: vectorisable activations, work splitting and
// type dispatch for label maps.
#pragma once

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <functional>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace medtune {

enum Activation : int64_t { kNone = 0, kSigmoid = 1, kSoftmax = 2 };

// exp for float that GCC vectorises under `omp simd` (Cody-Waite reduction, degree-6
// polynomial; relative error below 2e-7 on [-87, 88]). NaN propagates.
inline float exp_approx(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::nearbyint(xc * 1.44269504088896341f);
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float out = p * scale;
  return x == x ? out : x;
}

inline double exp_approx(double x) { return std::exp(x); }

template <typename scalar_t>
inline scalar_t sigmoid(scalar_t x) {
  return scalar_t(1) / (scalar_t(1) + exp_approx(-x));
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define MEDTUNE_AVX512 1

// exp and sigmoid of 16 floats, written out because GCC's vectorisation of the scalar
// exp_approx above spends a third of its instructions on the clamps, the NaN select and
// building 2^n by integer arithmetic. Same range and accuracy: x is clamped to [-87, 88]
// (max/min keep NaN), exp(x) = 2^n e^r with a two-constant Cody-Waite reduction, a degree-6
// polynomial fitted on |r| <= ln(2) / 2 and vscalefps for 2^n; relative error below 2e-7.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), _mm512_min_ps(_mm512_set1_ps(88.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // r = x - n ln 2
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  // e^r = 1 + r (1 + r (c2 + r (c3 + r (c4 + r (c5 + r c6)))))
  __m512 p = _mm512_set1_ps(1.357105909846723e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.372725918889046e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.167357459664345e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666479408740997e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.9999967217445374e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 1 / (1 + exp(-x)): sigmoid(+inf) = 1, sigmoid(-inf) = 6e-39, NaN passes.
inline __m512 sigmoid16(__m512 x) {
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f)));
}

// Calls step(s, mask) for s = begin, begin + 16, ... < end; the mask holds the lanes of
// [s, min(s + 16, end)), so a short last step loads, stores and sums only what exists.
template <typename Step>
inline void for_each16(int64_t begin, int64_t end, const Step& step) {
  int64_t s = begin;
  for (; s + 16 <= end; s += 16) step(s, __mmask16(0xFFFF));
  if (s < end) step(s, __mmask16((1u << (end - s)) - 1u));
}
#endif

// Elements per work item: large enough to amortise scheduling, small enough to balance cores.
constexpr int64_t kChunk = 8192;
// Below this many elements work runs on the calling thread (as ATen's own ops do), so small
// inputs never pay for waking, or waiting on, the thread pool.
constexpr int64_t kParallelGrain = 32768;

inline int64_t num_chunks(int64_t spatial) { return (spatial + kChunk - 1) / kChunk; }

// Calls body(n, k, begin, end) for every chunk k of every sample n, on ATen's thread pool.
template <typename Body>
void for_each_chunk(int64_t N, int64_t S, const Body& body) {
  const int64_t chunks = num_chunks(S);
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / kChunk);
  at::parallel_for(0, N * chunks, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t n = item / chunks, k = item % chunks;
      const int64_t begin = k * kChunk;
      body(n, k, begin, std::min(S, begin + kChunk));
    }
  });
}

// Calls `body.template operator()<label_t>()` for the integer dtype of a label map.
#define MEDTUNE_DISPATCH_LABELS(TYPE, NAME, ...)                                   \
  [&] {                                                                            \
    switch (TYPE) {                                                                \
      case at::kByte: { using label_t = uint8_t; return __VA_ARGS__(); }           \
      case at::kInt: { using label_t = int32_t; return __VA_ARGS__(); }            \
      case at::kLong: { using label_t = int64_t; return __VA_ARGS__(); }           \
      default: TORCH_CHECK(false, NAME, ": label maps must be uint8, int32 or int64"); \
    }                                                                              \
  }()

}  // namespace medtune
