// matmul with NumPy/PyTorch semantics: 1-D operands are promoted to a row
// (left) or column (right) and the added dim removed afterwards; leading
// dims are batch dims and broadcast. float32/float64 go to OpenBLAS, reading
// transposed operands in place through its transpose flags; 16-bit floats
// compute in float32; integers use a plain loop.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <optional>

#include "eager/autograd.h"
#include "eager/loops.h"
#include "eager/op_util.h"
#include "eager/ops.h"
#include "runtime/cublas.h"
#include "runtime/parallel.h"

namespace kiln {
namespace {

// How BLAS can read a strided [rows, cols] matrix without copying: row-major
// with leading dimension ld, or the transpose of a row-major [cols, rows].
// A size-1 dim's stride is irrelevant, so it never forces a copy.
struct BlasMat {
  bool trans = false;
  int64_t ld = 1;
};

std::optional<BlasMat> blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if (cs == 1 || cols == 1) {
    int64_t ld = rows == 1 ? std::max<int64_t>(cols, 1) : rs;
    if (ld >= std::max<int64_t>(cols, 1)) return BlasMat{false, ld};
  }
  if (rs == 1 || rows == 1) {
    int64_t ld = cols == 1 ? std::max<int64_t>(rows, 1) : cs;
    if (ld >= std::max<int64_t>(rows, 1)) return BlasMat{true, ld};
  }
  return std::nullopt;
}

// An operand broadcast to batch + [rows, cols] and how BLAS reads each of its
// matrices. Layouts BLAS cannot read are copied once, before broadcasting.
struct Operand3 {
  Tensor t;
  BlasMat mat;
};

Operand3 blas_operand(const Tensor& x, const Shape& full_shape) {
  auto layout = [&](const Tensor& t) {
    const int64_t nd = t.dim();
    return blas_layout(t.shape()[nd - 2], t.shape()[nd - 1], t.strides()[nd - 2], t.strides()[nd - 1]);
  };
  Tensor t = x;
  auto mat = layout(t);
  if (!mat) {
    t = contiguous(x);
    mat = layout(t);
  }
  return {expand(t, full_shape), *mat};
}

// ---- BLAS calls; a product with one row or one column is a gemv (or a dot),
// which OpenBLAS 0.3.21 does not pick by itself ----

template <class T>
void blas_gemm(bool ta, bool tb, int m, int n, int k, const T* a, int lda, const T* b, int ldb, T* c,
               int ldc) {
  const auto TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
  const int inca = ta ? lda : 1;        // stride along k in a row of op(a)
  const int incb = tb ? 1 : ldb;        // stride along k in a column of op(b)
  if constexpr (std::is_same_v<T, float>) {
    if (m == 1 && n == 1) {
      c[0] = cblas_sdot(k, a, inca, b, incb);
    } else if (n == 1) {
      cblas_sgemv(CblasRowMajor, TA, ta ? k : m, ta ? m : k, 1.0f, a, lda, b, incb, 0.0f, c, ldc);
    } else if (m == 1) {
      cblas_sgemv(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, tb ? n : k, tb ? k : n, 1.0f, b, ldb,
                  a, inca, 0.0f, c, 1);
    } else {
      cblas_sgemm(CblasRowMajor, TA, TB, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
    }
  } else {
    if (m == 1 && n == 1) {
      c[0] = cblas_ddot(k, a, inca, b, incb);
    } else if (n == 1) {
      cblas_dgemv(CblasRowMajor, TA, ta ? k : m, ta ? m : k, 1.0, a, lda, b, incb, 0.0, c, ldc);
    } else if (m == 1) {
      cblas_dgemv(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, tb ? n : k, tb ? k : n, 1.0, b, ldb,
                  a, inca, 0.0, c, 1);
    } else {
      cblas_dgemm(CblasRowMajor, TA, TB, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc);
    }
  }
}

// Batch offsets (in elements) of each operand for batch index i.
struct BatchIndexer {
  Shape batch;
  Strides sa, sb;
  BatchIndexer(const Shape& batch, const Tensor& a, const Tensor& b) : batch(batch) {
    for (size_t d = 0; d < batch.size(); ++d) {
      sa.push_back(a.strides()[d]);
      sb.push_back(b.strides()[d]);
    }
  }
  std::pair<int64_t, int64_t> operator()(int64_t i) const {
    int64_t oa = 0, ob = 0;
    for (size_t d = batch.size(); d-- > 0;) {
      int64_t idx = i % batch[d];
      i /= batch[d];
      oa += idx * sa[d];
      ob += idx * sb[d];
    }
    return {oa, ob};
  }
};

// When b is the same matrix for every batch and a's batch and row dims
// merge into one strided dim, the batch is one tall GEMM (x @ W in a linear
// layer): fewer, larger BLAS calls.
bool folds_into_rows(const Tensor& a, const BlasMat& ma, const Tensor& b, size_t nbatch) {
  if (ma.trans) return false;
  for (size_t d = 0; d < nbatch; ++d)
    if (b.strides()[d] != 0 && b.shape()[d] != 1) return false;
  int64_t expected = ma.ld;  // stride of one row
  for (size_t d = nbatch + 1; d-- > 0;) {
    const int64_t size = a.shape()[d];
    if (size != 1 && a.strides()[d] != expected) return false;
    expected *= size;
  }
  return true;
}

template <class T>
void blas_matmul(const Tensor& a_in, const Tensor& b_in, Tensor& out, const Shape& batch, int64_t m,
                 int64_t n, int64_t k) {
  Shape sa = batch, sb = batch;
  sa.insert(sa.end(), {m, k});
  sb.insert(sb.end(), {k, n});
  auto [a, ma] = blas_operand(a_in, sa);
  auto [b, mb] = blas_operand(b_in, sb);
  for (int64_t v : {m, n, k, ma.ld, mb.ld})
    KILN_CHECK(v <= INT_MAX, ValueError, "matmul: dimension {} exceeds what BLAS can index", v);
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  T* pc = out.data<T>();
  const int64_t nbatch = numel(batch);
  if (folds_into_rows(a, ma, b, batch.size())) {
    KILN_CHECK(nbatch * m <= INT_MAX, ValueError, "matmul: {} rows exceed what BLAS can index", nbatch * m);
    blas_gemm<T>(false, mb.trans, static_cast<int>(nbatch * m), n, k, pa, ma.ld, pb, mb.ld, pc, n);
    return;
  }
  BatchIndexer index(batch, a, b);
  auto one = [&](int64_t i) {
    auto [oa, ob] = index(i);
    blas_gemm<T>(ma.trans, mb.trans, m, n, k, pa + oa, ma.ld, pb + ob, mb.ld, pc + i * m * n, n);
  };
  // OpenBLAS runs products below 4 * 65536 multiply-adds on the calling
  // thread only, so small batched products are spread over our pool instead;
  // larger ones go one at a time and OpenBLAS threads each.
  if (static_cast<double>(m) * n * k <= 262144.0) {
    parallel_for(0, nbatch, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, m * n * k)),
                 [&](int64_t ib, int64_t ie) {
                   for (int64_t i = ib; i < ie; ++i) one(i);
                 });
  } else {
    for (int64_t i = 0; i < nbatch; ++i) one(i);
  }
}

