// A host model of the ESIMD subset that kernel/xmx_attention_esimd.hpp uses. NOT Intel's header.
//
// Only the CPU reference build puts extension/src/host_model/ on the include path. There, the real kernel source
// compiles with g++ and runs on the CPU (arcattn._xmx.forward_kernel_model), so CI checks the kernel *text*:
// C++ errors, template arguments against the documented restrictions (static_asserts below, from
// sycl_ext_intel_esimd_functions.md and the DPAS section of sycl_ext_intel_esimd.md), operand sizes, tile
// layouts and indexing. Semantics follow the documentation as we read it (the same reading as cpu_reference.hpp):
// simd/simd_view element-wise operations, select/bit_cast_view/replicate regions, 2-D block loads that return 0
// outside the surface, transposed and VNNI-transformed loads, stores clipped to the surface, dpas on packed
// tiles. It proves nothing about Intel's compiler or hardware; it is written for clarity, not speed.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>

namespace sycl {
namespace ext {
namespace intel {
namespace esimd {

template <typename T, int N> class simd;
template <int N> class simd_mask;

namespace model {

constexpr int next_pow2(int n) {
  int p = 1;
  while (p < n) p *= 2;
  return p;
}

template <typename T> struct is_simd : std::false_type {};
template <typename T, int N> struct is_simd<simd<T, N>> : std::true_type {};

// A region of another object's bytes: N elements of T at byte offsets off[i] from base. All selects, bit casts
// and 2-D regions are views of this one kind; reading copies out, writing copies in (never rebinding).
template <typename T, int N>
class view {
 public:
  using element_type = T;
  static constexpr int length = N;
  unsigned char* base = nullptr;
  std::array<size_t, N> off{};

  view() = default;
  explicit view(unsigned char* b) : base(b) {}
  view(const view&) = default;

  T get(int i) const {
    T v;
    std::memcpy(&v, base + off[i], sizeof(T));
    return v;
  }
  void put(int i, T v) { std::memcpy(base + off[i], &v, sizeof(T)); }
  simd<T, N> read() const;
  operator simd<T, N>() const { return read(); }
  template <typename U, typename = std::enable_if_t<!std::is_same_v<U, T>>>
  operator simd<U, N>() const { return simd<U, N>(read()); }

  view& operator=(const simd<T, N>& v);
  view& operator=(const view& v) { return *this = v.read(); }
  template <typename U, int N2> view& operator=(const view<U, N2>& v) { return *this = simd<T, N>(v.read()); }
  view& operator*=(const simd<T, N>& v);

  template <int Size, int Stride>
  view<T, Size> select(int offset) const {
    static_assert(offset_ok<Size, Stride>(), "select out of range");
    view<T, Size> r(base);
    for (int i = 0; i < Size; ++i) r.off[i] = off[offset + i * Stride];
    return r;
  }
  template <int Size, int Stride> static constexpr bool offset_ok() { return Size >= 1 && (Size - 1) * Stride < N; }
};

// The 2-D view made by bit_cast_view<T, H, W>(): select<H', VS, W', HS>(row, col) picks a sub-block.
template <typename T, int H, int W>
class view2d : public view<T, H * W> {
 public:
  template <int SH, int VS, int SW, int HS>
  view<T, SH * SW> select(int row, int col) const {
    static_assert((SH - 1) * VS < H && (SW - 1) * HS < W, "2-D select out of range");
    view<T, SH * SW> r(this->base);
    for (int i = 0; i < SH; ++i)
      for (int j = 0; j < SW; ++j) r.off[i * SW + j] = this->off[(row + i * VS) * W + (col + j * HS)];
    return r;
  }
};

}  // namespace model

template <int N>
class simd_mask {
 public:
  std::array<uint16_t, N> v{};
  uint16_t operator[](int i) const { return v[i]; }
  uint16_t any() const {
    for (int i = 0; i < N; ++i)
      if (v[i]) return 1;
    return 0;
  }
};

template <typename T, int N>
class simd {
 public:
  using element_type = T;
  static constexpr int length = N;
  std::array<T, N> v;

