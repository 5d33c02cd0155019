// The emulator's libcublas.so.13: the strided-batched GEMM kiln calls
// (runtime/cublas.cpp), computed in plain loops with cuBLAS's conventions
// (column-major, op(A) is m x k, leading dimensions checked as cuBLAS does)
// and its arithmetic (float accumulation; TF32 rounds the inputs to 10
// mantissa bits), on pointers that must be memory of the handle's device,
// which must be current.
#include <cublas_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "tests/cuda_emulator/emulator.h"
#include "tests/cuda_emulator/values.h"

struct cublasContext {
  int device = -1;  // current when it was created
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

using kiln_cuda_emulator::Format;
using kiln_cuda_emulator::load;
using kiln_cuda_emulator::store;

// (the types gemm accepts: it checks them first)
Format format_of(cudaDataType type) {
  switch (type) {
    case CUDA_R_32F: return Format::F32;
    case CUDA_R_64F: return Format::F64;
    case CUDA_R_16F: return Format::F16;
    default: return Format::BF16;
  }
}

// TF32: float32's exponent with 10 mantissa bits (round to nearest).
float tf32(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & ~0x1fffu;
  std::memcpy(&x, &bits, sizeof bits);
  return x;
}

// The bytes of a column-major matrix with `rows` rows, `cols` columns and
// leading dimension ld, repeated `batch` times `stride` elements apart.
bool on_device(int device, const void* p, Format format, int64_t rows, int64_t cols, int64_t ld, int64_t stride,
               int batch) {
  if (rows == 0 || cols == 0 || batch == 0) return true;
  const int64_t last = (batch - 1) * stride + (cols - 1) * ld + rows;  // elements to the end of the last matrix
  return stride >= 0 &&
         kiln_cuda_emulator::memory_device(p, static_cast<size_t>(last) * kiln_cuda_emulator::format_bytes(format)) == device;
}

}  // namespace

#define KILN_EXPORT extern "C" __attribute__((visibility("default")))

KILN_EXPORT cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  const int device = kiln_cuda_emulator::current_device();
  if (device < 0) return CUBLAS_STATUS_NOT_INITIALIZED;  // no context current
  *handle = new cublasContext{device};
  return CUBLAS_STATUS_SUCCESS;
}

KILN_EXPORT cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

KILN_EXPORT cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

KILN_EXPORT const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    default: return "unknown error";
  }
}

KILN_EXPORT cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                                      cublasOperation_t transb, int m, int n, int k,
                                                      const void* alpha, const void* A, cudaDataType a_type, int lda,
                                                      long long stride_a, const void* B, cudaDataType b_type, int ldb,
                                                      long long stride_b, const void* beta, void* C,
                                                      cudaDataType c_type, int ldc, long long stride_c, int batch,
                                                      cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  // The stored shapes: op(A) is m x k, op(B) is k x n.
  const int a_rows = ta ? k : m, a_cols = ta ? m : k;
  const int b_rows = tb ? n : k, b_cols = tb ? k : n;
  if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) ||
      ldc < std::max(1, m) || !alpha || !beta)
    return CUBLAS_STATUS_INVALID_VALUE;
  const bool f64 = compute == CUBLAS_COMPUTE_64F;
  const bool types_ok = a_type == b_type && b_type == c_type &&
                        (f64 ? a_type == CUDA_R_64F
                             : (a_type == CUDA_R_32F || a_type == CUDA_R_16F || a_type == CUDA_R_16BF) &&
                                   (compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_FAST_TF32));
  if (!types_ok || (compute == CUBLAS_COMPUTE_32F_FAST_TF32 && a_type != CUDA_R_32F)) return CUBLAS_STATUS_NOT_SUPPORTED;
  // Another device's handle, or memory: the real library would fail or fault.
  const int device = handle->device;
  const Format format = format_of(a_type);  // all three, checked above
  if (kiln_cuda_emulator::current_device() != device) return CUBLAS_STATUS_EXECUTION_FAILED;
  if (!on_device(device, A, format, a_rows, a_cols, lda, stride_a, batch) ||
      !on_device(device, B, format, b_rows, b_cols, ldb, stride_b, batch) ||
      !on_device(device, C, format, m, n, ldc, stride_c, batch))
    return CUBLAS_STATUS_INVALID_VALUE;
  const double alpha_v = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double beta_v = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  const bool round_tf32 = compute == CUBLAS_COMPUTE_32F_FAST_TF32;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t a0 = b * stride_a, b0 = b * stride_b, c0 = b * stride_c;
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) {
        double acc64 = 0;
        float acc32 = 0;
        for (int64_t l = 0; l < k; ++l) {
          double x = load(A, format, a0 + (ta ? l + i * lda : i + l * lda));
          double y = load(B, format, b0 + (tb ? j + l * ldb : l + j * ldb));
          if (f64) {
            acc64 += x * y;
          } else {
            float xf = static_cast<float>(x), yf = static_cast<float>(y);
            if (round_tf32) xf = tf32(xf), yf = tf32(yf);
            acc32 += xf * yf;
          }
        }
        const double product = f64 ? acc64 : acc32;
        const int64_t at = c0 + i + j * ldc;
        // beta == 0: C is not read (it may hold NaN), as in BLAS
        store(C, format, at, alpha_v * product + (beta_v == 0 ? 0 : beta_v * load(C, format, at)));
      }
  }
  return CUBLAS_STATUS_SUCCESS;
}
