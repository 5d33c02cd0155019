// Indexing: index_select, gather, scatter_add, masked_fill, one_hot, nonzero
// and NumPy advanced indexing (index, index_put_).
//
// Every indexed read or write runs on one kernel over three operands of the
// same shape: a "plain" side (the output of a read, the values of a write), a
// strided "base" view of the indexed tensor whose indexed dims have stride 0,
// and an index operand whose value, times a byte stride, is added to the
// base address. Expressing the index ops as strided views this way lets the
// loop engine coalesce dims and split the work across threads unchanged.
#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>

#include "eager/autograd.h"
#include "eager/cuda/launch.h"
#include "eager/loops.h"
#include "eager/op_util.h"
#include "eager/ops.h"

namespace kiln {

namespace {

template <class F>
decltype(auto) dispatch_index(DType dtype, const char* op, F&& fn) {
  switch (dtype) {
    KILN_DISPATCH_CASE(Int32, int32_t)
    KILN_DISPATCH_CASE(Int64, int64_t)
    default: break;
  }
  fail<DTypeError>("{}: expected an int64 or int32 index tensor, got {}", op, dtype_name(dtype));
}

// Moving elements needs only their size, so reads and writes are compiled
// once per width rather than once per dtype.
template <class F>
decltype(auto) dispatch_width(size_t itemsize, F&& fn) {
  switch (itemsize) {
    case 1: return fn.template operator()<uint8_t>();
    case 2: return fn.template operator()<uint16_t>();
    case 4: return fn.template operator()<uint32_t>();
    default: return fn.template operator()<uint64_t>();
  }
}

// How an index value becomes a byte offset into the base.
struct IndexRule {
  int64_t stride = 1;  // bytes per index step
  int64_t size = -1;   // valid indices are [0, size); -1: already validated
  bool wrap = false;   // negative indices count from the end (advanced indexing)
  const char* op = "";
  int64_t dim = 0;

