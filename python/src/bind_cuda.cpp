// The CUDA driver's queries behind kiln.cuda (python/kiln/cuda.py).
#include "python/src/convert.h"
#include "runtime/cublas.h"
#include "runtime/cuda_driver.h"

namespace kiln::python {

void bind_cuda(py::module_& m) {
  m.def("_cuda_is_available", [] { return cuda::available(); });
  m.def("_cuda_unavailable_reason", [] { return cuda::unavailable_reason(); });
  m.def("_cuda_device_count", [] { return cuda::device_count(); });
  m.def("_cuda_driver_version", [] { return cuda::driver_version(); });
  m.def("_cuda_device_properties", [](int index) {
    cuda::DeviceProperties p = cuda::device_properties(index);
    py::dict d;
    d["name"] = p.name, d["total_memory"] = p.total_memory, d["multi_processor_count"] = p.multiprocessors;
    d["major"] = p.compute_capability_major, d["minor"] = p.compute_capability_minor;
    return d;
  });
  m.def("_cuda_synchronize", [](int index) {
    py::gil_scoped_release release;
    cuda::synchronize(index);
  });
  m.def("_cuda_memory_stats", [](int index) {
    BlockAllocatorStats s = cuda::memory_stats(index);
    py::dict d;
    d["allocated_bytes"] = s.allocated_bytes, d["peak_allocated_bytes"] = s.peak_allocated_bytes;
    d["reserved_bytes"] = s.reserved_bytes, d["peak_reserved_bytes"] = s.peak_reserved_bytes;
    d["num_allocs"] = s.num_allocs, d["num_cache_hits"] = s.num_cache_hits;
    d["num_segments"] = s.num_segments, d["num_oom_retries"] = s.num_oom_retries;
    return d;
  });
  m.def("_cuda_empty_cache", [](int index) { cuda::allocator(index).empty_cache(); });
  m.def("_cuda_reset_peak_memory_stats", [](int index) { cuda::reset_peak_memory_stats(index); });
  m.def("_cuda_mem_get_info", [](int index) {
    cuda::MemoryInfo info = cuda::memory_info(index);
    return py::make_tuple(info.free_bytes, info.total_bytes);
  });
  py::class_<cuda::Stream>(m, "_CudaStream")
      .def(py::init<int>())
      .def_property_readonly("device", &cuda::Stream::device)
      .def("synchronize", &cuda::Stream::synchronize, py::call_guard<py::gil_scoped_release>())
      .def("query", &cuda::Stream::query)
      .def("wait_event", &cuda::Stream::wait);
  // Makes a stream current for its device on this thread while it lives.
  py::class_<cuda::StreamGuard>(m, "_CudaStreamGuard").def(py::init<const cuda::Stream&>(), py::keep_alive<1, 2>());
  py::class_<cuda::Event>(m, "_CudaEvent")
      .def(py::init<int>())
      .def("record", &cuda::Event::record)
      .def("synchronize", &cuda::Event::synchronize, py::call_guard<py::gil_scoped_release>())
      .def("query", &cuda::Event::query)
      .def("wait", &cuda::Event::wait)
      .def("elapsed_ms", &cuda::Event::elapsed_ms);
  m.def("_cuda_allow_tf32", [] { return cublas::allow_tf32(); });
  m.def("_cuda_set_allow_tf32", [](bool allow) { cublas::set_allow_tf32(allow); });
}

}  // namespace kiln::python
