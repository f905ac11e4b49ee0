// SYCL host side of arcattn._xmx: device check and kernel dispatch. The only translation unit compiled with
// -fsycl: binding.cpp (pybind11, Python.h) stays out of the device compilation pass and sees only
// sycl_backend.hpp.
//
// NEVER COMPILED OR RUN in this project's CI or workplace (no oneAPI compiler, no Intel GPU). Written against
// oneAPI DPC++/C++ 2025.x. The queue comes from torch: torch.xpu.current_stream().sycl_queue is the address of
// the stream's sycl::queue (torch/xpu/streams.py and torch._C._XpuStreamBase.sycl_queue: "_int"), which is
// only meaningful if this module and torch share one SYCL runtime (libsycl of the same major version): build
// with the oneAPI release that matches the torch XPU wheel (torch.version.xpu).
#include <string>

#include <sycl/sycl.hpp>

#include "abi.hpp"
#include "sycl_backend.hpp"
#include "xmx_attention_esimd.hpp"

#ifndef ARCATTN_XMX_AOT_DEVICES
#define ARCATTN_XMX_AOT_DEVICES "bmg-g21"
#endif

namespace arcattn {
namespace sycl_backend {

namespace syclex = sycl::ext::oneapi::experimental;

const char* targets() { return ARCATTN_XMX_AOT_DEVICES; }

namespace {

std::string arch_name(syclex::architecture a) {
  switch (a) {
    case syclex::architecture::intel_gpu_bmg_g21: return "intel_gpu_bmg_g21";
#ifdef ARCATTN_XMX_TARGET_LNL_M
    case syclex::architecture::intel_gpu_lnl_m: return "intel_gpu_lnl_m";
#endif
    default: return "architecture #" + std::to_string(static_cast<long long>(a));
  }
}

template <typename T>
void dispatch_dim(sycl::queue& q, const xmx::KernelParams& p) {
  switch (xmx::padded_head_dim(p.D)) {
    case 48: xmx::launch_attention<T, 48>(q, p); break;
    case 64: xmx::launch_attention<T, 64>(q, p); break;
    case 80: xmx::launch_attention<T, 80>(q, p); break;
    case 128: xmx::launch_attention<T, 128>(q, p); break;
    case 160: xmx::launch_attention<T, 160>(q, p); break;
    default: break;  // unreachable: validate() admits only kHeadDims
  }
}

}  // namespace

std::string check_device(void* queue) {
  sycl::queue& q = *static_cast<sycl::queue*>(queue);
  const sycl::device dev = q.get_device();
  const std::string name = dev.get_info<sycl::info::device::name>();
  if (!dev.is_gpu()) return "queue device '" + name + "' is not a GPU";
  if (!dev.has(sycl::aspect::ext_intel_esimd)) return "device '" + name + "' does not support ESIMD";
  const syclex::architecture arch = dev.get_info<syclex::info::device::architecture>();
  bool ok = arch == syclex::architecture::intel_gpu_bmg_g21;
#ifdef ARCATTN_XMX_TARGET_LNL_M
  ok = ok || arch == syclex::architecture::intel_gpu_lnl_m;
#endif
  if (!ok)
    return "device '" + name + "' is " + arch_name(arch) + "; this binary is compiled for " + targets() +
           " (Xe2: Arc B570/B580) only";
  return "";
}

void forward(void* queue, const ForwardArgs& a) {
  sycl::queue& q = *static_cast<sycl::queue*>(queue);
  const xmx::KernelParams p = kernel_params(a);
  if (a.dtype == kFloat16)
    dispatch_dim<sycl::half>(q, p);
  else
    dispatch_dim<sycl::ext::oneapi::bfloat16>(q, p);
}

}  // namespace sycl_backend
}  // namespace arcattn
