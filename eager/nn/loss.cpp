// Losses. cross_entropy is one fused kernel (log-softmax, the target pick
// and label smoothing per row, and the matching backward) instead of a
// log_softmax tensor plus nll_loss: the (N, C) path of every classifier's
// training step. Inputs with extra dims (N, C, d...) are moved to rows of C
// first. nll_loss reads one element per row and runs in place on (N, C, S).
#include <cmath>
#include <limits>
#include <vector>

#include "eager/nn/common.h"
#include "eager/nn/functional.h"
#include "eager/scalar_math.h"

namespace kiln::nn::functional {
namespace {
using namespace detail;

template <class C>
using acc_t = std::conditional_t<std::is_same_v<C, float>, double, C>;

// The class-index target as contiguous int64 (N * S values), with its shape
// checked against the input's (N, C, d...) or (C).
Tensor class_target(const Tensor& input, const Tensor& target, const char* op) {
  check_same_device(input, target, op, "target");
  KILN_CHECK(is_integral(target.dtype()) && target.dtype() != DType::Bool, DTypeError,
             "{}: expected a target of class indices with an integer dtype, got {} (for class probabilities, pass "
             "a floating target shaped like the input)",
             op, dtype_name(target.dtype()));
  Shape expected;
  if (input.dim() >= 2) {
    expected = input.shape();
    expected.erase(expected.begin() + 1);
  }
  KILN_CHECK(target.shape() == expected, ShapeError,
             "{}: expected a target of shape {} for an input of shape {} (N, C{}), got {}", op, shape_str(expected),
             shape_str(input.shape()), input.dim() > 2 ? ", d..." : "", shape_str(target.shape()));
  return contiguous(to_dtype(target.detach(), DType::Int64));
}

// Validates every index against C (ignore_index excepted).
void check_class_range(const Tensor& t, int64_t C, int64_t ignore_index, const char* op) {
  const int64_t* p = t.data<int64_t>();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (p[i] != ignore_index && (p[i] < 0 || p[i] >= C))
      fail<IndexError>("{}: target {} is out of bounds for {} classes (valid: 0 to {}, or ignore_index {})", op, p[i],
                       C, C - 1, ignore_index);
}

Tensor class_weight(const Tensor& weight, int64_t C, const Tensor& input, const char* op) {
  if (!weight.defined()) return weight;
  check_floating(weight, op, "weight");
  KILN_CHECK(weight.dim() == 1 && weight.shape()[0] == C, ShapeError,
             "{}: expected a weight of shape ({}) (one per class of input {}), got {}", op, C, shape_str(input.shape()),
             shape_str(weight.shape()));
  return contiguous(to_dtype(weight.detach(), compute_dtype(input.dtype())));
}

// input (N, C, d...) -> (N, S, C) contiguous rows of C, as compute dtype.
struct Rows {
  Tensor x;  // (R, C)
  int64_t N, C, S;
};

Rows to_rows(const Tensor& input) {
  Rows r;
  const DType cd = compute_dtype(input.dtype());
  Tensor x = to_dtype(input.detach(), cd);
  if (input.dim() == 1) {
    r.N = 1, r.C = input.shape()[0], r.S = 1;
    r.x = contiguous(x);
    return r;
  }
  r.N = input.shape()[0];
  r.C = input.shape()[1];
  r.S = numel(Shape(input.shape().begin() + 2, input.shape().end()));
  if (r.S == 1) {
    r.x = contiguous(reshape(x, {r.N, r.C}));
  } else {
    r.x = contiguous(permute(reshape(x, {r.N, r.C, r.S}), {0, 2, 1}));
  }
  return r;
}

// The inverse of to_rows for a gradient (R, C).
Tensor from_rows(const Tensor& g, const Rows& r, const Shape& shape) {
  if (r.S == 1) return reshape(g, shape);
  return reshape(contiguous(permute(reshape(g, {r.N, r.S, r.C}), {0, 2, 1})), shape);
}

template <class C>
C row_max(const C* p, int64_t n) {
  constexpr int L = 16;
  C acc[L];
  std::fill(acc, acc + L, -std::numeric_limits<C>::infinity());
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] = p[i + j] > acc[j] ? p[i + j] : acc[j];
  for (; i < n; ++i) acc[0] = p[i] > acc[0] ? p[i] : acc[0];
  C m = acc[0];
  for (int j = 1; j < L; ++j) m = acc[j] > m ? acc[j] : m;
  return m;
}

// sum f(i) over [0, n) in 16 lanes of A, so it vectorizes.
template <class A, class F>
A row_sum(int64_t n, F&& f) {
  constexpr int L = 16;
  A acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += A(f(i + j));
  for (; i < n; ++i) acc[0] += A(f(i));
  for (int w = L / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}

// log(sum(exp(x))) of a row; +inf/-inf/NaN propagate like log_softmax's.
template <class C>
C row_lse(const C* p, int64_t n) {
  const C m = row_max(p, n);
  if (std::isinf(m)) return m;
  return m + C(std::log(row_sum<acc_t<C>>(n, [&](int64_t i) { return kexp(p[i] - m); })));
}

// ---- cross entropy with class indices ----


template <class C>
void ce_index_forward(const C* x, int64_t R, int64_t Cn, const int64_t* t, const C* w, int64_t ignore, double eps,
                      C* lse, C* loss_rows, double* wsum_out) {
  std::vector<double> wt(R);
  parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, Cn)), [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const C* p = x + r * Cn;
      const C l = row_lse(p, Cn);
      lse[r] = l;
      if (t[r] == ignore) {
        loss_rows[r] = C(0);
        wt[r] = 0;
        continue;
      }
      const double wr = w ? double(w[t[r]]) : 1.0;
      double loss = (1.0 - eps) * wr * (double(l) - double(p[t[r]]));
      if (eps > 0) {
        // sum_c w_c * (lse - x_c)
        const double s = w ? row_sum<acc_t<C>>(Cn, [&](int64_t c) { return w[c] * (l - p[c]); })
                           : row_sum<acc_t<C>>(Cn, [&](int64_t c) { return l - p[c]; });
        loss += eps / double(Cn) * s;
      }
      loss_rows[r] = C(loss);
      wt[r] = wr;
    }
  });
  double s = 0;
  for (int64_t r = 0; r < R; ++r) s += wt[r];
  *wsum_out = s;
}

