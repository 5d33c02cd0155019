#pragma once
// The strided iteration engine every elementwise kernel runs on: N operands
// (the output first) already broadcast to one shape, dims coalesced where
// memory allows, the range split over the thread pool, and an inner
// function called on 1-D runs with byte strides so it can pick a contiguous
// (vectorizable) or a scalar-broadcast fast path.
#include <array>
#include <cstdint>
#include <initializer_list>

#include "eager/tensor.h"
#include "runtime/parallel.h"

namespace kiln {

// Elements per task below which a loop stays on the calling thread.
inline constexpr int64_t kElementwiseGrain = 32768;

template <int N>
struct LoopPlan {
  Shape shape;                               // coalesced, innermost last
  std::array<std::vector<int64_t>, N> strides;  // bytes, per operand
  std::array<char*, N> base;
};

// Operands must all have `shape` (use expand() to broadcast first). The
// plan's base pointers are for CPU kernels (data_ptr: a DeviceError for
// tensors elsewhere) unless `on_device` (eager/cuda/launch.cpp).
template <int N>
LoopPlan<N> plan_loop(const Shape& shape, const std::array<const Tensor*, N>& ops, bool on_device = false) {
  LoopPlan<N> plan;
  for (int k = 0; k < N; ++k) plan.base[k] = static_cast<char*>(on_device ? ops[k]->address() : ops[k]->data_ptr());
  // Drop size-1 dims, then merge neighbours that are contiguous for everyone.
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !plan.shape.empty();
    for (int k = 0; k < N && merge; ++k) {
      int64_t s = ops[k]->strides()[d] * static_cast<int64_t>(ops[k]->itemsize());
      merge = plan.strides[k].back() == s * shape[d];
    }
    if (merge) {
      plan.shape.back() *= shape[d];
      for (int k = 0; k < N; ++k)
        plan.strides[k].back() = ops[k]->strides()[d] * static_cast<int64_t>(ops[k]->itemsize());
    } else {
      plan.shape.push_back(shape[d]);
      for (int k = 0; k < N; ++k)
        plan.strides[k].push_back(ops[k]->strides()[d] * static_cast<int64_t>(ops[k]->itemsize()));
    }
  }
  if (plan.shape.empty() && numel(shape) == 1) {
    plan.shape.push_back(1);
    for (int k = 0; k < N; ++k) plan.strides[k].push_back(0);
  }
  return plan;
}

// inner(std::array<char*, N> ptrs, std::array<int64_t, N> strides, int64_t n)
template <int N, class Inner>
void run_loop(const LoopPlan<N>& plan, Inner&& inner, int64_t grain = kElementwiseGrain) {
  const int64_t total = numel(plan.shape);
  if (total == 0 || plan.shape.empty()) return;
  const int nd = static_cast<int>(plan.shape.size());
  const int64_t inner_n = plan.shape[nd - 1];
  std::array<int64_t, N> inner_strides;
  for (int k = 0; k < N; ++k) inner_strides[k] = plan.strides[k][nd - 1];

  parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    // Multi-index of `begin`, then walk row by row.
    std::vector<int64_t> idx(nd);
    int64_t rem = begin;
    for (int d = nd - 1; d >= 0; --d) {
      idx[d] = rem % plan.shape[d];
      rem /= plan.shape[d];
    }
    int64_t pos = begin;
    while (pos < end) {
      std::array<char*, N> ptrs = plan.base;
      for (int k = 0; k < N; ++k)
        for (int d = 0; d < nd; ++d) ptrs[k] += idx[d] * plan.strides[k][d];
      int64_t n = std::min(inner_n - idx[nd - 1], end - pos);
      inner(ptrs, inner_strides, n);
      pos += n;
      idx[nd - 1] += n;
      for (int d = nd - 1; d > 0 && idx[d] == plan.shape[d]; --d) {
        idx[d] = 0;
        ++idx[d - 1];
      }
    }
  });
}

// A 0-d CPU tensor combines with tensors on any device, as a scalar (as in
// PyTorch): CUDA kernels take its value as an argument.
inline bool is_cpu_scalar(const Tensor& t) { return t.dim() == 0 && t.device().is_cpu(); }

// Convert between element types through their compute types.
template <class R, class T>
inline __attribute__((always_inline)) R convert(T x) {
  if constexpr (std::is_same_v<R, T>) {
    return x;
  } else if constexpr (std::is_same_v<R, bool>) {
    return static_cast<compute_t<T>>(x) != compute_t<T>(0);
  } else {
    return R(static_cast<compute_t<R>>(static_cast<compute_t<T>>(x)));
  }
}

// out[i] = f(in[i]) over two operands (out, in) of types R and T; f takes
// and returns compute types.
template <class R, class T, class F>
void unary_inner(const std::array<char*, 2>& p, const std::array<int64_t, 2>& s, int64_t n, F f) {
  using CT = compute_t<T>;
  if (s[0] == sizeof(R) && s[1] == sizeof(T)) {
    R* o = reinterpret_cast<R*>(p[0]);
    const T* a = reinterpret_cast<const T*>(p[1]);
    for (int64_t i = 0; i < n; ++i) o[i] = convert<R>(f(CT(a[i])));
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    *reinterpret_cast<R*>(p[0] + i * s[0]) = convert<R>(f(CT(*reinterpret_cast<const T*>(p[1] + i * s[1]))));
}

// out[i] = f(a[i], b[i]) with contiguous and scalar-broadcast fast paths.
template <class R, class T, class F>
void binary_inner(const std::array<char*, 3>& p, const std::array<int64_t, 3>& s, int64_t n, F f) {
  using CT = compute_t<T>;
  R* o = reinterpret_cast<R*>(p[0]);
  const T* a = reinterpret_cast<const T*>(p[1]);
  const T* b = reinterpret_cast<const T*>(p[2]);
  constexpr int64_t sr = sizeof(R), st = sizeof(T);
  if (s[0] == sr && s[1] == st && s[2] == st) {
    for (int64_t i = 0; i < n; ++i) o[i] = convert<R>(f(CT(a[i]), CT(b[i])));
  } else if (s[0] == sr && s[1] == st && s[2] == 0) {
    const CT bv = CT(*b);
    for (int64_t i = 0; i < n; ++i) o[i] = convert<R>(f(CT(a[i]), bv));
  } else if (s[0] == sr && s[1] == 0 && s[2] == st) {
    const CT av = CT(*a);
    for (int64_t i = 0; i < n; ++i) o[i] = convert<R>(f(av, CT(b[i])));
  } else {
    for (int64_t i = 0; i < n; ++i)
      *reinterpret_cast<R*>(p[0] + i * s[0]) = convert<R>(
          f(CT(*reinterpret_cast<const T*>(p[1] + i * s[1])), CT(*reinterpret_cast<const T*>(p[2] + i * s[2]))));
  }
}

// The tensor an elementwise op writes: a fresh one, or `into` (an in-place
// op's self) when the result can go there directly (same dtype, no partial
// overlap with an input). finish_output() copies a fresh result into `into`
// when it could not, and bumps the version counter either way.
Tensor make_output(const Shape& shape, DType dtype, Device device, const Tensor* into,
                   std::initializer_list<const Tensor*> inputs, const char* name);
void finish_output(const Tensor& out, const Tensor* into);

}  // namespace kiln
