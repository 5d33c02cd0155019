// What kiln.nn (pure Python, python/kiln/nn/) needs from C++: safetensors
// files (kiln.save_file / kiln.load_file, the safetensors package's names),
// the Parameter base type, nn.init, and no-grad state updates for modules.
#include <cerrno>
#include <cstring>
#include <fstream>

#include "eager/autograd.h"
#include "eager/nn/init.h"
#include "eager/nn/module.h"
#include "eager/serialize.h"
#include "python/src/convert.h"

namespace kiln::python {

namespace {

// A Tensor handle of its own type, so Python can subclass it as
// nn.Parameter and tell parameters apart by isinstance.
struct Parameter : Tensor {
  using Tensor::Tensor;
};

std::string fspath(py::handle path) { return py::module_::import("os").attr("fspath")(path).cast<std::string>(); }

// Python users expect FileNotFoundError for a missing file, not a format error.
void check_exists(const std::string& path) {
  std::ifstream probe(path, std::ios::binary);
  if (!probe) {
    py::object err = py::module_::import("builtins").attr("FileNotFoundError")(
        errno, std::strerror(errno), path);
    PyErr_SetObject(PyExc_FileNotFoundError, err.ptr());
    throw py::error_already_set();
  }
}

}  // namespace

void bind_nn(py::module_& m) {
  m.def(
      "save_file",
      [](py::dict tensors, py::object filename, py::object metadata) {
        NamedTensors named;
        for (auto [k, v] : tensors) {
          KILN_CHECK(py::isinstance<py::str>(k), ValueError, "save_file: tensor names must be strings, got {}",
                     py::repr(k).cast<std::string>());
          named.emplace_back(k.cast<std::string>(), to_tensor(v, "save_file"));
        }
        std::map<std::string, std::string> meta;
        if (!metadata.is_none()) {
          for (auto [k, v] : metadata.cast<py::dict>()) {
            KILN_CHECK(py::isinstance<py::str>(k) && py::isinstance<py::str>(v), ValueError,
                       "save_file: metadata must map str to str, got {}: {}", py::repr(k).cast<std::string>(),
                       py::repr(v).cast<std::string>());
            meta[k.cast<std::string>()] = v.cast<std::string>();
          }
        }
        std::string path = fspath(filename);
        py::gil_scoped_release release;
        save_safetensors(path, named, meta);
      },
      py::arg("tensors"), py::arg("filename"), py::arg("metadata") = py::none(),
      "Writes a dict of tensors to a safetensors file (atomically: a temporary file, then a rename).");
  m.def(
      "load_file",
      [](py::object filename) {
        std::string path = fspath(filename);
        check_exists(path);
        NamedTensors named;
        {
          py::gil_scoped_release release;
          named = load_safetensors(path);
        }
        py::dict out;
        for (auto& [k, v] : named) out[py::str(k)] = v;
        return out;
      },
      py::arg("filename"), "Reads every tensor of a safetensors file into a dict (sorted by name).");
  m.def(
      "_safetensors_metadata",
      [](py::object filename) {
        std::string path = fspath(filename);
        check_exists(path);
        return load_safetensors_metadata(path);
      },
      py::arg("filename"));

  py::class_<Parameter, Tensor>(m, "_Parameter")
      .def(py::init([](const Tensor& data, bool requires_grad) {
             // Shares data's storage, as torch.nn.Parameter does, without its history.
             Parameter p(data.detach().impl_handle());
             p.requires_grad_(requires_grad);
             return p;
           }),
           py::arg("data"), py::arg("requires_grad") = true);

  // Module state changes that must not be recorded by autograd.
  m.def("_nn_copy_", [](const Tensor& dst, const Tensor& src) {
    NoGradGuard no_grad;
    Tensor(dst).copy_(src);
  });
  m.def("_nn_set_data", [](const Tensor& t, const Tensor& src) { nn::set_data(t, src); });

  auto init = m.def_submodule("_nn_init", "kiln::nn::init");
  init.def("calculate_gain", &nn::init::calculate_gain, py::arg("nonlinearity"), py::arg("param") = py::none());
  init.def("_calculate_fan_in_and_fan_out", &nn::init::calculate_fan_in_and_fan_out, py::arg("tensor"));
  init.def("uniform_", &nn::init::uniform_, py::arg("tensor"), py::arg("a") = 0.0, py::arg("b") = 1.0);
  init.def("normal_", &nn::init::normal_, py::arg("tensor"), py::arg("mean") = 0.0, py::arg("std") = 1.0);
  init.def("constant_", &nn::init::constant_, py::arg("tensor"), py::arg("val"));
  init.def("zeros_", &nn::init::zeros_, py::arg("tensor"));
  init.def("ones_", &nn::init::ones_, py::arg("tensor"));
  init.def("xavier_uniform_", &nn::init::xavier_uniform_, py::arg("tensor"), py::arg("gain") = 1.0);
  init.def("xavier_normal_", &nn::init::xavier_normal_, py::arg("tensor"), py::arg("gain") = 1.0);
  init.def("kaiming_uniform_", &nn::init::kaiming_uniform_, py::arg("tensor"), py::arg("a") = 0.0,
           py::arg("mode") = "fan_in", py::arg("nonlinearity") = "leaky_relu");
  init.def("kaiming_normal_", &nn::init::kaiming_normal_, py::arg("tensor"), py::arg("a") = 0.0,
           py::arg("mode") = "fan_in", py::arg("nonlinearity") = "leaky_relu");
}

}  // namespace kiln::python