// d loss_r / d x_c = scale_r * (p_c * ((1-eps) w_t + eps/C * sum(w)) - (1-eps) w_t [c == t] - eps/C w_c).
template <class C>
void ce_index_backward(const C* x, int64_t R, int64_t Cn, const int64_t* t, const C* w, int64_t ignore, double eps,
                       const C* lse, const C* scale, bool scale_per_row, C* dx) {
  double wall = double(Cn);
  if (w) {
    wall = 0;
    for (int64_t c = 0; c < Cn; ++c) wall += double(w[c]);
  }
  parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, Cn)), [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const C* p = x + r * Cn;
      C* d = dx + r * Cn;
      if (t[r] == ignore) {
        std::fill(d, d + Cn, C(0));
        continue;
      }
      const C s = scale_per_row ? scale[r] : scale[0];
      const double wt = w ? double(w[t[r]]) : 1.0;
      const C a = C(((1.0 - eps) * wt + eps / double(Cn) * wall)) * s;
      const C l = lse[r];
      for (int64_t c = 0; c < Cn; ++c) d[c] = kexp(p[c] - l) * a;
      if (eps > 0) {
        const C e = C(eps / double(Cn)) * s;
        if (w)
          for (int64_t c = 0; c < Cn; ++c) d[c] -= e * w[c];
        else
          for (int64_t c = 0; c < Cn; ++c) d[c] -= e;
      }
      d[t[r]] -= C((1.0 - eps) * wt) * s;
    }
  });
}

// The per-row losses (R) of class-index targets, with the log-sum-exp of
// each row and the summed weight of the counted rows (mean's divisor).
struct CEIndexRows {
  Rows rows;
  Tensor t, w, lse, loss_rows;
  double denom = 0;
};

CEIndexRows ce_index_rows(const Tensor& input, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                          double eps) {
  const char* op = "cross_entropy";
  CEIndexRows c;
  c.t = class_target(input, target, op);
  const int64_t Cn = input.dim() == 1 ? input.shape()[0] : input.shape()[1];
  check_class_range(c.t, Cn, ignore_index, op);
  c.w = class_weight(weight, Cn, input, op);
  const DType cd = compute_dtype(input.dtype());
  c.rows = to_rows(input);
  const int64_t R = c.rows.N * c.rows.S;
  c.lse = Tensor::empty({R}, cd);
  c.loss_rows = Tensor::empty({R}, cd);
  dispatch_compute(cd, op, [&]<class C>() {
    ce_index_forward<C>(c.rows.x.data<C>(), R, Cn, c.t.data<int64_t>(), c.w.defined() ? c.w.data<C>() : nullptr,
                        ignore_index, eps, c.lse.data<C>(), c.loss_rows.data<C>(), &c.denom);
  });
  return c;
}

// Class probabilities: rows of log-probabilities (R, C) and the per-row losses.
// loss_r = sum_c w_c t'_c (lse - x_c), t' = t (1 - eps) + eps / C.
struct CEProbRows {
  Rows rows, trow;
  Tensor w, logp, loss_rows;
};

