// 2-D pooling over NCHW (or unbatched CHW) inputs. Each (n, c) plane is
// independent, so planes run in parallel. max_pool2d saves the argmax of
// each window (a flat index into its plane) and routes gradients through it.
#include <cmath>
#include <limits>

#include "eager/cuda/launch.h"
#include "eager/nn/common.h"
#include "eager/nn/functional.h"
#include "eager/nn/pool_window.h"

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

// The shared checks.
void check_pool_input(const TensorType& x, const char* op) {
  check_floating(x, op, "input");
  KILN_CHECK(x.shape.size() == 3 || x.shape.size() == 4, ShapeError,
             "{}: expected a 4-D input (N, C, H, W) or a 3-D unbatched one (C, H, W), got {}", op,
             shape_str(x.shape));
}

Shape pooled_shape(const Shape& x, int64_t Ho, int64_t Wo) {
  Shape s = x;
  s[s.size() - 2] = Ho;
  s[s.size() - 1] = Wo;
  return s;
}

// x may have dynamic dims (planes, and a dynamic H / W gives a dynamic Ho / Wo).
PoolGeom pool_geometry(const Shape& x, Pair k, std::optional<Pair> stride_opt, Pair pad, Pair dil, bool ceil_mode,
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
  g.H = x[x.size() - 2];
  g.W = x[x.size() - 1];
  g.planes = static_numel(Shape(x.begin(), x.end() - 2));
  g.kh = k[0], g.kw = k[1], g.sh = s[0], g.sw = s[1], g.ph = pad[0], g.pw = pad[1], g.dh = dil[0], g.dw = dil[1];
  g.Ho = is_dynamic(g.H) ? kDynamic : pooled_size(g.H, g.kh, g.ph, g.sh, g.dh, ceil_mode);
  g.Wo = is_dynamic(g.W) ? kDynamic : pooled_size(g.W, g.kw, g.pw, g.sw, g.dw, ceil_mode);
  KILN_CHECK(g.Ho != 0 && g.Wo != 0, ShapeError,
             "{}: the output would be empty: input {} with kernel_size ({}, {}), stride ({}, {}), padding ({}, {}), "
             "dilation ({}, {}) gives ({}, {})",
             op, shape_str(x), g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.Ho, g.Wo);
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
          const int64_t o = (p * g.Ho + oh) * g.Wo + ow;
          C best;
          max_window<C>(g, oh, ow, [xp](int64_t i) { return C(xp[i]); }, best, idx[o]);
          out[o] = T(best);
        }
    }
  });
}

// ---- avg and adaptive avg: `window(oh, ow)` is avg_window or adaptive_window ----

template <class T, class Window>
void avg_kernel(const PoolGeom& g, const T* x, T* out, Window window) {
  using C = compute_t<T>;
  parallel_for(0, g.planes, plane_grain(g), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const T* xp = x + p * g.H * g.W;
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          const AvgWindow w = window(oh, ow);
          C s = C(0);
          for (int64_t ih = w.h0; ih < w.h1; ++ih)
            for (int64_t iw = w.w0; iw < w.w1; ++iw) s += C(xp[ih * g.W + iw]);
          out[(p * g.Ho + oh) * g.Wo + ow] = w.empty() ? T(0) : T(s / C(w.divisor));
        }
    }
  });
}

template <class T, class Window>
void avg_backward_kernel(const PoolGeom& g, const T* gout, T* dx, Window window) {
  using C = compute_t<T>;
  parallel_for(0, g.planes, plane_grain(g), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      T* dp = dx + p * g.H * g.W;
      std::fill(dp, dp + g.H * g.W, T(0));
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          const AvgWindow w = window(oh, ow);
          if (w.empty()) continue;
          const C v = C(gout[(p * g.Ho + oh) * g.Wo + ow]) / C(w.divisor);
          for (int64_t ih = w.h0; ih < w.h1; ++ih)
            for (int64_t iw = w.w0; iw < w.w1; ++iw) dp[ih * g.W + iw] = T(C(dp[ih * g.W + iw]) + v);
        }
    }
  });
}

}  // namespace

// ---- meta rules ----
TensorType max_pool_meta(const TensorType& x, Pair k, std::optional<Pair> stride, Pair padding, Pair dilation,
                         bool ceil_mode) {
  check_pool_input(x, "max_pool2d");
  const PoolGeom g = pool_geometry(x.shape, k, stride, padding, dilation, ceil_mode, "max_pool2d");
  return {pooled_shape(x.shape, g.Ho, g.Wo), x.dtype, x.device};
}

