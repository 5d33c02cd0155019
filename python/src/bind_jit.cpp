// The tracer for kiln.jit (python/kiln/jit.py holds the policy: pytrees,
// cache keys, retracing). Symbolic tensors are ordinary kiln.Tensor objects
// whose ops record themselves while a trace is active on the thread.

#include "python/src/convert.h"
#include "tracer/tracer.h"
#ifdef KILN_HAS_MLIR
#include "tracer/ir_builder.h"
#include "tracer/compiled.h"
#endif

namespace kiln::python {

namespace {
// "file.py:12" of the innermost Python frame outside the kiln package, so
// each recorded op points at the user's line.
std::string user_location() {
  py::gil_scoped_acquire gil;  // ops may record while a binding released the GIL (backward)
  static const std::string package_dir = [] {
    py::module_ kiln = py::module_::import("kiln");
    std::string file = kiln.attr("__file__").cast<std::string>();
    return file.substr(0, file.rfind('/') + 1);
  }();
  PyFrameObject* frame = PyEval_GetFrame();
  Py_XINCREF(frame);
  while (frame) {
    PyCodeObject* code = PyFrame_GetCode(frame);
    std::string file = py::reinterpret_steal<py::object>(py::handle(reinterpret_cast<PyObject*>(code)))
                           .attr("co_filename")
                           .cast<std::string>();
    if (file.rfind(package_dir, 0) != 0) {
      std::string where = file + ":" + std::to_string(PyFrame_GetLineNumber(frame));
      Py_DECREF(frame);
      return where;
    }
    PyFrameObject* back = PyFrame_GetBack(frame);
    Py_DECREF(frame);
    frame = back;
  }
  return "";
}

Shape shape_from_python(py::handle shape) {
  Shape out;
  for (py::handle d : shape) out.push_back(d.is_none() ? kDynamic : d.cast<int64_t>());
  return out;
}

// Python drives a trace between activate() and deactivate(); the tracer
// stays active on this thread only in between.
struct PyTracer {
  std::unique_ptr<Tracer> tracer;
  std::optional<TraceScope> scope;
};
}  // namespace

void bind_jit(py::module_& m) {
  py::class_<TracedFunction, std::shared_ptr<TracedFunction>>(m, "_TracedFunction")
      .def("run",
           [](const TracedFunction& f, const std::vector<Tensor>& args) {
             py::gil_scoped_release no_gil;
             return f.run(args);
           })
      .def_property_readonly("num_ops", [](const TracedFunction& f) { return f.graph.nodes.size(); })
      .def_property_readonly("num_captures", [](const TracedFunction& f) { return f.captures.size(); })
      .def_property_readonly("num_writebacks", [](const TracedFunction& f) { return f.graph.writebacks.size(); })
      .def("ops", [](const TracedFunction& f) {
        py::list out;
        for (const GraphNode& n : f.graph.nodes) out.append(py::make_tuple(n.op->name, n.location));
        return out;
      })
#ifdef KILN_HAS_MLIR
      .def(
          "ir",
          [](const TracedFunction& f, const std::string& stage, bool locations, bool generic) {
            return traced_ir(f, stage, {.locations = locations, .generic = generic});
          },
          py::arg("stage") = "traced", py::arg("locations") = true, py::arg("generic") = false)
      .def("bytecode", [](const TracedFunction& f) { return py::bytes(traced_bytecode(f)); })
#endif
      ;
#ifdef KILN_HAS_MLIR
  // kiln.jit(f, compile=True): a traced variant compiled to native code.
  py::class_<CompiledFunction, std::shared_ptr<CompiledFunction>>(m, "_CompiledFunction")
      .def(py::init([](std::shared_ptr<TracedFunction> f) {
             py::gil_scoped_release no_gil;
             return std::make_shared<CompiledFunction>(std::move(f));
           }),
           py::arg("traced"))
      .def("run",
           [](const CompiledFunction& f, const std::vector<Tensor>& args) {
             py::gil_scoped_release no_gil;
             return f.run(args);
           })
      .def("run_checked",
           [](const CompiledFunction& f, const std::vector<Tensor>& args, double rtol, double atol) {
             py::gil_scoped_release no_gil;
             return f.run_checked(args, rtol, atol);
           })
      .def_property_readonly("comparable", &CompiledFunction::comparable)
      .def_property_readonly("per_shape", &CompiledFunction::per_shape)
      .def_property_readonly("compile_ms", &CompiledFunction::compile_ms)
      .def_property_readonly("from_cache", &CompiledFunction::from_cache)
      .def_property_readonly("num_kernels", &CompiledFunction::num_kernels)
      .def_property_readonly("kernels", &CompiledFunction::kernels)
      .def_property_readonly("host_ops", &CompiledFunction::host_ops)
      .def_property_readonly("peak_intermediate_bytes", &CompiledFunction::peak_intermediate_bytes);
  m.def("_compiled_cache_key", [](const TracedFunction& f) {
    py::gil_scoped_release no_gil;
    return compiled_cache_key(f);
  });
  m.def(
      "_ir_reprint",
      [](py::bytes source, bool locations, bool generic) {
        return reprint_ir(std::string(source), {.locations = locations, .generic = generic});
      },
      py::arg("source"), py::arg("locations") = true, py::arg("generic") = false);
  m.def("_ir_to_bytecode", [](const std::string& text) { return py::bytes(ir_to_bytecode(text)); });
  m.def(
      "_ir_simplify",
      [](py::bytes source, bool locations) { return simplify_ir(std::string(source), {.locations = locations}); },
      py::arg("source"), py::arg("locations") = true);
#endif

  py::class_<PyTracer>(m, "_Tracer")
      .def(py::init([](const std::string& name) {
        auto t = std::make_unique<PyTracer>();
        t->tracer = std::make_unique<Tracer>(name, user_location);
        return t;
      }))
      .def("argument",
           [](PyTracer& t, py::handle shape, py::handle dtype, py::handle device) {
             return t.tracer->argument({shape_from_python(shape), *to_dtype(dtype), check_device(device, "kiln.jit")});
           })
      .def("activate", [](PyTracer& t) { t.scope.emplace(t.tracer.get()); })
      .def("deactivate", [](PyTracer& t) { t.scope.reset(); })
      .def("finish", [](PyTracer& t, const std::vector<Tensor>& results) {
        t.scope.reset();
        return t.tracer->finish(results);
      });
  // The signature of a call, as kiln.jit's cache key: per leaf, a tensor's
  // ("tensor", shape (dynamic dims None), dtype name, requires_grad, device) or a
  // static value's ("static", type, value). In C++ because it runs on every call.
  m.def("_signature", [](py::list leaves, py::dict dynamic) {
    py::tuple out(leaves.size());
    for (size_t i = 0; i < leaves.size(); ++i) {
      py::handle leaf = leaves[i];
      if (py::isinstance<Tensor>(leaf)) {
        const Tensor& t = leaf.cast<const Tensor&>();
        py::object dims = dynamic.contains(py::int_(i)) ? dynamic[py::int_(i)] : py::object(py::none());
        py::tuple shape(t.dim());
        for (int64_t d = 0; d < t.dim(); ++d) {
          bool dyn = is_dynamic(t.shape()[d]) || (!dims.is_none() && dims.contains(py::int_(d)));
          shape[d] = dyn ? py::none() : py::cast(t.shape()[d]);
        }
        out[i] = py::make_tuple("tensor", shape, dtype_name(t.dtype()), t.requires_grad(), t.device().str());
      } else {
        out[i] = py::make_tuple("static", py::type::of(leaf), leaf);
      }
    }
    return out;
  });
  m.def("_is_tracing", [] { return active_trace() != nullptr; });
  m.def("_print_value", [](const Tensor& x, const std::string& label) {
    py::gil_scoped_release no_gil;  // its output goes to C stdout, flushed
    return print_value(x, label);
  });

  // kiln.cond / kiln.while_loop inside a trace (python/kiln/jit.py runs them
  // as plain Python otherwise).
  auto region = [](py::function fn, const char* what) -> RegionFn {
    return [fn, what](const std::vector<Tensor>& args) {
      py::tuple py_args(args.size());
      for (size_t i = 0; i < args.size(); ++i) py_args[i] = py::cast(args[i]);
      py::object out = fn(*py_args);
      std::vector<Tensor> results;
      if (py::isinstance<Tensor>(out)) {
        results.push_back(out.cast<Tensor>());
      } else if (py::isinstance<py::tuple>(out) || py::isinstance<py::list>(out)) {
        for (py::handle h : out) {
          if (!py::isinstance<Tensor>(h))
            throw py::type_error(std::string(what) + " must return a tensor or a tuple of tensors");
          results.push_back(h.cast<Tensor>());
        }
      } else {
        throw py::type_error(std::string(what) + " must return a tensor or a tuple of tensors, got " +
                             std::string(py::str(py::type::of(out).attr("__name__"))));
      }
      return results;
    };
  };
  auto tracer = [] {
    auto* t = dynamic_cast<Tracer*>(active_trace());
    if (!t) fail<TraceError>("kiln.cond / kiln.while_loop: no kiln.jit trace is active");
    return t;
  };
  m.def("_cond", [=](const Tensor& pred, py::function then_fn, py::function else_fn, const std::vector<Tensor>& ops) {
    return tracer()->cond(pred, region(then_fn, "kiln.cond: true_fn"), region(else_fn, "kiln.cond: false_fn"), ops);
  });
  m.def("_while_loop", [=](py::function cond_fn, py::function body_fn, const std::vector<Tensor>& init) {
    return tracer()->while_loop(region(cond_fn, "kiln.while_loop: cond_fn"), region(body_fn, "kiln.while_loop: body_fn"),
                                init);
  });
  m.def("_is_symbolic", [](const Tensor& t) { return is_symbolic(t); });
}

}  // namespace kiln::python