CEProbRows ce_prob_rows(const Tensor& input, const Tensor& target, const Tensor& weight, double eps) {
  const char* op = "cross_entropy";
  const int64_t Cn = input.dim() == 1 ? input.shape()[0] : input.shape()[1];
  CEProbRows c;
  c.w = class_weight(weight, Cn, input, op);
  const DType cd = compute_dtype(promote_types(input.dtype(), target.dtype()));
  c.rows = to_rows(to_dtype(input, cd));
  c.trow = to_rows(to_dtype(target, cd));
  const int64_t R = c.rows.N * c.rows.S;
  c.logp = Tensor::empty({R, Cn}, cd);
  c.loss_rows = Tensor::empty({R}, cd);
  dispatch_compute(cd, op, [&]<class C>() {
    const C* x = c.rows.x.data<C>();
    const C* tp = c.trow.x.data<C>();
    const C* pw = c.w.defined() ? c.w.data<C>() : nullptr;
    C* lp = c.logp.data<C>();
    C* lr = c.loss_rows.data<C>();
    parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, Cn)), [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r) {
        const C l = row_lse(x + r * Cn, Cn);
        for (int64_t c = 0; c < Cn; ++c) lp[r * Cn + c] = x[r * Cn + c] - l;
        lr[r] = C(row_sum<acc_t<C>>(Cn, [&](int64_t c) {
          const C tc = tp[r * Cn + c] * C(1 - eps) + C(eps / double(Cn));
          return -(pw ? pw[c] : C(1)) * tc * lp[r * Cn + c];
        }));
      }
    });
  });
  return c;
}

// The reduced loss from per-row losses, as the input's dtype.
Tensor reduce_rows(const Tensor& loss_rows, Reduction red, double denom, const Shape& rshape, DType out_dtype) {
  Tensor out;
  if (red == Reduction::None) {
    out = reshape(loss_rows, rshape);
  } else {
    out = sum(loss_rows, {}, false, DType::Float64);
    if (red == Reduction::Mean) out = div(out, denom);
    out = to_dtype(out, loss_rows.dtype());
  }
  return to_dtype(out, out_dtype);
}

// The gradient's scale per row (none) or for all rows, contiguous, in the compute dtype.
Tensor row_scale(const Tensor& g, Reduction red, double denom, int64_t R, DType cd) {
  if (red == Reduction::None) return contiguous(to_dtype(reshape(g, {R}), cd));
  Tensor scale = to_dtype(reshape(g, {1}), cd);
  if (red == Reduction::Mean) scale = div(scale, denom);
  return contiguous(scale);
}

TensorType cross_entropy_meta(const TensorType& input, const TensorType& target, const TensorType& weight,
                              int64_t ignore_index, const std::string& reduction, double label_smoothing) {
  const char* op = "cross_entropy";
  const Reduction red = parse_reduction(reduction, op);
  check_floating(input, op, "input");
  check_same_device(input, target, op, "target");
  KILN_CHECK(!input.shape.empty(), ShapeError,
             "cross_entropy: expected an input of shape (N, C), (N, C, d...) or (C), got {}", shape_str(input.shape));
  KILN_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, ValueError,
             "cross_entropy: label_smoothing must be between 0.0 and 1.0, got {}", label_smoothing);
  Shape rshape;
  if (input.shape.size() >= 2) {
    rshape = input.shape;
    rshape.erase(rshape.begin() + 1);
  }
  const int64_t Cn = input.shape.size() == 1 ? input.shape[0] : input.shape[1];
  auto same_shape = [](const Shape& a, const Shape& b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), same_size);
  };
  DType dtype = input.dtype;
  if (is_floating(target.dtype)) {
    KILN_CHECK(ignore_index == -100, ValueError,
               "cross_entropy: ignore_index ({}) is not supported for a target of class probabilities", ignore_index);
    KILN_CHECK(same_shape(target.shape, input.shape), ShapeError,
               "cross_entropy: expected a target of class probabilities shaped like the input {}, got {}",
               shape_str(input.shape), shape_str(target.shape));
    dtype = promote_types(input.dtype, target.dtype);
  } else {
    KILN_CHECK(is_integral(target.dtype) && target.dtype != DType::Bool, DTypeError,
               "{}: expected a target of class indices with an integer dtype, got {} (for class probabilities, pass "
               "a floating target shaped like the input)",
               op, dtype_name(target.dtype));
    KILN_CHECK(same_shape(target.shape, rshape), ShapeError,
               "{}: expected a target of shape {} for an input of shape {} (N, C{}), got {}", op, shape_str(rshape),
               shape_str(input.shape), input.shape.size() > 2 ? ", d..." : "", shape_str(target.shape));
  }
  if (weight.defined) {
    check_floating(weight, op, "weight");
    KILN_CHECK(weight.shape.size() == 1 && same_size(weight.shape[0], Cn), ShapeError,
               "{}: expected a weight of shape ({}) (one per class of input {}), got {}", op, Cn,
               shape_str(input.shape), shape_str(weight.shape));
  }
  return {red == Reduction::None ? rshape : Shape{}, dtype, input.device};
}

}  // namespace

