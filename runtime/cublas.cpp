#include "runtime/cublas.h"

#include <atomic>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "runtime/cuda_driver.h"
#include "runtime/dynamic_library.h"
#include "runtime/error.h"

#if __has_include(<cublas_api.h>)
#include <cublas_api.h>
#define KILN_HAVE_CUBLAS_H 1
#endif

namespace kiln::cublas {
namespace {
std::atomic<bool> tf32{false};
}

void set_allow_tf32(bool allow) { tf32 = allow; }
bool allow_tf32() { return tf32; }

#ifdef KILN_HAVE_CUBLAS_H
namespace {

// cublas_api.h overloads some entry points in C++, so the pointer types are
// spelled out rather than taken with decltype.
struct Library {
  cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
  cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t) = nullptr;
  const char* (*status_string)(cublasStatus_t) = nullptr;
  cublasStatus_t (*gemm_strided_batched)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                         const void*, const void*, cudaDataType, int, long long, const void*,
                                         cudaDataType, int, long long, const void*, void*, cudaDataType, int,
                                         long long, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  std::string unavailable;
};

const Library& library() {
  static const Library lib = [] {
    Library lib;
    std::string why, missing;
    void* handle = open_library({"libcublas.so.13", "libcublas.so", "/usr/local/cuda/lib64/libcublas.so.13"}, why);
    if (!handle) {
      lib.unavailable = fmt::format("cuBLAS (libcublas.so.13) could not be loaded ({}); install the CUDA 13 "
                                    "toolkit's cuBLAS or put /usr/local/cuda/lib64 on LD_LIBRARY_PATH",
                                    why);
      return lib;
    }
    resolve_symbol(handle, "cublasCreate_v2", lib.create, missing);
    resolve_symbol(handle, "cublasSetStream_v2", lib.set_stream, missing);
    resolve_symbol(handle, "cublasSetMathMode", lib.set_math_mode, missing);
    resolve_symbol(handle, "cublasGetStatusString", lib.status_string, missing);
    resolve_symbol(handle, "cublasGemmStridedBatchedEx", lib.gemm_strided_batched, missing);
    if (!missing.empty()) lib.unavailable = fmt::format("libcublas lacks {}: kiln needs cuBLAS 12 or newer", missing);
    return lib;
  }();
  return lib;
}

void check(cublasStatus_t status, const char* call) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail<DeviceError>("cuBLAS: {} failed: {}", call, library().status_string(status));
}

// One handle per device, created on first use in the device's primary
// context (cuda_driver makes it current) and kept for the process.
cublasHandle_t handle(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, cublasHandle_t> handles;
  std::lock_guard lock(mutex);
  auto [it, added] = handles.try_emplace(device, nullptr);
  if (added) {
    cublasStatus_t s = library().create(&it->second);
    if (s != CUBLAS_STATUS_SUCCESS) handles.erase(it);
    check(s, "cublasCreate");
  }
  return it->second;
}

int as_int(int64_t v, const char* what) {
  KILN_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), ShapeError,
             "matmul on CUDA: {} = {} is beyond cuBLAS's 32-bit sizes; split the product", what, v);
  return static_cast<int>(v);
}

}  // namespace

bool available() { return cuda::available() && library().unavailable.empty(); }
std::string unavailable_reason() {
  if (!cuda::available()) return cuda::unavailable_reason();
  return library().unavailable;
}

void gemm(int device, DType dtype, int64_t m, int64_t n, int64_t k, const Matrix& a, const Matrix& b, void* c,
          int64_t ldc, int64_t c_batch_stride, int64_t batch) {
  cuda::require(Device{DeviceType::CUDA, device}, "matmul");
  KILN_CHECK(library().unavailable.empty(), DeviceError, "matmul on cuda:{}: {}", device, library().unavailable);
  cudaDataType type;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  switch (dtype) {
    case DType::Float32: type = CUDA_R_32F; compute = allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F; break;
    case DType::Float16: type = CUDA_R_16F; break;
    case DType::BFloat16: type = CUDA_R_16BF; break;
    case DType::Float64: type = CUDA_R_64F; compute = CUBLAS_COMPUTE_64F; break;
    default: fail<DTypeError>("matmul on CUDA: {} is not supported (cuBLAS multiplies floating types)", dtype_name(dtype));
  }
  // alpha and beta have the compute type's precision.
  const float alpha32 = 1, beta32 = 0;
  const double alpha64 = 1, beta64 = 0;
  const void* alpha = dtype == DType::Float64 ? static_cast<const void*>(&alpha64) : &alpha32;
  const void* beta = dtype == DType::Float64 ? static_cast<const void*>(&beta64) : &beta32;
  cuda::make_current(device);
  // A handle serves one thread at a time (setting its stream, then the call).
  static std::mutex calls;
  std::lock_guard lock(calls);
  cublasHandle_t h = handle(device);
  check(library().set_stream(h, reinterpret_cast<cudaStream_t>(cuda::current_stream(device))), "cublasSetStream");
  auto op = [](const Matrix& x) { return x.transposed ? CUBLAS_OP_T : CUBLAS_OP_N; };
  check(library().gemm_strided_batched(h, op(a), op(b), as_int(m, "m"), as_int(n, "n"), as_int(k, "k"), alpha, a.data,
                                       type, as_int(a.ld, "lda"), a.batch_stride, b.data, type, as_int(b.ld, "ldb"),
                                       b.batch_stride, beta, c, type, as_int(ldc, "ldc"), c_batch_stride,
                                       as_int(batch, "batch"), compute, CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx");
}

#else
bool available() { return false; }
std::string unavailable_reason() { return "this build of kiln has no cuBLAS support (cublas_api.h was not found)"; }
void gemm(int device, DType, int64_t, int64_t, int64_t, const Matrix&, const Matrix&, void*, int64_t, int64_t, int64_t) {
  fail<DeviceError>("matmul on cuda:{}: {}", device, unavailable_reason());
}
#endif

}  // namespace kiln::cublas
