#pragma once
// Every eager op, as free functions. Elementwise ops come from the tables in
// unary_ops.def / binary_ops.def; the rest are declared here and defined in
// the .cpp file of their family (views.cpp, reduce.cpp, matmul.cpp, ...).
#include <optional>
#include <utility>
#include <vector>

#include "eager/tensor.h"

namespace kiln {

// ---- elementwise ----
// NAME_(self, ...) are the in-place forms: the result is written into self,
// whose shape and dtype category must hold it.
#define KILN_UNARY(NAME, KIND, EXPR, ...) \
  Tensor NAME(const Tensor& x);      \
  Tensor& NAME##_(Tensor& self);
#include "eager/unary_ops.def"
#undef KILN_UNARY
#define KILN_BINARY(NAME, KIND, EXPR, ...)             \
  Tensor NAME(const Tensor& a, const Tensor& b);  \
  Tensor NAME(const Tensor& a, Scalar b);         \
  Tensor NAME(Scalar a, const Tensor& b);        \
  Tensor& NAME##_(Tensor& self, const Tensor& b); \
  Tensor& NAME##_(Tensor& self, Scalar b);
#include "eager/binary_ops.def"
#undef KILN_BINARY

Tensor gelu(const Tensor& x, const std::string& approximate);  // "none" | "tanh"
Tensor logical_not(const Tensor& x);
Tensor bitwise_not(const Tensor& x);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, Scalar b);
Tensor where(const Tensor& cond, Scalar a, const Tensor& b);
Tensor where(const Tensor& cond, Scalar a, Scalar b);
Tensor clamp(const Tensor& x, std::optional<Scalar> min, std::optional<Scalar> max);

// The dtype PyTorch's type promotion gives these operands.
struct Operand {
  const Tensor* tensor = nullptr;
  std::optional<Scalar> scalar;
};
DType result_type(std::initializer_list<Operand> operands);
// The same rule from dtypes alone (meta rules): each operand's dtype, and
// whether it is a 0-d tensor or a wrapped Python number.
struct OperandType {
  DType dtype;
  bool zero_dim = false;
  bool wrapped = false;
};
DType result_type(const std::vector<OperandType>& operands);

// Prints "label x" when it runs (in a traced function: each time the graph
// runs, not when it is traced) and returns x.
Tensor print_value(const Tensor& x, const std::string& label = "");

// ---- copies and conversion ----
Tensor to_dtype(const Tensor& x, DType dtype);
// x's values on `device` (x itself when it is there); differentiable.
Tensor to_device(const Tensor& x, Device device);
Tensor contiguous(const Tensor& x);
Tensor clone(const Tensor& x);
// Writes src (broadcast, converted) into dst in place.
void copy_into(const Tensor& dst, const Tensor& src);
void fill(const Tensor& dst, Scalar value);

// ---- creation ----
Tensor zeros(Shape shape, DType dtype = DType::Float32, Device device = kCPU);
Tensor ones(Shape shape, DType dtype = DType::Float32, Device device = kCPU);
Tensor full(Shape shape, Scalar value, std::optional<DType> dtype = std::nullopt, Device device = kCPU);
Tensor scalar_tensor(Scalar value, std::optional<DType> dtype = std::nullopt);
Tensor arange(Scalar start, Scalar end, Scalar step = 1, std::optional<DType> dtype = std::nullopt);
Tensor linspace(double start, double end, int64_t steps, DType dtype = DType::Float32);
Tensor eye(int64_t n, std::optional<int64_t> m = std::nullopt, DType dtype = DType::Float32);
Tensor zeros_like(const Tensor& x, std::optional<DType> dtype = std::nullopt);
Tensor ones_like(const Tensor& x, std::optional<DType> dtype = std::nullopt);
Tensor full_like(const Tensor& x, Scalar value, std::optional<DType> dtype = std::nullopt);
Tensor empty_like(const Tensor& x, std::optional<DType> dtype = std::nullopt);
// From a flat buffer of `dtype` values in row-major order (copied).
Tensor from_blob_copy(const void* data, Shape shape, DType dtype);