  int64_t offset(int64_t v) const {
    if (size < 0) return v * stride;
    const int64_t i = wrap && v < 0 ? v + size : v;
    if (i < 0 || i >= size) [[unlikely]]
      fail<IndexError>("{}: index {} is out of bounds for dimension {} with size {}", op, v, dim,
                       size);
    return i * stride;
  }
};

// The element operations: `plain` and `based` point at one element each;
// apply_n handles a run where both sides are contiguous.
template <class E>
struct Take {
  using elem = E;
  static constexpr const char* kind = "take";  // the CUDA kernel's (eager/cuda/index.cu)
  static void apply(char* plain, const char* based) { std::memcpy(plain, based, sizeof(E)); }
  static void apply_n(char* plain, const char* based, int64_t n) {
    std::memcpy(plain, based, n * sizeof(E));
  }
};
template <class E>
struct Put {
  using elem = E;
  static constexpr const char* kind = "put";
  static void apply(const char* plain, char* based) { std::memcpy(based, plain, sizeof(E)); }
  static void apply_n(const char* plain, char* based, int64_t n) {
    std::memcpy(based, plain, n * sizeof(E));
  }
};
template <class T>
struct AddTo {
  using elem = T;
  static constexpr const char* kind = "add";
  static void apply(const char* plain, char* based) {
    T& d = *reinterpret_cast<T*>(based);
    const T s = *reinterpret_cast<const T*>(plain);
    if constexpr (std::is_same_v<T, bool>) d = d || s;
    else d = T(static_cast<compute_t<T>>(static_cast<compute_t<T>>(d) + static_cast<compute_t<T>>(s)));
  }
  static void apply_n(const char* plain, char* based, int64_t n) {
    for (int64_t i = 0; i < n; ++i) apply(plain + i * sizeof(T), based + i * sizeof(T));
  }
};

// Runs Op over (plain, base, index), all of one shape. Writes that may hit one
// element twice (scatter, index_put_ with repeated indices) pass
// parallel=false so the last write wins deterministically.
template <class Op, class I>
void run_indexed(const Tensor& plain, const Tensor& base, const Tensor& index, const IndexRule& rule,
                 bool parallel) {
  if (!base.device().is_cpu()) {  // one kernel; repeated writes race there (accumulation is atomic)
    cuda_kernels::indexed(Op::kind, plain, base, index, {rule.stride, rule.size, rule.wrap, rule.dim, rule.op});
    return;
  }
  constexpr int64_t w = sizeof(typename Op::elem);
  auto plan = plan_loop<3>(plain.shape(), {&plain, &base, &index});
  auto inner = [&rule](const std::array<char*, 3>& p, const std::array<int64_t, 3>& s, int64_t n) {
    // A local copy: stores through char* could alias the captured rule and
    // would force it to be reloaded every element.
    const IndexRule r = rule;
    auto index_at = [&](int64_t i) {
      return static_cast<int64_t>(*reinterpret_cast<const I*>(p[2] + i * s[2]));
    };
    if (s[2] == 0) {  // one index for the whole run: a row copy
      char* b = p[1] + r.offset(index_at(0));
      if (s[0] == w && s[1] == w) {
        Op::apply_n(p[0], b, n);
      } else {
        for (int64_t i = 0; i < n; ++i) Op::apply(p[0] + i * s[0], b + i * s[1]);
      }
    } else if (s[0] == w && s[1] == 0 && s[2] == static_cast<int64_t>(sizeof(I))) {
      // gather along the innermost dim, index_select/index of single elements
      for (int64_t i = 0; i < n; ++i) Op::apply(p[0] + i * w, p[1] + r.offset(index_at(i)));
    } else {
      for (int64_t i = 0; i < n; ++i) Op::apply(p[0] + i * s[0], p[1] + i * s[1] + r.offset(index_at(i)));
    }
  };
  run_loop(plan, inner, parallel ? kElementwiseGrain : std::numeric_limits<int64_t>::max());
}

// Reads through an index: out = base[index] with a width-generic copy.
void take(const Tensor& out, const Tensor& base, const Tensor& index, const IndexRule& rule) {
  dispatch_index(index.dtype(), rule.op, [&]<class I>() {
    dispatch_width(out.itemsize(), [&]<class E>() {
      run_indexed<Take<E>, I>(out, base, index, rule, /*parallel=*/true);
    });
  });
}

// gather and scatter_add accept a 0-d tensor as a 1-element 1-D one.
Tensor as_1d(const Tensor& t) { return t.dim() == 0 ? t.reshape({1}) : t; }

// gather/scatter_add's rule: index.size(d) fits x.size(d) in every dim but
// `dim` (and src's size in every dim). Dynamic sizes are checked at run time.
void check_scatter_shapes(const char* op, const TensorType& x, int64_t dim, const TensorType& index,
                          const TensorType* src) {
  const auto nd = static_cast<int64_t>(x.shape.size());
  auto fits = [](int64_t small, int64_t big) { return is_dynamic(small) || is_dynamic(big) || small <= big; };
  KILN_CHECK(static_cast<int64_t>(index.shape.size()) == nd, ShapeError,
             "{}: index has {} dims (shape {}) but the input has {} (shape {})", op, index.shape.size(),
             shape_str(index.shape), nd, shape_str(x.shape));
  if (src)
    KILN_CHECK(static_cast<int64_t>(src->shape.size()) == nd, ShapeError,
               "{}: src has {} dims (shape {}) but the input has {} (shape {})", op, src->shape.size(),
               shape_str(src->shape), nd, shape_str(x.shape));
  for (int64_t d = 0; d < nd; ++d) {
    KILN_CHECK(d == dim || fits(index.shape[d], x.shape[d]), ShapeError,
               "{}: index shape {} is larger than the input shape {} in dim {} (only dim {} may "
               "be)",
               op, shape_str(index.shape), shape_str(x.shape), d, dim);
    if (src)
      KILN_CHECK(fits(index.shape[d], src->shape[d]), ShapeError,
                 "{}: index shape {} is larger than the src shape {} in dim {}", op, shape_str(index.shape),
                 shape_str(src->shape), d);
  }
}

TensorType as_1d(const TensorType& t) {
  if (!t.shape.empty()) return t;
  TensorType one = t;
  one.shape = {1};
  return one;
}

void check_index_dtype(DType dtype, const char* op) {
  KILN_CHECK(dtype == DType::Int64 || dtype == DType::Int32, DTypeError,
             "{}: expected an int64 or int32 index tensor, got {}", op, dtype_name(dtype));
}

// An index, mask or source on another device than x is refused, naming
// both; a 0-d cpu one travels to the kernel by value.
void check_operand_device(const TensorType& x, const TensorType& t, const char* op, const char* what) {
  if (!(t.shape.empty() && t.device.is_cpu())) check_same_device(x, t, op, what);
}

// Indices on the cpu index a tensor on another device as they would on the
// cpu (as in PyTorch): they move to its device. 0-d ones stay: they travel
// by value.
std::vector<Tensor> indices_on_device_of(const Tensor& x, std::vector<Tensor> indices) {
  if (x.device().is_cpu()) return indices;
  for (Tensor& t : indices)
    if (t.defined() && t.device().is_cpu() && t.dim() > 0) t = to_device(t, x.device());
  return indices;
}

std::vector<TensorType> types_of(const std::vector<Tensor>& ts) {
  std::vector<TensorType> out;
  for (const Tensor& t : ts) out.push_back(type_of(t));
  return out;
}

// ---- meta rules ----

TensorType index_select_meta(const TensorType& x_in, int64_t dim, const TensorType& index) {
  KILN_CHECK(index.shape.size() <= 1, ShapeError, "index_select: index must be 0-d or 1-D, got shape {}",
             shape_str(index.shape));
  check_index_dtype(index.dtype, "index_select");
  check_operand_device(x_in, index, "index_select", "index");
  TensorType x = as_1d(x_in);
  dim = wrap_dim(dim, static_cast<int64_t>(x.shape.size()), "index_select");
  if (x_in.shape.empty()) return {index.shape, x.dtype, x.device};
  x.shape[dim] = index.shape.empty() ? 1 : index.shape[0];
  return x;
}

TensorType gather_meta(const TensorType& x_in, int64_t dim, const TensorType& index_in) {
  const TensorType x = as_1d(x_in), index = as_1d(index_in);
  dim = wrap_dim(dim, static_cast<int64_t>(x.shape.size()), "gather");
  check_scatter_shapes("gather", x, dim, index, nullptr);
  check_index_dtype(index.dtype, "gather");
  check_operand_device(x_in, index_in, "gather", "index");
  return {index_in.shape, x.dtype, x.device};
}

TensorType scatter_add_meta(const TensorType& x_in, int64_t dim, const TensorType& index_in, const TensorType& src_in) {
  KILN_CHECK(src_in.dtype == x_in.dtype, DTypeError, "scatter_add: src ({}) must have the input's dtype ({})",
             dtype_name(src_in.dtype), dtype_name(x_in.dtype));
  const TensorType x = as_1d(x_in), index = as_1d(index_in), src = as_1d(src_in);
  dim = wrap_dim(dim, static_cast<int64_t>(x.shape.size()), "scatter_add");
  check_scatter_shapes("scatter_add", x, dim, index, &src);
  check_index_dtype(index.dtype, "scatter_add");
  check_operand_device(x_in, index_in, "scatter_add", "index");
  check_operand_device(x_in, src_in, "scatter_add", "src");
  return x_in;
}

TensorType masked_fill_meta(const TensorType& x, const TensorType& mask) {
  KILN_CHECK(mask.dtype == DType::Bool, DTypeError, "masked_fill: the mask must be bool, got {}",
             dtype_name(mask.dtype));
  check_operand_device(x, mask, "masked_fill", "mask");
  // torch: the result takes the broadcast shape of x and mask.
  return {broadcast_shapes(x.shape, mask.shape, "masked_fill"), x.dtype, x.device};
}

TensorType one_hot_meta(const TensorType& index, int64_t num_classes) {
  KILN_CHECK(num_classes >= -1, ValueError, "one_hot: num_classes must be -1 or non-negative, got {}",
             num_classes);
  KILN_CHECK(index.dtype == DType::Int64 || index.dtype == DType::Int32, DTypeError,
             "one_hot: expected an int64 or int32 index tensor, got {}", dtype_name(index.dtype));
  Shape shape = index.shape;
  shape.push_back(num_classes == -1 ? kDynamic : num_classes);  // -1: from the values
  return {shape, DType::Int64, index.device};
}

// ---- advanced indexing: the layout of the result ----

struct IndexEntry {
  int64_t dim;      // the x dim indexed; -1 for a 0-d bool, which indexes none
  Shape shape;      // the index tensor's (a mask's: its count of true elements)
  size_t source;    // position in the index list
  int64_t column;   // a mask's coordinate; -1: an integer index; -2: a 0-d bool
};

struct AdvancedLayout {
  std::vector<IndexEntry> entries;  // empty: no index tensors, the whole of x is selected
  int64_t int_indices = 0, masks = 0;
  Shape shape;                      // the indexed result's shape
  std::vector<int64_t> from_x;      // per result dim: the x dim it is, or -1 (a broadcast index dim)
  size_t at = 0;                    // where the broadcast index dims start
  Shape bshape;                     // the index tensors' broadcast shape
};

// `mask_count(i)`: the number of true elements of mask i (a 0-d one: 1 or
// 0); a meta rule passes kDynamic.
AdvancedLayout advanced_layout(const TensorType& x, const std::vector<TensorType>& indices, const char* op,
                               const std::function<int64_t(size_t)>& mask_count) {
  const auto nd = static_cast<int64_t>(x.shape.size());
  AdvancedLayout L;
  std::vector<bool> consumed(nd, false);
  int64_t d = 0, first = -1;
  bool adjacent = true, slice_since_adv = false;
  auto check_room = [&](int64_t need) {
    KILN_CHECK(d + need <= nd, IndexError, "{}: too many indices for a tensor of {} dims (shape {})", op, nd,
               shape_str(x.shape));
  };
  for (size_t i = 0; i < indices.size(); ++i) {
    const TensorType& t = indices[i];
    if (!t.defined) {
      check_room(1);
      ++d;
      slice_since_adv = first >= 0;
      continue;
    }
    if (slice_since_adv) adjacent = false;
    if (first < 0) first = d;
    if (t.dtype == DType::Bool) {
      // A k-dim mask selects over k dims: its nonzero() coordinates index them.
      const auto k = static_cast<int64_t>(t.shape.size());
      check_room(k);
      for (int64_t j = 0; j < k; ++j)
        KILN_CHECK(t.shape[j] == x.shape[d + j] || is_dynamic(t.shape[j]) || is_dynamic(x.shape[d + j]), IndexError,
                   "{}: the shape of the mask {} at index {} does not match the shape of the "
                   "indexed tensor {} at index {}",
                   op, shape_str(t.shape), j, shape_str(x.shape), d + j);
      if (k == 0) {
        // NumPy: a 0-d True adds a dim of size 1, a 0-d False one of size 0.
        L.entries.push_back({-1, {mask_count(i)}, i, -2});
      } else {
        const int64_t n = mask_count(i);
        ++L.masks;
        for (int64_t j = 0; j < k; ++j) L.entries.push_back({d + j, {n}, i, j});
      }
      for (int64_t j = 0; j < k; ++j) consumed[d + j] = true;
      d += k;
    } else if (t.dtype == DType::Int64 || t.dtype == DType::Int32) {
      check_room(1);
      L.entries.push_back({d, t.shape, i, -1});
      consumed[d++] = true;
      ++L.int_indices;
    } else {
      fail<IndexError>("{}: tensors used as indices must be int64, int32 or bool, got {}", op, dtype_name(t.dtype));
    }
  }
  if (L.entries.empty()) return L;

  Shape bshape;
  try {
    for (const IndexEntry& e : L.entries) bshape = broadcast_shapes(bshape, e.shape, op);
  } catch (const ShapeError&) {
    std::string shapes;
    for (const IndexEntry& e : L.entries) shapes += (shapes.empty() ? "" : ", ") + shape_str(e.shape);
    fail<IndexError>("{}: shape mismatch: index tensors could not be broadcast together with "
                     "shapes {}",
                     op, shapes);
  }
  // NumPy's rule: adjacent index tensors put their broadcast dims where they
  // stood; separated ones put them first.
  const int64_t bpos = adjacent ? first : 0;
  L.bshape = bshape;
  auto push_bdims = [&] {
    L.shape.insert(L.shape.end(), bshape.begin(), bshape.end());
    L.from_x.insert(L.from_x.end(), bshape.size(), -1);
  };
  if (!adjacent) push_bdims();
  for (int64_t xd = 0; xd < nd; ++xd) {
    if (adjacent && xd == bpos) push_bdims();
    if (!consumed[xd]) {
      L.shape.push_back(x.shape[xd]);
      L.from_x.push_back(xd);
    }
  }
  if (adjacent && bpos == nd) push_bdims();  // a trailing 0-d bool
  L.at = adjacent ? static_cast<size_t>(std::count(consumed.begin(), consumed.begin() + bpos, false)) : 0;
  return L;
}

int64_t unknown_count(size_t) { return kDynamic; }

bool same_shape(const Shape& a, const Shape& b) {
  if (a.size() != b.size()) return false;
  for (size_t d = 0; d < a.size(); ++d)
    if (a[d] != b[d] && !is_dynamic(a[d]) && !is_dynamic(b[d])) return false;
  return true;
}

TensorType index_meta(const TensorType& x, const std::vector<TensorType>& indices) {
  AdvancedLayout L = advanced_layout(x, indices, "index", unknown_count);
  return L.entries.empty() ? x : TensorType{L.shape, x.dtype, x.device};
}

// Checks values against the indexed shape (the layout of x[indices]).
void check_index_put_values(const TensorType& x, const AdvancedLayout& L, const TensorType& values) {
  if (L.entries.empty()) {
    if (values.shape != x.shape) expand_meta(values, x.shape);
    return;
  }
  KILN_CHECK(same_shape(broadcast_shapes(L.shape, values.shape, "index_put_"), L.shape), ShapeError,
             "index_put_: values of shape {} cannot be broadcast to the indexed shape {}", shape_str(values.shape),
             shape_str(L.shape));
}

TensorType index_put_meta(const TensorType& x, const TensorType& values, const std::vector<TensorType>& indices) {
  AdvancedLayout L = advanced_layout(x, indices, "index_put_", unknown_count);
  // A mask's count is only known when the function runs; so is whether values fit.
  if (L.masks == 0) check_index_put_values(x, L, values);
  return x;
}

// `t` viewed over `shape`, with its own dims' strides at dims [at, at + t.dim()).
Tensor place(const Tensor& t, const Shape& shape, size_t at) {
  Strides strides(shape.size(), 0);
  for (size_t k = 0; k < t.shape().size(); ++k) strides[at + k] = t.strides()[k];
  return t.as_strided(shape, std::move(strides), t.offset());
}

// ---- advanced indexing ----

struct AdvancedPlan {
  bool any = false;  // false: no index tensors, the whole of x is selected
  Shape shape;       // the indexed result's shape
  Tensor base;       // x over `shape`, stride 0 in the broadcast index dims
  Tensor index;      // over `shape`: raw indices (checked by `rule`) or byte offsets
  IndexRule rule;
  bool unique = true;  // no element is indexed twice, so writes may run in parallel
};

AdvancedPlan plan_advanced(const Tensor& x, const std::vector<Tensor>& indices, const char* op,
                           bool writes_x) {
  // Masks index by their nonzero() coordinates (computed once, after checks).
  std::vector<Tensor> nz(indices.size());
  auto count = [&](size_t i) -> int64_t {
    const Tensor& t = indices[i];
    if (t.dim() == 0) return t.item<bool>() ? 1 : 0;
    nz[i] = nonzero(t);
    return nz[i].shape()[0];
  };
  AdvancedLayout L = advanced_layout(type_of(x), types_of(indices), op, count);
  AdvancedPlan plan;
  if (L.entries.empty()) return plan;
  // Mask coordinates are distinct; int indices may repeat.
  plan.unique = L.int_indices == 0 && L.masks <= 1;
  plan.any = true;
  plan.shape = L.shape;
  struct Entry {
    int64_t dim;
    Tensor idx;
  };
  std::vector<Entry> adv;
  for (const IndexEntry& e : L.entries) {
    const Tensor& t = indices[e.source];
    if (e.column == -2) adv.push_back({-1, zeros(e.shape, DType::Int64, x.device())});
    else if (e.column >= 0) adv.push_back({e.dim, nz[e.source].select(1, e.column)});
    // index_put_ reads the indices while writing x: they must not change under it.
    else adv.push_back({e.dim, writes_x && t.storage() == x.storage() ? t.clone() : t});
  }
  const Shape& bshape = L.bshape;
  Strides base_strides;
  for (int64_t xd : L.from_x) base_strides.push_back(xd < 0 ? 0 : x.strides()[xd]);
  plan.base = x.as_strided(plan.shape, std::move(base_strides), x.offset());
  const size_t at = L.at;
  const int64_t width = static_cast<int64_t>(x.itemsize());

  if (adv.size() == 1 && adv[0].dim >= 0) {
    // One index tensor: read it in place and check it on the fly.
    const Entry& e = adv[0];
    plan.index = place(e.idx, plan.shape, at);
    plan.rule = {x.strides()[e.dim] * width, x.shape()[e.dim], true, op, e.dim};
    return plan;
  }
  // Several: fold them into one tensor of byte offsets first.
  Tensor off = zeros(bshape, DType::Int64, x.device());
  for (const Entry& e : adv) {
    if (e.dim < 0) continue;
    Tensor idx = expand(e.idx, bshape);
    const IndexRule rule{x.strides()[e.dim] * width, x.shape()[e.dim], true, op, e.dim};
    if (!x.device().is_cpu()) {  // with GPU ops; the bounds check waits for its two reductions
      Tensor i = to_dtype(idx, DType::Int64);
      i = where(lt(i, 0), add(i, rule.size), i);
      if (i.numel() > 0) {
        const int64_t lo = amin(i).item<int64_t>(), hi = amax(i).item<int64_t>();
        const int64_t bad = lo < 0 ? lo - rule.size : hi;
        KILN_CHECK(lo >= 0 && hi < rule.size, IndexError, "{}: index {} is out of bounds for dimension {} with size {}",
                   op, bad, e.dim, rule.size);
      }
      off = add(off, mul(i, rule.stride));
      continue;
    }
    auto loop = plan_loop<2>(bshape, {&off, &idx});
    dispatch_index(idx.dtype(), op, [&]<class I>() {
      run_loop(loop, [&rule](const std::array<char*, 2>& p, const std::array<int64_t, 2>& s, int64_t n) {
        const IndexRule r = rule;
        for (int64_t i = 0; i < n; ++i)
          *reinterpret_cast<int64_t*>(p[0] + i * s[0]) +=
              r.offset(static_cast<int64_t>(*reinterpret_cast<const I*>(p[1] + i * s[1])));
      });
    });
  }
  plan.index = place(off, plan.shape, at);
  plan.rule = {1, -1, false, op, 0};
  return plan;
}

}  // namespace

Tensor index_select(const Tensor& x_in, int64_t dim, const Tensor& index) {
  index_select_meta(type_of(x_in), dim, type_of(index));
  const Tensor x = as_1d(x_in);
  dim = wrap_dim(dim, x.dim(), "index_select");
  return autograd_op(
      "index_select", {x_in, index}, KILN_ATTRS(dim),
      [&] {
        Shape shape = x.shape();
        shape[dim] = index.numel();
        Strides base_strides = x.strides();
        base_strides[dim] = 0;
        Tensor out = Tensor::empty(shape, x.dtype(), x.device());
        Tensor base = x.as_strided(shape, std::move(base_strides), x.offset());
        Tensor idx = place(as_1d(index), shape, dim);
        take(out, base, idx,
             {x.strides()[dim] * static_cast<int64_t>(x.itemsize()), x.shape()[dim], false,
              "index_select", dim});
        return x_in.dim() == 0 ? out.reshape(index.shape()) : out;
      },
      [&](const Tensor&) {
        // Rows picked several times get the sum of their gradients: a
        // scatter_add of g's rows, the index broadcast along the other dims.
        return BackwardFn([shape = x.shape(), in_shape = x_in.shape(), dim, sidx = SavedTensor(index)](
                              const Tensor& g, const Needs&) -> Grads {
          Shape gshape = shape;
          gshape[dim] = sidx.get().numel();
          Shape ishape(shape.size(), 1);
          ishape[dim] = gshape[dim];
          Tensor idx = expand(reshape(sidx.get(), ishape), gshape);
          Tensor gx = scatter_add(zeros(shape, g.dtype(), g.device()), dim, idx, reshape(g, gshape));
          return {reshape(gx, in_shape), Tensor()};
        });
      });
}

Tensor gather(const Tensor& x_in, int64_t dim, const Tensor& index_in) {
  gather_meta(type_of(x_in), dim, type_of(index_in));
  const Tensor x = as_1d(x_in), index = as_1d(index_in);
  dim = wrap_dim(dim, x.dim(), "gather");
  return autograd_op(
      "gather", {x_in, index_in}, KILN_ATTRS(dim),
      [&] {
        Strides base_strides = x.strides();
        base_strides[dim] = 0;
        Tensor out = Tensor::empty(index.shape(), x.dtype(), x.device());
        Tensor base = x.as_strided(index.shape(), std::move(base_strides), x.offset());
        take(out, base, index,
             {x.strides()[dim] * static_cast<int64_t>(x.itemsize()), x.shape()[dim], false, "gather",
              dim});
        return index_in.dim() == 0 ? out.reshape({}) : out;
      },
      [&](const Tensor&) {
        return BackwardFn([shape = x_in.shape(), dim, sidx = SavedTensor(index_in)](const Tensor& g,
                                                                                    const Needs&) -> Grads {
          return {scatter_add(zeros(shape, g.dtype(), g.device()), dim, sidx.get(), g), Tensor()};
        });
      });
}

Tensor scatter_add(const Tensor& x_in, int64_t dim, const Tensor& index_in, const Tensor& src_in) {
  scatter_add_meta(type_of(x_in), dim, type_of(index_in), type_of(src_in));
  const Tensor x = as_1d(x_in), index = as_1d(index_in), src = as_1d(src_in);
  dim = wrap_dim(dim, x.dim(), "scatter_add");
  return autograd_op(
      "scatter_add", {x_in, index_in, src_in}, KILN_ATTRS(dim),
      [&] {
        Tensor out = x.clone();
        Strides base_strides = out.strides();
        base_strides[dim] = 0;
        Tensor base = out.as_strided(index.shape(), std::move(base_strides), out.offset());
        Tensor plain = src.as_strided(index.shape(), src.strides(), src.offset());
        const IndexRule rule{out.strides()[dim] * static_cast<int64_t>(out.itemsize()), out.shape()[dim],
                             false, "scatter_add", dim};
        // Positions that differ in a dim other than `dim` add into different
        // elements, so blocks along the largest such dim can run in parallel.
        int64_t axis = -1;
        for (int64_t d = 0; d < index.dim(); ++d)
          if (d != dim && (axis < 0 || index.shape()[d] > index.shape()[axis])) axis = d;
        const int64_t rows = axis < 0 ? 1 : index.shape()[axis];
        const int64_t per_row = rows == 0 ? 0 : index.numel() / rows;
        dispatch_index(index.dtype(), "scatter_add", [&]<class I>() {
          dispatch_all(out.dtype(), "scatter_add", [&]<class T>() {
            if (axis < 0 || !out.device().is_cpu()) return run_indexed<AddTo<T>, I>(plain, base, index, rule, false);
            parallel_for(0, rows, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(per_row, 1)),
                         [&](int64_t b, int64_t e) {
                           run_indexed<AddTo<T>, I>(plain.narrow(axis, b, e - b), base.narrow(axis, b, e - b),
                                                    index.narrow(axis, b, e - b), rule, false);
                         });
          });
        });
        return x_in.dim() == 0 ? out.reshape({}) : out;
      },
      [&](const Tensor&) {
        // x's gradient passes through; src's is g at the positions its
        // elements were added to (only its index-shaped corner is read).
        return BackwardFn([dim, sidx = SavedTensor(index_in), src_shape = src_in.shape()](
                              const Tensor& g, const Needs& need) -> Grads {
          Tensor gsrc;
          if (need[2]) {
            gsrc = gather(g, dim, sidx.get());
            if (gsrc.shape() != src_shape) {
              Tensor full = zeros(src_shape, g.dtype(), g.device());
              Tensor corner = full;
              for (int64_t d = 0; d < gsrc.dim(); ++d) corner = narrow(corner, d, 0, gsrc.shape()[d]);
              copy_into(corner, gsrc);
              gsrc = full;
            }
          }
          return {need[0] ? g : Tensor(), Tensor(), gsrc};
        });
      });
}

