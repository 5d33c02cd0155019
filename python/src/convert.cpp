#include "python/src/convert.h"

#include "eager/cuda/launch.h"
#include "runtime/cuda_driver.h"

namespace kiln::python {

std::optional<Scalar> to_scalar(py::handle obj) {
  PyObject* o = obj.ptr();
  if (PyBool_Check(o)) return Scalar(o == Py_True);
  if (PyLong_Check(o)) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    KILN_CHECK(!overflow, ValueError, "integer {} does not fit in int64", py::str(obj).cast<std::string>());
    return Scalar(static_cast<int64_t>(v));
  }
  if (PyFloat_Check(o)) return Scalar(PyFloat_AS_DOUBLE(o));
  // NumPy scalars (np.float32(1), np.int64(2), np.bool_).
  if (py::isinstance<py::array>(obj) || !py::hasattr(obj, "dtype") || !py::hasattr(obj, "item"))
    return std::nullopt;
  if (py::hasattr(obj, "shape") && py::len(obj.attr("shape")) == 0 &&
      !py::isinstance<Tensor>(obj)) {
    return to_scalar(obj.attr("item")());
  }
  return std::nullopt;
}

namespace {
DType from_numpy_dtype(const py::dtype& dt) {
  char kind = dt.kind();
  size_t size = dt.itemsize();
  if (kind == 'b') return DType::Bool;
  if (kind == 'u' && size == 1) return DType::UInt8;
  if (kind == 'i' && size == 1) return DType::Int8;
  if (kind == 'i' && size == 4) return DType::Int32;
  if (kind == 'i' && size == 8) return DType::Int64;
  if (kind == 'f' && size == 2) return DType::Float16;
  if (kind == 'f' && size == 4) return DType::Float32;
  if (kind == 'f' && size == 8) return DType::Float64;
  fail<DTypeError>("NumPy dtype {} has no kiln equivalent (kiln has bool, uint8, int8, int32, "
                   "int64, float16, bfloat16, float32, float64)",
                   py::str(static_cast<py::handle>(dt)).cast<std::string>());
}
}  // namespace

std::string numpy_dtype_char(DType dtype) {
  switch (dtype) {
    case DType::Bool: return "?";
    case DType::UInt8: return "B";
    case DType::Int8: return "b";
    case DType::Int32: return "i";
    case DType::Int64: return "q";
    case DType::Float16: return "e";
    case DType::Float32: return "f";
    case DType::Float64: return "d";
    case DType::BFloat16: break;
  }
  fail<DTypeError>("NumPy has no bfloat16: convert first with .to(kiln.float32)");
}

std::optional<DType> to_dtype(py::handle obj) {
  if (obj.is_none()) return std::nullopt;
  if (py::isinstance<DType>(obj)) return obj.cast<DType>();
  if (py::isinstance<py::str>(obj)) return dtype_from_name(obj.cast<std::string>());
  if (obj.ptr() == reinterpret_cast<PyObject*>(&PyFloat_Type)) return DType::Float64;
  if (obj.ptr() == reinterpret_cast<PyObject*>(&PyLong_Type)) return DType::Int64;
  if (obj.ptr() == reinterpret_cast<PyObject*>(&PyBool_Type)) return DType::Bool;
  try {
    return from_numpy_dtype(py::dtype::from_args(py::reinterpret_borrow<py::object>(obj)));
  } catch (const py::error_already_set&) {
    fail<DTypeError>("expected a dtype such as kiln.float32, got {}", py::repr(obj).cast<std::string>());
  }
}

Shape to_shape(py::handle obj, const char* op) {
  Shape shape;
  if (auto s = to_scalar(obj); s && s->category() == DTypeCategory::Integral) return {s->to_int()};
  KILN_CHECK(py::isinstance<py::sequence>(obj) && !py::isinstance<py::str>(obj), DTypeError,
             "{}: expected a size (ints or a tuple of ints), got {}", op, py::repr(obj).cast<std::string>());
  for (py::handle item : obj) {
    auto s = to_scalar(item);
    KILN_CHECK(s && s->category() == DTypeCategory::Integral, DTypeError,
               "{}: sizes must be ints, got {}", op, py::repr(item).cast<std::string>());
    shape.push_back(s->to_int());
  }
  return shape;
}

Shape to_shape(const py::args& args, const char* op) {
  if (args.size() == 1 && !to_scalar(args[0])) return to_shape(static_cast<py::handle>(args[0]), op);
  return to_shape(static_cast<py::handle>(args), op);
}

