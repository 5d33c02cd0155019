// Kernels over the rows of a contiguous (rows, cols) input,
// kiln_rows_<op>_<dtype>: reductions (sum, prod, max, min, argmax, argmin),
// softmax, log_softmax and layer_norm; and the reductions over the middle
// dim of a contiguous (outer, count, inner) input, kiln_columns_<op>_<dtype>
// (sum, prod, max, min), so that reducing a leading dim needs no transposing
// copy. Narrow rows (cols <= kWarpRowCols) get one warp each, eight to a
// block; wider ones a block of kThreads each. Softmax and layer_norm read their row
// again after the statistics: it is still in L1/L2, so memory sees one read
// and one write per element.
#include <cfloat>

#include "eager/cuda/device.cuh"

namespace kiln::cuda_kernels {

inline constexpr int kWarps = kThreads / 32;

// The row this thread group reduces, its first lane and the stride between
// its lanes; false when the group has no row.
struct RowLanes {
  int64_t row;
  int lane, width;
};
__device__ __forceinline__ bool row_lanes(const Rows& a, RowLanes& r) {
  if (a.cols <= kWarpRowCols) {
    r = {static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32, static_cast<int>(threadIdx.x % 32), 32};
  } else {
    r = {static_cast<int64_t>(blockIdx.x), static_cast<int>(threadIdx.x), kThreads};
  }
  return r.row < a.rows;
}

// Combines each lane's partial over the row's lanes (a warp, or the block
// through shared memory); every lane gets the result.
template <class A>
__device__ __forceinline__ A shuffle_xor(A v, int lane_mask) {
  // Shuffles move 32 or 64 bits: narrower types travel as int.
  using Moved = std::conditional_t<(sizeof(A) < 4), int, A>;
  return static_cast<A>(__shfl_xor_sync(0xffffffffu, static_cast<Moved>(v), lane_mask));
}

template <class A, class Op>
__device__ __forceinline__ A combine(A v, Op op, int width) {
  for (int o = 16; o > 0; o /= 2) v = op(v, shuffle_xor(v, o));
  if (width == 32) return v;
  __shared__ A partial[kWarps];
  __syncthreads();  // partial may still be read by a previous combine
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  v = partial[0];
  for (int w = 1; w < kWarps; ++w) v = op(v, partial[w]);
  return v;
}

// ---- reductions: out[row] = op over the row ----
struct Sum {
  template <class A> __device__ A operator()(A a, A b) const { return a + b; }
  template <class A> __device__ static A identity() { return A(0); }
};
struct Prod {
  template <class A> __device__ A operator()(A a, A b) const { return a * b; }
  template <class A> __device__ static A identity() { return A(1); }
};
struct Max {
  template <class A> __device__ A operator()(A a, A b) const { return kmaximum(a, b); }
  template <class A> __device__ static A identity() {
    if constexpr (std::is_floating_point_v<A>) return -INFINITY;
    else return std::numeric_limits<A>::lowest();
  }
};
struct Min {
  template <class A> __device__ A operator()(A a, A b) const { return kminimum(a, b); }
  template <class A> __device__ static A identity() {
    if constexpr (std::is_floating_point_v<A>) return INFINITY;
    else return std::numeric_limits<A>::max();
  }
};

// T: the input's storage type, A: the accumulator, R: the output's type.
template <class T, class A, class R, class Op>
__device__ __forceinline__ void reduce_rows(const Rows& a, Op op) {
  RowLanes r;
  if (!row_lanes(a, r) && a.cols > kWarpRowCols) return;
  A acc = Op::template identity<A>();
  if (r.row < a.rows) {
    const T* in = reinterpret_cast<const T*>(a.in) + r.row * a.cols;
    for (int64_t c = r.lane; c < a.cols; c += r.width) acc = op(acc, static_cast<A>(to_compute(in[c])));
  }
  acc = combine(acc, op, r.width);
  if (r.row < a.rows && r.lane == 0) reinterpret_cast<R*>(a.out)[r.row] = store_as<R>(acc);
}

// ---- the same reductions over the middle dim of (outer, count, inner) ----
// A block takes 32 adjacent columns (a warp's coalesced read per row) of
// one outer index; its kWarps warps take every kWarps-th row, and combine
// their partials through shared memory.
template <class T, class A, class R, class Op>
__device__ __forceinline__ void reduce_columns(const Columns& a, Op op) {
  const int64_t tiles = (a.inner + 31) / 32;
  const int64_t outer = blockIdx.x / tiles;
  const int lane = threadIdx.x % 32, part = threadIdx.x / 32;
  const int64_t column = blockIdx.x % tiles * 32 + lane;
  A acc = Op::template identity<A>();
  if (column < a.inner) {
    const T* in = reinterpret_cast<const T*>(a.in) + outer * a.count * a.inner + column;
    for (int64_t r = part; r < a.count; r += kWarps) acc = op(acc, static_cast<A>(to_compute(in[r * a.inner])));
  }
  __shared__ A partial[kWarps][32];
  partial[part][lane] = acc;
  __syncthreads();
  if (part != 0 || column >= a.inner) return;
  for (int p = 1; p < kWarps; ++p) acc = op(acc, partial[p][lane]);
  reinterpret_cast<R*>(a.out)[outer * a.inner + column] = store_as<R>(acc);
}

// Floating sums accumulate in their compute type and keep their dtype;
// integer and bool sums and products accumulate in (and return) int64, as
// in PyTorch. max/min keep the dtype.
#define KILN_REDUCE_KERNELS(NAME, OP, SUFFIX, T, A, R)                                                        \
  KILN_KERNEL(kiln_rows_##NAME##_##SUFFIX, Rows a) { reduce_rows<T, A, R>(a, OP{}); }                         \
  KILN_KERNEL(kiln_columns_##NAME##_##SUFFIX, Columns a) { reduce_columns<T, A, R>(a, OP{}); }
#define KILN_SAME_REDUCE(NAME, OP, SUFFIX, T) KILN_REDUCE_KERNELS(NAME, OP, SUFFIX, T, compute_t<T>, T)
#define KILN_INT64_REDUCE(NAME, OP, SUFFIX, T) KILN_REDUCE_KERNELS(NAME, OP, SUFFIX, T, int64_t, int64_t)
KILN_FOR_FLOATING(KILN_SAME_REDUCE, sum, Sum)
KILN_FOR_INTEGRAL(KILN_INT64_REDUCE, sum, Sum)
KILN_FOR_FLOATING(KILN_SAME_REDUCE, prod, Prod)
KILN_FOR_INTEGRAL(KILN_INT64_REDUCE, prod, Prod)
KILN_FOR_ALL(KILN_SAME_REDUCE, max, Max)
KILN_FOR_ALL(KILN_SAME_REDUCE, min, Min)

// ---- argmax / argmin: the value and index of each row's extreme ----
// The first extreme wins a tie; NaN beats every number (the first NaN is
// the answer), as on the CPU. out gets the values (when not null), indices
// the int64 positions.
template <class A, bool kMax>
__device__ __forceinline__ bool better(A x, int64_t i, A v, int64_t j) {
  if constexpr (std::is_floating_point_v<A>) {
    if (x != x) return v == v || i < j;  // NaN: beats numbers, and the first NaN wins
    if (v != v) return false;
  }
  if (x == v) return i < j;
  return kMax ? x > v : x < v;
}

template <class T, bool kMax>
__device__ __forceinline__ void arg_rows(const Rows& a) {
  using A = compute_t<T>;
  RowLanes r;
  const bool has_row = row_lanes(a, r);
  if (!has_row && a.cols > kWarpRowCols) return;
  A best{};
  int64_t at = INT64_MAX;  // no element yet
  if (has_row) {
    const T* in = reinterpret_cast<const T*>(a.in) + r.row * a.cols;
    for (int64_t c = r.lane; c < a.cols; c += r.width) {
      const A v = static_cast<A>(to_compute(in[c]));
      if (at == INT64_MAX || better<A, kMax>(v, c, best, at)) best = v, at = c;
    }
  }
  auto take = [](A& best, int64_t& at, A v, int64_t j) {
    if (j != INT64_MAX && (at == INT64_MAX || better<A, kMax>(v, j, best, at))) best = v, at = j;
  };
  for (int o = 16; o > 0; o /= 2) take(best, at, shuffle_xor(best, o), shuffle_xor(at, o));
  if (r.width > 32) {
    __shared__ A values[kWarps];
    __shared__ int64_t positions[kWarps];
    if (threadIdx.x % 32 == 0) values[threadIdx.x / 32] = best, positions[threadIdx.x / 32] = at;
    __syncthreads();
    best = values[0], at = positions[0];
    for (int w = 1; w < kWarps; ++w) take(best, at, values[w], positions[w]);
  }
  if (!has_row || r.lane != 0) return;
  if (a.out) reinterpret_cast<T*>(a.out)[r.row] = store_as<T>(best);
  reinterpret_cast<int64_t*>(a.indices)[r.row] = at;
}
#define KILN_ARG_KERNELS(_, SUFFIX, T)                                                                          \
  KILN_KERNEL(kiln_rows_argmax_##SUFFIX, Rows a) { arg_rows<T, true>(a); } \
  KILN_KERNEL(kiln_rows_argmin_##SUFFIX, Rows a) { arg_rows<T, false>(a); }
KILN_FOR_ALL(KILN_ARG_KERNELS, _)

// ---- softmax and log_softmax ----
// One read for the max and the sum of exp(x - max), kept as a running pair
// (the sum rescaled when the max grows), then one pass writing the result.
// A NaN element makes the sum, so the whole row, NaN, as on the CPU.
template <class A>
struct MaxSum {
  A max, sum;
};
template <class A>
__device__ __forceinline__ MaxSum<A> merge(MaxSum<A> x, MaxSum<A> y) {
  if (x.max != x.max || y.max != y.max) return {x.max + y.max, x.sum + y.sum};  // NaN
  A m = x.max > y.max ? x.max : y.max;
  if (m == -INFINITY) return {m, x.sum + y.sum};
  return {m, x.sum * kexp(x.max - m) + y.sum * kexp(y.max - m)};
}

template <class T, bool kLog>
__device__ __forceinline__ void softmax_rows(const Rows& a) {
  using A = compute_t<T>;
  RowLanes r;
  const bool has_row = row_lanes(a, r);
  if (!has_row && a.cols > kWarpRowCols) return;
  MaxSum<A> s{-INFINITY, 0};
  const T* in = reinterpret_cast<const T*>(a.in) + (has_row ? r.row * a.cols : 0);
  if (has_row) {
    // One exp per element: the sum is rescaled only when the max grows; -inf
    // adds nothing (exp(-inf - -inf) would be NaN).
    for (int64_t c = r.lane; c < a.cols; c += r.width) {
      const A v = static_cast<A>(to_compute(in[c]));
      if (v > s.max) {
        s.sum = s.sum * kexp(s.max - v) + A(1);
        s.max = v;
      } else if (v != -INFINITY) {
        s.sum += kexp(v - s.max);
      }
    }
  }
  for (int o = 16; o > 0; o /= 2)
    s = merge(s, MaxSum<A>{shuffle_xor(s.max, o), shuffle_xor(s.sum, o)});
  if (r.width > 32) {
    __shared__ MaxSum<A> partial[kWarps];
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
    __syncthreads();
    s = partial[0];
    for (int w = 1; w < kWarps; ++w) s = merge(s, partial[w]);
  }
  if (!has_row) return;
  T* out = reinterpret_cast<T*>(a.out) + r.row * a.cols;
  if constexpr (kLog) {
    // (x - max) - log(sum), as on the CPU: x - (max + log(sum)) loses digits when |max| is large
    const A log_sum = klog(s.sum);
    for (int64_t c = r.lane; c < a.cols; c += r.width)
      out[c] = store_as<T>((static_cast<A>(to_compute(in[c])) - s.max) - log_sum);
  } else {
    const A scale = A(1) / s.sum;
    for (int64_t c = r.lane; c < a.cols; c += r.width)
      out[c] = store_as<T>(kexp(static_cast<A>(to_compute(in[c])) - s.max) * scale);
  }
}
#define KILN_SOFTMAX_KERNELS(_, SUFFIX, T)                                                                    \
  KILN_KERNEL(kiln_rows_softmax_##SUFFIX, Rows a) { softmax_rows<T, false>(a); } \
  KILN_KERNEL(kiln_rows_log_softmax_##SUFFIX, Rows a) { softmax_rows<T, true>(a); }
KILN_FOR_FLOATING(KILN_SOFTMAX_KERNELS, _)

// ---- layer_norm ----
// The mean, then the mean squared deviation (no cancellation, unlike
// E[x^2] - E[x]^2), then (x - mean) * rstd * weight + bias; weight and bias
// are of the input's dtype (or of the compute type, when they were of
// another), null when absent.
template <class T>
__device__ __forceinline__ void layer_norm_rows(const Rows& a) {
  using A = compute_t<T>;
  RowLanes r;
  const bool has_row = row_lanes(a, r);
  if (!has_row && a.cols > kWarpRowCols) return;
  const T* in = reinterpret_cast<const T*>(a.in) + (has_row ? r.row * a.cols : 0);
  A sum = 0;
  if (has_row)
    for (int64_t c = r.lane; c < a.cols; c += r.width) sum += static_cast<A>(to_compute(in[c]));
  const A mean = combine(sum, Sum{}, r.width) / static_cast<A>(a.cols);
  A squares = 0;
  if (has_row)
    for (int64_t c = r.lane; c < a.cols; c += r.width) {
      A d = static_cast<A>(to_compute(in[c])) - mean;
      squares += d * d;
    }
  const A var = combine(squares, Sum{}, r.width) / static_cast<A>(a.cols);
  if (!has_row) return;
  const A rstd = A(1) / sqrt(var + static_cast<A>(a.eps));
  auto param = [&](const char* p, int64_t c) {
    return a.params_in_compute_type ? reinterpret_cast<const A*>(p)[c]
                                    : static_cast<A>(to_compute(reinterpret_cast<const T*>(p)[c]));
  };
  T* out = reinterpret_cast<T*>(a.out) + r.row * a.cols;
  for (int64_t c = r.lane; c < a.cols; c += r.width) {
    A y = (static_cast<A>(to_compute(in[c])) - mean) * rstd;
    if (a.weight) y *= param(a.weight, c);
    if (a.bias) y += param(a.bias, c);
    out[c] = store_as<T>(y);
  }
}
#define KILN_LAYER_NORM_KERNEL(_, SUFFIX, T) \
  KILN_KERNEL(kiln_rows_layer_norm_##SUFFIX, Rows a) { layer_norm_rows<T>(a); }
KILN_FOR_FLOATING(KILN_LAYER_NORM_KERNEL, _)

}  // namespace kiln::cuda_kernels
