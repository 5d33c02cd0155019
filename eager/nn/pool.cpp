// 2-D pooling over NCHW (or unbatched CHW) inputs. Each (n, c) plane is
// independent, so planes run in parallel. max_pool2d saves the argmax of
// each window (a flat index into its plane) and routes gradients through it.
#include <cmath>
#include <limits>

#include "eager/nn/common.h"
#include "eager/nn/functional.h"

namespace kiln::nn::functional {
namespace {
using namespace detail;

// PyTorch's output size: a window must start inside the input or the left
// padding (ceil_mode may add a last, partial window, but not one that
// starts in the right padding).
int64_t pooled_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil, bool ceil_mode) {
  const int64_t span = in + 2 * pad - dil * (k - 1) - 1;
  if (span < 0) return 0;
  int64_t out = (span + (ceil_mode ? stride - 1 : 0)) / stride + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

struct PoolGeom {
  int64_t planes, H, W, Ho, Wo;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// The input's data, contiguous, after the shared checks.
Tensor pool_input(const Tensor& x, const char* op) {
  check_floating(x, op, "input");
  KILN_CHECK(x.dim() == 3 || x.dim() == 4, ShapeError,
             "{}: expected a 4-D input (N, C, H, W) or a 3-D unbatched one (C, H, W), got {}", op,
             shape_str(x.shape()));
  return contiguous(x.detach());
}

Shape pooled_shape(const Tensor& x, int64_t Ho, int64_t Wo) {
  Shape s = x.shape();
  s[s.size() - 2] = Ho;
  s[s.size() - 1] = Wo;
  return s;
}

PoolGeom pool_geometry(const Tensor& x, Pair k, std::optional<Pair> stride_opt, Pair pad, Pair dil, bool ceil_mode,
                       const char* op) {
  const Pair s = stride_opt.value_or(k);
  KILN_CHECK(k[0] > 0 && k[1] > 0, ValueError, "{}: kernel_size must be positive, got ({}, {})", op, k[0], k[1]);
  KILN_CHECK(s[0] > 0 && s[1] > 0, ValueError, "{}: stride must be positive, got ({}, {})", op, s[0], s[1]);
  KILN_CHECK(dil[0] > 0 && dil[1] > 0, ValueError, "{}: dilation must be positive, got ({}, {})", op, dil[0],
             dil[1]);
  KILN_CHECK(pad[0] >= 0 && pad[1] >= 0 && pad[0] <= k[0] / 2 && pad[1] <= k[1] / 2, ValueError,
             "{}: padding ({}, {}) must be non-negative and at most half of kernel_size ({}, {})", op, pad[0], pad[1],
             k[0], k[1]);
  PoolGeom g;
  g.H = x.shape()[x.dim() - 2];
  g.W = x.shape()[x.dim() - 1];
  g.planes = numel(Shape(x.shape().begin(), x.shape().end() - 2));
  g.kh = k[0], g.kw = k[1], g.sh = s[0], g.sw = s[1], g.ph = pad[0], g.pw = pad[1], g.dh = dil[0], g.dw = dil[1];
  g.Ho = pooled_size(g.H, g.kh, g.ph, g.sh, g.dh, ceil_mode);
  g.Wo = pooled_size(g.W, g.kw, g.pw, g.sw, g.dw, ceil_mode);
  KILN_CHECK(g.Ho > 0 && g.Wo > 0, ShapeError,
             "{}: the output would be empty: input {} with kernel_size ({}, {}), stride ({}, {}), padding ({}, {}), "
             "dilation ({}, {}) gives ({}, {})",
             op, shape_str(x.shape()), g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.Ho, g.Wo);
  return g;
}

int64_t plane_grain(const PoolGeom& g) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.Ho * g.Wo * g.kh * g.kw));
}

// ---- max ----

template <class T>
void max_pool_kernel(const PoolGeom& g, const T* x, T* out, int64_t* idx) {
  using C = compute_t<T>;
  parallel_for(0, g.planes, plane_grain(g), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const T* xp = x + p * g.H * g.W;
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
          const int64_t h1 = std::min(h0 + (g.kh - 1) * g.dh + 1, g.H), w1 = std::min(w0 + (g.kw - 1) * g.dw + 1, g.W);
          while (h0 < 0) h0 += g.dh;
          while (w0 < 0) w0 += g.dw;
          C best = -std::numeric_limits<C>::infinity();
          int64_t arg = h0 * g.W + w0;
          for (int64_t ih = h0; ih < h1; ih += g.dh)
            for (int64_t iw = w0; iw < w1; iw += g.dw) {
              const C v = C(xp[ih * g.W + iw]);
              if (v > best || std::isnan(v)) {  // NaN wins, as in PyTorch
                best = v;
                arg = ih * g.W + iw;
              }
            }
          const int64_t o = (p * g.Ho + oh) * g.Wo + ow;
          out[o] = T(best);
          idx[o] = arg;
        }
    }
  });
}

