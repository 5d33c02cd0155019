// batch_norm over (N, C, *) inputs, seen as (N, C, S). Channels are
// independent, so statistics and the backward run per channel in parallel;
// sums are taken in double, the variance in two passes (no cancellation).
#include <cmath>
#include <vector>

#include "eager/nn/common.h"
#include "eager/nn/functional.h"
#include "eager/op_util.h"

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

BNGeom geometry(const Shape& shape) {
  return {shape[0], shape[1], numel(Shape(shape.begin() + 2, shape.end()))};
}

// in: x, running_mean, running_var, weight, bias. Outputs: y, the batch's
// mean and 1/std per channel (saved for backward), then, when training, the
// new running_mean and running_var of those given.
std::vector<TensorType> batch_norm_meta(const std::vector<TensorType>& in, bool training, double eps) {
  const TensorType& x = in[0];
  check_floating(x, "batch_norm", "input");
  KILN_CHECK(x.shape.size() >= 2, ShapeError,
             "batch_norm: expected an input of shape (N, C), (N, C, L) or (N, C, H, W), got {}", shape_str(x.shape));
  const int64_t C = x.shape[1];
  const char* names[] = {"running_mean", "running_var", "weight", "bias"};
  for (int i = 1; i <= 4; ++i) {
    const TensorType& p = in[i];
    if (!p.defined) continue;
    check_floating(p, "batch_norm", names[i - 1]);
    KILN_CHECK(p.shape.size() == 1 && (is_dynamic(C) || is_dynamic(p.shape[0]) || p.shape[0] == C), ShapeError,
               "batch_norm: expected {} of shape ({}) (C of input {}), got {}", names[i - 1], C == kDynamic ? -1 : C,
               shape_str(x.shape), shape_str(p.shape));
  }
  KILN_CHECK(training || (in[1].defined && in[2].defined), ValueError,
             "batch_norm: running_mean and running_var are needed when training=False");
  Shape per_channel(x.shape.begin(), x.shape.end());
  per_channel.erase(per_channel.begin() + 1);
  KILN_CHECK(!training || has_dynamic_dims(per_channel) || numel(per_channel) > 1, ValueError,
             "batch_norm: expected more than 1 value per channel when training, got input of shape {}",
             shape_str(x.shape));
  KILN_CHECK(eps >= 0, ValueError, "batch_norm: eps must be non-negative, got {}", eps);
  const TensorType stat{{C}, compute_dtype(x.dtype), x.device};
  std::vector<TensorType> out = {x, stat, stat};
  for (int i = 1; i <= 2; ++i)
    if (training && in[i].defined) out.push_back(in[i]);
  return out;
}

std::vector<Tensor> batch_norm_forward(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                                       const Tensor& weight, const Tensor& bias, bool training, double momentum,
                                       double eps) {
  const BNGeom g = geometry(x.shape());
  const DType cd = compute_dtype(x.dtype());
  Tensor xc = contiguous(x.detach());
  Tensor w = param(weight, cd), b = param(bias, cd);
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  Tensor mean_t = Tensor::empty({g.C}, cd), rstd_t = Tensor::empty({g.C}, cd);
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
  std::vector<Tensor> outs = {out, mean_t, rstd_t};
  if (training) {
    // running = (1 - momentum) * running + momentum * batch (the variance unbiased), in float64.
    const double unbias = double(g.M()) / double(g.M() - 1);
    Tensor batch_mean = from_blob_copy(mean.data(), {g.C}, DType::Float64);
    Tensor batch_var = from_blob_copy(var.data(), {g.C}, DType::Float64);
    if (running_mean.defined())
      outs.push_back(to_dtype(add(mul(to_dtype(running_mean.detach(), DType::Float64), 1.0 - momentum),
                                  mul(batch_mean, momentum)),
                              running_mean.dtype()));
    if (running_var.defined())
      outs.push_back(to_dtype(add(mul(to_dtype(running_var.detach(), DType::Float64), 1.0 - momentum),
                                  mul(batch_var, momentum * unbias)),
                              running_var.dtype()));
  }
  return outs;
}

// dx, dweight, dbias (those asked for, in that order).
std::vector<Tensor> batch_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                        const Tensor& weight, bool training, bool need_input, bool need_weight,
                                        bool need_bias) {
  if (TraceHook* trace = active_trace())
    return trace->record(op_def("batch_norm_backward"), {grad, x, mean, rstd, weight},
                         make_attrs("training, need_input, need_weight, need_bias", training, need_input,
                                    need_weight, need_bias));
  const BNGeom g = geometry(x.shape());
  Tensor xc = contiguous(x.detach());
  Tensor gy = contiguous(to_dtype(grad, xc.dtype()));
  Tensor w = param(weight, mean.dtype());
  Tensor dx = need_input ? Tensor::empty(xc.shape(), xc.dtype()) : Tensor();
  Tensor dw = need_weight ? Tensor::empty({g.C}, mean.dtype()) : Tensor();
  Tensor db = need_bias ? Tensor::empty({g.C}, mean.dtype()) : Tensor();
  dispatch_floating(xc.dtype(), "batch_norm_backward", [&]<class T>() {
    using C = compute_t<T>;
    bn_backward<T>(g, xc.data<T>(), gy.data<T>(), contiguous(mean).data<C>(), contiguous(rstd).data<C>(),
                   w.defined() ? w.data<C>() : nullptr, training, dx.defined() ? dx.data<T>() : nullptr,
                   dw.defined() ? dw.data<C>() : nullptr, db.defined() ? db.data<C>() : nullptr);
  });
  std::vector<Tensor> out;
  for (const Tensor& t : {dx, dw, db})
    if (t.defined()) out.push_back(t);
  return out;
}

}  // namespace

