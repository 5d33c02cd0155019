#pragma once
// What every kiln CUDA kernel builds on: the storage types (16-bit floats
// as bits, computed in float, as on the CPU), conversions that match the
// CPU's convert<R>(x) (eager/loops.h), the device versions of the scalar
// helpers the elementwise tables call, and the elementwise loop.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "eager/cuda/kernel_args.h"
#include "eager/scalar_ops.h"

namespace kiln::cuda_kernels {

struct f16 {
  uint16_t bits;
};
struct bf16 {
  uint16_t bits;
};

template <class T> struct compute_type { using type = T; };
template <> struct compute_type<f16> { using type = float; };
template <> struct compute_type<bf16> { using type = float; };
template <class T> using compute_t = typename compute_type<T>::type;

template <class T>
__device__ __forceinline__ compute_t<T> to_compute(T v) {
  if constexpr (std::is_same_v<T, f16>) return __half2float(__ushort_as_half(v.bits));
  else if constexpr (std::is_same_v<T, bf16>) return __bfloat162float(__ushort_as_bfloat16(v.bits));
  else return v;
}

// A compute value stored as R, as the CPU's convert<R>: bool is "!= 0",
// everything else goes through R's compute type (round to nearest even).
template <class R, class C>
__device__ __forceinline__ R store_as(C v) {
  if constexpr (std::is_same_v<R, bool>) {
    return v != C(0);
  } else if constexpr (std::is_same_v<R, f16>) {
    return f16{__half_as_ushort(__float2half_rn(static_cast<float>(v)))};
  } else if constexpr (std::is_same_v<R, bf16>) {
    return bf16{__bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(v)))};
  } else {
    return static_cast<R>(v);
  }
}

// ---- the scalar helpers of the elementwise tables, on the device ----
#define KILN_DEVICE_MATH(NAME, FLOAT, DOUBLE)                                   \
  __device__ __forceinline__ float k##NAME(float x) { return FLOAT(x); }        \
  __device__ __forceinline__ double k##NAME(double x) { return DOUBLE(x); }
KILN_DEVICE_MATH(exp, expf, exp)
KILN_DEVICE_MATH(log, logf, log)
KILN_DEVICE_MATH(log1p, log1pf, log1p)
KILN_DEVICE_MATH(expm1, expm1f, expm1)
KILN_DEVICE_MATH(sin, sinf, sin)
KILN_DEVICE_MATH(cos, cosf, cos)
KILN_DEVICE_MATH(tanh, tanhf, tanh)
KILN_DEVICE_MATH(erf, erff, erf)
#undef KILN_DEVICE_MATH
__device__ __forceinline__ float katan2(float a, float b) { return atan2f(a, b); }
__device__ __forceinline__ double katan2(double a, double b) { return atan2(a, b); }
template <class C>
__device__ __forceinline__ C kpow(C a, C b) {
  if constexpr (std::is_floating_point_v<C>) return pow(a, b);
  else return kipow(a, b);
}

// ---- the elementwise loop ----
// Each thread handles kVec elements: in the vector case one aligned group
// (one 16-byte load per float32 operand), otherwise kVec elements a block
// apart (coalesced).

template <class T>
struct alignas(sizeof(T) * kVec) Group {
  T v[kVec];
};

template <class T>
__device__ __forceinline__ compute_t<T> scalar_value(const Operand& op) {
  using C = compute_t<T>;
  if constexpr (std::is_floating_point_v<C>) return static_cast<C>(op.value);
  else if constexpr (std::is_same_v<C, bool>) return op.int_value != 0;
  else return static_cast<C>(op.int_value);
}

template <class T>
__device__ __forceinline__ compute_t<T> load(const Operand& op, int64_t offset) {
  if (!op.data) return scalar_value<T>(op);
  return to_compute(*reinterpret_cast<const T*>(op.data + offset));
}

