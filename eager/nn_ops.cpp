// Fused eager kernels for softmax, log_softmax and layer_norm: each row is
// read a few times while it is still in cache, instead of going through the
// temporaries their decompositions into primitives would allocate. Rows run
// in parallel; loops keep 16 independent lanes so they vectorize.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "eager/autograd.h"
#include "eager/cuda/launch.h"
#include "eager/loops.h"
#include "eager/op_util.h"
#include "eager/ops.h"
#include "eager/scalar_math.h"
#include "runtime/parallel.h"

namespace kiln {
namespace {

constexpr int64_t kGrain = 32768;  // elements per task
constexpr int64_t kTile = 256;  // columns per task when the softmax dim is not innermost

// Independent lanes per row loop: 256 bytes, eight AVX2 registers, enough
// chains to hide add latency. (gcc fully unrolls a 16-lane loop before
// vectorizing and then fails on selects.)
template <class Acc>
constexpr int64_t kLanes = std::clamp<int64_t>(256 / sizeof(Acc), 8, 64);

// Combines L lanes pairwise: log depth, not one long dependency chain.
template <int64_t L, class Acc, class Combine>
Acc fold_lanes(Acc* acc, const Combine& combine) {
  for (int64_t w = L / 2; w >= 1; w /= 2)
    for (int64_t j = 0; j < w; ++j) acc[j] = combine(acc[j], acc[j + w]);
  return acc[0];
}

// Reduces f(i) over [0, n) with independent lanes (a scalar running
// reduction would not vectorize without -ffast-math): scalars for rows
// shorter than a vector, one vector of lanes below kLanes, kLanes above; each
// then ends in a tail shorter than a vector. (The same helper as in
// reduce.cpp; a shared private header would hold one copy.)
template <class Acc, class F, class Combine>
Acc lane_reduce(int64_t n, Acc init, const F& f, const Combine& combine) {
  constexpr int64_t L = kLanes<Acc>, V = std::max<int64_t>(1, 32 / sizeof(Acc));
  if (n < V) {
    for (int64_t i = 0; i < n; ++i) init = combine(init, f(i));
    return init;
  }
  auto lanes = [&]<int64_t W>() {
    Acc acc[W];
    std::fill(acc, acc + W, init);
    int64_t i = 0;
    for (; i + W <= n; i += W)
      for (int64_t j = 0; j < W; ++j) acc[j] = combine(acc[j], f(i + j));
    if constexpr (W > V)
      for (; i + V <= n; i += V)
        for (int64_t j = 0; j < V; ++j) acc[j] = combine(acc[j], f(i + j));
    for (; i < n; ++i) acc[0] = combine(acc[0], f(i));
    return fold_lanes<W>(acc, combine);
  };
  return n >= L ? lanes.template operator()<L>() : lanes.template operator()<V>();
}

template <class Acc, class F>
Acc lane_sum(int64_t n, const F& f) {
  return lane_reduce<Acc>(n, Acc(0), f, [](Acc a, Acc b) { return a + b; });
}

// Branch-free NaN-propagating max (`|`, not `||`, so it stays a blend).
template <class C>
inline C nan_max(C a, C b) {
  return ((b > a) | (b != b)) ? b : a;
}

template <class C, class T>
C row_max(const T* p, int64_t n) {
  // A lambda, not &nan_max<C>: a function pointer would not be inlined.
  return lane_reduce<C>(n, -std::numeric_limits<C>::infinity(), [&](int64_t i) { return C(p[i]); },
                        [](C a, C b) { return nan_max(a, b); });
}

// float sums add in double: rows can be long and rtol 1e-5 must hold.
template <class C>
using acc_t = std::conditional_t<std::is_same_v<C, float>, double, C>;

// ---- softmax ----

// One row of n elements. A row of all -inf gives NaN (exp(-inf - -inf)), as
// in PyTorch.
template <class T, bool kLog>
void softmax_row(const T* p, T* o, int64_t n) {
  using C = compute_t<T>;
  const C m = row_max<C>(p, n);
  if constexpr (kLog) {
    const C lse = C(std::log(lane_sum<acc_t<C>>(n, [&](int64_t i) { return acc_t<C>(kexp(C(p[i]) - m)); })));
    for (int64_t i = 0; i < n; ++i) o[i] = T(C(p[i]) - m - lse);
  } else if constexpr (std::is_same_v<T, C>) {
    // Store the exponentials and rescale them: one exp per element.
    const C inv = C(1) / C(lane_sum<acc_t<C>>(n, [&](int64_t i) {
      C e = kexp(p[i] - m);
      o[i] = e;
      return acc_t<C>(e);
    }));
    for (int64_t i = 0; i < n; ++i) o[i] *= inv;
  } else {
    // 16-bit outputs would round the stored exponentials: recompute them.
    const C inv = C(1) / C(lane_sum<acc_t<C>>(n, [&](int64_t i) { return acc_t<C>(kexp(C(p[i]) - m)); }));
    for (int64_t i = 0; i < n; ++i) o[i] = T(kexp(C(p[i]) - m) * inv);
  }
}

// Columns [b0, b0 + bw) of an [R, B] slab: the softmax runs down each
// column, vectorized across columns.
template <class T, bool kLog>
void softmax_cols(const T* x, T* o, int64_t R, int64_t B, int64_t bw) {
  using C = compute_t<T>;
  C m[kTile], s[kTile];
  std::fill(m, m + bw, -std::numeric_limits<C>::infinity());
  std::fill(s, s + bw, C(0));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < bw; ++j) {
      C v = C(x[r * B + j]);
      m[j] = nan_max(m[j], v);
    }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < bw; ++j) s[j] += kexp(C(x[r * B + j]) - m[j]);
  for (int64_t j = 0; j < bw; ++j) s[j] = kLog ? C(std::log(s[j])) : C(1) / s[j];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < bw; ++j) {
      C v = C(x[r * B + j]) - m[j];
      o[r * B + j] = T(kLog ? v - s[j] : kexp(v) * s[j]);
    }
}

