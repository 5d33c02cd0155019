// View ops: new geometry over the same storage, no data copied. Their
// backward rules map the gradient back onto the input's geometry; ops
// composed of other views (narrow, flatten, broadcast_to, transpose) get
// theirs from the views they call.
#include <algorithm>
#include <numeric>

#include "eager/autograd.h"
#include "eager/ops.h"

namespace kiln {

namespace {
std::string dim_str(int64_t d) { return is_dynamic(d) ? "?" : std::to_string(d); }

// Resolves one -1 in a requested shape against n elements (unknown for a
// shape with dynamic dims: the -1 dim becomes dynamic).
Shape infer_shape_of(const Shape& requested, std::optional<int64_t> n, const char* op) {
  Shape shape = requested;
  int64_t known = 1;
  int infer_at = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      KILN_CHECK(infer_at < 0, ShapeError, "{}: only one dimension can be -1, got shape {}", op,
                 shape_str(requested));
      infer_at = static_cast<int>(i);
    } else {
      KILN_CHECK(shape[i] >= 0, ShapeError, "{}: invalid dimension {} in shape {}", op, shape[i],
                 shape_str(requested));
      known *= shape[i];
    }
  }
  if (!n) {
    if (infer_at >= 0) shape[infer_at] = kDynamic;
    return shape;
  }
  if (infer_at >= 0) {
    KILN_CHECK(known != 0 && *n % known == 0, ShapeError,
               "{}: shape {} is invalid for a tensor of {} elements", op, shape_str(requested), *n);
    shape[infer_at] = *n / known;
  } else {
    KILN_CHECK(known == *n, ShapeError, "{}: shape {} is invalid for a tensor of {} elements", op,
               shape_str(requested), *n);
  }
  return shape;
}

std::optional<int64_t> static_numel(const Shape& shape) {
  if (has_dynamic_dims(shape)) return std::nullopt;
  return numel(shape);
}
}  // namespace

Shape infer_shape(const Shape& requested, int64_t n, const char* op) { return infer_shape_of(requested, n, op); }

