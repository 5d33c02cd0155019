// The rows of eager/unary_ops.def as CUDA kernels, kiln_unary_<op>_<dtype>:
// the same EXPR as the CPU kernels, with the device's scalar helpers.
#include "eager/cuda/device.cuh"

namespace kiln::cuda_kernels {

#define KILN_FOR_Float KILN_FOR_FLOATING
#define KILN_FOR_Numeric KILN_FOR_NUMERIC
#define KILN_FOR_Rounding KILN_FOR_FLOATING
#define KILN_UNARY_KERNEL(NAME, SUFFIX, T) \
  KILN_KERNEL(kiln_unary_##NAME##_##SUFFIX, Elementwise<1> a) { elementwise<T, T, 1>(a, NAME##_fn{}); }
#define KILN_UNARY(NAME, KIND, EXPR, ...)         \
  struct NAME##_fn {                              \
    template <class C>                            \
    __device__ __forceinline__ C operator()(C x) const { \
      return EXPR;                                \
    }                                             \
  };                                              \
  KILN_FOR_##KIND(KILN_UNARY_KERNEL, NAME)
#include "eager/unary_ops.def"
#undef KILN_UNARY

}  // namespace kiln::cuda_kernels
