#pragma once
// Reverse-mode automatic differentiation. An op that may need a gradient is
// written with autograd_op(): it computes its result with recording off and,
// when grad mode is on and an input requires grad, records a Node on the
// tape whose backward rule (written with kiln ops) maps the output's
// gradient to its inputs' gradients. backward() walks the tape from the
// output in reverse order of recording.
//
//   Tensor mul(const Tensor& a, const Tensor& b) {
//     return autograd_op("mul", {a, b}, [&] { return mul_kernel(a, b); },
//                        [&](const Tensor& y) {
//                          SavedTensor sa(a), sb(b);
//                          return BackwardFn([=](const Tensor& g, const Needs& need) -> Grads {
//                            return {need[0] ? mul(g, sb) : Tensor(), need[1] ? mul(g, sa) : Tensor()};
//                          });
//                        });
//   }
//
// A rule may return a gradient of a broadcast shape or another floating
// dtype: the engine sums it down to the input's shape and casts it to the
// input's dtype. It returns an undefined Tensor for inputs it has no
// gradient for (need[i] false, or not differentiable: then it counts as 0).
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "eager/op.h"
#include "eager/tensor.h"

namespace kiln {

// ---- grad mode (per thread) ----
bool grad_mode_enabled();
void set_grad_enabled(bool enabled);  // prefer the scoped guards below
// Sets grad mode for a scope (NoGradGuard: off) and restores it after.
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled);
  ~GradModeGuard();
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool previous_;
};
struct NoGradGuard : GradModeGuard {
  NoGradGuard() : GradModeGuard(false) {}
};

// A tensor saved for the backward pass: its data (not its history, so an op
// saving its own output makes no cycle) and the storage version at save
// time. Reading it after an in-place write to that storage raises an Error
// that names the op.
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t);  // NOLINT: implicit, so rules read like math
  const Tensor& get() const;
  operator const Tensor&() const { return get(); }  // NOLINT
  bool defined() const { return data_.defined(); }

 private:
  Tensor data_;
  uint64_t version_ = 0;
};

using Grads = std::vector<Tensor>;
using Needs = std::vector<bool>;
using BackwardFn = std::function<Grads(const Tensor& grad_output, const Needs& needs_input_grad)>;

struct Node;

// Whether the source text of a rule names the identifier `id`: the
// elementwise tables use it at compile time so that an in-place op saves a
// copy of self only when its rule reads the value being overwritten.
constexpr bool mentions(std::string_view expr, char id) {
  auto ident = [](char c) { return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
  for (size_t i = 0; i < expr.size(); ++i)
    if (expr[i] == id && (i == 0 || !ident(expr[i - 1])) && (i + 1 == expr.size() || !ident(expr[i + 1])))
      return true;
  return false;
}

// Whether recording `op(inputs)` is needed: grad mode on and an input that
// requires grad.
bool should_record(std::span<const Tensor> inputs);
inline bool should_record(std::initializer_list<Tensor> inputs) {
  return should_record(std::span<const Tensor>(inputs.begin(), inputs.size()));
}

// Attaches a new Node to `output` with edges to `inputs` (their grad_fn, or
// the accumulator of a leaf). In-place ops pass self as both an input and
// the output: the edge to self's previous history is taken first.
void record(const char* op, const Tensor& output, const std::vector<Tensor>& inputs, BackwardFn backward);

// The one way an op runs: when a trace is active, the tracer records it
// (attrs() gives its attributes, see KILN_ATTRS) and returns a symbolic
// result; otherwise compute() runs with recording off. Either way, when
// should_record(inputs), make_backward(output) builds the backward rule
// (saving what it needs) and the output joins the autograd graph, so
// backward() inside a trace records the gradient ops too.
template <class AttrsFn, class Compute, class MakeBackward>
Tensor autograd_op(const char* op, std::span<const Tensor> inputs, AttrsFn&& attrs, Compute&& compute,
                   MakeBackward&& make_backward) {
  CurrentOpScope running(op);
  Tensor out;
  if (TraceHook* trace = active_trace()) {
    std::vector<Tensor> in(inputs.begin(), inputs.end());
    out = trace->record(op_def(op), in, attrs())[0];
    if (should_record(inputs)) record(op, out, in, make_backward(out));
    return out;
  }
  if (!should_record(inputs)) return compute();
  {
    NoGradGuard no_grad;
    out = compute();
  }
  // An op that returns an input unchanged (contiguous() of a contiguous
  // tensor) still needs an output of its own to carry the new history.
  for (const Tensor& in : inputs)
    if (out.is_same(in)) out = out.as_strided(out.shape(), out.strides(), out.offset());
  record(op, out, std::vector<Tensor>(inputs.begin(), inputs.end()), make_backward(out));
  return out;
}

// The same with the inputs as a braced list: autograd_op("mul", {a, b}, ...).
template <class AttrsFn, class Compute, class MakeBackward>
Tensor autograd_op(const char* op, std::initializer_list<Tensor> inputs, AttrsFn&& attrs, Compute&& compute,
                   MakeBackward&& make_backward) {
  return autograd_op(op, std::span<const Tensor>(inputs.begin(), inputs.size()), std::forward<AttrsFn>(attrs),
                     std::forward<Compute>(compute), std::forward<MakeBackward>(make_backward));
}

// In-place ops call this before writing: raises for a leaf that requires
// grad, or a view of one, while grad mode is on. (A write through a view of
// a non-leaf is recorded: record() gives the viewed tensor a CopySlices
// history.)
void check_inplace(const Tensor& self, const char* op);

// Inside a trace, an in-place op is recorded in its out-of-place form; this
// makes its result (converted to self's dtype) the value self holds from now
// on, and bumps self's version as the write would.
void trace_assign(const Tensor& self, Tensor value, const char* op);

// Sums `grad` down to `shape` (undoing broadcasting) and expands a smaller
// one up to it.
Tensor sum_to(const Tensor& grad, const Shape& shape);

// The recorded op's name as PyTorch spells it ("MulBackward").
std::string grad_fn_name(const Node& node);

// ---- the engine ----
// Accumulates d(output)/d(leaf) into every leaf's .grad. grad_output
// defaults to ones for a one-element output (else an Error).
void backward(const Tensor& output, const Tensor& grad_output = {}, bool retain_graph = false);
// d(sum of outputs[i] * grad_outputs[i]) / d(inputs[j]), without touching
// any .grad. An input that the outputs don't depend on gets an undefined
// tensor when allow_unused, else an Error.
std::vector<Tensor> gradients(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                              const std::vector<Tensor>& grad_outputs = {}, bool retain_graph = false,
                              bool allow_unused = false);

// Functional transform: the gradients of f (returning a one-element
// tensor) at args, with respect to the args in argnums.
std::vector<Tensor> grad(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                         const std::vector<Tensor>& args, const std::vector<int>& argnums = {0});
std::pair<Tensor, std::vector<Tensor>> value_and_grad(
    const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& args,
    const std::vector<int>& argnums = {0});

}  // namespace kiln
