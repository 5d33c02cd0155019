#pragma once
// cuBLAS, loaded at run time like the driver (runtime/cuda_driver.h): from
// the CUDA toolkit's libcublas.so.13 when the process can find it. GEMMs
// are column-major, as cuBLAS's; eager/matmul.cpp maps row-major tensors
// onto them.
#include <cstdint>
#include <string>

#include "runtime/dtype.h"

namespace kiln::cublas {

bool available();
std::string unavailable_reason();  // empty when available()

// Float32 GEMMs may round their inputs to TF32 (10-bit mantissa) on tensor
// cores, as torch.backends.cuda.matmul.allow_tf32; off by default.
void set_allow_tf32(bool allow);
bool allow_tf32();

struct Matrix {
  const void* data;
  int64_t ld;                // leading dimension (elements)
  int64_t batch_stride = 0;  // elements between consecutive matrices
  bool transposed = false;   // use op(X) = X^T
};

// For each of `batch` matrices on cuda:`device`, on its current stream:
// C (m x n) = op(A) (m x k) · op(B) (k x n), every operand of `dtype`
// (float16/bfloat16 accumulate in float32).
void gemm(int device, DType dtype, int64_t m, int64_t n, int64_t k, const Matrix& a, const Matrix& b, void* c,
          int64_t ldc, int64_t c_batch_stride, int64_t batch);

}  // namespace kiln::cublas