namespace {
// On a GPU, composed of GPU ops (autograd differentiates them as any op):
// the statistics over every dim but the channels, in the compute dtype;
// the running statistics updated as on the CPU (the variance unbiased).
Tensor batch_norm_composite(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                            const Tensor& weight, const Tensor& bias, bool training, double momentum, double eps) {
  DimList dims;
  Shape channel_shape(x.dim(), 1);
  channel_shape[1] = x.shape()[1];
  for (int64_t d = 0; d < x.dim(); ++d)
    if (d != 1) dims.push_back(d);
  const DType cd = compute_dtype(x.dtype());
  const Tensor xc = to_dtype(x, cd);
  auto per_channel = [&](const Tensor& t) { return reshape(to_dtype(t, cd), channel_shape); };
  Tensor mean, var;
  if (training) {
    mean = kiln::mean(xc, dims, /*keepdim=*/true);
    var = kiln::var(xc, dims, /*correction=*/0, /*keepdim=*/true);
    NoGradGuard no_grad;
    const double count = static_cast<double>(x.numel() / x.shape()[1]);
    auto update = [&](const Tensor& running, const Tensor& batch, double scale) {
      if (!running.defined()) return;
      Tensor next = add(mul(running, 1.0 - momentum), mul(reshape(batch.detach(), {x.shape()[1]}), momentum * scale));
      Tensor(running).copy_(next);
    };
    update(running_mean, mean, 1.0);
    update(running_var, var, count / (count - 1));
  } else {
    mean = per_channel(running_mean);
    var = per_channel(running_var);
  }
  Tensor y = mul(sub(xc, mean), rsqrt(add(var, eps)));
  if (weight.defined()) y = mul(y, per_channel(weight));
  if (bias.defined()) y = add(y, per_channel(bias));
  return to_dtype(y, x.dtype());
}
}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                  const Tensor& bias, bool training, double momentum, double eps) {
  batch_norm_meta({type_of(x), type_of(running_mean), type_of(running_var), type_of(weight), type_of(bias)}, training,
                  eps);
  for (const auto& [p, what] : {std::pair{&running_mean, "running_mean"}, std::pair{&running_var, "running_var"},
                                std::pair{&weight, "weight"}, std::pair{&bias, "bias"}})
    check_same_device(x, *p, "batch_norm", what);
  if (!x.device().is_cpu() && !active_trace())
    return batch_norm_composite(x, running_mean, running_var, weight, bias, training, momentum, eps);
  // Running statistics are operands, not differentiated: the gradient
  // flows to x, weight and bias (inputs 0, 3, 4).
  std::vector<Tensor> outs = autograd_op_n(
      "batch_norm", {x, running_mean, running_var, weight, bias}, KILN_ATTRS(training, momentum, eps),
      [&] { return batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps); },
      [&](const std::vector<Tensor>& o) {
        SavedTensor sx(x), sw(weight);
        Tensor mean = o[1], rstd = o[2];
        return BackwardFn([=](const Tensor& gy, const Needs& need) -> Grads {
          std::vector<Tensor> d =
              batch_norm_backward(gy, sx.get(), mean, rstd, sw.get(), training, need[0], need[3], need[4]);
          Grads grads(5);
          size_t k = 0;
          for (int i : {0, 3, 4})
            if (need[i]) grads[i] = d[k++];
          return grads;
        });
      });
  if (training) {
    // The new statistics go into the buffers in place (in a trace: a
    // write-back of the captured buffers).
    NoGradGuard no_grad;
    size_t k = 3;
    if (running_mean.defined()) Tensor(running_mean).copy_(outs[k++]);
    if (running_var.defined()) Tensor(running_var).copy_(outs[k++]);
  }
  return outs[0];
}

void detail::register_norm_ops() {
  register_op({.name = "batch_norm",
               .num_inputs = 5,
               .num_outputs = -1,
               .operands = "x, running_mean?, running_var?, weight?, bias?",
               .attrs = {{"training", AttrKind::Bool}, {"momentum", AttrKind::Float}, {"eps", AttrKind::Float}},
               .meta = [](const std::vector<TensorType>& in, const Attrs& a) {
                 return batch_norm_meta(in, a.get<bool>("training"), a.get<double>("eps"));
               },
               .run = [](const std::vector<Tensor>& in, const Attrs& a) {
                 return batch_norm_forward(in[0], in[1], in[2], in[3], in[4], a.get<bool>("training"),
                                           a.get<double>("momentum"), a.get<double>("eps"));
               }});
  register_op({.name = "batch_norm_backward",
               .num_inputs = 5,
               .num_outputs = -1,
               .operands = "grad, x, mean, rstd, weight?",
               .attrs = {{"training", AttrKind::Bool},
                         {"need_input", AttrKind::Bool},
                         {"need_weight", AttrKind::Bool},
                         {"need_bias", AttrKind::Bool}},
               .meta = [](const std::vector<TensorType>& in, const Attrs& a) {
                 std::vector<TensorType> out;
                 const TensorType stat = in[2];
                 if (a.get<bool>("need_input")) out.push_back(in[1]);
                 if (a.get<bool>("need_weight")) out.push_back(stat);
                 if (a.get<bool>("need_bias")) out.push_back(stat);
                 return out;
               },
               .run = [](const std::vector<Tensor>& in, const Attrs& a) {
                 return batch_norm_backward(in[0], in[1], in[2], in[3], in[4], a.get<bool>("training"),
                                            a.get<bool>("need_input"), a.get<bool>("need_weight"),
                                            a.get<bool>("need_bias"));
               }});
}

}  // namespace kiln::nn::functional