// ---- avg ----

template <class T>
void avg_pool_kernel(const PoolGeom& g, const T* x, T* out, bool count_include_pad) {
  using C = compute_t<T>;
  parallel_for(0, g.planes, plane_grain(g), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const T* xp = x + p * g.H * g.W;
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
          int64_t h1 = std::min(h0 + g.kh, g.H + g.ph), w1 = std::min(w0 + g.kw, g.W + g.pw);
          const int64_t padded = (h1 - h0) * (w1 - w0);
          h0 = std::max<int64_t>(h0, 0), w0 = std::max<int64_t>(w0, 0);
          h1 = std::min(h1, g.H), w1 = std::min(w1, g.W);
          const int64_t divisor = count_include_pad ? padded : (h1 - h0) * (w1 - w0);
          if (h0 >= h1 || w0 >= w1) {  // a window wholly in the padding
            out[(p * g.Ho + oh) * g.Wo + ow] = T(0);
            continue;
          }
          C s = C(0);
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) s += C(xp[ih * g.W + iw]);
          out[(p * g.Ho + oh) * g.Wo + ow] = T(s / C(divisor));
        }
    }
  });
}

template <class T>
void avg_pool_backward_kernel(const PoolGeom& g, const T* gout, T* dx, bool count_include_pad) {
  using C = compute_t<T>;
  parallel_for(0, g.planes, plane_grain(g), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      T* dp = dx + p * g.H * g.W;
      std::fill(dp, dp + g.H * g.W, T(0));
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
          int64_t h1 = std::min(h0 + g.kh, g.H + g.ph), w1 = std::min(w0 + g.kw, g.W + g.pw);
          const int64_t padded = (h1 - h0) * (w1 - w0);
          h0 = std::max<int64_t>(h0, 0), w0 = std::max<int64_t>(w0, 0);
          h1 = std::min(h1, g.H), w1 = std::min(w1, g.W);
          const int64_t divisor = count_include_pad ? padded : (h1 - h0) * (w1 - w0);
          if (h0 >= h1 || w0 >= w1) continue;
          const C v = C(gout[(p * g.Ho + oh) * g.Wo + ow]) / C(divisor);
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) dp[ih * g.W + iw] = T(C(dp[ih * g.W + iw]) + v);
        }
    }
  });
}

// ---- adaptive avg: window [floor(o * in / out), ceil((o + 1) * in / out)) ----

inline int64_t adaptive_start(int64_t o, int64_t in, int64_t out) { return (o * in) / out; }
inline int64_t adaptive_end(int64_t o, int64_t in, int64_t out) { return ((o + 1) * in + out - 1) / out; }

template <class T, bool kBackward>
void adaptive_avg_kernel(const PoolGeom& g, const T* src, T* dst) {
  using C = compute_t<T>;
  parallel_for(0, g.planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.H * g.W)), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      if constexpr (kBackward) std::fill(dst + p * g.H * g.W, dst + (p + 1) * g.H * g.W, T(0));
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        const int64_t h0 = adaptive_start(oh, g.H, g.Ho), h1 = adaptive_end(oh, g.H, g.Ho);
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          const int64_t w0 = adaptive_start(ow, g.W, g.Wo), w1 = adaptive_end(ow, g.W, g.Wo);
          const C count = C((h1 - h0) * (w1 - w0));
          const int64_t o = (p * g.Ho + oh) * g.Wo + ow;
          if constexpr (kBackward) {
            T* dp = dst + p * g.H * g.W;
            const C v = C(src[o]) / count;
            for (int64_t ih = h0; ih < h1; ++ih)
              for (int64_t iw = w0; iw < w1; ++iw) dp[ih * g.W + iw] = T(C(dp[ih * g.W + iw]) + v);
          } else {
            const T* xp = src + p * g.H * g.W;
            C s = C(0);
            for (int64_t ih = h0; ih < h1; ++ih)
              for (int64_t iw = w0; iw < w1; ++iw) s += C(xp[ih * g.W + iw]);
            dst[o] = T(s / count);
          }
        }
      }
    }
  });
}

}  // namespace

