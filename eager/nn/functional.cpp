// dropout, embedding and scaled_dot_product_attention. Attention is
// composed of kiln ops (matmul, softmax, ...), so it is differentiable
// through their rules and a tracer sees the primitives it can fuse.
#include <cmath>
#include <cstring>
#include <limits>

#include "eager/nn/common.h"
#include "eager/nn/functional.h"

namespace kiln::nn::functional {
using namespace detail;

Tensor dropout(const Tensor& x, double p, bool training) {
  KILN_CHECK(p >= 0.0 && p <= 1.0, ValueError, "dropout: probability has to be between 0 and 1, but got {}", p);
  if (!training || p == 0.0) return x;
  check_floating(x, "dropout", "input");
  // One multiplier per element, 0 or 1 / (1 - p): the output is x * scale,
  // so mul's backward rule is dropout's, and a trace records rand_like,
  // where and mul.
  Tensor scale;
  {
    NoGradGuard no_grad;
    if (p == 1.0) {
      scale = zeros_like(x);
    } else {
      Tensor keep = lt(rand_like(x, compute_dtype(x.dtype())), 1.0 - p);
      scale = to_dtype(where(keep, 1.0 / (1.0 - p), 0.0), x.dtype());
    }
  }
  return mul(x, scale);
}

namespace {
TensorType embedding_meta(const TensorType& indices, const TensorType& weight, std::optional<int64_t> padding_idx) {
  check_same_device(weight, indices, "embedding", "indices");
  KILN_CHECK(is_integral(indices.dtype) && indices.dtype != DType::Bool, DTypeError,
             "embedding: expected indices of an integer dtype, got {}", dtype_name(indices.dtype));
  KILN_CHECK(weight.shape.size() == 2, ShapeError,
             "embedding: expected weight of shape (num_embeddings, embedding_dim), got {}", shape_str(weight.shape));
  const int64_t num = weight.shape[0];
  if (padding_idx && !is_dynamic(num)) {
    const int64_t pad = *padding_idx < 0 ? *padding_idx + num : *padding_idx;
    KILN_CHECK(pad >= 0 && pad < num, ValueError, "embedding: padding_idx {} is out of range for {} embeddings",
               *padding_idx, num);
  }
  Shape out = indices.shape;
  out.push_back(weight.shape[1]);
  return {out, weight.dtype, weight.device};
}

// The indices as contiguous int64, each checked against num rows.
Tensor checked_indices(const Tensor& indices, int64_t num) {
  Tensor idx = contiguous(to_dtype(indices.detach(), DType::Int64));
  const int64_t* pi = idx.data<int64_t>();
  for (int64_t i = 0; i < idx.numel(); ++i)
    if (pi[i] < 0 || pi[i] >= num)
      fail<IndexError>("embedding: index {} is out of range for a weight with {} rows (num_embeddings)", pi[i], num);
  return idx;
}
}  // namespace

// d weight: the rows of grad added into the rows the indices picked (none
// into padding_idx); (num, dim) in the compute dtype.
Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_weights,
                          std::optional<int64_t> padding_idx) {
  return trace_or("embedding_backward", {grad, indices}, KILN_ATTRS(num_weights, padding_idx), [&] {
    const Tensor idx = checked_indices(indices, num_weights);
    const int64_t count = idx.numel(), num = num_weights, dim = grad.shape().back();
    const int64_t pad = !padding_idx ? -1 : *padding_idx < 0 ? *padding_idx + num : *padding_idx;
    const DType cd = compute_dtype(grad.dtype());
    const Tensor gc = contiguous(to_dtype(grad, cd));
    Tensor dw = zeros({num, dim}, cd);
    const int64_t* ix = idx.data<int64_t>();
    dispatch_compute(cd, "embedding_backward", [&]<class C>() {
      const C* pg = gc.data<C>();
      C* pd = dw.data<C>();
      // Tasks own column ranges, so repeated indices never race.
      const int64_t cols = std::max<int64_t>(16, 32768 / std::max<int64_t>(1, count));
      parallel_for(0, dim, cols, [&](int64_t cb, int64_t ce) {
        for (int64_t i = 0; i < count; ++i) {
          if (ix[i] == pad) continue;
          C* row = pd + ix[i] * dim;
          const C* gr = pg + i * dim;
          for (int64_t c = cb; c < ce; ++c) row[c] += gr[c];
        }
      });
    });
    return dw;
  });
}

