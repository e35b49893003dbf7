// warp3d: trilinear (or nearest) resampling of a volume through voxel-space maps, forward and
// backward, never materialising a sampling grid. Blocks of output voxels along x run through
// vectorised loops (gathers with int32 offsets); volumes of 2^31 voxels or more run one voxel
// at a time. 2D inputs (depth 1, z exactly 0) read four corners instead of eight.
//
// Layout: volume [N, C, D, H, W] and displacement [N, K, d, h, w] contiguous, in one dtype with
// the maps Mv, Mu [N, 3, 4] and B [N, 3, K]. The volume voxel sampled for output voxel
// i = (x, y, z) is  Mv [i, 1] + B u(Mu [i, 1]),  u sampled trilinearly with border padding; the
// volume with zeros or border padding (kernels/warp3d.py builds the maps from the affine and
// the align_corners convention). Voxel coordinates are ordered (x, y, z) = (W, H, D).
//
// When the displacement has the output's size and Mu maps output voxel i to displacement voxel
// i (the registration warp x + u(x), and A (x + u(x))), u is read at i directly: no taps, and
// its gradient is written once per voxel instead of scattered.
//
// Backward computes only the gradients asked for (the volume's, the displacement's, and those
// wrt Mv, Mu, B): the volume's and, where u is interpolated, the displacement's are scattered
// (plain adds when each thread owns whole samples; otherwise into per-thread windows, or atomic
// adds where those would be too large, see backward_windowed); those wrt Mv, Mu and B are
// summed per (sample, chunk) in double, 33 slots: Mv (12), Mu (12), B (3 x K).
#include "medtune.h"

#include <omp.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <new>
#include <vector>

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

// The gradients a backward call computes, in the order of the op's inputs.
struct Needs {
  bool volume, displacement, mv, mu, b;
  // d(loss)/d(volume voxel coordinate): what every gradient but the volume's starts from
  bool coordinates() const { return displacement || mv || mu || b; }
};

template <typename T>
struct Problem {
  const T* vol;
  const T* disp;  // nullptr: no displacement
  T mv[12], mu[12], b[9];
  int64_t C, D, H, W;  // volume
  int64_t K, d, h, w;  // displacement
  int64_t oD, oH, oW;  // output
  bool border, nearest;
  bool direct;  // u is read at the output voxel itself (see direct_field)
  bool planar, planar_field;  // the volume, the field, sampled at z = 0 only (see at_z0)
};

// Whether row 2 of a map [3, 4] (the z coordinate) is 0 for every output voxel.
template <typename T>
bool zero_z(const T* map, const Problem<T>& p) {
  const int64_t extent[3] = {p.oW, p.oH, p.oD};
  for (int c = 0; c < 3; ++c) {
    if (extent[c] > 1 && map[8 + c] != T(0)) return false;
  }
  return map[11] == T(0);
}

// Whether a grid of depth `depth` is sampled at z = 0 only (2D inputs, where z is exactly 0):
// Mv's (or Mu's) z row is zero and so, for the volume, is B's.
template <typename T>
bool at_z0(const Problem<T>& p, int64_t depth, const T* map, bool through_field) {
  if (depth != 1 || !zero_z(map, p)) return false;
  if (through_field) {
    for (int64_t k = 0; k < p.K; ++k) {
      if (p.b[2 * p.K + k] != T(0)) return false;
    }
  }
  return true;
}

// Whether Mu maps every output voxel to the displacement voxel of the same index: the field
// has the output's size and Mu is the identity on the axes the output spans (an axis of extent
// 1 has coordinate 0, whatever its column holds).
template <typename T>
bool direct_field(const Problem<T>& p) {
  if (p.d != p.oD || p.h != p.oH || p.w != p.oW) return false;
  const int64_t extent[3] = {p.oW, p.oH, p.oD};
  for (int r = 0; r < 3; ++r) {
    if (p.mu[r * 4 + 3] != T(0)) return false;
    for (int c = 0; c < 3; ++c) {
      if (extent[c] > 1 && p.mu[r * 4 + c] != T(r == c ? 1 : 0)) return false;
    }
  }
  return true;
}

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
    p.direct = direct_field(p);
    p.planar_field = at_z0(p, p.d, p.mu, false);
  }
  p.planar = at_z0(p, p.D, p.mv, p.disp != nullptr);
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
                    T* gvol, T* gdisp, const Needs& needs, double* sums) {
  double acc[kSlots] = {};  // kept local: the scatters below could alias the output slots
  const int64_t S = p.oD * p.oH * p.oW, plane = p.D * p.H * p.W;
  const int64_t uplane = p.d * p.h * p.w;
  const bool deriv = needs.coordinates() && !NEAREST;
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
      if (needs.volume) {
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
      if (needs.displacement) {
        T* gp = gdisp + (n * p.K + k) * uplane;
        if (p.direct) {
          gp[s] = gu;  // the voxel's own: written once
        } else {
          for (int j = 0; j < 8; ++j) add<ATOMIC>(gp + q.ut.off[j], gu * q.ut.w[j]);
        }
      }
      gpu[0] += gu * q.du[k][0], gpu[1] += gu * q.du[k][1], gpu[2] += gu * q.du[k][2];
    }
    for (int r = 0; r < 3; ++r) {
      gpu[r] *= q.ut.slope[r];
      for (int j = 0; j < 4; ++j) acc[12 + r * 4 + j] += double(gpu[r] * q.i[j]);
    }
  }
  for (int64_t j = 0; j < kSlots; ++j) sums[j] += acc[j];
}

