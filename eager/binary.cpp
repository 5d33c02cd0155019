// Elementwise binary ops (the rows of binary_ops.def), where and clamp.
#include "eager/autograd.h"
#include "eager/cuda/launch.h"
#include "eager/loops.h"
#include "eager/ops.h"
#include "eager/scalar_math.h"

namespace kiln {

namespace {
enum class BinaryKind { Arith, Float, Compare, Logical, Bitwise };

Tensor as_tensor(const Operand& op, DType dtype) {
  if (op.tensor) return to_dtype(*op.tensor, dtype);
  return scalar_tensor(*op.scalar, dtype);
}

// The dtypes of a binary op, from its operands' promoted dtype: the one it
// computes in and the one it returns.
std::pair<DType, DType> binary_dtypes(BinaryKind kind, DType common, const char* name) {
  DType compute = kind == BinaryKind::Float && !is_floating(common) ? DType::Float32 : common;
  KILN_CHECK(kind != BinaryKind::Bitwise || !is_floating(common), DTypeError,
             "{}: not supported for {} (only integer and bool tensors)", name, dtype_name(common));
  DType out = (kind == BinaryKind::Compare || kind == BinaryKind::Logical) ? DType::Bool : compute;
  return {compute, out};
}

// The meta rule of every binary op (Python-number operands are traced as
// 0-d tensors of the promoted dtype, which promote the same way).
TensorType binary_meta(BinaryKind kind, const TensorType& a, const TensorType& b, const char* name) {
  DType common = result_type({{a.dtype, a.shape.empty()}, {b.dtype, b.shape.empty()}});
  KILN_CHECK(a.device == b.device, DeviceError, "{}: expected both tensors on the same device, got {} and {}",
             name, a.device.str(), b.device.str());
  return {broadcast_shapes(a.shape, b.shape, name), binary_dtypes(kind, common, name).second, a.device};
}

TensorType where_meta(const TensorType& cond, const TensorType& a, const TensorType& b) {
  KILN_CHECK(cond.dtype == DType::Bool, DTypeError, "where: condition must be a bool tensor, got {}",
             dtype_name(cond.dtype));
  DType dtype = result_type({{a.dtype, a.shape.empty()}, {b.dtype, b.shape.empty()}});
  return {broadcast_shapes(broadcast_shapes(cond.shape, a.shape, "where"), b.shape, "where"), dtype, a.device};
}

// The device of an op over `tensors`: theirs, leaving out 0-d CPU tensors
// (scalars to any device, as in PyTorch).
Device common_device(std::initializer_list<const Tensor*> tensors, const char* name) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t || is_cpu_scalar(*t)) continue;
    if (!first) first = t;
    KILN_CHECK(t->device() == first->device(), DeviceError,
               "{}: expected all tensors on the same device, got {} and {}; move one with .to()", name,
               first->device().str(), t->device().str());
  }
  return first ? first->device() : kCPU;
}

template <BinaryKind kind, class Fn>
Tensor binary_op(const Operand& a, const Operand& b, const char* name, const Tensor* into = nullptr) {
  auto [compute, out_dtype] = binary_dtypes(kind, result_type({a, b}), name);
  const Device device = common_device({a.tensor, b.tensor, into}, name);
  Tensor ta = as_tensor(a, compute), tb = as_tensor(b, compute);
  Shape shape = broadcast_shapes(ta.shape(), tb.shape(), name);
  Tensor out = make_output(shape, out_dtype, device, into, {&ta, &tb}, name);
  Tensor ea = expand(ta, shape), eb = expand(tb, shape);
  if (!device.is_cpu()) {
    cuda_kernels::binary(name, out, ea, eb);
    finish_output(out, into);
    return into ? *into : out;
  }
  auto plan = plan_loop<3>(shape, {&out, &ea, &eb});
  auto kernel = [&]<class T>() {
    run_loop(plan, [](const std::array<char*, 3>& p, const std::array<int64_t, 3>& s, int64_t n) {
      if constexpr (std::is_same_v<decltype(Fn{}(compute_t<T>{}, compute_t<T>{})), bool>)
        binary_inner<bool, T>(p, s, n, Fn{});
      else
        binary_inner<T, T>(p, s, n, Fn{});
    });
  };
  if constexpr (kind == BinaryKind::Float) dispatch_floating(compute, name, kernel);
  else if constexpr (kind == BinaryKind::Bitwise) dispatch_integral(compute, name, kernel);
  else dispatch_all(compute, name, kernel);
  finish_output(out, into);
  return into ? *into : out;
}
}  // namespace

