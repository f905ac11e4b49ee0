// The SYCL build's backend, as binding.cpp sees it: no SYCL types, so that the pybind11 translation unit is
// compiled without -fsycl (Python.h never goes through the device compiler). Defined in sycl_forward.cpp.
#pragma once

#include <string>

#include "abi.hpp"

namespace arcattn {
namespace sycl_backend {

constexpr const char* kKind = "sycl-esimd";

// The ahead-of-time device list this binary was compiled for (e.g. "bmg-g21").
const char* targets();

// The SYCL runtime this binary was compiled against: __LIBSYCL_MAJOR_VERSION (the N of libsycl.so.N /
// syclN.dll) and "major.minor.patch".
int sycl_major();
std::string sycl_version();

// How many of this binary's kernels the SYCL runtime registered (kNumKernelInstances when the device image is
// complete); -1 if the runtime threw.
int kernel_count();

// `queue` is a sycl::queue* (torch.xpu.current_stream().sycl_queue). "" when its device can run this binary.
std::string check_device(void* queue);

// Enqueue the kernel on `queue`; does not wait (torch's stream order covers the tensors' lifetimes).
// `a` has passed validate().
void forward(void* queue, const ForwardArgs& a);

}  // namespace sycl_backend
}  // namespace arcattn