// ---- a block of consecutive output voxels along x at a time ---------------------------------
//
// The per-voxel code above branches on every axis of every point; here each step is a plain
// loop over the block (coordinates, taps, gathers, blends) that the compiler vectorises, and
// only the gradient scatters stay scalar. Offsets are int32: used when every plane has fewer
// than 2^31 voxels (the per-voxel code serves the rest).

constexpr int kBlock = 64;

// One axis of a block of sampling coordinates: lower index clamped into range, step to the
// upper one (0 or 1), fraction, whether each tap lies inside (1/0) and the slope (0 where
// border padding clipped the coordinate), as make_axis computes them for one point. Nearest
// mode has one tap, the nearest index (ties to even): fraction 0, and the upper tap outside.
template <typename T>
struct AxisBlock {
  int32_t i0[kBlock], step[kBlock];
  T f[kBlock], ok0[kBlock], ok1[kBlock], slope[kBlock];
};

template <bool BORDER, bool NEAREST, typename T>
WARP3D_INLINE void axis_block(const T* __restrict coords, int count, int64_t size,
                              AxisBlock<T>& __restrict a) {
  const T hi = T(size - 1), top = T(size + 1);
  const int32_t last = int32_t(size - 1);
#pragma omp simd
  for (int j = 0; j < count; ++j) {
    T v = coords[j];
    T slope = T(1);
    if constexpr (BORDER) {
      const bool inside = (v > T(0)) & (v < hi);
      const T edge = v > T(0) ? hi : T(0);
      slope = inside ? T(1) : T(0);
      v = inside ? v : edge;
    }
    v = v > T(-2) ? v : T(-2);  // far outside (or NaN): every tap is out of range
    v = v < top ? v : top;
    const T lo = NEAREST ? std::nearbyint(v) : std::floor(v);
    const int32_t i = int32_t(lo), i1 = i + 1;
    const int32_t c0 = i < 0 ? 0 : (i > last ? last : i);
    const int32_t c1 = i1 < 0 ? 0 : (i1 > last ? last : i1);
    a.i0[j] = c0;
    a.step[j] = NEAREST ? 0 : c1 - c0;
    a.f[j] = NEAREST ? T(0) : v - lo;
    a.ok0[j] = ((i >= 0) & (i <= last)) ? T(1) : T(0);
    a.ok1[j] = (!NEAREST & (i1 >= 0) & (i1 <= last)) ? T(1) : T(0);
    a.slope[j] = slope;
  }
}

// Taps of a block in a [D, H, W] plane: offset of the lower corner and the steps to the others.
// Planar: the grid has depth 1 and every point's z coordinate is 0, so the corners at z = 1
// are outside (zeros padding) or repeat those at z = 0 (border): four corners are read.
// Nearest: one corner (see AxisBlock); the scatters below then add to it alone.
template <typename T>
struct TapBlock {
  AxisBlock<T> x, y, z;
  int32_t base[kBlock], sx[kBlock], sy[kBlock], sz[kBlock];
  bool planar;
};

template <bool BORDER, bool NEAREST, typename T>
WARP3D_INLINE void axes_block(T* const* coords, int count, int64_t D, int64_t H, int64_t W,
                              TapBlock<T>& t) {
  axis_block<BORDER, NEAREST>(coords[0], count, W, t.x);
  axis_block<BORDER, NEAREST>(coords[1], count, H, t.y);
  axis_block<BORDER, NEAREST>(coords[2], count, D, t.z);
}

template <typename T>
WARP3D_INLINE void tap_block(T* const* coords, int count, int64_t D, int64_t H, int64_t W,
                             bool border, bool planar, bool nearest, TapBlock<T>& t) {
  t.planar = planar;
  if (nearest) {
    if (border) {
      axes_block<true, true>(coords, count, D, H, W, t);
    } else {
      axes_block<false, true>(coords, count, D, H, W, t);
    }
  } else if (border) {
    axes_block<true, false>(coords, count, D, H, W, t);
  } else {
    axes_block<false, false>(coords, count, D, H, W, t);
  }
  const int32_t w = int32_t(W), h = int32_t(H), hw = int32_t(H * W);
#pragma omp simd
  for (int j = 0; j < count; ++j) {
    t.base[j] = (t.z.i0[j] * h + t.y.i0[j]) * w + t.x.i0[j];
    t.sx[j] = t.x.step[j];
    t.sy[j] = t.y.step[j] * w;
    t.sz[j] = t.z.step[j] * hw;
  }
}