namespace {
// Backward helpers for the GRAD columns.
Tensor pow_grad_base(const Tensor& g, const Tensor& a, const Tensor& b) {
  // b * a^(b-1) is 0 * inf at a = 0, b = 0; the derivative there is 0.
  return where(eq(b, 0), 0, g * b * pow(a, b - 1));
}

Tensor pow_grad_exponent(const Tensor& g, const Tensor& a, const Tensor& b, const Tensor& y) {
  return where(logical_and(eq(a, 0), ge(b, 0)), 0, g * y * log(a));
}

// d max(a, b) / da: 1 where a wins, 1/2 on ties (as PyTorch splits them).
Tensor max_grad(const Tensor& g, const Tensor& a, const Tensor& b) {
  return where(gt(a, b), g, where(eq(a, b), g * 0.5, 0));
}

// The backward rule and the forward for each operand form. A Python number
// operand is saved as a 0-d tensor of the result's dtype, so the rules see
// tensors only.
// A Python-number operand as the kernel sees it: a 0-d tensor of the
// promoted dtype (how a trace records it).
Tensor materialize(const Operand& op, const Operand& other) {
  return op.tensor ? *op.tensor : scalar_tensor(*op.scalar, result_type({op, other}));
}

template <BinaryKind kind, class Fn, class Rule>
Tensor binary_autograd(const Operand& a, const Operand& b, const char* name, Rule rule) {
  if (active_trace() && (!a.tensor || !b.tensor)) {
    Tensor ta = materialize(a, b), tb = materialize(b, a);
    return binary_autograd<kind, Fn>({&ta, {}}, {&tb, {}}, name, rule);
  }
  Tensor ta = a.tensor ? *a.tensor : Tensor(), tb = b.tensor ? *b.tensor : Tensor();
  return autograd_op(
      name, {ta, tb}, KILN_NO_ATTRS, [&] { return binary_op<kind, Fn>(a, b, name); },
      [&](const Tensor& y) {
        auto saved = [&](const Operand& op) { return SavedTensor(op.tensor ? *op.tensor : scalar_tensor(*op.scalar, y.dtype())); };
        return rule(saved(a), saved(b), y);
      });
}

template <BinaryKind kind, class Fn, class Rule>
Tensor& binary_inplace(Tensor& self, const Operand& b, const char* name, bool rule_reads_a, Rule rule) {
  check_inplace(self, name);
  if (TraceHook* trace = active_trace()) {
    Tensor tb = materialize(b, {&self, {}});
    bool grad = should_record({self, tb});
    SavedTensor sa(grad && rule_reads_a ? clone(self) : Tensor());
    trace_assign(self, trace->record(op_def(name), {self, tb}, {})[0], name);
    if (grad) record(name, self, {self, tb}, rule(sa, tb, self));
    return self;
  }
  Tensor tb = b.tensor ? *b.tensor : Tensor();
  if (!should_record({self, tb})) {
    binary_op<kind, Fn>({&self, {}}, b, name, &self);
    return self;
  }
  SavedTensor sa(rule_reads_a ? clone(self) : Tensor());  // self's value before the write
  {
    NoGradGuard no_grad;
    binary_op<kind, Fn>({&self, {}}, b, name, &self);
  }
  SavedTensor sb(b.tensor ? *b.tensor : scalar_tensor(*b.scalar, self.dtype()));
  record(name, self, {self, tb}, rule(sa, sb, self));
  return self;
}
}  // namespace

