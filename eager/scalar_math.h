#pragma once
// Scalar helpers the elementwise tables call. The float versions of exp and
// tanh are branch-free polynomials, so loops over them auto-vectorize (libm
// calls do not); double goes through libm.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "eager/scalar_ops.h"

namespace kiln {

// Kernels are large TUs where gcc runs out of inlining budget; a call left
// in a loop body stops vectorization.
#define KILN_INLINE inline __attribute__((always_inline))

// exp for float: Cody-Waite range reduction and a degree-6 polynomial
// (Cephes expf); about 1 ulp. Saturates to 0 / inf, keeps NaN.
// The largest float whose exp is finite (ln FLT_MAX rounded down).
inline constexpr float kExpMaxArg = 88.72283172607422f;

KILN_INLINE float kexp(float x) {
  float xc = x < -87.3f ? -87.3f : x;
  xc = xc > kExpMaxArg ? kExpMaxArg : xc;
  // floor via truncation: std::floor does not vectorize without -fno-trapping-math.
  float t = xc * 1.44269504088896341f + 0.5f;
  int32_t ti = static_cast<int32_t>(t);
  ti -= t < static_cast<float>(ti);
  float n = static_cast<float>(ti);
  float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = (p * r * r + r + 1.0f);
  // Scale by 2^n in two halves: n reaches 128 (2^128 is inf as a float)
  // while e^x itself still fits.
  int32_t half_n = ti >> 1;
  int32_t scale_bits1 = (half_n + 127) << 23, scale_bits2 = (ti - half_n + 127) << 23;
  float scale1, scale2;
  std::memcpy(&scale1, &scale_bits1, 4);
  std::memcpy(&scale2, &scale_bits2, 4);
  y = y * scale1 * scale2;
  // Saturate and keep NaN with integer masks: gcc will not if-convert
  // float selects on computed values here, and the loop must vectorize.
  uint32_t xb, yb;
  std::memcpy(&xb, &x, 4);
  std::memcpy(&yb, &y, 4);
  uint32_t underflow = -static_cast<uint32_t>(x < -87.3f);
  uint32_t overflow = -static_cast<uint32_t>(x > kExpMaxArg);
  uint32_t nan = -static_cast<uint32_t>(x != x);
  yb &= ~underflow;
  yb = (yb & ~overflow) | (0x7f800000u & overflow);
  yb = (yb & ~nan) | (xb & nan);
  std::memcpy(&y, &yb, 4);
  return y;
}
KILN_INLINE double kexp(double x) { return std::exp(x); }

// tanh for float: Cephes' odd polynomial near 0, 1 - 2/(e^2|x| + 1) beyond.
KILN_INLINE float ktanh(float x) {
  float ax = std::fabs(x);
  float z = x * x;
  float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
                  1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  float large = 1.0f - 2.0f / (kexp(2.0f * ax) + 1.0f);
  uint32_t xb, lb, sb;
  std::memcpy(&xb, &x, 4);
  std::memcpy(&lb, &large, 4);
  std::memcpy(&sb, &small, 4);
  uint32_t use_small = -static_cast<uint32_t>(ax < 0.625f);
  uint32_t rb = (sb & use_small) | (lb & ~use_small);
  rb = (rb & 0x7fffffffu) | (xb & 0x80000000u);  // keeps tanh(-0) = -0
  float r;
  std::memcpy(&r, &rb, 4);
  return r;
}
KILN_INLINE double ktanh(double x) { return std::tanh(x); }

// glibc's libmvec has 8-wide AVX2 versions of these float functions.
// Declaring the scalar symbol as a SIMD function lets gcc call them from
// vectorized loops, as it does under -ffast-math (which kiln avoids: it
// would break NaN and inf handling). Accuracy is within 4 ulp.
#define KILN_VECTOR_LIBM(NAME)                                                       \
  extern "C" __attribute__((simd("notinbranch"), const, nothrow)) float kiln_vec_##NAME(float) \
      __asm__(#NAME "f");                                                            \
  KILN_INLINE float k##NAME(float x) { return kiln_vec_##NAME(x); }                 \
  KILN_INLINE double k##NAME(double x) { return std::NAME(x); }
KILN_VECTOR_LIBM(log)
KILN_VECTOR_LIBM(log1p)
KILN_VECTOR_LIBM(expm1)
KILN_VECTOR_LIBM(sin)
KILN_VECTOR_LIBM(cos)
KILN_VECTOR_LIBM(erf)
#undef KILN_VECTOR_LIBM

extern "C" __attribute__((simd("notinbranch"), const, nothrow)) float kiln_vec_atan2(float, float)
    __asm__("atan2f");
KILN_INLINE float katan2(float a, float b) { return kiln_vec_atan2(a, b); }
KILN_INLINE double katan2(double a, double b) { return std::atan2(a, b); }

extern "C" __attribute__((simd("notinbranch"), const, nothrow)) float kiln_vec_pow(float, float)
    __asm__("powf");

template <class C>
KILN_INLINE C kpow(C a, C b) {
  if constexpr (std::is_same_v<C, float>) return kiln_vec_pow(a, b);
  else if constexpr (std::is_floating_point_v<C>) return std::pow(a, b);
  else return kipow(a, b);
}

}  // namespace kiln