namespace {
// dst = mask ? v : src over dst's shape (src may be dst itself).
void masked_store(const Tensor& dst, const Tensor& src, const Tensor& mask, Scalar value,
                  const char* op) {
  if (!dst.device().is_cpu()) {
    cuda_kernels::where(dst, mask, scalar_tensor(value, dst.dtype()).expand(dst.shape()), src);
    return;
  }
  auto plan = plan_loop<3>(dst.shape(), {&dst, &src, &mask});
  dispatch_all(dst.dtype(), op, [&]<class T>() {
    const T v = value.to<T>();
    run_loop(plan, [v](const std::array<char*, 3>& p, const std::array<int64_t, 3>& s, int64_t n) {
      if (s[0] == sizeof(T) && s[1] == sizeof(T) && s[2] == 1) {  // vectorizable select
        T* o = reinterpret_cast<T*>(p[0]);
        const T* a = reinterpret_cast<const T*>(p[1]);
        const uint8_t* m = reinterpret_cast<const uint8_t*>(p[2]);
        for (int64_t i = 0; i < n; ++i) o[i] = m[i] ? v : a[i];
        return;
      }
      for (int64_t i = 0; i < n; ++i) {
        const T a = *reinterpret_cast<const T*>(p[1] + i * s[1]);
        *reinterpret_cast<T*>(p[0] + i * s[0]) = *reinterpret_cast<const uint8_t*>(p[2] + i * s[2]) ? v : a;
      }
    });
  });
}

// x[mask] = scalar (`x[x > 0] = 0`) as a masked store, without building the
// mask's coordinates. False when the general path must handle (or reject) it.
bool try_masked_put(const Tensor& x, const std::vector<Tensor>& indices, const Tensor& values) {
  if (values.numel() != 1 || values.dim() > 1) return false;
  const Tensor* mask = nullptr;
  int64_t at = 0, slices = 0;
  for (const Tensor& t : indices) {
    if (!t.defined()) {
      ++slices;
      continue;
    }
    if (mask || t.dtype() != DType::Bool || t.dim() == 0) return false;
    mask = &t;
    at = slices;
  }
  if (!mask || slices + mask->dim() > x.dim()) return false;
  Strides strides(x.dim(), 0);
  for (int64_t j = 0; j < mask->dim(); ++j) {
    if (mask->shape()[j] != x.shape()[at + j]) return false;
    strides[at + j] = mask->strides()[j];
  }
  const Scalar value = values.item();  // read before x is written: it may be part of x
  masked_store(x, x, mask->as_strided(x.shape(), std::move(strides), mask->offset()), value,
               "index_put_");
  return true;
}
}  // namespace

