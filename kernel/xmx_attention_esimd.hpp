// arcattn native attention kernel for Intel Xe2 (Arc B570/B580, BMG-G21): ESIMD + DPAS (XMX) + 2-D block I/O.
//
// STATUS: written for a first run on a user's card. It has never been compiled by a SYCL compiler or run on a
// GPU: this project has no oneAPI and no Intel GPU. What CI does run: (1) this very file, compiled by g++
// against a host model of the ESIMD subset it uses (extension/src/host_model/: documented signatures, documented
// block-size restrictions as static_asserts, documented semantics as we read them) and checked against float64
// (arcattn._xmx.forward_kernel_model in the CPU build); (2) a separate plain C++ body with the same schedule
// (extension/src/cpu_reference.hpp); (3) this file through clang's host pass against Intel's real SYCL headers
// of oneAPI 2025.3 and 2026.0, every instance, with the headers' own static_asserts (extension/check_headers.py;
// it checks API use, not device code generation). Places where we were unsure of an API or of the hardware say
// "UNSURE".
//
// out[b, s, h, :] = softmax(q k^T * scale) v for one (b, h), in fp16 or bf16, fp32 accumulation. No mask, no
// causal, no LSE. Head dims 40/64/80/128/160 (padded to DP = 48/64/80/128/160 by the surface trick in
// schedule.hpp), any Sq and Sk (tails via the surface height), any strides the host checks admit (abi.hpp):
// (B, S, H*D), (B, H, S, D), (B, S, H, D), and the output is written directly into the caller's layout.
//
// oneAPI APIs used (documented in intel/llvm sycl/doc/extensions/supported/sycl_ext_intel_esimd/, headers
// <sycl/ext/intel/esimd.hpp>; written against oneAPI DPC++/C++ 2025.x, which ships all of them):
//   sycl::ext::intel::esimd::xmx::dpas<SystolicDepth=8, RepeatCount, T, CT, BT, AT>(C, B, A)
//       (esimd/xmx/dpas.hpp). Note the operand order: C, *B*, A. For fp16/bf16: K = systolic depth 8 x 2
//       16-bit values per 32-bit channel = 16; N = execution size; A is RepeatCount x 16 row-major, B is
//       16 x N "vertically packed" (VNNI: B(k, n) sits at (k / 2) * 2N + 2 * n + k % 2), C and the result are
//       RepeatCount x N row-major fp32 (sycl_ext_intel_esimd.md, "DPAS API", "Horizontal/Vertical packing").
//       UNSURE: the document lists N = 8 for DG2 and N = 16 for PVC and does not name Xe2; we take N = 16 for
//       BMG (Xe2's native SIMD16, as on PVC). dpas() deduces N from the operand sizes, so a wrong guess fails to
//       compile rather than computing garbage.
//   sycl::ext::intel::esimd::load_2d<T, BlockWidth, BlockHeight, NBlocks, Transposed, Transformed>(ptr,
//       width-1, height-1, pitch-1, X, Y), store_2d<T, BlockWidth, BlockHeight>(..., vals) and prefetch_2d
//       (sycl_ext_intel_esimd_functions.md, "load_2d/store_2d/prefetch_2d"). These are the documented forms of
//       the LSC 2-D block messages. We do not use experimental::esimd::lsc_load_2d(config_2d_mem_access&):
//       its header says it builds the message descriptor by raw_send and that "compatibility with future
//       hardware versions is not guaranteed", and the descriptor it encodes was written for PVC; the pointer
//       forms go through the compiler, which emits the right message for the AOT target.
//       Restrictions honoured (from the same document): transposed loads need 32-bit elements, width <= 8,
//       height <= 32; transformed (VNNI) loads of 16-bit elements need width <= 16, height 2..32; stores need
//       height <= 8 and width * height * size <= 512 bytes; every block <= 2048 bytes. The surface rules (base
//       64-byte aligned, pitch a multiple of 16 bytes and >= width) are checked on the host (abi.hpp).
//       UNSURE: these restrictions are written for PVC; we assume Xe2's 2-D block messages share them, and that
//       reads outside the surface return 0 and writes outside it are dropped (schedule.hpp relies on both).
//   sycl::ext::intel::esimd::exp2, inv, max, simd_mask::any, simd::merge, simd::select, bit_cast_view,
//       replicate_vs_w_hs (sycl_ext_intel_esimd.md: extended math, simd/simd_view API).
//
// Data flow of one thread (M query rows of one head; see schedule.hpp for the grid):
//   HBM -> L3/L1 -> GRF:  Q tile   load_2d<u16, 16, M>            DT times, once per thread
//   per key block (32 keys = 2 chunks of 16), for d-tile j = 0..DT-1:
//                         K^T tile load_2d<u32, 8, 16, transposed> (16 keys x 16 dims, arrives in VNNI form)
//                         S_c += dpas(Q_j, K^T_{j,c})               S: M x 32 fp32
//   softmax (registers):  S *= scale*log2(e); keys >= Sk -> -inf; m' = max(m, rowmax S); P = exp2(S - m');
//                         alpha = exp2(m - m'); l = l*alpha + rowsum P; O *= alpha only if some m rose
//   for d-tile j:         V tile   load_2d<u16, 16, 16, transformed> (VNNI)
//                         O_j += dpas(P_c (fp16/bf16), V_{c,j})
//   end:                  O / l -> fp16/bf16 -> store_2d<u16, 16, M> straight into the caller's tensor.
//   No shared local memory, no barriers: every thread of every group reads the head's K and V, which the Xe
//   core's L1 and the L3 serve after the first reader (K+V of one head at S=2048, D=64 is 512 KB).
//
// Register budget (per thread; GRF = 64 bytes; default mode = 128 GRF = 8 KB; we do not ask for large-GRF mode):
//   DP   M | Q (16-bit) | O (fp32) | S (fp32, M x 32) | 2 K or V tiles | P (16-bit) | temporaries | peak
//   48   8 |   12 GRF   |    24    |        16        |       16       |      8     |     ~12     |  ~80
//   64   8 |   16       |    32    |        16        |       16       |      8     |     ~12     |  ~92
//   80   8 |   20       |    40    |        16        |       16       |      8     |     ~12     | ~104
//   128  4 |   16       |    32    |         8        |       16       |      4     |      ~8     |  ~80
//   160  4 |   20       |    40    |         8        |       16       |      4     |      ~8     |  ~92
//   Peak = the QK^T phase: Q + O + S + two 512-byte K tiles + temporaries (row broadcasts, m/l/alpha, surface
//   descriptors). In the P V phase S has become P (half the size) and the V tiles replace the K tiles.
//   Q and O stay resident for the whole key loop, as in the original B580 kernel (its budget: Q 2 KB + O 2 KB
//   + K/V 4 KB); rows per thread drop from 8 to 4 above DP = 80 to keep O in registers. Every configuration
//   leaves >= 24 GRF to the compiler, so there should be no spills. UNSURE: only the first real compile can
//   confirm it (inspect IGC's output for spill/fill).

