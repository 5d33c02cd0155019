// kiln._C.nn_functional: the C++ nn::functional ops with their C++
// signatures; python/kiln/nn/functional.py adapts them to PyTorch's
// (ints or tuples for sizes, size_average/reduce, ...).
#include "eager/nn/functional.h"
#include "python/src/convert.h"

namespace kiln::python {
namespace {
namespace F = kiln::nn::functional;
using OptTensor = std::optional<Tensor>;

Tensor opt(const OptTensor& t) { return t.value_or(Tensor()); }

}  // namespace

void bind_functional(py::module_& m) {
  py::module_ f = m.def_submodule("nn_functional", "kiln::nn::functional (C++ signatures)");
  f.def("linear", [](const Tensor& x, const Tensor& w, const OptTensor& b) { return F::linear(x, w, opt(b)); },
        py::arg("input"), py::arg("weight"), py::arg("bias") = py::none());
  f.def("conv2d",
        [](const Tensor& x, const Tensor& w, const OptTensor& b, F::Pair stride, F::Pair padding, F::Pair dilation,
           int64_t groups) { return F::conv2d(x, w, opt(b), stride, padding, dilation, groups); },
        py::arg("input"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("stride") = F::Pair{1, 1},
        py::arg("padding") = F::Pair{0, 0}, py::arg("dilation") = F::Pair{1, 1}, py::arg("groups") = 1);
  f.def("max_pool2d", &F::max_pool2d, py::arg("input"), py::arg("kernel_size"), py::arg("stride") = py::none(),
        py::arg("padding") = F::Pair{0, 0}, py::arg("dilation") = F::Pair{1, 1}, py::arg("ceil_mode") = false);
  f.def("avg_pool2d", &F::avg_pool2d, py::arg("input"), py::arg("kernel_size"), py::arg("stride") = py::none(),
        py::arg("padding") = F::Pair{0, 0}, py::arg("ceil_mode") = false, py::arg("count_include_pad") = true);
  f.def("adaptive_avg_pool2d", &F::adaptive_avg_pool2d, py::arg("input"), py::arg("output_size"));
  f.def("dropout", &F::dropout, py::arg("input"), py::arg("p") = 0.5, py::arg("training") = true);
  f.def("batch_norm",
        [](const Tensor& x, const OptTensor& rm, const OptTensor& rv, const OptTensor& w, const OptTensor& b,
           bool training, double momentum, double eps) {
          return F::batch_norm(x, opt(rm), opt(rv), opt(w), opt(b), training, momentum, eps);
        },
        py::arg("input"), py::arg("running_mean"), py::arg("running_var"), py::arg("weight") = py::none(),
        py::arg("bias") = py::none(), py::arg("training") = false, py::arg("momentum") = 0.1, py::arg("eps") = 1e-5);
  f.def("embedding", &F::embedding, py::arg("input"), py::arg("weight"), py::arg("padding_idx") = py::none());
  f.def("mse_loss", &F::mse_loss, py::arg("input"), py::arg("target"), py::arg("reduction") = "mean");
  f.def("nll_loss",
        [](const Tensor& x, const Tensor& t, const OptTensor& w, int64_t ignore_index, const std::string& reduction) {
          return F::nll_loss(x, t, opt(w), ignore_index, reduction);
        },
        py::arg("input"), py::arg("target"), py::arg("weight") = py::none(), py::arg("ignore_index") = -100,
        py::arg("reduction") = "mean");
  f.def("cross_entropy",
        [](const Tensor& x, const Tensor& t, const OptTensor& w, int64_t ignore_index, const std::string& reduction,
           double label_smoothing) { return F::cross_entropy(x, t, opt(w), ignore_index, reduction, label_smoothing); },
        py::arg("input"), py::arg("target"), py::arg("weight") = py::none(), py::arg("ignore_index") = -100,
        py::arg("reduction") = "mean", py::arg("label_smoothing") = 0.0);
  f.def("binary_cross_entropy_with_logits",
        [](const Tensor& x, const Tensor& t, const OptTensor& w, const OptTensor& pw, const std::string& reduction) {
          return F::binary_cross_entropy_with_logits(x, t, opt(w), opt(pw), reduction);
        },
        py::arg("input"), py::arg("target"), py::arg("weight") = py::none(), py::arg("pos_weight") = py::none(),
        py::arg("reduction") = "mean");
  f.def("scaled_dot_product_attention",
        [](const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& mask, double dropout_p, bool is_causal,
           std::optional<double> scale) {
          return F::scaled_dot_product_attention(q, k, v, opt(mask), dropout_p, is_causal, scale);
        },
        py::arg("query"), py::arg("key"), py::arg("value"), py::arg("attn_mask") = py::none(),
        py::arg("dropout_p") = 0.0, py::arg("is_causal") = false, py::arg("scale") = py::none());
}

}  // namespace kiln::python
