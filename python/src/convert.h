#pragma once
// Conversions between Python objects and kiln values, shared by the binding
// files.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "kiln.h"

namespace kiln::python {

namespace py = pybind11;

// A Python bool/int/float (or NumPy scalar) as a Scalar; nullopt otherwise.
std::optional<Scalar> to_scalar(py::handle obj);

// A Tensor argument: a Tensor, a Python number (0-d tensor), a NumPy array
// or a nested list.
Tensor to_tensor(py::handle obj, const char* op);

// None, a kiln dtype, a NumPy dtype or type, or a name string.
std::optional<DType> to_dtype(py::handle obj);

// Sizes given as f(2, 3), f((2, 3)) or f([2, 3]).
Shape to_shape(const py::args& args, const char* op);
Shape to_shape(py::handle obj, const char* op);

// dim=None | int | tuple/list of ints.
DimList to_dims(py::handle obj);

// The only device this build knows; anything else is a clear error.
// The device a `device=` argument names (None: the cpu); a DeviceError for
// one kiln cannot use here, naming `op`.
Device check_device(py::handle device, const char* op);

// NumPy interop.
Tensor from_numpy(py::array array);
py::array to_numpy(const Tensor& t);
std::string numpy_dtype_char(DType dtype);

// x[index] and x[index] = value with ints, slices, None, Ellipsis, tensors.
Tensor getitem(const Tensor& x, py::handle index);
void setitem(const Tensor& x, py::handle index, py::handle value);

// The binding groups, one file each (module.cpp calls them in order).
void bind_autograd(py::module_& m);
void bind_functional(py::module_& m);
void bind_nn(py::module_& m);
void bind_optim(py::module_& m);
void bind_jit(py::module_& m);
void bind_cache(py::module_& m);
void bind_cuda(py::module_& m);

}  // namespace kiln::python