// Trilinear interpolation of a block of points in one plane, and with DERIV its derivatives
// wrt the point's x, y, z; corners outside count as zero when ZEROS (zeros padding), and every
// corner is inside with border padding. Values are read by int32 offsets (gathers). PLANAR
// reads the four corners at z = 0 (see TapBlock) and gives what the eight would: the value and
// d/dx, d/dy at z = 0, and d/dz = -value with zeros padding (the corners at z = 1 are zero), 0
// with border padding.
template <bool ZEROS, bool DERIV, bool PLANAR, typename T>
WARP3D_INLINE void sample_points(const T* __restrict plane, const TapBlock<T>& t, int count,
                                 T* __restrict value, T* __restrict dx, T* __restrict dy,
                                 T* __restrict dz) {
#pragma omp simd
  for (int j = 0; j < count; ++j) {
    const int32_t o = t.base[j], sx = t.sx[j], sy = t.sy[j];
    T v0 = plane[o], v1 = plane[o + sx], v2 = plane[o + sy], v3 = plane[o + sy + sx];
    const T fx = t.x.f[j], fy = t.y.f[j];
    if constexpr (PLANAR) {
      if constexpr (ZEROS) {
        const T x0 = t.x.ok0[j], x1 = t.x.ok1[j], y0 = t.y.ok0[j], y1 = t.y.ok1[j];
        v0 = y0 * x0 != T(0) ? v0 : T(0), v1 = y0 * x1 != T(0) ? v1 : T(0);
        v2 = y1 * x0 != T(0) ? v2 : T(0), v3 = y1 * x1 != T(0) ? v3 : T(0);
      }
      const T ex0 = v1 - v0, ex1 = v3 - v2;
      const T a0 = v0 + fx * ex0, a1 = v2 + fx * ex1;
      const T b0 = a0 + fy * (a1 - a0);
      value[j] = b0;
      if constexpr (DERIV) {
        dx[j] = ex0 + fy * (ex1 - ex0);
        dy[j] = a1 - a0;
        dz[j] = ZEROS ? -b0 : T(0);
      }
    } else {
      const int32_t sz = t.sz[j];
      T v4 = plane[o + sz], v5 = plane[o + sz + sx], v6 = plane[o + sz + sy];
      T v7 = plane[o + sz + sy + sx];
      if constexpr (ZEROS) {
        const T x0 = t.x.ok0[j], x1 = t.x.ok1[j], y0 = t.y.ok0[j], y1 = t.y.ok1[j];
        const T z0 = t.z.ok0[j], z1 = t.z.ok1[j];
        v0 = z0 * y0 * x0 != T(0) ? v0 : T(0), v1 = z0 * y0 * x1 != T(0) ? v1 : T(0);
        v2 = z0 * y1 * x0 != T(0) ? v2 : T(0), v3 = z0 * y1 * x1 != T(0) ? v3 : T(0);
        v4 = z1 * y0 * x0 != T(0) ? v4 : T(0), v5 = z1 * y0 * x1 != T(0) ? v5 : T(0);
        v6 = z1 * y1 * x0 != T(0) ? v6 : T(0), v7 = z1 * y1 * x1 != T(0) ? v7 : T(0);
      }
      const T fz = t.z.f[j];
      const T ex0 = v1 - v0, ex1 = v3 - v2, ex2 = v5 - v4, ex3 = v7 - v6;
      const T a0 = v0 + fx * ex0, a1 = v2 + fx * ex1, a2 = v4 + fx * ex2, a3 = v6 + fx * ex3;
      const T b0 = a0 + fy * (a1 - a0), b1 = a2 + fy * (a3 - a2);
      value[j] = b0 + fz * (b1 - b0);
      if constexpr (DERIV) {  // as derivatives() above
        const T ey0 = ex0 + fy * (ex1 - ex0), ey1 = ex2 + fy * (ex3 - ex2);
        dx[j] = ey0 + fz * (ey1 - ey0);
        dy[j] = (a1 - a0) + fz * ((a3 - a2) - (a1 - a0));
        dz[j] = b1 - b0;
      }
    }
  }
}

// Nearest mode: the value at each point's one tap, zero outside with zeros padding.
template <typename T>
WARP3D_INLINE void sample_nearest(const T* __restrict plane, const TapBlock<T>& t, int count,
                                  bool zeros, T* __restrict value) {
#pragma omp simd
  for (int j = 0; j < count; ++j) {
    const bool inside = !zeros || t.x.ok0[j] * t.y.ok0[j] * t.z.ok0[j] != T(0);
    value[j] = inside ? plane[t.base[j]] : T(0);
  }
}

template <bool DERIV, typename T>
WARP3D_INLINE void sample_block(const T* plane, const TapBlock<T>& t, int count, bool border,
                                T* value, T* dx = nullptr, T* dy = nullptr, T* dz = nullptr) {
  if (t.planar) {
    if (border) {
      sample_points<false, DERIV, true>(plane, t, count, value, dx, dy, dz);
    } else {
      sample_points<true, DERIV, true>(plane, t, count, value, dx, dy, dz);
    }
  } else if (border) {
    sample_points<false, DERIV, false>(plane, t, count, value, dx, dy, dz);
  } else {
    sample_points<true, DERIV, false>(plane, t, count, value, dx, dy, dz);
  }
}

// Where one sample's gradient of a grid is accumulated: channel c at plane(c), grid offset i at
// plane(c)[i - lo]. Either the whole gradient (lo = 0) or a window of it (see Windows).
template <typename T>
struct Target {
  T* data;
  int64_t stride;  // between channels
  int32_t lo;
  T* plane(int64_t c) const { return data + c * stride; }
};