// ---- meta rules (also what eager validates with) ----
namespace {
TensorType reshape_meta(const TensorType& x, const Shape& shape, const char* op) {
  return {infer_shape_of(shape, static_numel(x.shape), op), x.dtype, x.device};
}

// The permutation `dims` names, checked and wrapped.
DimList checked_permutation(DimList dims, int64_t nd) {
  KILN_CHECK(static_cast<int64_t>(dims.size()) == nd, ShapeError,
             "permute: got {} dims {} for a tensor with {} dims", dims.size(), shape_str(dims), nd);
  std::vector<bool> seen(nd, false);
  for (int64_t i = 0; i < nd; ++i) {
    dims[i] = wrap_dim(dims[i], nd, "permute");
    KILN_CHECK(!seen[dims[i]], ShapeError, "permute: dim {} repeats in {}", dims[i], shape_str(dims));
    seen[dims[i]] = true;
  }
  return dims;
}

// slice's [start, stop) clamped into a dim of (static) `size`.
std::pair<int64_t, int64_t> slice_range(int64_t size, std::optional<int64_t> start, std::optional<int64_t> stop) {
  auto clamp_index = [size](int64_t i) {
    if (i < 0) i += size;
    return std::clamp<int64_t>(i, 0, size);
  };
  return {start ? clamp_index(*start) : 0, stop ? clamp_index(*stop) : size};
}

TensorType permute_meta(const TensorType& x, const DimList& dims) {
  const auto nd = static_cast<int64_t>(x.shape.size());
  DimList p = checked_permutation(dims, nd);
  Shape shape(nd);
  for (int64_t i = 0; i < nd; ++i) shape[i] = x.shape[p[i]];
  return {shape, x.dtype, x.device};
}

TensorType slice_meta(const TensorType& x, int64_t dim, std::optional<int64_t> start, std::optional<int64_t> stop,
                      int64_t step) {
  KILN_CHECK(!x.shape.empty(), IndexError, "slice: cannot slice a 0-d tensor");
  dim = wrap_dim(dim, static_cast<int64_t>(x.shape.size()), "slice");
  KILN_CHECK(step > 0, ValueError, "slice: step must be greater than zero, got {}", step);
  Shape shape = x.shape;
  if (!is_dynamic(shape[dim])) {
    auto [b, e] = slice_range(shape[dim], start, stop);
    shape[dim] = e > b ? (e - b + step - 1) / step : 0;
  }
  return {shape, x.dtype, x.device};
}

TensorType select_meta(const TensorType& x, int64_t dim, int64_t index) {
  KILN_CHECK(!x.shape.empty(), IndexError, "select: invalid index of a 0-d tensor");
  dim = wrap_dim(dim, static_cast<int64_t>(x.shape.size()), "select");
  const int64_t size = x.shape[dim];
  KILN_CHECK(is_dynamic(size) || (index >= -size && index < size), IndexError,
             "index {} is out of bounds for dimension {} with size {}", index, dim, size);
  Shape shape = x.shape;
  shape.erase(shape.begin() + dim);
  return {shape, x.dtype, x.device};
}

TensorType narrow_meta(const TensorType& x, int64_t dim, int64_t start, int64_t length) {
  KILN_CHECK(!x.shape.empty(), IndexError, "narrow: cannot narrow a 0-d tensor");
  dim = wrap_dim(dim, static_cast<int64_t>(x.shape.size()), "narrow");
  const int64_t size = x.shape[dim];
  // With a dynamic size only what does not depend on it is checked.
  const bool ok = is_dynamic(size) ? length >= 0 && (start >= 0 || start + length <= 0)
                                   : (start < 0 ? start + size : start) >= 0 && length >= 0 &&
                                         (start < 0 ? start + size : start) + length <= size;
  KILN_CHECK(ok, IndexError, "narrow: start {} and length {} are out of range for dim {} of size {}",
             is_dynamic(size) || start >= 0 ? start : start + size, length, dim, dim_str(size));
  Shape shape = x.shape;
  shape[dim] = length;
  return {shape, x.dtype, x.device};
}

}  // namespace

TensorType expand_meta(const TensorType& x, Shape shape) {
  const auto nd = static_cast<int64_t>(shape.size()), xd = static_cast<int64_t>(x.shape.size());
  KILN_CHECK(nd >= xd, ShapeError, "expand: the target shape {} has fewer dims than the tensor's shape {}",
             shape_str(shape), shape_str(x.shape));
  for (int64_t i = nd - 1; i >= 0; --i) {
    int64_t xi = i - (nd - xd);
    if (xi >= 0) {
      int64_t have = x.shape[xi];
      if (shape[i] == -1) shape[i] = have;
      KILN_CHECK(have == shape[i] || have == 1 || is_dynamic(have) || is_dynamic(shape[i]), ShapeError,
                 "expand: the tensor's shape {} cannot be expanded to {} (dim {}: {} vs {}; only "
                 "size-1 dims expand)",
                 shape_str(x.shape), shape_str(shape), i, have, shape[i]);
    } else {
      KILN_CHECK(shape[i] >= 0 || is_dynamic(shape[i]), ShapeError,
                 "expand: -1 is not allowed in a new leading dim ({})", shape_str(shape));
    }
  }
  if (!has_dynamic_dims(shape)) numel(shape);  // throws if the expanded element count overflows
  return {shape, x.dtype, x.device};
}