TensorType softmax_meta(const TensorType& x, int64_t dim, const char* name) {
  KILN_CHECK(is_floating(x.dtype), DTypeError,
             "{}: expected a floating point tensor, got {} (convert it with .to(float32) first)", name,
             dtype_name(x.dtype));
  wrap_dim(dim, static_cast<int64_t>(x.shape.size()), name);
  return x;
}

template <bool kLog>
Tensor softmax_impl(const Tensor& x, int64_t dim, const char* name) {
  const int64_t d = wrap_dim(dim, x.dim(), name);
  int64_t A = 1, R = 1, B = 1;
  for (int64_t i = 0; i < x.dim(); ++i) (i < d ? A : i == d ? R : B) *= x.shape()[i];
  if (!x.device().is_cpu() && x.dim() > 0 && x.numel() > 0) {  // rows along the last dim (eager/cuda/rows.cu)
    const int64_t last = x.dim() - 1;
    Tensor in = contiguous(transpose(x, d, last));
    Tensor rows = Tensor::empty(in.shape(), x.dtype(), x.device());
    cuda_kernels::softmax_rows(kLog, rows, in, in.numel() / R, R);
    return d == last ? rows : contiguous(transpose(rows, d, last));
  }
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() == 0) return out;
  if (!x.device().is_cpu()) {  // a 0-d input: its one element, as a row of one
    Tensor rows = Tensor::empty({1}, x.dtype(), x.device());
    cuda_kernels::softmax_rows(kLog, rows, contiguous(x).reshape({1}), 1, 1);
    return rows.reshape({});
  }
  Tensor in = contiguous(x);
  dispatch_floating(x.dtype(), name, [&]<class T>() {
    const T* px = in.data<T>();
    T* po = out.data<T>();
    if (B == 1) {
      parallel_for(0, A, std::max<int64_t>(1, kGrain / R), [&](int64_t ab, int64_t ae) {
        for (int64_t a = ab; a < ae; ++a) softmax_row<T, kLog>(px + a * R, po + a * R, R);
      });
      return;
    }
    const int64_t tile = std::min(B, kTile), ntiles = (B + tile - 1) / tile;
    parallel_for(0, A * ntiles, std::max<int64_t>(1, kGrain / (R * tile)), [&](int64_t ub, int64_t ue) {
      for (int64_t u = ub; u < ue; ++u) {
        const int64_t a = u / ntiles, b0 = (u % ntiles) * tile;
        const int64_t off = a * R * B + b0;
        softmax_cols<T, kLog>(px + off, po + off, R, B, std::min(tile, B - b0));
      }
    });
  });
  return out;
}

// ---- layer_norm ----

