// Reductions. One engine serves sum, prod, mean, amax/amin and any/all: the
// input is read in memory order (no copy for permuted dense views), its dims
// coalesce into alternating runs of kept and reduced dims, and each reduced
// run is one [A, R, B] pass: out[a, b] = combine over r of x[a, r, b]. Passes
// vectorize along b; a small B is widened by folding several rows into one,
// so B == 1 becomes a reduction with 64 independent accumulator lanes. A
// second, simpler engine finds values and indices (max/min(dim), argmax).
// var and logsumexp reuse the engine with a per-output "center" (the mean,
// the max), so they read the input twice instead of materializing temporaries.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>

#include "eager/autograd.h"
#include "eager/cuda/launch.h"
#include "eager/loops.h"
#include "eager/op_util.h"
#include "eager/ops.h"
#include "eager/scalar_math.h"
#include "runtime/parallel.h"

namespace kiln {
namespace {

// Elements per task below which work stays on one thread.
constexpr int64_t kGrain = 32768;
// Rows narrower than this fold several rows into one so the inner loop has
// enough independent lanes to vectorize and hide add latency.
constexpr int64_t kMinWidth = 64;
// Columns per task when B is wide: the accumulators stay in L1.
constexpr int64_t kTileWidth = 2048;

// ---------------------------------------------------------------------------
// Reduction ops. `acc_t` is what partial results are kept in, `lift` maps an
// input element into it, `combine` is associative, `out_t` is the result.

// Sums keep integers exact in int64 and floats accurate: float32 adds in
// double (as accurate as NumPy's pairwise sum, and memory-bound anyway);
// 16-bit floats add in float.
template <class T>
using wide_t = std::conditional_t<!is_floating_v<T>, int64_t,
                                  std::conditional_t<sizeof(T) == 2, float, double>>;

// Combine-only ops on accumulators. Passes after the first run on these, so
// every input dtype with the same accumulator shares their kernels.
template <class Acc>
struct Add {
  using acc_t = Acc;
  static Acc identity() { return Acc(0); }
  static Acc combine(Acc a, Acc b) { return a + b; }
};
template <class Acc>
struct Mul {
  using acc_t = Acc;
  static Acc identity() { return Acc(1); }
  static Acc combine(Acc a, Acc b) { return a * b; }
};
// NaN wins, as in PyTorch; branch-free (`|`, not `||`) so it vectorizes to
// blends.
template <class Acc, bool kMax>
struct Extremum {
  using acc_t = Acc;
  static Acc identity() {
    if constexpr (std::is_floating_point_v<Acc>)
      return kMax ? -std::numeric_limits<Acc>::infinity() : std::numeric_limits<Acc>::infinity();
    else
      return kMax ? std::numeric_limits<Acc>::lowest() : std::numeric_limits<Acc>::max();
  }
  static Acc combine(Acc a, Acc b) {
    bool take = kMax ? b > a : b < a;
    if constexpr (std::is_floating_point_v<Acc>) take = take | (b != b);
    return take ? b : a;
  }
};
// Truth values as bytes: bool arithmetic vectorizes worse.
template <bool kAny>
struct Logical {
  using acc_t = uint8_t;
  static uint8_t identity() { return kAny ? 0 : 1; }
  static uint8_t combine(uint8_t a, uint8_t b) { return kAny ? (a | b) : (a & b); }
};

// A reduction of T: `Combine` plus how an input element enters it.
template <class T, class Combine, class Out>
struct Reduction : Combine {
  using partial = Combine;
  using out_t = Out;
  using acc_t = typename Combine::acc_t;
  static acc_t lift(T x) { return acc_t(compute_t<T>(x)); }
};

// Sums keep integers exact in int64 and floats accurate: float32 adds in
// double, 16-bit floats in float.
template <class T>
using wide_t = std::conditional_t<!is_floating_v<T>, int64_t,
                                  std::conditional_t<sizeof(T) == 2, float, double>>;
template <class T>
using sum_out_t = std::conditional_t<is_floating_v<T>, T, int64_t>;

template <class T>
struct SumOp : Reduction<T, Add<wide_t<T>>, sum_out_t<T>> {
  // Float rows add in float lanes for short blocks (kFlushRows adds per
  // lane, so errors stay at NumPy's pairwise level), flushed into double:
  // widening every element would make cached inputs compute-bound.
  static constexpr bool kFloatBlocks = std::is_same_v<T, float>;
};
template <class T> using ProdOp = Reduction<T, Mul<wide_t<T>>, sum_out_t<T>>;
template <class T> using MaxOp = Reduction<T, Extremum<compute_t<T>, true>, T>;
template <class T> using MinOp = Reduction<T, Extremum<compute_t<T>, false>, T>;
// any/all reduce bool tensors only (other dtypes are compared with 0 first).
template <class T> using AnyOp = Reduction<T, Logical<true>, bool>;
template <class T> using AllOp = Reduction<T, Logical<false>, bool>;

// Named functors rather than lambdas, so kernels instantiated with them are
// shared across ops: lift, identity, final stores.
template <class Op>
struct LiftWith {
  template <class T>
  auto operator()(T v) const { return Op::lift(v); }
};
struct Same {
  template <class V>
  V operator()(V v) const { return v; }
};
struct Keep {
  template <class V>
  V operator()(V v, int64_t) const { return v; }
};
template <class Acc, class Out>
struct ConvertTo {
  Out operator()(Acc v, int64_t) const { return convert<Out>(v); }
};
template <class Acc, class Out>
struct AverageTo {
  Acc n;
  Out operator()(Acc v, int64_t) const { return convert<Out>(v / n); }
};

// ---------------------------------------------------------------------------
// The [A, R, B] pass.

template <class Op>
constexpr bool has_float_blocks() {
  if constexpr (requires { Op::kFloatBlocks; }) return Op::kFloatBlocks;
  else return false;
}
// Adds per float lane before a flush into double.
constexpr int64_t kFlushRows = 16;

// Sums of float input read as plain float (first pass, not centered) may
// add in float blocks; see SumOp.
template <class Op, bool kCentered, class In>
constexpr bool float_blocks_v = has_float_blocks<Op>() && !kCentered && std::is_same_v<In, float>;

// acc[j] = combine(acc[j], lift(row[j])) for `rows` rows `stride` apart. With
// kCentered, lift also gets center[j] (the mean for var, the max for
// logsumexp).
// noinline: one vectorized copy per kernel, shared by every pass and call
// site that uses it (inlining multiplied compile time for nothing).
template <class Op, bool kCentered, class In, class Lift>
[[gnu::noinline]] void accumulate_rows(const In* __restrict__ p, int64_t rows, int64_t stride, int64_t width,
                     typename Op::acc_t* __restrict__ acc,
                     const typename Op::acc_t* __restrict__ center, const Lift& lift,
                     float* __restrict__ scratch) {
  if constexpr (float_blocks_v<Op, kCentered, In>) {
    for (int64_t r0 = 0; r0 < rows; r0 += kFlushRows) {
      std::fill(scratch, scratch + width, 0.0f);
      for (int64_t r = r0; r < std::min(rows, r0 + kFlushRows); ++r)
        for (int64_t j = 0; j < width; ++j) scratch[j] += p[r * stride + j];
      for (int64_t j = 0; j < width; ++j) acc[j] += scratch[j];
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r, p += stride) {
    for (int64_t j = 0; j < width; ++j) {
      if constexpr (kCentered) acc[j] = Op::combine(acc[j], lift(p[j], center[j]));
      else acc[j] = Op::combine(acc[j], lift(p[j]));
    }
  }
}

// Lanes per row reduction: 256 bytes of accumulators, i.e. eight AVX2
// registers, enough independent chains to hide the add latency. (A 16-lane
// loop gets fully unrolled by gcc before vectorization and then fails to
// vectorize selects.)
template <class Acc>
constexpr int64_t kRowLanes = std::clamp<int64_t>(256 / sizeof(Acc), 8, 64);

// Combines L lanes pairwise (log depth) rather than in one dependency chain,
// which would cost more than a short row itself.
template <int64_t L, class Lane, class Combine>
Lane fold_lanes(Lane* acc, const Combine& combine) {
  for (int64_t w = L / 2; w >= 1; w /= 2)
    for (int64_t j = 0; j < w; ++j) acc[j] = combine(acc[j], acc[j + w]);
  return acc[0];
}

// Reduces f(i) over [0, n) with independent lanes: scalars for rows shorter
// than a vector, one vector of lanes below kRowLanes, kRowLanes above; each
// then ends in a tail shorter than a vector.
template <class Lane, class F, class Combine>
Lane lane_reduce(int64_t n, Lane init, const F& f, const Combine& combine) {
  constexpr int64_t L = kRowLanes<Lane>, V = std::max<int64_t>(1, 32 / sizeof(Lane));
  if (n < V) {
    for (int64_t i = 0; i < n; ++i) init = combine(init, f(i));
    return init;
  }
  auto lanes = [&]<int64_t W>() {
    Lane acc[W];
    std::fill(acc, acc + W, init);
    int64_t i = 0;
    for (; i + W <= n; i += W)
      for (int64_t j = 0; j < W; ++j) acc[j] = combine(acc[j], f(i + j));
    if constexpr (W > V)
      for (; i + V <= n; i += V)
        for (int64_t j = 0; j < V; ++j) acc[j] = combine(acc[j], f(i + j));
    for (; i < n; ++i) acc[0] = combine(acc[0], f(i));
    return fold_lanes<W>(acc, combine);
  };
  return n >= L ? lanes.template operator()<L>() : lanes.template operator()<V>();
}

// The reduction of one contiguous row p[0, n). Float sums work in float
// blocks (see SumOp), each folded into the double total.
template <class Op, bool kCentered, class In, class Lift>
[[gnu::noinline]] typename Op::acc_t reduce_row(const In* __restrict__ p, int64_t n,
                                                typename Op::acc_t center, const Lift& lift) {
  using Acc = typename Op::acc_t;
  constexpr bool kBlocks = float_blocks_v<Op, kCentered, In>;
  using Lane = std::conditional_t<kBlocks, float, Acc>;
  auto combine = [](Lane a, Lane b) -> Lane {
    if constexpr (kBlocks) return a + b;
    else return Op::combine(a, b);
  };
  const Lane identity = kBlocks ? Lane(0) : Lane(Op::identity());
  const int64_t block = kBlocks ? kRowLanes<float> * kFlushRows : std::max<int64_t>(n, 1);
  Acc total = Op::identity();
  for (int64_t i = 0; i < n; i += block) {
    const In* q = p + i;
    auto f = [&](int64_t j) -> Lane {
      if constexpr (kBlocks) return q[j];
      else if constexpr (kCentered) return lift(q[j], center);
      else return lift(q[j]);
    };
    total = Op::combine(total, Acc(lane_reduce<Lane>(std::min(block, n - i), identity, f, combine)));
  }
  return total;
}

// Reduces x, a contiguous [A, R, B] block, into out[A, B]. `lift` reads the
// input (Op::lift on the first pass, the identity on later ones); `store`
// maps a finished accumulator to Out. `centers`, with kCentered, holds one
// value per output element.
template <class Op, bool kCentered, class In, class Out, class Lift, class Store>
void reduce_pass(const In* x, Out* out, int64_t A, int64_t R, int64_t B,
                 const typename Op::acc_t* centers, const Lift& lift, const Store& store) {
  using Acc = typename Op::acc_t;
  const int nt = num_threads();
  // Few outputs and long reductions: split R across threads, then combine the
  // per-thread partials in a fixed order (results do not depend on timing).
  const bool split = nt > 1 && A * R * B >= 2 * kGrain && R >= 4 * nt;
  if (B == 1) {
    auto row = [&](int64_t a, int64_t r0, int64_t r1) {
      return reduce_row<Op, kCentered>(x + a * R + r0, r1 - r0, kCentered ? centers[a] : Acc{}, lift);
    };
    if (split && A < 4 * nt) {
      std::unique_ptr<Acc[]> partial(new Acc[nt * A]);
      parallel_for(0, nt, 1, [&](int64_t pb, int64_t pe) {
        for (int64_t p = pb; p < pe; ++p)
          for (int64_t a = 0; a < A; ++a) partial[p * A + a] = row(a, R * p / nt, R * (p + 1) / nt);
      });
      for (int64_t a = 0; a < A; ++a) {
        Acc v = partial[a];
        for (int64_t p = 1; p < nt; ++p) v = Op::combine(v, partial[p * A + a]);
        out[a] = store(v, a);
      }
    } else {
      parallel_for(0, A, std::max<int64_t>(1, kGrain / R), [&](int64_t ab, int64_t ae) {
        for (int64_t a = ab; a < ae; ++a) out[a] = store(row(a, 0, R), a);
      });
    }
    return;
  }
  // Fold k rows of a narrow [R, B] slab into one row of width W = k * B: lane
  // j then accumulates column j % B, and the k groups combine at the end.
  const int64_t k = B >= kMinWidth ? 1 : std::max<int64_t>(1, std::min(kMinWidth / B, R));
  const int64_t W = k * B;
  const int64_t tile = k > 1 ? B : std::min(B, kTileWidth);
  const int64_t ntiles = (B + tile - 1) / tile;
  const int64_t units = A * ntiles;  // (a, column tile) pairs, each independent
  const int64_t bufsize = std::max(W, tile);
  // Per-task buffers: accumulators, replicated centers, float block lanes.
  struct Scratch {
    std::unique_ptr<Acc[]> acc, rep;
    std::unique_ptr<float[]> lanes;
    Scratch(int64_t n, int64_t nrep)
        : acc(new Acc[n]), rep(new Acc[nrep]), lanes(new float[float_blocks_v<Op, kCentered, In> ? n : 1]) {}
  };

  // Reduces rows [r0, r1) of unit u into acc[0, bw); returns (first output, bw).
  auto run_unit = [&](int64_t u, int64_t r0, int64_t r1, Acc* acc, Acc* rep, float* scratch) {
    const int64_t a = u / ntiles, b0 = (u % ntiles) * tile, bw = std::min(tile, B - b0);
    const In* slab = x + a * R * B;
    const Acc* center = nullptr;
    if constexpr (kCentered) {
      center = centers + a * B + b0;
      if (k > 1) {  // lanes of a folded row see column j % B
        for (int64_t j = 0; j < W; ++j) rep[j] = centers[a * B + j % B];
        center = rep;
      }
    }
    if (k == 1) {
      std::fill(acc, acc + bw, Op::identity());
      accumulate_rows<Op, kCentered>(slab + r0 * B + b0, r1 - r0, B, bw, acc, center, lift, scratch);
    } else {
      const int64_t nfold = (r1 - r0) / k;
      std::fill(acc, acc + W, Op::identity());
      accumulate_rows<Op, kCentered>(slab + r0 * B, nfold, W, W, acc, center, lift, scratch);
      accumulate_rows<Op, kCentered>(slab + (r0 + nfold * k) * B, r1 - r0 - nfold * k, B, B, acc,
                                     center, lift, scratch);
      for (int64_t g = 1; g < k; ++g)
        for (int64_t j = 0; j < B; ++j) acc[j] = Op::combine(acc[j], acc[g * B + j]);
    }
    return std::pair{a * B + b0, bw};
  };

  if (split && units < 4 * nt) {
    const int64_t P = nt, AB = A * B;
    std::unique_ptr<Acc[]> partial(new Acc[P * AB]);
    parallel_for(0, P, 1, [&](int64_t pb, int64_t pe) {
      Scratch buf(bufsize, kCentered ? W : 1);
      for (int64_t p = pb; p < pe; ++p)
        for (int64_t u = 0; u < units; ++u) {
          auto [off, bw] = run_unit(u, R * p / P, R * (p + 1) / P, buf.acc.get(), buf.rep.get(), buf.lanes.get());
          std::copy(buf.acc.get(), buf.acc.get() + bw, partial.get() + p * AB + off);
        }
    });
    for (int64_t i = 0; i < AB; ++i) {
      Acc v = partial[i];
      for (int64_t p = 1; p < P; ++p) v = Op::combine(v, partial[p * AB + i]);
      out[i] = store(v, i);
    }
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, R * tile));
  parallel_for(0, units, grain, [&](int64_t ub, int64_t ue) {
    Scratch buf(bufsize, kCentered ? W : 1);
    for (int64_t u = ub; u < ue; ++u) {
      auto [off, bw] = run_unit(u, 0, R, buf.acc.get(), buf.rep.get(), buf.lanes.get());
      for (int64_t j = 0; j < bw; ++j) out[off + j] = store(buf.acc[j], off + j);
    }
  });
}

// ---------------------------------------------------------------------------
// Planning: which dims, in which memory order.

std::vector<bool> reduced_mask(const DimList& dims, int64_t ndim, const char* op) {
  std::vector<bool> mask(ndim, dims.empty());
  for (int64_t d : dims) {
    int64_t w = wrap_dim(d, ndim, op);
    if (ndim == 0) continue;  // a 0-d tensor accepts dim 0 / -1 and has nothing to reduce
    KILN_CHECK(!mask[w] || dims.empty(), ValueError,
               "{}: dim {} appears multiple times in the list of dims {}", op, w, shape_str(dims));
    mask[w] = true;
  }
  return mask;
}

Shape reduced_shape(const Shape& shape, const std::vector<bool>& mask, bool keepdim) {
  Shape out;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (!mask[d]) out.push_back(shape[d]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

int64_t reduced_count(const Shape& shape, const std::vector<bool>& mask) {
  int64_t n = 1;
  for (size_t d = 0; d < shape.size(); ++d)
    if (mask[d]) n *= shape[d];
  return n;
}

void check_cpu(const Tensor& x, const char* op) {
  KILN_CHECK(x.device().is_cpu(), DeviceError, "{}: expected a cpu tensor, got {}", op,
             x.device().str());
}

struct Run {
  int64_t size;
  bool reduced;
};

struct ReducePlan {
  Shape shape;             // the logical input's
  Tensor input;            // dense; `runs` walk it in memory order
  std::vector<Run> runs;   // coalesced, outermost first, no size-1 runs
  DimList kept_dims;       // logical kept dims (size > 1) in memory order
  bool out_in_order = true;  // kept_dims ascending: the kernel can write `out` directly
  int reduced_runs() const {
    return static_cast<int>(std::count_if(runs.begin(), runs.end(), [](const Run& r) { return r.reduced; }));
  }
};

// A permuted dense view (a transpose, say) is reduced where it lies; other
// layouts are copied to contiguous first.
ReducePlan plan_reduction(const Tensor& x, const std::vector<bool>& mask) {
  ReducePlan plan;
  plan.shape = x.shape();
  plan.input = x;
  DimList order;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (x.shape()[d] != 1) order.push_back(d);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return x.strides()[a] > x.strides()[b]; });
  int64_t expected = 1;
  bool dense = true;
  for (size_t i = order.size(); i-- > 0;) {
    dense = dense && x.strides()[order[i]] == expected;
    expected *= x.shape()[order[i]];
  }
  if (!dense) {
    plan.input = contiguous(x);
    std::sort(order.begin(), order.end());
  }
  for (int64_t d : order) {
    if (!mask[d]) plan.kept_dims.push_back(d);
    if (!plan.runs.empty() && plan.runs.back().reduced == mask[d]) plan.runs.back().size *= x.shape()[d];
    else plan.runs.push_back({x.shape()[d], static_cast<bool>(mask[d])});
  }
  plan.out_in_order = std::is_sorted(plan.kept_dims.begin(), plan.kept_dims.end());
  return plan;
}

// The kernel writes kept dims in memory order; this gives `out` (logical
// order) either directly or through a temporary that is then permuted in.
struct OutputTarget {
  Tensor out, buffer;
  OutputTarget(const Tensor& out, const ReducePlan& plan) : out(out), buffer(out) {
    if (!plan.out_in_order) {
      Shape sizes;
      for (int64_t d : plan.kept_dims) sizes.push_back(plan.shape[d]);
      buffer = Tensor::empty(sizes, out.dtype());
    }
  }
  void finish(const ReducePlan& plan, const std::vector<bool>& mask, bool keepdim) {
    if (buffer.is_same(out)) return;
    Strides buf_strides = buffer.strides(), strides;
    for (int64_t d = 0; d < static_cast<int64_t>(plan.shape.size()); ++d) {
      if (mask[d] && !keepdim) continue;
      auto it = std::find(plan.kept_dims.begin(), plan.kept_dims.end(), d);
      strides.push_back(it == plan.kept_dims.end() ? 0 : buf_strides[it - plan.kept_dims.begin()]);
    }
    copy_into(out, buffer.as_strided(out.shape(), strides, 0));
  }
};

// Runs every pass of `plan` (at least one reduced run): the first reads T
// through Op::lift, partial results stay in Op::acc_t, the last pass is
// written through `store`.
template <class Op, class T, class Out, class Store>
void run_plan(const ReducePlan& plan, Out* out, const Store& store) {
  using Acc = typename Op::acc_t;
  using Partial = typename Op::partial;
  const T* x = static_cast<const T*>(plan.input.data_ptr());
  std::vector<Run> runs = plan.runs;
  std::unique_ptr<Acc[]> cur;
  for (bool first = true;; first = false) {
    // The longest reduced run first: it shrinks the data the most.
    size_t i = 0;
    for (size_t j = 0; j < runs.size(); ++j)
      if (runs[j].reduced && (!runs[i].reduced || runs[j].size > runs[i].size)) i = j;
    int64_t A = 1, B = 1;
    for (size_t j = 0; j < i; ++j) A *= runs[j].size;
    for (size_t j = i + 1; j < runs.size(); ++j) B *= runs[j].size;
    const int64_t R = runs[i].size;
    runs.erase(runs.begin() + static_cast<int64_t>(i));
    if (i > 0 && i < runs.size() && !runs[i - 1].reduced && !runs[i].reduced) {
      runs[i - 1].size *= runs[i].size;
      runs.erase(runs.begin() + static_cast<int64_t>(i));
    }
    const bool last = std::none_of(runs.begin(), runs.end(), [](const Run& r) { return r.reduced; });
    if (last) {
      if (first) reduce_pass<Op, false>(x, out, A, R, B, nullptr, LiftWith<Op>{}, store);
      else reduce_pass<Partial, false>(cur.get(), out, A, R, B, nullptr, Same{}, store);
      return;
    }
    std::unique_ptr<Acc[]> next(new Acc[A * B]);
    if (first) reduce_pass<Op, false>(x, next.get(), A, R, B, nullptr, LiftWith<Op>{}, Keep{});
    else reduce_pass<Partial, false>(cur.get(), next.get(), A, R, B, nullptr, Same{}, Keep{});
    cur = std::move(next);
  }
}

enum class OnEmpty { Identity, Error };

// A reduction on a GPU: the reduced dims moved last and made contiguous,
// then one kernel over the rows (eager/cuda/rows.cu). mean is the sum
// divided; any/all are max/min of x != 0.
// A contiguous x whose reduced dims (size-1 dims aside) are adjacent is an
// (outer, count, inner) block: those dims, and the dims before and after
// them. Nullopt for any other layout.
struct MiddleDims {
  int64_t outer = 1, count = 1, inner = 1;
};
std::optional<MiddleDims> middle_dims(const Tensor& x, const std::vector<bool>& mask) {
  if (!x.is_contiguous()) return std::nullopt;
  MiddleDims m;
  int runs = 0;  // reduced runs seen so far
  bool in_run = false;
  for (int64_t d = 0; d < x.dim(); ++d) {
    const int64_t size = x.shape()[d];
    if (size == 1) continue;
    if (mask[d]) {
      if (!in_run) ++runs, in_run = true;
      m.count *= size;
    } else {
      in_run = false;
      (runs == 0 ? m.outer : m.inner) *= size;
    }
  }
  if (runs > 1) return std::nullopt;
  return m;
}

Tensor reduce_on_device(const Tensor& x, const std::vector<bool>& mask, bool keepdim, const char* name) {
  const std::string_view op = name;
  const int64_t count = reduced_count(x.shape(), mask);
  Tensor in = op == "any" || op == "all" ? ne(x, 0) : x;
  // A 16-bit mean divides the float32 sum (its 16-bit rounding could overflow).
  const bool half_mean = op == "mean" && (x.dtype() == DType::Float16 || x.dtype() == DType::BFloat16);
  if (half_mean) in = to_dtype(in, DType::Float32);
  const bool sums = op == "sum" || op == "mean" || op == "prod";
  Tensor out = Tensor::empty(reduced_shape(x.shape(), mask, keepdim),
                             sums && !is_floating(x.dtype()) ? DType::Int64 : in.dtype(), x.device());
  const char* kernel = op == "prod" ? "prod" : sums ? "sum" : op == "amax" || op == "any" ? "max" : "min";
  // Leading or middle dims of at least a warp's width of columns are
  // reduced in place; other layouts move the reduced dims last first.
  const std::optional<MiddleDims> m = middle_dims(in, mask);
  if (m && m->inner >= 32) {
    cuda_kernels::reduce_columns(kernel, out, in, m->outer, m->count, m->inner);
  } else {
    if (!m || m->inner != 1) {
      DimList order;
      for (int pass = 0; pass < 2; ++pass)
        for (int64_t d = 0; d < x.dim(); ++d)
          if (mask[d] == (pass == 1)) order.push_back(d);
      in = contiguous(permute(in, order));
    }
    cuda_kernels::reduce_rows(kernel, out, in, out.numel(), count);
  }
  if (op != "mean") return out;
  out = div(out, static_cast<double>(count));
  return half_mean ? to_dtype(out, x.dtype()) : out;
}

// The shared driver: validates dims, handles empty reductions, plans, runs.
// `make_store(count)` gives the final map from accumulator to output.
template <template <class> class OpT, OnEmpty kOnEmpty, class Dispatch, class MakeStore>
Tensor reduce(const Tensor& x, const DimList& dims, bool keepdim, const char* name,
              Dispatch dispatch, MakeStore make_store) {
  auto mask = reduced_mask(dims, x.dim(), name);
  const int64_t count = reduced_count(x.shape(), mask);
  if (!x.device().is_cpu()) {
    dispatch(x.dtype(), name, [&]<class T>() {});  // the CPU's dtype errors
    // Empty inputs and results (identities, errors) are the CPU's business.
    if (count == 0 || x.numel() == 0)
      return to_device(reduce<OpT, kOnEmpty>(x.cpu(), dims, keepdim, name, dispatch, make_store), x.device());
    return reduce_on_device(x, mask, keepdim, name);
  }
  Tensor result;
  dispatch(x.dtype(), name, [&]<class T>() {
    using Op = OpT<T>;
    using Out = typename Op::out_t;
    auto store = make_store.template operator()<Op>(count);
    Tensor out = Tensor::empty(reduced_shape(x.shape(), mask, keepdim), dtype_v<Out>);
    result = out;
    if (count == 0) {
      KILN_CHECK(kOnEmpty != OnEmpty::Error, IndexError,
                 "{}(): cannot reduce over a zero-size dim of a tensor of shape {} (the op has no "
                 "identity)", name, shape_str(x.shape()));
      std::fill_n(out.data<Out>(), out.numel(), store(Op::identity(), 0));
      return;
    }
    if (out.numel() == 0) return;
    ReducePlan plan = plan_reduction(x, mask);
    if (plan.reduced_runs() == 0) {  // only size-1 dims reduced: a conversion (mean divides by 1)
      copy_into(out, x.reshape(out.shape()));
      return;
    }
    OutputTarget target(out, plan);
    run_plan<Op, T>(plan, target.buffer.template data<Out>(), store);
    target.finish(plan, mask, keepdim);
  });
  return result;
}

// Final stores: a conversion, or mean's division by the count.
struct ConvertStore {
  template <class Op>
  auto operator()(int64_t) const { return ConvertTo<typename Op::acc_t, typename Op::out_t>{}; }
};
struct AverageStore {
  template <class Op>
  auto operator()(int64_t count) const {
    return AverageTo<typename Op::acc_t, typename Op::out_t>{typename Op::acc_t(count)};
  }
};

auto any_dtype = [](DType d, const char* op, auto&& fn) { dispatch_all(d, op, fn); };
auto floating_dtype = [](DType d, const char* op, auto&& fn) { dispatch_floating(d, op, fn); };
auto bool_dtype = [](DType, const char*, auto&& fn) { fn.template operator()<bool>(); };

void check_floating(DType dtype, const char* op) {
  KILN_CHECK(is_floating(dtype), DTypeError,
             "{}(): could not infer output dtype. Input dtype must be a floating point dtype, "
             "got {}", op, dtype_name(dtype));
}

// ---------------------------------------------------------------------------
// Meta rules: validation and the result type from the input's type. Eager
// calls them before computing; traces reach them through the OpDefs. A
// dynamic reduced dim makes the count unknown (kDynamic): checks on it wait
// for the run.

struct ReduceType {
  std::vector<bool> mask;
  Shape shape;    // the result's
  int64_t count;  // elements per result element; kDynamic when unknown
};

ReduceType reduce_type(const TensorType& x, const DimList& dims, bool keepdim, const char* op) {
  ReduceType r{reduced_mask(dims, static_cast<int64_t>(x.shape.size()), op), {}, 1};
  r.shape = reduced_shape(x.shape, r.mask, keepdim);
  for (size_t d = 0; d < x.shape.size(); ++d)
    if (r.mask[d]) r.count = is_dynamic(x.shape[d]) || is_dynamic(r.count) ? kDynamic : r.count * x.shape[d];
  return r;
}

TensorType sum_meta(const TensorType& x, const DimList& dims, bool keepdim, std::optional<DType> dtype) {
  DType in = dtype.value_or(x.dtype);
  return {reduce_type(x, dims, keepdim, "sum").shape, dtype ? *dtype : is_floating(in) ? in : DType::Int64, x.device};
}

TensorType prod_meta(const TensorType& x, const DimList& dims, bool keepdim) {
  return {reduce_type(x, dims, keepdim, "prod").shape, is_floating(x.dtype) ? x.dtype : DType::Int64, x.device};
}

TensorType mean_meta(const TensorType& x, const DimList& dims, bool keepdim) {
  check_floating(x.dtype, "mean");
  return {reduce_type(x, dims, keepdim, "mean").shape, x.dtype, x.device};
}

// amax/amin have no identity: an empty reduction is an error.
template <bool kMax>
TensorType extreme_meta(const TensorType& x, const DimList& dims, bool keepdim) {
  const char* op = kMax ? "amax" : "amin";
  ReduceType r = reduce_type(x, dims, keepdim, op);
  KILN_CHECK(r.count != 0, IndexError,
             "{}(): cannot reduce over a zero-size dim of a tensor of shape {} (the op has no identity)", op,
             shape_str(x.shape));
  return {r.shape, x.dtype, x.device};
}

template <bool kAny>
TensorType logical_meta(const TensorType& x, const DimList& dims, bool keepdim) {
  return {reduce_type(x, dims, keepdim, kAny ? "any" : "all").shape, DType::Bool, x.device};
}

TensorType var_meta(const TensorType& x, const DimList& dims, bool keepdim, const char* name) {
  KILN_CHECK(is_floating(x.dtype), DTypeError, "{}(): only supports floating point dtypes, got {}", name,
             dtype_name(x.dtype));
  return {reduce_type(x, dims, keepdim, name).shape, x.dtype, x.device};
}

// Integers promote to the default float dtype, as in current PyTorch.
TensorType logsumexp_meta(const TensorType& x, const DimList& dims, bool keepdim) {
  return {reduce_type(x, dims, keepdim, "logsumexp").shape, is_floating(x.dtype) ? x.dtype : DType::Float32,
          x.device};
}

// max/min(dim), argmax/argmin: dim nullopt reduces the flattened input (a
// 0-d result, or all ones with keepdim). The result shape, and the reduced
// length R (kDynamic when unknown), which must not be 0.
std::pair<Shape, int64_t> arg_type(const TensorType& x, std::optional<int64_t> dim, bool keepdim, const char* name) {
  const int64_t ndim = static_cast<int64_t>(x.shape.size());
  Shape out = keepdim ? Shape(ndim, 1) : Shape{};
  int64_t R = static_numel(x.shape);
  if (dim) {
    const int64_t d = wrap_dim(*dim, ndim, name);
    out = x.shape;
    R = ndim == 0 ? 1 : x.shape[d];
    if (ndim > 0) {
      if (keepdim) out[d] = 1;
      else out.erase(out.begin() + d);
    }
  }
  KILN_CHECK(R != 0, IndexError,
             "{}(): cannot reduce over a zero-size dim (input of shape {}{}); the op has no identity",
             name, shape_str(x.shape), dim ? fmt::format(", dim {}", *dim) : std::string(", all dims"));
  return {out, R};
}

std::vector<TensorType> max_min_meta(const TensorType& x, int64_t dim, bool keepdim, const char* name) {
  Shape shape = arg_type(x, dim, keepdim, name).first;
  return {{shape, x.dtype, x.device}, {shape, DType::Int64, x.device}};
}

TensorType argmax_meta(const TensorType& x, std::optional<int64_t> dim, bool keepdim, const char* name) {
  return {arg_type(x, dim, keepdim, name).first, DType::Int64, x.device};
}

// ---------------------------------------------------------------------------
// Centered reductions (var, logsumexp): a first pass computes one center per
// output, a second reduces f(x, center). Both need the same single [A, R, B]
// view, so several reduced runs are first gathered into one by a copy.

struct Slab {
  ReducePlan plan;
  int64_t A = 1, R = 1, B = 1;
};

Slab single_run(const Tensor& x, const std::vector<bool>& mask) {
  Slab s;
  s.plan = plan_reduction(x, mask);
  if (s.plan.reduced_runs() > 1) {
    DimList perm;
    for (int64_t d = 0; d < x.dim(); ++d)
      if (!mask[d]) perm.push_back(d);
    const int64_t nkept = static_cast<int64_t>(perm.size());
    for (int64_t d = 0; d < x.dim(); ++d)
      if (mask[d]) perm.push_back(d);
    Tensor gathered = contiguous(permute(x, perm));
    ReducePlan p = plan_reduction(gathered, std::vector<bool>(x.dim(), false));
    // Kept dims lead in logical order, so the kernel's output is in order.
    p.shape = x.shape();
    p.kept_dims.clear();
    for (int64_t i = 0; i < nkept; ++i)
      if (x.shape()[perm[i]] != 1) p.kept_dims.push_back(perm[i]);
    p.out_in_order = true;
    int64_t kept = 1;
    for (int64_t i = 0; i < nkept; ++i) kept *= x.shape()[perm[i]];
    p.runs.clear();
    if (kept > 1) p.runs.push_back({kept, false});
    p.runs.push_back({x.numel() / std::max<int64_t>(kept, 1), true});
    s.plan = std::move(p);
  }
  auto it = std::find_if(s.plan.runs.begin(), s.plan.runs.end(), [](const Run& r) { return r.reduced; });
  if (it == s.plan.runs.end()) {
    s.B = s.plan.input.numel();
    return s;
  }
  for (auto j = s.plan.runs.begin(); j != it; ++j) s.A *= j->size;
  for (auto j = it + 1; j != s.plan.runs.end(); ++j) s.B *= j->size;
  s.R = it->size;
  return s;
}

// Validation and empty cases shared by var/std/logsumexp; calls
// body.template operator()<T>(slab, out_buffer_target) when there is work.
template <class Body>
Tensor centered(const Tensor& x, const DimList& dims, bool keepdim, const char* name, double empty_value,
                Body body) {
  check_cpu(x, name);
  auto mask = reduced_mask(dims, x.dim(), name);
  const int64_t count = reduced_count(x.shape(), mask);
  Tensor out = Tensor::empty(reduced_shape(x.shape(), mask, keepdim), x.dtype());
  if (out.numel() == 0) return out;
  if (count == 0) {
    fill(out, empty_value);
    return out;
  }
  dispatch_floating(x.dtype(), name, [&]<class T>() {
    Slab s = single_run(x, mask);
    OutputTarget target(out, s.plan);
    body.template operator()<T>(s, static_cast<const T*>(s.plan.input.data_ptr()),
                                target.buffer.template data<T>(), count);
    target.finish(s.plan, mask, keepdim);
  });
  return out;
}

Tensor var_impl(const Tensor& x, const DimList& dims, int64_t correction, bool keepdim, bool root,
                const char* name) {
  KILN_CHECK(is_floating(x.dtype()), DTypeError,
             "{}(): only supports floating point dtypes, got {}", name, dtype_name(x.dtype()));
  if (!x.device().is_cpu() && x.numel() > 0) {  // composed of GPU ops: two passes, as on the cpu
    const int64_t count = reduced_count(x.shape(), reduced_mask(dims, x.dim(), name));
    Tensor d = sub(x, mean(x, dims, /*keepdim=*/true));
    Tensor v = div(sum(mul(d, d), dims, keepdim), static_cast<double>(std::max<int64_t>(count - correction, 0)));
    return root ? sqrt(v) : v;
  }
  return centered(x, dims, keepdim, name, NAN,
                  [&]<class T>(const Slab& s, const T* px, T* out, int64_t count) {
    using Op = SumOp<T>;
    using Acc = typename Op::acc_t;
    std::unique_ptr<Acc[]> means(new Acc[s.A * s.B]);
    reduce_pass<Op, false>(px, means.get(), s.A, s.R, s.B, nullptr, LiftWith<Op>{},
                           AverageTo<Acc, Acc>{Acc(count)});
    // PyTorch divides by max(n - correction, 0): inf or nan, not an error.
    const Acc denom = Acc(std::max<int64_t>(count - correction, 0));
    reduce_pass<Op, true>(
        px, out, s.A, s.R, s.B, means.get(),
        [](T v, Acc c) {
          Acc d = Op::lift(v) - c;
          return d * d;
        },
        [denom, root](Acc v, int64_t) {
          Acc r = v / denom;
          return convert<T>(root ? std::sqrt(r) : r);
        });
  });
}

Tensor logsumexp_impl(const Tensor& x, const DimList& dims, bool keepdim) {
  if (!x.device().is_cpu() && x.numel() > 0) {  // composed of GPU ops, shifted as below
    Tensor m = amax(x, dims, /*keepdim=*/true);
    m = where(eq(abs(m), INFINITY), 0.0, m);
    Tensor out = add(log(sum(exp(sub(x, m)), dims, /*keepdim=*/true)), m);
    return keepdim ? out : reshape(out, reduced_shape(x.shape(), reduced_mask(dims, x.dim(), "logsumexp"), false));
  }
  return centered(x, dims, keepdim, "logsumexp", -INFINITY,
                  [&]<class T>(const Slab& s, const T* px, T* out, int64_t) {
    using Op = SumOp<T>;
    using Acc = typename Op::acc_t;
    using C = compute_t<T>;
    // Shift by the max so exp cannot overflow; an infinite max shifts by 0
    // (all -inf gives log(0) = -inf, any +inf gives +inf).
    std::unique_ptr<Acc[]> maxes(new Acc[s.A * s.B]);
    reduce_pass<MaxOp<T>, false>(px, maxes.get(), s.A, s.R, s.B, nullptr,
                                 [](T v) { return C(v); },
                                 [](C m, int64_t) { return std::isinf(m) ? Acc(0) : Acc(m); });
    const Acc* m = maxes.get();
    reduce_pass<Op, true>(
        px, out, s.A, s.R, s.B, m, [](T v, Acc c) { return Acc(kexp(C(v) - C(c))); },
        [m](Acc v, int64_t i) { return convert<T>(std::log(v) + m[i]); });
  });
}

}  // namespace

// ---- backward rules ----
namespace {

// The reduced element count a rule divides by; in a trace it must be known.
int64_t static_reduced_count(const Tensor& x, const DimList& dims, const char* op) {
  const int64_t n = reduce_type(type_of(x), dims, false, op).count;
  KILN_CHECK(!is_dynamic(n), TraceError,
             "{}: the gradient of a reduction over a dynamic dim cannot be traced yet (input {}); mark fewer dims "
             "dynamic, or reduce with sum and divide",
             op, shape_str(x.shape()));
  return n;
}

// The keepdim shape of a reduction of `shape` over `dims`: a gradient
// reshaped to it broadcasts against the input.
Shape kept_shape(const Shape& shape, const DimList& dims, const char* op) {
  return reduced_shape(shape, reduced_mask(dims, static_cast<int64_t>(shape.size()), op), true);
}

// The gradient of every output element, spread over the input elements it reduced.
Tensor unreduce(const Tensor& g, const Shape& kept, const Shape& shape) { return expand(reshape(g, kept), shape); }

BackwardFn sum_back(const Tensor& x, const DimList& dims, double scale, const char* op) {
  return [kept = kept_shape(x.shape(), dims, op), shape = x.shape(), scale](const Tensor& g, const Needs&) -> Grads {
    return {unreduce(scale == 1.0 ? g : mul(g, scale), kept, shape)};
  };
}

// d var / dx = 2 (x - mean) / (n - correction); std divides that by 2 std.
BackwardFn var_back(const Tensor& x, const DimList& dims, int64_t correction, const Tensor& std_out,
                    const char* op) {
  const int64_t n = static_reduced_count(x, dims, op);
  const double denom = static_cast<double>(std::max<int64_t>(n - correction, 0));
  return [kept = kept_shape(x.shape(), dims, op), sx = SavedTensor(x), sstd = SavedTensor(std_out), dims,
          denom](const Tensor& g, const Needs&) -> Grads {
    const Tensor& x = sx;
    Tensor centered = sub(x, mean(x, dims, /*keepdim=*/true));
    Tensor scale = sstd.defined() ? div(g, mul(sstd.get(), denom)) : mul(g, 2.0 / denom);
    return {mul(centered, reshape(scale, kept))};
  };
}

// d logsumexp / dx = exp(x - logsumexp): the softmax over the reduced dims.
BackwardFn logsumexp_back(const Tensor& x, const DimList& dims, const Tensor& out) {
  return [kept = kept_shape(x.shape(), dims, "logsumexp"), sx = SavedTensor(x), sout = SavedTensor(out)](
             const Tensor& g, const Needs&) -> Grads {
    return {mul(exp(sub(sx.get(), reshape(sout.get(), kept))), reshape(g, kept))};
  };
}

// The product of the other elements: out / x without zeros; with one zero,
// the product of the rest at the zero and 0 elsewhere; with more, 0.
BackwardFn prod_back(const Tensor& x, const DimList& dims) {
  return [kept = kept_shape(x.shape(), dims, "prod"), sx = SavedTensor(x), dims](const Tensor& g,
                                                                                  const Needs&) -> Grads {
    const Tensor& x = sx;
    Tensor is_zero = eq(x, 0);
    Tensor nonzero_x = where(is_zero, Scalar(1), x);
    Tensor p = prod(nonzero_x, dims, /*keepdim=*/true);
    Tensor zeros_count = sum(is_zero, dims, /*keepdim=*/true);
    Tensor at_single_zero = where(logical_and(is_zero, eq(zeros_count, 1)), p, Scalar(0));
    Tensor others = where(eq(zeros_count, 0), div(p, nonzero_x), at_single_zero);
    return {mul(others, reshape(g, kept))};
  };
}

// amax/amin: the gradient is split evenly among the elements equal to the
// result (PyTorch's rule for ties).
BackwardFn extreme_back(const Tensor& x, const DimList& dims, const Tensor& out, const char* op) {
  return [kept = kept_shape(x.shape(), dims, op), sx = SavedTensor(x), sout = SavedTensor(out), dims](
             const Tensor& g, const Needs&) -> Grads {
    Tensor hit = eq(sx.get(), reshape(sout.get(), kept));
    Tensor share = div(reshape(g, kept), sum(hit, dims, /*keepdim=*/true));
    return {where(hit, share, Scalar(0))};
  };
}

// max/min(dim): the gradient goes to the element each index picked.
BackwardFn indexed_back(const Tensor& x, int64_t dim, bool keepdim, const Tensor& indices, const char* op) {
  dim = wrap_dim(dim, x.dim(), op);
  return [shape = x.shape(), dim, unsqueeze_dim = !keepdim && x.dim() > 0, sidx = SavedTensor(indices)](
             const Tensor& g, const Needs&) -> Grads {
    Tensor idx = sidx, src = g;
    if (unsqueeze_dim) {
      idx = unsqueeze(idx, dim);
      src = unsqueeze(src, dim);
    }
    return {scatter_add(zeros(shape, g.dtype(), g.device()), dim, idx, src)};
  };
}

}  // namespace

Tensor var(const Tensor& x, DimList dims, int64_t correction, bool keepdim) {
  var_meta(type_of(x), dims, keepdim, "var");
  return autograd_op(
      "var", {x}, KILN_ATTRS(dims, correction, keepdim), [&] { return var_impl(x, dims, correction, keepdim, false, "var"); },
      [&](const Tensor&) { return var_back(x, dims, correction, Tensor(), "var"); });
}

Tensor std(const Tensor& x, DimList dims, int64_t correction, bool keepdim) {
  var_meta(type_of(x), dims, keepdim, "std");
  return autograd_op(
      "std", {x}, KILN_ATTRS(dims, correction, keepdim), [&] { return var_impl(x, dims, correction, keepdim, true, "std"); },
      [&](const Tensor& out) { return var_back(x, dims, correction, out, "std"); });
}

Tensor logsumexp(const Tensor& x_in, DimList dims, bool keepdim) {
  logsumexp_meta(type_of(x_in), dims, keepdim);
  return autograd_op(
      "logsumexp", {x_in}, KILN_ATTRS(dims, keepdim),
      [&] {
        Tensor x = is_floating(x_in.dtype()) ? x_in : to_dtype(x_in, DType::Float32);
        return logsumexp_impl(x, dims, keepdim);
      },
      [&](const Tensor& out) { return logsumexp_back(x_in, dims, out); });
}

namespace {

// ---------------------------------------------------------------------------
// Values and indices: max/min(dim), argmax/argmin. The first extreme wins a
// tie; NaN beats every number (the first NaN is the answer).

template <class C, bool kMax>
inline bool better(C x, C v) {
  bool b = kMax ? x > v : x < v;
  if constexpr (std::is_floating_point_v<C>) b = b | ((x != x) & (v == v));  // `|`, `&`: no branches
  return b;
}
template <class C>
inline bool same(C x, C v) {
  if constexpr (std::is_floating_point_v<C>) return x == v || (x != x && v != v);
  else return x == v;
}

// Best of p[0, n) as (value, index + base); n >= 1. 32 lanes let the
// compare-and-blend loop vectorize (16 get unrolled first and do not); lanes
// merge by (value, smaller index).
template <class T, bool kMax>
[[gnu::noinline]] std::pair<compute_t<T>, int64_t> arg_row(const T* p, int64_t n, int64_t base) {
  using C = compute_t<T>;
  constexpr int64_t L = 32;
  C bv = C(p[0]);
  int64_t bi = 0, i = 1;
  if (n >= 2 * L) {
    C v[L];
    int64_t id[L];
    for (int64_t j = 0; j < L; ++j) {
      v[j] = C(p[j]);
      id[j] = j;
    }
    for (i = L; i + L <= n; i += L)
      for (int64_t j = 0; j < L; ++j) {
        C c = C(p[i + j]);
        bool t = better<C, kMax>(c, v[j]);
        v[j] = t ? c : v[j];
        id[j] = t ? i + j : id[j];
      }
    bv = v[0];
    bi = id[0];
    for (int64_t j = 1; j < L; ++j)
      if (better<C, kMax>(v[j], bv) || (same(v[j], bv) && id[j] < bi)) {
        bv = v[j];
        bi = id[j];
      }
  }
  for (; i < n; ++i)  // the tail's indices are all larger: strict improvement only
    if (better<C, kMax>(C(p[i]), bv)) {
      bv = C(p[i]);
      bi = i;
    }
  return {bv, bi + base};
}

// x is a contiguous [A, R, B] block with R >= 1. Writes indices, and values
// when `values` is non-null.
template <class T, bool kMax>
void arg_reduce(const T* x, T* values, int64_t* indices, int64_t A, int64_t R, int64_t B) {
  using C = compute_t<T>;
  auto put = [&](int64_t o, C v, int64_t i) {
    indices[o] = i;
    if (values) values[o] = convert<T>(v);
  };
  if (B == 1) {
    const int nt = num_threads();
    if (nt > 1 && A < nt && R >= 2 * kGrain) {
      // Long rows, few of them: split each row, then merge in order.
      for (int64_t a = 0; a < A; ++a) {
        std::vector<std::pair<C, int64_t>> part(nt);
        parallel_for(0, nt, 1, [&](int64_t pb, int64_t pe) {
          for (int64_t p = pb; p < pe; ++p) {
            int64_t r0 = R * p / nt, r1 = R * (p + 1) / nt;
            part[p] = arg_row<T, kMax>(x + a * R + r0, r1 - r0, r0);
          }
        });
        auto best = part[0];
        for (int p = 1; p < nt; ++p)
          if (better<C, kMax>(part[p].first, best.first)) best = part[p];
        put(a, best.first, best.second);
      }
      return;
    }
    parallel_for(0, A, std::max<int64_t>(1, kGrain / R), [&](int64_t ab, int64_t ae) {
      for (int64_t a = ab; a < ae; ++a) {
        auto [v, i] = arg_row<T, kMax>(x + a * R, R, 0);
        put(a, v, i);
      }
    });
    return;
  }
  const int64_t tile = std::min<int64_t>(B, 256), ntiles = (B + tile - 1) / tile;
  parallel_for(0, A * ntiles, std::max<int64_t>(1, kGrain / (R * tile)), [&](int64_t ub, int64_t ue) {
    C v[256];
    int64_t id[256];
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t a = u / ntiles, b0 = (u % ntiles) * tile, bw = std::min(tile, B - b0);
      const T* slab = x + a * R * B + b0;
      for (int64_t j = 0; j < bw; ++j) {
        v[j] = C(slab[j]);
        id[j] = 0;
      }
      for (int64_t r = 1; r < R; ++r) {
        const T* row = slab + r * B;
        for (int64_t j = 0; j < bw; ++j) {
          C c = C(row[j]);
          bool t = better<C, kMax>(c, v[j]);
          v[j] = t ? c : v[j];
          id[j] = t ? r : id[j];
        }
      }
      for (int64_t j = 0; j < bw; ++j) put(a * B + b0 + j, v[j], id[j]);
    }
  });
}

// x with dim d moved last, the others in order.
Tensor movedim_last(const Tensor& x, int64_t d) {
  DimList order;
  for (int64_t i = 0; i < x.dim(); ++i)
    if (i != d) order.push_back(i);
  order.push_back(d);
  return permute(x, order);
}

// dim nullopt: over the flattened input (a 0-d result, or all-ones with
// keepdim). Returns (values or undefined, indices).
template <bool kMax>
std::pair<Tensor, Tensor> arg_extreme(const Tensor& x, std::optional<int64_t> dim, bool keepdim,
                                      bool want_values, const char* name) {
  const Shape out_shape = arg_type(type_of(x), dim, keepdim, name).first;
  int64_t A = 1, R = x.numel(), B = 1;
  if (dim && x.dim() > 0) {
    const int64_t d = wrap_dim(*dim, x.dim(), name);
    R = x.shape()[d];
    for (int64_t i = 0; i < d; ++i) A *= x.shape()[i];
    for (int64_t i = d + 1; i < x.dim(); ++i) B *= x.shape()[i];
  } else if (dim) {
    R = 1;
  }
  Tensor indices = Tensor::empty(out_shape, DType::Int64, x.device());
  Tensor values = want_values ? Tensor::empty(out_shape, x.dtype(), x.device()) : Tensor();
  if (indices.numel() == 0) return {values, indices};
  if (!x.device().is_cpu()) {  // the reduced dim moved last: one row each
    Tensor in = dim && x.dim() > 0 ? contiguous(movedim_last(x, wrap_dim(*dim, x.dim(), name))) : contiguous(x);
    cuda_kernels::arg_rows(kMax, values, indices, in, A * B, R);
    return {values, indices};
  }
  Tensor in = contiguous(x);
  dispatch_all(x.dtype(), name, [&]<class T>() {
    arg_reduce<T, kMax>(in.data<T>(), want_values ? values.data<T>() : nullptr, indices.data<int64_t>(),
                        A, R, B);
  });
  return {values, indices};
}

}  // namespace