// Adds g [j] times the weight of each corner of point j (corners outside have weight zero) to
// the plane, whose first element stands for grid offset lo. The offsets and weighted values
// are computed for the whole block first (vectorised); only the adds run one at a time.
template <bool ATOMIC, typename T>
WARP3D_INLINE void scatter(T* plane, int32_t lo, const TapBlock<T>& t, const T* g, int count) {
  const int corners = t.planar ? 4 : 8;
  int32_t off[8][kBlock];
  T value[8][kBlock];
#pragma omp simd
  for (int j = 0; j < count; ++j) {
    const T fx = t.x.f[j], fy = t.y.f[j], fz = t.z.f[j];
    const T wx0 = (T(1) - fx) * t.x.ok0[j], wx1 = fx * t.x.ok1[j];
    const T wy0 = (T(1) - fy) * t.y.ok0[j], wy1 = fy * t.y.ok1[j];
    const T wz0 = (T(1) - fz) * t.z.ok0[j] * g[j], wz1 = fz * t.z.ok1[j] * g[j];
    const int32_t o = t.base[j] - lo, sx = t.sx[j], sy = t.sy[j], sz = t.sz[j];
    off[0][j] = o, off[1][j] = o + sx, off[2][j] = o + sy, off[3][j] = o + sy + sx;
    value[0][j] = wz0 * wy0 * wx0, value[1][j] = wz0 * wy0 * wx1;
    value[2][j] = wz0 * wy1 * wx0, value[3][j] = wz0 * wy1 * wx1;
    off[4][j] = o + sz, off[5][j] = o + sz + sx, off[6][j] = o + sz + sy;
    off[7][j] = o + sz + sy + sx;
    value[4][j] = wz1 * wy0 * wx0, value[5][j] = wz1 * wy0 * wx1;
    value[6][j] = wz1 * wy1 * wx0, value[7][j] = wz1 * wy1 * wx1;
  }
  for (int j = 0; j < count; ++j) {
    for (int c = 0; c < corners; ++c) {
      if (value[c][j] != T(0)) add<ATOMIC>(plane + off[c][j], value[c][j]);
    }
  }
}

// A block of `count` output voxels starting at (x0, y, z) of sample n, flat index s: where
// they sample the displacement (taps `ut`, values u, and with DERIV the derivatives du [k][axis]
// wrt the displacement voxel coordinate) and the volume (taps `vt`), as locate() computes them
// for one voxel. A direct field is read at s itself unless DERIV asks for its derivatives.
template <typename T, bool DERIV>
struct Block {
  int count;
  int64_t s;
  T x[kBlock], y, z;
  T pu[3][kBlock], pv[3][kBlock];
  T u[3][kBlock];
  T du[DERIV ? 3 : 1][3][kBlock];
  TapBlock<T> ut, vt;
};

template <typename T, bool DERIV>
WARP3D_INLINE void locate_block(const Problem<T>& p, int64_t n, int64_t x0, int64_t y, int64_t z,
                                Block<T, DERIV>& q) {
  const int count = q.count;
  q.y = T(y), q.z = T(z);
#pragma omp simd
  for (int j = 0; j < count; ++j) q.x[j] = T(x0 + j);
  for (int r = 0; r < 3; ++r) {
    const T row = p.mv[r * 4 + 1] * q.y + p.mv[r * 4 + 2] * q.z + p.mv[r * 4 + 3];
    const T slope = p.mv[r * 4];
#pragma omp simd
    for (int j = 0; j < count; ++j) q.pv[r][j] = slope * q.x[j] + row;
  }
  if (p.disp != nullptr) {
    const int64_t uplane = p.d * p.h * p.w;
    if (p.direct && !DERIV) {
      for (int64_t k = 0; k < p.K; ++k) {
        std::copy_n(p.disp + (n * p.K + k) * uplane + q.s, count, q.u[k]);
      }
    } else {
      for (int r = 0; r < 3; ++r) {
        const T row = p.mu[r * 4 + 1] * q.y + p.mu[r * 4 + 2] * q.z + p.mu[r * 4 + 3];
        const T slope = p.mu[r * 4];
#pragma omp simd
        for (int j = 0; j < count; ++j) q.pu[r][j] = slope * q.x[j] + row;
      }
      T* ucoords[3] = {q.pu[0], q.pu[1], q.pu[2]};
      tap_block(ucoords, count, p.d, p.h, p.w, /*border=*/true, p.planar_field, false, q.ut);
      for (int64_t k = 0; k < p.K; ++k) {
        const T* up = p.disp + (n * p.K + k) * uplane;
        if constexpr (DERIV) {
          sample_block<true>(up, q.ut, count, /*border=*/true, q.u[k], q.du[k][0], q.du[k][1],
                             q.du[k][2]);
        } else {
          sample_block<false>(up, q.ut, count, /*border=*/true, q.u[k]);
        }
      }
    }
    for (int r = 0; r < 3; ++r) {
      for (int64_t k = 0; k < p.K; ++k) {
        const T b = p.b[r * p.K + k];
#pragma omp simd
        for (int j = 0; j < count; ++j) q.pv[r][j] += b * q.u[k][j];
      }
    }
  }
  T* vcoords[3] = {q.pv[0], q.pv[1], q.pv[2]};
  tap_block(vcoords, count, p.D, p.H, p.W, p.border, p.planar, p.nearest, q.vt);
}

