// linear: one GEMM with the bias broadcast into the output first (beta = 1),
// like addmm. It is the hot path of MLP training, so the forward is a single
// BLAS call and the backward two more (plus a column sum for the bias).
#include <cstring>

#include "eager/nn/common.h"
#include "eager/nn/functional.h"

namespace kiln::nn::functional {
namespace {
using namespace detail;

// out (M, N) = x (M, K) @ weight (N, K)^T + bias, float32/float64.
template <class T>
void linear_blas(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int64_t M, int64_t N,
                 int64_t K) {
  Tensor w = weight;
  // weight (N, K) row-major is read transposed; a transposed view of a
  // (K, N) matrix (weight.T of a stored x @ W layer) is read as it is.
  bool trans = true;
  int64_t ldw = 0;
  if ((w.strides()[1] == 1 || K == 1) && w.strides()[0] >= std::max<int64_t>(K, 1)) {
    ldw = w.strides()[0];
  } else if ((w.strides()[0] == 1 || N == 1) && w.strides()[1] >= std::max<int64_t>(N, 1)) {
    trans = false;
    ldw = w.strides()[1];
  } else {
    w = contiguous(w);
    ldw = std::max<int64_t>(K, 1);
  }
  if (N == 1 && trans) ldw = std::max<int64_t>(K, 1);
  T* po = out.data<T>();
  T beta = T(0);
  if (bias.defined()) {
    Tensor b = contiguous(bias);
    const T* pb = b.data<T>();
    for (int64_t i = 0; i < M; ++i) std::memcpy(po + i * N, pb, sizeof(T) * N);
    beta = T(1);
  }
  gemm<T>(false, trans, M, N, K, T(1), x.data<T>(), std::max<int64_t>(K, 1), w.data<T>(), ldw, beta, po, N);
}

Tensor linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const int64_t N = weight.shape()[0], K = weight.shape()[1];
  Shape out_shape = x.shape();
  out_shape.back() = N;
  const int64_t M = numel(Shape(x.shape().begin(), x.shape().end() - 1));
  const DType dtype = x.dtype();
  if (!x.device().is_cpu()) {  // cuBLAS, then the bias added
    Tensor y = matmul(x, transpose(weight, 0, 1));
    return bias.defined() ? add(y, bias) : y;
  }
  if (dtype != DType::Float32 && dtype != DType::Float64) {
    // 16-bit floats go through float32 BLAS; integers through matmul's loop.
    if (is_floating(dtype)) {
      Tensor y = linear_forward(to_dtype(x, DType::Float32), to_dtype(weight, DType::Float32),
                                bias.defined() ? to_dtype(bias, DType::Float32) : Tensor());
      return to_dtype(y, dtype);
    }
    Tensor y = matmul(x, transpose(weight, 0, 1));
    return bias.defined() ? add(y, bias) : y;
  }
  Tensor out = Tensor::empty(out_shape, dtype);
  if (out.numel() == 0) return out;
  Tensor xc = contiguous(x);
  dispatch_compute(dtype, "linear", [&]<class T>() { linear_blas<T>(xc, weight, bias, out, M, N, K); });
  return out;
}

}  // namespace

TensorType linear_meta(const TensorType& x, const TensorType& weight, const TensorType& bias) {
  check_same_device(x, weight, "linear", "weight");
  KILN_CHECK(weight.shape.size() == 2, ShapeError,
             "linear: expected weight of shape (out_features, in_features), got {}", shape_str(weight.shape));
  KILN_CHECK(!x.shape.empty() && same_size(x.shape.back(), weight.shape[1]), ShapeError,
             "linear: expected input of shape (..., {}) (weight {}), got {}", weight.shape[1],
             shape_str(weight.shape), shape_str(x.shape));
  KILN_CHECK(x.dtype != DType::Bool, DTypeError, "linear: not supported for bool tensors");
  check_same_dtype(x, weight, "linear", "weight");
  check_same_dtype(x, bias, "linear", "bias");
  KILN_CHECK(!bias.defined || (bias.shape.size() == 1 && same_size(bias.shape[0], weight.shape[0])), ShapeError,
             "linear: expected bias of shape ({}) (weight {}), got {}", weight.shape[0], shape_str(weight.shape),
             shape_str(bias.shape));
  Shape out = x.shape;
  out.back() = weight.shape[0];
  return {out, x.dtype, x.device};
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  linear_meta(type_of(x), type_of(weight), type_of(bias));
  return autograd_op(
      "linear", {x, weight, bias}, KILN_NO_ATTRS, [&] { return linear_forward(x, weight, bias); },
      [&](const Tensor&) {
        // Each operand is needed only for the other's gradient.
        SavedTensor sx = weight.requires_grad() ? SavedTensor(x) : SavedTensor();
        SavedTensor sw = x.requires_grad() ? SavedTensor(weight) : SavedTensor();
        const int64_t in = weight.shape()[1], out = weight.shape()[0];
        // -1 when a traced batch dim is dynamic.
        const int64_t rows = static_numel(Shape(x.shape().begin(), x.shape().end() - 1));
        const int64_t rows_or_infer = is_dynamic(rows) ? -1 : rows;
        return BackwardFn([=](const Tensor& g, const Needs& need) -> Grads {
          Grads grads(3);
          const Tensor g2 = reshape(g, {rows_or_infer, out});
          if (need[0]) grads[0] = matmul(g, sw.get());
          if (need[1]) grads[1] = matmul(transpose(g2, 0, 1), reshape(sx.get(), {rows_or_infer, in}));
          if (need[2]) grads[2] = sum(g2, {0});
          return grads;
        });
      });
}

void detail::register_linear_ops() {
  register_op({.name = "linear",
               .num_inputs = 3,
               .operands = "x, weight, bias?",
               .meta = KILN_META(linear_meta(in[0], in[1], in[2])),
               .run = KILN_RUN(linear(in[0], in[1], in[2]))});
}

}  // namespace kiln::nn::functional
