// The CUDA driver's queries behind kiln.cuda (python/kiln/cuda.py).
#include "python/src/convert.h"
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
}

}  // namespace kiln::python