Tensor masked_fill(const Tensor& x, const Tensor& mask, Scalar value) {
  const Shape shape = masked_fill_meta(type_of(x), type_of(mask)).shape;
  return autograd_op(
      "masked_fill", {x, mask}, KILN_ATTRS(value),
      [&] {
        Tensor out = Tensor::empty(shape, x.dtype(), x.device());
        masked_store(out, expand(x, shape), expand(mask, shape), value, "masked_fill");
        return out;
      },
      [&](const Tensor&) {
        // Filled elements no longer depend on x.
        return BackwardFn([smask = SavedTensor(mask)](const Tensor& g, const Needs&) -> Grads {
          return {masked_fill(g, smask.get(), 0), Tensor()};
        });
      });
}

Tensor one_hot(const Tensor& index, int64_t num_classes) {
  CurrentOpScope running("one_hot");
  one_hot_meta(type_of(index), num_classes);
  if (auto traced = trace_if_active("one_hot", {index}, KILN_ATTRS(num_classes))) return (*traced)[0];
  if (!index.device().is_cpu()) {  // a comparison with every class, checked with two reductions (which wait)
    const Tensor idx = index.to(DType::Int64);
    KILN_CHECK(num_classes != -1 || idx.numel() > 0, ValueError,
               "one_hot: cannot infer the number of classes from an empty tensor; pass num_classes");
    if (idx.numel() > 0) {
      const int64_t lo = amin(idx).item<int64_t>(), hi = amax(idx).item<int64_t>();
      KILN_CHECK(lo >= 0, IndexError, "one_hot: class values must be non-negative, got {}", lo);
      if (num_classes == -1) num_classes = hi + 1;
      KILN_CHECK(hi < num_classes, IndexError, "one_hot: class value {} is out of range for num_classes={}", hi,
                 num_classes);
    }
    return eq(unsqueeze(idx, -1), to_device(arange(0, num_classes), index.device())).to(DType::Int64);
  }
  Tensor idx = index.to(DType::Int64).contiguous();
  const int64_t* v = idx.data<int64_t>();
  const int64_t n = idx.numel();
  for (int64_t i = 0; i < n; ++i)
    KILN_CHECK(v[i] >= 0, IndexError, "one_hot: class values must be non-negative, got {}", v[i]);
  if (num_classes == -1) {
    KILN_CHECK(n > 0, ValueError,
               "one_hot: cannot infer the number of classes from an empty tensor; pass "
               "num_classes");
    num_classes = *std::max_element(v, v + n) + 1;
  }
  for (int64_t i = 0; i < n; ++i)
    KILN_CHECK(v[i] < num_classes, IndexError,
               "one_hot: class value {} is out of range for num_classes={}", v[i], num_classes);
  Shape shape = index.shape();
  shape.push_back(num_classes);
  Tensor out = zeros(std::move(shape), DType::Int64);
  int64_t* o = out.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) o[i * num_classes + v[i]] = 1;
  return out;
}

