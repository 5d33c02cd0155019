#pragma once
// The windows of 2-D pooling, shared by the CPU kernels (eager/nn/pool.cpp)
// and the CUDA ones (eager/cuda/pool.cu): for output (oh, ow) of a plane,
// which input elements it reads and what it divides by.
#include <cstdint>

#include "eager/scalar_ops.h"

namespace kiln::nn::functional {

struct PoolGeom {
  int64_t planes, H, W, Ho, Wo;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// The max of a window of `load(i)` (i: an index into the plane), and where
// it is; NaN wins, as in PyTorch.
template <class C, class Load>
KILN_SCALAR void max_window(const PoolGeom& g, int64_t oh, int64_t ow, Load load, C& best, int64_t& arg) {
  int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  const int64_t h1 = h0 + (g.kh - 1) * g.dh + 1 < g.H ? h0 + (g.kh - 1) * g.dh + 1 : g.H;
  const int64_t w1 = w0 + (g.kw - 1) * g.dw + 1 < g.W ? w0 + (g.kw - 1) * g.dw + 1 : g.W;
  while (h0 < 0) h0 += g.dh;
  while (w0 < 0) w0 += g.dw;
  best = -static_cast<C>(INFINITY);
  arg = h0 * g.W + w0;
  for (int64_t ih = h0; ih < h1; ih += g.dh)
    for (int64_t iw = w0; iw < w1; iw += g.dw) {
      const C v = load(ih * g.W + iw);
      if (v > best || v != v) {
        best = v;
        arg = ih * g.W + iw;
      }
    }
}

// An average window: rows [h0, h1) and columns [w0, w1) of the input (empty
// when it lies wholly in the padding) and its divisor.
struct AvgWindow {
  int64_t h0, h1, w0, w1, divisor;
  KILN_SCALAR bool empty() const { return h0 >= h1 || w0 >= w1; }
};
KILN_SCALAR AvgWindow avg_window(const PoolGeom& g, int64_t oh, int64_t ow, bool count_include_pad) {
  int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  int64_t h1 = h0 + g.kh < g.H + g.ph ? h0 + g.kh : g.H + g.ph;
  int64_t w1 = w0 + g.kw < g.W + g.pw ? w0 + g.kw : g.W + g.pw;
  const int64_t padded = (h1 - h0) * (w1 - w0);
  h0 = h0 > 0 ? h0 : 0, w0 = w0 > 0 ? w0 : 0;
  h1 = h1 < g.H ? h1 : g.H, w1 = w1 < g.W ? w1 : g.W;
  return {h0, h1, w0, w1, count_include_pad ? padded : (h1 - h0) * (w1 - w0)};
}

// adaptive_avg_pool2d: output o of `out` covers [floor(o * in / out), ceil((o + 1) * in / out)).
KILN_SCALAR AvgWindow adaptive_window(const PoolGeom& g, int64_t oh, int64_t ow) {
  const int64_t h0 = (oh * g.H) / g.Ho, h1 = ((oh + 1) * g.H + g.Ho - 1) / g.Ho;
  const int64_t w0 = (ow * g.W) / g.Wo, w1 = ((ow + 1) * g.W + g.Wo - 1) / g.Wo;
  return {h0, h1, w0, w1, (h1 - h0) * (w1 - w0)};
}

}  // namespace kiln::nn::functional