  simd() : v{} {}
  template <typename U, typename = std::enable_if_t<std::is_arithmetic_v<U> || std::is_same_v<U, T>>>
  simd(U x) {  // broadcast
    for (auto& e : v) e = static_cast<T>(x);
  }
  simd(T base, T step) {  // iota: base, base + step, ...
    for (int i = 0; i < N; ++i) v[i] = static_cast<T>(base + step * i);
  }
  template <typename U, typename = std::enable_if_t<!std::is_same_v<U, T>>>
  simd(const simd<U, N>& o) {  // element-wise conversion
    for (int i = 0; i < N; ++i) v[i] = static_cast<T>(o.v[i]);
  }
  simd(const model::view<T, N>& w) { *this = w.read(); }
  template <typename U, typename = std::enable_if_t<!std::is_same_v<U, T>>>
  simd(const model::view<U, N>& w) : simd(simd<U, N>(w.read())) {}

  T operator[](int i) const { return v[i]; }
  T& operator[](int i) { return v[i]; }

  model::view<T, N> whole() {
    model::view<T, N> r(reinterpret_cast<unsigned char*>(v.data()));
    for (int i = 0; i < N; ++i) r.off[i] = i * sizeof(T);
    return r;
  }
  template <int Size, int Stride>
  model::view<T, Size> select(int offset) {
    static_assert(Size >= 1 && (Size - 1) * Stride < N, "select out of range");
    return whole().template select<Size, Stride>(offset);
  }
  template <typename U>
  model::view<U, N * sizeof(T) / sizeof(U)> bit_cast_view() {
    static_assert((N * sizeof(T)) % sizeof(U) == 0, "bit_cast_view size");
    constexpr int M = N * sizeof(T) / sizeof(U);
    model::view<U, M> r(reinterpret_cast<unsigned char*>(v.data()));
    for (int i = 0; i < M; ++i) r.off[i] = i * sizeof(U);
    return r;
  }
  template <typename U, int H, int W>
  model::view2d<U, H, W> bit_cast_view() {
    static_assert(H * W * sizeof(U) == N * sizeof(T), "bit_cast_view<U, H, W> size");
    model::view2d<U, H, W> r;
    r.base = reinterpret_cast<unsigned char*>(v.data());
    for (int i = 0; i < H * W; ++i) r.off[i] = i * sizeof(U);
    return r;
  }
  template <int REP>
  simd<T, N * REP> replicate() const {
    simd<T, N * REP> r;
    for (int i = 0; i < REP; ++i)
      for (int j = 0; j < N; ++j) r.v[i * N + j] = v[j];
    return r;
  }
  template <int REP, int VS, int W, int HS>
  simd<T, REP * W> replicate_vs_w_hs(int offset) const {
    static_assert(VS >= 0 && HS >= 0, "strides");
    simd<T, REP * W> r;
    for (int i = 0; i < REP; ++i)
      for (int j = 0; j < W; ++j) r.v[i * W + j] = v[offset + i * VS + j * HS];
    return r;
  }
  void merge(const simd& val, const simd_mask<N>& m) {
    for (int i = 0; i < N; ++i)
      if (m.v[i]) v[i] = val.v[i];
  }

