#pragma once
// The parameters of kiln's CUDA kernels, shared by the host code that
// launches them (eager/cuda/launch.cpp) and the kernels (eager/cuda/*.cu).
// Plain structs passed by value: every kernel takes one of them.
#include <cstdint>

#include "eager/nn/pool_window.h"

namespace kiln::cuda_kernels {

// Dims of an elementwise loop after coalescing (eager/loops.h); loops with
// more are split into launches on the host.
inline constexpr int kMaxDims = 6;

// Launch shapes both sides agree on: threads per block, elements per thread
// of an elementwise kernel, and the widest row that one warp reduces (wider
// rows get a block).
inline constexpr int kThreads = 256;
inline constexpr int kVec = 4;
inline constexpr int64_t kWarpRowCols = 1024;

// An input of an elementwise kernel: a strided tensor, or a scalar (a
// Python number, a 0-d CPU tensor) when data is null.
struct Operand {
  const char* data;
  int64_t strides[kMaxDims];  // bytes, per dim of the loop
  double value;               // the scalar, for floating compute types
  int64_t int_value;          // ... and for integer and bool ones
};

template <int Inputs>
struct Elementwise {
  int64_t n;  // elements
  int ndim;
  int64_t sizes[kMaxDims];  // innermost last
  char* out;
  int64_t out_strides[kMaxDims];
  Operand in[Inputs];
  // Every tensor operand is contiguous with aligned 16-byte groups (loop of
  // one dim, stride = element size): the kernel loads and stores groups.
  bool vector;
};

// An indexed read or write: loop.out is the plain side, loop.in[0] the base
// (its indexed dim at stride 0), loop.in[1] the index; the element is at
// base + index * stride (negative indices count from the end when `wrap`;
// valid ones are [0, size), unchecked when size < 0).
struct Indexed {
  Elementwise<2> loop;
  int64_t stride;
  int64_t size;
  bool wrap;
  int dim;
  char op[24];  // the op's name, for the out-of-range message (a copy: the kernel cannot read host strings)
};

// 2-D pooling of contiguous planes (eager/cuda/pool.cu): in and out are
// the input and the output (backward: the output's gradient and dx).
struct Pool {
  nn::functional::PoolGeom g;
  const char* in;
  char* out;
  char* indices;           // max: int64 flat indices into each plane
  bool adaptive;           // averages: adaptive_avg_pool2d's windows
  bool count_include_pad;  // avg_pool2d's divisor
};

struct Random {
  char* out;  // contiguous
  int64_t n;
  uint64_t seed, first;  // philox key and first counter block
  double a, b;           // rand: unused; normal: mean, std; randint: low, range
};

// A reduction or normalization of each row of a contiguous (rows, cols)
// input into out (rows of `out_cols` elements: 1 for reductions, cols for
// softmax and layer_norm).
struct Rows {
  const char* in;
  char* out;
  int64_t rows, cols;
  // layer_norm: weight and bias of `cols` elements of the input's dtype, or
  // of the compute type when `params_in_compute_type` (null when absent),
  // and eps.
  const char* weight;
  const char* bias;
  double eps;
  bool params_in_compute_type;
  // argmax/argmin: each row's int64 index (out, the values, may be null).
  char* indices;
};

// A reduction over the middle dim of a contiguous (outer, count, inner)
// input into out, (outer, inner): the dims before and after those reduced.
struct Columns {
  const char* in;
  char* out;
  int64_t outer, count, inner;
};

}  // namespace kiln::cuda_kernels
