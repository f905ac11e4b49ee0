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

// `queue` is a sycl::queue* (torch.xpu.current_stream().sycl_queue). "" when its device can run this binary.
std::string check_device(void* queue);

// Enqueue the kernel on `queue`; does not wait (torch's stream order covers the tensors' lifetimes).
// `a` has passed validate().
void forward(void* queue, const ForwardArgs& a);

}  // namespace sycl_backend
}  // namespace arcattn