#pragma once

#include <sycl/sycl.hpp>
#include <sycl/ext/intel/esimd.hpp>

#include <limits>

#include "schedule.hpp"

namespace arcattn {
namespace xmx {

namespace esimd = sycl::ext::intel::esimd;
namespace xmx_ns = sycl::ext::intel::esimd::xmx;

#ifndef ARCATTN_XMX_PREFETCH
#define ARCATTN_XMX_PREFETCH 1  // prefetch the next key block's K and V into L1 (build with =0 to turn off)
#endif

// Row-wise reduction of an M x W row-major block by halving: W/2 + W/4 + ... vector ops, no per-row loop.
template <int M, int W, typename Op>
ESIMD_INLINE esimd::simd<float, M> row_reduce(esimd::simd<float, M * W> x, Op op) {
  if constexpr (W == 1) {
    return x;
  } else {
    auto x2 = x.template bit_cast_view<float, M, W>();
    esimd::simd<float, M * (W / 2)> lo = x2.template select<M, 1, W / 2, 1>(0, 0);
    esimd::simd<float, M * (W / 2)> hi = x2.template select<M, 1, W / 2, 1>(0, W / 2);
    return row_reduce<M, W / 2>(op(lo, hi), op);
  }
}

// A per-row value repeated across the row's 16 columns: [v0 x16, v1 x16, ...].
template <int M>
ESIMD_INLINE esimd::simd<float, M * kTile> per_row(esimd::simd<float, M> v) {
  return v.template replicate_vs_w_hs<M, 1, kTile, 0>(0);
}

struct MaxOp {
  template <typename V> ESIMD_INLINE V operator()(V a, V b) const { return esimd::max(a, b); }
};
struct AddOp {
  template <typename V> ESIMD_INLINE V operator()(V a, V b) const { return a + b; }
};

// T: sycl::half or sycl::ext::oneapi::bfloat16. DP: padded head dim (multiple of 16).
template <typename T, int DP>
ESIMD_INLINE void attention_rows(const KernelParams& p, int b, int h, int row0) {
  constexpr int M = rows_per_thread(DP);
  constexpr int DT = DP / kTile;
  constexpr int MT = M * kTile;  // elements of one M x 16 tile
  using u16 = uint16_t;
  using u32 = uint32_t;

  const Surface qs = head_surface(p.q, p.qs, b, h, p.Sq, p.D, 2);
  const Surface ks = head_surface(p.k, p.ks, b, h, p.Sk, p.D, 2);
  const Surface vs = head_surface(p.v, p.vs, b, h, p.Sk, p.D, 2);
  const Surface os = head_surface(p.o, p.os, b, h, p.Sq, p.D, 2);
  const u16* qptr = reinterpret_cast<const u16*>(qs.base);
  const u32* kptr = reinterpret_cast<const u32*>(ks.base);  // K read as 32-bit pairs: see the transposed load
  const u16* vptr = reinterpret_cast<const u16*>(vs.base);
  u16* optr = reinterpret_cast<u16*>(os.base);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  // Q: DT tiles of M x 16, tile j at [j * MT, (j + 1) * MT). Columns >= D are outside the surface: zeros.
  esimd::simd<T, M * DP> q;
#pragma unroll
  for (int j = 0; j < DT; ++j) {
    esimd::simd<u16, MT> raw =
        esimd::load_2d<u16, kTile, M>(qptr, qs.width - 1, qs.height - 1, qs.pitch - 1, qs.x0 + kTile * j, qs.y0 + row0);
    q.template select<MT, 1>(j * MT) = raw.template bit_cast_view<T>();
  }

  esimd::simd<float, M * DP> o = 0.0f;  // O tiles, same tiling as Q, fp32: the DPAS accumulators
  esimd::simd<float, M> m = neg_inf;
  esimd::simd<float, M> l = 0.0f;

  for (int kb = 0; kb < p.Sk; kb += kKeyBlock) {
    const bool chunk1 = kb + kKeyChunk < p.Sk;  // uniform per thread: a real branch, no divergence

#if ARCATTN_XMX_PREFETCH
    if (kb + kKeyBlock < p.Sk) {
#pragma unroll
      for (int j = 0; j < DT; ++j) {
        esimd::properties hints{esimd::cache_hint_L1<esimd::cache_hint::cached>,
                                esimd::cache_hint_L2<esimd::cache_hint::cached>};
        // UNSURE: cache-hint properties were documented for DG2/PVC; Xe2 has the same LSC cache controls.
        // Intel's headers (2025.3, 2026.0) accept this pair for a prefetch (check_cache_hints; check_headers.py).
        esimd::prefetch_2d<u16, kTile, kKeyBlock>(reinterpret_cast<const u16*>(ks.base), ks.width - 1,
                                                  ks.height - 1, ks.pitch - 1, ks.x0 + kTile * j,
                                                  ks.y0 + kb + kKeyBlock, hints);
        esimd::prefetch_2d<u16, kTile, kKeyBlock>(vptr, vs.width - 1, vs.height - 1, vs.pitch - 1,
                                                  vs.x0 + kTile * j, vs.y0 + kb + kKeyBlock, hints);
      }
    }
#endif

    // S = Q K^T for keys kb..kb+31. A transposed 32-bit load of a 16-key x 16-dim block of K returns 8 rows
    // (dim pairs) x 16 columns (keys), each 32-bit element holding dims (2i, 2i+1) of one key: exactly the
    // VNNI packing DPAS wants for B = K^T (B(k, n) = K[n][k]). X is in 32-bit units, hence the / 2 (x0 and
    // 16 * j are even because every head starts 4-byte aligned: checked on the host).
    esimd::simd<float, MT> s0 = 0.0f;
    esimd::simd<float, MT> s1 = 0.0f;
#pragma unroll
    for (int j = 0; j < DT; ++j) {
      esimd::simd<T, MT> a = q.template select<MT, 1>(j * MT);
      esimd::simd<u32, kTile * kTile / 2> k0 = esimd::load_2d<u32, kTile / 2, kKeyChunk, 1, true, false>(
          kptr, ks.width - 1, ks.height - 1, ks.pitch - 1, (ks.x0 + kTile * j) / 2, ks.y0 + kb);
      esimd::simd<T, kTile * kTile> b0 = k0.template bit_cast_view<T>();
      s0 = xmx_ns::dpas<8, M, float, float, T, T>(s0, b0, a);
      if (chunk1) {
        esimd::simd<u32, kTile * kTile / 2> k1 = esimd::load_2d<u32, kTile / 2, kKeyChunk, 1, true, false>(
            kptr, ks.width - 1, ks.height - 1, ks.pitch - 1, (ks.x0 + kTile * j) / 2, ks.y0 + kb + kKeyChunk);
        esimd::simd<T, kTile * kTile> b1 = k1.template bit_cast_view<T>();
        s1 = xmx_ns::dpas<8, M, float, float, T, T>(s1, b1, a);
      }
    }

    // Online softmax in the exp2 domain (scale * log2(e) folded into one multiply).
    s0 *= p.scale_log2;
    s1 *= p.scale_log2;
    if (kb + kKeyBlock > p.Sk) {  // the last, partial block: keys >= Sk read as 0 from K; mask them
      esimd::simd<int, kTile> lane(0, 1);
      esimd::simd<int, MT> key = lane.template replicate<M>();
      const esimd::simd<float, MT> ninf = neg_inf;
      s0.merge(ninf, key + kb >= p.Sk);
      s1.merge(ninf, key + (kb + kKeyChunk) >= p.Sk);
    }
    esimd::simd<float, M> mnew = esimd::max(m, row_reduce<M, kTile>(esimd::max(s0, s1), MaxOp{}));
    const esimd::simd<float, MT> mb = per_row<M>(mnew);
    s0 = esimd::exp2(s0 - mb);
    s1 = esimd::exp2(s1 - mb);
    esimd::simd<float, M> alpha = esimd::exp2(m - mnew);  // m = -inf on the first block: alpha = 0
    l = l * alpha + row_reduce<M, kTile>(s0 + s1, AddOp{});
    if ((mnew > m).any()) {  // rescale O only when some row's running max rose (simd_mask::any)
      const esimd::simd<float, MT> ab = per_row<M>(alpha);
#pragma unroll
      for (int j = 0; j < DT; ++j) o.template select<MT, 1>(j * MT) *= ab;
    }
    m = mnew;

    // O += P V. P goes to the input dtype (DPAS takes 16-bit A); the VNNI-transformed load gives V's B operand.
    esimd::simd<T, MT> p0 = s0;  // converting constructor (half; bfloat16 via esimd/detail/bfloat16_type_traits.hpp)
    esimd::simd<T, MT> p1 = s1;
#pragma unroll
    for (int j = 0; j < DT; ++j) {
      esimd::simd<float, MT> acc = o.template select<MT, 1>(j * MT);
      esimd::simd<u16, kTile * kTile> v0 = esimd::load_2d<u16, kTile, kKeyChunk, 1, false, true>(
          vptr, vs.width - 1, vs.height - 1, vs.pitch - 1, vs.x0 + kTile * j, vs.y0 + kb);
      esimd::simd<T, kTile * kTile> bv0 = v0.template bit_cast_view<T>();
      acc = xmx_ns::dpas<8, M, float, float, T, T>(acc, bv0, p0);
      if (chunk1) {
        esimd::simd<u16, kTile * kTile> v1 = esimd::load_2d<u16, kTile, kKeyChunk, 1, false, true>(
            vptr, vs.width - 1, vs.height - 1, vs.pitch - 1, vs.x0 + kTile * j, vs.y0 + kb + kKeyChunk);
        esimd::simd<T, kTile * kTile> bv1 = v1.template bit_cast_view<T>();
        acc = xmx_ns::dpas<8, M, float, float, T, T>(acc, bv1, p1);
      }
      o.template select<MT, 1>(j * MT) = acc;
    }
  }

  // O / l, converted, written straight into the caller's layout. Padded columns (>= D) and rows >= Sq are
  // outside the surface and dropped by the store. UNSURE: we rely on 2-D block stores clipping to the surface.
  const esimd::simd<float, MT> inv_l = per_row<M>(esimd::inv(l));
#pragma unroll
  for (int j = 0; j < DT; ++j) {
    esimd::simd<float, MT> of = o.template select<MT, 1>(j * MT);
    esimd::simd<T, MT> ot = of * inv_l;
    esimd::simd<u16, MT> raw = ot.template bit_cast_view<u16>();
    esimd::store_2d<u16, kTile, M>(optr, os.width - 1, os.height - 1, os.pitch - 1, os.x0 + kTile * j, os.y0 + row0, raw);
  }
}

template <typename T, int DP>
class ArcattnXmxAttention;  // kernel name

// Enqueue one attention call on `queue` (in-order: torch's XPU streams are in-order queues). Does not wait.
template <typename T, int DP>
sycl::event launch_attention(sycl::queue& queue, const KernelParams& p) {
  constexpr int M = rows_per_thread(DP);
  const size_t groups = static_cast<size_t>(p.B) * p.H * p.groups_per_head;
  const sycl::nd_range<1> range(groups * kThreadsPerGroup, kThreadsPerGroup);
  return queue.submit([&](sycl::handler& cgh) {
    cgh.parallel_for<ArcattnXmxAttention<T, DP>>(range, [=](sycl::nd_item<1> it) SYCL_ESIMD_KERNEL {
      int b, h, row0;
      if (!locate(p, M, static_cast<int>(it.get_group(0)), static_cast<int>(it.get_local_id(0)), b, h, row0))
        return;
      attention_rows<T, DP>(p, b, h, row0);
    });
  });
}

}  // namespace xmx
}  // namespace arcattn
