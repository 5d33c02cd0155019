#include "eager/tensor.h"

#include "eager/autograd.h"
#include "eager/ops.h"
#include "runtime/cuda_driver.h"

namespace kiln {

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  for (int64_t d : shape)
    KILN_CHECK(d >= 0, ShapeError, "empty: negative dimension {} in shape {}", d, shape_str(shape));
  int64_t nbytes;
  if (__builtin_mul_overflow(kiln::numel(shape), static_cast<int64_t>(kiln::itemsize(dtype)), &nbytes))
    fail<ShapeError>("empty: a {} tensor of shape {} would need more than 2^63 bytes", dtype_name(dtype),
                     shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = Storage::allocate(static_cast<size_t>(nbytes), device);
  impl->strides = contiguous_strides(shape);
  impl->shape = std::move(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

namespace {
thread_local const char* running_op = nullptr;
}
const char* current_op() { return running_op; }
CurrentOpScope::CurrentOpScope(const char* op) : previous_(running_op) {
  // The outermost op names the error: the user called it.
  if (!running_op) running_op = op;
}
CurrentOpScope::~CurrentOpScope() { running_op = previous_; }

void Tensor::not_on_cpu_error() const {
  const char* op = current_op();
  fail<DeviceError>("{}: not implemented for {} tensors yet (got a {} tensor of shape {}); move it to the cpu with "
                    ".cpu() for this op",
                    op ? op : "this op", device().type == DeviceType::CUDA ? "CUDA" : device().str(), device().str(),
                    shape_str(shape()));
}

int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim(d, dim(), "size")]; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;
  int64_t expected = 1;
  const auto& sh = shape();
  const auto& st = strides();
  for (size_t i = sh.size(); i-- > 0;) {
    if (sh[i] == 1) continue;
    if (st[i] != expected) return false;
    expected *= sh[i];
  }
  return true;
}

Tensor Tensor::as_strided(Shape shape, Strides strides, int64_t offset) const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = storage();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = dtype();
  impl->view_base = impl_->view_base ? impl_->view_base : impl_;
  return Tensor(std::move(impl));
}

template <class T>
T Tensor::item() const {
  KILN_CHECK(numel() == 1, ValueError,
             "item(): a tensor with {} elements cannot be converted to a scalar (shape {})",
             numel(), shape_str(shape()));
  if (!device().is_cpu()) return cpu().item<T>();  // waits for the device, as in PyTorch
  return dispatch_all(dtype(), "item", [&]<class U>() -> T {
    return static_cast<T>(static_cast<compute_t<U>>(*static_cast<const U*>(data_ptr())));
  });
}
template double Tensor::item<double>() const;
template float Tensor::item<float>() const;
template int64_t Tensor::item<int64_t>() const;
template bool Tensor::item<bool>() const;

Scalar Tensor::item() const {
  switch (category(dtype())) {
    case DTypeCategory::Bool: return Scalar(item<bool>());
    case DTypeCategory::Integral: return Scalar(item<int64_t>());
    case DTypeCategory::Floating: break;
  }
  return Scalar(item<double>());
}

namespace {
// Writes an op's result back into `self`, as PyTorch's in-place ops do: the
// result must not need broadcasting beyond self's shape, nor a dtype category
// self cannot hold.
void inplace_result(Tensor& self, const Tensor& result, const char* op) {
  // self takes over result's history (see copy_).
  KILN_CHECK(result.shape() == self.shape(), ShapeError,
             "{}: output with shape {} doesn't match the broadcast shape {}", op,
             shape_str(self.shape()), shape_str(result.shape()));
  KILN_CHECK(can_cast(result.dtype(), self.dtype()), DTypeError,
             "{}: result type {} can't be cast to the desired output type {}", op,
             dtype_name(result.dtype()), dtype_name(self.dtype()));
  self.copy_(result);
}
}  // namespace

