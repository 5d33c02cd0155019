#pragma once
// Philox4x32-10 and the value each random op makes of one element's 64 bits,
// shared by the CPU kernels (creation.cpp) and the CUDA kernels
// (eager/cuda/), so that the same seed gives the same numbers on both.
//
// Element i of a draw reads counter block (first + i / 2), words
// 2 * (i % 2) and 2 * (i % 2) + 1, under the key `seed`; the mapping depends
// on nothing but (seed, first, i).
#include <cmath>
#include <cstdint>

#include "eager/scalar_ops.h"

namespace kiln::philox {

struct Bits {
  uint32_t a, b;
};

KILN_SCALAR Bits element(uint64_t seed, uint64_t first, uint64_t i) {
  uint64_t counter = first + i / 2;
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t{0xD2511F53u} * c0, p1 = uint64_t{0xCD9E8D57u} * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0, n1 = static_cast<uint32_t>(p1);
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1, n3 = static_cast<uint32_t>(p0);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return i % 2 ? Bits{c2, c3} : Bits{c0, c1};
}

inline constexpr double kTwoPow32Inv = 1.0 / 4294967296.0;

// Uniform in [0, 1) with `bits` random significand bits (the dtype's), so
// every value is exact and rounding can never produce 1.0.
KILN_SCALAR double uniform(Bits r, int bits) {
  if (bits == 53) return static_cast<double>((static_cast<uint64_t>(r.a) << 21) ^ (r.b >> 11)) * (1.0 / 9007199254740992.0);
  return std::ldexp(static_cast<double>(r.a >> (32 - bits)), -bits);
}

// Box-Muller; u1 in (0, 1] keeps the log finite.
KILN_SCALAR double normal(Bits r, double mean, double std) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  double u1 = (static_cast<double>(r.a) + 1.0) * kTwoPow32Inv;
  double u2 = static_cast<double>(r.b) * kTwoPow32Inv;
  return mean + std * std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2);
}

// low + (64 bits mod range), in integers: a double would lose bits for
// ranges beyond 2^53.
KILN_SCALAR int64_t integer(Bits r, int64_t low, uint64_t range) {
  uint64_t bits = (static_cast<uint64_t>(r.a) << 32) | r.b;
  return low + static_cast<int64_t>(bits % range);
}

// The significand bits uniform() draws for a floating dtype's size.
inline int uniform_bits(int itemsize_bytes, bool bfloat) {
  return itemsize_bytes == 4 ? 24 : itemsize_bytes == 8 ? 53 : bfloat ? 8 : 11;
}

}  // namespace kiln::philox
