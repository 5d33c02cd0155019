// Elementwise unary ops: the rows of unary_ops.def become kernels here, on
// the strided loop engine of loops.h.
#include "eager/loops.h"
#include "eager/ops.h"
#include "eager/scalar_math.h"

namespace kiln {

namespace {
enum class UnaryKind { Float, Numeric, Rounding };

template <UnaryKind kind, class Fn>
Tensor unary_op(const Tensor& x, const char* name, const Tensor* into = nullptr) {
  Tensor in = x;
  if (kind == UnaryKind::Rounding && !is_floating(x.dtype())) {
    KILN_CHECK(x.dtype() != DType::Bool, DTypeError, "{}: not supported for bool tensors", name);
    if (into) return *into;  // the identity, in place
    return clone(x);
  }
  if (kind == UnaryKind::Float && !is_floating(x.dtype())) in = to_dtype(x, DType::Float32);
  KILN_CHECK(kind != UnaryKind::Numeric || x.dtype() != DType::Bool, DTypeError,
             "{}: not supported for bool tensors (convert with .to(kiln.int64) first)", name);
  Tensor out = make_output(x.shape(), in.dtype(), x.device(), into, {&in}, name);
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

#define KILN_UNARY(NAME, KIND, EXPR)                                       \
  namespace {                                                              \
  struct NAME##_fn {                                                       \
    template <class C>                                                     \
    KILN_INLINE C operator()(C x) const {                                  \
      return EXPR;                                                         \
    }                                                                      \
  };                                                                       \
  }                                                                        \
  Tensor NAME(const Tensor& x) { return unary_op<UnaryKind::KIND, NAME##_fn>(x, #NAME); } \
  Tensor& NAME##_(Tensor& self) {                                          \
    unary_op<UnaryKind::KIND, NAME##_fn>(self, #NAME, &self);              \
    return self;                                                           \
  }
#include "eager/unary_ops.def"
#undef KILN_UNARY

Tensor gelu(const Tensor& x, const std::string& approximate) {
  if (approximate == "none") return gelu(x);
  if (approximate == "tanh") return gelu_tanh(x);
  fail<ValueError>("gelu: approximate must be 'none' or 'tanh', got '{}'", approximate);
}

}  // namespace kiln