namespace {
template <bool kMax>
std::pair<Tensor, Tensor> max_min(const Tensor& x, int64_t dim, bool keepdim) {
  const char* name = kMax ? "max" : "min";
  max_min_meta(type_of(x), dim, keepdim, name);
  std::vector<Tensor> out = autograd_op_n(
      name, {x}, KILN_ATTRS(dim, keepdim),
      [&] {
        auto [v, i] = arg_extreme<kMax>(x, dim, keepdim, true, name);
        return std::vector<Tensor>{v, i};
      },
      [&](const std::vector<Tensor>& outs) { return indexed_back(x, dim, keepdim, outs[1], name); });
  return {out[0], out[1]};
}

template <bool kMax>
Tensor arg_op(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  const char* name = kMax ? "argmax" : "argmin";
  argmax_meta(type_of(x), dim, keepdim, name);
  if (auto traced = trace_if_active(name, {x}, KILN_ATTRS(dim, keepdim))) return (*traced)[0];
  return arg_extreme<kMax>(x, dim, keepdim, false, name).second;
}
}  // namespace

std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim) { return max_min<true>(x, dim, keepdim); }
std::pair<Tensor, Tensor> min(const Tensor& x, int64_t dim, bool keepdim) { return max_min<false>(x, dim, keepdim); }
Tensor argmax(const Tensor& x, std::optional<int64_t> dim, bool keepdim) { return arg_op<true>(x, dim, keepdim); }
Tensor argmin(const Tensor& x, std::optional<int64_t> dim, bool keepdim) { return arg_op<false>(x, dim, keepdim); }

