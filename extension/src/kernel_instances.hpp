// The kernel's template instances and how a call picks one. One header for the two builds that compile the kernel
// source: the SYCL build (sycl_forward.cpp, real <sycl/sycl.hpp>) and the CPU reference's host-model run
// (binding.cpp, forward_kernel_model, host_model/sycl/sycl.hpp). Because both builds instantiate the kernel through
// this one switch, the CPU tests that count the host model's kernel ids also check the SYCL build's list.
//
// Each (dtype, padded head dim) pair is one SYCL kernel. count_kernel_ids() counts them back from the SYCL
// runtime's registry of device-image kernels (sycl::get_kernel_ids(), which needs no device), so a binary whose
// device code was never linked in (a Windows build without Ninja, see extension/build.py) or lost kernels says so
// in device_info() instead of failing at its first launch.
#pragma once

#include <cstring>
#include <vector>

#include "abi.hpp"
#include "schedule.hpp"
#include "xmx_attention_esimd.hpp"

namespace arcattn {

namespace detail {
// The switch below has one case per padded head dim; this keeps kHeadDims and the cases in step.
constexpr bool padded_dims_are_the_cases() {
  int seen = 0;
  for (int i = 0; i < xmx::kNumHeadDims; ++i) {
    const int dp = xmx::padded_head_dim(xmx::kHeadDims[i]);
    const int bit = dp == 48 ? 1 : dp == 64 ? 2 : dp == 80 ? 4 : dp == 128 ? 8 : dp == 160 ? 16 : 0;
    if (!bit || (seen & bit)) return false;  // a dim with no case, or two dims sharing one instance
    seen |= bit;
  }
  return seen == 31;
}
static_assert(padded_dims_are_the_cases(), "kHeadDims and the instances in kernel_instances.hpp disagree");
}  // namespace detail

template <typename T>
void launch_padded(sycl::queue& q, const xmx::KernelParams& p) {
  switch (xmx::padded_head_dim(p.D)) {
    case 48: xmx::launch_attention<T, 48>(q, p); break;
    case 64: xmx::launch_attention<T, 64>(q, p); break;
    case 80: xmx::launch_attention<T, 80>(q, p); break;
    case 128: xmx::launch_attention<T, 128>(q, p); break;
    case 160: xmx::launch_attention<T, 160>(q, p); break;
    default: break;  // unreachable: validate() admits only kHeadDims
  }
}

// Enqueue the instance for `a` (which has passed validate()).
inline void launch(sycl::queue& q, const ForwardArgs& a) {
  const xmx::KernelParams p = kernel_params(a);
  if (a.dtype == kFloat16)
    launch_padded<sycl::half>(q, p);
  else
    launch_padded<sycl::ext::oneapi::bfloat16>(q, p);
}

// How many kernels named kKernelName the SYCL runtime knows of in this process (kNumKernelInstances when the
// device image is complete).
inline int count_kernel_ids() {
  int n = 0;
  const std::vector<sycl::kernel_id> ids = sycl::get_kernel_ids();
  for (const sycl::kernel_id& id : ids)
    if (std::strstr(id.get_name(), kKernelName) != nullptr) ++n;
  return n;
}

}  // namespace arcattn