TensorType avg_pool_meta(const TensorType& x, Pair k, std::optional<Pair> stride, Pair padding, bool ceil_mode) {
  check_pool_input(x, "avg_pool2d");
  const PoolGeom g = pool_geometry(x.shape, k, stride, padding, {1, 1}, ceil_mode, "avg_pool2d");
  return {pooled_shape(x.shape, g.Ho, g.Wo), x.dtype, x.device};
}

TensorType adaptive_meta(const TensorType& x, Pair output_size) {
  check_pool_input(x, "adaptive_avg_pool2d");
  KILN_CHECK(output_size[0] >= 0 && output_size[1] >= 0, ValueError,
             "adaptive_avg_pool2d: output_size must be non-negative, got ({}, {})", output_size[0], output_size[1]);
  const int64_t H = x.shape[x.shape.size() - 2], W = x.shape.back();
  KILN_CHECK(H != 0 && W != 0, ShapeError,
             "adaptive_avg_pool2d: expected an input with non-empty spatial dims, got {}", shape_str(x.shape));
  return {pooled_shape(x.shape, output_size[0], output_size[1]), x.dtype, x.device};
}

PoolGeom adaptive_geometry(const Shape& x, Pair output_size) {
  PoolGeom g{};
  g.H = x[x.size() - 2];
  g.W = x[x.size() - 1];
  g.planes = numel(Shape(x.begin(), x.end() - 2));
  g.Ho = output_size[0];
  g.Wo = output_size[1];
  // (the largest window's extent, for the CPU's work split only)
  g.kh = g.Ho > 0 ? g.H / g.Ho + 2 : 1;
  g.kw = g.Wo > 0 ? g.W / g.Wo + 2 : 1;
  return g;
}

Pair pair_attr(const Attrs& a, const char* name) {
  auto v = a.get<std::vector<int64_t>>(name);
  return {v.at(0), v.at(1)};
}
std::optional<Pair> opt_pair_attr(const Attrs& a, const char* name) {
  auto v = a.get<std::optional<std::vector<int64_t>>>(name);
  if (!v) return std::nullopt;
  return Pair{v->at(0), v->at(1)};
}


// ---- backward kernels (ops of their own, for backward() inside a trace) ----

Tensor max_pool2d_backward(const Tensor& grad, const Tensor& x, const Tensor& indices) {
  return trace_or("max_pool2d_backward", {grad, x, indices}, KILN_NO_ATTRS, [&] {
    const DType dtype = x.dtype();
    Tensor gc = contiguous(to_dtype(grad, dtype));
    Tensor idx = contiguous(indices);
    const int64_t planes = numel(Shape(x.shape().begin(), x.shape().end() - 2));
    const int64_t plane_in = x.shape()[x.dim() - 2] * x.shape()[x.dim() - 1];
    const int64_t plane_out = gc.shape()[gc.dim() - 2] * gc.shape()[gc.dim() - 1];
    if (!x.device().is_cpu())  // each window's gradient added at its argmax (atomically: windows overlap)
      return reshape(scatter_add(zeros({planes, plane_in}, dtype, x.device()), 1, reshape(idx, {planes, plane_out}),
                                 reshape(gc, {planes, plane_out})),
                     x.shape());
    Tensor dx = zeros(x.shape(), dtype);
    if (dx.numel() > 0)
      dispatch_floating(dtype, "max_pool2d_backward", [&]<class T>() {
        using C = compute_t<T>;
        const T* pg = gc.data<T>();
        const int64_t* pi = idx.data<int64_t>();
        T* pd = dx.data<T>();
        parallel_for(0, planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_out)),
                     [&](int64_t pb, int64_t pe) {
                       for (int64_t p = pb; p < pe; ++p)
                         for (int64_t o = p * plane_out; o < (p + 1) * plane_out; ++o) {
                           T& d = pd[p * plane_in + pi[o]];
                           d = T(C(d) + C(pg[o]));
                         }
                     });
      });
    return dx;
  });
}

Tensor avg_pool2d_backward(const Tensor& grad, const Tensor& x, Pair kernel_size, std::optional<Pair> stride,
                           Pair padding, bool ceil_mode, bool count_include_pad) {
  return trace_or("avg_pool2d_backward", {grad, x}, KILN_ATTRS(kernel_size, stride, padding, ceil_mode, count_include_pad), [&] {
    const PoolGeom g = pool_geometry(x.shape(), kernel_size, stride, padding, {1, 1}, ceil_mode, "avg_pool2d");
    const DType dtype = x.dtype();
    Tensor gc = contiguous(to_dtype(grad, dtype));
    if (!x.device().is_cpu()) {
      Tensor dx = zeros(x.shape(), dtype, x.device());
      cuda_kernels::pool_backward("avg", g, count_include_pad, gc, dx);
      return dx;
    }
    Tensor dx = Tensor::empty(x.shape(), dtype);
    if (dx.numel() > 0)
      dispatch_floating(dtype, "avg_pool2d_backward", [&]<class T>() {
        avg_backward_kernel<T>(g, gc.data<T>(), dx.data<T>(),
                               [&](int64_t oh, int64_t ow) { return avg_window(g, oh, ow, count_include_pad); });
      });
    return dx;
  });
}