// ---- method forwarders: the ops live in eager/ops.h ----
#define KILN_UNARY(NAME, KIND, EXPR, ...)          \
  Tensor Tensor::NAME() const { return kiln::NAME(*this); } \
  Tensor& Tensor::NAME##_() { return kiln::NAME##_(*this); }
#include "eager/unary_ops.def"
#undef KILN_UNARY

#define KILN_BINARY(NAME, KIND, EXPR, ...)                                            \
  Tensor Tensor::NAME(const Tensor& b) const { return kiln::NAME(*this, b); }   \
  Tensor Tensor::NAME(Scalar b) const { return kiln::NAME(*this, b); }          \
  Tensor& Tensor::NAME##_(const Tensor& b) { return kiln::NAME##_(*this, b); }  \
  Tensor& Tensor::NAME##_(Scalar b) { return kiln::NAME##_(*this, b); }
#include "eager/binary_ops.def"
#undef KILN_BINARY

Tensor Tensor::logical_not() const { return kiln::logical_not(*this); }
Tensor Tensor::bitwise_not() const { return kiln::bitwise_not(*this); }
Tensor Tensor::clamp(std::optional<Scalar> lo, std::optional<Scalar> hi) const {
  return kiln::clamp(*this, lo, hi);
}
Tensor& Tensor::clamp_(std::optional<Scalar> lo, std::optional<Scalar> hi) {
  check_inplace(*this, "clamp");
  // The rule needs the old value, which the write below overwrites.
  Tensor result = kiln::clamp(should_record({*this}) ? kiln::clone(*this) : *this, lo, hi);
  inplace_result(*this, result, "clamp_");
  return *this;
}
Tensor& Tensor::fill_(Scalar value) {
  check_inplace(*this, "fill");
  kiln::fill(*this, value);
  // The old value no longer matters: its history gets no gradient.
  if (should_record({*this})) record("fill", *this, {*this}, [](const Tensor&, const Needs&) -> Grads { return {Tensor()}; });
  return *this;
}
Tensor& Tensor::zero_() { return fill_(0); }
Tensor& Tensor::copy_(const Tensor& src) {
  check_inplace(*this, "copy");
  copy_into(*this, src);
  if (should_record({*this, src}))
    record("copy", *this, {*this, src}, [](const Tensor& g, const Needs&) -> Grads { return {Tensor(), g}; });
  return *this;
}
Tensor Tensor::to(DType dtype) const { return to_dtype(*this, dtype); }
Tensor Tensor::to(Device device) const { return to_device(*this, device); }

bool Tensor::is_pinned() const { return device().is_cpu() && cuda::available() && storage()->allocator() == &cuda::pinned_allocator(); }

Tensor Tensor::pin_memory() const {
  KILN_CHECK(device().is_cpu(), DeviceError, "pin_memory: only cpu tensors can be pinned, got one on {}", device().str());
  if (is_pinned()) return *this;
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = Storage::allocate(static_cast<size_t>(numel()) * itemsize(), cuda::pinned_allocator());
  impl->shape = shape();
  impl->strides = contiguous_strides(shape());
  impl->dtype = dtype();
  Tensor out(std::move(impl));
  copy_into(out, *this);
  return out;
}
Tensor Tensor::contiguous() const { return kiln::contiguous(*this); }
Tensor Tensor::clone() const { return kiln::clone(*this); }