// ---- public ops ----

Tensor sum(const Tensor& x, DimList dims, bool keepdim, std::optional<DType> dtype) {
  sum_meta(type_of(x), dims, keepdim, dtype);
  return autograd_op(
      "sum", {x}, KILN_ATTRS(dims, keepdim, dtype),
      [&] {
        Tensor in = dtype && *dtype != x.dtype() ? to_dtype(x, *dtype) : x;
        Tensor out = reduce<SumOp, OnEmpty::Identity>(in, dims, keepdim, "sum", any_dtype, ConvertStore{});
        return dtype ? to_dtype(out, *dtype) : out;
      },
      [&](const Tensor&) { return sum_back(x, dims, 1.0, "sum"); });
}

Tensor mean(const Tensor& x, DimList dims, bool keepdim) {
  mean_meta(type_of(x), dims, keepdim);
  return autograd_op(
      "mean", {x}, KILN_ATTRS(dims, keepdim),
      [&] { return reduce<SumOp, OnEmpty::Identity>(x, dims, keepdim, "mean", floating_dtype, AverageStore{}); },
      [&](const Tensor&) {
        const int64_t n = static_reduced_count(x, dims, "mean");
        return sum_back(x, dims, 1.0 / static_cast<double>(n), "mean");
      });
}

Tensor prod(const Tensor& x, DimList dims, bool keepdim) {
  prod_meta(type_of(x), dims, keepdim);
  return autograd_op(
      "prod", {x}, KILN_ATTRS(dims, keepdim),
      [&] { return reduce<ProdOp, OnEmpty::Identity>(x, dims, keepdim, "prod", any_dtype, ConvertStore{}); },
      [&](const Tensor&) { return prod_back(x, dims); });
}

