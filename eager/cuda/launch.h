#pragma once
// Host side of kiln's CUDA kernels (eager/cuda/*.cu): each function checks
// nothing the op has not checked already, builds the kernel's parameters
// from tensors on one CUDA device and launches it on the device's current
// stream. The ops in eager/ call these where their CPU kernels would run.
#include <cstdint>
#include <string>
#include <string_view>

#include "eager/nn/pool_window.h"
#include "eager/scalar.h"
#include "eager/tensor.h"

namespace kiln::cuda_kernels {

// Whether this build has the kernels (nvcc was found).
bool built();

// The kernel each launcher below runs for its operands' dtypes
// (kiln_<family>_<op>_<dtype>), and whether this build's fatbins have it:
// tests check every name the ops can ask for, without a GPU.
std::string unary_kernel(std::string_view op, DType dtype);
std::string binary_kernel(std::string_view op, DType compute);
std::string copy_kernel(DType to, DType from);
std::string where_kernel(DType dtype);
std::string random_kernel(std::string_view op, DType dtype);  // rand, normal, randint
std::string rows_kernel(std::string_view op, DType dtype);    // sum prod max min argmax argmin softmax log_softmax layer_norm
std::string columns_kernel(std::string_view op, DType dtype); // sum prod max min
std::string index_kernel(std::string_view kind, DType dtype, DType index);  // take, put, add
bool has_kernel(std::string_view name);

// Elementwise kernels. Inputs have out's shape (expand() them first) and
// live on out's device, except that a 0-d CPU tensor counts as a scalar.
void copy(const Tensor& out, const Tensor& in);  // converts to out's dtype
void fill(const Tensor& out, Scalar value);
void unary(std::string_view op, const Tensor& out, const Tensor& in);                     // a row of unary_ops.def
void binary(std::string_view op, const Tensor& out, const Tensor& a, const Tensor& b);    // a row of binary_ops.def
void where(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b);

// An indexed read ("take": plain = base[index]), write ("put": base[index] =
// plain) or accumulation ("add": base[index] += plain, atomically) over
// three operands of one shape (eager/indexing.cpp): the element is at base +
// index * stride bytes; indices are checked against [0, size) (size < 0:
// unchecked), negative ones counting from the end when `wrap`. An index out
// of range stops the kernel; the error surfaces at the next synchronizing
// call.
struct IndexRule {
  int64_t stride, size;
  bool wrap;
  int64_t dim;
  const char* op;
};
void indexed(std::string_view kind, const Tensor& plain, const Tensor& base, const Tensor& index, const IndexRule& rule);

// 2-D pooling of contiguous planes (eager/nn/pool_window.h): kind "max"
// fills out and int64 indices, "avg" and "adaptive" fill out;
// pool_backward("avg" | "adaptive") adds grad's shares into a zeroed dx.
void pool(std::string_view kind, const nn::functional::PoolGeom& g, bool count_include_pad, const Tensor& in,
          const Tensor& out, const Tensor& indices = {});
void pool_backward(std::string_view kind, const nn::functional::PoolGeom& g, bool count_include_pad,
                   const Tensor& grad, const Tensor& dx);
std::string pool_kernel(std::string_view kind, DType dtype);  // max, avg, avg_backward

// rand / normal into a contiguous out, from the Philox stream at (seed,
// first) (eager/philox.h).
void rand(const Tensor& out, uint64_t seed, uint64_t first);
void normal(const Tensor& out, uint64_t seed, uint64_t first, double mean, double std);
void randint(const Tensor& out, uint64_t seed, uint64_t first, int64_t low, int64_t high);

// Over the rows of a contiguous (rows, cols) input: out has `rows`
// elements for "sum", "prod", "max", "min", and the input's shape for
// softmax, log_softmax and layer_norm (weight, bias: contiguous, both of
// the input's dtype or both of its compute dtype, or undefined).
void reduce_rows(std::string_view op, const Tensor& out, const Tensor& in, int64_t rows, int64_t cols);
// The same over the middle dim of a contiguous (outer, count, inner)
// input: out has outer * inner elements.
void reduce_columns(std::string_view op, const Tensor& out, const Tensor& in, int64_t outer, int64_t count,
                    int64_t inner);
// Each row's extreme: `values` (undefined: not wanted) and int64 `indices`.
void arg_rows(bool max, const Tensor& values, const Tensor& indices, const Tensor& in, int64_t rows, int64_t cols);
void softmax_rows(bool log, const Tensor& out, const Tensor& in, int64_t rows, int64_t cols);
void layer_norm_rows(const Tensor& out, const Tensor& in, const Tensor& weight, const Tensor& bias, double eps,
                     int64_t rows, int64_t cols);

}  // namespace kiln::cuda_kernels