Tensor max_pool2d(const Tensor& x, Pair kernel_size, std::optional<Pair> stride, Pair padding, Pair dilation,
                  bool ceil_mode) {
  const Tensor xc = pool_input(x, "max_pool2d");
  const PoolGeom g = pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d");
  const Shape out_shape = pooled_shape(x, g.Ho, g.Wo);
  Tensor indices = Tensor::empty(out_shape, DType::Int64);
  return autograd_op(
      "max_pool2d", {x},
      [&] {
        Tensor out = Tensor::empty(out_shape, x.dtype());
        if (out.numel() > 0)
          dispatch_floating(x.dtype(), "max_pool2d", [&]<class T>() {
            max_pool_kernel<T>(g, xc.data<T>(), out.data<T>(), indices.data<int64_t>());
          });
        return out;
      },
      [&](const Tensor&) {
        const Shape x_shape = x.shape();
        const DType dtype = x.dtype();
        return BackwardFn([=](const Tensor& gout, const Needs&) -> Grads {
          Tensor gc = contiguous(to_dtype(gout, dtype));
          Tensor dx = zeros(x_shape, dtype);
          const int64_t plane_out = g.Ho * g.Wo, plane_in = g.H * g.W;
          if (dx.numel() > 0)
            dispatch_floating(dtype, "max_pool2d_backward", [&]<class T>() {
              using C = compute_t<T>;
              const T* pg = gc.data<T>();
              const int64_t* pi = indices.data<int64_t>();
              T* pd = dx.data<T>();
              parallel_for(0, g.planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_out)),
                           [&](int64_t pb, int64_t pe) {
                             for (int64_t p = pb; p < pe; ++p)
                               for (int64_t o = p * plane_out; o < (p + 1) * plane_out; ++o) {
                                 T& d = pd[p * plane_in + pi[o]];
                                 d = T(C(d) + C(pg[o]));
                               }
                           });
            });
          return {dx};
        });
      });
}

Tensor avg_pool2d(const Tensor& x, Pair kernel_size, std::optional<Pair> stride, Pair padding, bool ceil_mode,
                  bool count_include_pad) {
  const Tensor xc = pool_input(x, "avg_pool2d");
  const PoolGeom g = pool_geometry(x, kernel_size, stride, padding, {1, 1}, ceil_mode, "avg_pool2d");
  const Shape out_shape = pooled_shape(x, g.Ho, g.Wo);
  return autograd_op(
      "avg_pool2d", {x},
      [&] {
        Tensor out = Tensor::empty(out_shape, x.dtype());
        if (out.numel() > 0)
          dispatch_floating(x.dtype(), "avg_pool2d",
                            [&]<class T>() { avg_pool_kernel<T>(g, xc.data<T>(), out.data<T>(), count_include_pad); });
        return out;
      },
      [&](const Tensor&) {
        const Shape x_shape = x.shape();
        const DType dtype = x.dtype();
        return BackwardFn([=](const Tensor& gout, const Needs&) -> Grads {
          Tensor gc = contiguous(to_dtype(gout, dtype));
          Tensor dx = Tensor::empty(x_shape, dtype);
          if (dx.numel() > 0)
            dispatch_floating(dtype, "avg_pool2d_backward", [&]<class T>() {
              avg_pool_backward_kernel<T>(g, gc.data<T>(), dx.data<T>(), count_include_pad);
            });
          return {dx};
        });
      });
}

Tensor adaptive_avg_pool2d(const Tensor& x, Pair output_size) {
  const Tensor xc = pool_input(x, "adaptive_avg_pool2d");
  KILN_CHECK(output_size[0] >= 0 && output_size[1] >= 0, ValueError,
             "adaptive_avg_pool2d: output_size must be non-negative, got ({}, {})", output_size[0], output_size[1]);
  PoolGeom g{};
  g.H = x.shape()[x.dim() - 2];
  g.W = x.shape()[x.dim() - 1];
  g.planes = numel(Shape(x.shape().begin(), x.shape().end() - 2));
  g.Ho = output_size[0];
  g.Wo = output_size[1];
  KILN_CHECK(g.H > 0 && g.W > 0, ShapeError,
             "adaptive_avg_pool2d: expected an input with non-empty spatial dims, got {}", shape_str(x.shape()));
  const Shape out_shape = pooled_shape(x, g.Ho, g.Wo);
  return autograd_op(
      "adaptive_avg_pool2d", {x},
      [&] {
        Tensor out = Tensor::empty(out_shape, x.dtype());
        if (out.numel() > 0)
          dispatch_floating(x.dtype(), "adaptive_avg_pool2d",
                            [&]<class T>() { adaptive_avg_kernel<T, false>(g, xc.data<T>(), out.data<T>()); });
        return out;
      },
      [&](const Tensor&) {
        const Shape x_shape = x.shape();
        const DType dtype = x.dtype();
        return BackwardFn([=](const Tensor& gout, const Needs&) -> Grads {
          Tensor gc = contiguous(to_dtype(gout, dtype));
          Tensor dx = zeros(x_shape, dtype);
          if (dx.numel() > 0 && gc.numel() > 0)
            dispatch_floating(dtype, "adaptive_avg_pool2d_backward",
                              [&]<class T>() { adaptive_avg_kernel<T, true>(g, gc.data<T>(), dx.data<T>()); });
          return {dx};
        });
      });
}

}  // namespace kiln::nn::functional