Tensor amax(const Tensor& x, DimList dims, bool keepdim) {
  extreme_meta<true>(type_of(x), dims, keepdim);
  return autograd_op(
      "amax", {x}, KILN_ATTRS(dims, keepdim),
      [&] { return reduce<MaxOp, OnEmpty::Error>(x, dims, keepdim, "amax", any_dtype, ConvertStore{}); },
      [&](const Tensor& out) { return extreme_back(x, dims, out, "amax"); });
}

Tensor amin(const Tensor& x, DimList dims, bool keepdim) {
  extreme_meta<false>(type_of(x), dims, keepdim);
  return autograd_op(
      "amin", {x}, KILN_ATTRS(dims, keepdim),
      [&] { return reduce<MinOp, OnEmpty::Error>(x, dims, keepdim, "amin", any_dtype, ConvertStore{}); },
      [&](const Tensor& out) { return extreme_back(x, dims, out, "amin"); });
}

// Other dtypes compare with zero first (NaN is true): one kernel instead of
// nine, and these are memory-bound anyway.
Tensor any(const Tensor& x, DimList dims, bool keepdim) {
  logical_meta<true>(type_of(x), dims, keepdim);
  if (auto traced = trace_if_active("any", {x}, KILN_ATTRS(dims, keepdim))) return (*traced)[0];
  Tensor b = x.dtype() == DType::Bool ? x : ne(x, Scalar(0));
  return reduce<AnyOp, OnEmpty::Identity>(b, dims, keepdim, "any", bool_dtype, ConvertStore{});
}

