// arcattn._xmx: the pybind11 module around the native attention kernel (ABI: see abi.hpp).
//
// One source, two builds:
//   icpx -fsycl (extension/CMakeLists.txt, `python extension/build.py`): the ESIMD kernel for Xe2, enqueued on
//       torch's current XPU queue.
//   g++ -DARCATTN_CPU_REFERENCE (`python extension/build.py --cpu-reference`): the same binding, argument checks
//       and schedule around a plain C++ body that runs synchronously on host memory, plus (with
//       -DARCATTN_KERNEL_HOST_MODEL and host_model/ on the include path) the kernel source itself on a host model
//       of ESIMD. It reports itself as kind "cpu-reference", which arcattn's loader refuses unless explicitly
//       allowed (tests).
// The binding takes raw addresses, strides and ints, so it needs no libtorch and no torch headers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>

#include "abi.hpp"
#include "schedule.hpp"

#ifdef ARCATTN_CPU_REFERENCE
#include "cpu_reference.hpp"
#ifdef ARCATTN_KERNEL_HOST_MODEL
// The real kernel source and its instances, compiled against the host model of SYCL/ESIMD in host_model/ (see its
// header).
#include "kernel_instances.hpp"
#endif
#else
#include "sycl_backend.hpp"  // implemented in sycl_forward.cpp, the only -fsycl translation unit
#endif

namespace py = pybind11;

