// kiln._C: the Tensor type, every eager op and the runtime knobs. The op
// tables (eager/*.def) generate the elementwise bindings, so an op added
// there appears here without more code.
#include <pybind11/operators.h>

#include "python/src/convert.h"

namespace kiln::python {
namespace {

// Binary operands arrive as arbitrary Python objects; numbers stay wrapped
// scalars so they do not widen the tensor's dtype.
template <class TensorFn, class ScalarFn>
py::object binary(const Tensor& a, py::handle b, TensorFn tf, ScalarFn sf, bool reflected = false) {
  if (py::isinstance<Tensor>(b)) {
    const Tensor& tb = b.cast<const Tensor&>();
    return py::cast(reflected ? tf(tb, a) : tf(a, tb));
  }
  if (auto s = to_scalar(b)) return py::cast(sf(a, *s));
  if (py::isinstance<py::array>(b) || py::isinstance<py::list>(b) || py::isinstance<py::tuple>(b)) {
    Tensor tb = to_tensor(b, "binary op");
    return py::cast(reflected ? tf(tb, a) : tf(a, tb));
  }
  return py::reinterpret_borrow<py::object>(Py_NotImplemented);
}

#define KILN_BINARY_LAMBDAS(NAME)                                                   \
  [](const Tensor& x, const Tensor& y) { return kiln::NAME(x, y); },                \
      [](const Tensor& x, Scalar y) { return kiln::NAME(x, y); }
// In-place: the result goes into x's storage (a copy of the handle shares it).
#define KILN_INPLACE_LAMBDAS(NAME)                                                  \
  [](const Tensor& x, const Tensor& y) { Tensor s = x; kiln::NAME##_(s, y); return s; }, \
      [](const Tensor& x, Scalar y) { Tensor s = x; kiln::NAME##_(s, y); return s; }
#define KILN_RBINARY_LAMBDAS(NAME)                                                  \
  [](const Tensor& x, const Tensor& y) { return kiln::NAME(x, y); },                \
      [](const Tensor& x, Scalar y) { return kiln::NAME(y, x); }

py::object max_tuple(std::pair<Tensor, Tensor> vi, const char* name) {
  // Leaked on purpose: a static py::object would be destroyed after the
  // interpreter has finalized.
  static py::object* max_t = new py::object(
      py::module_::import("collections").attr("namedtuple")("max", py::make_tuple("values", "indices")));
  static py::object* min_t = new py::object(
      py::module_::import("collections").attr("namedtuple")("min", py::make_tuple("values", "indices")));
  return (std::string(name) == "max" ? *max_t : *min_t)(vi.first, vi.second);
}

std::optional<int64_t> opt_dim(py::handle dim) {
  if (dim.is_none()) return std::nullopt;
  return dim.cast<int64_t>();
}

std::optional<Scalar> opt_scalar(py::handle obj, const char* op) {
  if (obj.is_none()) return std::nullopt;
  auto s = to_scalar(obj);
  KILN_CHECK(s, DTypeError, "{}: expected a number, got {}", op, py::repr(obj).cast<std::string>());
  return s;
}

// pybind11's buffer slot lets a C++ exception (a GPU tensor's DeviceError)
// escape into CPython, which terminates the process. This one turns it
// into a BufferError: memoryview() says why, and NumPy goes on to
// __array__, which raises the DeviceError itself.
getbufferproc pybind11_getbuffer_of_tensor = nullptr;
extern "C" int tensor_getbuffer(PyObject* obj, Py_buffer* view, int flags) {
  try {
    return pybind11_getbuffer_of_tensor(obj, view, flags);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_BufferError, e.what());
    return -1;
  }
}

}  // namespace

// A shape as Python sees it: a dynamic dim of a traced tensor is None.
py::tuple shape_tuple(const Shape& shape) {
  py::tuple out(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) out[i] = is_dynamic(shape[i]) ? py::none() : py::cast(shape[i]);
  return out;
}

void bind_tensor(py::module_& m) {
  py::class_<Tensor> t(m, "Tensor", py::buffer_protocol());
  t.def_property_readonly("shape", [](const Tensor& x) { return shape_tuple(x.shape()); })
      .def("size", [](const Tensor& x, py::object dim) -> py::object {
        if (dim.is_none()) return shape_tuple(x.shape());
        int64_t d = x.size(dim.cast<int64_t>());
        return is_dynamic(d) ? py::none() : py::cast(d);
      }, py::arg("dim") = py::none())
      .def("dim", &Tensor::dim)
      .def_property_readonly("ndim", &Tensor::dim)
      .def("numel", &Tensor::numel)
      .def_property_readonly("dtype", &Tensor::dtype)
      .def_property_readonly("device", [](const Tensor& x) { return x.device().str(); })
      .def_property_readonly("is_cuda", [](const Tensor& x) { return !x.device().is_cpu(); })
      .def_property_readonly("T", &Tensor::T)
      .def_property_readonly("mT", [](const Tensor& x) { return transpose(x, -2, -1); })
      .def_property_readonly("_version", &Tensor::version)
      .def("stride", [](const Tensor& x, py::object dim) -> py::object {
        if (dim.is_none()) return py::tuple(py::cast(x.strides()));
        return py::cast(x.strides()[wrap_dim(dim.cast<int64_t>(), x.dim(), "stride")]);
      }, py::arg("dim") = py::none())
      .def("storage_offset", &Tensor::offset)
      .def("data_ptr", [](const Tensor& x) { return reinterpret_cast<uintptr_t>(x.data_ptr()); })
      .def("element_size", [](const Tensor& x) { return x.itemsize(); })
      .def("is_contiguous", &Tensor::is_contiguous)
      .def("is_floating_point", [](const Tensor& x) { return is_floating(x.dtype()); })
      .def("item", [](const Tensor& x) -> py::object {
        Scalar s = x.item();
        switch (s.category()) {
          case DTypeCategory::Bool: return py::bool_(s.to_int() != 0);
          case DTypeCategory::Integral: return py::int_(s.to_int());
          case DTypeCategory::Floating: break;
        }
        return py::float_(s.to_double());
      })
      .def("numpy", &to_numpy)
      .def("__array__", [](const Tensor& x, py::object dtype) {
        py::array a = to_numpy(x);
        return dtype.is_none() ? a : py::array(a.attr("astype")(dtype));
      }, py::arg("dtype") = py::none())
      .def_buffer([](const Tensor& x) {
        std::vector<py::ssize_t> shape(x.shape().begin(), x.shape().end()), strides;
        for (int64_t s : x.strides()) strides.push_back(s * static_cast<int64_t>(x.itemsize()));
        return py::buffer_info(x.data_ptr(), static_cast<py::ssize_t>(x.itemsize()),
                               numpy_dtype_char(x.dtype()), x.dim(), shape, strides);
      })
      .def("__repr__", &Tensor::str)
      .def("__len__", [](const Tensor& x) {
        KILN_CHECK(x.dim() > 0, DTypeError, "len() of a 0-d tensor");
        return x.shape()[0];
      })
      .def("__bool__", [](const Tensor& x) {
        KILN_CHECK(x.numel() == 1, ValueError,
                   "the truth value of a tensor with {} elements is ambiguous; use .any() or .all()", x.numel());
        return x.item<bool>();
      })
      .def("__float__", [](const Tensor& x) { return x.item<double>(); })
      .def("__int__", [](const Tensor& x) { return x.item<int64_t>(); })
      .def("__index__", [](const Tensor& x) {
        KILN_CHECK(!is_floating(x.dtype()) && x.numel() == 1, DTypeError,
                   "only integer tensors of a single element can be converted to an index");
        return x.item<int64_t>();
      })
      .def("__hash__", [](const Tensor& x) { return reinterpret_cast<uintptr_t>(x.impl_ptr()); })
      .def("__getitem__", &getitem)
      .def("__setitem__", &setitem)
      // copies and conversion
      .def("contiguous", &Tensor::contiguous)
      .def("clone", &Tensor::clone)
      .def("copy_", [](Tensor& x, py::handle src) -> Tensor& { return x.copy_(to_tensor(src, "copy_")); },
           py::return_value_policy::reference_internal)
      .def("fill_", [](Tensor& x, py::handle v) -> Tensor& {
        auto s = to_scalar(v);
        if (!s && py::isinstance<Tensor>(v)) s = v.cast<Tensor>().item();
        KILN_CHECK(s, DTypeError, "fill_: value must be a number or a 1-element tensor");
        return x.fill_(*s);
      }, py::return_value_policy::reference_internal)
      .def("zero_", &Tensor::zero_, py::return_value_policy::reference_internal)
      .def("_to", [](const Tensor& x, py::object dtype, py::object device, bool copy) {
        Tensor out = x;
        if (!device.is_none()) out = out.to(check_device(device, "to"));
        if (auto d = to_dtype(dtype)) out = out.to(*d);
        return copy && out.is_same(x) ? x.clone() : out;
      })
      .def("cuda", [](const Tensor& x, py::object device, bool /*non_blocking: copies complete before returning*/) {
        // x.cuda(), x.cuda(1), x.cuda("cuda:1")
        py::object name = device.is_none()                 ? py::str("cuda")
                          : py::isinstance<py::int_>(device) ? py::str(fmt::format("cuda:{}", device.cast<int>()))
                                                             : device;
        return x.to(check_device(name, "cuda"));
      }, py::arg("device") = py::none(), py::arg("non_blocking") = false)
      .def("cpu", [](py::object self) {  // x itself when it is on the cpu already, as in PyTorch
        const Tensor& x = self.cast<const Tensor&>();
        return x.device().is_cpu() ? self : py::cast(x.cpu());
      })
      .def("pin_memory", &Tensor::pin_memory)
      .def("is_pinned", &Tensor::is_pinned)
      // views
      .def("view", [](const Tensor& x, py::args shape) {
        if (shape.size() == 1 && (py::isinstance<DType>(shape[0])))
          fail<DTypeError>("view(dtype) is not supported; use .to(dtype)");
        return x.view(to_shape(shape, "view"));
      })
      .def("reshape", [](const Tensor& x, py::args shape) { return x.reshape(to_shape(shape, "reshape")); })
      .def("permute", [](const Tensor& x, py::args dims) { return x.permute(to_shape(dims, "permute")); })
      .def("expand", [](const Tensor& x, py::args shape) { return x.expand(to_shape(shape, "expand")); })
      .def("transpose", &Tensor::transpose)
      .def("swapaxes", &Tensor::transpose)
      .def("t", [](const Tensor& x) {
        KILN_CHECK(x.dim() <= 2, ShapeError, "t(): expects a tensor with <= 2 dims, got {}", x.dim());
        return x.T();
      })
      .def("squeeze", [](const Tensor& x, py::object dim) { return x.squeeze(opt_dim(dim)); },
           py::arg("dim") = py::none())
      .def("unsqueeze", &Tensor::unsqueeze, py::arg("dim"))
      .def("flatten", &Tensor::flatten, py::arg("start_dim") = 0, py::arg("end_dim") = -1)
      .def("narrow", &Tensor::narrow)
      .def("select", &Tensor::select);

  // Elementwise methods, generated from the op tables.
#define KILN_UNARY(NAME, KIND, EXPR, ...)                                   \
  t.def(#NAME, [](const Tensor& x) { return kiln::NAME(x); });          \
  t.def(#NAME "_", [](py::object self) {                                 \
    self.cast<Tensor&>().NAME##_();                                     \
    return self;                                                        \
  });
#include "eager/unary_ops.def"
#undef KILN_UNARY
#define KILN_BINARY(NAME, KIND, EXPR, ...)                                                      \
  t.def(#NAME, [](const Tensor& x, py::handle y) { return binary(x, y, KILN_BINARY_LAMBDAS(NAME)); }); \
  t.def(#NAME "_", [](py::object self, py::handle y) -> py::object {                       \
    py::object r = binary(self.cast<const Tensor&>(), y, KILN_INPLACE_LAMBDAS(NAME));      \
    return r.is(py::reinterpret_borrow<py::object>(Py_NotImplemented)) ? r : self;         \
  });
#include "eager/binary_ops.def"
#undef KILN_BINARY

  // Operators. Python calls the reflected form (__radd__) with the tensor
  // on the right.
  struct OperatorRow {
    const char* dunder;
    const char* rdunder;
    const char* idunder;
    py::object (*fn)(const Tensor&, py::handle);
    py::object (*rfn)(const Tensor&, py::handle);
    py::object (*ifn)(const Tensor&, py::handle);
  };
#define KILN_OP_ROW(DUNDER, NAME)                                                            \
  OperatorRow{"__" DUNDER "__", "__r" DUNDER "__", "__i" DUNDER "__",                         \
              [](const Tensor& x, py::handle y) { return binary(x, y, KILN_BINARY_LAMBDAS(NAME)); }, \
              [](const Tensor& x, py::handle y) { return binary(x, y, KILN_RBINARY_LAMBDAS(NAME), true); }, \
              [](const Tensor& x, py::handle y) { return binary(x, y, KILN_INPLACE_LAMBDAS(NAME)); }}
  const OperatorRow rows[] = {
      KILN_OP_ROW("add", add),          KILN_OP_ROW("sub", sub),
      KILN_OP_ROW("mul", mul),          KILN_OP_ROW("truediv", div),
      KILN_OP_ROW("floordiv", floor_divide), KILN_OP_ROW("mod", remainder),
      KILN_OP_ROW("pow", pow),          KILN_OP_ROW("and", bitwise_and),
      KILN_OP_ROW("or", bitwise_or),    KILN_OP_ROW("xor", bitwise_xor),
  };
  for (const OperatorRow& row : rows) {
    t.def(row.dunder, row.fn, py::is_operator());
    t.def(row.rdunder, row.rfn, py::is_operator());
    auto ifn = row.ifn;
    // Returns the same Python object, so `x += 1` keeps x's identity.
    t.def(row.idunder, [ifn](py::object self, py::handle y) -> py::object {
      py::object r = ifn(self.cast<const Tensor&>(), y);
      return r.is(py::reinterpret_borrow<py::object>(Py_NotImplemented)) ? r : self;
    }, py::is_operator());
  }
#define KILN_CMP(DUNDER, NAME) \
  t.def("__" DUNDER "__", [](const Tensor& x, py::handle y) { return binary(x, y, KILN_BINARY_LAMBDAS(NAME)); }, py::is_operator());
  KILN_CMP("eq", eq) KILN_CMP("ne", ne) KILN_CMP("lt", lt) KILN_CMP("le", le) KILN_CMP("gt", gt) KILN_CMP("ge", ge)
#undef KILN_CMP
  t.def("__matmul__", [](const Tensor& x, py::handle y) { return matmul(x, to_tensor(y, "matmul")); })
      .def("__rmatmul__", [](const Tensor& x, py::handle y) { return matmul(to_tensor(y, "matmul"), x); })
      .def("__neg__", [](const Tensor& x) { return neg(x); })
      .def("__pos__", [](const Tensor& x) { return x; })
      .def("__abs__", [](const Tensor& x) { return kiln::abs(x); })
      .def("__invert__", [](const Tensor& x) { return bitwise_not(x); })
      .def("logical_not", &Tensor::logical_not)
      .def("bitwise_not", &Tensor::bitwise_not)
      .def("clamp", [](const Tensor& x, py::object lo, py::object hi) {
        return x.clamp(opt_scalar(lo, "clamp"), opt_scalar(hi, "clamp"));
      }, py::arg("min") = py::none(), py::arg("max") = py::none())
      .def("clamp_", [](Tensor& x, py::object lo, py::object hi) -> Tensor& {
        return x.clamp_(opt_scalar(lo, "clamp_"), opt_scalar(hi, "clamp_"));
      }, py::arg("min") = py::none(), py::arg("max") = py::none(), py::return_value_policy::reference_internal)
      .def("gelu", [](const Tensor& x, const std::string& approximate) { return gelu(x, approximate); },
           py::arg("approximate") = "none")
      // reductions
      .def("sum", [](const Tensor& x, py::object dim, bool keepdim, py::object dtype) {
        return sum(x, to_dims(dim), keepdim, to_dtype(dtype));
      }, py::arg("dim") = py::none(), py::arg("keepdim") = false, py::arg("dtype") = py::none())
      .def("mean", [](const Tensor& x, py::object dim, bool keepdim) { return mean(x, to_dims(dim), keepdim); },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("prod", [](const Tensor& x, py::object dim, bool keepdim) { return prod(x, to_dims(dim), keepdim); },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("amax", [](const Tensor& x, py::object dim, bool keepdim) { return amax(x, to_dims(dim), keepdim); },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("amin", [](const Tensor& x, py::object dim, bool keepdim) { return amin(x, to_dims(dim), keepdim); },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("max", [](const Tensor& x, py::object dim, bool keepdim) -> py::object {
        if (dim.is_none()) return py::cast(amax(x));
        if (py::isinstance<Tensor>(dim)) return py::cast(maximum(x, dim.cast<Tensor>()));
        return max_tuple(max(x, dim.cast<int64_t>(), keepdim), "max");
      }, py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("min", [](const Tensor& x, py::object dim, bool keepdim) -> py::object {
        if (dim.is_none()) return py::cast(amin(x));
        if (py::isinstance<Tensor>(dim)) return py::cast(minimum(x, dim.cast<Tensor>()));
        return max_tuple(min(x, dim.cast<int64_t>(), keepdim), "min");
      }, py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("argmax", [](const Tensor& x, py::object dim, bool keepdim) { return argmax(x, opt_dim(dim), keepdim); },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("argmin", [](const Tensor& x, py::object dim, bool keepdim) { return argmin(x, opt_dim(dim), keepdim); },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("var", [](const Tensor& x, py::object dim, py::object unbiased, bool keepdim, py::object correction) {
        int64_t c = correction.is_none() ? (unbiased.is_none() || unbiased.cast<bool>() ? 1 : 0) : correction.cast<int64_t>();
        return var(x, to_dims(dim), c, keepdim);
      }, py::arg("dim") = py::none(), py::arg("unbiased") = py::none(), py::arg("keepdim") = false,
         py::arg("correction") = py::none())
      .def("std", [](const Tensor& x, py::object dim, py::object unbiased, bool keepdim, py::object correction) {
        int64_t c = correction.is_none() ? (unbiased.is_none() || unbiased.cast<bool>() ? 1 : 0) : correction.cast<int64_t>();
        return kiln::std(x, to_dims(dim), c, keepdim);
      }, py::arg("dim") = py::none(), py::arg("unbiased") = py::none(), py::arg("keepdim") = false,
         py::arg("correction") = py::none())
      .def("logsumexp", [](const Tensor& x, py::object dim, bool keepdim) { return logsumexp(x, to_dims(dim), keepdim); },
           py::arg("dim"), py::arg("keepdim") = false)
      .def("any", [](const Tensor& x, py::object dim, bool keepdim) { return any(x, to_dims(dim), keepdim); },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("all", [](const Tensor& x, py::object dim, bool keepdim) { return all(x, to_dims(dim), keepdim); },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("matmul", [](const Tensor& x, py::handle y) { return matmul(x, to_tensor(y, "matmul")); })
      .def("softmax", &Tensor::softmax, py::arg("dim"))
      .def("log_softmax", &Tensor::log_softmax, py::arg("dim"))
      // indexing
      .def("index_select", [](const Tensor& x, int64_t dim, const Tensor& i) { return index_select(x, dim, i); },
           py::arg("dim"), py::arg("index"))
      .def("gather", [](const Tensor& x, int64_t dim, const Tensor& i) { return gather(x, dim, i); },
           py::arg("dim"), py::arg("index"))
      .def("scatter_add", [](const Tensor& x, int64_t dim, const Tensor& i, const Tensor& s) {
        return scatter_add(x, dim, i, s);
      }, py::arg("dim"), py::arg("index"), py::arg("src"))
      .def("masked_fill", [](const Tensor& x, const Tensor& mask, py::handle v) {
        auto s = to_scalar(v);
        if (!s && py::isinstance<Tensor>(v)) s = v.cast<Tensor>().item();
        KILN_CHECK(s, DTypeError, "masked_fill: value must be a number or a 1-element tensor");
        return masked_fill(x, mask, *s);
      }, py::arg("mask"), py::arg("value"))
      .def("nonzero", [](const Tensor& x) { return nonzero(x); })
      .def("split", [](const Tensor& x, py::object size, int64_t dim) {
        if (auto s = to_scalar(size)) return split(x, s->to_int(), dim);
        return split(x, to_shape(size, "split"), dim);
      }, py::arg("split_size_or_sections"), py::arg("dim") = 0)
      .def("chunk", [](const Tensor& x, int64_t chunks, int64_t dim) { return chunk(x, chunks, dim); },
           py::arg("chunks"), py::arg("dim") = 0);
  PyBufferProcs* buffer = reinterpret_cast<PyTypeObject*>(t.ptr())->tp_as_buffer;
  pybind11_getbuffer_of_tensor = buffer->bf_getbuffer;
  buffer->bf_getbuffer = tensor_getbuffer;
}

void bind_functions(py::module_& m) {
#define KILN_UNARY(NAME, KIND, EXPR, ...) m.def(#NAME, [](const Tensor& x) { return kiln::NAME(x); });
#include "eager/unary_ops.def"
#undef KILN_UNARY
#define KILN_BINARY(NAME, KIND, EXPR, ...)                                       \
  m.def(#NAME, [](py::handle a, py::handle b) -> py::object {               \
    if (py::isinstance<Tensor>(a)) return binary(a.cast<Tensor>(), b, KILN_BINARY_LAMBDAS(NAME)); \
    return binary(to_tensor(b, #NAME), a, KILN_RBINARY_LAMBDAS(NAME), true); \
  });
#include "eager/binary_ops.def"
#undef KILN_BINARY

  m.def("gelu", [](const Tensor& x, const std::string& a) { return gelu(x, a); }, py::arg("input"),
        py::arg("approximate") = "none");
  m.def("logical_not", [](const Tensor& x) { return logical_not(x); });
  m.def("bitwise_not", [](const Tensor& x) { return bitwise_not(x); });
  m.def("where", [](const Tensor& c, py::handle a, py::handle b) {
    auto sa = to_scalar(a), sb = to_scalar(b);
    if (sa && sb) return where(c, *sa, *sb);
    if (sa) return where(c, *sa, to_tensor(b, "where"));
    if (sb) return where(c, to_tensor(a, "where"), *sb);
    return where(c, to_tensor(a, "where"), to_tensor(b, "where"));
  });
  m.def("matmul", [](const Tensor& a, const Tensor& b) { return matmul(a, b); });
  m.def("softmax", [](const Tensor& x, int64_t dim) { return softmax(x, dim); }, py::arg("input"), py::arg("dim"));
  m.def("log_softmax", [](const Tensor& x, int64_t dim) { return log_softmax(x, dim); }, py::arg("input"),
        py::arg("dim"));
  m.def("layer_norm", [](const Tensor& x, py::object shape, std::optional<Tensor> w, std::optional<Tensor> b,
                         double eps) {
    return layer_norm(x, to_shape(shape, "layer_norm"), w.value_or(Tensor()), b.value_or(Tensor()), eps);
  }, py::arg("input"), py::arg("normalized_shape"), py::arg("weight") = py::none(), py::arg("bias") = py::none(),
        py::arg("eps") = 1e-5);
  m.def("cat", [](const std::vector<Tensor>& xs, int64_t dim) { return cat(xs, dim); }, py::arg("tensors"),
        py::arg("dim") = 0);
  m.def("stack", [](const std::vector<Tensor>& xs, int64_t dim) { return stack(xs, dim); }, py::arg("tensors"),
        py::arg("dim") = 0);
  m.def("one_hot", [](const Tensor& x, int64_t n) { return one_hot(x, n); }, py::arg("input"),
        py::arg("num_classes") = -1);
  m.def("index", [](const Tensor& x, const std::vector<std::optional<Tensor>>& idx) {
    std::vector<Tensor> v;
    for (auto& i : idx) v.push_back(i.value_or(Tensor()));
    return index(x, v);
  });
  m.def("broadcast_tensors", [](py::args xs) { return broadcast_tensors(xs.cast<std::vector<Tensor>>()); });
  m.def("broadcast_to", [](const Tensor& x, py::object shape) { return broadcast_to(x, to_shape(shape, "broadcast_to")); });

  // creation (sizes and dtypes are normalized by the Python layer)
  m.def("_full", [](const Shape& s, py::handle v, py::object dtype, py::object device) {
    auto sv = to_scalar(v);
    KILN_CHECK(sv, DTypeError, "full: fill_value must be a number, got {}", py::repr(v).cast<std::string>());
    return full(s, *sv, to_dtype(dtype), check_device(device, "full"));
  }, py::arg("size"), py::arg("value"), py::arg("dtype"), py::arg("device") = py::none());
  m.def("_full_like", [](const Tensor& x, py::handle v, py::object dtype) {
    auto sv = to_scalar(v);
    KILN_CHECK(sv, DTypeError, "full_like: fill_value must be a number, got {}", py::repr(v).cast<std::string>());
    return full_like(x, *sv, to_dtype(dtype));
  });
  m.def("_empty", [](const Shape& s, py::object dtype, py::object device) {
    return Tensor::empty(s, to_dtype(dtype).value_or(DType::Float32), check_device(device, "empty"));
  }, py::arg("size"), py::arg("dtype"), py::arg("device") = py::none());
  m.def("_arange", [](py::handle start, py::handle end, py::handle step, py::object dtype) {
    return arange(*opt_scalar(start, "arange"), *opt_scalar(end, "arange"), *opt_scalar(step, "arange"),
                  to_dtype(dtype));
  });
  m.def("_linspace", [](double a, double b, int64_t n, py::object dtype) {
    return linspace(a, b, n, to_dtype(dtype).value_or(DType::Float32));
  });
  m.def("_eye", [](int64_t n, std::optional<int64_t> m, py::object dtype) {
    return eye(n, m, to_dtype(dtype).value_or(DType::Float32));
  });
  m.def("_rand", [](const Shape& s, py::object dtype, py::object device) {
    return rand(s, to_dtype(dtype).value_or(DType::Float32), check_device(device, "rand"));
  }, py::arg("size"), py::arg("dtype"), py::arg("device") = py::none());
  m.def("_rand_like", [](const Tensor& x, py::object dtype) { return rand_like(x, to_dtype(dtype)); });
  m.def("_randn_like", [](const Tensor& x, py::object dtype) { return randn_like(x, to_dtype(dtype)); });
  m.def("_randn", [](const Shape& s, py::object dtype, py::object device) {
    return randn(s, to_dtype(dtype).value_or(DType::Float32), check_device(device, "randn"));
  }, py::arg("size"), py::arg("dtype"), py::arg("device") = py::none());
  m.def("_normal", [](double mean, double std, const Shape& s, py::object dtype, py::object device) {
    return normal(mean, std, s, to_dtype(dtype).value_or(DType::Float32), check_device(device, "normal"));
  }, py::arg("mean"), py::arg("std"), py::arg("size"), py::arg("dtype"), py::arg("device") = py::none());
  m.def("_randint", [](int64_t lo, int64_t hi, const Shape& s, py::object dtype, py::object device) {
    return randint(lo, hi, s, to_dtype(dtype).value_or(DType::Int64), check_device(device, "randint"));
  }, py::arg("low"), py::arg("high"), py::arg("size"), py::arg("dtype"), py::arg("device") = py::none());
  m.def("manual_seed", [](uint64_t seed) { manual_seed(seed); });
  m.def("from_numpy", &from_numpy);
  m.def("_to_dtype", [](py::object d) { return to_dtype(d); });
  m.def("_check_device", [](py::object d, const char* op) -> py::object {
    if (d.is_none()) return py::none();
    return py::str(check_device(d, op).str());
  });

  // runtime knobs
  m.def("get_num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads);
  m.def("_allocator_stats", [] {
    AllocatorStats s = cpu_allocator().stats();
    py::dict d;
    d["allocated_bytes"] = s.allocated_bytes;
    d["cached_bytes"] = s.cached_bytes;
    d["peak_allocated_bytes"] = s.peak_allocated_bytes;
    d["num_allocs"] = s.num_allocs;
    d["num_cache_hits"] = s.num_cache_hits;
    return d;
  });
  m.def("_empty_cache", [] { cpu_allocator().empty_cache(); });
}

void bind_dtypes(py::module_& m) {
  py::enum_<DType> d(m, "dtype");
  for (int i = 0; i < kNumDTypes; ++i) {
    auto dt = static_cast<DType>(i);
    d.value(std::string(dtype_name(dt)).c_str(), dt);
  }
  // __repr__ is set in kiln/__init__.py: pybind11's enum already defines one,
  // and a second .def would only add an overload behind it.
  d.def_property_readonly("_repr", [](DType x) { return fmt::format("kiln.{}", dtype_name(x)); })
      .def_property_readonly("itemsize", [](DType x) { return itemsize(x); })
      .def_property_readonly("is_floating_point", [](DType x) { return is_floating(x); });
  m.def("promote_types", &promote_types);
  m.def("result_type", [](py::handle a, py::handle b) {
    auto operand = [](py::handle h, Tensor& keep) -> Operand {
      if (auto s = to_scalar(h)) return {nullptr, s};
      keep = to_tensor(h, "result_type");
      return {&keep, std::nullopt};
    };
    Tensor ka, kb;
    Operand oa = operand(a, ka), ob = operand(b, kb);
    return result_type({oa, ob});
  });
}

void register_errors(py::module_& m) {
  static py::exception<ShapeError> shape_error(m, "ShapeError", PyExc_ValueError);
  static py::exception<DTypeError> dtype_error(m, "DTypeError", PyExc_TypeError);
  static py::exception<DeviceError> device_error(m, "DeviceError", PyExc_RuntimeError);
  static py::exception<Error> kiln_error(m, "KilnError", PyExc_RuntimeError);
  static py::exception<TraceError> trace_error(m, "TraceError", kiln_error.ptr());
  static py::exception<IrError> ir_error(m, "IrError", kiln_error.ptr());
  static py::exception<CheckError> check_error(m, "CheckError", kiln_error.ptr());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ShapeError& e) {
      shape_error(e.what());
    } catch (const DTypeError& e) {
      dtype_error(e.what());
    } catch (const IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what());
    } catch (const ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const DeviceError& e) {
      device_error(e.what());
    } catch (const TraceError& e) {
      trace_error(e.what());
    } catch (const IrError& e) {
      ir_error(e.what());
    } catch (const CheckError& e) {
      check_error(e.what());
    } catch (const Error& e) {
      kiln_error(e.what());
    }
  });
}

}  // namespace kiln::python

PYBIND11_MODULE(_C, m) {
  using namespace kiln::python;
  m.doc() = "kiln's C++ core";
  register_errors(m);
  bind_dtypes(m);
  bind_tensor(m);
  bind_functions(m);
  bind_autograd(m);    // bind_autograd.cpp
  bind_functional(m);  // bind_functional.cpp: kiln._C.nn_functional
  bind_nn(m);          // bind_nn.cpp: safetensors and state helpers
  bind_optim(m);       // bind_optim.cpp: the optimizers' update steps
  bind_jit(m);         // bind_jit.cpp: the tracer behind kiln.jit
  bind_cache(m);       // bind_cache.cpp: the compile cache behind kiln.cache
  bind_cuda(m);        // bind_cuda.cpp: the CUDA driver's queries behind kiln.cuda
}
