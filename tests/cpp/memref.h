#pragma once
// MLIR's C-interface descriptor of a rank-1 float memref, for tests that
// call `_mlir_ciface_` functions directly.
#include <cstdint>
#include <vector>

struct MemRef1D {
  float* allocated;
  float* aligned;
  int64_t offset;
  int64_t size;
  int64_t stride;
};

inline MemRef1D view(std::vector<float>& v) { return {v.data(), v.data(), 0, static_cast<int64_t>(v.size()), 1}; }