Tensor nonzero(const Tensor& x_in) {
  CurrentOpScope running("nonzero");
  if (auto traced = trace_if_active("nonzero", {x_in}, KILN_NO_ATTRS)) return (*traced)[0];
  // The result's size depends on the values, so the host waits for them in
  // any case: on a GPU, the bool mask comes to the cpu and the coordinates go back.
  if (!x_in.device().is_cpu()) return to_device(nonzero(ne(x_in, 0).cpu()), x_in.device());
  const Tensor x = x_in.contiguous();
  const int64_t n = x.numel(), nd = x.dim();
  // Count per block, then each block writes its coordinates from its prefix
  // offset, so both passes run in parallel and the output stays row-major.
  constexpr int64_t kBlock = 1 << 16;
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  std::vector<int64_t> starts(nblocks + 1, 0);
  Tensor out;
  dispatch_all(x.dtype(), "nonzero", [&]<class T>() {
    const T* v = x.data<T>();
    parallel_for(0, nblocks, 1, [&](int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t lo = blk * kBlock, hi = std::min(n, lo + kBlock);
        int64_t count = 0;
        for (int64_t i = lo; i < hi; ++i) count += convert<bool>(v[i]);
        starts[blk + 1] = count;
      }
    });
    std::partial_sum(starts.begin(), starts.end(), starts.begin());
    out = Tensor::empty({starts[nblocks], nd}, DType::Int64, x.device());
    if (nd == 0) return;
    int64_t* o = out.data<int64_t>();
    const Shape& shape = x.shape();
    parallel_for(0, nblocks, 1, [&](int64_t b, int64_t e) {
      std::vector<int64_t> idx(nd);
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t lo = blk * kBlock, hi = std::min(n, lo + kBlock);
        for (int64_t d = nd - 1, rem = lo; d >= 0; --d) {
          idx[d] = rem % shape[d];
          rem /= shape[d];
        }
        int64_t* w = o + starts[blk] * nd;
        for (int64_t i = lo; i < hi; ++i) {
          if (convert<bool>(v[i])) {
            std::copy(idx.begin(), idx.end(), w);
            w += nd;
          }
          for (int64_t d = nd - 1; d >= 0 && ++idx[d] == shape[d]; --d) idx[d] = 0;
        }
      }
    });
  });
  return out;
}