namespace {
// Whether squeeze drops dim d of x (`only`: the one dim asked for).
bool squeezes(const TensorType& x, int64_t d, std::optional<int64_t> only) {
  if (only && *only != d) return false;
  KILN_CHECK(!is_dynamic(x.shape[d]), TraceError,
             "squeeze: dim {} of the traced tensor (shape {}) is dynamic, so whether it has size 1 is only known "
             "when the function runs; squeeze a static dim (squeeze(dim)) or use reshape",
             d, shape_str(x.shape));
  return x.shape[d] == 1;
}

TensorType squeeze_meta(const TensorType& x, std::optional<int64_t> dim) {
  const auto nd = static_cast<int64_t>(x.shape.size());
  std::optional<int64_t> only = dim ? std::optional(wrap_dim(*dim, nd, "squeeze")) : std::nullopt;
  Shape shape;
  for (int64_t d = 0; d < nd; ++d)
    if (!squeezes(x, d, only)) shape.push_back(x.shape[d]);
  return {shape, x.dtype, x.device};
}

TensorType unsqueeze_meta(const TensorType& x, int64_t dim) {
  dim = wrap_dim(dim, static_cast<int64_t>(x.shape.size()) + 1, "unsqueeze");
  Shape shape = x.shape;
  shape.insert(shape.begin() + dim, 1);
  return {shape, x.dtype, x.device};
}

TensorType flatten_meta(const TensorType& x, int64_t start_dim, int64_t end_dim) {
  const auto nd = static_cast<int64_t>(x.shape.size());
  if (nd == 0) return {{1}, x.dtype, x.device};
  start_dim = wrap_dim(start_dim, nd, "flatten");
  end_dim = wrap_dim(end_dim, nd, "flatten");
  KILN_CHECK(start_dim <= end_dim, ValueError, "flatten: start_dim {} comes after end_dim {}", start_dim, end_dim);
  Shape shape(x.shape.begin(), x.shape.begin() + start_dim);
  int64_t merged = 1;
  for (int64_t d = start_dim; d <= end_dim; ++d)
    merged = is_dynamic(merged) || is_dynamic(x.shape[d]) ? kDynamic : merged * x.shape[d];
  shape.push_back(merged);
  shape.insert(shape.end(), x.shape.begin() + end_dim + 1, x.shape.end());
  return {shape, x.dtype, x.device};
}

std::vector<TensorType> broadcast_tensors_meta(const std::vector<TensorType>& xs) {
  Shape shape;
  for (const TensorType& x : xs) shape = broadcast_shapes(shape, x.shape, "broadcast_tensors");
  std::vector<TensorType> out;
  for (const TensorType& x : xs) out.push_back(expand_meta(x, shape));
  return out;
}
}  // namespace