Tensor adaptive_avg_pool2d_backward(const Tensor& grad, const Tensor& x) {
  return trace_or("adaptive_avg_pool2d_backward", {grad, x}, KILN_NO_ATTRS, [&] {
    const PoolGeom g = adaptive_geometry(x.shape(), {grad.shape()[grad.dim() - 2], grad.shape()[grad.dim() - 1]});
    const DType dtype = x.dtype();
    Tensor gc = contiguous(to_dtype(grad, dtype));
    Tensor dx = zeros(x.shape(), dtype, x.device());
    if (dx.numel() == 0 || gc.numel() == 0) return dx;
    if (!x.device().is_cpu()) {
      cuda_kernels::pool_backward("adaptive", g, false, gc, dx);
      return dx;
    }
    dispatch_floating(dtype, "adaptive_avg_pool2d_backward", [&]<class T>() {
      avg_backward_kernel<T>(g, gc.data<T>(), dx.data<T>(),
                             [&](int64_t oh, int64_t ow) { return adaptive_window(g, oh, ow); });
    });
    return dx;
  });
}

// ---- the ops ----

namespace {
// The op: the output and the argmax indices its backward reads.
std::vector<Tensor> max_pool2d_with_indices(const Tensor& x, Pair kernel_size, std::optional<Pair> stride,
                                            Pair padding, Pair dilation, bool ceil_mode) {
  const TensorType type = max_pool_meta(type_of(x), kernel_size, stride, padding, dilation, ceil_mode);
  return autograd_op_n(
      "max_pool2d", {x}, KILN_ATTRS(kernel_size, stride, padding, dilation, ceil_mode),
      [&]() -> std::vector<Tensor> {
        const Tensor xc = contiguous(x.detach());
        const PoolGeom g = pool_geometry(x.shape(), kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d");
        Tensor out = Tensor::empty(type.shape, x.dtype(), x.device());
        Tensor indices = Tensor::empty(type.shape, DType::Int64, x.device());
        if (!x.device().is_cpu()) {
          cuda_kernels::pool("max", g, false, xc, out, indices);
          return {out, indices};
        }
        if (out.numel() > 0)
          dispatch_floating(x.dtype(), "max_pool2d", [&]<class T>() {
            max_pool_kernel<T>(g, xc.data<T>(), out.data<T>(), indices.data<int64_t>());
          });
        return {out, indices};
      },
      [&](const std::vector<Tensor>& outs) {
        SavedTensor sx(x);
        const Tensor indices = outs[1];
        return BackwardFn([=](const Tensor& gout, const Needs&) -> Grads {
          return {max_pool2d_backward(gout, sx.get(), indices)};
        });
      });
}
}  // namespace

Tensor max_pool2d(const Tensor& x, Pair kernel_size, std::optional<Pair> stride, Pair padding, Pair dilation,
                  bool ceil_mode) {
  return max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)[0];
}

Tensor avg_pool2d(const Tensor& x, Pair kernel_size, std::optional<Pair> stride, Pair padding, bool ceil_mode,
                  bool count_include_pad) {
  const TensorType type = avg_pool_meta(type_of(x), kernel_size, stride, padding, ceil_mode);
  return autograd_op(
      "avg_pool2d", {x}, KILN_ATTRS(kernel_size, stride, padding, ceil_mode, count_include_pad),
      [&] {
        const Tensor xc = contiguous(x.detach());
        const PoolGeom g = pool_geometry(x.shape(), kernel_size, stride, padding, {1, 1}, ceil_mode, "avg_pool2d");
        Tensor out = Tensor::empty(type.shape, x.dtype(), x.device());
        if (!x.device().is_cpu()) {
          cuda_kernels::pool("avg", g, count_include_pad, xc, out);
          return out;
        }
        if (out.numel() > 0)
          dispatch_floating(x.dtype(), "avg_pool2d", [&]<class T>() {
            avg_kernel<T>(g, xc.data<T>(), out.data<T>(),
                          [&](int64_t oh, int64_t ow) { return avg_window(g, oh, ow, count_include_pad); });
          });
        return out;
      },
      [&](const Tensor&) {
        SavedTensor sx(x);
        return BackwardFn([=](const Tensor& gout, const Needs&) -> Grads {
          return {avg_pool2d_backward(gout, sx.get(), kernel_size, stride, padding, ceil_mode, count_include_pad)};
        });
      });
}