std::vector<Tensor> cross_entropy_backward(const Tensor& grad, const Tensor& input, const Tensor& target,
                                           const Tensor& weight, int64_t ignore_index, const std::string& reduction,
                                           double label_smoothing, bool need_target) {
  const char* op = "cross_entropy_backward";
  auto compute = [&]() -> std::vector<Tensor> {
    const Reduction red = parse_reduction(reduction, op);
    const double eps = label_smoothing;
    if (!is_floating(target.dtype())) {
      CEIndexRows c = ce_index_rows(input, target, weight, ignore_index, eps);
      const int64_t R = c.rows.N * c.rows.S;
      const DType cd = c.lse.dtype();
      Tensor scale = row_scale(grad, red, c.denom, R, cd);
      Tensor dx = Tensor::empty({R, c.rows.C}, cd);
      dispatch_compute(cd, op, [&]<class C>() {
        ce_index_backward<C>(c.rows.x.data<C>(), R, c.rows.C, c.t.data<int64_t>(),
                             c.w.defined() ? c.w.data<C>() : nullptr, ignore_index, eps, c.lse.data<C>(),
                             scale.data<C>(), red == Reduction::None, dx.data<C>());
      });
      return {from_rows(dx, c.rows, input.shape())};
    }
    CEProbRows c = ce_prob_rows(input, target, weight, eps);
    const int64_t R = c.rows.N * c.rows.S, Cn = c.rows.C;
    const DType cd = c.logp.dtype();
    Tensor scale = row_scale(grad, red, double(R), R, cd);
    Tensor dx = Tensor::empty({R, Cn}, cd);
    Tensor dt = need_target ? Tensor::empty({R, Cn}, cd) : Tensor();
    dispatch_compute(cd, op, [&]<class C>() {
      const C* lp = c.logp.data<C>();
      const C* tp = c.trow.x.data<C>();
      const C* pw = c.w.defined() ? c.w.data<C>() : nullptr;
      const C* ps = scale.data<C>();
      C* pdx = dx.data<C>();
      C* pdt = dt.defined() ? dt.data<C>() : nullptr;
      parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, Cn)), [&](int64_t rb, int64_t re) {
        for (int64_t r = rb; r < re; ++r) {
          const C s = red == Reduction::None ? ps[r] : ps[0];
          const C* l = lp + r * Cn;
          const C* t = tp + r * Cn;
          auto wt = [&](int64_t c) { return (pw ? pw[c] : C(1)) * (t[c] * C(1 - eps) + C(eps / double(Cn))); };
          const C total = C(row_sum<acc_t<C>>(Cn, wt));
          for (int64_t c = 0; c < Cn; ++c) pdx[r * Cn + c] = s * (kexp(l[c]) * total - wt(c));
          if (pdt)
            for (int64_t c = 0; c < Cn; ++c) pdt[r * Cn + c] = -s * C(1 - eps) * (pw ? pw[c] : C(1)) * l[c];
        }
      });
    });
    std::vector<Tensor> out = {from_rows(dx, c.trow, input.shape())};
    if (need_target) out.push_back(from_rows(dt, c.trow, target.shape()));
    return out;
  };
  if (TraceHook* trace = active_trace())
    return trace->record(op_def(op), {grad, input, target, weight},
                         make_attrs("ignore_index, reduction, label_smoothing, need_target", ignore_index, reduction,
                                    label_smoothing, need_target));
  return compute();
}

namespace {
}  // namespace

// ---- public ----

namespace {
TensorType mse_loss_meta(const TensorType& input, const TensorType& target, const std::string& reduction) {
  const Reduction red = parse_reduction(reduction, "mse_loss");
  check_floating(input, "mse_loss", "input");
  check_floating(target, "mse_loss", "target");
  Shape shape = broadcast_shapes(input.shape, target.shape, "mse_loss");
  return {red == Reduction::None ? shape : Shape{}, promote_types(input.dtype, target.dtype), input.device};
}
}  // namespace

Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction) {
  const Reduction red = parse_reduction(reduction, "mse_loss");
  mse_loss_meta(type_of(input), type_of(target), reduction);
  return autograd_op(
      "mse_loss", {input, target}, KILN_ATTRS(reduction),
      [&] {
        Tensor diff = sub(input, target);
        return reduce_loss(mul(diff, diff), red);
      },
      [&](const Tensor&) {
        SavedTensor si(input), st(target);
        const Shape full = broadcast_shapes(input.shape(), target.shape(), "mse_loss");
        return BackwardFn([=](const Tensor& g, const Needs& need) -> Grads {
          // A dynamic (traced) size: mean divides by the element count at run time.
          const Tensor diff = sub(si.get(), st.get());
          Tensor scale = red == Reduction::Mean && has_dynamic_dims(full) ? div(g, sum(ones_like(diff)))
                                                                            : loss_grad_scale(g, red, numel(full));
          Tensor gi = mul(diff, mul(scale, 2.0));
          return {need[0] ? gi : Tensor(), need[1] ? neg(gi) : Tensor()};
        });
      });
}

