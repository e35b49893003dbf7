// warp3d: trilinear (or nearest) resampling of a volume through voxel-space maps, forward and
// backward, one output voxel at a time, never materialising a sampling grid.
//
// Layout: volume [N, C, D, H, W] and displacement [N, K, d, h, w] contiguous, in one dtype with
// the maps Mv, Mu [N, 3, 4] and B [N, 3, K]. The volume voxel sampled for output voxel
// i = (x, y, z) is  Mv [i, 1] + B u(Mu [i, 1]),  u sampled trilinearly with border padding; the
// volume with zeros or border padding (kernels/warp3d.py builds the maps from the affine and
// the align_corners convention). Voxel coordinates are ordered (x, y, z) = (W, H, D).
//
// Backward: gradients wrt the volume and the displacement are scattered (plain adds when each
// thread owns whole samples, atomic adds otherwise); those wrt Mv, Mu and B are summed per
// (sample, chunk) in double, 33 slots: Mv (12), Mu (12), B (3 x K).
#include "medtune.h"

#include <algorithm>

namespace medtune {
namespace {

constexpr int64_t kSlots = 33;

// The per-voxel helpers must inline into the voxel loops (GCC otherwise keeps make_axis a call
// that returns its struct through memory).
#define WARP3D_INLINE inline __attribute__((always_inline))

// One axis of a sampling point: the two neighbouring indices (clamped into range), the fraction
// towards the second, whether each lies inside, and d(sampled coordinate)/d(coordinate), zero
// where border padding clipped it (as grid_sample: strictly inside counts as inside).
template <typename T>
struct Axis {
  int64_t i0, i1;
  T f, slope;
  bool ok0, ok1;
};

template <typename T>
WARP3D_INLINE Axis<T> make_axis(T v, int64_t size, bool border, bool nearest) {
  Axis<T> a;
  a.slope = T(1);
  if (border) {
    const T hi = T(size - 1);
    if (!(v > T(0) && v < hi)) {
      a.slope = T(0);
      v = v > T(0) ? hi : T(0);
    }
  }
  if (!(v > T(-2))) v = T(-2);  // far outside (or NaN): every tap is out of range
  if (!(v < T(size + 1))) v = T(size + 1);
  const T lo = nearest ? std::nearbyint(v) : std::floor(v);
  const int64_t i = static_cast<int64_t>(lo);
  a.f = nearest ? T(0) : v - lo;
  a.ok0 = i >= 0 && i < size;
  a.ok1 = !nearest && i + 1 >= 0 && i + 1 < size;
  a.i0 = std::min<int64_t>(std::max<int64_t>(i, 0), size - 1);
  a.i1 = std::min<int64_t>(std::max<int64_t>(i + 1, 0), size - 1);
  return a;
}

// The corners around a point (corner j = 4 cz + 2 cy + cx): offsets into one channel, weights,
// in-range flags, and the fractions along x, y, z. Nearest mode has one corner.
template <typename T>
struct Taps {
  int64_t off[8];
  T w[8];
  T f[3];
  bool ok[8];
  bool all_ok;  // every corner inside: no per-corner test needed
  T slope[3];
};

template <bool NEAREST>
constexpr int kCorners = NEAREST ? 1 : 8;

template <typename T, bool NEAREST>
WARP3D_INLINE void make_taps(const T* p, int64_t D, int64_t H, int64_t W, bool border,
                             Taps<T>& t) {
  const Axis<T> ax = make_axis(p[0], W, border, NEAREST);
  const Axis<T> ay = make_axis(p[1], H, border, NEAREST);
  const Axis<T> az = make_axis(p[2], D, border, NEAREST);
  t.slope[0] = ax.slope, t.slope[1] = ay.slope, t.slope[2] = az.slope;
  t.f[0] = ax.f, t.f[1] = ay.f, t.f[2] = az.f;
  if constexpr (NEAREST) {
    t.off[0] = (az.i0 * H + ay.i0) * W + ax.i0;
    t.w[0] = T(1);
    t.ok[0] = t.all_ok = ax.ok0 && ay.ok0 && az.ok0;
    return;
  }
  t.all_ok = ax.ok0 && ax.ok1 && ay.ok0 && ay.ok1 && az.ok0 && az.ok1;
  int j = 0;
  for (int cz = 0; cz < 2; ++cz) {
    const T fz = cz ? az.f : T(1) - az.f;
    const int64_t z = cz ? az.i1 : az.i0;
    const bool okz = cz ? az.ok1 : az.ok0;
    for (int cy = 0; cy < 2; ++cy) {
      const T fy = cy ? ay.f : T(1) - ay.f;
      const int64_t y = cy ? ay.i1 : ay.i0;
      const bool oky = cy ? ay.ok1 : ay.ok0;
      for (int cx = 0; cx < 2; ++cx, ++j) {
        const T fx = cx ? ax.f : T(1) - ax.f;
        t.off[j] = (z * H + y) * W + (cx ? ax.i1 : ax.i0);
        t.ok[j] = okz && oky && (cx ? ax.ok1 : ax.ok0);
        t.w[j] = fx * fy * fz;
      }
    }
  }
}

template <bool NEAREST, typename T>
WARP3D_INLINE T interpolate(const T* plane, const Taps<T>& t) {
  T s = T(0);
  if (t.all_ok) {
    for (int j = 0; j < kCorners<NEAREST>; ++j) s += t.w[j] * plane[t.off[j]];
  } else {
    for (int j = 0; j < kCorners<NEAREST>; ++j) s += t.ok[j] ? t.w[j] * plane[t.off[j]] : T(0);
  }
  return s;
}

// Derivatives wrt x, y, z of the trilinear interpolation of the corner values v at fractions f.
template <typename T>
WARP3D_INLINE void derivatives(const T* v, const T* f, T* d) {
  const T ex0 = v[1] - v[0], ex1 = v[3] - v[2], ex2 = v[5] - v[4], ex3 = v[7] - v[6];
  const T a0 = v[0] + f[0] * ex0, a1 = v[2] + f[0] * ex1;
  const T a2 = v[4] + f[0] * ex2, a3 = v[6] + f[0] * ex3;
  const T b0 = a0 + f[1] * (a1 - a0), b1 = a2 + f[1] * (a3 - a2);
  const T ey0 = ex0 + f[1] * (ex1 - ex0), ey1 = ex2 + f[1] * (ex3 - ex2);
  d[0] = ey0 + f[2] * (ey1 - ey0);
  d[1] = (a1 - a0) + f[2] * ((a3 - a2) - (a1 - a0));
  d[2] = b1 - b0;
}

template <bool ATOMIC, typename T>
WARP3D_INLINE void add(T* p, T v) {
  if constexpr (ATOMIC) {
#pragma omp atomic
    *p += v;
  } else {
    *p += v;
  }
}

template <typename T>
struct Problem {
  const T* vol;
  const T* disp;  // nullptr: no displacement
  T mv[12], mu[12], b[9];
  int64_t C, D, H, W;  // volume
  int64_t K, d, h, w;  // displacement
  int64_t oD, oH, oW;  // output
  bool border, nearest;
};

template <typename T>
Problem<T> make_problem(const at::Tensor& volume, const c10::optional<at::Tensor>& displacement,
                        const at::Tensor& mv, const c10::optional<at::Tensor>& mu,
                        const c10::optional<at::Tensor>& b, int64_t n, bool nearest, bool border,
                        at::IntArrayRef size) {
  Problem<T> p{};
  p.vol = volume.data_ptr<T>();
  p.C = volume.size(1), p.D = volume.size(2), p.H = volume.size(3), p.W = volume.size(4);
  p.oD = size[0], p.oH = size[1], p.oW = size[2];
  p.border = border, p.nearest = nearest;
  std::copy_n(mv.data_ptr<T>() + n * 12, 12, p.mv);
  p.disp = nullptr;
  if (displacement.has_value()) {
    const at::Tensor& u = *displacement;
    p.disp = u.data_ptr<T>();
    p.K = u.size(1), p.d = u.size(2), p.h = u.size(3), p.w = u.size(4);
    std::copy_n(mu->data_ptr<T>() + n * 12, 12, p.mu);
    std::copy_n(b->data_ptr<T>() + n * 3 * p.K, 3 * p.K, p.b);
  }
  return p;
}

// (x, y, z) of output voxel s, and a step to the next voxel (avoids divisions per voxel).
WARP3D_INLINE void unravel(int64_t s, int64_t oH, int64_t oW, int64_t* xyz) {
  xyz[0] = s % oW, xyz[1] = (s / oW) % oH, xyz[2] = s / (oW * oH);
}

WARP3D_INLINE void step(int64_t oH, int64_t oW, int64_t* xyz) {
  if (++xyz[0] == oW) {
    xyz[0] = 0;
    if (++xyz[1] == oH) xyz[1] = 0, ++xyz[2];
  }
}

// Output voxel s of sample n: its index vector, the displacement taps, values and (DERIV)
// their derivatives wrt the displacement voxel coordinate, and the volume voxel coordinate.
template <typename T, bool DERIV>
struct Point {
  T i[4];
  T u[3];
  T du[3][3];
  T pv[3];
  Taps<T> ut;
};

template <typename T, bool DERIV>
WARP3D_INLINE void locate(const Problem<T>& p, int64_t n, const int64_t* xyz,
                          Point<T, DERIV>& q) {
  q.i[0] = T(xyz[0]), q.i[1] = T(xyz[1]), q.i[2] = T(xyz[2]), q.i[3] = T(1);
  for (int r = 0; r < 3; ++r) {
    q.pv[r] = p.mv[r * 4] * q.i[0] + p.mv[r * 4 + 1] * q.i[1] + p.mv[r * 4 + 2] * q.i[2] +
              p.mv[r * 4 + 3];
  }
  if (p.disp == nullptr) return;
  T pu[3];
  for (int r = 0; r < 3; ++r) {
    pu[r] = p.mu[r * 4] * q.i[0] + p.mu[r * 4 + 1] * q.i[1] + p.mu[r * 4 + 2] * q.i[2] +
            p.mu[r * 4 + 3];
  }
  make_taps<T, false>(pu, p.d, p.h, p.w, /*border=*/true, q.ut);
  const int64_t plane = p.d * p.h * p.w;
  for (int64_t k = 0; k < p.K; ++k) {
    const T* up = p.disp + (n * p.K + k) * plane;
    if constexpr (DERIV) {  // border padding: every corner is inside
      T v[8], u = T(0);
      for (int j = 0; j < 8; ++j) v[j] = up[q.ut.off[j]], u += q.ut.w[j] * v[j];
      q.u[k] = u;
      derivatives(v, q.ut.f, q.du[k]);
    } else {
      q.u[k] = interpolate<false>(up, q.ut);
    }
  }
  for (int r = 0; r < 3; ++r) {
    for (int64_t k = 0; k < p.K; ++k) q.pv[r] += p.b[r * p.K + k] * q.u[k];
  }
}

template <bool NEAREST, typename T>
void forward_chunk(const Problem<T>& p, int64_t n, int64_t begin, int64_t end, T* out) {
  const int64_t S = p.oD * p.oH * p.oW, plane = p.D * p.H * p.W;
  Point<T, false> q;
  Taps<T> vt;
  int64_t xyz[3];
  unravel(begin, p.oH, p.oW, xyz);
  for (int64_t s = begin; s < end; ++s, step(p.oH, p.oW, xyz)) {
    locate(p, n, xyz, q);
    make_taps<T, NEAREST>(q.pv, p.D, p.H, p.W, p.border, vt);
    for (int64_t c = 0; c < p.C; ++c) {
      out[(n * p.C + c) * S + s] = interpolate<NEAREST>(p.vol + (n * p.C + c) * plane, vt);
    }
  }
}

template <bool ATOMIC, bool NEAREST, typename T>
void backward_chunk(const Problem<T>& p, int64_t n, int64_t begin, int64_t end, const T* gout,
                    T* gvol, T* gdisp, bool need_volume, bool need_transform, double* sums) {
  double acc[kSlots] = {};  // kept local: the scatters below could alias the output slots
  const int64_t S = p.oD * p.oH * p.oW, plane = p.D * p.H * p.W;
  const int64_t uplane = p.d * p.h * p.w;
  const bool deriv = need_transform && !NEAREST;
  Point<T, true> q;
  Taps<T> vt;
  int64_t xyz[3];
  unravel(begin, p.oH, p.oW, xyz);
  for (int64_t s = begin; s < end; ++s, step(p.oH, p.oW, xyz)) {
    locate(p, n, xyz, q);
    make_taps<T, NEAREST>(q.pv, p.D, p.H, p.W, p.border, vt);
    T gpv[3] = {0, 0, 0};
    for (int64_t c = 0; c < p.C; ++c) {
      const T g = gout[(n * p.C + c) * S + s];
      const T* vp = p.vol + (n * p.C + c) * plane;
      if (need_volume) {
        T* gp = gvol + (n * p.C + c) * plane;
        for (int j = 0; j < kCorners<NEAREST>; ++j) {
          if (vt.all_ok || vt.ok[j]) add<ATOMIC>(gp + vt.off[j], g * vt.w[j]);
        }
      }
      if constexpr (!NEAREST) {
        if (!deriv) continue;
        T v[8], d[3];
        for (int j = 0; j < 8; ++j) v[j] = (vt.all_ok || vt.ok[j]) ? vp[vt.off[j]] : T(0);
        derivatives(v, vt.f, d);
        gpv[0] += g * d[0], gpv[1] += g * d[1], gpv[2] += g * d[2];
      }
    }
    if (!deriv) continue;
    for (int r = 0; r < 3; ++r) {
      gpv[r] *= vt.slope[r];
      for (int j = 0; j < 4; ++j) acc[r * 4 + j] += double(gpv[r] * q.i[j]);
    }
    if (p.disp == nullptr) continue;
    T gpu[3] = {0, 0, 0};
    for (int64_t k = 0; k < p.K; ++k) {
      T gu = 0;
      for (int r = 0; r < 3; ++r) {
        acc[24 + r * p.K + k] += double(gpv[r] * q.u[k]);
        gu += p.b[r * p.K + k] * gpv[r];
      }
      T* gp = gdisp + (n * p.K + k) * uplane;
      for (int j = 0; j < 8; ++j) add<ATOMIC>(gp + q.ut.off[j], gu * q.ut.w[j]);
      gpu[0] += gu * q.du[k][0], gpu[1] += gu * q.du[k][1], gpu[2] += gu * q.du[k][2];
    }
    for (int r = 0; r < 3; ++r) {
      gpu[r] *= q.ut.slope[r];
      for (int j = 0; j < 4; ++j) acc[12 + r * 4 + j] += double(gpu[r] * q.i[j]);
    }
  }
  for (int64_t j = 0; j < kSlots; ++j) sums[j] += acc[j];
}

void check_inputs(const at::Tensor& volume, const c10::optional<at::Tensor>& displacement,
                  const at::Tensor& mv, const c10::optional<at::Tensor>& mu,
                  const c10::optional<at::Tensor>& b, at::IntArrayRef size) {
  const auto dtype = volume.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "warp3d: float32 or float64 only");
  TORCH_CHECK(volume.dim() == 5 && volume.is_contiguous() && volume.device().is_cpu(),
              "warp3d: volume must be a contiguous CPU [N, C, D, H, W] tensor");
  const int64_t N = volume.size(0);
  TORCH_CHECK(size.size() == 3, "warp3d: size must be (D, H, W)");
  TORCH_CHECK(mv.sizes() == at::IntArrayRef({N, 3, 4}) && mv.is_contiguous() &&
                  mv.scalar_type() == dtype,
              "warp3d: Mv must be contiguous [N, 3, 4] of the volume's dtype");
  if (displacement.has_value()) {
    const at::Tensor& u = *displacement;
    TORCH_CHECK(u.dim() == 5 && u.size(0) == N && u.size(1) >= 1 && u.size(1) <= 3 &&
                    u.is_contiguous() && u.scalar_type() == dtype,
                "warp3d: displacement must be contiguous [N, K <= 3, d, h, w] of the volume's "
                "dtype");
    TORCH_CHECK(mu.has_value() && b.has_value(), "warp3d: a displacement needs Mu and B");
    TORCH_CHECK(mu->sizes() == at::IntArrayRef({N, 3, 4}) && mu->is_contiguous() &&
                    mu->scalar_type() == dtype,
                "warp3d: Mu must be contiguous [N, 3, 4] of the volume's dtype");
    TORCH_CHECK(b->sizes() == at::IntArrayRef({N, 3, u.size(1)}) && b->is_contiguous() &&
                    b->scalar_type() == dtype,
                "warp3d: B must be contiguous [N, 3, K] of the volume's dtype");
  }
}

}  // namespace