Tensor all(const Tensor& x, DimList dims, bool keepdim) {
  logical_meta<false>(type_of(x), dims, keepdim);
  if (auto traced = trace_if_active("all", {x}, KILN_ATTRS(dims, keepdim))) return (*traced)[0];
  Tensor b = x.dtype() == DType::Bool ? x : ne(x, Scalar(0));
  return reduce<AllOp, OnEmpty::Identity>(b, dims, keepdim, "all", bool_dtype, ConvertStore{});
}

namespace {
// The ops over (dims, keepdim).
using DimsOp = Tensor (*)(const Tensor&, DimList, bool);
using DimsMeta = TensorType (*)(const TensorType&, const DimList&, bool);
void register_dims_op(const char* name, DimsMeta meta, DimsOp fn) {
  register_op({.name = name,
               .attrs = {{"dims", AttrKind::Ints}, {"keepdim", AttrKind::Bool}},
               .meta = [meta](const std::vector<TensorType>& in, const Attrs& a) -> std::vector<TensorType> {
                 return {meta(in[0], a.get<DimList>("dims"), a.get<bool>("keepdim"))};
               },
               .run = [fn](const std::vector<Tensor>& in, const Attrs& a) -> std::vector<Tensor> {
                 return {fn(in[0], a.get<DimList>("dims"), a.get<bool>("keepdim"))};
               }});
}
}  // namespace