// On a GPU, through cuBLAS (runtime/cublas.h), which is column-major: the
// row-major C = A B is the column-major C^T = B^T A^T, and a row-major
// operand is its own transpose read column-major, so the operands swap and
// keep their transpose flags. Batches whose offsets are one stride apart
// (contiguous, or one matrix for all) are one strided-batched call.
void cuda_matmul(const Tensor& a_in, const Tensor& b_in, Tensor& out, const Shape& batch, int64_t m, int64_t n,
                 int64_t k) {
  Shape sa = batch, sb = batch;
  sa.insert(sa.end(), {m, k});
  sb.insert(sb.end(), {k, n});
  auto [a, ma] = blas_operand(a_in, sa);
  auto [b, mb] = blas_operand(b_in, sb);
  const size_t nb = batch.size();
  auto uniform_stride = [&](const Tensor& t) -> std::optional<int64_t> {
    std::optional<int64_t> stride;
    int64_t expected = 0;
    for (size_t d = nb; d-- > 0;) {
      if (t.shape()[d] == 1) continue;
      if (!stride) stride = expected = t.strides()[d];
      else if (t.strides()[d] != expected) return std::nullopt;
      expected *= t.shape()[d];
    }
    return stride.value_or(0);
  };
  const int device = out.device().index;
  const int64_t size = static_cast<int64_t>(out.itemsize());
  auto gemm = [&](int64_t oa, int64_t ob, int64_t oc, int64_t stride_a, int64_t stride_b, int64_t count) {
    cublas::gemm(device, out.dtype(), n, m, k,
                 {static_cast<const char*>(b.address()) + ob * size, mb.ld, stride_b, mb.trans},
                 {static_cast<const char*>(a.address()) + oa * size, ma.ld, stride_a, ma.trans},
                 static_cast<char*>(out.address()) + oc * size, n, m * n, count);
  };
  const int64_t nbatch = numel(batch);
  auto stride_a = uniform_stride(a), stride_b = uniform_stride(b);
  if (stride_a && stride_b) return gemm(0, 0, 0, *stride_a, *stride_b, nbatch);
  BatchIndexer index(batch, a, b);
  for (int64_t i = 0; i < nbatch; ++i) {
    auto [oa, ob] = index(i);
    gemm(oa, ob, i * m * n, 0, 0, 1);
  }
}

