#pragma once
// Helpers shared by the kiln::nn::functional kernels (private to eager/nn).
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <string>

#include "eager/autograd.h"
#include "eager/op_util.h"
#include "eager/ops.h"
#include "runtime/parallel.h"

namespace kiln::nn::functional::detail {

enum class Reduction { None, Mean, Sum };

inline Reduction parse_reduction(const std::string& r, const char* op) {
  if (r == "mean") return Reduction::Mean;
  if (r == "sum") return Reduction::Sum;
  if (r == "none") return Reduction::None;
  fail<ValueError>("{}: reduction must be 'none', 'mean' or 'sum', got '{}'", op, r);
}

// 16-bit floats compute in float32; everything else in its own dtype.
inline DType compute_dtype(DType d) {
  return d == DType::Float16 || d == DType::BFloat16 ? DType::Float32 : d;
}

// Calls fn.template operator()<T>() for a compute dtype (float32/float64).
template <class F>
void dispatch_compute(DType d, const char* op, F&& fn) {
  if (d == DType::Float32) return fn.template operator()<float>();
  if (d == DType::Float64) return fn.template operator()<double>();
  fail<DTypeError>("{}: expected float32 or float64 to compute in, got {}", op, dtype_name(d));
}

// The checks are on types, so meta rules share them; eager passes type_of(t).
// (check_same_device is in eager/op_util.h.)

inline void check_floating(const TensorType& t, const char* op, const char* what) {
  KILN_CHECK(is_floating(t.dtype), DTypeError,
             "{}: expected a floating point {}, got {} (convert it with .to(float32) first)", op, what,
             dtype_name(t.dtype));
}
inline void check_floating(const Tensor& t, const char* op, const char* what) { check_floating(type_of(t), op, what); }

// Parameters (weight, bias, ...) must have the input's dtype, as in PyTorch:
// silently promoting a float32 layer to float64 would hide a bug.
inline void check_same_dtype(const TensorType& x, const TensorType& p, const char* op, const char* what) {
  if (!p.defined) return;
  check_same_device(x, p, op, what);
  KILN_CHECK(p.dtype == x.dtype, DTypeError, "{}: expected {} of dtype {} (the input's), got {}", op, what,
             dtype_name(x.dtype), dtype_name(p.dtype));
}
inline void check_same_dtype(const Tensor& x, const Tensor& p, const char* op, const char* what) {
  check_same_dtype(type_of(x), type_of(p), op, what);
}

// Two sizes that may be equal: a dynamic one matches anything (checked when
// the traced function runs).
inline bool same_size(int64_t a, int64_t b) { return a == b || is_dynamic(a) || is_dynamic(b); }

inline int blas_int(int64_t v, const char* op) {
  KILN_CHECK(v <= INT_MAX, ValueError, "{}: dimension {} exceeds what BLAS can index", op, v);
  return static_cast<int>(v);
}

// C = alpha * op(A) @ op(B) + beta * C, row-major. A product with one row or
// one column goes to gemv, which OpenBLAS does not pick by itself.
template <class T>
void gemm(bool ta, bool tb, int64_t m64, int64_t n64, int64_t k64, T alpha, const T* a, int64_t lda64,
          const T* b, int64_t ldb64, T beta, T* c, int64_t ldc64) {
  const int m = blas_int(m64, "gemm"), n = blas_int(n64, "gemm"), k = blas_int(k64, "gemm");
  const int lda = blas_int(lda64, "gemm"), ldb = blas_int(ldb64, "gemm"), ldc = blas_int(ldc64, "gemm");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) c[int64_t(i) * ldc + j] = beta == T(0) ? T(0) : beta * c[int64_t(i) * ldc + j];
    return;
  }
  const auto TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
  const int inca = ta ? lda : 1;  // stride along k in a row of op(a)
  const int incb = tb ? 1 : ldb;  // stride along k in a column of op(b)
  if constexpr (std::is_same_v<T, float>) {
    if (n == 1 && m > 1)
      cblas_sgemv(CblasRowMajor, TA, ta ? k : m, ta ? m : k, alpha, a, lda, b, incb, beta, c, ldc);
    else if (m == 1 && n > 1)
      cblas_sgemv(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, tb ? n : k, tb ? k : n, alpha, b, ldb, a, inca,
                  beta, c, 1);
    else
      cblas_sgemm(CblasRowMajor, TA, TB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    if (n == 1 && m > 1)
      cblas_dgemv(CblasRowMajor, TA, ta ? k : m, ta ? m : k, alpha, a, lda, b, incb, beta, c, ldc);
    else if (m == 1 && n > 1)
      cblas_dgemv(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, tb ? n : k, tb ? k : n, alpha, b, ldb, a, inca,
                  beta, c, 1);
    else
      cblas_dgemm(CblasRowMajor, TA, TB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

// Sets OpenBLAS's thread count for a scope (process-wide: OpenBLAS 0.3.21
// has no per-call setting), for kernels that call BLAS from our own pool.
class BlasThreadsGuard {
 public:
  explicit BlasThreadsGuard(int n) : previous_(openblas_get_num_threads()) { openblas_set_num_threads(n); }
  ~BlasThreadsGuard() { openblas_set_num_threads(previous_); }
  BlasThreadsGuard(const BlasThreadsGuard&) = delete;
  BlasThreadsGuard& operator=(const BlasThreadsGuard&) = delete;

 private:
  int previous_;
};

// Reduces a per-element loss as `reduction` says.
inline Tensor reduce_loss(const Tensor& loss, Reduction r) {
  switch (r) {
    case Reduction::Mean: return mean(loss);
    case Reduction::Sum: return sum(loss);
    default: return loss;
  }
}

// The elementwise scale a reduced loss's gradient `g` (0-d for mean/sum)
// spreads over `n` elements.
inline Tensor loss_grad_scale(const Tensor& g, Reduction r, int64_t n) {
  if (r == Reduction::Mean) return div(g, static_cast<double>(n));
  return g;
}

// Each file of eager/nn registers its ops (called by register_functional_ops).
void register_linear_ops();
void register_loss_ops();
void register_conv_ops();
void register_pool_ops();
void register_norm_ops();

}  // namespace kiln::nn::functional::detail
