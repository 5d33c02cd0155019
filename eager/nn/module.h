#pragma once
// kiln::nn::Module: the base of every layer, like torch.nn.Module. A module
// owns named parameters, buffers and submodules, registered in order; the
// dotted names ("0.weight", "self_attn.out_proj.bias") and the order of
// parameters() and state_dict() are PyTorch's, so state dicts interchange.
//
//   struct Net : kiln::nn::Module {
//     std::shared_ptr<kiln::nn::Linear> fc1, fc2;
//     Net() : Module("Net") {
//       fc1 = register_module("fc1", std::make_shared<kiln::nn::Linear>(784, 128));
//       fc2 = register_module("fc2", std::make_shared<kiln::nn::Linear>(128, 10));
//     }
//     kiln::Tensor forward(const kiln::Tensor& x) { return fc2->forward(kiln::relu(fc1->forward(x))); }
//   };
//
// Tensors are handles: a layer keeps its parameters as members (`weight`)
// that share the registered tensors, and load_state_dict()/to() change the
// tensors in place so both stay the same. Copying a module copies handles
// (the copy shares parameters with the original).
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "eager/serialize.h"
#include "eager/tensor.h"

namespace kiln::nn {

class Module;
using ModulePtr = std::shared_ptr<Module>;

// What load_state_dict(strict = false) skipped.
struct LoadResult {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
};

class Module : public std::enable_shared_from_this<Module> {
 public:
  explicit Module(std::string name = "Module") : name_(std::move(name)) {}
  virtual ~Module() = default;
  Module(const Module&) = default;
  Module& operator=(const Module&) = default;
  Module(Module&&) = default;
  Module& operator=(Module&&) = default;

  // The class name, as in repr and error messages ("Linear").
  const std::string& name() const { return name_; }

  // ---- registration ----
  // An undefined tensor registers an absent parameter (Linear's bias=false):
  // it is skipped by parameters() and state_dict(). The tensor becomes a
  // leaf that requires grad (when requires_grad).
  Tensor& register_parameter(const std::string& name, Tensor tensor, bool requires_grad = true);
  // Persistent buffers go into state_dict(); others do not.
  Tensor& register_buffer(const std::string& name, Tensor tensor, bool persistent = true);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }
  // Replaces a registered submodule (same name), e.g. to swap a layer.
  void replace_module(const std::string& name, ModulePtr module);

  // ---- traversal (recurse: include submodules' entries, dotted names) ----
  std::vector<Tensor> parameters(bool recurse = true) const;
  NamedTensors named_parameters(bool recurse = true) const;
  std::vector<Tensor> buffers(bool recurse = true) const;
  NamedTensors named_buffers(bool recurse = true) const;
  std::vector<ModulePtr> children() const;
  const std::vector<std::pair<std::string, ModulePtr>>& named_children() const { return children_; }
  // Every module of the tree, depth first, self first ("" names self).
  // Including self needs the module to be held by a std::shared_ptr.
  std::vector<ModulePtr> modules(bool include_self = true);
  std::vector<std::pair<std::string, ModulePtr>> named_modules(bool include_self = true);

  // ---- modes and state ----
  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // set_to_none: drop the gradients (PyTorch's default); else zero them.
  void zero_grad(bool set_to_none = true);
  // Casts floating-point parameters and buffers (and gradients) in place.
  void to(DType dtype);
  // Moves parameters and buffers (and gradients) to `device` in place: the
  // tensors stay the same objects, so an optimizer made before keeps working.
  void to(Device device);

  // Parameters and persistent buffers, detached, sharing storage.
  NamedTensors state_dict() const;
  // Copies the values in (converting dtype). A shape mismatch is always an
  // error; missing and unexpected keys are errors when strict. Nothing is
  // written unless every check passes.
  LoadResult load_state_dict(const NamedTensors& state, bool strict = true);
  LoadResult load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);
  // state_dict() to and from a safetensors file.
  void save(const std::string& path, const std::map<std::string, std::string>& metadata = {}) const;
  LoadResult load(const std::string& path, bool strict = true);

  // PyTorch's repr: "Linear(in_features=2, out_features=3, bias=True)", and
  // one "(name): ..." line per child.
  std::string str() const;
  virtual std::string extra_repr() const { return ""; }

 protected:
  void add_child(const std::string& name, ModulePtr module);

 private:
  struct Slot {
    std::string name;
    Tensor tensor;
    bool persistent = true;
  };
  void check_new_name(const std::string& name, const char* what) const;
  void collect(const std::string& prefix, bool recurse, bool params, bool persistent_only, NamedTensors& out) const;

  std::string name_;
  bool training_ = true;
  std::vector<Slot> parameters_;
  std::vector<Slot> buffers_;
  std::vector<std::pair<std::string, ModulePtr>> children_;
};

// Replaces t's data (storage, geometry, dtype) with src's in place, keeping
// its identity and autograd state: PyTorch's `param.data = src`.
void set_data(const Tensor& t, const Tensor& src);

}  // namespace kiln::nn