DimList to_dims(py::handle obj) {
  if (obj.is_none()) return {};
  if (auto s = to_scalar(obj)) {
    KILN_CHECK(s->category() == DTypeCategory::Integral, DTypeError, "dim must be an int, got {}",
               py::repr(obj).cast<std::string>());
    return {s->to_int()};
  }
  return to_shape(obj, "dim");
}

Device check_device(py::handle device, const char* op) {
  if (device.is_none()) return kCPU;
  Device d = Device::parse(py::str(device).cast<std::string>());
  if (d.is_cpu()) return d;
  cuda::require(d, op);  // a clear error without a driver or GPU, or for a device that does not exist
  KILN_CHECK(cuda_kernels::built(), DeviceError,
             "{}: this build of kiln has no CUDA kernels (nvcc was not found when it was built); use the cpu", op);
  return d;
}

Tensor from_numpy(py::array array) {
  DType dtype = from_numpy_dtype(array.dtype());
  const int64_t item = static_cast<int64_t>(array.itemsize());
  Shape shape(array.shape(), array.shape() + array.ndim());
  Strides strides(array.ndim());
  bool viewable = true;
  for (py::ssize_t d = 0; d < array.ndim(); ++d) {
    int64_t s = array.strides()[d];
    viewable = viewable && s >= 0 && s % item == 0;
    strides[d] = s / item;
  }
  py::object flags = array.attr("flags");
  if (!viewable || !array.dtype().attr("isnative").cast<bool>() || !flags.attr("aligned").cast<bool>() ||
      !flags.attr("writeable").cast<bool>()) {
    // Negative or unaligned strides cannot be a kiln view, and a read-only
    // array must not be written through one: copy.
    py::array copy = py::array::ensure(
        py::module_::import("numpy").attr("ascontiguousarray")(array, array.dtype().attr("newbyteorder")("=")));
    return from_blob_copy(copy.data(), shape, dtype);
  }
  // Zero-copy: the storage keeps the array alive; releasing it may happen on
  // any thread, so take the GIL.
  auto* owner = array.ptr();
  Py_INCREF(owner);
  int64_t span = 1;
  for (py::ssize_t d = 0; d < array.ndim(); ++d) span += (shape[d] - 1) * strides[d];
  if (numel(shape) == 0) span = 0;
  auto storage = Storage::borrow(const_cast<void*>(array.data()), static_cast<size_t>(span * item), kCPU,
                                 [owner] {
                                   if (!Py_IsInitialized()) return;
                                   py::gil_scoped_acquire gil;
                                   Py_DECREF(owner);
                                 });
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

py::array to_numpy(const Tensor& t) {
  KILN_CHECK(t.device().is_cpu(), DeviceError, "numpy(): the tensor is on {}; call .cpu() first",
             t.device().str());
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
  std::vector<py::ssize_t> strides;
  for (int64_t s : t.strides()) strides.push_back(s * static_cast<int64_t>(t.itemsize()));
  // The capsule owns a handle to the tensor, so the array shares its memory.
  auto* keep = new Tensor(t);
  py::capsule base(keep, [](void* p) { delete static_cast<Tensor*>(p); });
  return py::array(py::dtype(numpy_dtype_char(t.dtype())), shape, strides, t.data_ptr(), base);
}

Tensor to_tensor(py::handle obj, const char* op) {
  if (py::isinstance<Tensor>(obj)) return obj.cast<Tensor>();
  if (auto s = to_scalar(obj)) return scalar_tensor(*s);
  if (py::isinstance<py::array>(obj)) return from_numpy(py::reinterpret_borrow<py::array>(obj));
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj))
    return py::module_::import("kiln").attr("tensor")(obj).cast<Tensor>();
  fail<DTypeError>("{}: expected a Tensor, got {}", op, py::str(obj.get_type().attr("__name__")).cast<std::string>());
}

// ---- indexing ----