// Calls body(x0, y, z, count, s) for the blocks of output voxels [begin, end): runs along x,
// split at row ends and every kBlock voxels; s is the flat index of the first voxel.
template <typename Body>
WARP3D_INLINE void for_each_block(int64_t begin, int64_t end, int64_t oH, int64_t oW,
                                  const Body& body) {
  int64_t s = begin;
  while (s < end) {
    const int64_t x0 = s % oW, row = s / oW;
    const int count = int(std::min<int64_t>({kBlock, oW - x0, end - s}));
    body(x0, row % oH, row / oH, count, s);
    s += count;
  }
}

template <typename T>
void forward_blocks(const Problem<T>& p, int64_t n, int64_t begin, int64_t end, T* out) {
  const int64_t S = p.oD * p.oH * p.oW, plane = p.D * p.H * p.W;
  Block<T, false> q;
  for_each_block(begin, end, p.oH, p.oW, [&](int64_t x0, int64_t y, int64_t z, int count,
                                             int64_t s) {
    q.count = count, q.s = s;
    locate_block(p, n, x0, y, z, q);
    for (int64_t c = 0; c < p.C; ++c) {
      const T* vp = p.vol + (n * p.C + c) * plane;
      T* o = out + (n * p.C + c) * S + s;
      if (p.nearest) {
        sample_nearest(vp, q.vt, count, !p.border, o);
      } else {
        sample_block<false>(vp, q.vt, count, p.border, o);
      }
    }
  });
}

// Adds to acc[0..3] the sums of g·x, g·y, g·z and g over the block (one row of a map's grad).
template <typename T>
WARP3D_INLINE void add_row_sums(const T* g, const T* x, T y, T z, int count, double* acc) {
  T along = 0, total = 0;
#pragma omp simd reduction(+ : along, total)
  for (int j = 0; j < count; ++j) along += g[j] * x[j], total += g[j];
  acc[0] += double(along), acc[1] += double(total) * double(y);
  acc[2] += double(total) * double(z), acc[3] += double(total);
}

// DERIV: the gradient wrt Mu is needed, and with it the derivatives of u.
// The gradients of sample n's voxels [begin, end): the volume's and the field's accumulated in
// gvol and gfield, the maps' added to sums.
template <bool ATOMIC, bool DERIV, typename T>
void backward_blocks(const Problem<T>& p, int64_t n, int64_t begin, int64_t end, const T* gout,
                     const Target<T>& gvol, const Target<T>& gfield, const Needs& needs,
                     double* sums) {
  double acc[kSlots] = {};
  const int64_t S = p.oD * p.oH * p.oW, plane = p.D * p.H * p.W;
  const bool coordinates = needs.coordinates();
  Block<T, DERIV> q;
  T gpv[3][kBlock], gu[kBlock], gpu[3][kBlock], d[3][kBlock], scratch[kBlock];
  for_each_block(begin, end, p.oH, p.oW, [&](int64_t x0, int64_t y, int64_t z, int count,
                                             int64_t s) {
    q.count = count, q.s = s;
    locate_block(p, n, x0, y, z, q);
    for (int r = 0; r < 3; ++r) std::fill_n(gpv[r], count, T(0));
    for (int64_t c = 0; c < p.C; ++c) {
      const T* g = gout + (n * p.C + c) * S + s;
      if (needs.volume) {
        scatter<ATOMIC>(gvol.plane(c), gvol.lo, q.vt, g, count);
      }
      if (!coordinates) continue;
      sample_block<true>(p.vol + (n * p.C + c) * plane, q.vt, count, p.border, scratch, d[0],
                         d[1], d[2]);
#pragma omp simd
      for (int j = 0; j < count; ++j) {
        gpv[0][j] += g[j] * d[0][j], gpv[1][j] += g[j] * d[1][j], gpv[2][j] += g[j] * d[2][j];
      }
    }
    if (!coordinates) return;
    const T* slopes[3] = {q.vt.x.slope, q.vt.y.slope, q.vt.z.slope};
    for (int r = 0; r < 3; ++r) {
#pragma omp simd
      for (int j = 0; j < count; ++j) gpv[r][j] *= slopes[r][j];
      if (needs.mv) add_row_sums(gpv[r], q.x, q.y, q.z, count, acc + r * 4);
    }
    if (p.disp == nullptr) return;
    if constexpr (DERIV) {
      for (int r = 0; r < 3; ++r) std::fill_n(gpu[r], count, T(0));
    }
    for (int64_t k = 0; k < p.K; ++k) {
      if (needs.b) {
        for (int r = 0; r < 3; ++r) {
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int j = 0; j < count; ++j) sum += gpv[r][j] * q.u[k][j];
          acc[24 + r * p.K + k] += double(sum);
        }
      }
      const T b0 = p.b[k], b1 = p.b[p.K + k], b2 = p.b[2 * p.K + k];
      if (needs.displacement && p.direct) {  // the voxel's own: written once
        T* gp = gfield.plane(k) + (s - gfield.lo);
#pragma omp simd
        for (int j = 0; j < count; ++j) gp[j] = b0 * gpv[0][j] + b1 * gpv[1][j] + b2 * gpv[2][j];
        if constexpr (!DERIV) continue;
      }
#pragma omp simd
      for (int j = 0; j < count; ++j) gu[j] = b0 * gpv[0][j] + b1 * gpv[1][j] + b2 * gpv[2][j];
      if (needs.displacement && !p.direct) {
        scatter<ATOMIC>(gfield.plane(k), gfield.lo, q.ut, gu, count);
      }
      if constexpr (DERIV) {
#pragma omp simd
        for (int j = 0; j < count; ++j) {
          gpu[0][j] += gu[j] * q.du[k][0][j];
          gpu[1][j] += gu[j] * q.du[k][1][j];
          gpu[2][j] += gu[j] * q.du[k][2][j];
        }
      }
    }
    if constexpr (DERIV) {
      const T* uslopes[3] = {q.ut.x.slope, q.ut.y.slope, q.ut.z.slope};
      for (int r = 0; r < 3; ++r) {
#pragma omp simd
        for (int j = 0; j < count; ++j) gpu[r][j] *= uslopes[r][j];
        add_row_sums(gpu[r], q.x, q.y, q.z, count, acc + 12 + r * 4);
      }
    }
  });
  for (int64_t j = 0; j < kSlots; ++j) sums[j] += acc[j];
}

