// The autograd tape and engine. Every recorded op is a Node with one output
// (multi-output ops are written as several single-output ops) and an edge
// per input to the Node that produced it, or to the accumulator of a leaf.
#include "eager/autograd.h"

#include <algorithm>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "eager/ops.h"

namespace kiln {

struct Node {
  std::string name;  // "MulBackward"
  BackwardFn backward;
  std::vector<std::shared_ptr<Node>> next;  // per input; null: no gradient needed
  std::vector<Shape> input_shapes;
  std::vector<DType> input_dtypes;
  uint64_t sequence = 0;  // recording order; backward runs newest first
  bool released = false;  // saved tensors freed after a backward without retain_graph
  // Leaf accumulators have no backward; they write into the leaf's .grad.
  std::weak_ptr<TensorImpl> leaf;
  // A non-leaf output on which retain_grad() was called.
  std::weak_ptr<TensorImpl> retained;
  bool is_accumulator() const { return !backward && !leaf.expired(); }
};

struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;  // null for leaves
  std::weak_ptr<Node> accumulator;
  Tensor grad;
};

namespace {
thread_local bool t_grad_mode = true;
// The node whose rule is running, for error messages about saved tensors.
thread_local const Node* t_running = nullptr;
std::atomic<uint64_t> g_sequence{0};

AutogradMeta* meta_of(const Tensor& t) { return t.defined() ? t.impl_ptr()->autograd.get() : nullptr; }

AutogradMeta& ensure_meta(const Tensor& t) {
  auto& m = t.impl_ptr()->autograd;
  if (!m) m = std::make_shared<AutogradMeta>();
  return *m;
}

bool tracked(const Tensor& t) {
  const AutogradMeta* m = meta_of(t);
  return m && m->requires_grad;
}

std::string backward_name(const char* op) {
  std::string name = op;
  if (!name.empty()) name[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(name[0])));
  for (size_t i = 0; i < name.size(); ++i)  // log_softmax -> LogSoftmax
    if (name[i] == '_' && i + 1 < name.size()) {
      name.erase(i, 1);
      name[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(name[i])));
    }
  return name + "Backward";
}

// The node a gradient for `t` flows into: its grad_fn, or its leaf accumulator.
std::shared_ptr<Node> gradient_edge(const Tensor& t) {
  if (!tracked(t)) return nullptr;
  AutogradMeta& m = *meta_of(t);
  if (m.grad_fn) return m.grad_fn;
  if (auto acc = m.accumulator.lock()) return acc;
  auto acc = std::make_shared<Node>();
  acc->name = "AccumulateGrad";
  acc->leaf = t.impl_handle();
  acc->input_shapes = {t.shape()};
  acc->input_dtypes = {t.dtype()};
  m.accumulator = acc;
  return acc;
}
}  // namespace

bool grad_mode_enabled() { return t_grad_mode; }
void set_grad_enabled(bool enabled) { t_grad_mode = enabled; }
GradModeGuard::GradModeGuard(bool enabled) : previous_(t_grad_mode) { t_grad_mode = enabled; }
GradModeGuard::~GradModeGuard() { t_grad_mode = previous_; }

SavedTensor::SavedTensor(const Tensor& t) {
  if (!t.defined()) return;
  data_ = t.detach();
  version_ = t.version();
}

const Tensor& SavedTensor::get() const {
  if (data_.defined() && data_.version() != version_)
    fail<Error>("{}: a {} tensor of shape {} that it saved for the gradient was modified by an in-place "
                "operation (its version is {}, expected {}). Use an out-of-place op (x = x * 2 instead of "
                "x *= 2), or .clone() the tensor before modifying it",
                t_running ? t_running->name : std::string("backward"), dtype_name(data_.dtype()),
                shape_str(data_.shape()), data_.version(), version_);
  return data_;
}

bool should_record(std::span<const Tensor> inputs) {
  if (!t_grad_mode) return false;
  for (const Tensor& t : inputs)
    if (tracked(t)) return true;
  return false;
}

