// Elementwise unary ops: the rows of unary_ops.def become kernels here, on
// the strided loop engine of loops.h.
#include "eager/autograd.h"
#include "eager/cuda/launch.h"
#include "eager/loops.h"
#include "eager/ops.h"
#include "eager/scalar_math.h"

namespace kiln {

namespace {
enum class UnaryKind { Float, Numeric, Rounding };

// The meta rule of every unary op: the input's shape, and a dtype by KIND.
TensorType unary_meta(UnaryKind kind, const TensorType& x, const char* name) {
  KILN_CHECK(kind == UnaryKind::Float || x.dtype != DType::Bool, DTypeError,
             "{}: not supported for bool tensors (convert with .to(kiln.int64) first)", name);
  DType dtype = kind == UnaryKind::Float && !is_floating(x.dtype) ? DType::Float32 : x.dtype;
  return {x.shape, dtype, x.device};
}

template <UnaryKind kind, class Fn>
Tensor unary_op(const Tensor& x, const char* name, const Tensor* into = nullptr) {
  TensorType type = unary_meta(kind, type_of(x), name);
  if (kind == UnaryKind::Rounding && !is_floating(x.dtype())) {
    if (into) return *into;  // the identity, in place
    return clone(x);
  }
  Tensor in = type.dtype == x.dtype() ? x : to_dtype(x, type.dtype);
  Tensor out = make_output(x.shape(), in.dtype(), x.device(), into, {&in}, name);
  if (!x.device().is_cpu()) {
    cuda_kernels::unary(name, out, in);
    finish_output(out, into);
    return into ? *into : out;
  }
  auto plan = plan_loop<2>(x.shape(), {&out, &in});
  auto kernel = [&]<class T>() {
    run_loop(plan, [](const std::array<char*, 2>& p, const std::array<int64_t, 2>& s, int64_t n) {
      unary_inner<T, T>(p, s, n, Fn{});
    });
  };
  if constexpr (kind == UnaryKind::Numeric) dispatch_numeric(in.dtype(), name, kernel);
  else dispatch_floating(in.dtype(), name, kernel);
  finish_output(out, into);
  return into ? *into : out;
}
}  // namespace

namespace {
// Backward helpers for the GRAD column.
Tensor gelu_grad(const Tensor& g, const Tensor& x) {
  constexpr double kInvSqrt2 = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
  Tensor cdf = (erf(x * kInvSqrt2) + 1) * 0.5;
  return g * (cdf + x * exp(x * x * -0.5) * kInvSqrt2Pi);
}

Tensor gelu_tanh_grad(const Tensor& g, const Tensor& x) {
  constexpr double kSqrt2OverPi = 0.79788456080286535588, kCoeff = 0.044715;
  Tensor t = tanh((x + x * x * x * kCoeff) * kSqrt2OverPi);
  Tensor inner_grad = (x * x * (3 * kCoeff) + 1) * kSqrt2OverPi;
  return g * ((t + 1) * 0.5 + x * (1 - t * t) * inner_grad * 0.5);
}

Tensor silu_grad(const Tensor& g, const Tensor& x) {
  Tensor s = sigmoid(x);
  return g * s * (x * (1 - s) + 1);
}
}  // namespace

// Each row: the kernel functor, the op with its backward rule (x and y are
// SavedTensors, so the rule keeps only what GRAD names), and the in-place
// form, which keeps a copy of self's old value only when GRAD reads x.
#define KILN_UNARY(NAME, KIND, EXPR, GRAD)                                                 \
  namespace {                                                                              \
  struct NAME##_fn {                                                                       \
    template <class C>                                                                     \
    KILN_INLINE C operator()(C x) const {                                                  \
      return EXPR;                                                                         \
    }                                                                                      \
  };                                                                                       \
  BackwardFn NAME##_backward(SavedTensor x, SavedTensor y) {                               \
    return [=](const Tensor& g, const Needs&) -> Grads { return {GRAD}; };                 \
  }                                                                                        \
  }                                                                                        \
  Tensor NAME(const Tensor& x) {                                                           \
    return autograd_op(                                                                    \
        #NAME, {x}, KILN_NO_ATTRS, [&] { return unary_op<UnaryKind::KIND, NAME##_fn>(x, #NAME); }, \
        [&](const Tensor& y) { return NAME##_backward(x, y); });                           \
  }                                                                                        \
  Tensor& NAME##_(Tensor& self) {                                                          \
    check_inplace(self, #NAME);                                                            \
    if (TraceHook* trace = active_trace()) {                                               \
      bool grad = should_record({self});                                                   \
      SavedTensor x(grad && mentions(#GRAD, 'x') ? clone(self) : Tensor());                \
      trace_assign(self, trace->record(op_def(#NAME), {self}, {})[0], #NAME);              \
      if (grad) record(#NAME, self, {self}, NAME##_backward(x, self));                     \
      return self;                                                                         \
    }                                                                                      \
    if (!should_record({self})) {                                                          \
      unary_op<UnaryKind::KIND, NAME##_fn>(self, #NAME, &self);                            \
      return self;                                                                         \
    }                                                                                      \
    SavedTensor x(mentions(#GRAD, 'x') ? clone(self) : Tensor());                         \
    {                                                                                      \
      NoGradGuard no_grad;                                                                 \
      unary_op<UnaryKind::KIND, NAME##_fn>(self, #NAME, &self);                            \
    }                                                                                      \
    record(#NAME, self, {self}, NAME##_backward(x, self));                                 \
    return self;                                                                           \
  }
#include "eager/unary_ops.def"
#undef KILN_UNARY

void register_unary_ops() {
#define KILN_UNARY(NAME, KIND, EXPR, GRAD)                                                       \
  register_op({.name = #NAME,                                                                    \
               .meta = [](const std::vector<TensorType>& in, const Attrs&) -> std::vector<TensorType> { \
                 return {unary_meta(UnaryKind::KIND, in[0], #NAME)};                              \
               },                                                                                \
               .run = [](const std::vector<Tensor>& in, const Attrs&) -> std::vector<Tensor> {    \
                 return {NAME(in[0])};                                                           \
               }});
#include "eager/unary_ops.def"
#undef KILN_UNARY
}

Tensor gelu(const Tensor& x, const std::string& approximate) {
  if (approximate == "none") return gelu(x);
  if (approximate == "tanh") return gelu_tanh(x);
  fail<ValueError>("gelu: approximate must be 'none' or 'tanh', got '{}'", approximate);
}

}  // namespace kiln
