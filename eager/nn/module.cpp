#include "eager/nn/module.h"

#include <algorithm>
#include <set>
#include <unordered_set>

#include "eager/autograd.h"
#include "eager/ops.h"

namespace kiln::nn {

namespace {

std::string join_keys(const std::vector<std::string>& keys) {
  std::string out;
  for (size_t i = 0; i < keys.size(); ++i) out += (i ? ", \"" : "\"") + keys[i] + "\"";
  return out;
}

// Indents every line after the first (PyTorch's _addindent).
std::string add_indent(const std::string& s, int spaces) {
  std::string out, pad(static_cast<size_t>(spaces), ' ');
  for (char c : s) {
    out += c;
    if (c == '\n') out += pad;
  }
  return out;
}

}  // namespace

void set_data(const Tensor& t, const Tensor& src) {
  KILN_CHECK(t.defined() && src.defined(), ValueError, "set_data: undefined tensor");
  TensorImpl* dst = t.impl_ptr();
  const TensorImpl* from = src.impl_ptr();
  if (dst == from) return;
  dst->storage = from->storage;
  dst->shape = from->shape;
  dst->strides = from->strides;
  dst->offset = from->offset;
  dst->dtype = from->dtype;
}

void Module::check_new_name(const std::string& name, const char* what) const {
  KILN_CHECK(!name.empty() && name.find('.') == std::string::npos, ValueError,
             "{}.register_{}: the name \"{}\" must be non-empty and contain no '.'", name_, what, name);
  bool taken = std::any_of(children_.begin(), children_.end(), [&](const auto& c) { return c.first == name; });
  for (const auto* slots : {&parameters_, &buffers_})
    for (const Slot& s : *slots) taken = taken || s.name == name;
  KILN_CHECK(!taken, ValueError, "{}.register_{}: \"{}\" is already registered", name_, what, name);
}

Tensor& Module::register_parameter(const std::string& name, Tensor tensor, bool requires_grad) {
  check_new_name(name, "parameter");
  if (tensor.defined()) {
    if (!tensor.is_leaf()) tensor = tensor.detach();
    tensor.requires_grad_(requires_grad);
  }
  parameters_.push_back({name, std::move(tensor), true});
  return parameters_.back().tensor;
}

Tensor& Module::register_buffer(const std::string& name, Tensor tensor, bool persistent) {
  check_new_name(name, "buffer");
  buffers_.push_back({name, std::move(tensor), persistent});
  return buffers_.back().tensor;
}

void Module::add_child(const std::string& name, ModulePtr module) {
  check_new_name(name, "module");
  KILN_CHECK(module, ValueError, "{}.register_module: \"{}\" is null", name_, name);
  children_.emplace_back(name, std::move(module));
}

void Module::replace_module(const std::string& name, ModulePtr module) {
  KILN_CHECK(module, ValueError, "{}.replace_module: \"{}\" is null", name_, name);
  for (auto& [n, m] : children_)
    if (n == name) {
      m = std::move(module);
      return;
    }
  fail<ValueError>("{}.replace_module: no submodule named \"{}\"", name_, name);
}

void Module::collect(const std::string& prefix, bool recurse, bool params, bool persistent_only,
                     NamedTensors& out) const {
  for (const Slot& s : params ? parameters_ : buffers_)
    if (s.tensor.defined() && (!persistent_only || s.persistent)) out.emplace_back(prefix + s.name, s.tensor);
  if (recurse)
    for (const auto& [name, child] : children_) child->collect(prefix + name + ".", true, params, persistent_only, out);
}

NamedTensors Module::named_parameters(bool recurse) const {
  NamedTensors all, out;
  collect("", recurse, true, false, all);
  // A parameter shared by two modules (tied weights) is listed once, so an
  // optimizer steps it once.
  std::unordered_set<const TensorImpl*> seen;
  for (auto& e : all)
    if (seen.insert(e.second.impl_ptr()).second) out.push_back(std::move(e));
  return out;
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters(recurse)) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers(bool recurse) const {
  NamedTensors all, out;
  collect("", recurse, false, false, all);
  std::unordered_set<const TensorImpl*> seen;
  for (auto& e : all)
    if (seen.insert(e.second.impl_ptr()).second) out.push_back(std::move(e));
  return out;
}

std::vector<Tensor> Module::buffers(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_buffers(recurse)) out.push_back(t);
  return out;
}

std::vector<ModulePtr> Module::children() const {
  std::vector<ModulePtr> out;
  for (const auto& [name, child] : children_) out.push_back(child);
  return out;
}

std::vector<std::pair<std::string, ModulePtr>> Module::named_modules(bool include_self) {
  std::vector<std::pair<std::string, ModulePtr>> out;
  if (include_self) {
    ModulePtr self = weak_from_this().lock();
    KILN_CHECK(self, ValueError,
               "{}.modules(): including the module itself needs it to be held by a std::shared_ptr "
               "(std::make_shared); pass include_self = false",
               name_);
    out.emplace_back("", self);
  }
  std::unordered_set<const Module*> seen{this};
  auto walk = [&](auto& self_ref, Module& m, const std::string& prefix) -> void {
    for (auto& [name, child] : m.children_) {
      if (!seen.insert(child.get()).second) continue;
      out.emplace_back(prefix + name, child);
      self_ref(self_ref, *child, prefix + name + ".");
    }
  };
  walk(walk, *this, "");
  return out;
}

