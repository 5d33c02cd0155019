// Autograd on the Python side: Tensor.requires_grad/grad/backward/...,
// grad mode, and autograd.grad. The engine is eager/autograd.cpp.
#include "eager/autograd.h"
#include "python/src/convert.h"

namespace kiln::python {

namespace {
// The recorded op behind a tensor, as PyTorch's grad_fn shows it.
struct GradFn {
  std::shared_ptr<Node> node;
  std::string name() const { return grad_fn_name(*node); }
};

py::object optional_tensor(const Tensor& t) { return t.defined() ? py::cast(t) : py::none(); }

Tensor tensor_or_undefined(py::handle h, const char* what) {
  if (h.is_none()) return Tensor();
  if (!py::isinstance<Tensor>(h))
    throw py::type_error(std::string(what) + " must be a kiln.Tensor or None, got " +
                         std::string(py::str(py::type::of(h).attr("__name__"))));
  return h.cast<Tensor>();
}

void reject_create_graph(bool create_graph, const char* op) {
  if (create_graph)
    fail<ValueError>("{}: create_graph=True (higher-order gradients) is not supported; kiln computes first-order "
                     "gradients only",
                     op);
}
}  // namespace

void bind_autograd(py::module_& m) {
  py::class_<GradFn>(m, "GradFn", "The recorded op that produced a tensor (tensor.grad_fn).")
      .def("name", &GradFn::name)
      .def("__repr__", [](const GradFn& f) { return "<" + f.name() + " object>"; });

  auto tensor = py::reinterpret_borrow<py::class_<Tensor>>(m.attr("Tensor"));
  tensor
      .def_property(
          "requires_grad", [](const Tensor& t) { return t.requires_grad(); },
          [](Tensor& t, bool value) { t.requires_grad_(value); })
      .def(
          "requires_grad_", [](Tensor& t, bool value) -> Tensor& { return t.requires_grad_(value); },
          py::arg("requires_grad") = true, py::return_value_policy::reference_internal)
      .def_property(
          "grad", [](const Tensor& t) { return optional_tensor(t.grad()); },
          [](const Tensor& t, py::handle g) { t.set_grad(tensor_or_undefined(g, "grad")); })
      .def_property_readonly("is_leaf", &Tensor::is_leaf)
      .def_property_readonly("grad_fn",
                             [](const Tensor& t) -> py::object {
                               auto fn = t.grad_fn();
                               return fn ? py::cast(GradFn{fn}) : py::none();
                             })
      .def("detach", &Tensor::detach)
      .def("retain_grad", &Tensor::retain_grad)
      .def(
          "backward",
          [](const Tensor& t, py::handle gradient, std::optional<bool> retain_graph, bool create_graph) {
            reject_create_graph(create_graph, "backward");
            Tensor g = tensor_or_undefined(gradient, "gradient");
            py::gil_scoped_release no_gil;
            t.backward(g, retain_graph.value_or(false));
          },
          py::arg("gradient") = py::none(), py::arg("retain_graph") = py::none(), py::arg("create_graph") = false);

  m.def("is_grad_enabled", &grad_mode_enabled);
  m.def("_set_grad_enabled", [](bool enabled) {
    bool previous = grad_mode_enabled();
    set_grad_enabled(enabled);
    return previous;
  });
  m.def(
      "_autograd_grad",
      [](const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs, py::list grad_outputs,
         bool retain_graph, bool allow_unused) {
        std::vector<Tensor> gs;
        for (py::handle g : grad_outputs) gs.push_back(tensor_or_undefined(g, "grad_outputs"));
        std::vector<Tensor> result;
        {
          py::gil_scoped_release no_gil;
          result = gradients(outputs, inputs, gs, retain_graph, allow_unused);
        }
        py::tuple out(result.size());
        for (size_t i = 0; i < result.size(); ++i) out[i] = optional_tensor(result[i]);
        return out;
      },
      py::arg("outputs"), py::arg("inputs"), py::arg("grad_outputs"), py::arg("retain_graph"),
      py::arg("allow_unused"));
}

}  // namespace kiln::python
