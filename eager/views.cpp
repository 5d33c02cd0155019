// View ops: new geometry over the same storage, no data copied. Their
// backward rules map the gradient back onto the input's geometry; ops
// composed of other views (narrow, flatten, broadcast_to, transpose) get
// theirs from the views they call.
#include <algorithm>
#include <numeric>

#include "eager/autograd.h"
#include "eager/ops.h"

namespace kiln {

Shape infer_shape(const Shape& requested, int64_t n, const char* op) {
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
  if (infer_at >= 0) {
    KILN_CHECK(known != 0 && n % known == 0, ShapeError,
               "{}: shape {} is invalid for a tensor of {} elements", op, shape_str(requested), n);
    shape[infer_at] = n / known;
  } else {
    KILN_CHECK(known == n, ShapeError, "{}: shape {} is invalid for a tensor of {} elements", op,
               shape_str(requested), n);
  }
  return shape;
}

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
}  // namespace

Tensor view(const Tensor& x, Shape requested) {
  return autograd_op(
      "view", {x},
      [&] {
        Shape shape = infer_shape(requested, x.numel(), "view");
        auto strides = view_strides(x.shape(), x.strides(), shape);
        KILN_CHECK(strides, ShapeError,
                   "view: shape {} is not compatible with the input's size {} and strides {} (the "
                   "input is not contiguous); use .reshape(...) instead",
                   shape_str(shape), shape_str(x.shape()), shape_str(x.strides()));
        return x.as_strided(std::move(shape), std::move(*strides), x.offset());
      },
      [&](const Tensor&) { return reshape_back(x); });
}

Tensor reshape(const Tensor& x, Shape requested) {
  return autograd_op(
      "reshape", {x},
      [&] {
        Shape shape = infer_shape(requested, x.numel(), "reshape");
        if (auto strides = view_strides(x.shape(), x.strides(), shape))
          return x.as_strided(std::move(shape), std::move(*strides), x.offset());
        return view(clone(x), std::move(shape));
      },
      [&](const Tensor&) { return reshape_back(x); });
}

Tensor permute(const Tensor& x, DimList dims) {
  const int64_t nd = x.dim();
  KILN_CHECK(static_cast<int64_t>(dims.size()) == nd, ShapeError,
             "permute: got {} dims {} for a tensor with {} dims", dims.size(), shape_str(dims), nd);
  DimList inverse(nd);
  std::vector<bool> seen(nd, false);
  for (int64_t i = 0; i < nd; ++i) {
    dims[i] = wrap_dim(dims[i], nd, "permute");
    KILN_CHECK(!seen[dims[i]], ShapeError, "permute: dim {} repeats in {}", dims[i], shape_str(dims));
    seen[dims[i]] = true;
    inverse[dims[i]] = i;
  }
  return autograd_op(
      "permute", {x},
      [&] {
        Shape shape(nd);
        Strides strides(nd);
        for (int64_t i = 0; i < nd; ++i) {
          shape[i] = x.shape()[dims[i]];
          strides[i] = x.strides()[dims[i]];
        }
        return x.as_strided(std::move(shape), std::move(strides), x.offset());
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
    Tensor z = zeros(shape, g.dtype());
    copy_into(part(z), g);
    return {z};
  };
}
}  // namespace

Tensor slice(const Tensor& x, int64_t dim, std::optional<int64_t> start_opt,
             std::optional<int64_t> stop_opt, int64_t step) {
  KILN_CHECK(x.dim() > 0, IndexError, "slice: cannot slice a 0-d tensor");
  dim = wrap_dim(dim, x.dim(), "slice");
  KILN_CHECK(step > 0, ValueError, "slice: step must be greater than zero, got {}", step);
  const int64_t size = x.shape()[dim];
  auto clamp_index = [size](int64_t i) {
    if (i < 0) i += size;
    return std::clamp<int64_t>(i, 0, size);
  };
  const int64_t start = start_opt ? clamp_index(*start_opt) : 0;
  const int64_t stop = stop_opt ? clamp_index(*stop_opt) : size;
  return autograd_op(
      "slice", {x},
      [&] {
        const int64_t len = stop > start ? (stop - start + step - 1) / step : 0;
        Shape shape = x.shape();
        Strides strides = x.strides();
        shape[dim] = len;
        int64_t offset = x.offset() + (len > 0 ? start * strides[dim] : 0);
        strides[dim] *= step;
        return x.as_strided(std::move(shape), std::move(strides), offset);
      },
      [&](const Tensor&) {
        return pick_back(x, [=](const Tensor& z) { return slice(z, dim, start, stop, step); });
      });
}

