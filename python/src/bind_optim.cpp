// The optimizers' update steps and the data helpers. kiln.optim's Python
// classes keep PyTorch's param_groups and state dicts and call these for the
// math, which lives once in eager/optim.cpp.
#include "eager/autograd.h"
#include "eager/data.h"
#include "eager/optim.h"
#include "python/src/convert.h"

namespace kiln::python {

namespace {

// Runs update(param, grad, state) for each parameter that has a gradient,
// with state the parameter's entry of the Python dict `state` (a dict of
// name -> Tensor, created on first use) converted to a C++ ParamState and
// back.
template <class Update>
void for_each_update(const py::list& params, const py::dict& state, Update&& update) {
  NoGradGuard no_grad;
  for (py::handle obj : params) {
    const Tensor& p = obj.cast<const Tensor&>();
    Tensor grad = p.grad();
    if (!grad.defined()) continue;
    if (!state.contains(obj)) state[obj] = py::dict();
    py::dict entry = state[obj];
    optim::ParamState ps;
    for (const auto& item : entry)
      if (py::isinstance<Tensor>(item.second)) ps[py::str(item.first)] = py::cast<Tensor>(item.second);
    update(p, grad, ps);
    for (const auto& [k, v] : ps) entry[py::str(k)] = v;
  }
}

}  // namespace

void bind_optim(py::module_& m) {
  m.def(
      "_sgd_step",
      [](const py::list& params, const py::dict& state, double lr, double momentum, double dampening,
         double weight_decay, bool nesterov, bool maximize, std::optional<bool> fused) {
        optim::SGDOptions o{lr, momentum, dampening, weight_decay, nesterov, maximize, fused};
        for_each_update(params, state, [&](const Tensor& p, const Tensor& g, optim::ParamState& ps) {
          optim::sgd_update(p, g, ps, o);
        });
      },
      py::arg("params"), py::arg("state"), py::arg("lr"), py::arg("momentum"), py::arg("dampening"),
      py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"), py::arg("fused"),
      "One SGD step over the parameters that have a gradient (kiln::optim::sgd_update).");
  m.def(
      "_adam_step",
      [](const py::list& params, const py::dict& state, double lr, double beta1, double beta2, double eps,
         double weight_decay, bool amsgrad, bool maximize, bool decoupled, std::optional<bool> fused) {
        optim::AdamOptions o{lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, fused};
        for_each_update(params, state, [&](const Tensor& p, const Tensor& g, optim::ParamState& ps) {
          optim::adam_update(p, g, ps, o, decoupled);
        });
      },
      py::arg("params"), py::arg("state"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
      py::arg("weight_decay"), py::arg("amsgrad"), py::arg("maximize"), py::arg("decoupled"), py::arg("fused"),
      "One Adam (decoupled: AdamW) step over the parameters that have a gradient "
      "(kiln::optim::adam_update).");
  m.def(
      "_zero_grad",
      [](const std::vector<Tensor>& params, bool set_to_none) {
        NoGradGuard no_grad;
        for (const Tensor& p : params) {
          Tensor g = p.grad();
          if (!g.defined()) continue;
          if (set_to_none)
            p.set_grad(Tensor());
          else
            g.zero_();
        }
      },
      py::arg("params"), py::arg("set_to_none") = true);
  m.def("_clip_grad_norm", &optim::clip_grad_norm_, py::arg("params"), py::arg("max_norm"),
        py::arg("norm_type") = 2.0, py::arg("error_if_nonfinite") = false);
  m.def("_randperm", &data::randperm, py::arg("n"), py::arg("seed"),
        "A permutation of range(n) that depends only on seed (kiln::data::randperm).");
  m.def("_epoch_seed", &data::epoch_seed, py::arg("seed"), py::arg("epoch"));
}

}  // namespace kiln::python
