// The CPU reference body of arcattn._xmx: the device kernel's algorithm, step for step, in plain C++.
//
// It exists so that the binding, its argument checks, the loader and the kernel's *arithmetic* (grid, per-head
// surfaces, head-dim padding, key tail, tile layouts, online softmax) are tested on any machine. It models the
// device instructions the kernel uses, with the semantics documented for them:
//   load_2d (plain)        tile[r][c] = surface(Y + r, X + c); reads outside the surface give 0
//   load_2d (transposed)   32-bit elements, result row c holds column X + c of rows Y..Y+BH-1
//   load_2d (transformed)  VNNI: out[(r/2)][c][r%2] = surface(Y + r, X + c) for 16-bit elements
//   store_2d               writes outside the surface are dropped
//   dpas<8, M>             C[M x 16] += A[M x 16] (row-major) * B[16 x 16] (VNNI-packed), fp32 accumulate
// and it rounds P to fp16/bf16 before P*V, as the device must (DPAS takes 16-bit inputs). It computes in fp32
// from fp16/bf16 inputs. Speed is irrelevant here: tests use small shapes.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "abi.hpp"
#include "schedule.hpp"

namespace arcattn {
namespace cpu {

using xmx::Surface;

// -- 16-bit float conversions (round to nearest even, like the GPU's conversions) ---------------------------
inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // subnormal: value = man * 2^-24
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

inline uint16_t float_to_half(float f) {
  const uint32_t x = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u);  // inf / nan
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow to inf
  if (ax < 0x38800000u) {                        // below the smallest normal half: subnormal or zero
    const float v = bits_to_float(ax) * 16777216.0f;  // * 2^24: the subnormal's integer mantissa
    return sign | static_cast<uint16_t>(std::nearbyint(v));  // default rounding mode: to nearest even
  }
  const uint32_t exp = (ax >> 23) - 112;
  uint32_t man = ax & 0x7fffffu;
  uint32_t h = (exp << 10) | (man >> 13);
  const uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: still correct
  return sign | static_cast<uint16_t>(h);
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  const uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet nan
  const uint32_t rounded = x + 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

struct Codec {
  int dtype;
  float to_float(uint16_t v) const { return dtype == kFloat16 ? half_to_float(v) : bf16_to_float(v); }
  uint16_t from_float(float f) const { return dtype == kFloat16 ? float_to_half(f) : float_to_bf16(f); }
};

// -- models of the 2-D block messages -------------------------------------------------------------------------
template <typename E>
inline bool inside(const Surface& s, int x, int y) {
  return x >= 0 && y >= 0 && static_cast<uint64_t>(x + 1) * sizeof(E) <= s.width &&
         static_cast<uint32_t>(y) < s.height;
}

template <typename E>
inline E surface_read(const Surface& s, int x, int y) {
  if (!inside<E>(s, x, y)) return E(0);
  E v;
  std::memcpy(&v, reinterpret_cast<const void*>(s.base + static_cast<uint64_t>(y) * s.pitch + x * sizeof(E)),
              sizeof(E));
  return v;
}

template <int BW, int BH>  // plain: out[r * BW + c]
inline void load_2d(const Surface& s, int x, int y, uint16_t* out) {
  for (int r = 0; r < BH; ++r)
    for (int c = 0; c < BW; ++c) out[r * BW + c] = surface_read<uint16_t>(s, x + c, y + r);
}

template <int BW, int BH>  // 32-bit elements, transposed: out[c * BH + r]; x in dwords
inline void load_2d_transposed(const Surface& s, int x, int y, uint32_t* out) {
  for (int r = 0; r < BH; ++r)
    for (int c = 0; c < BW; ++c) out[c * BH + r] = surface_read<uint32_t>(s, x + c, y + r);
}

template <int BW, int BH>  // 16-bit elements, VNNI-transformed: pairs of rows interleaved
inline void load_2d_vnni(const Surface& s, int x, int y, uint16_t* out) {
  for (int r = 0; r < BH; ++r)
    for (int c = 0; c < BW; ++c) out[(r / 2) * (2 * BW) + 2 * c + (r % 2)] = surface_read<uint16_t>(s, x + c, y + r);
}

template <int BW, int BH>
inline void store_2d(const Surface& s, int x, int y, const uint16_t* in) {
  for (int r = 0; r < BH; ++r)
    for (int c = 0; c < BW; ++c)
      if (inside<uint16_t>(s, x + c, y + r))
        std::memcpy(reinterpret_cast<void*>(s.base + static_cast<uint64_t>(y + r) * s.pitch + (x + c) * 2),
                    &in[r * BW + c], 2);
}

// dpas<8, M>: C[M x 16] += A[M x 16] * B[16 x 16]; B VNNI-packed: B(k, n) = b[(k / 2) * 32 + 2 * n + k % 2].
template <int M>
inline void dpas(float* c, const uint16_t* b, const uint16_t* a, const Codec& cv) {
  for (int r = 0; r < M; ++r)
    for (int n = 0; n < xmx::kTile; ++n) {
      float acc = c[r * xmx::kTile + n];
      for (int k = 0; k < xmx::kTile; ++k)
        acc += cv.to_float(a[r * xmx::kTile + k]) * cv.to_float(b[(k / 2) * 32 + 2 * n + (k % 2)]);
      c[r * xmx::kTile + n] = acc;
    }
}

// -- one thread's work: M query rows of head (b, h) -----------------------------------------------------------
template <int DP>
void attention_rows(const xmx::KernelParams& p, const Codec& cv, int b, int h, int row0) {
  constexpr int M = xmx::rows_per_thread(DP);
  constexpr int DT = DP / xmx::kTile;
  constexpr int T = xmx::kTile;
  const Surface qs = xmx::head_surface(p.q, p.qs, b, h, p.Sq, p.D, 2);
  const Surface ks = xmx::head_surface(p.k, p.ks, b, h, p.Sk, p.D, 2);
  const Surface vs = xmx::head_surface(p.v, p.vs, b, h, p.Sk, p.D, 2);
  const Surface os = xmx::head_surface(p.o, p.os, b, h, p.Sq, p.D, 2);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  uint16_t q[DT][M * T];  // Q tiles, loaded once; columns >= D read as 0 (outside the surface)
  for (int j = 0; j < DT; ++j) load_2d<T, M>(qs, qs.x0 + T * j, qs.y0 + row0, q[j]);

  float o[DT][M * T] = {};
  float m[M], l[M];
  for (int r = 0; r < M; ++r) {
    m[r] = neg_inf;
    l[r] = 0.f;
  }

  for (int kb = 0; kb < p.Sk; kb += xmx::kKeyBlock) {
    const bool chunk1 = kb + xmx::kKeyChunk < p.Sk;  // the second 16 keys exist (uniform per thread)
    float s[2][M * T] = {};
    for (int j = 0; j < DT; ++j) {
      uint32_t kt[T * T / 2];  // K^T tile in VNNI form, straight from a transposed 32-bit load
      load_2d_transposed<T / 2, T>(ks, (ks.x0 + T * j) / 2, ks.y0 + kb, kt);
      dpas<M>(s[0], reinterpret_cast<const uint16_t*>(kt), q[j], cv);
      if (chunk1) {
        load_2d_transposed<T / 2, T>(ks, (ks.x0 + T * j) / 2, ks.y0 + kb + xmx::kKeyChunk, kt);
        dpas<M>(s[1], reinterpret_cast<const uint16_t*>(kt), q[j], cv);
      }
    }
    float mnew[M], alpha[M];
    bool rescale = false;
    for (int r = 0; r < M; ++r) {
      float bm = neg_inf;
      for (int c = 0; c < 2; ++c)
        for (int n = 0; n < T; ++n) {
          float& x = s[c][r * T + n];
          x *= p.scale_log2;
          if (kb + c * xmx::kKeyChunk + n >= p.Sk) x = neg_inf;  // key tail (and an absent second chunk)
          bm = std::max(bm, x);
        }
      mnew[r] = std::max(m[r], bm);
      rescale = rescale || mnew[r] > m[r];
    }
    uint16_t pt[2][M * T];  // P in the input dtype: DPAS A operands
    for (int r = 0; r < M; ++r) {
      float sum = 0.f;
      for (int c = 0; c < 2; ++c)
        for (int n = 0; n < T; ++n) {
          const float e = std::exp2(s[c][r * T + n] - mnew[r]);
          sum += e;  // the row sum uses P before rounding, like the device (fp32 registers)
          pt[c][r * T + n] = cv.from_float(e);
        }
      alpha[r] = std::exp2(m[r] - mnew[r]);
      l[r] = l[r] * alpha[r] + sum;
      m[r] = mnew[r];
    }
    if (rescale)  // only when some row's max rose: the device makes the same uniform branch
      for (int j = 0; j < DT; ++j)
        for (int r = 0; r < M; ++r)
          for (int n = 0; n < T; ++n) o[j][r * T + n] *= alpha[r];
    for (int j = 0; j < DT; ++j) {
      uint16_t vt[T * T];
      load_2d_vnni<T, T>(vs, vs.x0 + T * j, vs.y0 + kb, vt);
      dpas<M>(o[j], vt, pt[0], cv);
      if (chunk1) {
        load_2d_vnni<T, T>(vs, vs.x0 + T * j, vs.y0 + kb + xmx::kKeyChunk, vt);
        dpas<M>(o[j], vt, pt[1], cv);
      }
    }
  }

  for (int j = 0; j < DT; ++j) {
    uint16_t out[M * T];
    for (int r = 0; r < M; ++r) {
      const float inv = 1.0f / l[r];
      for (int n = 0; n < T; ++n) out[r * T + n] = cv.from_float(o[j][r * T + n] * inv);
    }
    store_2d<T, M>(os, os.x0 + T * j, os.y0 + row0, out);  // padded columns and rows >= Sq fall outside: dropped
  }
}

template <int DP>
void run_grid(const xmx::KernelParams& p, const Codec& cv) {
  constexpr int M = xmx::rows_per_thread(DP);
  const int groups = p.B * p.H * p.groups_per_head;
  for (int g = 0; g < groups; ++g)
    for (int t = 0; t < xmx::kThreadsPerGroup; ++t) {
      int b, h, row0;
      if (xmx::locate(p, M, g, t, b, h, row0)) attention_rows<DP>(p, cv, b, h, row0);
    }
}

// Synchronous: returns when `out` is written. `a` has been validated.
inline void forward(const ForwardArgs& a) {
  const xmx::KernelParams p = kernel_params(a);
  const Codec cv{a.dtype};
  switch (xmx::padded_head_dim(a.D)) {
    case 48: run_grid<48>(p, cv); break;
    case 64: run_grid<64>(p, cv); break;
    case 80: run_grid<80>(p, cv); break;
    case 128: run_grid<128>(p, cv); break;
    case 160: run_grid<160>(p, cv); break;
    default: break;  // unreachable: validate() admits only kHeadDims
  }
}

}  // namespace cpu
}  // namespace arcattn
