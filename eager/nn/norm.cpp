// batch_norm over (N, C, *) inputs, seen as (N, C, S). Channels are
// independent, so statistics and the backward run per channel in parallel;
// sums are taken in double, the variance in two passes (no cancellation).
#include <cmath>
#include <vector>

#include "eager/nn/common.h"
#include "eager/nn/functional.h"

namespace kiln::nn::functional {
namespace {
using namespace detail;

struct BNGeom {
  int64_t N, C, S;
  int64_t M() const { return N * S; }  // values per channel
};

int64_t channel_grain(const BNGeom& g) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.M())); }

// Biased batch mean and variance per channel.
template <class T>
void channel_stats(const BNGeom& g, const T* x, double* mean, double* var) {
  using C = compute_t<T>;
  parallel_for(0, g.C, channel_grain(g), [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double s = 0;
      for (int64_t n = 0; n < g.N; ++n) {
        const T* p = x + (n * g.C + c) * g.S;
        for (int64_t i = 0; i < g.S; ++i) s += double(C(p[i]));
      }
      const double m = s / double(g.M());
      double v = 0;
      for (int64_t n = 0; n < g.N; ++n) {
        const T* p = x + (n * g.C + c) * g.S;
        for (int64_t i = 0; i < g.S; ++i) {
          const double d = double(C(p[i])) - m;
          v += d * d;
        }
      }
      mean[c] = m;
      var[c] = v / double(g.M());
    }
  });
}

// y = x * scale[c] + shift[c].
template <class T>
void affine(const BNGeom& g, const T* x, const compute_t<T>* scale, const compute_t<T>* shift, T* y) {
  using C = compute_t<T>;
  parallel_for(0, g.N * g.C, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.S)), [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const C a = scale[r % g.C], b = shift[r % g.C];
      const T* p = x + r * g.S;
      T* o = y + r * g.S;
      for (int64_t i = 0; i < g.S; ++i) o[i] = T(C(p[i]) * a + b);
    }
  });
}

// Gradients of y = (x - mean) * rstd * w + b. In training, mean and rstd
// are functions of x too, which adds the two mean terms to dx.
template <class T>
void bn_backward(const BNGeom& g, const T* x, const T* gy, const compute_t<T>* mean, const compute_t<T>* rstd,
                 const compute_t<T>* w, bool training, T* dx, compute_t<T>* dw, compute_t<T>* db) {
  using C = compute_t<T>;
  parallel_for(0, g.C, channel_grain(g), [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const double m = double(mean[c]);
      double sg = 0, sgx = 0;
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t off = (n * g.C + c) * g.S;
        for (int64_t i = 0; i < g.S; ++i) {
          const double gv = double(C(gy[off + i]));
          sg += gv;
          sgx += gv * (double(C(x[off + i])) - m);
        }
      }
      const double r = double(rstd[c]), wc = w ? double(w[c]) : 1.0;
      if (db) db[c] = C(sg);
      if (dw) dw[c] = C(sgx * r);
      if (!dx) continue;
      const double k = wc * r;
      // dx = k * (g - a - (x - mean) * b), a and b zero in eval mode.
      const double a = training ? sg / double(g.M()) : 0.0;
      const double b = training ? sgx * r * r / double(g.M()) : 0.0;
      const C ck = C(k), ca = C(a), cb2 = C(b), cm = C(m);
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t off = (n * g.C + c) * g.S;
        for (int64_t i = 0; i < g.S; ++i) dx[off + i] = T(ck * (C(gy[off + i]) - ca - (C(x[off + i]) - cm) * cb2));
      }
    }
  });
}

Tensor param(const Tensor& p, DType dtype) { return p.defined() ? contiguous(to_dtype(p.detach(), dtype)) : p; }