// ---- random (counter-based Philox: same seed, same numbers everywhere) ----
void manual_seed(uint64_t seed);
Tensor rand(Shape shape, DType dtype = DType::Float32, Device device = kCPU);
Tensor randn(Shape shape, DType dtype = DType::Float32, Device device = kCPU);
Tensor randint(int64_t low, int64_t high, Shape shape, DType dtype = DType::Int64, Device device = kCPU);
Tensor normal(double mean, double std, Shape shape, DType dtype = DType::Float32, Device device = kCPU);
// Traced with x as an operand, so x's shape may be dynamic.
Tensor rand_like(const Tensor& x, std::optional<DType> dtype = std::nullopt);
Tensor randn_like(const Tensor& x, std::optional<DType> dtype = std::nullopt);

// ---- views (share storage) ----
Tensor view(const Tensor& x, Shape shape);
Tensor reshape(const Tensor& x, Shape shape);
Tensor permute(const Tensor& x, DimList dims);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor slice(const Tensor& x, int64_t dim, std::optional<int64_t> start,
             std::optional<int64_t> stop, int64_t step = 1);
Tensor select(const Tensor& x, int64_t dim, int64_t index);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor expand(const Tensor& x, Shape shape);  // -1 keeps a dim
Tensor broadcast_to(const Tensor& x, Shape shape);
std::vector<Tensor> broadcast_tensors(const std::vector<Tensor>& xs);
Tensor squeeze(const Tensor& x, std::optional<int64_t> dim = std::nullopt);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor flatten(const Tensor& x, int64_t start_dim = 0, int64_t end_dim = -1);
// Resolves one -1 in a requested shape; ShapeError when numel differs.
Shape infer_shape(const Shape& requested, int64_t numel, const char* op);
// expand's meta rule (also copy_'s: src broadcasts to dst as expand does).
struct TensorType;
TensorType expand_meta(const TensorType& x, Shape shape);

// ---- joining and splitting ----
Tensor cat(const std::vector<Tensor>& xs, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& xs, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim = 0);
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim = 0);

// ---- indexing ----
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);
Tensor masked_fill(const Tensor& x, const Tensor& mask, Scalar value);
Tensor one_hot(const Tensor& index, int64_t num_classes = -1);
Tensor nonzero(const Tensor& x);  // (n, ndim) int64
// NumPy advanced indexing, read like a Python index tuple: each entry is an
// integer tensor (one dim), a k-dim bool mask (k dims) or undefined (a full
// slice of one dim); index tensors broadcast together.
Tensor index(const Tensor& x, const std::vector<Tensor>& indices);
// x[indices] = values, in place (values broadcast to the indexed shape).
void index_put_(const Tensor& x, const std::vector<Tensor>& indices, const Tensor& values);

// ---- reductions (empty dims: all dims) ----
Tensor sum(const Tensor& x, DimList dims = {}, bool keepdim = false,
           std::optional<DType> dtype = std::nullopt);
Tensor mean(const Tensor& x, DimList dims = {}, bool keepdim = false);
Tensor prod(const Tensor& x, DimList dims = {}, bool keepdim = false);
Tensor amax(const Tensor& x, DimList dims = {}, bool keepdim = false);
Tensor amin(const Tensor& x, DimList dims = {}, bool keepdim = false);
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim = false);  // values, indices
std::pair<Tensor, Tensor> min(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, std::optional<int64_t> dim = std::nullopt, bool keepdim = false);
Tensor argmin(const Tensor& x, std::optional<int64_t> dim = std::nullopt, bool keepdim = false);
Tensor var(const Tensor& x, DimList dims = {}, int64_t correction = 1, bool keepdim = false);
Tensor std(const Tensor& x, DimList dims = {}, int64_t correction = 1, bool keepdim = false);
Tensor logsumexp(const Tensor& x, DimList dims, bool keepdim = false);
Tensor any(const Tensor& x, DimList dims = {}, bool keepdim = false);
Tensor all(const Tensor& x, DimList dims = {}, bool keepdim = false);

// ---- linear algebra and composites ----
Tensor matmul(const Tensor& a, const Tensor& b);
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = {},
                  const Tensor& bias = {}, double eps = 1e-5);

}  // namespace kiln
