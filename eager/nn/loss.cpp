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
  check_cpu(target, op, "target");
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

// The shape of a per-row ("none") loss.
Shape row_shape(const Tensor& input) {
  if (input.dim() <= 1) return {};
  Shape s = input.shape();
  s.erase(s.begin() + 1);
  return s;
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

struct CEIndexSaved {
  Tensor lse;     // (R) compute dtype
  Tensor target;  // (R) int64
  double denom;   // mean: the summed weight of the counted rows
};

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

Tensor cross_entropy_index(const Tensor& input, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                           Reduction red, double eps) {
  const char* op = "cross_entropy";
  Tensor t = class_target(input, target, op);
  const int64_t Cn = input.dim() == 1 ? input.shape()[0] : input.shape()[1];
  check_class_range(t, Cn, ignore_index, op);
  Tensor w = class_weight(weight, Cn, input, op);
  const DType cd = compute_dtype(input.dtype());
  auto saved = std::make_shared<CEIndexSaved>();
  const Shape rshape = row_shape(input);
  return autograd_op(
      "cross_entropy", {input},
      [&] {
        Rows rows = to_rows(input);
        const int64_t R = rows.N * rows.S;
        saved->lse = Tensor::empty({R}, cd);
        saved->target = t;
        Tensor loss_rows = Tensor::empty({R}, cd);
        dispatch_compute(cd, op, [&]<class C>() {
          if constexpr (std::is_same_v<C, float> || std::is_same_v<C, double>)
            ce_index_forward<C>(rows.x.data<C>(), R, Cn, t.data<int64_t>(), w.defined() ? w.data<C>() : nullptr,
                                ignore_index, eps, saved->lse.data<C>(), loss_rows.data<C>(), &saved->denom);
        });
        Tensor out;
        if (red == Reduction::None) {
          out = reshape(loss_rows, rshape);
        } else {
          out = sum(loss_rows, {}, false, DType::Float64);
          if (red == Reduction::Mean) out = div(out, saved->denom);
          out = to_dtype(out, cd);
        }
        return to_dtype(out, input.dtype());
      },
      [&](const Tensor&) {
        SavedTensor sx(input);
        const Shape shape = input.shape();
        return BackwardFn([=](const Tensor& g, const Needs&) -> Grads {
          Rows rows = to_rows(sx.get());
          const int64_t R = rows.N * rows.S;
          Tensor scale;
          if (red == Reduction::None) {
            scale = contiguous(to_dtype(reshape(g, {R}), cd));
          } else {
            scale = to_dtype(reshape(g, {1}), cd);
            if (red == Reduction::Mean) scale = div(scale, saved->denom);
            scale = contiguous(scale);
          }
          Tensor dx = Tensor::empty({R, rows.C}, cd);
          dispatch_compute(cd, op, [&]<class C>() {
            if constexpr (std::is_same_v<C, float> || std::is_same_v<C, double>)
              ce_index_backward<C>(rows.x.data<C>(), R, rows.C, saved->target.data<int64_t>(),
                                   w.defined() ? w.data<C>() : nullptr, ignore_index, eps, saved->lse.data<C>(),
                                   scale.data<C>(), red == Reduction::None, dx.data<C>());
          });
          return {from_rows(dx, rows, shape)};
        });
      });
}

// ---- cross entropy with class probabilities ----
// loss_r = sum_c w_c t'_c (lse - x_c), t' = t (1 - eps) + eps / C.

Tensor cross_entropy_prob(const Tensor& input, const Tensor& target, const Tensor& weight, Reduction red,
                          double eps) {
  const char* op = "cross_entropy";
  KILN_CHECK(target.shape() == input.shape(), ShapeError,
             "cross_entropy: expected a target of class probabilities shaped like the input {}, got {}",
             shape_str(input.shape()), shape_str(target.shape()));
  const int64_t Cn = input.dim() == 1 ? input.shape()[0] : input.shape()[1];
  Tensor w = class_weight(weight, Cn, input, op);
  const DType cd = compute_dtype(promote_types(input.dtype(), target.dtype()));
  const Shape rshape = row_shape(input);
  // Rows of log-probabilities, kept for the backward (p = exp(logp)).
  auto logp_saved = std::make_shared<Tensor>();
  auto row_count = std::make_shared<int64_t>(0);
  return autograd_op(
      "cross_entropy", {input, target},
      [&] {
        Rows rows = to_rows(to_dtype(input, cd));
        Rows trow = to_rows(to_dtype(target, cd));
        const int64_t R = rows.N * rows.S;
        *row_count = R;
        Tensor logp = Tensor::empty({R, Cn}, cd);
        Tensor loss_rows = Tensor::empty({R}, cd);
        dispatch_compute(cd, op, [&]<class C>() {
          if constexpr (std::is_same_v<C, float> || std::is_same_v<C, double>) {
            const C* x = rows.x.data<C>();
            const C* tp = trow.x.data<C>();
            const C* pw = w.defined() ? w.data<C>() : nullptr;
            C* lp = logp.data<C>();
            C* lr = loss_rows.data<C>();
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
          }
        });
        *logp_saved = logp;
        Tensor out;
        if (red == Reduction::None) {
          out = reshape(loss_rows, rshape);
        } else {
          out = sum(loss_rows, {}, false, DType::Float64);
          if (red == Reduction::Mean) out = div(out, double(R));
          out = to_dtype(out, cd);
        }
        return to_dtype(out, promote_types(input.dtype(), target.dtype()));
      },
      [&](const Tensor&) {
        SavedTensor st(target);
        const Shape shape = input.shape();
        const Shape tshape = target.shape();
        return BackwardFn([=](const Tensor& g, const Needs& need) -> Grads {
          const Tensor& logp = *logp_saved;
          const int64_t R = *row_count;
          Rows trow = to_rows(to_dtype(st.get(), cd));
          Tensor scale;
          if (red == Reduction::None) {
            scale = contiguous(to_dtype(reshape(g, {R}), cd));
          } else {
            scale = to_dtype(reshape(g, {1}), cd);
            if (red == Reduction::Mean) scale = div(scale, double(R));
            scale = contiguous(scale);
          }
          Tensor dx = need[0] ? Tensor::empty({R, Cn}, cd) : Tensor();
          Tensor dt = need[1] ? Tensor::empty({R, Cn}, cd) : Tensor();
          dispatch_compute(cd, op, [&]<class C>() {
            if constexpr (std::is_same_v<C, float> || std::is_same_v<C, double>) {
              const C* lp = logp.data<C>();
              const C* tp = trow.x.data<C>();
              const C* pw = w.defined() ? w.data<C>() : nullptr;
              const C* ps = scale.data<C>();
              C* pdx = dx.defined() ? dx.data<C>() : nullptr;
              C* pdt = dt.defined() ? dt.data<C>() : nullptr;
              parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, Cn)), [&](int64_t rb, int64_t re) {
                for (int64_t r = rb; r < re; ++r) {
                  const C s = red == Reduction::None ? ps[r] : ps[0];
                  const C* l = lp + r * Cn;
                  const C* t = tp + r * Cn;
                  auto wt = [&](int64_t c) {
                    return (pw ? pw[c] : C(1)) * (t[c] * C(1 - eps) + C(eps / double(Cn)));
                  };
                  if (pdx) {
                    const C total = C(row_sum<acc_t<C>>(Cn, wt));
                    for (int64_t c = 0; c < Cn; ++c) pdx[r * Cn + c] = s * (kexp(l[c]) * total - wt(c));
                  }
                  if (pdt)
                    for (int64_t c = 0; c < Cn; ++c) pdt[r * Cn + c] = -s * C(1 - eps) * (pw ? pw[c] : C(1)) * l[c];
                }
              });
            }
          });
          Rows geo = trow;
          return {dx.defined() ? from_rows(dx, geo, shape) : Tensor(), dt.defined() ? from_rows(dt, geo, tshape) : Tensor()};
        });
      });
}

}  // namespace

