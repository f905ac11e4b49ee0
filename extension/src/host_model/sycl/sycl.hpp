// A host model of the few SYCL names kernel/xmx_attention_esimd.hpp uses. NOT Intel's header: see
// host_model/sycl/ext/intel/esimd.hpp for why it exists (the CPU reference build runs the kernel source on it).
// queue::submit runs the command group at once; handler::parallel_for runs every work-item in order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

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
enum class aspect { gpu, ext_intel_esimd };
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
}  // namespace ext

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
