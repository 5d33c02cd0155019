#pragma once
// Host side of kiln's CUDA kernels (eager/cuda/*.cu): each function checks
// nothing the op has not checked already, builds the kernel's parameters
// from tensors on one CUDA device and launches it on the device's current
// stream. The ops in eager/ call these where their CPU kernels would run.
#include <cstdint>
#include <string_view>

#include "eager/scalar.h"
#include "eager/tensor.h"

namespace kiln::cuda_kernels {

// Whether this build has the kernels (nvcc was found); the reason otherwise.
bool built();

// Elementwise kernels. Inputs have out's shape (expand() them first) and
// live on out's device, except that a 0-d CPU tensor counts as a scalar.
void copy(const Tensor& out, const Tensor& in);  // converts to out's dtype
void fill(const Tensor& out, Scalar value);
void unary(std::string_view op, const Tensor& out, const Tensor& in);                     // a row of unary_ops.def
void binary(std::string_view op, const Tensor& out, const Tensor& a, const Tensor& b);    // a row of binary_ops.def
void where(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b);

// rand / normal into a contiguous out, from the Philox stream at (seed,
// first) (eager/philox.h).
void rand(const Tensor& out, uint64_t seed, uint64_t first);
void normal(const Tensor& out, uint64_t seed, uint64_t first, double mean, double std);
void randint(const Tensor& out, uint64_t seed, uint64_t first, int64_t low, int64_t high);

// Over the rows of a contiguous (rows, cols) input: out has `rows`
// elements for "sum", "prod", "max", "min", and the input's shape for
// softmax, log_softmax and layer_norm (weight, bias: contiguous, of the
// compute dtype, or undefined).
void reduce_rows(std::string_view op, const Tensor& out, const Tensor& in, int64_t rows, int64_t cols);
void softmax_rows(bool log, const Tensor& out, const Tensor& in, int64_t rows, int64_t cols);
void layer_norm_rows(const Tensor& out, const Tensor& in, const Tensor& weight, const Tensor& bias, double eps,
                     int64_t rows, int64_t cols);

}  // namespace kiln::cuda_kernels