// A [N] parameter as a contiguous C array; `fallback` when undefined.
template <class C>
Tensor param(const Tensor& p, const Shape& shape, double fallback, const char* what) {
  if (!p.defined()) return full(shape, fallback, dtype_v<C>);
  KILN_CHECK(p.shape() == shape, ShapeError, "layer_norm: {} of shape {} does not match normalized_shape {}",
             what, shape_str(p.shape()), shape_str(shape));
  return contiguous(to_dtype(p, dtype_v<C>));
}

}  // namespace

// Both rules need only the output y: softmax's Jacobian is diag(y) - y y^T,
// log_softmax's is I - softmax (= exp(y)) along the dim.
Tensor softmax(const Tensor& x, int64_t dim) {
  softmax_meta(type_of(x), dim, "softmax");
  return autograd_op(
      "softmax", {x}, KILN_ATTRS(dim), [&] { return softmax_impl<false>(x, dim, "softmax"); },
      [&](const Tensor& out) {
        return BackwardFn([y = SavedTensor(out), dim](const Tensor& g, const Needs&) -> Grads {
          return {mul(y.get(), sub(g, sum(mul(g, y.get()), {dim}, /*keepdim=*/true)))};
        });
      });
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  softmax_meta(type_of(x), dim, "log_softmax");
  return autograd_op(
      "log_softmax", {x}, KILN_ATTRS(dim), [&] { return softmax_impl<true>(x, dim, "log_softmax"); },
      [&](const Tensor& out) {
        return BackwardFn([y = SavedTensor(out), dim](const Tensor& g, const Needs&) -> Grads {
          return {sub(g, mul(exp(y.get()), sum(g, {dim}, /*keepdim=*/true)))};
        });
      });
}

namespace {
// A dynamic trailing dim of x matches any size (checked when it runs).
TensorType layer_norm_meta(const TensorType& x, const Shape& normalized_shape, const TensorType& weight,
                           const TensorType& bias) {
  KILN_CHECK(is_floating(x.dtype), DTypeError, "layer_norm: expected a floating point tensor, got {}",
             dtype_name(x.dtype));
  const size_t nd = normalized_shape.size();
  KILN_CHECK(nd <= x.shape.size() && std::equal(normalized_shape.begin(), normalized_shape.end(), x.shape.end() - nd,
                                                [](int64_t n, int64_t d) { return n == d || is_dynamic(d); }),
             ShapeError, "layer_norm: normalized_shape {} does not match the trailing dims of the input of shape {}",
             shape_str(normalized_shape), shape_str(x.shape));
  for (const auto& [p, what] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}})
    KILN_CHECK(!p->defined || p->shape == normalized_shape, ShapeError,
               "layer_norm: {} of shape {} does not match normalized_shape {}", what, shape_str(p->shape),
               shape_str(normalized_shape));
  return x;
}

Tensor layer_norm_impl(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                       double eps) {
  const int64_t nd = static_cast<int64_t>(normalized_shape.size());
  const int64_t N = numel(normalized_shape);
  int64_t M = 1;
  for (int64_t i = 0; i < x.dim() - nd; ++i) M *= x.shape()[i];
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (!x.device().is_cpu()) {
    // The kernel reads weight and bias in the input's dtype as they usually
    // are, else in the compute dtype (as the cpu computes with them).
    const bool as_input = (!weight.defined() || weight.dtype() == x.dtype()) && (!bias.defined() || bias.dtype() == x.dtype());
    const DType params = as_input ? x.dtype() : x.dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
    auto on_device = [&](const Tensor& p, const char* what) {
      if (!p.defined()) return p;
      KILN_CHECK(p.device() == x.device(), DeviceError, "layer_norm: {} is on {}, the input on {}", what,
                 p.device().str(), x.device().str());
      return contiguous(to_dtype(p, params));
    };
    if (out.numel() > 0)
      cuda_kernels::layer_norm_rows(out, contiguous(x), on_device(weight, "weight"), on_device(bias, "bias"), eps, M, N);
    return out;
  }
  dispatch_floating(x.dtype(), "layer_norm", [&]<class T>() {
    using C = compute_t<T>;
    Tensor w = param<C>(weight, normalized_shape, 1.0, "weight");
    Tensor b = param<C>(bias, normalized_shape, 0.0, "bias");
    if (out.numel() == 0) return;
    Tensor in = contiguous(x);
    const T* px = in.data<T>();
    T* po = out.data<T>();
    const C* pw = w.data<C>();
    const C* pb = b.data<C>();
    parallel_for(0, M, std::max<int64_t>(1, kGrain / N), [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r) {
        const T* p = px + r * N;
        T* o = po + r * N;
        // Two passes in double: the mean, then the mean squared deviation
        // (no cancellation, unlike E[x^2] - E[x]^2).
        const double mean = lane_sum<double>(N, [&](int64_t i) { return double(C(p[i])); }) / double(N);
        const double var = lane_sum<double>(N, [&](int64_t i) {
          double dv = double(C(p[i])) - mean;
          return dv * dv;
        }) / double(N);
        const C rstd = C(1.0 / std::sqrt(var + eps)), cm = C(mean);
        for (int64_t i = 0; i < N; ++i) o[i] = T((C(p[i]) - cm) * rstd * pw[i] + pb[i]);
      }
    });
  });
  return out;
}