at::Tensor warp3d_forward(const at::Tensor& volume, const c10::optional<at::Tensor>& displacement,
                          const at::Tensor& mv, const c10::optional<at::Tensor>& mu,
                          const c10::optional<at::Tensor>& b, bool nearest, bool border,
                          at::IntArrayRef size) {
  check_inputs(volume, displacement, mv, mu, b, size);
  const int64_t N = volume.size(0), C = volume.size(1);
  auto out = at::empty({N, C, size[0], size[1], size[2]}, volume.options());
  const int64_t S = size[0] * size[1] * size[2];
  AT_DISPATCH_FLOATING_TYPES(volume.scalar_type(), "warp3d_forward", [&] {
    std::vector<Problem<scalar_t>> problems;
    for (int64_t n = 0; n < N; ++n) {
      problems.push_back(make_problem<scalar_t>(volume, displacement, mv, mu, b, n, nearest,
                                                border, size));
    }
    scalar_t* o = out.data_ptr<scalar_t>();
    for_each_chunk(N, S, [&](int64_t n, int64_t, int64_t begin, int64_t end) {
      if (nearest) {
        forward_chunk<true>(problems[n], n, begin, end, o);
      } else {
        forward_chunk<false>(problems[n], n, begin, end, o);
      }
    });
  });
  return out;
}