namespace {
TensorType nll_loss_meta(const TensorType& input, const TensorType& target, const TensorType& weight,
                         const std::string& reduction) {
  const char* op = "nll_loss";
  const Reduction red = parse_reduction(reduction, op);
  check_floating(input, op, "input");
  KILN_CHECK(!input.shape.empty(), ShapeError,
             "nll_loss: expected an input of shape (N, C), (N, C, d...) or (C), got {}", shape_str(input.shape));
  check_same_device(input, target, op, "target");
  KILN_CHECK(is_integral(target.dtype) && target.dtype != DType::Bool, DTypeError,
             "{}: expected a target of class indices with an integer dtype, got {} (for class probabilities, pass "
             "a floating target shaped like the input)",
             op, dtype_name(target.dtype));
  Shape rshape;
  if (input.shape.size() >= 2) {
    rshape = input.shape;
    rshape.erase(rshape.begin() + 1);
  }
  KILN_CHECK(target.shape.size() == rshape.size() &&
                 std::equal(rshape.begin(), rshape.end(), target.shape.begin(), same_size),
             ShapeError, "{}: expected a target of shape {} for an input of shape {} (N, C{}), got {}", op,
             shape_str(rshape), shape_str(input.shape), input.shape.size() > 2 ? ", d..." : "",
             shape_str(target.shape));
  const int64_t Cn = input.shape.size() == 1 ? input.shape[0] : input.shape[1];
  if (weight.defined) {
    check_floating(weight, op, "weight");
    KILN_CHECK(weight.shape.size() == 1 && same_size(weight.shape[0], Cn), ShapeError,
               "{}: expected a weight of shape ({}) (one per class of input {}), got {}", op, Cn,
               shape_str(input.shape), shape_str(weight.shape));
  }
  return {red == Reduction::None ? rshape : Shape{}, input.dtype, input.device};
}

// The geometry, targets and weights of nll_loss on concrete tensors, and the
// summed weight of the counted elements (mean's divisor).
struct NLL {
  int64_t N, Cn, S;
  Tensor t, w;
  double denom = 0;
  NLL(const Tensor& input, const Tensor& target, const Tensor& weight, int64_t ignore_index) {
    const char* op = "nll_loss";
    t = class_target(input, target, op);
    N = input.dim() == 1 ? 1 : input.shape()[0];
    Cn = input.dim() == 1 ? input.shape()[0] : input.shape()[1];
    S = input.dim() <= 2 ? 1 : numel(Shape(input.shape().begin() + 2, input.shape().end()));
    check_class_range(t, Cn, ignore_index, op);
    w = class_weight(weight, Cn, input, op);
    const int64_t* pt = t.data<int64_t>();
    dispatch_compute(compute_dtype(input.dtype()), op, [&]<class C>() {
      const C* pw = w.defined() ? w.data<C>() : nullptr;
      for (int64_t i = 0; i < N * S; ++i)
        if (pt[i] != ignore_index) denom += double(pw ? pw[pt[i]] : C(1));
    });
  }
};
}  // namespace

// On a GPU, the class-index losses are composed of GPU ops (log_softmax,
// gather, where, sum), so autograd differentiates them as it does any op:
// loss = (1 - eps) * nll + eps * smooth over the targets != ignore_index,
// where nll = -w[t] * logp[t] and smooth = -sum_c(w[c] * logp[c]) / C, and
// mean divides by the summed weights of those targets (PyTorch's rules).
Tensor class_loss_composite(const Tensor& logp, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                            Reduction red, double eps) {
  const int64_t class_dim = logp.dim() == 1 ? 0 : 1;
  const int64_t C = logp.shape()[class_dim];
  const Tensor valid = ne(target, ignore_index);
  const Tensor t = where(valid, target, Scalar(int64_t{0}));
  Tensor loss = neg(squeeze(gather(logp, class_dim, unsqueeze(t, class_dim)), class_dim));
  Tensor wt = weight.defined() ? reshape(index_select(weight, 0, reshape(t, {-1})), t.shape()) : Tensor();
  if (wt.defined()) loss = mul(loss, wt);
  if (eps > 0) {
    Shape wshape(logp.dim(), 1);
    wshape[class_dim] = C;
    Tensor weighted = weight.defined() ? mul(logp, reshape(weight, wshape)) : logp;
    Tensor smooth = div(neg(sum(weighted, {class_dim})), static_cast<double>(C));
    loss = add(mul(loss, 1 - eps), mul(smooth, eps));
  }
  loss = where(valid, loss, Scalar(0.0));
  if (red == Reduction::None) return loss;
  Tensor total = sum(loss);
  if (red == Reduction::Sum) return total;
  return div(total, wt.defined() ? sum(where(valid, wt, Scalar(0.0))) : sum(valid).to(logp.dtype()));
}