Tensor Tensor::view(Shape s) const { return kiln::view(*this, std::move(s)); }
Tensor Tensor::reshape(Shape s) const { return kiln::reshape(*this, std::move(s)); }
Tensor Tensor::permute(DimList dims) const { return kiln::permute(*this, std::move(dims)); }
Tensor Tensor::transpose(int64_t d0, int64_t d1) const { return kiln::transpose(*this, d0, d1); }
Tensor Tensor::T() const {
  DimList dims(dim());
  for (int64_t i = 0; i < dim(); ++i) dims[i] = dim() - 1 - i;
  return kiln::permute(*this, dims);
}
Tensor Tensor::slice(int64_t d, std::optional<int64_t> start, std::optional<int64_t> stop,
                     int64_t step) const {
  return kiln::slice(*this, d, start, stop, step);
}
Tensor Tensor::select(int64_t d, int64_t index) const { return kiln::select(*this, d, index); }
Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  return kiln::narrow(*this, d, start, length);
}
Tensor Tensor::expand(Shape s) const { return kiln::expand(*this, std::move(s)); }
Tensor Tensor::squeeze(std::optional<int64_t> d) const { return kiln::squeeze(*this, d); }
Tensor Tensor::unsqueeze(int64_t d) const { return kiln::unsqueeze(*this, d); }
Tensor Tensor::flatten(int64_t s, int64_t e) const { return kiln::flatten(*this, s, e); }

Tensor Tensor::sum(DimList d, bool k) const { return kiln::sum(*this, std::move(d), k); }
Tensor Tensor::mean(DimList d, bool k) const { return kiln::mean(*this, std::move(d), k); }
Tensor Tensor::prod(DimList d, bool k) const { return kiln::prod(*this, std::move(d), k); }
Tensor Tensor::amax(DimList d, bool k) const { return kiln::amax(*this, std::move(d), k); }
Tensor Tensor::amin(DimList d, bool k) const { return kiln::amin(*this, std::move(d), k); }
Tensor Tensor::argmax(std::optional<int64_t> d, bool k) const { return kiln::argmax(*this, d, k); }
Tensor Tensor::argmin(std::optional<int64_t> d, bool k) const { return kiln::argmin(*this, d, k); }
Tensor Tensor::var(DimList d, int64_t c, bool k) const { return kiln::var(*this, std::move(d), c, k); }
Tensor Tensor::std(DimList d, int64_t c, bool k) const { return kiln::std(*this, std::move(d), c, k); }
Tensor Tensor::logsumexp(DimList d, bool k) const { return kiln::logsumexp(*this, std::move(d), k); }
Tensor Tensor::any(DimList d, bool k) const { return kiln::any(*this, std::move(d), k); }
Tensor Tensor::all(DimList d, bool k) const { return kiln::all(*this, std::move(d), k); }
Tensor Tensor::matmul(const Tensor& b) const { return kiln::matmul(*this, b); }
Tensor Tensor::index_select(int64_t d, const Tensor& i) const { return kiln::index_select(*this, d, i); }
Tensor Tensor::gather(int64_t d, const Tensor& i) const { return kiln::gather(*this, d, i); }
Tensor Tensor::scatter_add(int64_t d, const Tensor& i, const Tensor& src) const {
  return kiln::scatter_add(*this, d, i, src);
}
Tensor Tensor::masked_fill(const Tensor& mask, Scalar v) const { return kiln::masked_fill(*this, mask, v); }
std::vector<Tensor> Tensor::split(int64_t size, int64_t d) const { return kiln::split(*this, size, d); }
std::vector<Tensor> Tensor::chunk(int64_t n, int64_t d) const { return kiln::chunk(*this, n, d); }
Tensor Tensor::softmax(int64_t d) const { return kiln::softmax(*this, d); }
Tensor Tensor::log_softmax(int64_t d) const { return kiln::log_softmax(*this, d); }

#define KILN_DEFINE_OPERATOR(OP, NAME)                                           \
  Tensor operator OP(const Tensor& a, const Tensor& b) { return kiln::NAME(a, b); } \
  Tensor operator OP(const Tensor& a, Scalar b) { return kiln::NAME(a, b); }        \
  Tensor operator OP(Scalar a, const Tensor& b) { return kiln::NAME(a, b); }
KILN_TENSOR_OPERATORS(KILN_DEFINE_OPERATOR)
#undef KILN_DEFINE_OPERATOR
Tensor operator-(const Tensor& a) { return neg(a); }

}  // namespace kiln