// ---- scatters without atomics when a thread does not own whole samples ----------------------
//
// A sample's voxels are split into one contiguous range per thread (slabs along z); each range
// first finds the grid offsets its scatters reach (a window), accumulates its gradients into a
// private copy of that window, and the windows are then added into the gradients. Smooth
// warps reach little beyond their own slab, so the windows together are about one gradient in
// size; where they would be larger (a rotation by a right angle reaches the whole volume from
// every slab) the atomic adds are used instead.

// Widens [lo, hi) to the grid offsets the taps of a block reach.
template <typename T>
WARP3D_INLINE void reach(const TapBlock<T>& t, int count, int32_t& lo, int32_t& hi) {
  int32_t low = lo, high = hi;
#pragma omp simd reduction(min : low) reduction(max : high)
  for (int j = 0; j < count; ++j) {
    low = std::min(low, t.base[j]);
    high = std::max(high, t.base[j] + t.sx[j] + t.sy[j] + t.sz[j] + 1);
  }
  lo = low, hi = high;
}

// The grid offsets [lo, hi) that sample n's voxels [begin, end) scatter to: in the volume
// (bounds[0..1]) and in an interpolated field (bounds[2..3]).
template <typename T>
void scatter_bounds(const Problem<T>& p, int64_t n, int64_t begin, int64_t end,
                    int32_t* bounds) {
  int32_t vlo = std::numeric_limits<int32_t>::max(), vhi = 0;
  int32_t ulo = std::numeric_limits<int32_t>::max(), uhi = 0;
  Block<T, false> q;
  for_each_block(begin, end, p.oH, p.oW, [&](int64_t x0, int64_t y, int64_t z, int count,
                                             int64_t s) {
    q.count = count, q.s = s;
    locate_block(p, n, x0, y, z, q);
    reach(q.vt, count, vlo, vhi);
    if (p.disp != nullptr && !p.direct) reach(q.ut, count, ulo, uhi);
  });
  bounds[0] = vlo, bounds[1] = std::max(vhi, vlo);
  bounds[2] = ulo, bounds[3] = std::max(uhi, ulo);
}

// Adds to grad [channels, size] the offsets [from, to) of every window; window r holds
// channels × (hi - lo) values for offsets [lo, hi).
template <typename T>
void add_windows(T* grad, int64_t channels, int64_t size, int64_t from, int64_t to,
                 const std::vector<T*>& windows, const std::vector<int32_t>& lo,
                 const std::vector<int32_t>& hi) {
  for (size_t r = 0; r < windows.size(); ++r) {
    const int64_t first = std::max<int64_t>(from, lo[r]), last = std::min<int64_t>(to, hi[r]);
    const int64_t length = hi[r] - lo[r];
    for (int64_t c = 0; c < channels && first < last; ++c) {
      T* out = grad + c * size;
      const T* in = windows[r] + c * length;
#pragma omp simd
      for (int64_t i = first; i < last; ++i) out[i] += in[i - lo[r]];
    }
  }
}