  simd& operator*=(const simd& o) {
    for (int i = 0; i < N; ++i) v[i] = v[i] * o.v[i];
    return *this;
  }
  simd& operator*=(T s) { return *this *= simd(s); }
};

#define ARCATTN_MODEL_BINOP(OP)                                                       \
  template <typename T, int N>                                                        \
  simd<T, N> operator OP(const simd<T, N>& a, const simd<T, N>& b) {                  \
    simd<T, N> r;                                                                     \
    for (int i = 0; i < N; ++i) r.v[i] = a.v[i] OP b.v[i];                            \
    return r;                                                                         \
  }                                                                                   \
  template <typename T, int N, typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>> \
  simd<T, N> operator OP(const simd<T, N>& a, S b) { return a OP simd<T, N>(static_cast<T>(b)); }
ARCATTN_MODEL_BINOP(+)
ARCATTN_MODEL_BINOP(-)
ARCATTN_MODEL_BINOP(*)
#undef ARCATTN_MODEL_BINOP

#define ARCATTN_MODEL_CMP(OP)                                                         \
  template <typename T, int N>                                                        \
  simd_mask<N> operator OP(const simd<T, N>& a, const simd<T, N>& b) {                \
    simd_mask<N> r;                                                                   \
    for (int i = 0; i < N; ++i) r.v[i] = a.v[i] OP b.v[i];                            \
    return r;                                                                         \
  }                                                                                   \
  template <typename T, int N, typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>> \
  simd_mask<N> operator OP(const simd<T, N>& a, S b) { return a OP simd<T, N>(static_cast<T>(b)); }
ARCATTN_MODEL_CMP(>)
ARCATTN_MODEL_CMP(>=)
#undef ARCATTN_MODEL_CMP

namespace model {
template <typename T, int N>
simd<T, N> view<T, N>::read() const {
  simd<T, N> r;
  for (int i = 0; i < N; ++i) r.v[i] = get(i);
  return r;
}
template <typename T, int N>
view<T, N>& view<T, N>::operator=(const simd<T, N>& s) {
  for (int i = 0; i < N; ++i) put(i, s.v[i]);
  return *this;
}
template <typename T, int N>
view<T, N>& view<T, N>::operator*=(const simd<T, N>& s) {
  return *this = read() * s;
}
}  // namespace model

template <typename T, int N> simd<T, N> max(const simd<T, N>& a, const simd<T, N>& b) {
  simd<T, N> r;
  for (int i = 0; i < N; ++i) r.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
  return r;
}
template <int N> simd<float, N> exp2(const simd<float, N>& a) {
  simd<float, N> r;
  for (int i = 0; i < N; ++i) r.v[i] = std::exp2(a.v[i]);
  return r;
}
template <int N> simd<float, N> inv(const simd<float, N>& a) {
  simd<float, N> r;
  for (int i = 0; i < N; ++i) r.v[i] = 1.0f / a.v[i];
  return r;
}

// -- compile-time properties (cache hints are accepted and ignored) ----------------------------------------------
enum class cache_hint { none, uncached, cached, write_back, write_through, streaming, read_invalidate };
template <cache_hint H> struct cache_hint_L1_value {};
template <cache_hint H> struct cache_hint_L2_value {};
template <cache_hint H> inline constexpr cache_hint_L1_value<H> cache_hint_L1{};
template <cache_hint H> inline constexpr cache_hint_L2_value<H> cache_hint_L2{};
template <typename... P> struct properties {
  properties(P...) {}
};
using empty_properties_t = properties<>;

// -- 2-D block I/O ---------------------------------------------------------------------------------------------
namespace model {
// The default N of load_2d/store_2d/prefetch_2d, as intel/llvm's detail::get_lsc_block_2d_data_size() computes it:
// VNNI-transformed blocks are padded (height up to a multiple of 4 / sizeof(T), width to a power of two), the
// others are not. The loads below static_assert N == BW * BH * NB, so a shape the real header would pad fails
// here too.
template <typename T, int BW, int BH, int NB, bool Transposed, bool Transformed>
constexpr int block_2d_size() {
  if (Transformed) {
    constexpr int per_dword = 4 / int(sizeof(T));
    return (BH + per_dword - 1) / per_dword * per_dword * next_pow2(BW) * NB;
  }
  return BW * BH * NB;
}

struct surface {
  uint64_t base;
  uint64_t width, height, pitch;  // bytes, rows, bytes (not "minus 1")
  template <typename T> bool inside(int x, int y) const {
    return x >= 0 && y >= 0 && uint64_t(x + 1) * sizeof(T) <= width && uint64_t(y) < height;
  }
  template <typename T> T read(int x, int y) const {
    T v{};
    if (inside<T>(x, y)) std::memcpy(&v, reinterpret_cast<const void*>(base + y * pitch + x * sizeof(T)), sizeof(T));
    return v;
  }
  template <typename T> void write(int x, int y, T v) const {
    if (inside<T>(x, y)) std::memcpy(reinterpret_cast<void*>(base + y * pitch + x * sizeof(T)), &v, sizeof(T));
  }
};

inline void check_surface(uint64_t base, unsigned w, unsigned pitch) {
  // The documented surface rules: a violation here is a bug in the host checks (abi.hpp), so fail loudly.
  if ((base % 64) || (w + 1) < 64 || ((w + 1) % 4) || ((pitch + 1) % 16) || (pitch < w))
    throw std::logic_error("esimd host model: 2-D block surface breaks the documented rules");
}
}  // namespace model

template <typename T, int BlockWidth, int BlockHeight = 1, int NBlocks = 1, bool Transposed = false,
          bool Transformed = false,
          int N = model::block_2d_size<T, BlockWidth, BlockHeight, NBlocks, Transposed, Transformed>(),
          typename PropertyListT = empty_properties_t>
simd<T, N> load_2d(const T* Ptr, unsigned SurfaceWidth, unsigned SurfaceHeight, unsigned SurfacePitch, int X,
                   int Y, PropertyListT = {}) {
  constexpr int S = sizeof(T);
  static_assert(!(Transposed && Transformed), "Transformed and Transposed cannot both be set");
  static_assert(BlockWidth * BlockHeight * NBlocks * S <= 2048, "block larger than 2048 bytes");
  if constexpr (Transposed) {
    static_assert(S == 4 || S == 8, "transposed loads need 32- or 64-bit elements");
    static_assert(NBlocks == 1, "transposed: NBlocks must be 1");
    static_assert(S == 8 ? BlockHeight == 8 : (BlockHeight >= 1 && BlockHeight <= 32), "transposed: height");
    static_assert(S == 8 ? (BlockWidth == 1 || BlockWidth == 2 || BlockWidth == 4) : (BlockWidth >= 1 && BlockWidth <= 8),
                  "transposed: width");
  } else if constexpr (Transformed) {
    static_assert(S == 1 || S == 2, "transformed loads need 8- or 16-bit elements");
    static_assert(NBlocks == 1 || NBlocks == 2 || NBlocks == 4, "transformed: NBlocks");
    static_assert(S == 1 ? (BlockHeight >= 4 && BlockHeight <= 32) : (BlockHeight >= 2 && BlockHeight <= 32),
                  "transformed: height");
    static_assert(S == 1 ? (BlockWidth >= 4 && BlockWidth <= 16) : (BlockWidth >= 2 && BlockWidth <= 16),
                  "transformed: width");
    static_assert(BlockWidth * NBlocks <= (S == 1 ? 64 : 32), "transformed: width * NBlocks");
  } else {
    static_assert(BlockHeight <= 32, "height <= 32");
    static_assert(BlockWidth * NBlocks <= 64 / S, "width * NBlocks");
    static_assert(BlockWidth >= (S == 1 ? 4 : S == 2 ? 2 : 1), "width");
  }
  static_assert(N == BlockWidth * BlockHeight * NBlocks, "the model handles unpadded blocks only");
  model::check_surface(reinterpret_cast<uint64_t>(Ptr), SurfaceWidth, SurfacePitch);
  const model::surface s{reinterpret_cast<uint64_t>(Ptr), SurfaceWidth + 1ull, SurfaceHeight + 1ull,
                         SurfacePitch + 1ull};
  simd<T, N> r;
  for (int r0 = 0; r0 < BlockHeight; ++r0)
    for (int c = 0; c < BlockWidth; ++c) {
      const T e = s.read<T>(X + c, Y + r0);
      if (Transposed)
        r.v[c * BlockHeight + r0] = e;  // result row c = memory column X + c
      else if (Transformed)
        r.v[(r0 / (4 / S)) * (BlockWidth * (4 / S)) + c * (4 / S) + r0 % (4 / S)] = e;  // VNNI
      else
        r.v[r0 * BlockWidth + c] = e;
    }
  return r;
}

template <typename T, int BlockWidth, int BlockHeight = 1,
          int N = model::block_2d_size<T, BlockWidth, BlockHeight, 1, false, false>(),
          typename PropertyListT = empty_properties_t>
void store_2d(T* Ptr, unsigned SurfaceWidth, unsigned SurfaceHeight, unsigned SurfacePitch, int X, int Y,
              simd<T, N> Vals, PropertyListT = {}) {
  constexpr int S = sizeof(T);
  static_assert(BlockWidth * BlockHeight * S <= 512, "store: block larger than 512 bytes");
  static_assert(BlockHeight <= 8, "store: height <= 8");
  static_assert(BlockWidth >= (S == 1 ? 4 : S == 2 ? 2 : 1) && BlockWidth <= 64 / S, "store: width");
  static_assert(N == BlockWidth * BlockHeight, "the model handles unpadded blocks only");
  model::check_surface(reinterpret_cast<uint64_t>(Ptr), SurfaceWidth, SurfacePitch);
  const model::surface s{reinterpret_cast<uint64_t>(Ptr), SurfaceWidth + 1ull, SurfaceHeight + 1ull,
                         SurfacePitch + 1ull};
  for (int r = 0; r < BlockHeight; ++r)
    for (int c = 0; c < BlockWidth; ++c) s.write<T>(X + c, Y + r, Vals.v[r * BlockWidth + c]);
}

template <typename T, int BlockWidth, int BlockHeight = 1, int NBlocks = 1,
          int N = model::block_2d_size<T, BlockWidth, BlockHeight, NBlocks, false, false>(),
          typename PropertyListT = empty_properties_t>
void prefetch_2d(const T* Ptr, unsigned SurfaceWidth, unsigned, unsigned SurfacePitch, int, int, PropertyListT) {
  constexpr int S = sizeof(T);
  static_assert(BlockWidth * BlockHeight * NBlocks * S <= 2048, "prefetch: block larger than 2048 bytes");
  static_assert(BlockHeight <= 32 && BlockWidth * NBlocks <= 64 / S, "prefetch: shape");
  static_assert(!std::is_same_v<PropertyListT, empty_properties_t>, "prefetch_2d needs cache hints");
  model::check_surface(reinterpret_cast<uint64_t>(Ptr), SurfaceWidth, SurfacePitch);
}

// -- DPAS --------------------------------------------------------------------------------------------------------
namespace xmx {
template <int SystolicDepth, int RepeatCount, typename T, typename CT, typename BT, typename AT, int N, int BN,
          int AN>
simd<T, N> dpas(simd<CT, N> C, simd<BT, BN> B, simd<AT, AN> A) {
  static_assert(SystolicDepth == 8, "Systolic depth must be equal to 8");
  static_assert(RepeatCount >= 1 && RepeatCount <= 8, "Repeat count must be within 1 to 8 range");
  static_assert(sizeof(AT) == 2 && sizeof(BT) == 2, "the model covers fp16/bf16 operands");
  constexpr int K = SystolicDepth * 2;  // 2 16-bit values per 32-bit channel
  constexpr int Exec = 16;              // Xe2 / PVC execution size (8 on DG2)
  static_assert(AN == RepeatCount * K, "A must be RepeatCount x 16");
  static_assert(BN == K * Exec, "B must be 16 x 16 (VNNI-packed)");
  static_assert(N == RepeatCount * Exec, "C must be RepeatCount x 16");
  simd<T, N> R;
  for (int r = 0; r < RepeatCount; ++r)
    for (int n = 0; n < Exec; ++n) {
      float acc = static_cast<float>(C.v[r * Exec + n]);
      for (int k = 0; k < K; ++k)
        acc += static_cast<float>(A.v[r * K + k]) * static_cast<float>(B.v[(k / 2) * 2 * Exec + 2 * n + k % 2]);
      R.v[r * Exec + n] = static_cast<T>(acc);
    }
  return R;
}
}  // namespace xmx

}  // namespace esimd
}  // namespace intel
}  // namespace ext
}  // namespace sycl

#ifndef ESIMD_INLINE
#define ESIMD_INLINE inline
#endif
#ifndef SYCL_ESIMD_KERNEL
#define SYCL_ESIMD_KERNEL
#endif
