// conv2d by im2col + GEMM. Per sample and group, the receptive fields are
// unrolled into a (Cg*kh*kw, Ho*Wo) matrix (col), and out = W_g @ col. The
// backward runs the same products transposed: dcol = W_g^T @ g, folded back
// into the input with col2im, and dW_g += g @ col^T.
//
// Threading: samples run in parallel on our pool, each task with its own
// col buffer (and weight-gradient accumulator), and OpenBLAS on one thread.
// Per-sample products are small (M = out_channels / groups), where OpenBLAS's
// own threading pays little; one task per core does better.
#include <cstring>
#include <vector>

#include "eager/nn/common.h"
#include "eager/nn/functional.h"
#include "runtime/cudnn.h"

namespace kiln::nn::functional {
namespace {
using namespace detail;

struct ConvGeom {
  int64_t N, C, H, W;      // input
  int64_t O, kh, kw;       // weight (O, C / groups, kh, kw)
  int64_t sh, sw, ph, pw, dh, dw, groups;
  int64_t Ho, Wo;
  int64_t Cg() const { return C / groups; }
  int64_t Og() const { return O / groups; }
  int64_t K() const { return Cg() * kh * kw; }  // rows of col
  int64_t P() const { return Ho * Wo; }          // columns of col
  // A 1x1 kernel at stride 1 without padding reads the input as col itself.
  bool direct() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

// col (K, P) from one sample's group of channels x (Cg, H, W).
template <class T>
void im2col(const ConvGeom& g, const T* x, T* col) {
  const int64_t P = g.P();
  for (int64_t c = 0; c < g.Cg(); ++c)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        T* row = col + ((c * g.kh + i) * g.kw + j) * P;
        const T* plane = x + c * g.H * g.W;
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          T* dst = row + oh * g.Wo;
          const int64_t ih = oh * g.sh - g.ph + i * g.dh;
          if (ih < 0 || ih >= g.H) {
            std::fill(dst, dst + g.Wo, T(0));
            continue;
          }
          const T* src = plane + ih * g.W;
          const int64_t off = j * g.dw - g.pw;  // iw = ow * sw + off
          if (g.sw == 1) {
            // The valid ow range is one run: copy it, zero the padding.
            const int64_t lo = std::clamp<int64_t>(-off, 0, g.Wo), hi = std::clamp<int64_t>(g.W - off, lo, g.Wo);
            std::fill(dst, dst + lo, T(0));
            std::memcpy(dst + lo, src + lo + off, sizeof(T) * (hi - lo));
            std::fill(dst + hi, dst + g.Wo, T(0));
          } else {
            for (int64_t ow = 0; ow < g.Wo; ++ow) {
              const int64_t iw = ow * g.sw + off;
              dst[ow] = iw >= 0 && iw < g.W ? src[iw] : T(0);
            }
          }
        }
      }
}

// Adds col (K, P) back into one sample's group of channels dx (Cg, H, W).
template <class T>
void col2im(const ConvGeom& g, const T* col, T* dx) {
  const int64_t P = g.P();
  for (int64_t c = 0; c < g.Cg(); ++c)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        const T* row = col + ((c * g.kh + i) * g.kw + j) * P;
        T* plane = dx + c * g.H * g.W;
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          const int64_t ih = oh * g.sh - g.ph + i * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          const T* src = row + oh * g.Wo;
          T* dst = plane + ih * g.W;
          const int64_t off = j * g.dw - g.pw;
          if (g.sw == 1) {
            const int64_t lo = std::clamp<int64_t>(-off, 0, g.Wo), hi = std::clamp<int64_t>(g.W - off, lo, g.Wo);
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow + off] += src[ow];
          } else {
            for (int64_t ow = 0; ow < g.Wo; ++ow) {
              const int64_t iw = ow * g.sw + off;
              if (iw >= 0 && iw < g.W) dst[iw] += src[ow];
            }
          }
        }
      }
}

// Samples split into this many chunks, one task each.
int64_t sample_chunks(const ConvGeom& g) { return std::max<int64_t>(1, std::min<int64_t>(g.N, num_threads())); }