namespace {
// The part of a root tensor's memory that a view of it covers, applied to a
// contiguous gradient of the root's shape.
struct ViewGeometry {
  Shape shape;
  Strides strides;
  int64_t offset;
  Tensor of(const Tensor& root_grad) const { return root_grad.as_strided(shape, strides, root_grad.offset() + offset); }
};

// An in-place write through `view` changed its root's value. As PyTorch's
// CopySlices: the root's new history takes the written region's gradient
// from the in-place op (`write`) and the rest from the root's old history;
// the view becomes a view of the root's new value.
void rebase_view_write(const Tensor& view, const std::shared_ptr<Node>& write) {
  Tensor root(view.impl_handle()->view_base);
  ViewGeometry region{view.shape(), view.strides(), view.offset() - root.offset()};
  KILN_CHECK(root.is_contiguous(), Error,
             "in-place operation through a view (shape {}) of a non-contiguous tensor (shape {}, strides {}) "
             "whose gradient is tracked is not supported; .clone() the tensor first",
             shape_str(view.shape()), shape_str(root.shape()), shape_str(root.strides()));
  auto copy_slices = std::make_shared<Node>();
  copy_slices->name = "CopySlices";
  copy_slices->sequence = g_sequence.fetch_add(1, std::memory_order_relaxed);
  copy_slices->next = {gradient_edge(root), write};
  copy_slices->input_shapes = {root.shape(), view.shape()};
  copy_slices->input_dtypes = {root.dtype(), view.dtype()};
  copy_slices->backward = [region](const Tensor& g, const Needs& need) -> Grads {
    Tensor rest = clone(g);  // contiguous, offset 0: the root's layout
    Tensor written = need[1] ? clone(region.of(rest)) : Tensor();
    region.of(rest).fill_(0);
    return {need[0] ? rest : Tensor(), written};
  };
  AutogradMeta& root_meta = ensure_meta(root);
  root_meta.requires_grad = true;
  root_meta.grad_fn = copy_slices;

  auto view_of_root = std::make_shared<Node>();
  view_of_root->name = "AsStridedBackward";
  view_of_root->sequence = g_sequence.fetch_add(1, std::memory_order_relaxed);
  view_of_root->next = {copy_slices};
  view_of_root->input_shapes = {root.shape()};
  view_of_root->input_dtypes = {root.dtype()};
  Shape root_shape = root.shape();
  DType root_dtype = root.dtype();
  view_of_root->backward = [region, root_shape, root_dtype](const Tensor& g, const Needs&) -> Grads {
    Tensor full = zeros(root_shape, root_dtype, g.device());
    region.of(full).copy_(g);
    return {full};
  };
  ensure_meta(view).grad_fn = view_of_root;
}
}  // namespace

void record(const char* op, const Tensor& output, const std::vector<Tensor>& inputs, BackwardFn backward) {
  // Integer and bool results (comparisons, argmax, ...) carry no gradient.
  if (!is_floating(output.dtype())) return;
  auto node = std::make_shared<Node>();
  node->name = backward_name(op);
  node->backward = std::move(backward);
  node->sequence = g_sequence.fetch_add(1, std::memory_order_relaxed);
  bool in_place = false;
  for (const Tensor& in : inputs) {
    node->next.push_back(gradient_edge(in));
    node->input_shapes.push_back(in.defined() ? in.shape() : Shape{});
    node->input_dtypes.push_back(in.defined() ? in.dtype() : DType::Float32);
    in_place = in_place || in.is_same(output);
  }
  AutogradMeta& m = ensure_meta(output);
  m.requires_grad = true;
  m.grad_fn = node;
  // A view taken in a trace has no memory for CopySlices to describe.
  KILN_CHECK(!in_place || !output.impl_ptr()->traced_view, TraceError,
             "{}_: an in-place update through a view (shape {}) inside a traced function cannot be traced while "
             "gradients are recorded; write it out of place (kiln.where, kiln.cat) or under kiln.no_grad()",
             op, shape_str(output.shape()));
  if (in_place && output.impl_handle()->view_base) rebase_view_write(output, node);
}

void check_inplace(const Tensor& self, const char* op) {
  if (!t_grad_mode) return;
  auto leaf_error = [&](const Tensor& t, const char* what) {
    const AutogradMeta* m = meta_of(t);
    KILN_CHECK(!m || !m->requires_grad || m->grad_fn, Error,
               "{}_: {} that requires grad (shape {}) is used in an in-place operation; wrap the update in "
               "kiln.no_grad() (C++: kiln::NoGradGuard), or write x = x.{}(...)",
               op, what, shape_str(t.shape()), op);
  };
  leaf_error(self, "a leaf tensor");
  if (const auto& base = self.impl_handle()->view_base) leaf_error(Tensor(base), "a view of a leaf tensor");
}