// The backward of sample n with its voxels split into one range per thread, through private
// windows (see above) or, where those would exceed twice the gradients they stand for, atomic
// adds. gvol and gdisp are the sample's zero-initialised gradients (gvol: when needs.volume;
// gdisp: when needs.displacement); sums: kSlots per thread. One parallel region, so a busy
// machine delays one wake-up of the threads, not three.
template <bool DERIV, typename T>
void backward_windowed(const Problem<T>& p, int64_t n, int64_t threads, const T* gout, T* gvol,
                       T* gdisp, const Needs& needs, double* sums) {
  const int64_t S = p.oD * p.oH * p.oW, plane = p.D * p.H * p.W;
  const int64_t uplane = p.d * p.h * p.w;
  const bool field = needs.displacement && !p.direct;  // scattered into the field
  const int64_t budget = 2 * ((needs.volume ? p.C * plane : 0) + (field ? p.K * uplane : 0));
  std::vector<int32_t> vlo(threads), vhi(threads), ulo(threads), uhi(threads);
  std::vector<T*> vwin(threads), uwin(threads);
  std::unique_ptr<T[]> buffer;
  bool windowed = false;
#pragma omp parallel num_threads(threads)
  {
    const int64_t team = omp_get_num_threads(), r = omp_get_thread_num();
    const int64_t begin = S * r / team, end = S * (r + 1) / team;
    int32_t bounds[4];
    scatter_bounds(p, n, begin, end, bounds);
    vlo[r] = bounds[0], vhi[r] = needs.volume ? bounds[1] : bounds[0];
    ulo[r] = bounds[2], uhi[r] = field ? bounds[3] : bounds[2];
#pragma omp barrier
#pragma omp single
    {
      vlo.resize(team), vhi.resize(team), ulo.resize(team), uhi.resize(team);
      vwin.resize(team), uwin.resize(team);
      int64_t total = 0;
      for (int64_t t = 0; t < team; ++t) {
        total += p.C * (vhi[t] - vlo[t]) + p.K * (uhi[t] - ulo[t]);
      }
      if (total <= budget) buffer.reset(new (std::nothrow) T[std::max<int64_t>(total, 1)]);
      windowed = buffer != nullptr;
      T* next = buffer.get();
      for (int64_t t = 0; t < team && windowed; ++t) {
        vwin[t] = next, next += p.C * (vhi[t] - vlo[t]);
        uwin[t] = next, next += p.K * (uhi[t] - ulo[t]);
      }
    }  // (a barrier)
    const Target<T> direct_field{gdisp, uplane, 0};
    if (windowed) {
      std::fill(vwin[r], uwin[r] + p.K * (uhi[r] - ulo[r]), T(0));
      const Target<T> tv{vwin[r], vhi[r] - vlo[r], vlo[r]};
      const Target<T> tu = field ? Target<T>{uwin[r], uhi[r] - ulo[r], ulo[r]} : direct_field;
      backward_blocks<false, DERIV>(p, n, begin, end, gout, tv, tu, needs, sums + r * kSlots);
    } else {
      backward_blocks<true, DERIV>(p, n, begin, end, gout, Target<T>{gvol, plane, 0},
                                   direct_field, needs, sums + r * kSlots);
    }
    if (windowed) {
#pragma omp barrier
      if (needs.volume) {
        add_windows(gvol, p.C, plane, plane * r / team, plane * (r + 1) / team, vwin, vlo, vhi);
      }
      if (field) {
        add_windows(gdisp, p.K, uplane, uplane * r / team, uplane * (r + 1) / team, uwin, ulo,
                    uhi);
      }
    }
  }
}

// Whether the block code's int32 offsets cover every plane of the problem.
template <typename T>
bool fits_int32(const Problem<T>& p) {
  constexpr int64_t limit = int64_t(1) << 31;
  return p.D * p.H * p.W < limit && (p.disp == nullptr || p.d * p.h * p.w < limit);
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
      if (fits_int32(problems[n])) {
        forward_blocks(problems[n], n, begin, end, o);
      } else if (nearest) {
        forward_chunk<true>(problems[n], n, begin, end, o);
      } else {
        forward_chunk<false>(problems[n], n, begin, end, o);
      }
    });
  });
  return out;
}