// Runs f(chunk, first sample, end sample) per chunk on the pool. With more
// than one chunk, OpenBLAS runs single-threaded meanwhile: its own threads
// on top of ours would oversubscribe the cores (measured 10x slower).
template <class F>
void for_chunks(int64_t N, int64_t chunks, F&& f) {
  std::optional<BlasThreadsGuard> one_thread;
  if (chunks > 1) one_thread.emplace(1);
  parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) f(c, N * c / chunks, N * (c + 1) / chunks);
  });
}

template <class T>
void conv_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* out) {
  const int64_t K = g.K(), P = g.P(), Og = g.Og(), chunks = sample_chunks(g);
  for_chunks(g.N, chunks, [&](int64_t, int64_t nb, int64_t ne) {
    std::vector<T> col(g.direct() ? 0 : K * P);
    for (int64_t n = nb; n < ne; ++n) {
      T* on = out + n * g.O * P;
      if (bias)
        for (int64_t o = 0; o < g.O; ++o) std::fill(on + o * P, on + (o + 1) * P, bias[o]);
      for (int64_t gr = 0; gr < g.groups; ++gr) {
        const T* xg = x + (n * g.C + gr * g.Cg()) * g.H * g.W;
        const T* c = xg;
        if (!g.direct()) {
          im2col(g, xg, col.data());
          c = col.data();
        }
        gemm<T>(false, false, Og, P, K, T(1), w + gr * Og * K, K, c, P, bias ? T(1) : T(0), on + gr * Og * P, P);
      }
    }
  });
}

// dx (zeroed by the caller unless direct) and dw (overwritten); either may be null.
template <class T>
void conv_backward(const ConvGeom& g, const T* x, const T* w, const T* gout, T* dx, T* dw) {
  const int64_t K = g.K(), P = g.P(), Og = g.Og(), chunks = sample_chunks(g);
  const int64_t wsize = g.O * K;
  // Each chunk sums its samples' weight gradients into its own buffer.
  std::vector<std::vector<T>> partial(dw ? chunks : 0);
  for_chunks(g.N, chunks, [&](int64_t chunk, int64_t nb, int64_t ne) {
    std::vector<T> col(g.direct() ? 0 : K * P);
    T* dwc = nullptr;
    if (dw) {
      if (chunk == 0) {
        dwc = dw;
        std::fill(dw, dw + wsize, T(0));
      } else {
        partial[chunk].assign(wsize, T(0));
        dwc = partial[chunk].data();
      }
    }
    for (int64_t n = nb; n < ne; ++n) {
      for (int64_t gr = 0; gr < g.groups; ++gr) {
        const T* gg = gout + (n * g.O + gr * Og) * P;
        const T* wg = w + gr * Og * K;
        const int64_t xoff = (n * g.C + gr * g.Cg()) * g.H * g.W;
        if (dx) {
          if (g.direct()) {
            gemm<T>(true, false, K, P, Og, T(1), wg, K, gg, P, T(0), dx + xoff, P);
          } else {
            gemm<T>(true, false, K, P, Og, T(1), wg, K, gg, P, T(0), col.data(), P);
            col2im(g, col.data(), dx + xoff);
          }
        }
        if (dwc) {
          const T* c = x + xoff;
          if (!g.direct()) {
            im2col(g, x + xoff, col.data());
            c = col.data();
          }
          gemm<T>(false, true, Og, K, P, T(1), gg, P, c, P, T(1), dwc + gr * Og * K, K);
        }
      }
    }
  });
  for (int64_t c = 1; c < static_cast<int64_t>(partial.size()); ++c)
    for (int64_t i = 0; i < wsize; ++i) dw[i] += partial[c][i];
}

