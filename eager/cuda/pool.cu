// 2-D pooling on the GPU, one thread per output element, over the same
// windows as the CPU (eager/nn/pool_window.h): kiln_pool_<kind>_<dtype> for
// max (values and flat argmax indices), avg and adaptive (averages), and
// kiln_pool_<kind>_backward_<dtype>, which adds each output's gradient share
// into its window of a zeroed dx atomically (windows overlap).
#include "eager/cuda/device.cuh"
#include "eager/nn/pool_window.h"

namespace kiln::cuda_kernels {

using nn::functional::AvgWindow;
using nn::functional::PoolGeom;

// Output element e of this thread: its plane and position; false past the end.
struct PoolAt {
  int64_t e, plane, oh, ow;
};
__device__ __forceinline__ bool pool_at(const Pool& a, PoolAt& at) {
  const PoolGeom& g = a.g;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= g.planes * g.Ho * g.Wo) return false;
  at = {e, e / (g.Ho * g.Wo), (e / g.Wo) % g.Ho, e % g.Wo};
  return true;
}

template <class T>
__device__ __forceinline__ const T* input_plane(const Pool& a, const PoolAt& at) {
  return reinterpret_cast<const T*>(a.in) + at.plane * a.g.H * a.g.W;
}

__device__ __forceinline__ AvgWindow window_of(const Pool& a, const PoolAt& at) {
  return a.adaptive ? nn::functional::adaptive_window(a.g, at.oh, at.ow)
                    : nn::functional::avg_window(a.g, at.oh, at.ow, a.count_include_pad);
}

template <class T>
__device__ __forceinline__ void max_pool(const Pool& a) {
  using C = compute_t<T>;
  PoolAt at;
  if (!pool_at(a, at)) return;
  const T* plane = input_plane<T>(a, at);
  C best;
  int64_t arg;
  nn::functional::max_window<C>(a.g, at.oh, at.ow, [plane](int64_t i) { return to_compute(plane[i]); }, best, arg);
  reinterpret_cast<T*>(a.out)[at.e] = store_as<T>(best);
  reinterpret_cast<int64_t*>(a.indices)[at.e] = arg;
}

template <class T>
__device__ __forceinline__ void avg_pool(const Pool& a) {
  using C = compute_t<T>;
  PoolAt at;
  if (!pool_at(a, at)) return;
  const T* plane = input_plane<T>(a, at);
  const AvgWindow w = window_of(a, at);
  C s = 0;
  for (int64_t ih = w.h0; ih < w.h1; ++ih)
    for (int64_t iw = w.w0; iw < w.w1; ++iw) s += to_compute(plane[ih * a.g.W + iw]);
  reinterpret_cast<T*>(a.out)[at.e] = store_as<T>(w.empty() ? C(0) : s / C(w.divisor));
}

template <class T>
__device__ __forceinline__ void add_to(T* p, compute_t<T> v) {
  if constexpr (std::is_same_v<T, f16>) atomicAdd(reinterpret_cast<__half*>(p), __float2half_rn(v));
  else if constexpr (std::is_same_v<T, bf16>) atomicAdd(reinterpret_cast<__nv_bfloat16*>(p), __float2bfloat16_rn(v));
  else atomicAdd(p, v);
}

// in: the output's gradient; out: dx (zeroed).
template <class T>
__device__ __forceinline__ void avg_pool_backward(const Pool& a) {
  using C = compute_t<T>;
  PoolAt at;
  if (!pool_at(a, at)) return;
  const AvgWindow w = window_of(a, at);
  if (w.empty()) return;
  const C share = to_compute(reinterpret_cast<const T*>(a.in)[at.e]) / C(w.divisor);
  T* plane = reinterpret_cast<T*>(a.out) + at.plane * a.g.H * a.g.W;
  for (int64_t ih = w.h0; ih < w.h1; ++ih)
    for (int64_t iw = w.w0; iw < w.w1; ++iw) add_to(plane + ih * a.g.W + iw, share);
}

#define KILN_POOL_KERNELS(_, SUFFIX, T)                                                                            \
  KILN_KERNEL(kiln_pool_max_##SUFFIX, Pool a) { max_pool<T>(a); }        \
  KILN_KERNEL(kiln_pool_avg_##SUFFIX, Pool a) { avg_pool<T>(a); }        \
  KILN_KERNEL(kiln_pool_avg_backward_##SUFFIX, Pool a) {                 \
    avg_pool_backward<T>(a);                                                                                       \
  }
KILN_FOR_FLOATING(KILN_POOL_KERNELS, _)

}  // namespace kiln::cuda_kernels
