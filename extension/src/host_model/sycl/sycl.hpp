// A host model of the few SYCL names kernel/xmx_attention_esimd.hpp and extension/src/ use. NOT Intel's header:
// see host_model/sycl/ext/intel/esimd.hpp for why it exists (the CPU reference build runs the kernel source on it).
// queue::submit runs the command group at once; handler::parallel_for runs every work-item in order.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

// <sycl/version.hpp> (included by <sycl/sycl.hpp>) defines the SYCL runtime's version; the model is no runtime.
#define __LIBSYCL_MAJOR_VERSION 0
#define __LIBSYCL_MINOR_VERSION 0
#define __LIBSYCL_PATCH_VERSION 0

#include "cpu_reference.hpp"  // fp16 / bf16 conversions (round to nearest even)

namespace sycl {

class half {
 public:
  uint16_t bits = 0;
  half() = default;
  explicit half(float f) : bits(arcattn::cpu::float_to_half(f)) {}
  operator float() const { return arcattn::cpu::half_to_float(bits); }
};

namespace ext {
namespace oneapi {
class bfloat16 {
 public:
  uint16_t bits = 0;
  bfloat16() = default;
  explicit bfloat16(float f) : bits(arcattn::cpu::float_to_bf16(f)) {}
  operator float() const { return arcattn::cpu::bf16_to_float(bits); }
};
}  // namespace oneapi
}  // namespace ext

template <int Dims> class nd_range;
template <> class nd_range<1> {
 public:
  nd_range(size_t global, size_t local) : global_(global), local_(local) {}
  size_t global_, local_;
};

template <int Dims> class nd_item;
template <> class nd_item<1> {
 public:
  size_t group_, local_;
  size_t get_group(int) const { return group_; }
  size_t get_local_id(int) const { return local_; }
};

class event {};

// Device queries, for type-checking sycl_forward.cpp against this model (tests compile it with -fsyntax-only;
// nothing here is ever run).
enum class aspect { gpu, ext_intel_esimd, ext_intel_gpu_eu_simd_width };
namespace info {
namespace device {
struct name {
  using return_type = std::string;
};
}  // namespace device
}  // namespace info
namespace ext {
namespace oneapi {
namespace experimental {
enum class architecture : uint64_t { unknown, intel_gpu_bmg_g21, intel_gpu_lnl_m };
namespace info {
namespace device {
struct architecture {
  using return_type = experimental::architecture;
};
}  // namespace device
}  // namespace info
}  // namespace experimental
}  // namespace oneapi
namespace intel {
namespace info {
namespace device {
struct gpu_eu_simd_width {
  using return_type = uint32_t;
};
}  // namespace device
}  // namespace info
}  // namespace intel
}  // namespace ext

// Kernel ids (SYCL 2020 kernel bundles): the real runtime registers one per kernel of every device image when the
// image's library is loaded. The model registers one per parallel_for<Name> instantiation, also at load time, named
// by the compiler's spelling of Name (the runtime uses the mangled name; both contain the class name).
class kernel_id {
 public:
  explicit kernel_id(std::string name) : name_(std::move(name)) {}
  const char* get_name() const noexcept { return name_.c_str(); }

 private:
  std::string name_;
};

namespace model {
inline std::vector<std::string>& kernel_registry() {
  static std::vector<std::string> names;
  return names;
}
template <typename Name>
const char* kernel_type_name() {
  return __PRETTY_FUNCTION__;  // "... [with Name = arcattn::xmx::ArcattnXmxAttention<...>]"; Name may be incomplete
}
struct kernel_registrar {
  explicit kernel_registrar(const char* name) {
    auto& names = kernel_registry();
    if (std::find(names.begin(), names.end(), name) == names.end()) names.emplace_back(name);
  }
};
template <typename Name>
struct kernel_entry {
  static const kernel_registrar registered;
};
template <typename Name>
const kernel_registrar kernel_entry<Name>::registered{kernel_type_name<Name>()};
}  // namespace model

inline std::vector<kernel_id> get_kernel_ids() {
  std::vector<kernel_id> ids;
  for (const std::string& n : model::kernel_registry()) ids.emplace_back(n);
  return ids;
}

class device {
 public:
  bool is_gpu() const { return false; }
  bool has(aspect) const { return false; }
  template <typename Param>
  typename Param::return_type get_info() const { return {}; }
};

class handler {
 public:
  template <typename Name, typename Kernel>
  void parallel_for(const nd_range<1>& r, const Kernel& k) {
    (void)&model::kernel_entry<Name>::registered;  // instantiating the kernel registers its id (at load time)
    if (r.local_ == 0 || r.global_ % r.local_) throw std::logic_error("nd_range: global not a multiple of local");
    for (size_t g = 0; g < r.global_ / r.local_; ++g)
      for (size_t l = 0; l < r.local_; ++l) k(nd_item<1>{g, l});
  }
};

class queue {
 public:
  device get_device() const { return {}; }
  template <typename F>
  event submit(F&& f) {
    handler h;
    f(h);
    return event{};
  }
};

}  // namespace sycl
