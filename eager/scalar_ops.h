#pragma once
// The scalar helpers of the elementwise tables that are plain C++, shared by
// the CPU kernels (eager/scalar_math.h) and the CUDA kernels (eager/cuda/),
// so that both compute the same thing: Python's floor division and modulo,
// NaN-propagating max/min, integer powers.
#include <cmath>
#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#define KILN_SCALAR __host__ __device__ inline __attribute__((always_inline))
#else
#define KILN_SCALAR inline __attribute__((always_inline))
#endif

namespace kiln {

template <class C>
KILN_SCALAR C kabs(C x) {
  if constexpr (std::is_unsigned_v<C>) return x;
  else if constexpr (std::is_floating_point_v<C>) return std::fabs(x);
  else return x < 0 ? C(-x) : x;
}

template <class C>
KILN_SCALAR C kmaximum(C a, C b) {
  if constexpr (std::is_floating_point_v<C>) {
    if (a != a) return a;
    if (b != b) return b;
  }
  return a > b ? a : b;
}
template <class C>
KILN_SCALAR C kminimum(C a, C b) {
  if constexpr (std::is_floating_point_v<C>) {
    if (a != a) return a;
    if (b != b) return b;
  }
  return a < b ? a : b;
}

// Python's floor division and modulo (the result takes the divisor's sign).
// Integer division by zero gives 0 as NumPy does, instead of a SIGFPE.
template <class C>
KILN_SCALAR C kfloordiv(C a, C b) {
  if constexpr (std::is_floating_point_v<C>) {
    // PyTorch's div_floor: exact for a/b near integers, unlike floor(a / b)
    // (1.0 // 0.1 is 9, not 10).
    if (b == 0) return a / b;
    C mod = std::fmod(a, b);
    C div = (a - mod) / b;
    if (mod != 0 && ((b < 0) != (mod < 0))) div -= 1;
    if (div == 0) return std::copysign(C(0), a / b);
    C floordiv = std::floor(div);
    if (div - floordiv > C(0.5)) floordiv += 1;
    return floordiv;
  } else if constexpr (std::is_same_v<C, bool>) {
    return b ? a : false;
  } else {
    if (b == 0) return 0;
    if constexpr (std::is_signed_v<C>) {
      if (b == -1) return static_cast<C>(0 - static_cast<std::make_unsigned_t<C>>(a));
      C q = static_cast<C>(a / b);
      if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
      return q;
    } else {
      return static_cast<C>(a / b);
    }
  }
}
template <class C>
KILN_SCALAR C kremainder(C a, C b) {
  if constexpr (std::is_floating_point_v<C>) {
    C r = std::fmod(a, b);
    if (r != 0 && ((r < 0) != (b < 0))) r += b;
    return r;
  } else if constexpr (std::is_same_v<C, bool>) {
    return false;
  } else {
    if (b == 0) return 0;
    if constexpr (std::is_signed_v<C>) {
      if (b == -1) return 0;
      C r = static_cast<C>(a % b);
      if (r != 0 && ((r < 0) != (b < 0))) r = static_cast<C>(r + b);
      return r;
    } else {
      return static_cast<C>(a % b);
    }
  }
}

// a ** b for integers and bool (wrapping like C on overflow).
template <class C>
KILN_SCALAR C kipow(C a, C b) {
  if constexpr (std::is_same_v<C, bool>) {
    return a || !b;
  } else {
    if constexpr (std::is_signed_v<C>) {
      if (b < 0) return a == 1 ? 1 : (a == -1 ? ((b & 1) ? -1 : 1) : 0);
    }
    using U = std::make_unsigned_t<C>;  // wraps like C on overflow, without UB
    U result = 1, base = static_cast<U>(a);
    for (auto e = static_cast<U>(b); e; e >>= 1) {
      if (e & 1) result *= base;
      base *= base;
    }
    return static_cast<C>(result);
  }
}

}  // namespace kiln