// From the (N, C, H, W) input shape and the weight's; a dynamic H or W
// gives a dynamic Ho or Wo.
ConvGeom geometry(const Shape& x4, const Shape& weight, Pair stride, Pair padding, Pair dilation, int64_t groups) {
  ConvGeom g;
  g.N = x4[0];
  g.C = x4[1];
  g.H = x4[2];
  g.W = x4[3];
  g.O = weight[0];
  g.kh = weight[2];
  g.kw = weight[3];
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.groups = groups;
  g.Ho = is_dynamic(g.H) ? kDynamic : (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = is_dynamic(g.W) ? kDynamic : (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  return g;
}

Tensor as_compute(const Tensor& t) { return t.defined() ? contiguous(to_dtype(t, compute_dtype(t.dtype()))) : t; }

// The geometry as cuDNN takes it (GPU tensors go to cuDNN, in their dtype).
cudnn::Conv2d cudnn_geometry(const ConvGeom& g, DType dtype) {
  return {g.N, g.C, g.H, g.W, g.O, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups, g.Ho, g.Wo, dtype};
}

Tensor conv_forward_tensor(const ConvGeom& g, const Tensor& x4, const Tensor& weight, const Tensor& bias) {
  if (!x4.device().is_cpu()) {
    Tensor out = Tensor::empty({g.N, g.O, g.Ho, g.Wo}, x4.dtype(), x4.device());
    if (out.numel() == 0) return out;
    cudnn::conv2d_forward(x4.device().index, cudnn_geometry(g, x4.dtype()), contiguous(x4).address(),
                          contiguous(weight).address(), out.address());
    return bias.defined() ? add(out, reshape(bias, {1, g.O, 1, 1})) : out;
  }
  Tensor x = as_compute(x4), w = as_compute(weight), b = as_compute(bias);
  Tensor out = Tensor::empty({g.N, g.O, g.Ho, g.Wo}, x.dtype());
  if (out.numel() == 0) return to_dtype(out, x4.dtype());
  dispatch_compute(x.dtype(), "conv2d", [&]<class T>() {
    conv_forward<T>(g, x.data<T>(), w.data<T>(), b.defined() ? b.data<T>() : nullptr, out.data<T>());
  });
  return to_dtype(out, x4.dtype());
}

}  // namespace

// The meta rule: every check, and the output type.
TensorType conv2d_meta(const TensorType& x, const TensorType& weight, const TensorType& bias, Pair stride,
                       Pair padding, Pair dilation, int64_t groups) {
  check_floating(x, "conv2d", "input");
  check_same_dtype(x, weight, "conv2d", "weight");
  check_same_dtype(x, bias, "conv2d", "bias");
  const int64_t xdim = static_cast<int64_t>(x.shape.size());
  KILN_CHECK(xdim == 3 || xdim == 4, ShapeError,
             "conv2d: expected a 4-D input (N, C, H, W) or a 3-D unbatched one (C, H, W), got {}",
             shape_str(x.shape));
  KILN_CHECK(weight.shape.size() == 4, ShapeError,
             "conv2d: expected weight of shape (out_channels, in_channels / groups, kH, kW), got {}",
             shape_str(weight.shape));
  KILN_CHECK(groups >= 1, ValueError, "conv2d: groups must be positive, got {}", groups);
  KILN_CHECK(stride[0] > 0 && stride[1] > 0, ValueError, "conv2d: stride must be positive, got ({}, {})", stride[0],
             stride[1]);
  KILN_CHECK(dilation[0] > 0 && dilation[1] > 0, ValueError, "conv2d: dilation must be positive, got ({}, {})",
             dilation[0], dilation[1]);
  KILN_CHECK(padding[0] >= 0 && padding[1] >= 0, ValueError, "conv2d: padding must be non-negative, got ({}, {})",
             padding[0], padding[1]);
  const int64_t O = weight.shape[0];
  KILN_CHECK(is_dynamic(O) || O % groups == 0, ShapeError,
             "conv2d: out_channels ({}, weight {}) must be divisible by groups ({})", O, shape_str(weight.shape),
             groups);
  const bool batched = xdim == 4;
  const int64_t C = x.shape[batched ? 1 : 0];
  if (!is_dynamic(C) && !is_dynamic(weight.shape[1]) && C != weight.shape[1] * groups) {
    const std::string groups_note = groups == 1 ? "" : fmt::format(" * groups {}", groups);
    fail<ShapeError>("conv2d: expected input of shape {} with C = {} (weight {}{}), got {}",
                     batched ? "(N, C, H, W)" : "(C, H, W)", weight.shape[1] * groups, shape_str(weight.shape),
                     groups_note, shape_str(x.shape));
  }
  KILN_CHECK(!bias.defined || (bias.shape.size() == 1 && same_size(bias.shape[0], O)), ShapeError,
             "conv2d: expected bias of shape ({}) (weight {}), got {}", O, shape_str(weight.shape),
             shape_str(bias.shape));
  const Shape x4 = batched ? x.shape : Shape{1, x.shape[0], x.shape[1], x.shape[2]};
  const ConvGeom g = geometry(x4, weight.shape, stride, padding, dilation, groups);
  const int64_t eh = g.dh * (g.kh - 1) + 1, ew = g.dw * (g.kw - 1) + 1;
  KILN_CHECK((is_dynamic(g.H) || g.H + 2 * g.ph >= eh) && (is_dynamic(g.W) || g.W + 2 * g.pw >= ew), ShapeError,
             "conv2d: the kernel ({}, {}) (dilated: ({}, {})) is larger than the padded input ({}, {}) (input {})",
             g.kh, g.kw, eh, ew, g.H + 2 * g.ph, g.W + 2 * g.pw, shape_str(x.shape));
  Shape out = batched ? Shape{g.N, g.O, g.Ho, g.Wo} : Shape{g.O, g.Ho, g.Wo};
  return {out, x.dtype, x.device};
}


std::vector<Tensor> conv2d_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, Pair stride,
                                    Pair padding, Pair dilation, int64_t groups, bool need_input, bool need_weight) {
  if (TraceHook* trace = active_trace())
    return trace->record(op_def("conv2d_backward"), {grad, x, weight},
                         make_attrs("stride, padding, dilation, groups, need_input, need_weight", stride, padding,
                                    dilation, groups, need_input, need_weight));
  const bool batched = x.dim() == 4;
  const Tensor x4 = batched ? x : view(x.detach(), {1, x.shape()[0], x.shape()[1], x.shape()[2]});
  const ConvGeom g = geometry(x4.shape(), weight.shape(), stride, padding, dilation, groups);
  if (!x.device().is_cpu()) {
    const int device = x.device().index;
    const cudnn::Conv2d cg = cudnn_geometry(g, x.dtype());
    const Tensor go = contiguous(reshape(grad, {g.N, g.O, g.Ho, g.Wo}));
    std::vector<Tensor> out;
    if (need_input) {
      Tensor dx = zeros(x4.shape(), x.dtype(), x.device());
      if (dx.numel() > 0 && go.numel() > 0)
        cudnn::conv2d_backward_data(device, cg, contiguous(weight).address(), go.address(), dx.address());
      out.push_back(reshape(dx, x.shape()));
    }
    if (need_weight) {
      Tensor dw = zeros(weight.shape(), x.dtype(), x.device());
      if (dw.numel() > 0 && go.numel() > 0)
        cudnn::conv2d_backward_filter(device, cg, contiguous(x4).address(), go.address(), dw.address());
      out.push_back(dw);
    }
    return out;
  }
  Tensor xc = as_compute(x4), wc = as_compute(weight);
  Tensor go = as_compute(reshape(grad, {g.N, g.O, g.Ho, g.Wo}));
  Tensor dx = need_input ? (g.direct() ? Tensor::empty(xc.shape(), xc.dtype()) : zeros(xc.shape(), xc.dtype()))
                         : Tensor();
  Tensor dw = need_weight ? Tensor::empty(wc.shape(), wc.dtype()) : Tensor();
  if (dw.defined() && (g.N == 0 || g.P() == 0)) fill(dw, 0);
  if (g.N > 0 && g.P() > 0 && (need_input || need_weight))
    dispatch_compute(xc.dtype(), "conv2d_backward", [&]<class T>() {
      conv_backward<T>(g, xc.data<T>(), wc.data<T>(), go.data<T>(), dx.defined() ? dx.data<T>() : nullptr,
                       dw.defined() ? dw.data<T>() : nullptr);
    });
  std::vector<Tensor> out;
  if (need_input) out.push_back(reshape(dx, x.shape()));
  if (need_weight) out.push_back(dw);
  return out;
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Pair stride, Pair padding, Pair dilation,
              int64_t groups) {
  conv2d_meta(type_of(x), type_of(weight), type_of(bias), stride, padding, dilation, groups);
  const bool batched = x.dim() == 4;
  return autograd_op(
      "conv2d", {x, weight, bias}, KILN_ATTRS(stride, padding, dilation, groups),
      [&] {
        const Tensor x4 = batched ? x : view(x.detach(), {1, x.shape()[0], x.shape()[1], x.shape()[2]});
        const ConvGeom g = geometry(x4.shape(), weight.shape(), stride, padding, dilation, groups);
        Tensor out = conv_forward_tensor(g, x4, weight, bias);
        return batched ? out : view(out, {g.O, g.Ho, g.Wo});
      },
      [&](const Tensor&) {
        SavedTensor sx(x), sw(weight);
        return BackwardFn([=](const Tensor& gout, const Needs& need) -> Grads {
          Grads grads(3);
          if (need[2]) grads[2] = sum(gout, batched ? DimList{0, 2, 3} : DimList{1, 2});
          if (!need[0] && !need[1]) return grads;
          std::vector<Tensor> d =
              conv2d_backward(gout, sx.get(), sw.get(), stride, padding, dilation, groups, need[0], need[1]);
          if (need[0]) grads[0] = d[0];
          if (need[1]) grads[1] = d.back();
          return grads;
        });
      });
}