template <int N>
__device__ __forceinline__ void offsets(const Elementwise<N>& a, int64_t e, int64_t& out, int64_t (&in)[N]) {
  out = 0;
  for (int k = 0; k < N; ++k) in[k] = 0;
  for (int d = a.ndim - 1; d >= 0; --d) {
    const int64_t size = a.sizes[d];
    const int64_t i = d == 0 ? e : e % size;
    e /= size;
    out += i * a.out_strides[d];
    for (int k = 0; k < N; ++k) in[k] += i * a.in[k].strides[d];
  }
}

template <class C, int N, class F>
__device__ __forceinline__ auto apply(F f, const C (&x)[N]) {
  if constexpr (N == 1) return f(x[0]);
  else return f(x[0], x[1]);
}

// out[e] = f(in_0[e], ...) for inputs of storage type T (computed as
// compute_t<T>) and an output of storage type R.
template <class R, class T, int N, class F>
__device__ __forceinline__ void elementwise(const Elementwise<N>& a, F f) {
  using C = compute_t<T>;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kVec;
  if (a.vector) {
    const int64_t first = base + static_cast<int64_t>(threadIdx.x) * kVec;
    if (first + kVec <= a.n) {
      C x[kVec][N];
      for (int k = 0; k < N; ++k) {
        if (a.in[k].data) {
          const Group<T> g = reinterpret_cast<const Group<T>*>(a.in[k].data)[first / kVec];
          for (int j = 0; j < kVec; ++j) x[j][k] = to_compute(g.v[j]);
        } else {
          for (int j = 0; j < kVec; ++j) x[j][k] = scalar_value<T>(a.in[k]);
        }
      }
      Group<R> out;
      for (int j = 0; j < kVec; ++j) out.v[j] = store_as<R>(apply<C, N>(f, x[j]));
      reinterpret_cast<Group<R>*>(a.out)[first / kVec] = out;
      return;
    }
    for (int64_t e = first; e < a.n; ++e) {
      C x[N];
      for (int k = 0; k < N; ++k) x[k] = load<T>(a.in[k], e * static_cast<int64_t>(sizeof(T)));
      reinterpret_cast<R*>(a.out)[e] = store_as<R>(apply<C, N>(f, x));
    }
    return;
  }
  for (int j = 0; j < kVec; ++j) {
    const int64_t e = base + j * kThreads + threadIdx.x;
    if (e >= a.n) return;
    int64_t out_offset, in_offsets[N];
    offsets(a, e, out_offset, in_offsets);
    C x[N];
    for (int k = 0; k < N; ++k) x[k] = load<T>(a.in[k], in_offsets[k]);
    *reinterpret_cast<R*>(a.out + out_offset) = store_as<R>(apply<C, N>(f, x));
  }
}

}  // namespace kiln::cuda_kernels

// A kernel: one parameter struct (kernel_args.h) by value. The CUDA
// emulator (tests/cuda_emulator) defines its own, to run kernels on the host.
#ifndef KILN_KERNEL
#define KILN_KERNEL(NAME, PARAMETER) extern "C" __global__ void __launch_bounds__(kiln::cuda_kernels::kThreads) NAME(PARAMETER)
#endif

// Kernel names: kiln_<family>_<op>_<dtype suffix> (eager/cuda/launch.cpp
// spells the same suffixes).
#define KILN_FOR_FLOATING(X, ...) X(__VA_ARGS__, f16, f16) X(__VA_ARGS__, bf16, bf16) X(__VA_ARGS__, f32, float) X(__VA_ARGS__, f64, double)
#define KILN_FOR_INTEGER(X, ...) \
  X(__VA_ARGS__, u8, uint8_t) X(__VA_ARGS__, i8, int8_t) X(__VA_ARGS__, i32, int32_t) X(__VA_ARGS__, i64, int64_t)
#define KILN_FOR_NUMERIC(X, ...) KILN_FOR_INTEGER(X, __VA_ARGS__) KILN_FOR_FLOATING(X, __VA_ARGS__)
#define KILN_FOR_ALL(X, ...) X(__VA_ARGS__, b8, bool) KILN_FOR_NUMERIC(X, __VA_ARGS__)
#define KILN_FOR_INTEGRAL(X, ...) X(__VA_ARGS__, b8, bool) KILN_FOR_INTEGER(X, __VA_ARGS__)
