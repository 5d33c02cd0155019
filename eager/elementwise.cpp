// Elementwise ops: the tables in unary_ops.def / binary_ops.def expand into
// kernels here, on the strided loop engine of loops.h.
#include "eager/loops.h"
#include "eager/ops.h"
#include "eager/scalar_math.h"

namespace kiln {

// ---- type promotion ----

namespace {
std::optional<DType> promote_opt(std::optional<DType> a, std::optional<DType> b) {
  if (!a) return b;
  if (!b) return a;
  return promote_types(*a, *b);
}
// PyTorch's rule for combining a higher-priority result with a lower one:
// the lower only matters when it is of a higher category.
std::optional<DType> combine(std::optional<DType> higher, std::optional<DType> lower) {
  if (higher && is_floating(*higher)) return higher;
  if ((higher && *higher == DType::Bool) || (lower && is_floating(*lower)))
    return promote_opt(higher, lower);
  return higher ? higher : lower;
}
}  // namespace

DType result_type(std::initializer_list<Operand> operands) {
  std::optional<DType> dimensioned, zero_dim, wrapped;
  for (const Operand& op : operands) {
    if (op.tensor) {
      auto& slot = op.tensor->dim() == 0 ? zero_dim : dimensioned;
      slot = promote_opt(slot, op.tensor->dtype());
    } else if (op.scalar) {
      wrapped = promote_opt(wrapped, default_dtype(op.scalar->category()));
    }
  }
  return combine(dimensioned, combine(zero_dim, wrapped)).value_or(DType::Float32);
}

// ---- copies and conversion ----

namespace {
bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.storage() != b.storage() || a.numel() == 0 || b.numel() == 0) return false;
  auto extent = [](const Tensor& t) {
    int64_t lo = t.offset(), hi = t.offset();
    for (int64_t d = 0; d < t.dim(); ++d) hi += (t.shape()[d] - 1) * t.strides()[d];
    return std::pair{lo * static_cast<int64_t>(t.itemsize()), (hi + 1) * static_cast<int64_t>(t.itemsize())};
  };
  auto [alo, ahi] = extent(a);
  auto [blo, bhi] = extent(b);
  return alo < bhi && blo < ahi;
}
}  // namespace

namespace {
// Several elements sharing one memory location (an expanded tensor) make an
// in-place write ambiguous; PyTorch refuses it too.
void check_writable(const Tensor& dst, const char* op) {
  if (dst.numel() == 0) return;
  for (int64_t d = 0; d < dst.dim(); ++d)
    KILN_CHECK(dst.strides()[d] != 0 || dst.shape()[d] <= 1, ValueError,
               "{}: more than one element of the written-to tensor (shape {}, strides {}) refers to a "
               "single memory location; call .clone() before writing in place",
               op, shape_str(dst.shape()), shape_str(dst.strides()));
}
}  // namespace

// The tensor an elementwise op writes: a fresh one, or `into` (an in-place
// op's self) when the result can go there directly. finish_output() copies
// a fresh result into `into` when it could not.
Tensor make_output(const Shape& shape, DType dtype, Device device, const Tensor* into,
                   std::initializer_list<const Tensor*> inputs, const char* name) {
  if (!into) return Tensor::empty(shape, dtype, device);
  KILN_CHECK(into->shape() == shape, ShapeError, "{}_: output with shape {} doesn't match the broadcast shape {}",
             name, shape_str(into->shape()), shape_str(shape));
  KILN_CHECK(can_cast(dtype, into->dtype()), DTypeError,
             "{}_: result type {} can't be cast to the desired output type {}", name, dtype_name(dtype),
             dtype_name(into->dtype()));
  check_writable(*into, name);
  bool direct = into->dtype() == dtype;
  for (const Tensor* in : inputs)
    direct = direct && (!overlaps(*into, *in) || (in->offset() == into->offset() && in->strides() == into->strides()));
  return direct ? *into : Tensor::empty(shape, dtype, device);
}

void finish_output(const Tensor& out, const Tensor* into) {
  if (!into) return;
  if (out.is_same(*into)) into->bump_version();
  else copy_into(*into, out);
}

void copy_into(const Tensor& dst, const Tensor& src_in) {
  check_writable(dst, "copy_");
  KILN_CHECK(dst.device() == src_in.device(), DeviceError,
             "copy_: cannot copy a {} tensor into a {} tensor", src_in.device().str(), dst.device().str());
  Tensor src = src_in;
  // Reading and writing overlapping memory in one pass would read values
  // already overwritten; go through a temporary then.
  if (overlaps(dst, src) && !(dst.offset() == src.offset() && dst.strides() == src.strides() &&
                              dst.shape() == src.shape() && dst.dtype() == src.dtype()))
    src = clone(src);
  Tensor expanded = expand(src, dst.shape());
  auto plan = plan_loop<2>(dst.shape(), {&dst, &expanded});
  dispatch_all(dst.dtype(), "copy_", [&]<class R>() {
    dispatch_all(src.dtype(), "copy_", [&]<class T>() {
      run_loop(plan, [](const std::array<char*, 2>& p, const std::array<int64_t, 2>& s, int64_t n) {
        unary_inner<R, T>(p, s, n, [](compute_t<T> x) { return x; });
      });
    });
  });
  dst.bump_version();
}