// Integer products wrap around on overflow like PyTorch's; computed in the
// unsigned type so the wrap is defined behaviour.
template <class T>
void integer_matmul(const Tensor& a_in, const Tensor& b_in, Tensor& out, const Shape& batch, int64_t m,
                    int64_t n, int64_t k) {
  Shape sa = batch, sb = batch;
  sa.insert(sa.end(), {m, k});
  sb.insert(sb.end(), {k, n});
  Tensor a = contiguous(expand(a_in, sa)), b = contiguous(expand(b_in, sb));
  using U = std::make_unsigned_t<std::conditional_t<std::is_same_v<T, bool>, uint8_t, T>>;
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  T* pc = out.data<T>();
  parallel_for(0, numel(batch) * m, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, n * k)),
               [&](int64_t rb, int64_t re) {
                 std::vector<U> acc(n);
                 for (int64_t row = rb; row < re; ++row) {
                   const int64_t i = row / m;
                   const T* arow = pa + row * k;
                   const T* bmat = pb + i * k * n;
                   std::fill(acc.begin(), acc.end(), U(0));
                   for (int64_t p = 0; p < k; ++p) {
                     const U av = static_cast<U>(arow[p]);
                     const T* brow = bmat + p * n;
                     for (int64_t j = 0; j < n; ++j) acc[j] += av * static_cast<U>(brow[j]);
                   }
                   for (int64_t j = 0; j < n; ++j) pc[row * n + j] = static_cast<T>(acc[j]);
                 }
               });
}

}  // namespace

namespace {
// The meta rule: validation and the result type. 1-D operands count as a
// row (left) / column (right); the batch dims broadcast.
TensorType matmul_meta(const TensorType& a, const TensorType& b) {
  KILN_CHECK(!a.shape.empty() && !b.shape.empty(), ShapeError,
             "matmul: both arguments need at least 1 dim, got shapes {} and {}", shape_str(a.shape),
             shape_str(b.shape));
  KILN_CHECK(a.device == b.device, DeviceError, "matmul: expected both tensors on the same device, got {} and {}",
             a.device.str(), b.device.str());
  const DType dtype = result_type({{a.dtype, false}, {b.dtype, false}});
  KILN_CHECK(dtype != DType::Bool, DTypeError, "matmul: not supported for bool tensors (shapes {} and {})",
             shape_str(a.shape), shape_str(b.shape));
  const bool a_vec = a.shape.size() == 1, b_vec = b.shape.size() == 1;
  Shape sa = a_vec ? Shape{1, a.shape[0]} : a.shape, sb = b_vec ? Shape{b.shape[0], 1} : b.shape;
  const int64_t m = sa[sa.size() - 2], k = sa.back(), kb = sb[sb.size() - 2], n = sb.back();
  KILN_CHECK(k == kb || is_dynamic(k) || is_dynamic(kb), ShapeError,
             "matmul: shapes {} and {} are not aligned: {} (last dim of the first) != {} ({} dim of "
             "the second)", shape_str(a.shape), shape_str(b.shape), k, kb, b_vec ? "only" : "second-to-last");
  Shape batch;
  try {
    batch = broadcast_shapes(Shape(sa.begin(), sa.end() - 2), Shape(sb.begin(), sb.end() - 2), "matmul");
  } catch (const ShapeError&) {
    fail<ShapeError>("matmul: the batch dims of shapes {} and {} cannot be broadcast together", shape_str(a.shape),
                     shape_str(b.shape));
  }
  if (!a_vec) batch.push_back(m);
  if (!b_vec) batch.push_back(n);
  return {batch, dtype, a.device};
}

Tensor matmul_impl(const Tensor& a_in, const Tensor& b_in) {
  const TensorType result = matmul_meta(type_of(a_in), type_of(b_in));
  const DType dtype = result.dtype;
  const bool gpu = !a_in.device().is_cpu();
  KILN_CHECK(!gpu || is_floating(dtype), DTypeError,
             "matmul on {}: {} is not supported (cuBLAS multiplies floating types); convert with .to(kiln.float32)",
             a_in.device().str(), dtype_name(dtype));
  // cuBLAS multiplies 16-bit floats itself (accumulating in float32).
  const DType compute = !gpu && (dtype == DType::Float16 || dtype == DType::BFloat16) ? DType::Float32 : dtype;
  const bool a_vec = a_in.dim() == 1, b_vec = b_in.dim() == 1;
  Tensor a = to_dtype(a_vec ? unsqueeze(a_in, 0) : a_in, compute);
  Tensor b = to_dtype(b_vec ? unsqueeze(b_in, 1) : b_in, compute);
  const int64_t m = a.shape()[a.dim() - 2], k = a.shape()[a.dim() - 1], n = b.shape()[b.dim() - 1];
  const Shape batch = broadcast_shapes(Shape(a.shape().begin(), a.shape().end() - 2),
                                       Shape(b.shape().begin(), b.shape().end() - 2), "matmul");

  Shape out_shape = batch;
  out_shape.insert(out_shape.end(), {m, n});
  Tensor out = Tensor::empty(out_shape, compute, a_in.device());
  if (out.numel() > 0) {
    if (k == 0) {
      fill(out, 0);
    } else if (gpu) {
      cuda_matmul(a, b, out, batch, m, n, k);
    } else {
      dispatch_numeric(compute, "matmul", [&]<class T>() {
        if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)
          blas_matmul<T>(a, b, out, batch, m, n, k);
        else if constexpr (!is_floating_v<T>)
          integer_matmul<T>(a, b, out, batch, m, n, k);
      });
    }
  }
  if (compute != dtype) out = to_dtype(out, dtype);
  return view(out, result.shape);
}

