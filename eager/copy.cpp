// Type promotion, copies and dtype conversion, and the output rules every
// elementwise kernel shares (in-place writes, overlap).
#include "eager/autograd.h"
#include "eager/cuda/launch.h"
#include "eager/loops.h"
#include "eager/ops.h"
#include "runtime/cuda_driver.h"

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

DType result_type(const std::vector<OperandType>& operands) {
  std::optional<DType> dimensioned, zero_dim, wrapped;
  for (const OperandType& op : operands) {
    auto& slot = op.wrapped ? wrapped : op.zero_dim ? zero_dim : dimensioned;
    slot = promote_opt(slot, op.dtype);
  }
  return combine(dimensioned, combine(zero_dim, wrapped)).value_or(DType::Float32);
}

DType result_type(std::initializer_list<Operand> operands) {
  std::vector<OperandType> types;
  for (const Operand& op : operands) {
    if (op.tensor) types.push_back({op.tensor->dtype(), op.tensor->dim() == 0, false});
    else if (op.scalar) types.push_back({default_dtype(op.scalar->category()), false, true});
  }
  return result_type(types);
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

namespace {
TensorType copy_meta(const TensorType& dst, const TensorType& src) {
  KILN_CHECK(dst.device == src.device, DeviceError, "copy_: cannot copy a {} tensor into a {} tensor",
             src.device.str(), dst.device.str());
  if (src.shape != dst.shape) expand_meta(src, dst.shape);
  return dst;
}
}  // namespace

namespace {
// src's values as a contiguous tensor on `device`, through the host when the
// devices differ (the driver copies contiguous bytes only).
Tensor transfer(const Tensor& src, Device device) {
  Tensor from = contiguous(src);
  Tensor out = Tensor::empty(src.shape(), src.dtype(), device);
  const size_t nbytes = static_cast<size_t>(out.numel()) * out.itemsize();
  if (from.device().is_cpu()) {
    cuda::copy_from_host(out.address(), from.address(), nbytes, device.index);
  } else if (device.is_cpu()) {
    cuda::copy_to_host(out.address(), from.address(), nbytes, from.device().index);
  } else {
    return transfer(transfer(from, kCPU), device);
  }
  return out;
}
}  // namespace

void copy_into(const Tensor& dst, const Tensor& src_in) {
  if (auto traced = trace_if_active("copy", {dst, src_in}, KILN_NO_ATTRS)) {
    // Recorded out of place: dst's new value.
    trace_assign(dst, (*traced)[0], "copy");
    return;
  }
  check_writable(dst, "copy_");
  // A copy between devices moves the values first; a 0-d CPU tensor is a
  // scalar to CUDA kernels (as in PyTorch).
  Tensor src = src_in;
  if (dst.device() != src.device() && !is_cpu_scalar(src)) src = transfer(src, dst.device());
  // Reading and writing overlapping memory in one pass would read values
  // already overwritten; go through a temporary then.
  if (overlaps(dst, src) && !(dst.offset() == src.offset() && dst.strides() == src.strides() &&
                              dst.shape() == src.shape() && dst.dtype() == src.dtype()))
    src = clone(src);
  if (!dst.device().is_cpu()) {
    if (dst.dtype() == src.dtype() && dst.shape() == src.shape() && dst.is_contiguous() && src.is_contiguous() &&
        src.device() == dst.device()) {
      if (dst.address() != src.address())
        cuda::copy_on_device(dst.address(), src.address(), static_cast<size_t>(dst.numel()) * dst.itemsize(),
                             dst.device().index);
    } else {
      cuda_kernels::copy(dst, expand(src, dst.shape()));
    }
    dst.bump_version();
    return;
  }
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
  if (active_trace()) {
    trace_assign(dst, full_like(dst, value, dst.dtype()), "fill");
    return;
  }
  check_writable(dst, "fill_");
  if (!dst.device().is_cpu()) {
    cuda_kernels::fill(dst, value);
    dst.bump_version();
    return;
  }
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

namespace {
// The gradient of a copy is the gradient (the engine casts it back to the
// input's dtype).
BackwardFn identity_back() {
  return [](const Tensor& g, const Needs&) -> Grads { return {g}; };
}
}  // namespace

// Converting to the same dtype, or making a contiguous tensor contiguous,
// returns the input itself, as in PyTorch, so no op is recorded then.
Tensor to_dtype(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  return autograd_op(
      "to_copy", {x}, KILN_ATTRS(dtype),
      [&] {
        Tensor out = Tensor::empty(x.shape(), dtype, x.device());
        copy_into(out, x);
        return out;
      },
      [](const Tensor&) { return identity_back(); });
}

Tensor to_device(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  cuda::require(device, "to");
  return autograd_op(
      "to_device", {x}, KILN_ATTRS(device.str()),
      [&] {
        Tensor out = Tensor::empty(x.shape(), x.dtype(), device);
        copy_into(out, x);
        return out;
      },
      [&](const Tensor&) {
        return BackwardFn([from = x.device()](const Tensor& g, const Needs&) -> Grads { return {to_device(g, from)}; });
      });
}

Tensor clone(const Tensor& x) {
  return autograd_op(
      "clone", {x}, KILN_NO_ATTRS,
      [&] {
        Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
        copy_into(out, x);
        return out;
      },
      [](const Tensor&) { return identity_back(); });
}

Tensor contiguous(const Tensor& x) {
  // A traced value's memory layout is only known when the function runs.
  if (!is_symbolic(x)) return x.is_contiguous() ? x : clone(x);
  Tensor out = autograd_op("contiguous", {x}, KILN_NO_ATTRS, [&] { return x; }, [](const Tensor&) { return identity_back(); });
  note_traced_view(out, x, nullptr, {},
                   "contiguous (it returns its input or a copy depending on the input's memory layout, which is "
                   "only known when the function runs); write into a .clone()");
  return out;
}

void register_copy_ops() {
  auto same_type = [](const auto& in) { return in[0]; };
  register_typed<DType>(
      {.name = "to_copy"}, "dtype",
      [](const auto& in, DType dtype) { return TensorType{in[0].shape, dtype, in[0].device}; },
      [](const auto& in, DType dtype) { return to_dtype(in[0], dtype); });
  register_typed<std::string>(
      {.name = "to_device"}, "device",
      [](const auto& in, const std::string& device) { return TensorType{in[0].shape, in[0].dtype, Device::parse(device)}; },
      [](const auto& in, const std::string& device) { return to_device(in[0], Device::parse(device)); });
  register_typed<>({.name = "clone"}, "", same_type, [](const auto& in) { return clone(in[0]); });
  register_typed<>({.name = "contiguous"}, "", same_type, [](const auto& in) { return contiguous(in[0]); });
  // copy_ out of place: dst's new value.
  register_typed<>(
      {.name = "copy", .num_inputs = 2, .operands = "dst, src"}, "",
      [](const auto& in) { return copy_meta(in[0], in[1]); },
      [](const auto& in) {
        Tensor out = empty_like(in[0]);
        out.copy_(in[1]);
        return out;
      });
}

}  // namespace kiln