namespace {
// Strides that let `shape` view memory laid out as (old_shape, old_strides),
// or nothing when a copy is needed (PyTorch's computeStride).
std::optional<Strides> view_strides(const Shape& old_shape, const Strides& old_strides,
                                    const Shape& shape) {
  if (numel(old_shape) == 0 || old_shape.empty()) return contiguous_strides(shape);
  Strides strides(shape.size());
  int64_t view_d = static_cast<int64_t>(shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t tensor_d = static_cast<int64_t>(old_shape.size()) - 1; tensor_d >= 0; --tensor_d) {
    tensor_numel *= old_shape[tensor_d];
    if (tensor_d == 0 || (old_shape[tensor_d - 1] != 1 &&
                          old_strides[tensor_d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        strides[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (tensor_d > 0) {
        chunk_base_stride = old_strides[tensor_d - 1];
        tensor_numel = view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return strides;
}

// The rule of every op that only rearranges elements into a new shape.
BackwardFn reshape_back(const Tensor& x) {
  return [shape = x.shape()](const Tensor& g, const Needs&) -> Grads { return {reshape(g, shape)}; };
}

// A view op: autograd_op, and in a trace its result remembers what it views.
// `copy_maybe`: why the result may be a copy rather than a view (reshape),
// which makes writing through it untraceable.
template <class AttrsFn, class Compute, class MakeBackward>
Tensor view_op(const char* name, const Tensor& x, AttrsFn&& attrs, Compute&& compute, MakeBackward&& make_backward,
               const char* copy_maybe = nullptr) {
  Tensor out = autograd_op(name, {x}, attrs, compute, make_backward);
  if (is_symbolic(out)) note_traced_view(out, x, copy_maybe ? nullptr : &op_def(name), attrs(), copy_maybe);
  return out;
}

// Why writing through these results cannot be traced.
constexpr const char* kReshapeCopies =
    "reshape/flatten (it returns a copy when its input's memory layout needs one, so whether the write reaches "
    "the input is only known when the function runs); use .view(...) for a view, or write into a .clone()";
}  // namespace

Tensor view(const Tensor& x, Shape shape) {
  TensorType type = reshape_meta(type_of(x), shape, "view");
  return view_op(
      "view", x, KILN_ATTRS(shape),
      [&] {
        auto strides = view_strides(x.shape(), x.strides(), type.shape);
        KILN_CHECK(strides, ShapeError,
                   "view: shape {} is not compatible with the input's size {} and strides {} (the "
                   "input is not contiguous); use .reshape(...) instead",
                   shape_str(type.shape), shape_str(x.shape()), shape_str(x.strides()));
        return x.as_strided(type.shape, std::move(*strides), x.offset());
      },
      [&](const Tensor&) { return reshape_back(x); });
}

Tensor reshape(const Tensor& x, Shape shape) {
  TensorType type = reshape_meta(type_of(x), shape, "reshape");
  return view_op(
      "reshape", x, KILN_ATTRS(shape),
      [&] {
        if (auto strides = view_strides(x.shape(), x.strides(), type.shape))
          return x.as_strided(type.shape, std::move(*strides), x.offset());
        return view(clone(x), type.shape);
      },
      [&](const Tensor&) { return reshape_back(x); }, kReshapeCopies);
}

Tensor permute(const Tensor& x, DimList dims) {
  TensorType type = permute_meta(type_of(x), dims);
  const int64_t nd = x.dim();
  DimList p = checked_permutation(dims, nd), inverse(nd);
  for (int64_t i = 0; i < nd; ++i) inverse[p[i]] = i;
  return view_op(
      "permute", x, KILN_ATTRS(dims),
      [&] {
        Strides strides(nd);
        for (int64_t i = 0; i < nd; ++i) strides[i] = x.strides()[p[i]];
        return x.as_strided(type.shape, std::move(strides), x.offset());
      },
      [&](const Tensor&) {
        return BackwardFn([inverse](const Tensor& g, const Needs&) -> Grads { return {permute(g, inverse)}; });
      });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  d0 = wrap_dim(d0, x.dim(), "transpose");  // a 0-d tensor accepts dims 0 and -1
  d1 = wrap_dim(d1, x.dim(), "transpose");
  DimList dims(x.dim());
  std::iota(dims.begin(), dims.end(), 0);
  if (x.dim() > 0) std::swap(dims[d0], dims[d1]);
  return permute(x, dims);
}

namespace {
// The gradient of a view that picks part of x: zeros of x's shape with g
// written into that part (`part` takes the zeros to the view).
template <class Part>
BackwardFn pick_back(const Tensor& x, Part part) {
  return [shape = x.shape(), part](const Tensor& g, const Needs&) -> Grads {
    Tensor z = zeros(shape, g.dtype(), g.device());
    copy_into(part(z), g);
    return {z};
  };
}
}  // namespace

Tensor slice(const Tensor& x, int64_t dim, std::optional<int64_t> start, std::optional<int64_t> stop, int64_t step) {
  TensorType type = slice_meta(type_of(x), dim, start, stop, step);
  return view_op(
      "slice", x, KILN_ATTRS(dim, start, stop, step),
      [&] {
        const int64_t d = wrap_dim(dim, x.dim(), "slice");
        const int64_t b = slice_range(x.shape()[d], start, stop).first;
        Strides strides = x.strides();
        int64_t offset = x.offset() + (type.shape[d] > 0 ? b * strides[d] : 0);
        strides[d] *= step;
        return x.as_strided(type.shape, std::move(strides), offset);
      },
      [&](const Tensor&) {
        return pick_back(x, [=](const Tensor& z) { return slice(z, dim, start, stop, step); });
      });
}

Tensor select(const Tensor& x, int64_t dim, int64_t index) {
  TensorType type = select_meta(type_of(x), dim, index);
  return view_op(
      "select", x, KILN_ATTRS(dim, index),
      [&] {
        const int64_t d = wrap_dim(dim, x.dim(), "select");
        Strides strides = x.strides();
        int64_t offset = x.offset() + (index < 0 ? index + x.shape()[d] : index) * strides[d];
        strides.erase(strides.begin() + d);
        return x.as_strided(type.shape, std::move(strides), offset);
      },
      [&](const Tensor&) {
        return pick_back(x, [=](const Tensor& z) { return select(z, dim, index); });
      });
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  narrow_meta(type_of(x), dim, start, length);
  auto as_slice = [&](const Tensor& t) {
    const int64_t d = wrap_dim(dim, t.dim(), "narrow");
    const int64_t s = start < 0 ? start + t.shape()[d] : start;
    return slice(t, d, s, s + length, 1);
  };
  // Eagerly a slice; a trace records narrow itself (its size is static even
  // in a dynamic dim).
  if (!active_trace()) return as_slice(x);
  return view_op(
      "narrow", x, KILN_ATTRS(dim, start, length), [&] { return as_slice(x); },
      [&](const Tensor&) {
        return pick_back(x, [=](const Tensor& z) { return narrow(z, dim, start, length); });
      });
}

Tensor expand(const Tensor& x, Shape shape) {
  if (shape == x.shape()) return x;
  TensorType type = expand_meta(type_of(x), shape);
  return view_op(
      "expand", x, KILN_ATTRS(shape),
      [&] {
        const int64_t nd = static_cast<int64_t>(type.shape.size()), xd = x.dim();
        Strides strides(nd, 0);
        for (int64_t i = nd - 1; i >= nd - xd; --i) {
          int64_t xi = i - (nd - xd);
          strides[i] = x.shape()[xi] == type.shape[i] ? x.strides()[xi] : 0;
        }
        return x.as_strided(type.shape, std::move(strides), x.offset());
      },
      [&](const Tensor&) {
        return BackwardFn([shape = x.shape()](const Tensor& g, const Needs&) -> Grads { return {sum_to(g, shape)}; });
      });
}

Tensor broadcast_to(const Tensor& x, Shape shape) { return expand(x, std::move(shape)); }

std::vector<Tensor> broadcast_tensors(const std::vector<Tensor>& xs) {
  std::vector<TensorType> types;
  for (const Tensor& x : xs) types.push_back(type_of(x));
  std::vector<TensorType> out_types = broadcast_tensors_meta(types);
  if (TraceHook* trace = active_trace()) {
    // One node: with dynamic dims the target shape is not an attribute.
    std::vector<Tensor> out = trace->record(op_def("broadcast_tensors"), xs, {});
    for (size_t i = 0; i < xs.size(); ++i) {
      if (should_record({xs[i]}))
        record("expand", out[i], {xs[i]}, [shape = xs[i].shape()](const Tensor& g, const Needs&) -> Grads {
          return {sum_to(g, shape)};
        });
      note_traced_view(out[i], xs[i], nullptr, {}, "broadcast_tensors (its results may share elements); write into a .clone()");
    }
    return out;
  }
  std::vector<Tensor> out;
  for (size_t i = 0; i < xs.size(); ++i) out.push_back(expand(xs[i], out_types[i].shape));
  return out;
}

Tensor squeeze(const Tensor& x, std::optional<int64_t> dim) {
  TensorType type = squeeze_meta(type_of(x), dim);
  return view_op(
      "squeeze", x, KILN_ATTRS(dim),
      [&] {
        std::optional<int64_t> only = dim ? std::optional(wrap_dim(*dim, x.dim(), "squeeze")) : std::nullopt;
        Strides strides;
        for (int64_t d = 0; d < x.dim(); ++d)
          if (!squeezes(type_of(x), d, only)) strides.push_back(x.strides()[d]);
        return x.as_strided(type.shape, std::move(strides), x.offset());
      },
      [&](const Tensor&) { return reshape_back(x); });
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  TensorType type = unsqueeze_meta(type_of(x), dim);
  return view_op(
      "unsqueeze", x, KILN_ATTRS(dim),
      [&] {
        const int64_t d = wrap_dim(dim, x.dim() + 1, "unsqueeze");
        Strides strides = x.strides();
        int64_t stride = d < x.dim() ? x.shape()[d] * strides[d] : 1;
        strides.insert(strides.begin() + d, stride);
        return x.as_strided(type.shape, std::move(strides), x.offset());
      },
      [&](const Tensor&) { return reshape_back(x); });
}

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  TensorType type = flatten_meta(type_of(x), start_dim, end_dim);
  // Eagerly a reshape; a trace records flatten (dynamic dims have no reshape spelling).
  if (!active_trace()) return reshape(x, type.shape);
  return view_op(
      "flatten", x, KILN_ATTRS(start_dim, end_dim), [&] { return reshape(x, type.shape); },
      [&](const Tensor&) { return reshape_back(x); }, kReshapeCopies);
}

// ---- writing through views taken in a trace ----

void note_traced_view(const Tensor& out, const Tensor& x, const OpDef* op, Attrs attrs, const char* name) {
  auto view = std::make_shared<TracedView>();
  if (const auto& base = x.impl_ptr()->traced_view) {
    *view = *base;
  } else {
    view->root = x;
    view->root_version = x.version();
  }
  if (!op && view->not_writable.empty()) view->not_writable = name;
  view->ops.emplace_back(op, std::move(attrs));
  out.impl_ptr()->traced_view = std::move(view);
}

void trace_write_through_view(const Tensor& view, const Tensor& value, const char* op) {
  TraceHook* trace = active_trace();
  std::shared_ptr<TracedView> tv = view.impl_ptr()->traced_view;
  KILN_CHECK(tv->not_writable.empty(), TraceError, "{}_: an in-place update of the result of {} cannot be traced",
             op, tv->not_writable);
  KILN_CHECK(tv->root.version() == tv->root_version, TraceError,
             "{}_: in-place update through a view (shape {}) of a tensor that was updated after the view was "
             "taken cannot be traced; take the view again after the update",
             op, shape_str(view.shape()));
  check_inplace(tv->root, op);
  // The root's current value, and the views of it down to this one's base.
  std::vector<Tensor> bases = {tv->root};
  for (size_t i = 0; i + 1 < tv->ops.size(); ++i)
    bases.push_back(trace->record(*tv->ops[i].first, {bases.back()}, tv->ops[i].second)[0]);
  Tensor v = value;
  for (size_t i = tv->ops.size(); i-- > 0;)
    v = trace->record(op_def(tv->ops[i].first->name + "_scatter"), {bases[i], v}, tv->ops[i].second)[0];
  trace->assign(tv->root, v);
  tv->root.bump_version();
  auto updated = std::make_shared<TracedView>(*tv);
  updated->root_version = tv->root.version();
  view.impl_ptr()->traced_view = std::move(updated);
}

namespace {
// Registers view op `def` and its scatter form "<name>_scatter"(base, src):
// base with the view `def(base; attrs)` replaced by src, computed as eager
// writes through a view (clone base, copy src into the view of the clone).
template <class... A, class Meta, class Run>
void register_view(OpDef def, const char* attr_names, Meta meta, Run run) {
  OpDef scatter{.name = def.name + "_scatter", .num_inputs = 2, .operands = "base, src"};
  register_typed<A...>(
      scatter, attr_names,
      [meta, name = scatter.name](const std::vector<TensorType>& in, const A&... a) {
        TensorType view = meta(std::vector<TensorType>{in[0]}, a...);
        bool fits = view.shape.size() == in[1].shape.size();
        for (size_t d = 0; fits && d < view.shape.size(); ++d)
          fits = view.shape[d] == in[1].shape[d] || is_dynamic(view.shape[d]) || is_dynamic(in[1].shape[d]);
        KILN_CHECK(fits, ShapeError, "{}: src of shape {} does not fit the view of shape {}", name,
                   shape_str(in[1].shape), shape_str(view.shape));
        return in[0];
      },
      [run](const std::vector<Tensor>& in, const A&... a) {
        Tensor out = clone(in[0]);
        Tensor view = run(std::vector<Tensor>{out}, a...);
        view.copy_(in[1]);  // records autograd when the graph runs on tensors that need it
        return out;
      });
  register_typed<A...>(std::move(def), attr_names, meta, run);
}
}  // namespace

void register_view_ops() {
  register_view<Shape>({.name = "view"}, "shape",
                       [](const auto& in, const Shape& s) { return reshape_meta(in[0], s, "view"); },
                       [](const auto& in, const Shape& s) { return view(in[0], s); });
  register_typed<Shape>({.name = "reshape"}, "shape",
                        [](const auto& in, const Shape& s) { return reshape_meta(in[0], s, "reshape"); },
                        [](const auto& in, const Shape& s) { return reshape(in[0], s); });
  register_view<DimList>({.name = "permute"}, "dims",
                         [](const auto& in, const DimList& d) { return permute_meta(in[0], d); },
                         [](const auto& in, const DimList& d) { return permute(in[0], d); });
  register_view<int64_t, std::optional<int64_t>, std::optional<int64_t>, int64_t>(
      {.name = "slice"}, "dim, start, stop, step",
      [](const auto& in, int64_t d, auto b, auto e, int64_t s) { return slice_meta(in[0], d, b, e, s); },
      [](const auto& in, int64_t d, auto b, auto e, int64_t s) { return slice(in[0], d, b, e, s); });
  register_view<int64_t, int64_t>({.name = "select"}, "dim, index",
                                  [](const auto& in, int64_t d, int64_t i) { return select_meta(in[0], d, i); },
                                  [](const auto& in, int64_t d, int64_t i) { return select(in[0], d, i); });
  register_view<int64_t, int64_t, int64_t>(
      {.name = "narrow"}, "dim, start, length",
      [](const auto& in, int64_t d, int64_t s, int64_t n) { return narrow_meta(in[0], d, s, n); },
      [](const auto& in, int64_t d, int64_t s, int64_t n) { return narrow(in[0], d, s, n); });
  register_view<Shape>({.name = "expand"}, "shape",
                       [](const auto& in, const Shape& s) { return expand_meta(in[0], s); },
                       [](const auto& in, const Shape& s) { return expand(in[0], s); });
  register_op({.name = "broadcast_tensors",
               .num_inputs = -1,
               .num_outputs = -1,
               .meta = [](const std::vector<TensorType>& in, const Attrs&) { return broadcast_tensors_meta(in); },
               .run = [](const std::vector<Tensor>& in, const Attrs&) { return broadcast_tensors(in); }});
  register_view<std::optional<int64_t>>({.name = "squeeze"}, "dim",
                                        [](const auto& in, auto d) { return squeeze_meta(in[0], d); },
                                        [](const auto& in, auto d) { return squeeze(in[0], d); });
  register_view<int64_t>({.name = "unsqueeze"}, "dim",
                         [](const auto& in, int64_t d) { return unsqueeze_meta(in[0], d); },
                         [](const auto& in, int64_t d) { return unsqueeze(in[0], d); });
  register_typed<int64_t, int64_t>(
      {.name = "flatten"}, "start_dim, end_dim",
      [](const auto& in, int64_t s, int64_t e) { return flatten_meta(in[0], s, e); },
      [](const auto& in, int64_t s, int64_t e) { return flatten(in[0], s, e); });
}

}  // namespace kiln