// ---- public ----

Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction) {
  const Reduction red = parse_reduction(reduction, "mse_loss");
  check_floating(input, "mse_loss", "input");
  check_floating(target, "mse_loss", "target");
  const Shape shape = broadcast_shapes(input.shape(), target.shape(), "mse_loss");
  auto diff = std::make_shared<Tensor>();
  return autograd_op(
      "mse_loss", {input, target},
      [&] {
        *diff = sub(input, target);
        return reduce_loss(mul(*diff, *diff), red);
      },
      [&](const Tensor&) {
        const int64_t n = numel(shape);
        return BackwardFn([=](const Tensor& g, const Needs& need) -> Grads {
          Tensor gi = mul(*diff, mul(loss_grad_scale(g, red, n), 2.0));
          return {need[0] ? gi : Tensor(), need[1] ? neg(gi) : Tensor()};
        });
      });
}

Tensor nll_loss(const Tensor& input, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                const std::string& reduction) {
  const char* op = "nll_loss";
  const Reduction red = parse_reduction(reduction, op);
  check_floating(input, op, "input");
  KILN_CHECK(input.dim() >= 1, ShapeError, "nll_loss: expected an input of shape (N, C), (N, C, d...) or (C), got {}",
             shape_str(input.shape()));
  Tensor t = class_target(input, target, op);
  const int64_t N = input.dim() == 1 ? 1 : input.shape()[0];
  const int64_t Cn = input.dim() == 1 ? input.shape()[0] : input.shape()[1];
  const int64_t S = input.dim() <= 2 ? 1 : numel(Shape(input.shape().begin() + 2, input.shape().end()));
  check_class_range(t, Cn, ignore_index, op);
  Tensor w = class_weight(weight, Cn, input, op);
  const DType cd = compute_dtype(input.dtype());
  const Shape rshape = row_shape(input);
  auto denom = std::make_shared<double>(0.0);
  return autograd_op(
      "nll_loss", {input},
      [&] {
        Tensor x = contiguous(to_dtype(input.detach(), cd));
        Tensor loss = Tensor::empty({N * S}, cd);
        dispatch_compute(cd, op, [&]<class C>() {
          const C* px = x.data<C>();
          const int64_t* pt = t.data<int64_t>();
          const C* pw = w.defined() ? w.data<C>() : nullptr;
          C* pl = loss.data<C>();
          double wsum = 0;
          for (int64_t n = 0; n < N; ++n)
            for (int64_t s = 0; s < S; ++s) {
              const int64_t k = pt[n * S + s];
              if (k == ignore_index) {
                pl[n * S + s] = C(0);
                continue;
              }
              const C wk = pw ? pw[k] : C(1);
              pl[n * S + s] = -wk * px[(n * Cn + k) * S + s];
              wsum += double(wk);
            }
          *denom = wsum;
        });
        Tensor out;
        if (red == Reduction::None) {
          out = reshape(loss, rshape);
        } else {
          out = sum(loss, {}, false, DType::Float64);
          if (red == Reduction::Mean) out = div(out, *denom);
        }
        return to_dtype(out, input.dtype());
      },
      [&](const Tensor&) {
        const Shape shape = input.shape();
        return BackwardFn([=](const Tensor& g, const Needs&) -> Grads {
          Tensor scale = contiguous(to_dtype(red == Reduction::None ? reshape(g, {N * S}) : reshape(g, {1}), cd));
          if (red == Reduction::Mean) scale = div(scale, *denom);
          Tensor dx = zeros(shape, cd);
          dispatch_compute(cd, op, [&]<class C>() {
            const C* ps = scale.data<C>();
            const int64_t* pt = t.data<int64_t>();
            const C* pw = w.defined() ? w.data<C>() : nullptr;
            C* pd = dx.data<C>();
            for (int64_t n = 0; n < N; ++n)
              for (int64_t s = 0; s < S; ++s) {
                const int64_t k = pt[n * S + s];
                if (k == ignore_index) continue;
                const C sc = red == Reduction::None ? ps[n * S + s] : ps[0];
                pd[(n * Cn + k) * S + s] = -(pw ? pw[k] : C(1)) * sc;
              }
          });
          return {dx};
        });
      });
}