std::vector<ModulePtr> Module::modules(bool include_self) {
  std::vector<ModulePtr> out;
  for (auto& [name, m] : named_modules(include_self)) out.push_back(m);
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::zero_grad(bool set_to_none) {
  NoGradGuard no_grad;
  for (const Tensor& p : parameters()) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (set_to_none) p.set_grad(Tensor());
    else g.zero_();
  }
}

void Module::to(DType dtype) {
  KILN_CHECK(is_floating(dtype), DTypeError, "{}.to: expected a floating dtype, got {}", name_, dtype_name(dtype));
  NoGradGuard no_grad;
  auto convert = [&](const Tensor& t) {
    if (!t.defined() || !is_floating(t.dtype()) || t.dtype() == dtype) return;
    Tensor g = t.grad();
    set_data(t, t.to(dtype));
    if (g.defined()) t.set_grad(g.to(dtype));
  };
  for (const Tensor& p : parameters()) convert(p);
  for (const Tensor& b : buffers()) convert(b);
}

void Module::to(Device device) {
  NoGradGuard no_grad;
  auto move = [&](const Tensor& t) {
    if (!t.defined() || t.device() == device) return;
    Tensor g = t.grad();
    set_data(t, t.to(device));
    if (g.defined()) t.set_grad(g.to(device));
  };
  for (const Tensor& p : parameters()) move(p);
  for (const Tensor& b : buffers()) move(b);
}

NamedTensors Module::state_dict() const {
  NamedTensors all, out;
  // PyTorch's order: each module's parameters, then its buffers, then its children.
  auto walk = [&](auto& self_ref, const Module& m, const std::string& prefix) -> void {
    for (const Slot& s : m.parameters_)
      if (s.tensor.defined()) out.emplace_back(prefix + s.name, s.tensor.detach());
    for (const Slot& s : m.buffers_)
      if (s.tensor.defined() && s.persistent) out.emplace_back(prefix + s.name, s.tensor.detach());
    for (const auto& [name, child] : m.children_) self_ref(self_ref, *child, prefix + name + ".");
  };
  walk(walk, *this, "");
  return out;
}

LoadResult Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  // The live tensors (not detached copies of the handles) are the targets.
  NamedTensors targets;
  auto walk = [&](auto& self_ref, const Module& m, const std::string& prefix) -> void {
    for (const Slot& s : m.parameters_)
      if (s.tensor.defined()) targets.emplace_back(prefix + s.name, s.tensor);
    for (const Slot& s : m.buffers_)
      if (s.tensor.defined() && s.persistent) targets.emplace_back(prefix + s.name, s.tensor);
    for (const auto& [name, child] : m.children_) self_ref(self_ref, *child, prefix + name + ".");
  };
  walk(walk, *this, "");

  LoadResult result;
  std::set<std::string> known;
  std::vector<std::string> mismatched;
  for (const auto& [key, dst] : targets) {
    known.insert(key);
    auto it = state.find(key);
    if (it == state.end()) {
      result.missing_keys.push_back(key);
      continue;
    }
    KILN_CHECK(it->second.defined(), ValueError, "{}.load_state_dict: \"{}\" is undefined", name_, key);
    if (it->second.shape() != dst.shape())
      mismatched.push_back(fmt::format("\"{}\": the checkpoint has shape {}, the model {}", key,
                                       shape_str(it->second.shape()), shape_str(dst.shape())));
  }
  for (const auto& [key, t] : state)
    if (!known.count(key)) result.unexpected_keys.push_back(key);

  std::string problems;
  for (const auto& m : mismatched) problems += "\n  size mismatch for " + m;
  if (strict && !result.missing_keys.empty()) problems += "\n  missing keys: " + join_keys(result.missing_keys);
  if (strict && !result.unexpected_keys.empty())
    problems += "\n  unexpected keys: " + join_keys(result.unexpected_keys);
  KILN_CHECK(problems.empty(), ValueError, "{}.load_state_dict: the state dict does not match the module:{}", name_,
             problems);

  NoGradGuard no_grad;
  for (const auto& [key, dst] : targets) {
    auto it = state.find(key);
    if (it != state.end()) Tensor(dst).copy_(it->second);
  }
  return result;
}

LoadResult Module::load_state_dict(const NamedTensors& state, bool strict) {
  std::map<std::string, Tensor> m;
  for (const auto& [key, t] : state) {
    KILN_CHECK(m.emplace(key, t).second, ValueError, "{}.load_state_dict: the key \"{}\" appears twice", name_, key);
  }
  return load_state_dict(m, strict);
}

void Module::save(const std::string& path, const std::map<std::string, std::string>& metadata) const {
  NamedTensors tensors = state_dict();
  for (auto& [name, t] : tensors) t = t.cpu();  // a GPU model's values are written from the cpu
  save_safetensors(path, tensors, metadata);
}

LoadResult Module::load(const std::string& path, bool strict) { return load_state_dict(load_safetensors(path), strict); }

std::string Module::str() const {
  std::vector<std::string> lines;
  std::string extra = extra_repr();
  size_t extra_lines = 0;
  if (!extra.empty()) {
    size_t start = 0;
    while (true) {
      size_t nl = extra.find('\n', start);
      lines.push_back(extra.substr(start, nl == std::string::npos ? std::string::npos : nl - start));
      ++extra_lines;
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  }
  for (const auto& [name, child] : children_) lines.push_back("(" + name + "): " + add_indent(child->str(), 2));
  std::string out = name_ + "(";
  if (lines.size() == 1 && extra_lines == 1) {
    out += lines[0];
  } else if (!lines.empty()) {
    for (const auto& l : lines) out += "\n  " + l;
    out += "\n";
  }
  return out + ")";
}

}  // namespace kiln::nn
