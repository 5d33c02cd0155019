// Indexed reads and writes (eager/indexing.cpp's engine on the GPU): over
// three operands of one shape, a plain side, a strided base whose indexed
// dim has stride 0, and an index whose value times a byte stride is added
// to the base address. kiln_index_take_w<bytes>_<index> reads (index_select,
// gather, x[idx]), kiln_index_put_w<bytes>_<index> writes (x[idx] = v: one
// of several writes to an element wins), kiln_index_add_<dtype>_<index>
// accumulates atomically (scatter_add, index_put_ with accumulate).
// An index out of range prints the op, index and size, then traps: the
// error reaches the host at its next synchronizing call.
#include <cstdio>

#include "eager/cuda/device.cuh"

namespace kiln::cuda_kernels {

template <class I, class Access>
__device__ __forceinline__ void indexed(const Indexed& a, Access access) {
  const Elementwise<2>& loop = a.loop;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kVec;
  for (int j = 0; j < kVec; ++j) {
    const int64_t e = base + j * kThreads + threadIdx.x;
    if (e >= loop.n) return;
    int64_t plain, in[2];
    offsets(loop, e, plain, in);
    // (a one-value CPU index arrives by value)
    const int64_t v = loop.in[1].data ? static_cast<int64_t>(*reinterpret_cast<const I*>(loop.in[1].data + in[1]))
                                      : loop.in[1].int_value;
    const int64_t i = a.wrap && v < 0 ? v + a.size : v;
    if (a.size >= 0 && (i < 0 || i >= a.size)) {
      printf("kiln: %s: index %lld is out of bounds for dimension %d with size %lld\n", a.op, static_cast<long long>(v),
             a.dim, static_cast<long long>(a.size));
      __trap();
    }
    access(loop.out + plain, const_cast<char*>(loop.in[0].data) + in[0] + i * a.stride);
  }
}

template <class E>
struct Take {
  __device__ void operator()(char* plain, char* based) const {
    *reinterpret_cast<E*>(plain) = *reinterpret_cast<const E*>(based);
  }
};
template <class E>
struct Put {
  __device__ void operator()(char* plain, char* based) const {
    *reinterpret_cast<E*>(based) = *reinterpret_cast<const E*>(plain);
  }
};
template <class T>
struct AddTo {
  __device__ void operator()(char* plain, char* based) const {
    const T v = *reinterpret_cast<const T*>(plain);
    if constexpr (std::is_same_v<T, f16>) {
      atomicAdd(reinterpret_cast<__half*>(based), __ushort_as_half(v.bits));
    } else if constexpr (std::is_same_v<T, bf16>) {
      atomicAdd(reinterpret_cast<__nv_bfloat16*>(based), __ushort_as_bfloat16(v.bits));
    } else if constexpr (std::is_same_v<T, int64_t>) {  // two's complement: the unsigned sum is the signed one
      atomicAdd(reinterpret_cast<unsigned long long*>(based), static_cast<unsigned long long>(v));
    } else {
      atomicAdd(reinterpret_cast<T*>(based), v);
    }
  }
};

#define KILN_INDEX_KERNEL(NAME, I_SUFFIX, I, ACCESS) \
  KILN_KERNEL(kiln_index_##NAME##_##I_SUFFIX, Indexed a) { indexed<I>(a, ACCESS{}); }
// Reads and writes move bytes (one kernel per width); adds need the type.
#define KILN_INDEX_MOVES(I_SUFFIX, I, W, E) \
  KILN_INDEX_KERNEL(take_w##W, I_SUFFIX, I, Take<E>) KILN_INDEX_KERNEL(put_w##W, I_SUFFIX, I, Put<E>)
#define KILN_INDEX_ADD(I_SUFFIX, I, SUFFIX, T) KILN_INDEX_KERNEL(add_##SUFFIX, I_SUFFIX, I, AddTo<T>)
#define KILN_INDEX_KERNELS(I_SUFFIX, I)                                                                       \
  KILN_INDEX_MOVES(I_SUFFIX, I, 1, uint8_t) KILN_INDEX_MOVES(I_SUFFIX, I, 2, uint16_t)                         \
  KILN_INDEX_MOVES(I_SUFFIX, I, 4, uint32_t) KILN_INDEX_MOVES(I_SUFFIX, I, 8, uint64_t)                       \
  KILN_FOR_FLOATING(KILN_INDEX_ADD, I_SUFFIX, I) KILN_INDEX_ADD(I_SUFFIX, I, i32, int32_t)                    \
  KILN_INDEX_ADD(I_SUFFIX, I, i64, int64_t)
KILN_INDEX_KERNELS(i32, int32_t)
KILN_INDEX_KERNELS(i64, int64_t)

}  // namespace kiln::cuda_kernels