Tensor cross_entropy(const Tensor& input, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                     const std::string& reduction, double label_smoothing) {
  const Reduction red = parse_reduction(reduction, "cross_entropy");
  check_floating(input, "cross_entropy", "input");
  check_cpu(target, "cross_entropy", "target");
  KILN_CHECK(input.dim() >= 1, ShapeError,
             "cross_entropy: expected an input of shape (N, C), (N, C, d...) or (C), got {}", shape_str(input.shape()));
  KILN_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, ValueError,
             "cross_entropy: label_smoothing must be between 0.0 and 1.0, got {}", label_smoothing);
  if (is_floating(target.dtype())) {
    KILN_CHECK(ignore_index == -100, ValueError,
               "cross_entropy: ignore_index ({}) is not supported for a target of class probabilities", ignore_index);
    return cross_entropy_prob(input, target, weight, red, label_smoothing);
  }
  return cross_entropy_index(input, target, weight, ignore_index, red, label_smoothing);
}

Tensor binary_cross_entropy_with_logits(const Tensor& input, const Tensor& target, const Tensor& weight,
                                        const Tensor& pos_weight, const std::string& reduction) {
  const char* op = "binary_cross_entropy_with_logits";
  const Reduction red = parse_reduction(reduction, op);
  check_floating(input, op, "input");
  check_floating(target, op, "target");
  KILN_CHECK(target.shape() == input.shape(), ShapeError, "{}: expected a target shaped like the input {}, got {}", op,
             shape_str(input.shape()), shape_str(target.shape()));
  if (weight.defined()) {
    check_floating(weight, op, "weight");
    broadcast_shapes(weight.shape(), input.shape(), op);
  }
  if (pos_weight.defined()) {
    check_floating(pos_weight, op, "pos_weight");
    broadcast_shapes(pos_weight.shape(), input.shape(), op);
  }
  const Tensor w = weight.defined() ? weight.detach() : Tensor();
  const Tensor pw = pos_weight.defined() ? pos_weight.detach() : Tensor();
  // softplus(-x) = log(1 + exp(-x)), written so that exp never overflows.
  auto softplus_neg = [](const Tensor& x) { return add(log1p(exp(neg(abs(x)))), relu(neg(x))); };
  return autograd_op(
      op, {input, target},
      [&] {
        const Tensor& x = input;
        const Tensor sp = softplus_neg(x);
        // (1 - t) x + lw * softplus(-x), lw = 1 + (pw - 1) t
        Tensor loss = mul(sub(1.0, target), x);
        loss = pw.defined() ? add(loss, mul(add(mul(sub(pw, 1.0), target), 1.0), sp)) : add(loss, sp);
        if (w.defined()) loss = mul(loss, w);
        return reduce_loss(loss, red);
      },
      [&](const Tensor& out) {
        SavedTensor sx(input), st(target);
        const int64_t n = input.numel();
        (void)out;
        return BackwardFn([=](const Tensor& g, const Needs& need) -> Grads {
          const Tensor& x = sx.get();
          const Tensor& t = st.get();
          Tensor scale = loss_grad_scale(g, red, n);
          if (w.defined()) scale = mul(scale, w);
          Grads grads(2);
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
      });
}

}  // namespace kiln::nn::functional
