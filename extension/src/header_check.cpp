// Front-end check of the SYCL/ESIMD kernel against Intel's own SYCL headers (extension/check_headers.py).
//
// Not part of any build. Compiled with clang++ -fsyntax-only, without -fsycl, against the include/ tree of an
// intel-sycl-rt wheel: this is the host pass of a SYCL compile, so it checks every name, template argument and
// type the kernel uses against the real <sycl/ext/intel/esimd.hpp>, including the headers' own static_asserts
// (2-D block sizes, DPAS operand types and sizes). It cannot check the device pass (SPIR-V, IGC's register
// allocation) or the hardware. It includes sycl_forward.cpp (the device checks and the launch), so one parse of
// the headers covers both.
//
// The host pass reaches the kernel bodies through sycl_forward.cpp's launches (clang 16/19 with the 2025.3 and
// 2026.0 headers do), but it need not, so every instance of attention_rows is also used here directly, one per
// (dtype, head dim) that kernel_instances.hpp dispatches to.
//
// ARCATTN_HEADER_CHECK_CONTROL=1 adds a 2-D block load that breaks a documented restriction (a transposed load
// 16 dwords wide; the limit is 8). The script compiles that too and expects it to fail: it shows the headers'
// checks are live in this pass, so a clean compile of the kernel means something. The script finds that load by
// its ARCATTN_CONTROL_LOAD mark and accepts only a static_assert instantiated from that line.
#include <utility>

#include "sycl_forward.cpp"

namespace arcattn {
namespace header_check {

template <typename T, int... I>
void use_every_head_dim(const xmx::KernelParams& p, std::integer_sequence<int, I...>) {
  (xmx::attention_rows<T, xmx::padded_head_dim(xmx::kHeadDims[I])>(p, 0, 0, 0), ...);
}

void use_every_instance(const xmx::KernelParams& p) {
  using dims = std::make_integer_sequence<int, xmx::kNumHeadDims>;
  use_every_head_dim<sycl::half>(p, dims{});
  use_every_head_dim<sycl::ext::oneapi::bfloat16>(p, dims{});
}

#if ARCATTN_HEADER_CHECK_CONTROL
void break_a_block_restriction(const uint32_t* k) {
  namespace esimd = sycl::ext::intel::esimd;
  esimd::simd<uint32_t, 16 * 16> bad =
      esimd::load_2d<uint32_t, 16, 16, 1, true, false>(k, 63u, 63u, 63u, 0, 0);  // ARCATTN_CONTROL_LOAD
  (void)bad;
}
#endif

}  // namespace header_check
}  // namespace arcattn
