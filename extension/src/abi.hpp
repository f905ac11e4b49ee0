// arcattn._xmx binary interface, version ARCATTN_XMX_ABI. Host-only (both builds: SYCL and CPU reference).
//
// ABI 2 (what arcattn/backends/xmx.py calls; bump ARCATTN_XMX_ABI on any change to these signatures or meanings):
//   abi_version() -> int
//   device_info() -> dict   {"abi", "kind": "sycl-esimd" | "cpu-reference", "head_dims", "dtypes",
//                            "targets", "compiler", "rows_per_thread", "key_block", "threads_per_group",
//                            "sycl_major", "sycl_version", "kernels", "kernel_name"}
//       sycl_major / sycl_version: the SYCL runtime the binary was compiled against (__LIBSYCL_MAJOR_VERSION and
//       "major.minor.patch" from <sycl/version.hpp>; libsycl.so.<major> / sycl<major>.dll), None in the CPU
//       reference. The loader refuses a binary whose major differs from the runtime torch loaded: the module works
//       on torch's sycl::queue, which only the same runtime may touch.
//       kernels: how many of the SYCL runtime's kernel ids (sycl::get_kernel_ids()) carry kernel_name, i.e. how
//       many kernel instances the binary's device image registered; it must be 2 * len(head_dims) (fp16 and bf16
//       for each head dim). In the CPU reference the same count comes from the host model.
//   check_device(queue: int) -> str
//       "" when the device behind the sycl::queue* `queue` can run this binary, else why not.
//   forward(q, k, v, o, dtype, B, H, Sq, Sk, D, q_strides, k_strides, v_strides, o_strides, scale, queue) -> None
//       q, k, v, o: data addresses (int); dtype: 0 = float16, 1 = bfloat16; strides: 4-tuples in elements,
//       (B, H, S, D) order, D stride 1; scale: softmax scale; queue: address of a sycl::queue (0 in the CPU
//       reference, which computes synchronously on host memory). The kernel is enqueued, not waited for.
//       Raises ValueError when the arguments break a rule below (nothing is launched then).
// The CPU reference build also has forward_kernel_model(...) (same arguments): kernel/xmx_attention_esimd.hpp
// itself, run through the host model of ESIMD in host_model/, and head_surface(...), the 2-D block surface the
// kernel would use for one head. Both are test aids, not part of the ABI.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "schedule.hpp"

#define ARCATTN_XMX_ABI 2

namespace arcattn {

enum DType : int { kFloat16 = 0, kBFloat16 = 1 };

// The kernel name class of kernel/xmx_attention_esimd.hpp. SYCL kernel ids are named by the mangled type
// (e.g. _ZTSN7arcattn3xmx19ArcattnXmxAttentionI...Li48EEE), so it is matched as a substring, not a prefix.
constexpr const char* kKernelName = "ArcattnXmxAttention";
constexpr int kNumKernelInstances = 2 * xmx::kNumHeadDims;  // float16 and bfloat16 for every head dim

struct TensorArg {
  uint64_t ptr;
  int64_t s[4];  // elements, (B, H, S, D)
};

struct ForwardArgs {
  TensorArg q, k, v, o;
  int dtype;
  int B, H, Sq, Sk, D;
  double scale;
};

inline xmx::KernelParams kernel_params(const ForwardArgs& a) {
  xmx::KernelParams p{};
  p.q = a.q.ptr;
  p.k = a.k.ptr;
  p.v = a.v.ptr;
  p.o = a.o.ptr;
  for (int i = 0; i < 3; ++i) {
    p.qs[i] = a.q.s[i];
    p.ks[i] = a.k.s[i];
    p.vs[i] = a.v.s[i];
    p.os[i] = a.o.s[i];
  }
  p.B = a.B;
  p.H = a.H;
  p.Sq = a.Sq;
  p.Sk = a.Sk;
  p.D = a.D;
  p.scale_log2 = static_cast<float>(a.scale * 1.4426950408889634);  // log2(e)
  p.groups_per_head = xmx::groups_per_head(a.Sq, xmx::rows_per_thread(xmx::padded_head_dim(a.D)));
  return p;
}

namespace detail {

constexpr uint32_t kMaxSurfaceField = 1u << 24;  // width/height/pitch are 24-bit fields in the block message

// Why one (b, h) surface cannot be used by 2-D block I/O, or "". The rules are those we could find for Xe2
// LSC 2-D block messages (base 64-byte aligned: true by construction; width >= 64 bytes and a multiple of 4;
// pitch a multiple of 16 bytes and >= width; all fields < 2^24). They are checked here, on the host, in both
// builds, so that the CPU build's tests exercise them and the GPU never sees a surface it may not take.
inline std::string surface_problem(const char* name, const xmx::Surface& s, int b, int h) {
  const std::string where = std::string(name) + " at (b=" + std::to_string(b) + ", h=" + std::to_string(h) + ")";
  if (s.width < 64) return where + ": surface width " + std::to_string(s.width) + " bytes < 64";
  if (s.width % 4) return where + ": start not 4-byte aligned";
  if (s.pitch % 16)
    return where + ": row pitch " + std::to_string(s.pitch) + " bytes is not a multiple of 16";
  if (s.pitch < s.width)
    return where + ": row pitch " + std::to_string(s.pitch) + " bytes < " + std::to_string(s.width) +
           " (rows overlap, or the start is too far past a 64-byte boundary)";
  if (s.width >= kMaxSurfaceField || s.pitch >= kMaxSurfaceField || s.height >= kMaxSurfaceField)
    return where + ": surface larger than 2^24 in a dimension";
  return "";
}

}  // namespace detail

// "" when `a` can be launched, else the reason (raised as ValueError by the binding).
inline std::string validate(const ForwardArgs& a) {
  if (a.dtype != kFloat16 && a.dtype != kBFloat16)
    return "dtype code " + std::to_string(a.dtype) + " (want 0 = float16, 1 = bfloat16)";
  if (a.B < 1 || a.H < 1 || a.Sq < 1 || a.Sk < 1)
    return "B, H, Sq, Sk must be >= 1";
  if (!xmx::supported_head_dim(a.D)) {
    std::string dims;
    for (int i = 0; i < xmx::kNumHeadDims; ++i) dims += (i ? ", " : "") + std::to_string(xmx::kHeadDims[i]);
    return "head dim " + std::to_string(a.D) + " not compiled (have " + dims + ")";
  }
  if (!std::isfinite(a.scale)) return "scale is not finite";
  const struct {
    const char* name;
    const TensorArg* t;
    int rows;
  } tensors[] = {{"q", &a.q, a.Sq}, {"k", &a.k, a.Sk}, {"v", &a.v, a.Sk}, {"out", &a.o, a.Sq}};
  for (const auto& t : tensors) {
    if (!t.t->ptr) return std::string(t.name) + " is a null pointer";
    if (t.t->s[3] != 1) return std::string(t.name) + ": head-dim stride must be 1";
    for (int i = 0; i < 3; ++i)
      if (t.t->s[i] < 0) return std::string(t.name) + ": negative strides are not supported";
    for (int b = 0; b < a.B; ++b)
      for (int h = 0; h < a.H; ++h) {
        const xmx::Surface s = xmx::head_surface(t.t->ptr, t.t->s, b, h, t.rows, a.D, 2);
        std::string why = detail::surface_problem(t.name, s, b, h);
        if (!why.empty()) return why;
      }
  }
  return "";
}

}  // namespace arcattn
