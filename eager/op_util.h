#pragma once
// Small helpers for defining traceable ops (private to eager/):
//   - KILN_META(...) / KILN_RUN(...): the OpDef::meta and OpDef::run lambdas
//     with the boilerplate signature; the body sees `in` (the input types or
//     tensors) and `a` (the Attrs) and lists the outputs.
//   - autograd_op_n: autograd_op for an op with several outputs (values and
//     indices) or operands that are not all differentiated through the same
//     list; outputs[0] carries the gradient.
//   - trace_or: a non-autograd op (a backward kernel) that records itself
//     when a trace is active and otherwise computes.
#include <vector>

#include "eager/autograd.h"
#include "eager/op.h"

#define KILN_META(...)                                                                                  \
  [](const std::vector<::kiln::TensorType>& in, const ::kiln::Attrs& a) -> std::vector<::kiln::TensorType> { \
    (void)in;                                                                                           \
    (void)a;                                                                                            \
    return {__VA_ARGS__};                                                                               \
  }
#define KILN_RUN(...)                                                                           \
  [](const std::vector<::kiln::Tensor>& in, const ::kiln::Attrs& a) -> std::vector<::kiln::Tensor> { \
    (void)in;                                                                                   \
    (void)a;                                                                                    \
    return {__VA_ARGS__};                                                                       \
  }

namespace kiln {

// compute() -> std::vector<Tensor>; make_backward(outputs) -> BackwardFn for
// the gradient of outputs[0] with respect to `inputs`.
template <class AttrsFn, class Compute, class MakeBackward>
std::vector<Tensor> autograd_op_n(const char* op, const std::vector<Tensor>& inputs, AttrsFn&& attrs,
                                  Compute&& compute, MakeBackward&& make_backward) {
  CurrentOpScope running(op);
  std::vector<Tensor> outs;
  if (TraceHook* trace = active_trace()) {
    outs = trace->record(op_def(op), inputs, attrs());
    if (should_record(inputs)) record(op, outs[0], inputs, make_backward(outs));
    return outs;
  }
  if (!should_record(inputs)) return compute();
  {
    NoGradGuard no_grad;
    outs = compute();
  }
  for (const Tensor& in : inputs)
    if (outs[0].is_same(in)) outs[0] = outs[0].as_strided(outs[0].shape(), outs[0].strides(), outs[0].offset());
  record(op, outs[0], inputs, make_backward(outs));
  return outs;
}

// A non-differentiable op with one output (backward kernels).
template <class AttrsFn, class Compute>
Tensor trace_or(const char* op, const std::vector<Tensor>& inputs, AttrsFn&& attrs, Compute&& compute) {
  CurrentOpScope running(op);
  if (TraceHook* trace = active_trace()) return trace->record(op_def(op), inputs, attrs())[0];
  return compute();
}

// An op's tensors live on one device, its input x's (an absent optional
// operand passes). On types, so meta rules share it; eager passes type_of(t).
inline void check_same_device(const TensorType& x, const TensorType& t, const char* op, const char* what) {
  KILN_CHECK(!t.defined || t.device == x.device, DeviceError, "{}: expected the {} on {} (the input's), got {}; move it "
             "with .to()", op, what, x.device.str(), t.device.str());
}
inline void check_same_device(const Tensor& x, const Tensor& t, const char* op, const char* what) {
  check_same_device(type_of(x), type_of(t), op, what);
}

// Shape helpers for meta rules: a product of dims that is dynamic when any
// of them is.
inline int64_t static_numel(const Shape& shape) { return has_dynamic_dims(shape) ? kDynamic : numel(shape); }

}  // namespace kiln