namespace {
// dst[indices] += values (broadcast to the indexed shape), repeated positions
// accumulating: the gradient of advanced indexing.
void index_accumulate(const Tensor& dst, const std::vector<Tensor>& indices, const Tensor& values) {
  AdvancedPlan plan = plan_advanced(dst, indices, "index", /*writes_x=*/false);
  if (!plan.any) {
    copy_into(dst, add(dst, values));
    return;
  }
  Tensor v = expand(values.to(dst.dtype()), plan.shape);
  dispatch_index(plan.index.dtype(), "index", [&]<class I>() {
    dispatch_floating(dst.dtype(), "index", [&]<class T>() {
      run_indexed<AddTo<T>, I>(v, plan.base, plan.index, plan.rule, plan.unique);
    });
  });
}

std::vector<SavedTensor> save_all(const std::vector<Tensor>& ts) { return {ts.begin(), ts.end()}; }
std::vector<Tensor> get_all(const std::vector<SavedTensor>& ts) { return {ts.begin(), ts.end()}; }
}  // namespace

namespace {
std::vector<Tensor> joined(std::vector<Tensor> head, const std::vector<Tensor>& tail) {
  head.insert(head.end(), tail.begin(), tail.end());
  return head;
}
}  // namespace

Tensor index(const Tensor& x, const std::vector<Tensor>& indices_in) {
  const std::vector<Tensor> indices = indices_on_device_of(x, indices_in);
  return autograd_op(
      "index", joined({x}, indices), KILN_NO_ATTRS,
      [&] {
        AdvancedPlan plan = plan_advanced(x, indices, "index", /*writes_x=*/false);
        if (!plan.any) return clone(x);
        Tensor out = Tensor::empty(plan.shape, x.dtype(), x.device());
        take(out, plan.base, plan.index, plan.rule);
        return out;
      },
      [&](const Tensor&) {
        return BackwardFn([shape = x.shape(), sidx = save_all(indices)](const Tensor& g, const Needs&) -> Grads {
          Tensor gx = zeros(shape, g.dtype(), g.device());
          index_accumulate(gx, get_all(sidx), g);
          Grads grads(sidx.size() + 1);
          grads[0] = gx;
          return grads;
        });
      });
}

