// Copies with conversion (every pair of dtypes: contiguous(), .to(dtype),
// copy_, fill through a scalar operand), where, and the random ops from the
// same Philox stream as the CPU (eager/philox.h).
#include "eager/cuda/device.cuh"
#include "eager/philox.h"

namespace kiln::cuda_kernels {

struct identity_fn {
  template <class C>
  __device__ __forceinline__ C operator()(C x) const { return x; }
};

#define KILN_COPY_KERNEL(RS, R, TS, T) \
  KILN_KERNEL(kiln_copy_##RS##_##TS, Elementwise<1> a) { elementwise<R, T, 1>(a, identity_fn{}); }
KILN_FOR_ALL(KILN_COPY_KERNEL, b8, bool)
KILN_FOR_ALL(KILN_COPY_KERNEL, u8, uint8_t)
KILN_FOR_ALL(KILN_COPY_KERNEL, i8, int8_t)
KILN_FOR_ALL(KILN_COPY_KERNEL, i32, int32_t)
KILN_FOR_ALL(KILN_COPY_KERNEL, i64, int64_t)
KILN_FOR_ALL(KILN_COPY_KERNEL, f16, f16)
KILN_FOR_ALL(KILN_COPY_KERNEL, bf16, bf16)
KILN_FOR_ALL(KILN_COPY_KERNEL, f32, float)
KILN_FOR_ALL(KILN_COPY_KERNEL, f64, double)

// out = cond ? a : b; in[0] is the bool condition, in[1] and in[2] are T.
template <class T>
__device__ __forceinline__ void where(const Elementwise<3>& a) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kVec;
  for (int j = 0; j < kVec; ++j) {
    const int64_t e = base + j * kThreads + threadIdx.x;
    if (e >= a.n) return;
    int64_t out, in[3];
    offsets(a, e, out, in);
    const bool c = load<bool>(a.in[0], in[0]);
    *reinterpret_cast<T*>(a.out + out) = store_as<T>(c ? load<T>(a.in[1], in[1]) : load<T>(a.in[2], in[2]));
  }
}
#define KILN_WHERE_KERNEL(_, SUFFIX, T) \
  KILN_KERNEL(kiln_where_##SUFFIX, Elementwise<3> a) { where<T>(a); }
KILN_FOR_ALL(KILN_WHERE_KERNEL, _)

template <class T, class F>
__device__ __forceinline__ void random(const Random& r, F value) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kVec;
  for (int j = 0; j < kVec; ++j) {
    const int64_t i = base + j * kThreads + threadIdx.x;
    if (i >= r.n) return;
    reinterpret_cast<T*>(r.out)[i] = store_as<T>(value(philox::element(r.seed, r.first, static_cast<uint64_t>(i))));
  }
}
template <class T>
__host__ __device__ constexpr int significand_bits() {
  return std::is_same_v<T, float> ? 24 : std::is_same_v<T, double> ? 53 : std::is_same_v<T, bf16> ? 8 : 11;
}
#define KILN_RANDOM_KERNELS(_, SUFFIX, T)                                                                       \
  KILN_KERNEL(kiln_rand_##SUFFIX, Random r) {                       \
    random<T>(r, [](philox::Bits b) { return philox::uniform(b, significand_bits<T>()); });                   \
  }                                                                                                           \
  KILN_KERNEL(kiln_normal_##SUFFIX, Random r) {                     \
    random<T>(r, [&](philox::Bits b) { return philox::normal(b, r.a, r.b); });                                \
  }
KILN_FOR_FLOATING(KILN_RANDOM_KERNELS, _)
// randint: a = low, b = range (an exact integer below 2^53 in a double is
// not enough for int64 ranges, so the range travels as its bits).
#define KILN_RANDINT_KERNEL(_, SUFFIX, T)                                                                      \
  KILN_KERNEL(kiln_randint_##SUFFIX, Random r) {                    \
    const int64_t low = __double_as_longlong(r.a);                                                            \
    const uint64_t range = static_cast<uint64_t>(__double_as_longlong(r.b));                                  \
    random<T>(r, [&](philox::Bits b) { return philox::integer(b, low, range); });                             \
  }
KILN_FOR_NUMERIC(KILN_RANDINT_KERNEL, _)

}  // namespace kiln::cuda_kernels