void register_reduce_ops() {
  register_dims_op("mean", mean_meta, mean);
  register_dims_op("prod", prod_meta, prod);
  register_dims_op("amax", extreme_meta<true>, amax);
  register_dims_op("amin", extreme_meta<false>, amin);
  register_dims_op("any", logical_meta<true>, any);
  register_dims_op("all", logical_meta<false>, all);
  register_dims_op("logsumexp", logsumexp_meta, logsumexp);
  register_op({.name = "sum",
               .attrs = {{"dims", AttrKind::Ints}, {"keepdim", AttrKind::Bool}, {"dtype", AttrKind::DType, true}},
               .meta = KILN_META(sum_meta(in[0], a.get<DimList>("dims"), a.get<bool>("keepdim"),
                                          a.get<std::optional<DType>>("dtype"))),
               .run = KILN_RUN(sum(in[0], a.get<DimList>("dims"), a.get<bool>("keepdim"),
                                   a.get<std::optional<DType>>("dtype")))});
  register_op({.name = "var",
               .attrs = {{"dims", AttrKind::Ints}, {"correction", AttrKind::Int}, {"keepdim", AttrKind::Bool}},
               .meta = KILN_META(var_meta(in[0], a.get<DimList>("dims"), a.get<bool>("keepdim"), "var")),
               .run = KILN_RUN(var(in[0], a.get<DimList>("dims"), a.get<int64_t>("correction"), a.get<bool>("keepdim")))});
  register_op({.name = "std",
               .attrs = {{"dims", AttrKind::Ints}, {"correction", AttrKind::Int}, {"keepdim", AttrKind::Bool}},
               .meta = KILN_META(var_meta(in[0], a.get<DimList>("dims"), a.get<bool>("keepdim"), "std")),
               .run = KILN_RUN(kiln::std(in[0], a.get<DimList>("dims"), a.get<int64_t>("correction"),
                                         a.get<bool>("keepdim")))});
  register_op({.name = "max",
               .num_outputs = 2,
               .attrs = {{"dim", AttrKind::Int}, {"keepdim", AttrKind::Bool}},
               .meta = KILN_META(max_min_meta(in[0], a.get<int64_t>("dim"), a.get<bool>("keepdim"), "max")),
               .run = [](const std::vector<Tensor>& in, const Attrs& a) -> std::vector<Tensor> {
                 auto [v, i] = max(in[0], a.get<int64_t>("dim"), a.get<bool>("keepdim"));
                 return {v, i};
               }});
  register_op({.name = "min",
               .num_outputs = 2,
               .attrs = {{"dim", AttrKind::Int}, {"keepdim", AttrKind::Bool}},
               .meta = KILN_META(max_min_meta(in[0], a.get<int64_t>("dim"), a.get<bool>("keepdim"), "min")),
               .run = [](const std::vector<Tensor>& in, const Attrs& a) -> std::vector<Tensor> {
                 auto [v, i] = min(in[0], a.get<int64_t>("dim"), a.get<bool>("keepdim"));
                 return {v, i};
               }});
  register_op({.name = "argmax",
               .attrs = {{"dim", AttrKind::Int, true}, {"keepdim", AttrKind::Bool}},
               .meta = KILN_META(argmax_meta(in[0], a.get<std::optional<int64_t>>("dim"), a.get<bool>("keepdim"), "argmax")),
               .run = KILN_RUN(argmax(in[0], a.get<std::optional<int64_t>>("dim"), a.get<bool>("keepdim")))});
  register_op({.name = "argmin",
               .attrs = {{"dim", AttrKind::Int, true}, {"keepdim", AttrKind::Bool}},
               .meta = KILN_META(argmax_meta(in[0], a.get<std::optional<int64_t>>("dim"), a.get<bool>("keepdim"), "argmin")),
               .run = KILN_RUN(argmin(in[0], a.get<std::optional<int64_t>>("dim"), a.get<bool>("keepdim")))});
}

}  // namespace kiln