namespace {
void index_put_impl(const Tensor& x, const std::vector<Tensor>& indices, const Tensor& values) {
  if (try_masked_put(x, indices, values)) {
    x.bump_version();
    return;
  }
  AdvancedPlan plan = plan_advanced(x, indices, "index_put_", /*writes_x=*/true);
  if (!plan.any) {
    copy_into(x, values);
    return;
  }
  KILN_CHECK(broadcast_shapes(plan.shape, values.shape(), "index_put_") == plan.shape, ShapeError,
             "index_put_: values of shape {} cannot be broadcast to the indexed shape {}",
             shape_str(values.shape()), shape_str(plan.shape));
  Tensor v = values.to(x.dtype());
  // Values read from x itself must be read before x is written.
  if (v.storage() == x.storage()) v = v.clone();
  v = expand(v, plan.shape);
  dispatch_index(plan.index.dtype(), "index_put_", [&]<class I>() {
    dispatch_width(x.itemsize(), [&]<class E>() {
      run_indexed<Put<E>, I>(v, plan.base, plan.index, plan.rule, plan.unique);
    });
  });
  x.bump_version();
}
}  // namespace

namespace {
// The overwritten elements of x get no gradient; values get g at the
// positions they were written to (summed over their broadcast).
BackwardFn index_put_backward(const std::vector<Tensor>& indices) {
  return [sidx = save_all(indices)](const Tensor& g, const Needs& need) -> Grads {
    const std::vector<Tensor> idx = get_all(sidx);
    Tensor gx, gv;
    if (need[0]) {
      gx = clone(g);
      index_put_(gx, idx, zeros({}, g.dtype()));
    }
    if (need[1]) gv = index(g, idx);
    return {gx, gv};
  };
}
}  // namespace