Tensor mT(const Tensor& t) { return transpose(t, -2, -1); }

// d(a @ b) = g @ b^T for a and a^T @ g for b, on the operands as matrices
// (a 1-D a is a row, a 1-D b a column, and g gets those dims back). The
// engine sums the result over batch dims an operand was broadcast along.
BackwardFn matmul_back(const Tensor& a, const Tensor& b) {
  // Each gradient needs only the other operand.
  SavedTensor sa = b.requires_grad() ? SavedTensor(a) : SavedTensor();
  SavedTensor sb = a.requires_grad() ? SavedTensor(b) : SavedTensor();
  return [sa, sb, a_vec = a.dim() == 1, b_vec = b.dim() == 1, a_batched = a.dim() > 2,
          b_matrix = b.dim() <= 2](const Tensor& g_in, const Needs& need) -> Grads {
    Tensor g = g_in;
    if (b_vec) g = unsqueeze(g, g.dim());
    if (a_vec) g = unsqueeze(g, g.dim() - 1);
    Tensor ga, gb;
    if (need[0]) {
      Tensor b = sb.get();
      if (b_vec) b = unsqueeze(b, 1);
      ga = matmul(g, mT(b));
      if (a_vec) ga = squeeze(ga, -2);
    }
    if (need[1]) {
      Tensor a = sa.get();
      if (a_vec) a = unsqueeze(a, 0);
      if (a_batched && b_matrix) {
        // A batched a times one matrix b (a linear layer): b's gradient sums
        // over the batch, which one tall product does: (k, batch * m) @ (batch * m, n).
        const int64_t rows = numel(Shape(a.shape().begin(), a.shape().end() - 1));
        gb = matmul(mT(reshape(a, {rows, a.size(-1)})), reshape(g, {rows, g.size(-1)}));
      } else {
        gb = matmul(mT(a), g);
      }
      if (b_vec) gb = squeeze(gb, -1);
    }
    return {ga, gb};
  };
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  matmul_meta(type_of(a), type_of(b));
  return autograd_op("matmul", {a, b}, KILN_NO_ATTRS, [&] { return matmul_impl(a, b); },
                     [&](const Tensor&) { return matmul_back(a, b); });
}

void register_matmul_ops() {
  register_op({.name = "matmul",
               .num_inputs = 2,
               .meta = KILN_META(matmul_meta(in[0], in[1])),
               .run = KILN_RUN(matmul(in[0], in[1]))});
}

}  // namespace kiln