// Returns (grad volume or empty when not needed, grad displacement or empty, sums [N, 33]
// float64 of the grads wrt Mv, Mu and B).
std::tuple<at::Tensor, at::Tensor, at::Tensor> warp3d_backward(
    const at::Tensor& grad_out, const at::Tensor& volume,
    const c10::optional<at::Tensor>& displacement, const at::Tensor& mv,
    const c10::optional<at::Tensor>& mu, const c10::optional<at::Tensor>& b, bool nearest,
    bool border, bool need_volume, bool need_transform) {
  check_inputs(volume, displacement, mv, mu, b, grad_out.sizes().slice(2));
  const int64_t N = volume.size(0), C = volume.size(1);
  TORCH_CHECK(grad_out.dim() == 5 && grad_out.size(0) == N && grad_out.size(1) == C &&
                  grad_out.is_contiguous() && grad_out.scalar_type() == volume.scalar_type(),
              "warp3d: grad_out must be contiguous [N, C, *size] of the volume's dtype");
  const auto size = grad_out.sizes().slice(2);
  const int64_t S = size[0] * size[1] * size[2];
  const bool has_disp = displacement.has_value();
  // gradients not asked for are empty: no volume-sized buffer is allocated for nothing
  auto grad_volume = need_volume ? at::zeros_like(volume) : at::empty({0}, volume.options());
  auto grad_disp = has_disp ? at::zeros_like(*displacement) : at::empty({0}, volume.options());
  const int64_t chunks = num_chunks(S);
  auto partial = at::zeros({N, chunks, kSlots}, volume.options().dtype(at::kDouble));
  const bool scatters = need_volume || (has_disp && need_transform && !nearest);
  // Plain adds are safe when nothing is scattered or when each thread owns whole samples.
  const bool per_sample = scatters && N >= at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES(volume.scalar_type(), "warp3d_backward", [&] {
    std::vector<Problem<scalar_t>> problems;
    for (int64_t n = 0; n < N; ++n) {
      problems.push_back(make_problem<scalar_t>(volume, displacement, mv, mu, b, n, nearest,
                                                border, size));
    }
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    scalar_t* gv = grad_volume.data_ptr<scalar_t>();
    scalar_t* gu = has_disp ? grad_disp.data_ptr<scalar_t>() : nullptr;
    double* acc = partial.data_ptr<double>();
    auto chunk = [&](auto atomic, int64_t n, int64_t k, int64_t begin, int64_t end) {
      constexpr bool kAtomic = decltype(atomic)::value;
      double* sums = acc + (n * chunks + k) * kSlots;
      if (nearest) {
        backward_chunk<kAtomic, true>(problems[n], n, begin, end, g, gv, gu, need_volume,
                                      need_transform, sums);
      } else {
        backward_chunk<kAtomic, false>(problems[n], n, begin, end, g, gv, gu, need_volume,
                                       need_transform, sums);
      }
    };
    if (per_sample) {
      at::parallel_for(0, N, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t n = lo; n < hi; ++n) {
          for (int64_t k = 0; k < chunks; ++k) {
            chunk(std::false_type{}, n, k, k * kChunk, std::min(S, (k + 1) * kChunk));
          }
        }
      });
    } else if (scatters) {
      for_each_chunk(N, S, [&](int64_t n, int64_t k, int64_t begin, int64_t end) {
        chunk(std::true_type{}, n, k, begin, end);
      });
    } else {
      for_each_chunk(N, S, [&](int64_t n, int64_t k, int64_t begin, int64_t end) {
        chunk(std::false_type{}, n, k, begin, end);
      });
    }
  });
  return {grad_volume, grad_disp, partial.sum(1)};
}

}  // namespace medtune