namespace {
Pair pair_attr(const Attrs& a, const char* name) {
  auto v = a.get<std::vector<int64_t>>(name);
  return {v.at(0), v.at(1)};
}
}  // namespace

void detail::register_conv_ops() {
  const std::vector<AttrSpec> geom = {{"stride", AttrKind::Ints}, {"padding", AttrKind::Ints},
                                      {"dilation", AttrKind::Ints}, {"groups", AttrKind::Int}};
  register_op({.name = "conv2d",
               .num_inputs = 3,
               .operands = "x, weight, bias?",
               .attrs = geom,
               .meta = KILN_META(conv2d_meta(in[0], in[1], in[2], pair_attr(a, "stride"), pair_attr(a, "padding"),
                                             pair_attr(a, "dilation"), a.get<int64_t>("groups"))),
               .run = KILN_RUN(conv2d(in[0], in[1], in[2], pair_attr(a, "stride"), pair_attr(a, "padding"),
                                      pair_attr(a, "dilation"), a.get<int64_t>("groups")))});
  std::vector<AttrSpec> back = geom;
  back.push_back({"need_input", AttrKind::Bool});
  back.push_back({"need_weight", AttrKind::Bool});
  register_op({.name = "conv2d_backward",
               .num_inputs = 3,
               .num_outputs = -1,
               .operands = "grad, x, weight",
               .attrs = back,
               .meta = [](const std::vector<TensorType>& in, const Attrs& a) -> std::vector<TensorType> {
                 std::vector<TensorType> out;
                 if (a.get<bool>("need_input")) out.push_back({in[1].shape, compute_dtype(in[1].dtype), in[1].device});
                 if (a.get<bool>("need_weight")) out.push_back({in[2].shape, compute_dtype(in[2].dtype), in[2].device});
                 return out;
               },
               .run = [](const std::vector<Tensor>& in, const Attrs& a) -> std::vector<Tensor> {
                 return conv2d_backward(in[0], in[1], in[2], pair_attr(a, "stride"), pair_attr(a, "padding"),
                                        pair_attr(a, "dilation"), a.get<int64_t>("groups"), a.get<bool>("need_input"),
                                        a.get<bool>("need_weight"));
               }});
}

}  // namespace kiln::nn::functional