namespace {
struct IndexPlan {
  Tensor view;                  // after ints, slices, None and Ellipsis
  std::vector<Tensor> indices;  // advanced indices by dim of `view` (undefined: none)
  bool advanced = false;
};

bool is_index_tensor(py::handle item) {
  return py::isinstance<Tensor>(item) || py::isinstance<py::array>(item) || py::isinstance<py::list>(item);
}

IndexPlan plan_index(const Tensor& x, py::handle index) {
  py::tuple items = py::isinstance<py::tuple>(index) ? py::reinterpret_borrow<py::tuple>(index)
                                                      : py::make_tuple(index);
  // Dims that the items consume, to size the Ellipsis.
  int64_t consumed = 0;
  int ellipses = 0;
  for (py::handle item : items) {
    if (item.is_none() || PyBool_Check(item.ptr())) continue;  // these add a dim
    if (item.ptr() == Py_Ellipsis) {
      ++ellipses;
      continue;
    }
    if (py::isinstance<Tensor>(item)) {
      Tensor t = item.cast<Tensor>();
      consumed += t.dtype() == DType::Bool ? t.dim() : 1;
    } else {
      ++consumed;
    }
  }
  KILN_CHECK(ellipses <= 1, IndexError, "an index can only have a single ellipsis ('...')");
  KILN_CHECK(consumed <= x.dim(), IndexError, "too many indices for a tensor of dimension {} (got {})",
             x.dim(), consumed);

  IndexPlan plan{x, {}, false};
  std::vector<std::pair<int64_t, Tensor>> advanced;
  int64_t dim = 0;
  for (py::handle item : items) {
    if (item.is_none()) {
      plan.view = unsqueeze(plan.view, dim++);
    } else if (item.ptr() == Py_Ellipsis) {
      dim += x.dim() - consumed;
    } else if (PySlice_Check(item.ptr())) {
      auto bound = [](py::handle h) -> std::optional<int64_t> {
        if (h.is_none()) return std::nullopt;
        auto s = to_scalar(h);
        KILN_CHECK(s && s->category() != DTypeCategory::Floating, IndexError,
                   "slice indices must be integers or None, got {}", py::repr(h).cast<std::string>());
        return s->to_int();
      };
      auto* sl = reinterpret_cast<PySliceObject*>(item.ptr());
      auto step = bound(sl->step);
      plan.view = slice(plan.view, dim++, bound(sl->start), bound(sl->stop), step.value_or(1));
    } else if (PyBool_Check(item.ptr())) {  // x[True]: like a 0-d bool mask
      advanced.emplace_back(dim, scalar_tensor(item.ptr() == Py_True));
    } else if (auto s = to_scalar(item); s && s->category() == DTypeCategory::Integral) {
      plan.view = select(plan.view, dim, s->to_int());
    } else if (is_index_tensor(item)) {
      Tensor t = to_tensor(item, "index");
      KILN_CHECK(t.dtype() == DType::Bool || is_integral(t.dtype()), IndexError,
                 "tensors used as indices must be integer or bool, got {}", dtype_name(t.dtype()));
      advanced.emplace_back(dim, t);
      dim += t.dtype() == DType::Bool ? t.dim() : 1;
    } else {
      fail<IndexError>(
          "only integers, slices (':'), ellipsis ('...'), None and integer or bool tensors are "
          "valid indices (got {})",
          py::str(item.get_type().attr("__name__")).cast<std::string>());
    }
  }
  if (!advanced.empty()) {
    // One slot per index: a k-dim bool mask covers k dims of the view.
    plan.advanced = true;
    size_t next = 0;
    int64_t inserted = 0;  // dims added by 0-d bool indices so far
    for (int64_t d = 0; d < plan.view.dim() || next < advanced.size();) {
      if (next < advanced.size() && advanced[next].first + inserted == d) {
        Tensor t = advanced[next++].second;
        if (t.dtype() == DType::Bool && t.dim() == 0) {  // x[True]: a new dim of size 1 or 0
          plan.view = unsqueeze(plan.view, d);
          t = t.item<bool>() ? zeros({1}, DType::Int64) : zeros({0}, DType::Int64);
          ++inserted;
        }
        plan.indices.push_back(t);
        d += t.dtype() == DType::Bool ? t.dim() : 1;
      } else {
        KILN_CHECK(d < plan.view.dim(), IndexError, "too many indices for a tensor of dimension {}", x.dim());
        plan.indices.push_back(Tensor());
        ++d;
      }
    }
  }
  return plan;
}
}  // namespace

Tensor getitem(const Tensor& x, py::handle index) {
  IndexPlan plan = plan_index(x, index);
  if (!plan.advanced) return plan.view;
  return kiln::index(plan.view, plan.indices);
}

void setitem(const Tensor& x, py::handle index, py::handle value) {
  IndexPlan plan = plan_index(x, index);
  Tensor v = to_tensor(value, "__setitem__");
  if (!plan.advanced) {
    if (v.dim() == 0 && v.numel() == 1 && !py::isinstance<Tensor>(value)) {
      Tensor(plan.view).fill_(*to_scalar(value));
    } else {
      Tensor(plan.view).copy_(v);
    }
    return;
  }
  index_put_(plan.view, plan.indices, v);
}

}  // namespace kiln::python
