// The rows of eager/binary_ops.def as CUDA kernels, kiln_binary_<op>_<dtype>
// (the dtype is the one the op computes in; comparisons write bool).
#include "eager/cuda/device.cuh"

namespace kiln::cuda_kernels {

#define KILN_FOR_Arith KILN_FOR_ALL
#define KILN_FOR_Float KILN_FOR_FLOATING
#define KILN_FOR_Compare KILN_FOR_ALL
#define KILN_FOR_Logical KILN_FOR_ALL
#define KILN_FOR_Bitwise KILN_FOR_INTEGRAL
#define KILN_BINARY_KERNEL(NAME, SUFFIX, T)                                                                   \
  KILN_KERNEL(kiln_binary_##NAME##_##SUFFIX, Elementwise<2> a) { \
    using R = std::conditional_t<std::is_same_v<decltype(NAME##_fn{}(compute_t<T>{}, compute_t<T>{})), bool>, bool, T>; \
    elementwise<R, T, 2>(a, NAME##_fn{});                                                                     \
  }
#define KILN_BINARY(NAME, KIND, EXPR, ...)                      \
  struct NAME##_fn {                                            \
    template <class C>                                          \
    __device__ __forceinline__ auto operator()(C a, C b) const { \
      return EXPR;                                              \
    }                                                           \
  };                                                            \
  KILN_FOR_##KIND(KILN_BINARY_KERNEL, NAME)
#include "eager/binary_ops.def"
#undef KILN_BINARY

}  // namespace kiln::cuda_kernels
