#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "eager/scalar.h"
#include "runtime/dtype.h"
#include "runtime/error.h"
#include "runtime/shape.h"
#include "runtime/storage.h"

namespace kiln {

struct AutogradMeta;  // eager/autograd.cpp
struct Node;
struct TraceValue;  // tracer/: set on symbolic (traced) tensors, which have no storage
struct TracedView;  // eager/op.h: what a view taken in a trace views

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Strides strides;  // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::Float32;
  std::shared_ptr<AutogradMeta> autograd;  // null until it takes part in autograd
  // The tensor whose memory this one views (the root, never itself a view),
  // so that autograd can route an in-place write through a view to it.
  std::shared_ptr<TensorImpl> view_base;
  std::shared_ptr<TraceValue> traced;
  std::shared_ptr<TracedView> traced_view;
};

using DimList = std::vector<int64_t>;

// A handle to a strided view of refcounted storage. Copying a Tensor copies
// the handle (like a Python reference); views share storage and its version
// counter.
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Uninitialized contiguous memory.
  static Tensor empty(Shape shape, DType dtype = DType::Float32, Device device = kCPU);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Strides& strides() const { return impl().strides; }
  int64_t offset() const { return impl().offset; }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t size(int64_t d) const;
  int64_t numel() const { return kiln::numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  size_t itemsize() const { return kiln::itemsize(dtype()); }
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  bool is_contiguous() const;
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }
  TensorImpl* impl_ptr() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_handle() const { return impl_; }

  // The first element's address on the tensor's device: only that
  // device's kernels may read it (eager/cuda/launch.h for CUDA).
  void* address() const {
    if (impl().traced) needs_value_error();
    return static_cast<char*>(impl().storage->data()) + impl().offset * static_cast<int64_t>(itemsize());
  }
  // The first element for CPU kernels; a DeviceError naming the running op
  // for a tensor on another device (an op without a kernel for it).
  void* data_ptr() const {
    if (!impl().traced && !impl().storage->device().is_cpu()) not_on_cpu_error();
    return address();
  }
  template <class T>
  T* data() const {
    KILN_CHECK(dtype_v<T> == dtype(), DTypeError, "data<{}>() called on a {} tensor",
               dtype_name(dtype_v<T>), dtype_name(dtype()));
    return static_cast<T*>(data_ptr());
  }
  // The single element of a one-element tensor, converted.
  template <class T>
  T item() const;
  Scalar item() const;

  uint64_t version() const { return impl().storage->version(); }
  void bump_version() const { impl().storage->bump_version(); }

  // A view of the same storage with new geometry (elements, not bytes).
  Tensor as_strided(Shape shape, Strides strides, int64_t offset) const;

  std::string str() const;  // PyTorch-style repr: tensor([...], dtype=...)

  // ---- autograd (eager/autograd.h) ----
  bool requires_grad() const;
  // Only on leaves, and only floating dtypes can require grad.
  Tensor& requires_grad_(bool requires_grad = true);
  // The accumulated gradient of a leaf (undefined until backward reaches it).
  Tensor grad() const;
  void set_grad(const Tensor& grad) const;
  bool is_leaf() const;  // not the result of a recorded op
  // The recorded op that produced this tensor (null for leaves).
  std::shared_ptr<Node> grad_fn() const;
  // Shares storage, without history.
  Tensor detach() const;
  // Keep .grad on a non-leaf too.
  void retain_grad() const;
  void backward(const Tensor& grad_output = {}, bool retain_graph = false) const;

  // ---- op methods; each forwards to the free function in eager/ops.h ----
#define KILN_UNARY(NAME, KIND, EXPR, ...) \
  Tensor NAME() const;               \
  Tensor& NAME##_();
#include "eager/unary_ops.def"
#undef KILN_UNARY
#define KILN_BINARY(NAME, KIND, EXPR, ...)   \
  Tensor NAME(const Tensor& b) const;   \
  Tensor NAME(Scalar b) const;          \
  Tensor& NAME##_(const Tensor& b);     \
  Tensor& NAME##_(Scalar b);