Tensor nll_loss_backward(const Tensor& grad, const Tensor& input, const Tensor& target, const Tensor& weight,
                         int64_t ignore_index, const std::string& reduction) {
  const char* op = "nll_loss_backward";
  return trace_or(op, {grad, input, target, weight}, KILN_ATTRS(ignore_index, reduction), [&] {
    const Reduction red = parse_reduction(reduction, op);
    NLL n(input, target, weight, ignore_index);
    const DType cd = compute_dtype(input.dtype());
    Tensor scale = contiguous(to_dtype(red == Reduction::None ? reshape(grad, {n.N * n.S}) : reshape(grad, {1}), cd));
    if (red == Reduction::Mean) scale = div(scale, n.denom);
    Tensor dx = zeros(input.shape(), cd);
    dispatch_compute(cd, op, [&]<class C>() {
      const C* ps = scale.data<C>();
      const int64_t* pt = n.t.data<int64_t>();
      const C* pw = n.w.defined() ? n.w.data<C>() : nullptr;
      C* pd = dx.data<C>();
      for (int64_t i = 0; i < n.N; ++i)
        for (int64_t s = 0; s < n.S; ++s) {
          const int64_t k = pt[i * n.S + s];
          if (k == ignore_index) continue;
          const C sc = red == Reduction::None ? ps[i * n.S + s] : ps[0];
          pd[(i * n.Cn + k) * n.S + s] = -(pw ? pw[k] : C(1)) * sc;
        }
    });
    return dx;
  });
}

Tensor nll_loss(const Tensor& input, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                const std::string& reduction) {
  const char* op = "nll_loss";
  const TensorType type = nll_loss_meta(type_of(input), type_of(target), type_of(weight), reduction);
  const Reduction red = parse_reduction(reduction, op);
  if (!input.device().is_cpu()) return class_loss_composite(input, target, weight, ignore_index, red, 0.0);
  return autograd_op_n(
      op, {input, target, weight}, KILN_ATTRS(ignore_index, reduction),
      [&]() -> std::vector<Tensor> {
        NLL n(input, target, weight, ignore_index);
        const DType cd = compute_dtype(input.dtype());
        Tensor x = contiguous(to_dtype(input.detach(), cd));
        Tensor loss = Tensor::empty({n.N * n.S}, cd);
        dispatch_compute(cd, op, [&]<class C>() {
          const C* px = x.data<C>();
          const int64_t* pt = n.t.data<int64_t>();
          const C* pw = n.w.defined() ? n.w.data<C>() : nullptr;
          C* pl = loss.data<C>();
          for (int64_t i = 0; i < n.N; ++i)
            for (int64_t s = 0; s < n.S; ++s) {
              const int64_t k = pt[i * n.S + s];
              pl[i * n.S + s] = k == ignore_index ? C(0) : -(pw ? pw[k] : C(1)) * px[(i * n.Cn + k) * n.S + s];
            }
        });
        Tensor out;
        if (red == Reduction::None) {
          out = reshape(loss, type.shape);
        } else {
          out = sum(loss, {}, false, DType::Float64);
          if (red == Reduction::Mean) out = div(out, n.denom);
        }
        return {to_dtype(out, input.dtype())};
      },
      [&](const std::vector<Tensor>&) {
        SavedTensor sx(input), st(target);
        const Tensor w = weight.defined() ? weight.detach() : Tensor();
        return BackwardFn([=](const Tensor& g, const Needs&) -> Grads {
          return {nll_loss_backward(g, sx.get(), st.get(), w, ignore_index, reduction), Tensor(), Tensor()};
        });
      })[0];
}

