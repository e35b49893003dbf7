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