Tensor select(const Tensor& x, int64_t dim, int64_t index) {
  KILN_CHECK(x.dim() > 0, IndexError, "select: invalid index of a 0-d tensor");
  dim = wrap_dim(dim, x.dim(), "select");
  const int64_t size = x.shape()[dim];
  KILN_CHECK(index >= -size && index < size, IndexError,
             "index {} is out of bounds for dimension {} with size {}", index, dim, size);
  if (index < 0) index += size;
  return autograd_op(
      "select", {x},
      [&] {
        Shape shape = x.shape();
        Strides strides = x.strides();
        int64_t offset = x.offset() + index * strides[dim];
        shape.erase(shape.begin() + dim);
        strides.erase(strides.begin() + dim);
        return x.as_strided(std::move(shape), std::move(strides), offset);
      },
      [&](const Tensor&) {
        return pick_back(x, [=](const Tensor& z) { return select(z, dim, index); });
      });
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  KILN_CHECK(x.dim() > 0, IndexError, "narrow: cannot narrow a 0-d tensor");
  dim = wrap_dim(dim, x.dim(), "narrow");
  const int64_t size = x.shape()[dim];
  if (start < 0) start += size;
  KILN_CHECK(start >= 0 && length >= 0 && start + length <= size, IndexError,
             "narrow: start {} and length {} are out of range for dim {} of size {}", start,
             length, dim, size);
  return slice(x, dim, start, start + length, 1);
}

Tensor expand(const Tensor& x, Shape shape) {
  const int64_t nd = static_cast<int64_t>(shape.size()), xd = x.dim();
  if (shape == x.shape()) return x;
  KILN_CHECK(nd >= xd, ShapeError,
             "expand: the target shape {} has fewer dims than the tensor's shape {}",
             shape_str(shape), shape_str(x.shape()));
  Strides strides(nd);
  for (int64_t i = nd - 1; i >= 0; --i) {
    int64_t xi = i - (nd - xd);
    if (xi >= 0) {
      int64_t have = x.shape()[xi];
      if (shape[i] == -1) shape[i] = have;
      KILN_CHECK(have == shape[i] || have == 1, ShapeError,
                 "expand: the tensor's shape {} cannot be expanded to {} (dim {}: {} vs {}; only "
                 "size-1 dims expand)",
                 shape_str(x.shape()), shape_str(shape), i, have, shape[i]);
      strides[i] = have == shape[i] ? x.strides()[xi] : 0;
    } else {
      KILN_CHECK(shape[i] >= 0, ShapeError, "expand: -1 is not allowed in a new leading dim ({})",
                 shape_str(shape));
      strides[i] = 0;
    }
  }
  numel(shape);  // throws if the expanded element count overflows
  return autograd_op(
      "expand", {x}, [&] { return x.as_strided(std::move(shape), std::move(strides), x.offset()); },
      [&](const Tensor&) {
        return BackwardFn([shape = x.shape()](const Tensor& g, const Needs&) -> Grads { return {sum_to(g, shape)}; });
      });
}

Tensor broadcast_to(const Tensor& x, Shape shape) { return expand(x, std::move(shape)); }

std::vector<Tensor> broadcast_tensors(const std::vector<Tensor>& xs) {
  Shape shape;
  for (const Tensor& x : xs) shape = broadcast_shapes(shape, x.shape(), "broadcast_tensors");
  std::vector<Tensor> out;
  for (const Tensor& x : xs) out.push_back(expand(x, shape));
  return out;
}

Tensor squeeze(const Tensor& x, std::optional<int64_t> dim) {
  std::optional<int64_t> only = dim ? std::optional(wrap_dim(*dim, x.dim(), "squeeze")) : std::nullopt;
  return autograd_op(
      "squeeze", {x},
      [&] {
        Shape shape;
        Strides strides;
        for (int64_t d = 0; d < x.dim(); ++d) {
          bool drop = x.shape()[d] == 1 && (!only || *only == d);
          if (!drop) {
            shape.push_back(x.shape()[d]);
            strides.push_back(x.strides()[d]);
          }
        }
        return x.as_strided(std::move(shape), std::move(strides), x.offset());
      },
      [&](const Tensor&) { return reshape_back(x); });
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  dim = wrap_dim(dim, x.dim() + 1, "unsqueeze");
  return autograd_op(
      "unsqueeze", {x},
      [&] {
        Shape shape = x.shape();
        Strides strides = x.strides();
        int64_t stride = dim < x.dim() ? shape[dim] * strides[dim] : 1;
        shape.insert(shape.begin() + dim, 1);
        strides.insert(strides.begin() + dim, stride);
        return x.as_strided(std::move(shape), std::move(strides), x.offset());
      },
      [&](const Tensor&) { return reshape_back(x); });
}

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  if (x.dim() == 0) return reshape(x, {1});
  start_dim = wrap_dim(start_dim, x.dim(), "flatten");
  end_dim = wrap_dim(end_dim, x.dim(), "flatten");
  KILN_CHECK(start_dim <= end_dim, ValueError, "flatten: start_dim {} comes after end_dim {}",
             start_dim, end_dim);
  Shape shape(x.shape().begin(), x.shape().begin() + start_dim);
  int64_t merged = 1;
  for (int64_t d = start_dim; d <= end_dim; ++d) merged *= x.shape()[d];
  shape.push_back(merged);
  shape.insert(shape.end(), x.shape().begin() + end_dim + 1, x.shape().end());
  return reshape(x, std::move(shape));
}

void register_view_ops() {}

}  // namespace kiln