#define KILN_BINARY(NAME, KIND, EXPR, GRAD_A, GRAD_B)                                               \
  namespace {                                                                                       \
  struct NAME##_fn {                                                                                \
    template <class C>                                                                              \
    KILN_INLINE auto operator()(C a, C b) const {                                                   \
      return EXPR;                                                                                  \
    }                                                                                               \
  };                                                                                                \
  BackwardFn NAME##_backward(SavedTensor a, SavedTensor b, SavedTensor y) {                         \
    return [=](const Tensor& g, const Needs& need) -> Grads {                                       \
      return {need[0] ? Tensor(GRAD_A) : Tensor(), need[1] ? Tensor(GRAD_B) : Tensor()};            \
    };                                                                                              \
  }                                                                                                 \
  }                                                                                                 \
  Tensor NAME(const Tensor& a, const Tensor& b) {                                                   \
    return binary_autograd<BinaryKind::KIND, NAME##_fn>({&a, {}}, {&b, {}}, #NAME, NAME##_backward); \
  }                                                                                                 \
  Tensor NAME(const Tensor& a, Scalar b) {                                                          \
    return binary_autograd<BinaryKind::KIND, NAME##_fn>({&a, {}}, {nullptr, b}, #NAME, NAME##_backward); \
  }                                                                                                 \
  Tensor NAME(Scalar a, const Tensor& b) {                                                          \
    return binary_autograd<BinaryKind::KIND, NAME##_fn>({nullptr, a}, {&b, {}}, #NAME, NAME##_backward); \
  }                                                                                                 \
  Tensor& NAME##_(Tensor& self, const Tensor& b) {                                                  \
    return binary_inplace<BinaryKind::KIND, NAME##_fn>(self, {&b, {}}, #NAME,                       \
                                                       mentions(#GRAD_A #GRAD_B, 'a'), NAME##_backward); \
  }                                                                                                 \
  Tensor& NAME##_(Tensor& self, Scalar b) {                                                         \
    return binary_inplace<BinaryKind::KIND, NAME##_fn>(self, {nullptr, b}, #NAME,                   \
                                                       mentions(#GRAD_A #GRAD_B, 'a'), NAME##_backward); \
  }
#include "eager/binary_ops.def"
#undef KILN_BINARY

Tensor logical_not(const Tensor& x) { return eq(x, Scalar(false)).to(DType::Bool); }

Tensor bitwise_not(const Tensor& x) {
  if (x.dtype() == DType::Bool) return logical_not(x);
  KILN_CHECK(!is_floating(x.dtype()), DTypeError,
             "bitwise_not: not supported for {} (only integer and bool tensors)", dtype_name(x.dtype()));
  return bitwise_xor(x, Scalar(-1));
}

namespace {
TensorType clamp_meta(const TensorType& x, std::optional<Scalar> lo, std::optional<Scalar> hi) {
  KILN_CHECK(lo || hi, ValueError, "clamp: at least one of min and max must be given");
  std::vector<OperandType> operands = {{x.dtype, x.shape.empty()}};
  for (const auto& bound : {lo, hi})
    if (bound) operands.push_back({default_dtype(bound->category()), false, true});
  return {x.shape, binary_dtypes(BinaryKind::Arith, result_type(operands), "clamp").second, x.device};
}
}  // namespace

Tensor clamp(const Tensor& x, std::optional<Scalar> lo, std::optional<Scalar> hi) {
  clamp_meta(type_of(x), lo, hi);
  return autograd_op(
      "clamp", {x}, KILN_ATTRS(lo, hi),
      [&] {
        Tensor out = x;
        if (lo) out = maximum(out, *lo);
        if (hi) out = minimum(out, *hi);
        return out;
      },
      [&](const Tensor&) {
        SavedTensor sx(x);
        return BackwardFn([=](const Tensor& g, const Needs&) -> Grads {
          // The gradient passes where x is inside [lo, hi], bounds included, as in PyTorch.
          Tensor inside = ones_like(g, DType::Bool);
          if (lo) inside = logical_and(inside, ge(sx, *lo));
          if (hi) inside = logical_and(inside, le(sx, *hi));
          return {where(inside, g, 0)};
        });
      });
}

// ---- where ----

namespace {
// Both branches are loaded before the select so that the loop if-converts
// and vectorizes: a branch on random conditions mispredicts half the time.
// (`out` is always a fresh tensor, so it aliases no input.)
template <class T, bool a_scalar, bool b_scalar>
void where_contiguous(T* __restrict out, const uint8_t* __restrict cond, const T* __restrict a,
                      const T* __restrict b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T av = a[a_scalar ? 0 : i], bv = b[b_scalar ? 0 : i];
    out[i] = cond[i] != 0 ? av : bv;
  }
}