Tensor cross_entropy(const Tensor& input, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                     const std::string& reduction, double label_smoothing) {
  const TensorType type =
      cross_entropy_meta(type_of(input), type_of(target), type_of(weight), ignore_index, reduction, label_smoothing);
  const Reduction red = parse_reduction(reduction, "cross_entropy");
  const bool probs = is_floating(target.dtype());
  if (!input.device().is_cpu()) {
    const int64_t class_dim = input.dim() == 1 ? 0 : 1;
    const Tensor logp = log_softmax(input, class_dim);
    if (!probs) return class_loss_composite(logp, target, weight, ignore_index, red, label_smoothing);
    // Class probabilities: -sum_c(w[c] * t[c] * logp[c]), t smoothed toward
    // uniform; mean divides by the number of rows, as on the CPU.
    const int64_t C = input.shape()[class_dim];
    Tensor t = label_smoothing > 0 ? add(mul(target, 1 - label_smoothing), label_smoothing / C) : target;
    Shape wshape(input.dim(), 1);
    wshape[class_dim] = C;
    Tensor weighted = weight.defined() ? mul(logp, reshape(weight, wshape)) : logp;
    Tensor loss = neg(sum(mul(t, weighted), {class_dim}));
    if (red == Reduction::None) return loss;
    return red == Reduction::Sum ? sum(loss) : mean(loss);
  }
  // The gradient flows to the input (and to a target of probabilities).
  return autograd_op_n(
      "cross_entropy", {input, target, weight}, KILN_ATTRS(ignore_index, reduction, label_smoothing),
      [&]() -> std::vector<Tensor> {
        Shape rshape = type.shape;
        if (probs) {
          CEProbRows c = ce_prob_rows(input, target, weight, label_smoothing);
          return {reduce_rows(c.loss_rows, red, double(c.rows.N * c.rows.S), rshape, type.dtype)};
        }
        CEIndexRows c = ce_index_rows(input, target, weight, ignore_index, label_smoothing);
        return {reduce_rows(c.loss_rows, red, c.denom, rshape, type.dtype)};
      },
      [&](const std::vector<Tensor>&) {
        SavedTensor sx(input), st(target);
        const Tensor w = weight.defined() ? weight.detach() : Tensor();
        return BackwardFn([=](const Tensor& g, const Needs& need) -> Grads {
          std::vector<Tensor> d = cross_entropy_backward(g, sx.get(), st.get(), w, ignore_index, reduction,
                                                         label_smoothing, need[1]);
          return {need[0] ? d[0] : Tensor(), need[1] ? d[1] : Tensor(), Tensor()};
        });
      })[0];
}

namespace {
TensorType bce_meta(const TensorType& input, const TensorType& target, const TensorType& weight,
                    const TensorType& pos_weight, const std::string& reduction) {
  const char* op = "binary_cross_entropy_with_logits";
  const Reduction red = parse_reduction(reduction, op);
  check_floating(input, op, "input");
  check_floating(target, op, "target");
  KILN_CHECK(target.shape.size() == input.shape.size() &&
                 std::equal(input.shape.begin(), input.shape.end(), target.shape.begin(), same_size),
             ShapeError, "{}: expected a target shaped like the input {}, got {}", op, shape_str(input.shape),
             shape_str(target.shape));
  Shape shape = input.shape;
  DType dtype = promote_types(input.dtype, target.dtype);
  for (const auto& [p, what] : {std::pair{&weight, "weight"}, std::pair{&pos_weight, "pos_weight"}}) {
    if (!p->defined) continue;
    check_floating(*p, op, what);
    shape = broadcast_shapes(p->shape, shape, op);
    dtype = promote_types(dtype, p->dtype);
  }
  return {red == Reduction::None ? shape : Shape{}, dtype, input.device};
}
}  // namespace

Tensor binary_cross_entropy_with_logits(const Tensor& input, const Tensor& target, const Tensor& weight,
                                        const Tensor& pos_weight, const std::string& reduction) {
  const char* op = "binary_cross_entropy_with_logits";
  const Reduction red = parse_reduction(reduction, op);
  bce_meta(type_of(input), type_of(target), type_of(weight), type_of(pos_weight), reduction);
  const Tensor w = weight.defined() ? weight.detach() : Tensor();
  const Tensor pw = pos_weight.defined() ? pos_weight.detach() : Tensor();
  // softplus(-x) = log(1 + exp(-x)), written so that exp never overflows.
  auto softplus_neg = [](const Tensor& x) { return add(log1p(exp(neg(abs(x)))), relu(neg(x))); };
  return autograd_op_n(
      op, {input, target, weight, pos_weight}, KILN_ATTRS(reduction),
      [&]() -> std::vector<Tensor> {
        const Tensor& x = input;
        const Tensor sp = softplus_neg(x);
        // (1 - t) x + lw * softplus(-x), lw = 1 + (pw - 1) t
        Tensor loss = mul(sub(1.0, target), x);
        loss = pw.defined() ? add(loss, mul(add(mul(sub(pw, 1.0), target), 1.0), sp)) : add(loss, sp);
        if (w.defined()) loss = mul(loss, w);
        return {reduce_loss(loss, red)};
      },
      [&](const std::vector<Tensor>& out) {
        SavedTensor sx(input), st(target);
        const int64_t n = input.numel();
        (void)out;
        return BackwardFn([=](const Tensor& g, const Needs& need) -> Grads {
          const Tensor& x = sx.get();
          const Tensor& t = st.get();
          Tensor scale = loss_grad_scale(g, red, n);
          if (w.defined()) scale = mul(scale, w);
          Grads grads(4);
          if (need[0]) {
            // lw * sigmoid(x) - pw * t
            Tensor gx = pw.defined() ? sub(mul(add(mul(sub(pw, 1.0), t), 1.0), sigmoid(x)), mul(pw, t))
                                     : sub(sigmoid(x), t);
            grads[0] = mul(gx, scale);
          }
          if (need[1]) {
            // (pw - 1) softplus(-x) - x
            Tensor gt = pw.defined() ? sub(mul(sub(pw, 1.0), softplus_neg(x)), x) : neg(x);
            grads[1] = mul(gt, scale);
          }
          return grads;
        });
      })[0];
}