void trace_assign(const Tensor& self, Tensor value, const char* op) {
  TraceHook* trace = active_trace();
  KILN_CHECK(trace, Error, "{}_: trace_assign outside a trace", op);
  KILN_CHECK(value.shape() == self.shape(), ShapeError, "{}_: output with shape {} doesn't match the broadcast shape {}",
             op, shape_str(self.shape()), shape_str(value.shape()));
  KILN_CHECK(can_cast(value.dtype(), self.dtype()), DTypeError,
             "{}_: result type {} can't be cast to the desired output type {}", op, dtype_name(value.dtype()),
             dtype_name(self.dtype()));
  if (value.dtype() != self.dtype()) value = to_dtype(value, self.dtype());
  // A view taken in the trace: the write reaches the value it views.
  if (self.impl_ptr()->traced_view) trace_write_through_view(self, value, op);
  trace->assign(self, value);
  self.bump_version();
}

Tensor sum_to(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  const int64_t lead = grad.dim() - static_cast<int64_t>(shape.size());
  if (lead < 0) return expand(grad, shape);
  DimList dims;
  for (int64_t d = 0; d < grad.dim(); ++d)
    if (d < lead || (shape[d - lead] == 1 && grad.shape()[d] != 1)) dims.push_back(d);
  Tensor reduced = dims.empty() ? grad : sum(grad, dims, /*keepdim=*/true);
  if (lead > 0 || reduced.shape() != shape) reduced = reshape(reduced, shape);
  return reduced;
}

// ---- the engine ----
namespace {

Tensor fit_gradient(Tensor g, const Shape& shape, DType dtype) {
  if (g.shape() != shape) {
    g = sum_to(g, shape);
    KILN_CHECK(g.shape() == shape, ShapeError, "backward: a gradient of shape {} does not fit an input of shape {}",
               shape_str(g.shape()), shape_str(shape));
  }
  if (g.dtype() != dtype) g = to_dtype(g, dtype);
  return g;
}

// One backward pass from `roots`. With `capture` set, the gradients reaching
// those nodes are collected there instead of being accumulated into .grad.
void run_engine(const std::vector<std::pair<std::shared_ptr<Node>, Tensor>>& roots, bool retain_graph,
                std::unordered_map<Node*, Tensor>* capture) {
  NoGradGuard no_grad;  // rules are written with ops; they must not record
  std::unordered_map<Node*, int> dependencies;
  std::vector<Node*> stack;
  std::unordered_set<Node*> seen;
  for (auto& [node, g] : roots)
    if (seen.insert(node.get()).second) stack.push_back(node.get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (auto& next : n->next) {
      if (!next) continue;
      ++dependencies[next.get()];
      if (seen.insert(next.get()).second) stack.push_back(next.get());
    }
  }

  std::unordered_map<Node*, Tensor> buffers;
  auto accumulate = [&](Node* n, const Tensor& g) {
    Tensor& slot = buffers[n];
    slot = slot.defined() ? add(slot, g) : g;
  };
  auto newest_first = [](Node* a, Node* b) { return a->sequence < b->sequence; };
  std::priority_queue<Node*, std::vector<Node*>, decltype(newest_first)> ready(newest_first);
  std::vector<std::shared_ptr<Node>> keep_alive;
  for (auto& [node, g] : roots) {
    accumulate(node.get(), g);
    keep_alive.push_back(node);
  }
  for (auto& [node, g] : roots)
    if (dependencies[node.get()] == 0) {
      ready.push(node.get());
      dependencies[node.get()] = -1;  // queued once
    }

  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    Tensor g = buffers[n];
    buffers.erase(n);
    if (capture) {
      auto it = capture->find(n);
      if (it != capture->end() && g.defined()) it->second = it->second.defined() ? add(it->second, g) : g;
    }
    Grads grads;
    if (n->is_accumulator()) {
      if (!capture && g.defined())
        if (auto leaf = n->leaf.lock()) {
          Tensor t(leaf);
          if (TraceHook* trace = active_trace()) trace->grad_will_change(t);
          AutogradMeta& m = ensure_meta(t);
          // A fresh tensor, not an alias of g: rules may return views of
          // their inputs, and the user may modify .grad in place.
          bool sole_owner = g.impl_handle().use_count() == 1 && g.storage().use_count() == 1;
          m.grad = m.grad.defined() ? add(m.grad, g) : (sole_owner && g.is_contiguous() ? g : clone(g));
        }
    } else if (n->backward || n->released) {
      if (auto out = n->retained.lock(); out && g.defined() && !capture) {
        Tensor t(out);
        if (TraceHook* trace = active_trace()) trace->grad_will_change(t);
        AutogradMeta& m = ensure_meta(t);
        m.grad = m.grad.defined() ? add(m.grad, g) : clone(g);
      }
      KILN_CHECK(!n->released, Error,
                 "backward: trying to go through {} a second time, but its saved tensors were freed by the "
                 "first backward(); pass retain_graph=True to the first call if you need to backward twice",
                 n->name);
      if (g.defined()) {
        Needs needs(n->next.size());
        for (size_t i = 0; i < n->next.size(); ++i) needs[i] = n->next[i] != nullptr;
        struct Running {
          explicit Running(const Node* n) { t_running = n; }
          ~Running() { t_running = nullptr; }
        } running(n);
        grads = n->backward(g, needs);
        KILN_CHECK(grads.size() == n->next.size(), Error, "{} returned {} gradients for {} inputs", n->name,
                   grads.size(), n->next.size());
      }
      if (!retain_graph) {
        n->backward = nullptr;
        n->released = true;
      }
    }
    for (size_t i = 0; i < n->next.size(); ++i) {
      Node* next = n->next[i].get();
      if (!next) continue;
      if (i < grads.size() && grads[i].defined())
        accumulate(next, fit_gradient(grads[i], n->input_shapes[i], n->input_dtypes[i]));
      if (--dependencies[next] == 0) ready.push(next);
    }
  }
}