Tensor embedding(const Tensor& indices, const Tensor& weight, std::optional<int64_t> padding_idx) {
  const TensorType type = embedding_meta(type_of(indices), type_of(weight), padding_idx);
  if (!weight.device().is_cpu()) {
    // On a GPU: the rows picked by index_select (whose gradient adds rows
    // back with scatter_add); padding_idx's row is read detached, so it
    // gets no gradient.
    const int64_t num = weight.shape()[0];
    Tensor w = weight;
    if (padding_idx) {
      const int64_t pad = *padding_idx < 0 ? *padding_idx + num : *padding_idx;
      Tensor is_pad = eq(to_device(arange(0, num).reshape({num, 1}), weight.device()), pad);
      w = where(is_pad, weight.detach(), weight);
    }
    return reshape(index_select(w, 0, reshape(indices, {-1})), type.shape);
  }
  return autograd_op_n(
      "embedding", {indices, weight}, KILN_ATTRS(padding_idx),
      [&]() -> std::vector<Tensor> {
        const int64_t num = weight.shape()[0], dim = weight.shape()[1];
        const Tensor idx = checked_indices(indices, num);
        const int64_t* pi = idx.data<int64_t>();
        const int64_t count = idx.numel();
        const Tensor w = contiguous(weight);
        Tensor out = Tensor::empty(type.shape, weight.dtype());
        const size_t row_bytes = static_cast<size_t>(dim) * w.itemsize();
        const char* src = static_cast<const char*>(w.data_ptr());
        char* dst = static_cast<char*>(out.data_ptr());
        parallel_for(0, count, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, dim)), [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) std::memcpy(dst + i * row_bytes, src + pi[i] * row_bytes, row_bytes);
        });
        return {out};
      },
      [&](const std::vector<Tensor>&) {
        const Tensor idx = indices.detach();
        const int64_t num = weight.shape()[0];
        return BackwardFn([=](const Tensor& g, const Needs&) -> Grads {
          return {Tensor(), embedding_backward(g, idx, num, padding_idx)};
        });
      })[0];
}

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& attn_mask,
                                    double dropout_p, bool is_causal, std::optional<double> scale) {
  const char* op = "scaled_dot_product_attention";
  check_floating(q, op, "query");
  check_same_dtype(q, k, op, "key");
  check_same_dtype(q, v, op, "value");
  KILN_CHECK(q.dim() >= 2 && k.dim() >= 2 && v.dim() >= 2, ShapeError,
             "{}: expected query (..., L, E), key (..., S, E) and value (..., S, Ev), got {}, {} and {}", op,
             shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  const int64_t L = q.shape()[q.dim() - 2], E = q.shape().back(), S = k.shape()[k.dim() - 2];
  KILN_CHECK(k.shape().back() == E && v.shape()[v.dim() - 2] == S, ShapeError,
             "{}: expected query (..., L, E), key (..., S, E) and value (..., S, Ev), got {}, {} and {}", op,
             shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  KILN_CHECK(!(is_causal && attn_mask.defined()), ValueError, "{}: pass either attn_mask or is_causal=True, not both",
             op);
  KILN_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, ValueError, "{}: dropout_p has to be between 0 and 1, but got {}",
             op, dropout_p);
  const double sc = scale.value_or(1.0 / std::sqrt(static_cast<double>(E)));
  Tensor scores = mul(matmul(q, transpose(k, -2, -1)), sc);
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  // Masks become additive biases: 0 where attending, -inf elsewhere.
  if (is_causal) {
    const Tensor keep = to_device(ge(unsqueeze(arange(0, L), 1), unsqueeze(arange(0, S), 0)), scores.device());
    scores = add(scores, to_dtype(where(keep, 0.0, kNegInf), scores.dtype()));
  } else if (attn_mask.defined()) {
    check_same_device(scores, attn_mask, op, "attn_mask");
    try {
      broadcast_shapes(attn_mask.shape(), scores.shape(), op);
    } catch (const ShapeError&) {
      fail<ShapeError>("{}: attn_mask of shape {} does not broadcast to the attention scores (..., L, S) = {}", op,
                       shape_str(attn_mask.shape()), shape_str(scores.shape()));
    }
    if (attn_mask.dtype() == DType::Bool) {
      scores = add(scores, to_dtype(where(attn_mask, 0.0, kNegInf), scores.dtype()));
    } else {
      KILN_CHECK(is_floating(attn_mask.dtype()), DTypeError, "{}: expected a bool or floating attn_mask, got {}", op,
                 dtype_name(attn_mask.dtype()));
      scores = add(scores, attn_mask.dtype() == scores.dtype() ? attn_mask : to_dtype(attn_mask, scores.dtype()));
    }
  }
  Tensor attn = softmax(scores, -1);
  if (dropout_p > 0.0) attn = dropout(attn, dropout_p, true);
  return matmul(attn, v);
}

}  // namespace kiln::nn::functional

namespace kiln {
void register_functional_ops() {
  namespace d = nn::functional::detail;
  d::register_linear_ops();
  d::register_loss_ops();
  d::register_conv_ops();
  d::register_pool_ops();
  d::register_norm_ops();
  namespace F = nn::functional;
  register_op({.name = "embedding",
               .num_inputs = 2,
               .operands = "indices, weight",
               .attrs = {{"padding_idx", AttrKind::Int, true}},
               .meta = KILN_META(F::embedding_meta(in[0], in[1], a.get<std::optional<int64_t>>("padding_idx"))),
               .run = KILN_RUN(F::embedding(in[0], in[1], a.get<std::optional<int64_t>>("padding_idx")))});
  register_op({.name = "embedding_backward",
               .num_inputs = 2,
               .operands = "grad, indices",
               .attrs = {{"num_weights", AttrKind::Int}, {"padding_idx", AttrKind::Int, true}},
               .meta = KILN_META({{a.get<int64_t>("num_weights"), in[0].shape.back()},
                                  F::detail::compute_dtype(in[0].dtype), in[0].device}),
               .run = KILN_RUN(F::embedding_backward(in[0], in[1], a.get<int64_t>("num_weights"),
                                                     a.get<std::optional<int64_t>>("padding_idx")))});
}
}  // namespace kiln