Tensor where_kernel(const Tensor& cond, const Tensor& a, const Tensor& b) {
  DType dtype = where_meta(type_of(cond), type_of(a), type_of(b)).dtype;
  const Device device = common_device({&cond, &a, &b}, "where");
  Tensor ta = to_dtype(a, dtype), tb = to_dtype(b, dtype);
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), ta.shape(), "where"), tb.shape(), "where");
  Tensor out = Tensor::empty(shape, dtype, device);
  Tensor ec = expand(cond, shape), ea = expand(ta, shape), eb = expand(tb, shape);
  if (!device.is_cpu()) {
    cuda_kernels::where(out, ec, ea, eb);
    return out;
  }
  auto plan = plan_loop<4>(shape, {&out, &ec, &ea, &eb});
  dispatch_all(dtype, "where", [&]<class T>() {
    run_loop(plan, [](const std::array<char*, 4>& p, const std::array<int64_t, 4>& s, int64_t n) {
      constexpr int64_t size = sizeof(T);
      if (s[0] == size && s[1] == 1 && (s[2] == size || s[2] == 0) && (s[3] == size || s[3] == 0)) {
        auto out = reinterpret_cast<T*>(p[0]);
        auto c = reinterpret_cast<const uint8_t*>(p[1]);
        auto x = reinterpret_cast<const T*>(p[2]), y = reinterpret_cast<const T*>(p[3]);
        if (s[2] == 0) s[3] == 0 ? where_contiguous<T, true, true>(out, c, x, y, n) : where_contiguous<T, true, false>(out, c, x, y, n);
        else s[3] == 0 ? where_contiguous<T, false, true>(out, c, x, y, n) : where_contiguous<T, false, false>(out, c, x, y, n);
        return;
      }
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<T*>(p[0] + i * s[0]) = *reinterpret_cast<const bool*>(p[1] + i * s[1])
                                                      ? *reinterpret_cast<const T*>(p[2] + i * s[2])
                                                      : *reinterpret_cast<const T*>(p[3] + i * s[3]);
    });
  });
  return out;
}
}  // namespace


Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  return autograd_op(
      "where", {cond, a, b}, KILN_NO_ATTRS, [&] { return where_kernel(cond, a, b); },
      [&](const Tensor&) {
        SavedTensor c(cond);
        return BackwardFn([c](const Tensor& g, const Needs& need) -> Grads {
          return {Tensor(), need[1] ? where(c, g, 0) : Tensor(), need[2] ? where(c, 0, g) : Tensor()};
        });
      });
}

namespace {
// A scalar branch of where() takes the other branch's dtype when the
// category allows, like a wrapped number in a binary op.
Tensor scalar_like(Scalar s, const Tensor& other) {
  return scalar_tensor(s, result_type({{&other, {}}, {nullptr, s}}));
}
}  // namespace

Tensor where(const Tensor& cond, const Tensor& a, Scalar b) { return where(cond, a, scalar_like(b, a)); }
Tensor where(const Tensor& cond, Scalar a, const Tensor& b) { return where(cond, scalar_like(a, b), b); }
Tensor where(const Tensor& cond, Scalar a, Scalar b) {
  DType dtype = result_type({{nullptr, a}, {nullptr, b}});
  return where(cond, scalar_tensor(a, dtype), scalar_tensor(b, dtype));
}

void register_binary_ops() {
  register_op({.name = "where",
               .num_inputs = 3,
               .meta = [](const std::vector<TensorType>& in, const Attrs&) -> std::vector<TensorType> {
                 return {where_meta(in[0], in[1], in[2])};
               },
               .run = [](const std::vector<Tensor>& in, const Attrs&) -> std::vector<Tensor> {
                 return {where(in[0], in[1], in[2])};
               }});
  register_op({.name = "clamp",
               .attrs = {{"lo", AttrKind::Scalar, true}, {"hi", AttrKind::Scalar, true}},
               .meta = [](const std::vector<TensorType>& in, const Attrs& a) -> std::vector<TensorType> {
                 return {clamp_meta(in[0], a.get<std::optional<Scalar>>("lo"), a.get<std::optional<Scalar>>("hi"))};
               },
               .run = [](const std::vector<Tensor>& in, const Attrs& a) -> std::vector<Tensor> {
                 return {clamp(in[0], a.get<std::optional<Scalar>>("lo"), a.get<std::optional<Scalar>>("hi"))};
               }});
#define KILN_BINARY(NAME, KIND, EXPR, GRAD_A, GRAD_B)                                              \
  register_op({.name = #NAME,                                                                      \
               .num_inputs = 2,                                                                    \
               .meta = [](const std::vector<TensorType>& in, const Attrs&) -> std::vector<TensorType> { \
                 return {binary_meta(BinaryKind::KIND, in[0], in[1], #NAME)};                       \
               },                                                                                  \
               .run = [](const std::vector<Tensor>& in, const Attrs&) -> std::vector<Tensor> {      \
                 return {NAME(in[0], in[1])};                                                      \
               }});
#include "eager/binary_ops.def"
#undef KILN_BINARY
}

}  // namespace kiln