// With xhat = (x - mean) * rstd over the normalized dims and y = xhat * w + b:
// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * w;
// dw = sum(g * xhat) and db = sum(g) over the leading dims. The statistics
// are recomputed rather than saved from the fused kernel.
BackwardFn layer_norm_back(const Tensor& x, int64_t nd, const Tensor& weight, double eps) {
  DimList dims, lead;
  for (int64_t d = 0; d < x.dim(); ++d) (d < x.dim() - nd ? lead : dims).push_back(d);
  return [sx = SavedTensor(x), sw = SavedTensor(weight), dims, lead, eps](const Tensor& g,
                                                                          const Needs& need) -> Grads {
    const Tensor& x = sx;
    // An empty normalized_shape normalizes each element alone: xhat is 0.
    Tensor xhat = zeros_like(x), rstd = full_like(x, 1.0 / std::sqrt(eps));
    if (!dims.empty()) {
      rstd = rsqrt(add(var(x, dims, /*correction=*/0, /*keepdim=*/true), eps));
      xhat = mul(sub(x, mean(x, dims, /*keepdim=*/true)), rstd);
    }
    auto over_lead = [&](const Tensor& t) { return lead.empty() ? t : sum(t, lead); };
    Tensor gx, gw, gb;
    if (need[0]) {
      Tensor gxhat = sw.defined() ? mul(g, sw.get()) : g;
      Tensor centered = dims.empty() ? zeros_like(gxhat)
                                     : sub(sub(gxhat, mean(gxhat, dims, true)),
                                           mul(xhat, mean(mul(gxhat, xhat), dims, true)));
      gx = mul(rstd, centered);
    }
    if (need[1]) gw = over_lead(mul(g, xhat));
    if (need[2]) gb = over_lead(g);
    return {gx, gw, gb};
  };
}
}  // namespace

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps) {
  layer_norm_meta(type_of(x), normalized_shape, type_of(weight), type_of(bias));
  return autograd_op(
      "native_layer_norm", {x, weight, bias}, KILN_ATTRS(normalized_shape, eps),
      [&] { return layer_norm_impl(x, normalized_shape, weight, bias, eps); },
      [&](const Tensor&) {
        return layer_norm_back(x, static_cast<int64_t>(normalized_shape.size()), weight, eps);
      });
}

void register_nn_ops() {
  register_op({.name = "softmax",
               .attrs = {{"dim", AttrKind::Int}},
               .meta = KILN_META(softmax_meta(in[0], a.get<int64_t>("dim"), "softmax")),
               .run = KILN_RUN(softmax(in[0], a.get<int64_t>("dim")))});
  register_op({.name = "log_softmax",
               .attrs = {{"dim", AttrKind::Int}},
               .meta = KILN_META(softmax_meta(in[0], a.get<int64_t>("dim"), "log_softmax")),
               .run = KILN_RUN(log_softmax(in[0], a.get<int64_t>("dim")))});
  register_op({.name = "native_layer_norm",
               .num_inputs = 3,
               .operands = "x, weight?, bias?",
               .attrs = {{"normalized_shape", AttrKind::Ints}, {"eps", AttrKind::Float}},
               .meta = KILN_META(layer_norm_meta(in[0], a.get<Shape>("normalized_shape"), in[1], in[2])),
               .run = KILN_RUN(layer_norm(in[0], a.get<Shape>("normalized_shape"), in[1], in[2], a.get<double>("eps")))});
}

}  // namespace kiln