namespace {

using Strides = std::array<int64_t, 4>;

arcattn::TensorArg tensor_arg(uint64_t ptr, const Strides& s) {
  arcattn::TensorArg t;
  t.ptr = ptr;
  for (int i = 0; i < 4; ++i) t.s[i] = s[i];
  return t;
}

std::string compiler_string() {
#if defined(__INTEL_LLVM_COMPILER) && defined(__VERSION__)
  return "icpx " + std::to_string(__INTEL_LLVM_COMPILER) + " (" __VERSION__ ")";
#elif defined(__INTEL_LLVM_COMPILER)
  return "icx " + std::to_string(__INTEL_LLVM_COMPILER);
#elif defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "g++ " __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

py::dict device_info() {
  py::dict d;
  d["abi"] = ARCATTN_XMX_ABI;
#ifdef ARCATTN_CPU_REFERENCE
  d["kind"] = "cpu-reference";
  d["targets"] = py::list();
#else
  d["kind"] = arcattn::sycl_backend::kKind;
  py::list targets;
  targets.append(arcattn::sycl_backend::targets());
  d["targets"] = targets;
#endif
  py::list dims;
  for (int i = 0; i < arcattn::xmx::kNumHeadDims; ++i) dims.append(arcattn::xmx::kHeadDims[i]);
  d["head_dims"] = dims;
  py::list dtypes;
  dtypes.append("float16");
  dtypes.append("bfloat16");
  d["dtypes"] = dtypes;
  d["compiler"] = compiler_string();
  py::dict rows;
  for (int i = 0; i < arcattn::xmx::kNumHeadDims; ++i) {
    const int dh = arcattn::xmx::kHeadDims[i];
    rows[py::int_(dh)] = arcattn::xmx::rows_per_thread(arcattn::xmx::padded_head_dim(dh));
  }
  d["rows_per_thread"] = rows;
  d["key_block"] = arcattn::xmx::kKeyBlock;
  d["threads_per_group"] = arcattn::xmx::kThreadsPerGroup;
  d["kernel_name"] = arcattn::kKernelName;
#ifdef ARCATTN_CPU_REFERENCE
  d["sycl_major"] = py::none();  // no SYCL runtime in this build
  d["sycl_version"] = py::none();
#ifdef ARCATTN_KERNEL_HOST_MODEL
  d["kernels"] = arcattn::count_kernel_ids();  // the host model's registry: same instances, same count
#else
  d["kernels"] = py::none();
#endif
#else
  d["sycl_major"] = arcattn::sycl_backend::sycl_major();
  d["sycl_version"] = arcattn::sycl_backend::sycl_version();
  d["kernels"] = arcattn::sycl_backend::kernel_count();
#endif
  return d;
}

std::string check_device(uint64_t queue) {
#ifdef ARCATTN_CPU_REFERENCE
  (void)queue;
  return "";
#else
  if (!queue) return "no SYCL queue (torch.xpu.current_stream().sycl_queue is 0)";
  return arcattn::sycl_backend::check_device(reinterpret_cast<void*>(queue));
#endif
}

arcattn::ForwardArgs checked_args(uint64_t q, uint64_t k, uint64_t v, uint64_t o, int dtype, int B, int H, int Sq,
                                  int Sk, int D, const Strides& qs, const Strides& ks, const Strides& vs,
                                  const Strides& os, double scale) {
  arcattn::ForwardArgs a;
  a.q = tensor_arg(q, qs);
  a.k = tensor_arg(k, ks);
  a.v = tensor_arg(v, vs);
  a.o = tensor_arg(o, os);
  a.dtype = dtype;
  a.B = B;
  a.H = H;
  a.Sq = Sq;
  a.Sk = Sk;
  a.D = D;
  a.scale = scale;
  const std::string why = arcattn::validate(a);
  if (!why.empty()) throw py::value_error("arcattn._xmx.forward: " + why);
  return a;
}

void forward(uint64_t q, uint64_t k, uint64_t v, uint64_t o, int dtype, int B, int H, int Sq, int Sk, int D,
             const Strides& qs, const Strides& ks, const Strides& vs, const Strides& os, double scale,
             uint64_t queue) {
  const arcattn::ForwardArgs a = checked_args(q, k, v, o, dtype, B, H, Sq, Sk, D, qs, ks, vs, os, scale);
#ifdef ARCATTN_CPU_REFERENCE
  if (queue) throw py::value_error("arcattn._xmx.forward: the CPU reference takes queue=0 (host memory)");
  py::gil_scoped_release nogil;
  arcattn::cpu::forward(a);
#else
  if (!queue) throw py::value_error("arcattn._xmx.forward: queue is 0 (want torch.xpu.current_stream().sycl_queue)");
  arcattn::sycl_backend::forward(reinterpret_cast<void*>(queue), a);
#endif
}

#ifdef ARCATTN_KERNEL_HOST_MODEL
// kernel/xmx_attention_esimd.hpp itself, run on the CPU through the host model (same arguments as forward).
void forward_kernel_model(uint64_t q, uint64_t k, uint64_t v, uint64_t o, int dtype, int B, int H, int Sq, int Sk,
                          int D, const Strides& qs, const Strides& ks, const Strides& vs, const Strides& os,
                          double scale, uint64_t queue) {
  const arcattn::ForwardArgs a = checked_args(q, k, v, o, dtype, B, H, Sq, Sk, D, qs, ks, vs, os, scale);
  if (queue) throw py::value_error("arcattn._xmx.forward_kernel_model: takes queue=0 (host memory)");
  py::gil_scoped_release nogil;
  sycl::queue host_queue;
  arcattn::launch(host_queue, a);
}
#endif

#ifdef ARCATTN_CPU_REFERENCE
// The 2-D block surface the kernel uses for head (b, h) of a (B, H, S, D) 16-bit tensor at `ptr` (test aid: lets
// tests show which inputs take the row-shifted path, y0 > 0).
py::dict head_surface(uint64_t ptr, const Strides& strides, int b, int h, int rows, int cols) {
  const arcattn::xmx::Surface s = arcattn::xmx::head_surface(ptr, strides.data(), b, h, rows, cols, 2);
  py::dict d;
  d["base"] = s.base;
  d["width"] = s.width;
  d["height"] = s.height;
  d["pitch"] = s.pitch;
  d["x0"] = s.x0;
  d["y0"] = s.y0;
  return d;
}
#endif

}  // namespace

PYBIND11_MODULE(_xmx, m) {
  m.doc() = "arcattn native attention (XMX/ESIMD kernel for Intel Xe2, or its CPU reference build)";
  m.def("abi_version", []() { return ARCATTN_XMX_ABI; }, "Binary interface version (arcattn checks it).");
  m.def("device_info", &device_info,
        "What this binary is: kind, targets, head dims, dtypes, compiler, SYCL runtime, registered kernels.");
  m.def("check_device", &check_device, py::arg("queue"),
        "'' if the device behind the sycl::queue* `queue` can run this binary, else why not.");
  m.def("forward", &forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("dtype"),
        py::arg("B"), py::arg("H"), py::arg("Sq"), py::arg("Sk"), py::arg("D"), py::arg("q_strides"),
        py::arg("k_strides"), py::arg("v_strides"), py::arg("out_strides"), py::arg("scale"), py::arg("queue"),
        "out = softmax(q k^T * scale) v; addresses and (B, H, S, D) element strides; dtype 0=fp16, 1=bf16.");
#ifdef ARCATTN_KERNEL_HOST_MODEL
  m.def("forward_kernel_model", &forward_kernel_model, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("dtype"), py::arg("B"), py::arg("H"), py::arg("Sq"), py::arg("Sk"), py::arg("D"),
        py::arg("q_strides"), py::arg("k_strides"), py::arg("v_strides"), py::arg("out_strides"), py::arg("scale"),
        py::arg("queue"), "The ESIMD kernel source run on the CPU through a host model of the ESIMD API (tests).");
#endif
#ifdef ARCATTN_CPU_REFERENCE
  m.def("head_surface", &head_surface, py::arg("ptr"), py::arg("strides"), py::arg("b"), py::arg("h"),
        py::arg("rows"), py::arg("cols"), "The kernel's 2-D block surface for one head of a 16-bit tensor (tests).");
#endif
}
