// SYCL host side of arcattn._xmx: device check, SYCL runtime identity and kernel dispatch. The only translation
// unit compiled with -fsycl: binding.cpp (pybind11, Python.h) stays out of the device compilation pass and sees
// only sycl_backend.hpp.
//
// NEVER COMPILED BY A SYCL COMPILER OR RUN in this project's CI or workplace (no oneAPI compiler, no Intel GPU); CI
// type-checks it against the host model in host_model/, and against Intel's own SYCL headers with clang's host
// pass (extension/check_headers.py). Written against oneAPI DPC++/C++ 2025.x/2026.x. The queue comes from
// torch: torch.xpu.current_stream().sycl_queue is the address of the stream's sycl::queue (torch/xpu/streams.py
// and torch._C._XpuStreamBase.sycl_queue: "_int"), which is only meaningful if this module and torch share one
// SYCL runtime (libsycl of the same major version). sycl_major() reports the one this file was compiled against;
// arcattn's loader compares it with the runtime torch loaded before it hands the binary a queue.
#include <exception>
#include <string>

#include <sycl/sycl.hpp>

#include "abi.hpp"
#include "kernel_instances.hpp"
#include "sycl_backend.hpp"

#ifndef __LIBSYCL_MAJOR_VERSION
#error "<sycl/sycl.hpp> did not define __LIBSYCL_MAJOR_VERSION (documented in intel/llvm PreprocessorMacros.md)"
#endif
// The build names the binary after the SYCL major it found in the compiler's <sycl/version.hpp>
// (_xmx.sycl<N><suffix>, see extension/build.py); a different header on the include path would make the name lie.
#ifdef ARCATTN_SYCL_MAJOR
static_assert(__LIBSYCL_MAJOR_VERSION == ARCATTN_SYCL_MAJOR,
              "the SYCL headers' __LIBSYCL_MAJOR_VERSION differs from ARCATTN_SYCL_MAJOR given by the build");
#endif

#ifndef ARCATTN_XMX_AOT_DEVICES
#define ARCATTN_XMX_AOT_DEVICES "bmg-g21"
#endif

namespace arcattn {
namespace sycl_backend {

namespace syclex = sycl::ext::oneapi::experimental;

const char* targets() { return ARCATTN_XMX_AOT_DEVICES; }

int sycl_major() { return __LIBSYCL_MAJOR_VERSION; }

std::string sycl_version() {
  return std::to_string(__LIBSYCL_MAJOR_VERSION) + "." + std::to_string(__LIBSYCL_MINOR_VERSION) + "." +
         std::to_string(__LIBSYCL_PATCH_VERSION);
}

int kernel_count() {
  try {
    return count_kernel_ids();
  } catch (const std::exception&) {
    return -1;
  }
}

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

}  // namespace

std::string check_device(void* queue) {
  sycl::queue& q = *static_cast<sycl::queue*>(queue);
  const sycl::device dev = q.get_device();
  const std::string name = dev.get_info<sycl::info::device::name>();
  if (!dev.is_gpu()) return "queue device '" + name + "' is not a GPU";
  if (!dev.has(sycl::aspect::ext_intel_esimd)) return "device '" + name + "' does not support ESIMD";
  // Older runtimes throw for devices their architecture table does not know.
  syclex::architecture arch;
  try {
    arch = dev.get_info<syclex::info::device::architecture>();
  } catch (const std::exception& e) {
    return "device '" + name + "': the SYCL runtime cannot tell its architecture (" + e.what() + ")";
  }
  bool ok = arch == syclex::architecture::intel_gpu_bmg_g21;
#ifdef ARCATTN_XMX_TARGET_LNL_M
  ok = ok || arch == syclex::architecture::intel_gpu_lnl_m;
#endif
  if (!ok)
    return "device '" + name + "' is " + arch_name(arch) + "; this binary is compiled for " + targets() +
           " (Xe2: Arc B570/B580) only";
  // The kernel's DPAS tiles are 16 wide, Xe2's execution size ("the user must check the execution size before
  // calling DPAS", esimd/xmx/dpas.hpp). A device that does not report its SIMD width is let through: the
  // architecture check above already pins it to Xe2.
  if (dev.has(sycl::aspect::ext_intel_gpu_eu_simd_width)) {
    const auto width = dev.get_info<sycl::ext::intel::info::device::gpu_eu_simd_width>();
    if (width != 16)
      return "device '" + name + "' reports EU SIMD width " + std::to_string(width) +
             "; the kernel's DPAS tiles need 16";
  }
  return "";
}

void forward(void* queue, const ForwardArgs& a) { launch(*static_cast<sycl::queue*>(queue), a); }

}  // namespace sycl_backend
}  // namespace arcattn
