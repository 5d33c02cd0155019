#pragma once
// Included ahead of each eager/cuda/*.cu when the emulator compiles it as
// host C++: CUDA's built-in variables, barriers, shuffles and atomics on top
// of the emulator's threads (emulator.h). A block runs on one host thread,
// so atomics need no hardware support, and __shared__ variables are
// function statics, shared by the block's threads as on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "tests/cuda_emulator/emulator.h"

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

#define threadIdx (::kiln_cuda_emulator::current->thread_idx)
#define blockIdx (::kiln_cuda_emulator::current->block_idx)
#define blockDim (::kiln_cuda_emulator::current->block_dim)
#define gridDim (::kiln_cuda_emulator::current->grid_dim)

inline void __syncthreads() { kiln_cuda_emulator::sync_block(); }

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move 32 or 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof value);
  bits = kiln_cuda_emulator::shuffle_xor(bits, mask, lane_mask);
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

[[noreturn]] inline void __trap() { kiln_cuda_emulator::trap("__trap()"); }

inline long long __double_as_longlong(double x) {
  long long bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

template <class T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
inline __half atomicAdd(__half* address, __half value) {
  const __half old = *address;
  *address = __float2half_rn(__half2float(old) + __half2float(value));
  return old;
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* address, __nv_bfloat16 value) {
  const __nv_bfloat16 old = *address;
  *address = __float2bfloat16_rn(__bfloat162float(old) + __bfloat162float(value));
  return old;
}

// A kernel becomes a static function registered under its name.
#define KILN_KERNEL(NAME, PARAMETER)                                                                            \
  static void NAME(PARAMETER);                                                                                  \
  [[maybe_unused]] static const bool NAME##_registered =                                                        \
      ::kiln_cuda_emulator::register_kernel<&NAME>(#NAME, ::kiln::cuda_kernels::kThreads);                    \
  static void NAME(PARAMETER)