Tensor default_grad_output(const Tensor& output, const Tensor& grad_output, const char* op) {
  if (grad_output.defined()) {
    KILN_CHECK(grad_output.shape() == output.shape(), ShapeError,
               "{}: the gradient has shape {} but the output has shape {}", op, shape_str(grad_output.shape()),
               shape_str(output.shape()));
    KILN_CHECK(grad_output.device() == output.device(), DeviceError,
               "{}: the gradient is on {} but the output on {}; move it with .to()", op,
               grad_output.device().str(), output.device().str());
    return grad_output.detach();
  }
  KILN_CHECK(output.numel() == 1, Error,
             "{}: grad can be implicitly created only for outputs with one element, but the output has shape {}; "
             "pass a gradient of that shape (e.g. y.backward(kiln.ones_like(y))) or reduce it first (y.sum())",
             op, shape_str(output.shape()));
  return ones_like(output);
}

std::shared_ptr<Node> root_node(const Tensor& output, const char* op) {
  KILN_CHECK(tracked(output), Error,
             "{}: the tensor (shape {}) does not require grad and has no grad_fn; call requires_grad_() on the "
             "inputs you want gradients for before computing it",
             op, shape_str(output.shape()));
  return gradient_edge(output);
}
}  // namespace

void backward(const Tensor& output, const Tensor& grad_output, bool retain_graph) {
  auto node = root_node(output, "backward");
  run_engine({{node, default_grad_output(output, grad_output, "backward")}}, retain_graph, nullptr);
}

std::vector<Tensor> gradients(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                              const std::vector<Tensor>& grad_outputs, bool retain_graph, bool allow_unused) {
  KILN_CHECK(grad_outputs.empty() || grad_outputs.size() == outputs.size(), ValueError,
             "grad: got {} outputs but {} grad_outputs", outputs.size(), grad_outputs.size());
  std::vector<std::pair<std::shared_ptr<Node>, Tensor>> roots;
  for (size_t i = 0; i < outputs.size(); ++i)
    roots.emplace_back(root_node(outputs[i], "grad"),
                       default_grad_output(outputs[i], grad_outputs.empty() ? Tensor() : grad_outputs[i], "grad"));
  std::unordered_map<Node*, Tensor> capture;
  std::vector<std::shared_ptr<Node>> input_nodes;
  for (const Tensor& in : inputs) {
    KILN_CHECK(tracked(in), Error, "grad: an input (shape {}) does not require grad", shape_str(in.shape()));
    input_nodes.push_back(gradient_edge(in));
    capture[input_nodes.back().get()] = Tensor();
  }
  run_engine(roots, retain_graph, &capture);
  std::vector<Tensor> result;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor g = capture[input_nodes[i].get()];
    KILN_CHECK(g.defined() || allow_unused, Error,
               "grad: input {} (shape {}) was not used to compute the outputs; pass allow_unused=True to get "
               "None for it", i, shape_str(inputs[i].shape()));
    result.push_back(g);
  }
  return result;
}