void detail::register_loss_ops() {
  register_op({.name = "mse_loss",
               .num_inputs = 2,
               .operands = "input, target",
               .attrs = {{"reduction", AttrKind::String}},
               .meta = KILN_META(mse_loss_meta(in[0], in[1], a.get<std::string>("reduction"))),
               .run = KILN_RUN(mse_loss(in[0], in[1], a.get<std::string>("reduction")))});
  register_op({.name = "cross_entropy",
               .num_inputs = 3,
               .operands = "input, target, weight?",
               .attrs = {{"ignore_index", AttrKind::Int}, {"reduction", AttrKind::String},
                         {"label_smoothing", AttrKind::Float}},
               .meta = KILN_META(cross_entropy_meta(in[0], in[1], in[2], a.get<int64_t>("ignore_index"),
                                                    a.get<std::string>("reduction"), a.get<double>("label_smoothing"))),
               .run = KILN_RUN(cross_entropy(in[0], in[1], in[2], a.get<int64_t>("ignore_index"),
                                             a.get<std::string>("reduction"), a.get<double>("label_smoothing")))});
  register_op({.name = "cross_entropy_backward",
               .num_inputs = 4,
               .num_outputs = -1,
               .operands = "grad, input, target, weight?",
               .attrs = {{"ignore_index", AttrKind::Int}, {"reduction", AttrKind::String},
                         {"label_smoothing", AttrKind::Float}, {"need_target", AttrKind::Bool}},
               .meta = [](const std::vector<TensorType>& in, const Attrs& a) -> std::vector<TensorType> {
                 std::vector<TensorType> out = {in[1]};
                 out[0].dtype = compute_dtype(is_floating(in[2].dtype) ? promote_types(in[1].dtype, in[2].dtype)
                                                                        : in[1].dtype);
                 if (a.get<bool>("need_target")) out.push_back({in[2].shape, out[0].dtype, in[2].device});
                 return out;
               },
               .run = KILN_RUN(cross_entropy_backward(in[0], in[1], in[2], in[3], a.get<int64_t>("ignore_index"),
                                                      a.get<std::string>("reduction"),
                                                      a.get<double>("label_smoothing"), a.get<bool>("need_target")))});
  register_op({.name = "nll_loss",
               .num_inputs = 3,
               .operands = "input, target, weight?",
               .attrs = {{"ignore_index", AttrKind::Int}, {"reduction", AttrKind::String}},
               .meta = KILN_META(nll_loss_meta(in[0], in[1], in[2], a.get<std::string>("reduction"))),
               .run = KILN_RUN(nll_loss(in[0], in[1], in[2], a.get<int64_t>("ignore_index"),
                                        a.get<std::string>("reduction")))});
  register_op({.name = "nll_loss_backward",
               .num_inputs = 4,
               .operands = "grad, input, target, weight?",
               .attrs = {{"ignore_index", AttrKind::Int}, {"reduction", AttrKind::String}},
               .meta = KILN_META({in[1].shape, compute_dtype(in[1].dtype), in[1].device}),
               .run = KILN_RUN(nll_loss_backward(in[0], in[1], in[2], in[3], a.get<int64_t>("ignore_index"),
                                                 a.get<std::string>("reduction")))});
  register_op({.name = "binary_cross_entropy_with_logits",
               .num_inputs = 4,
               .operands = "input, target, weight?, pos_weight?",
               .attrs = {{"reduction", AttrKind::String}},
               .meta = KILN_META(bce_meta(in[0], in[1], in[2], in[3], a.get<std::string>("reduction"))),
               .run = KILN_RUN(binary_cross_entropy_with_logits(in[0], in[1], in[2], in[3],
                                                                a.get<std::string>("reduction")))});
}

}  // namespace kiln::nn::functional