void fill(const Tensor& dst, Scalar value) {
  check_writable(dst, "fill_");
  auto plan = plan_loop<1>(dst.shape(), {&dst});
  dispatch_all(dst.dtype(), "fill_", [&]<class T>() {
    const T v = value.to<T>();
    run_loop(plan, [v](const std::array<char*, 1>& p, const std::array<int64_t, 1>& s, int64_t n) {
      if (s[0] == sizeof(T)) {
        T* o = reinterpret_cast<T*>(p[0]);
        for (int64_t i = 0; i < n; ++i) o[i] = v;
      } else {
        for (int64_t i = 0; i < n; ++i) *reinterpret_cast<T*>(p[0] + i * s[0]) = v;
      }
    });
  });
  dst.bump_version();
}

Tensor to_dtype(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor out = Tensor::empty(x.shape(), dtype, x.device());
  copy_into(out, x);
  return out;
}

Tensor clone(const Tensor& x) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  copy_into(out, x);
  return out;
}

Tensor contiguous(const Tensor& x) { return x.is_contiguous() ? x : clone(x); }

// ---- unary ----

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

// ---- binary ----

namespace {
enum class BinaryKind { Arith, Float, Compare, Logical, Bitwise };

Tensor as_tensor(const Operand& op, DType dtype) {
  if (op.tensor) return to_dtype(*op.tensor, dtype);
  return scalar_tensor(*op.scalar, dtype);
}

template <BinaryKind kind, class Fn>
Tensor binary_op(const Operand& a, const Operand& b, const char* name, const Tensor* into = nullptr) {
  DType common = result_type({a, b});
  DType compute = common;
  if (kind == BinaryKind::Float && !is_floating(common)) compute = DType::Float32;
  KILN_CHECK(kind != BinaryKind::Bitwise || !is_floating(common), DTypeError,
             "{}: not supported for {} (only integer and bool tensors)", name, dtype_name(common));
  DType out_dtype =
      (kind == BinaryKind::Compare || kind == BinaryKind::Logical) ? DType::Bool : compute;
  if (a.tensor && b.tensor)
    KILN_CHECK(a.tensor->device() == b.tensor->device(), DeviceError,
               "{}: expected both tensors on the same device, got {} and {}", name,
               a.tensor->device().str(), b.tensor->device().str());
  Tensor ta = as_tensor(a, compute), tb = as_tensor(b, compute);
  Shape shape = broadcast_shapes(ta.shape(), tb.shape(), name);
  Tensor out = make_output(shape, out_dtype, ta.device(), into, {&ta, &tb}, name);
  Tensor ea = expand(ta, shape), eb = expand(tb, shape);
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

#define KILN_BINARY(NAME, KIND, EXPR)                                                   \
  namespace {                                                                           \
  struct NAME##_fn {                                                                    \
    template <class C>                                                                  \
    KILN_INLINE auto operator()(C a, C b) const {                                       \
      return EXPR;                                                                      \
    }                                                                                   \
  };                                                                                    \
  }                                                                                     \
  Tensor NAME(const Tensor& a, const Tensor& b) {                                       \
    return binary_op<BinaryKind::KIND, NAME##_fn>({&a, {}}, {&b, {}}, #NAME);           \
  }                                                                                     \
  Tensor NAME(const Tensor& a, Scalar b) {                                              \
    return binary_op<BinaryKind::KIND, NAME##_fn>({&a, {}}, {nullptr, b}, #NAME);       \
  }                                                                                     \
  Tensor NAME(Scalar a, const Tensor& b) {                                              \
    return binary_op<BinaryKind::KIND, NAME##_fn>({nullptr, a}, {&b, {}}, #NAME);       \
  }                                                                                     \
  Tensor& NAME##_(Tensor& self, const Tensor& b) {                                      \
    binary_op<BinaryKind::KIND, NAME##_fn>({&self, {}}, {&b, {}}, #NAME, &self);        \
    return self;                                                                        \
  }                                                                                     \
  Tensor& NAME##_(Tensor& self, Scalar b) {                                             \
    binary_op<BinaryKind::KIND, NAME##_fn>({&self, {}}, {nullptr, b}, #NAME, &self);    \
    return self;                                                                        \
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

Tensor clamp(const Tensor& x, std::optional<Scalar> lo, std::optional<Scalar> hi) {
  KILN_CHECK(lo || hi, ValueError, "clamp: at least one of min and max must be given");
  Tensor out = x;
  if (lo) out = maximum(out, *lo);
  if (hi) out = minimum(out, *hi);
  return lo || hi ? out : clone(x);
}

// ---- where ----

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  KILN_CHECK(cond.dtype() == DType::Bool, DTypeError,
             "where: condition must be a bool tensor, got {}", dtype_name(cond.dtype()));
  DType dtype = result_type({{&a, {}}, {&b, {}}});
  Tensor ta = to_dtype(a, dtype), tb = to_dtype(b, dtype);
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), ta.shape(), "where"), tb.shape(), "where");
  Tensor out = Tensor::empty(shape, dtype, a.device());
  Tensor ec = expand(cond, shape), ea = expand(ta, shape), eb = expand(tb, shape);
  auto plan = plan_loop<4>(shape, {&out, &ec, &ea, &eb});
  dispatch_all(dtype, "where", [&]<class T>() {
    run_loop(plan, [](const std::array<char*, 4>& p, const std::array<int64_t, 4>& s, int64_t n) {
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<T*>(p[0] + i * s[0]) = *reinterpret_cast<const bool*>(p[1] + i * s[1])
                                                      ? *reinterpret_cast<const T*>(p[2] + i * s[2])
                                                      : *reinterpret_cast<const T*>(p[3] + i * s[3]);
    });
  });
  return out;
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

}  // namespace kiln
