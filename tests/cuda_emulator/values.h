#pragma once
// The floating formats of the emulated cuBLAS and cuDNN calls, read and
// written as double (each library maps its own type enum onto Format).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

namespace kiln_cuda_emulator {

enum class Format { F32, F64, F16, BF16 };

inline size_t format_bytes(Format f) { return f == Format::F32 ? 4 : f == Format::F64 ? 8 : 2; }

inline double load(const void* p, Format f, int64_t i) {
  switch (f) {
    case Format::F32: return static_cast<const float*>(p)[i];
    case Format::F64: return static_cast<const double*>(p)[i];
    case Format::F16: return __half2float(static_cast<const __half*>(p)[i]);
    case Format::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
  return 0;
}

// Rounded to nearest even, as the libraries store results.
inline void store(void* p, Format f, int64_t i, double v) {
  switch (f) {
    case Format::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case Format::F64: static_cast<double*>(p)[i] = v; break;
    case Format::F16: static_cast<__half*>(p)[i] = __float2half_rn(static_cast<float>(v)); break;
    case Format::BF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(static_cast<float>(v)); break;
  }
}

}  // namespace kiln_cuda_emulator