#include "eager/binary_ops.def"
#undef KILN_BINARY

  Tensor logical_not() const;
  Tensor bitwise_not() const;
  Tensor clamp(std::optional<Scalar> min, std::optional<Scalar> max) const;
  Tensor& clamp_(std::optional<Scalar> min, std::optional<Scalar> max);
  Tensor& fill_(Scalar value);
  Tensor& zero_();
  Tensor& copy_(const Tensor& src);
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  Tensor cuda(int index = 0) const { return to(Device{DeviceType::CUDA, index}); }
  Tensor cpu() const { return to(kCPU); }
  // A copy in page-locked host memory (itself when it is already there),
  // which moves to and from GPUs faster; needs a CUDA driver.
  Tensor pin_memory() const;
  bool is_pinned() const;
  Tensor contiguous() const;
  Tensor clone() const;

  // views
  Tensor view(Shape shape) const;
  Tensor reshape(Shape shape) const;
  Tensor permute(DimList dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor T() const;
  Tensor slice(int64_t dim, std::optional<int64_t> start, std::optional<int64_t> stop,
               int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor expand(Shape shape) const;
  Tensor squeeze(std::optional<int64_t> dim = std::nullopt) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;

  // reductions
  Tensor sum(DimList dims = {}, bool keepdim = false) const;
  Tensor mean(DimList dims = {}, bool keepdim = false) const;
  Tensor prod(DimList dims = {}, bool keepdim = false) const;
  Tensor amax(DimList dims = {}, bool keepdim = false) const;
  Tensor amin(DimList dims = {}, bool keepdim = false) const;
  Tensor argmax(std::optional<int64_t> dim = std::nullopt, bool keepdim = false) const;
  Tensor argmin(std::optional<int64_t> dim = std::nullopt, bool keepdim = false) const;
  Tensor var(DimList dims = {}, int64_t correction = 1, bool keepdim = false) const;
  Tensor std(DimList dims = {}, int64_t correction = 1, bool keepdim = false) const;
  Tensor logsumexp(DimList dims, bool keepdim = false) const;
  Tensor any(DimList dims = {}, bool keepdim = false) const;
  Tensor all(DimList dims = {}, bool keepdim = false) const;

  Tensor matmul(const Tensor& b) const;
  Tensor softmax(int64_t dim) const;
  Tensor log_softmax(int64_t dim) const;

  // indexing, joining
  Tensor index_select(int64_t dim, const Tensor& index) const;
  Tensor gather(int64_t dim, const Tensor& index) const;
  Tensor scatter_add(int64_t dim, const Tensor& index, const Tensor& src) const;
  Tensor masked_fill(const Tensor& mask, Scalar value) const;
  std::vector<Tensor> split(int64_t split_size, int64_t dim = 0) const;
  std::vector<Tensor> chunk(int64_t chunks, int64_t dim = 0) const;

  Tensor operator[](int64_t index) const { return select(0, index); }

 private:
  // TraceError: a kernel (or .item(), .numpy()) asked for the value of a
  // symbolic tensor while tracing.
  [[noreturn]] void needs_value_error() const;
  [[noreturn]] void not_on_cpu_error() const;
  const TensorImpl& impl() const {
    KILN_CHECK(impl_, Error, "use of an undefined tensor");
    return *impl_;
  }
  std::shared_ptr<TensorImpl> impl_;
};

// The public op running on this thread, for errors raised deep inside its
// kernels (autograd_op and trace_or set it); null outside ops.
const char* current_op();
class CurrentOpScope {
 public:
  explicit CurrentOpScope(const char* op);
  ~CurrentOpScope();
  CurrentOpScope(const CurrentOpScope&) = delete;
  CurrentOpScope& operator=(const CurrentOpScope&) = delete;

 private:
  const char* previous_;
};

// Operators, each spelled as its binary op (add, lt, ...).
#define KILN_TENSOR_OPERATORS(X) \
  X(+, add) X(-, sub) X(*, mul) X(/, div) X(%, remainder) X(&, bitwise_and) X(|, bitwise_or) \
  X(^, bitwise_xor) X(==, eq) X(!=, ne) X(<, lt) X(<=, le) X(>, gt) X(>=, ge)
#define KILN_DECLARE_OPERATOR(OP, NAME)                  \
  Tensor operator OP(const Tensor& a, const Tensor& b);  \
  Tensor operator OP(const Tensor& a, Scalar b);         \
  Tensor operator OP(Scalar a, const Tensor& b);
KILN_TENSOR_OPERATORS(KILN_DECLARE_OPERATOR)
#undef KILN_DECLARE_OPERATOR
Tensor operator-(const Tensor& a);

}  // namespace kiln