Tensor adaptive_avg_pool2d(const Tensor& x, Pair output_size) {
  const TensorType type = adaptive_meta(type_of(x), output_size);
  return autograd_op(
      "adaptive_avg_pool2d", {x}, KILN_ATTRS(output_size),
      [&] {
        const Tensor xc = contiguous(x.detach());
        const PoolGeom g = adaptive_geometry(x.shape(), output_size);
        Tensor out = Tensor::empty(type.shape, x.dtype(), x.device());
        if (!x.device().is_cpu()) {
          cuda_kernels::pool("adaptive", g, false, xc, out);
          return out;
        }
        if (out.numel() > 0)
          dispatch_floating(x.dtype(), "adaptive_avg_pool2d", [&]<class T>() {
            avg_kernel<T>(g, xc.data<T>(), out.data<T>(), [&](int64_t oh, int64_t ow) { return adaptive_window(g, oh, ow); });
          });
        return out;
      },
      [&](const Tensor&) {
        SavedTensor sx(x);
        return BackwardFn([=](const Tensor& gout, const Needs&) -> Grads {
          return {adaptive_avg_pool2d_backward(gout, sx.get())};
        });
      });
}

void detail::register_pool_ops() {
  register_op({.name = "max_pool2d",
               .num_outputs = 2,
               .attrs = {{"kernel_size", AttrKind::Ints}, {"stride", AttrKind::Ints, true}, {"padding", AttrKind::Ints},
                         {"dilation", AttrKind::Ints}, {"ceil_mode", AttrKind::Bool}},
               .meta = [](const std::vector<TensorType>& in, const Attrs& a) -> std::vector<TensorType> {
                 TensorType out = max_pool_meta(in[0], pair_attr(a, "kernel_size"), opt_pair_attr(a, "stride"),
                                                pair_attr(a, "padding"), pair_attr(a, "dilation"),
                                                a.get<bool>("ceil_mode"));
                 return {out, {out.shape, DType::Int64, out.device}};
               },
               .run = KILN_RUN(max_pool2d_with_indices(in[0], pair_attr(a, "kernel_size"), opt_pair_attr(a, "stride"),
                                                       pair_attr(a, "padding"), pair_attr(a, "dilation"),
                                                       a.get<bool>("ceil_mode")))});
  register_op({.name = "max_pool2d_backward",
               .num_inputs = 3,
               .operands = "grad, x, indices",
               .meta = KILN_META(in[1]),
               .run = KILN_RUN(max_pool2d_backward(in[0], in[1], in[2]))});
  const std::vector<AttrSpec> avg = {{"kernel_size", AttrKind::Ints}, {"stride", AttrKind::Ints, true},
                                     {"padding", AttrKind::Ints}, {"ceil_mode", AttrKind::Bool},
                                     {"count_include_pad", AttrKind::Bool}};
  register_op({.name = "avg_pool2d",
               .attrs = avg,
               .meta = KILN_META(avg_pool_meta(in[0], pair_attr(a, "kernel_size"), opt_pair_attr(a, "stride"),
                                               pair_attr(a, "padding"), a.get<bool>("ceil_mode"))),
               .run = KILN_RUN(avg_pool2d(in[0], pair_attr(a, "kernel_size"), opt_pair_attr(a, "stride"),
                                          pair_attr(a, "padding"), a.get<bool>("ceil_mode"),
                                          a.get<bool>("count_include_pad")))});
  register_op({.name = "avg_pool2d_backward",
               .num_inputs = 2,
               .operands = "grad, x",
               .attrs = avg,
               .meta = KILN_META(in[1]),
               .run = KILN_RUN(avg_pool2d_backward(in[0], in[1], pair_attr(a, "kernel_size"), opt_pair_attr(a, "stride"),
                                                   pair_attr(a, "padding"), a.get<bool>("ceil_mode"),
                                                   a.get<bool>("count_include_pad")))});
  register_op({.name = "adaptive_avg_pool2d",
               .attrs = {{"output_size", AttrKind::Ints}},
               .meta = KILN_META(adaptive_meta(in[0], pair_attr(a, "output_size"))),
               .run = KILN_RUN(adaptive_avg_pool2d(in[0], pair_attr(a, "output_size")))});
  register_op({.name = "adaptive_avg_pool2d_backward",
               .num_inputs = 2,
               .operands = "grad, x",
               .meta = KILN_META(in[1]),
               .run = KILN_RUN(adaptive_avg_pool2d_backward(in[0], in[1]))});
}

}  // namespace kiln::nn::functional