void check_channel_param(const Tensor& p, int64_t C, const Tensor& x, const char* what) {
  if (!p.defined()) return;
  check_floating(p, "batch_norm", what);
  KILN_CHECK(p.dim() == 1 && p.shape()[0] == C, ShapeError,
             "batch_norm: expected {} of shape ({}) (C of input {}), got {}", what, C, shape_str(x.shape()),
             shape_str(p.shape()));
}

}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                  const Tensor& bias, bool training, double momentum, double eps) {
  check_floating(x, "batch_norm", "input");
  KILN_CHECK(x.dim() >= 2, ShapeError,
             "batch_norm: expected an input of shape (N, C), (N, C, L) or (N, C, H, W), got {}", shape_str(x.shape()));
  BNGeom g;
  g.N = x.shape()[0];
  g.C = x.shape()[1];
  g.S = numel(Shape(x.shape().begin() + 2, x.shape().end()));
  check_channel_param(running_mean, g.C, x, "running_mean");
  check_channel_param(running_var, g.C, x, "running_var");
  check_channel_param(weight, g.C, x, "weight");
  check_channel_param(bias, g.C, x, "bias");
  KILN_CHECK(training || (running_mean.defined() && running_var.defined()), ValueError,
             "batch_norm: running_mean and running_var are needed when training=False");
  KILN_CHECK(!training || g.M() > 1, ValueError,
             "batch_norm: expected more than 1 value per channel when training, got input of shape {}",
             shape_str(x.shape()));
  KILN_CHECK(eps >= 0, ValueError, "batch_norm: eps must be non-negative, got {}", eps);

  const DType cd = compute_dtype(x.dtype());
  Tensor mean_t, rstd_t;  // per channel, compute dtype; saved for backward
  auto forward = [&] {
    Tensor xc = contiguous(x.detach());
    Tensor w = param(weight, cd), b = param(bias, cd);
    Tensor out = Tensor::empty(x.shape(), x.dtype());
    mean_t = Tensor::empty({g.C}, cd);
    rstd_t = Tensor::empty({g.C}, cd);
    std::vector<double> mean(g.C), var(g.C);
    dispatch_floating(x.dtype(), "batch_norm", [&]<class T>() {
      using C = compute_t<T>;
      if (training) {
        channel_stats<T>(g, xc.data<T>(), mean.data(), var.data());
      } else {
        Tensor rm = param(running_mean, DType::Float64), rv = param(running_var, DType::Float64);
        std::copy_n(rm.data<double>(), g.C, mean.begin());
        std::copy_n(rv.data<double>(), g.C, var.begin());
      }
      std::vector<C> scale(g.C), shift(g.C);
      C* pm = mean_t.data<C>();
      C* pr = rstd_t.data<C>();
      for (int64_t c = 0; c < g.C; ++c) {
        const double r = 1.0 / std::sqrt(var[c] + eps);
        const double wc = w.defined() ? double(w.data<C>()[c]) : 1.0, bc = b.defined() ? double(b.data<C>()[c]) : 0.0;
        pm[c] = C(mean[c]);
        pr[c] = C(r);
        scale[c] = C(wc * r);
        shift[c] = C(bc - mean[c] * wc * r);
      }
      affine<T>(g, xc.data<T>(), scale.data(), shift.data(), out.data<T>());
    });
    if (training && g.M() > 1) {
      NoGradGuard no_grad;
      const double unbias = double(g.M()) / double(g.M() - 1);
      Tensor batch_mean = from_blob_copy(mean.data(), {g.C}, DType::Float64);
      Tensor batch_var = from_blob_copy(var.data(), {g.C}, DType::Float64);
      if (running_mean.defined())
        copy_into(running_mean, add(mul(to_dtype(running_mean, DType::Float64), 1.0 - momentum), mul(batch_mean, momentum)));
      if (running_var.defined())
        copy_into(running_var,
                  add(mul(to_dtype(running_var, DType::Float64), 1.0 - momentum), mul(batch_var, momentum * unbias)));
    }
    return out;
  };
  return autograd_op("batch_norm", {x, weight, bias}, forward, [&](const Tensor&) {
    SavedTensor sx(x), sw(weight);
    Tensor mean_s = mean_t, rstd_s = rstd_t;
    const BNGeom gs = g;
    const bool train = training;
    return BackwardFn([=](const Tensor& gy_in, const Needs& need) -> Grads {
      Tensor xc = contiguous(sx.get());
      Tensor gy = contiguous(to_dtype(gy_in, xc.dtype()));
      Tensor w = param(sw.get(), mean_s.dtype());
      Tensor dx = need[0] ? Tensor::empty(xc.shape(), xc.dtype()) : Tensor();
      Tensor dw = need[1] ? Tensor::empty({gs.C}, mean_s.dtype()) : Tensor();
      Tensor db = need[2] ? Tensor::empty({gs.C}, mean_s.dtype()) : Tensor();
      dispatch_floating(xc.dtype(), "batch_norm_backward", [&]<class T>() {
        using C = compute_t<T>;
        bn_backward<T>(gs, xc.data<T>(), gy.data<T>(), mean_s.data<C>(), rstd_s.data<C>(),
                       w.defined() ? w.data<C>() : nullptr, train, dx.defined() ? dx.data<T>() : nullptr,
                       dw.defined() ? dw.data<C>() : nullptr, db.defined() ? db.data<C>() : nullptr);
      });
      return {dx, dw, db};
    });
  });
}

}  // namespace kiln::nn::functional
