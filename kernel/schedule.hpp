// arcattn native XMX kernel: the schedule, shared by the device code and the CPU reference.
//
// Plain C++17, no SYCL: this header is compiled into the ESIMD kernel (kernel/xmx_attention_esimd.hpp), into the
// host-side argument checks (extension/src/abi.hpp) and into the CPU reference body
// (extension/src/cpu_reference.hpp). Everything that decides *which* memory a thread touches lives here, so the
// CPU build, which CI runs, exercises the same index and surface arithmetic as the GPU build, which has never
// been compiled by a SYCL compiler or run on a GPU.
//
// The "atomic" schedule
// ---------------------
// One ESIMD thread owns M query rows of one (batch, head) and streams every key of that head past them:
//   M = 8 rows (DPAS repeat count 8) for padded head dims up to 80, M = 4 above (register budget, see
//   xmx_attention_esimd.hpp). A work-group is kThreadsPerGroup threads on consecutive row slices of the same
//   head, so the group's threads share the Xe core's L1 for K and V. Groups are numbered head-major:
//   group g -> (b, h) = divmod(g / groups_per_head, H), slice = g % groups_per_head.
// At batch 1, S=1024, 8 heads that is 8 * 1024 / 32 = 256 groups of 4 threads = 1024 hardware threads, against
// 20 Xe cores x 8 vector engines x 8 threads = 1280 thread slots on a B580: the GPU is full without any
// split-K reduction. Nothing is shared between threads (no SLM, no barrier), so a thread whose rows are all past
// Sq simply returns.
//
// 2-D block surfaces
// ------------------
// Xe2's 2-D block loads/stores address a surface (base, width in bytes, height in rows, pitch in bytes) with an
// element X and a row Y, return zeros for reads outside the surface and drop writes outside it. The kernel
// relies on both. UNSURE: this is the behaviour of LSC 2-D block messages as far as we could find it
// documented; the first GPU run must confirm it (the load-time self-test has key tails, query tails and head-dim
// padding in it). The base must be 64-byte aligned and the pitch at least the width. For each
// (b, h) we therefore move the surface base back from the head's first element to a 64-byte boundary, by y0
// whole rows (y0 >= 0) and then x0 elements, and address the head's row r, column c as (Y = y0 + r,
// X = x0 + c); the surface width ends exactly at the head's last column, (x0 + D) elements, and its height at
// its last row, y0 + S. Rows above y0 (another head's data) are never requested. y0 is needed when rows are
// short: contiguous (B, H, S, D) at D = 40 has an 80-byte pitch, and a head starting 16 bytes past a boundary
// would otherwise need x0 = 8, a width of 96 bytes > pitch. With a pitch that is a multiple of 16 bytes there
// are at most 4 row shifts to try. Two things follow from clipping at the head's own edges:
//   - head-dim padding is free: columns D..DP-1 of a 16-wide tile lie outside the surface, so loads return 0
//     (Q and K padding contribute nothing to QK^T) and the padded output columns are never written, even in
//     (B, S, H*D) where the next head's data sits right there;
//   - the key tail is free: rows >= Sk are outside the surface, K reads 0 there (the scores are then masked to
//     -inf) and V reads 0 (so 0 * garbage can never make a NaN).
#pragma once

#include <cstdint>

namespace arcattn {
namespace xmx {

constexpr int kTile = 16;          // DPAS N (execution size 16 on Xe2) and K (systolic depth 8 x 2 fp16 per channel)
constexpr int kKeyChunk = 16;      // keys per DPAS column tile
constexpr int kKeyBlock = 32;      // keys per online-softmax step: two chunks
constexpr int kThreadsPerGroup = 4;
constexpr int kSurfaceAlign = 64;  // bytes; base alignment of a 2-D block surface

// Head dims the binary is compiled for (each is one template instance per dtype).
constexpr int kHeadDims[] = {40, 64, 80, 128, 160};
constexpr int kNumHeadDims = sizeof(kHeadDims) / sizeof(kHeadDims[0]);

constexpr int padded_head_dim(int d) { return (d + kTile - 1) / kTile * kTile; }
constexpr int rows_per_thread(int padded_d) { return padded_d <= 80 ? 8 : 4; }

constexpr bool supported_head_dim(int d) {
  for (int i = 0; i < kNumHeadDims; ++i)
    if (kHeadDims[i] == d) return true;
  return false;
}

// Everything the kernel reads from the host, by value (trivially copyable, no pointers into host memory).
// Strides are in elements, in (B, H, S) order; the head-dim stride is 1 (checked on the host).
struct KernelParams {
  uint64_t q, k, v, o;                 // device addresses
  int64_t qs[3], ks[3], vs[3], os[3];  // strides of batch, head, sequence
  int32_t B, H, Sq, Sk, D;
  float scale_log2;                    // softmax scale * log2(e): scores go straight into exp2
  int32_t groups_per_head;
};

// One 2-D block surface: what load_2d/store_2d take (they want width/height/pitch "minus 1").
struct Surface {
  uint64_t base;    // kSurfaceAlign-aligned byte address
  uint32_t width;   // bytes, x0 + D elements
  uint32_t height;  // rows, y0 + S
  uint32_t pitch;   // bytes between rows
  int32_t x0;       // element column of this head's first element
  int32_t y0;       // row of this head's first row
};

// The surface of head (b, h) of a (B, H, S, D) tensor: `rows` rows of `cols` elements of `elem` bytes.
// Tries row shifts y0 = 0, 1, ... (up to kSurfaceAlign / 16 of them) for the first whose column offset leaves
// the head inside one pitch; if none does, returns y0 = 0 and the host check reports pitch < width.
inline Surface head_surface(uint64_t ptr, const int64_t* strides, int b, int h, int rows, int cols,
                            int elem) {
  const uint64_t addr = ptr + static_cast<uint64_t>(b * strides[0] + h * strides[1]) * static_cast<uint64_t>(elem);
  const uint64_t pitch = static_cast<uint64_t>(strides[2]) * static_cast<uint64_t>(elem);
  const uint64_t mask = static_cast<uint64_t>(kSurfaceAlign - 1);
  int y0 = 0;
  for (int k = 0; k < kSurfaceAlign / 16; ++k) {
    const uint64_t off = (addr - static_cast<uint64_t>(k) * pitch) & mask;  // bytes past a boundary (mod 2^64)
    if (off + static_cast<uint64_t>(cols) * elem <= pitch) {
      y0 = k;
      break;
    }
  }
  const uint64_t row_start = addr - static_cast<uint64_t>(y0) * pitch;
  Surface s;
  s.base = row_start & ~mask;
  s.x0 = static_cast<int32_t>((row_start - s.base) / static_cast<uint64_t>(elem));
  s.y0 = y0;
  s.width = static_cast<uint32_t>((s.x0 + cols) * elem);
  s.height = static_cast<uint32_t>(rows + y0);
  s.pitch = static_cast<uint32_t>(pitch);
  return s;
}

constexpr int groups_per_head(int Sq, int rows) {
  return (Sq + rows * kThreadsPerGroup - 1) / (rows * kThreadsPerGroup);
}

// Which rows a thread owns. Returns false when they are all past Sq (the thread has nothing to do).
inline bool locate(const KernelParams& p, int rows, int group, int thread, int& b, int& h, int& row0) {
  const int bh = group / p.groups_per_head;
  const int slice = group % p.groups_per_head;
  b = bh / p.H;
  h = bh % p.H;
  row0 = (slice * kThreadsPerGroup + thread) * rows;
  return row0 < p.Sq;
}

}  // namespace xmx
}  // namespace arcattn