void index_put_(const Tensor& x, const std::vector<Tensor>& indices_in, const Tensor& values_in) {
  check_inplace(x, "index_put");
  const std::vector<Tensor> indices = indices_on_device_of(x, indices_in);
  // a 0-d cpu value is a number, to any device (x[idx] = 1.5)
  const Tensor values = values_in.dim() == 0 && values_in.device().is_cpu() && !x.device().is_cpu()
                            ? to_device(values_in, x.device())
                            : values_in;
  if (TraceHook* trace = active_trace()) {
    // Recorded out of place (x with the indexed elements replaced), then assigned.
    const bool grad = should_record({x, values});
    trace_assign(x, trace->record(op_def("index_put"), joined({x, values}, indices), {})[0], "index_put");
    if (grad) record("index_put", x, {x, values}, index_put_backward(indices));
    return;
  }
  if (!should_record({x, values})) return index_put_impl(x, indices, values);
  // Indices that live in x's storage would see the write; keep them as they were.
  std::vector<Tensor> kept = indices;
  for (Tensor& t : kept)
    if (t.defined() && t.storage() == x.storage()) t = clone(t);
  {
    NoGradGuard no_grad;
    index_put_impl(x, kept, values);
  }
  record("index_put", x, {x, values}, index_put_backward(kept));
}

void register_indexing_ops() {
  register_typed<int64_t>({.name = "index_select", .num_inputs = 2, .operands = "x, index"}, "dim",
                          [](const auto& in, int64_t dim) { return index_select_meta(in[0], dim, in[1]); },
                          [](const auto& in, int64_t dim) { return index_select(in[0], dim, in[1]); });
  register_typed<int64_t>({.name = "gather", .num_inputs = 2, .operands = "x, index"}, "dim",
                          [](const auto& in, int64_t dim) { return gather_meta(in[0], dim, in[1]); },
                          [](const auto& in, int64_t dim) { return gather(in[0], dim, in[1]); });
  register_typed<int64_t>({.name = "scatter_add", .num_inputs = 3, .operands = "x, index, src"}, "dim",
                          [](const auto& in, int64_t dim) { return scatter_add_meta(in[0], dim, in[1], in[2]); },
                          [](const auto& in, int64_t dim) { return scatter_add(in[0], dim, in[1], in[2]); });
  register_typed<Scalar>({.name = "masked_fill", .num_inputs = 2, .operands = "x, mask"}, "value",
                         [](const auto& in, Scalar) { return masked_fill_meta(in[0], in[1]); },
                         [](const auto& in, Scalar v) { return masked_fill(in[0], in[1], v); });
  register_typed<int64_t>({.name = "one_hot", .operands = "index"}, "num_classes",
                          [](const auto& in, int64_t n) { return one_hot_meta(in[0], n); },
                          [](const auto& in, int64_t n) { return one_hot(in[0], n); });
  register_typed<>({.name = "nonzero"}, "",
                   [](const auto& in) {
                     return TensorType{{kDynamic, static_cast<int64_t>(in[0].shape.size())}, DType::Int64, in[0].device};
                   },
                   [](const auto& in) { return nonzero(in[0]); });
  auto tail = [](const auto& in, size_t from) {
    using V = std::decay_t<decltype(in)>;
    return V(in.begin() + static_cast<std::ptrdiff_t>(from), in.end());
  };
  register_typed<>({.name = "index", .num_inputs = -1, .operands = "x, indices?..."}, "",
                   [tail](const auto& in) { return index_meta(in[0], tail(in, 1)); },
                   [tail](const auto& in) { return index(in[0], tail(in, 1)); });
  // index_put_ out of place: x with x[indices] = values.
  register_typed<>({.name = "index_put", .num_inputs = -1, .operands = "x, values, indices?..."}, "",
                   [tail](const auto& in) { return index_put_meta(in[0], in[1], tail(in, 2)); },
                   [tail](const auto& in) {
                     Tensor out = clone(in[0]);
                     index_put_(out, tail(in, 2), in[1]);
                     return out;
                   });
}

}  // namespace kiln