std::pair<Tensor, std::vector<Tensor>> value_and_grad(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                                                      const std::vector<Tensor>& args,
                                                      const std::vector<int>& argnums) {
  GradModeGuard grad_on(true);
  std::vector<Tensor> inputs = args;
  std::vector<Tensor> wrt;
  for (int i : argnums) {
    KILN_CHECK(i >= 0 && i < static_cast<int>(args.size()), IndexError,
               "grad: argnums contains {} but the function got {} arguments", i, args.size());
    inputs[i] = args[i].detach().requires_grad_(true);
    wrt.push_back(inputs[i]);
  }
  Tensor value = f(inputs);
  KILN_CHECK(value.defined() && value.numel() == 1, ValueError,
             "grad: the function must return a one-element tensor, got shape {}",
             value.defined() ? shape_str(value.shape()) : "undefined");
  std::vector<Tensor> grads;
  if (tracked(value)) {
    grads = gradients({value}, wrt, {}, false, /*allow_unused=*/true);
  } else {
    grads.resize(wrt.size());
  }
  for (size_t i = 0; i < wrt.size(); ++i)
    if (!grads[i].defined()) grads[i] = zeros_like(wrt[i]);
  return {value.detach(), grads};
}

std::vector<Tensor> grad(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& args,
                         const std::vector<int>& argnums) {
  return value_and_grad(f, args, argnums).second;
}

// ---- Tensor's autograd methods ----
bool Tensor::requires_grad() const { return tracked(*this); }

Tensor& Tensor::requires_grad_(bool requires_grad) {
  AutogradMeta* m = meta_of(*this);
  if (m && m->grad_fn) {
    KILN_CHECK(requires_grad, Error,
               "requires_grad_(False): only leaf tensors can change requires_grad; use .detach() to get a tensor "
               "without history");
    return *this;
  }
  if (requires_grad)
    KILN_CHECK(is_floating(dtype()), DTypeError,
               "requires_grad_: only floating-point tensors can require gradients, got {}", dtype_name(dtype()));
  if (!m && !requires_grad) return *this;
  ensure_meta(*this).requires_grad = requires_grad;
  return *this;
}

Tensor Tensor::grad() const {
  const AutogradMeta* m = meta_of(*this);
  return m ? m->grad : Tensor();
}

void Tensor::set_grad(const Tensor& grad) const {
  if (grad.defined()) {
    KILN_CHECK(grad.shape() == shape(), ShapeError, "grad: assigned a gradient of shape {} to a tensor of shape {}",
               shape_str(grad.shape()), shape_str(shape()));
    KILN_CHECK(grad.device() == device(), DeviceError, "grad: assigned a gradient on {} to a tensor on {}",
               grad.device().str(), device().str());
  }
  if (!grad.defined() && !meta_of(*this)) return;
  if (TraceHook* trace = active_trace()) trace->grad_will_change(*this);
  ensure_meta(*this).grad = grad;
}

bool Tensor::is_leaf() const {
  const AutogradMeta* m = meta_of(*this);
  return !m || !m->grad_fn;
}

std::shared_ptr<Node> Tensor::grad_fn() const {
  const AutogradMeta* m = meta_of(*this);
  return m ? m->grad_fn : nullptr;
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>(*impl_ptr());
  impl->autograd = nullptr;
  impl->view_base = nullptr;  // writes to it are invisible to autograd, and saved tensors must not pin a graph
  return Tensor(std::move(impl));
}

void Tensor::retain_grad() const {
  KILN_CHECK(requires_grad(), Error, "retain_grad: the tensor (shape {}) does not require grad",
             shape_str(shape()));
  if (auto fn = grad_fn()) fn->retained = impl_;
}

void Tensor::backward(const Tensor& grad_output, bool retain_graph) const {
  kiln::backward(*this, grad_output, retain_graph);
}

std::string grad_fn_name(const Node& node) { return node.name; }

}  // namespace kiln