// Returns the gradients wrt (volume, displacement, Mv, Mu, B) for needs = which of them are
// wanted: the volume's and the displacement's are empty when not wanted, the maps' zero; all
// but Mv's are empty without a displacement. The maps' are summed in double.
std::vector<at::Tensor> warp3d_backward(
    const at::Tensor& grad_out, const at::Tensor& volume,
    const c10::optional<at::Tensor>& displacement, const at::Tensor& mv,
    const c10::optional<at::Tensor>& mu, const c10::optional<at::Tensor>& b, bool nearest,
    bool border, const std::vector<bool>& needs_input) {
  check_inputs(volume, displacement, mv, mu, b, grad_out.sizes().slice(2));
  const int64_t N = volume.size(0), C = volume.size(1);
  TORCH_CHECK(grad_out.dim() == 5 && grad_out.size(0) == N && grad_out.size(1) == C &&
                  grad_out.is_contiguous() && grad_out.scalar_type() == volume.scalar_type(),
              "warp3d: grad_out must be contiguous [N, C, *size] of the volume's dtype");
  TORCH_CHECK(needs_input.size() == 5, "warp3d: needs must hold 5 flags (volume, displacement, "
              "Mv, Mu, B)");
  const bool has_disp = displacement.has_value();
  // nearest mode passes no gradient to the coordinates (as grid_sample)
  const bool linear = !nearest;
  const Needs needs{needs_input[0], has_disp && linear && needs_input[1],
                    linear && needs_input[2], has_disp && linear && needs_input[3],
                    has_disp && linear && needs_input[4]};
  const auto size = grad_out.sizes().slice(2);
  const int64_t S = size[0] * size[1] * size[2];
  const int64_t chunks = num_chunks(S);
  // per sample, a slot of sums per chunk (or per range of backward_windowed)
  const int64_t slots = std::max<int64_t>(chunks, at::get_num_threads());
  auto partial = at::zeros({N, slots, kSlots}, volume.options().dtype(at::kDouble));
  auto grad_volume = needs.volume ? at::zeros_like(volume) : at::empty({0}, volume.options());
  auto grad_disp = at::empty({0}, volume.options());
  AT_DISPATCH_FLOATING_TYPES(volume.scalar_type(), "warp3d_backward", [&] {
    std::vector<Problem<scalar_t>> problems;
    bool direct = true;  // every sample's field gradient is written once per voxel
    for (int64_t n = 0; n < N; ++n) {
      problems.push_back(make_problem<scalar_t>(volume, displacement, mv, mu, b, n, nearest,
                                                border, size));
      direct = direct && problems.back().direct;
    }
    if (needs_input[1] && has_disp) {  // nearest: zeros, as grid_sample
      grad_disp = direct && linear ? at::empty_like(*displacement)
                                   : at::zeros_like(*displacement);
    }
    // Scatters: into the volume's gradient, and the field's where u is interpolated.
    const bool scatters = needs.volume || (needs.displacement && !direct);
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    scalar_t* gv = needs.volume ? grad_volume.data_ptr<scalar_t>() : nullptr;
    scalar_t* gu = needs.displacement ? grad_disp.data_ptr<scalar_t>() : nullptr;
    // one channel of one sample
    const int64_t volume_size = volume.size(2) * volume.size(3) * volume.size(4);
    const int64_t field_size =
        has_disp ? displacement->size(2) * displacement->size(3) * displacement->size(4) : 0;
    double* acc = partial.data_ptr<double>();
    // (sample n, voxels [begin, end)) with its sums in slot k, plain or atomic adds
    auto run = [&](auto atomic, int64_t n, int64_t k, int64_t begin, int64_t end) {
      constexpr bool kAtomic = decltype(atomic)::value;
      const Problem<scalar_t>& p = problems[n];
      double* sums = acc + (n * slots + k) * kSlots;
      scalar_t* gvn = needs.volume ? gv + n * C * volume_size : nullptr;
      scalar_t* gun = needs.displacement ? gu + n * p.K * field_size : nullptr;
      if (!fits_int32(p)) {
        if (nearest) {
          backward_chunk<kAtomic, true>(p, n, begin, end, g, gv, gu, needs, sums);
        } else {
          backward_chunk<kAtomic, false>(p, n, begin, end, g, gv, gu, needs, sums);
        }
      } else {
        const Target<scalar_t> tv{gvn, volume_size, 0};
        const Target<scalar_t> tu{gun, field_size, 0};
        if (needs.mu) {
          backward_blocks<kAtomic, true>(p, n, begin, end, g, tv, tu, needs, sums);
        } else {
          backward_blocks<kAtomic, false>(p, n, begin, end, g, tv, tu, needs, sums);
        }
      }
    };
    auto chunks_of = [&](auto atomic, int64_t samples, int64_t first) {
      for_each_chunk(samples, S, [&](int64_t n, int64_t k, int64_t begin, int64_t end) {
        run(atomic, first + n, k, begin, end);
      });
    };
    const int64_t threads = at::get_num_threads();
    if (!scatters) {
      chunks_of(std::false_type{}, N, 0);
    } else if (N >= threads || N * S < kParallelGrain) {
      // each thread owns whole samples (or one thread does all): plain adds
      at::parallel_for(0, N, N * S < kParallelGrain ? N : 1, [&](int64_t lo, int64_t hi) {
        for (int64_t n = lo; n < hi; ++n) {
          for (int64_t k = 0; k < chunks; ++k) {
            run(std::false_type{}, n, k, k * kChunk, std::min(S, (k + 1) * kChunk));
          }
        }
      });
    } else {
      for (int64_t n = 0; n < N; ++n) {
        const Problem<scalar_t>& p = problems[n];
        double* sums = acc + n * slots * kSlots;
        scalar_t* gvn = needs.volume ? gv + n * C * volume_size : nullptr;
        scalar_t* gun = needs.displacement ? gu + n * p.K * field_size : nullptr;
        if (!fits_int32(p)) {
          chunks_of(std::true_type{}, 1, n);
        } else if (needs.mu) {
          backward_windowed<true>(p, n, threads, g, gvn, gun, needs, sums);
        } else {
          backward_windowed<false>(p, n, threads, g, gvn, gun, needs, sums);
        }
      }
    }
  });
  const auto sums = partial.sum(1);  // [N, kSlots]
  auto maps = [&](int64_t first, int64_t rows, int64_t columns) {
    return sums.slice(1, first, first + rows * columns).reshape({N, rows, columns})
        .to(volume.scalar_type(), /*non_blocking=*/false, /*copy=*/true);  // never aliases
  };
  if (!has_disp) {
    return {grad_volume, at::empty({0}, volume.options()), maps(0, 3, 4),
            at::empty({0}, volume.options()), at::empty({0}, volume.options())};
  }
  return {grad_volume, grad_disp, maps(0, 3, 4), maps(12, 3, 4),
          maps(24, 3, displacement->size(1))};
}

}  // namespace medtune
