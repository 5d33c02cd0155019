// Joining (cat, stack) and splitting (split, chunk). Splits are views; joins
// copy each input into a narrowed slice of one output.
#include <numeric>

#include "eager/autograd.h"
#include "eager/ops.h"

namespace kiln {

namespace {
// torch keeps accepting 1-D empty tensors in cat whatever the other shapes
// are (a legacy of `torch.Tensor()` placeholders).
bool skipped_in_cat(const TensorType& x) { return x.shape.size() == 1 && x.shape[0] == 0; }
bool skipped_in_cat(const Tensor& x) { return x.dim() == 1 && x.shape()[0] == 0; }
bool same_size(int64_t a, int64_t b) { return a == b || is_dynamic(a) || is_dynamic(b); }

// cat's meta rule; `dim` comes back wrapped (-1 when every input is skipped).
TensorType cat_meta(const std::vector<TensorType>& xs, int64_t& dim) {
  KILN_CHECK(!xs.empty(), ValueError, "cat: expected a non-empty list of tensors");
  DType dtype = xs[0].dtype;
  const TensorType* ref = nullptr;
  size_t ref_i = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const TensorType& x = xs[i];
    KILN_CHECK(x.defined, ValueError, "cat: tensor {} is undefined", i);
    KILN_CHECK(!x.shape.empty(), ShapeError, "cat: zero-dimensional tensor {} cannot be concatenated", i);
    KILN_CHECK(x.device == xs[0].device, DeviceError, "cat: tensor {} is on {} but tensor 0 is on {}", i,
               x.device.str(), xs[0].device.str());
    dtype = promote_types(dtype, x.dtype);
    if (!ref && !skipped_in_cat(x)) {
      ref = &x;
      ref_i = i;
    }
  }
  if (!ref) {
    dim = -1;
    return {{0}, dtype, xs[0].device};
  }
  const auto nd = static_cast<int64_t>(ref->shape.size());
  dim = wrap_dim(dim, nd, "cat");
  Shape shape = ref->shape;
  shape[dim] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const TensorType& x = xs[i];
    if (skipped_in_cat(x)) continue;
    KILN_CHECK(static_cast<int64_t>(x.shape.size()) == nd, ShapeError,
               "cat: tensor {} has {} dims (shape {}) but tensor {} has {} (shape {})", i, x.shape.size(),
               shape_str(x.shape), ref_i, nd, shape_str(ref->shape));
    for (int64_t d = 0; d < nd; ++d) {
      KILN_CHECK(d == dim || same_size(x.shape[d], ref->shape[d]), ShapeError,
                 "cat: sizes must match except in dim {}; tensor {} has shape {} but tensor {} "
                 "has shape {} (dim {})",
                 dim, i, shape_str(x.shape), ref_i, shape_str(ref->shape), d);
      if (d != dim && is_dynamic(shape[d])) shape[d] = x.shape[d];  // a static size wins
    }
    shape[dim] = is_dynamic(shape[dim]) || is_dynamic(x.shape[dim]) ? kDynamic : shape[dim] + x.shape[dim];
  }
  return {shape, dtype, xs[0].device};
}

std::vector<TensorType> types_of(const std::vector<Tensor>& xs) {
  std::vector<TensorType> types;
  for (const Tensor& x : xs) types.push_back(type_of(x));
  return types;
}
}  // namespace

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  int64_t d = dim;
  TensorType type = cat_meta(types_of(xs), d);
  if (d < 0 && !active_trace()) return Tensor::empty({0}, type.dtype, xs[0].device());
  return autograd_op(
      "cat", xs, KILN_ATTRS(dim),
      [&] {
        Tensor out = Tensor::empty(type.shape, type.dtype, xs[0].device());
        int64_t at = 0;
        for (const Tensor& x : xs) {
          if (skipped_in_cat(x)) continue;
          const int64_t len = x.shape()[d];
          if (len > 0) copy_into(out.narrow(d, at, len), x);
          at += len;
        }
        return out;
      },
      [&](const Tensor&) {
        // Each input's gradient is its slice of g (a view, no copy).
        std::vector<int64_t> sizes;
        for (const Tensor& x : xs) sizes.push_back(skipped_in_cat(x) ? -1 : x.shape()[d]);
        return BackwardFn([sizes, d](const Tensor& g, const Needs& need) -> Grads {
          Grads grads(sizes.size());
          int64_t at = 0;
          for (size_t i = 0; i < sizes.size(); ++i) {
            if (sizes[i] < 0) {
              if (need[i]) grads[i] = zeros({0}, g.dtype(), g.device());
              continue;
            }
            if (need[i]) grads[i] = narrow(g, d, at, sizes[i]);
            at += sizes[i];
          }
          return grads;
        });
      });
}

Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {
  KILN_CHECK(!xs.empty(), ValueError, "stack: expected a non-empty list of tensors");
  for (size_t i = 1; i < xs.size(); ++i) {
    bool same = xs[i].dim() == xs[0].dim();
    for (int64_t d = 0; same && d < xs[0].dim(); ++d) same = same_size(xs[i].shape()[d], xs[0].shape()[d]);
    KILN_CHECK(same, ShapeError,
               "stack: expects each tensor to be equal size, but got {} at entry 0 and {} at "
               "entry {}",
               shape_str(xs[0].shape()), shape_str(xs[i].shape()), i);
  }
  dim = wrap_dim(dim, xs[0].dim() + 1, "stack");
  std::vector<Tensor> expanded;
  expanded.reserve(xs.size());
  for (const Tensor& x : xs) expanded.push_back(x.unsqueeze(dim));
  return cat(expanded, dim);
}

namespace {
// The pieces of a split of dim `dim` (checked) of x into `sizes`.
std::vector<TensorType> pieces(const TensorType& x, int64_t dim, const std::vector<int64_t>& sizes) {
  std::vector<TensorType> out;
  for (int64_t s : sizes) {
    TensorType t = x;
    t.shape[dim] = s;
    out.push_back(t);
  }
  return out;
}

// The size of the split dim, which the number of pieces depends on.
int64_t split_dim_size(const TensorType& x, int64_t dim, const char* op) {
  const int64_t size = x.shape[dim];
  KILN_CHECK(!is_dynamic(size), TraceError,
             "{}: dim {} of the traced tensor (shape {}) is dynamic, so the number of pieces is only known when the "
             "function runs; split with a list of sizes, or mark the dim static",
             op, dim, shape_str(x.shape));
  return size;
}

std::vector<int64_t> split_sizes(const TensorType& x, int64_t split_size, int64_t& dim) {
  KILN_CHECK(!x.shape.empty(), ShapeError, "split: expects at least a 1-dimensional tensor");
  dim = wrap_dim(dim, static_cast<int64_t>(x.shape.size()), "split");
  KILN_CHECK(split_size >= 0, ValueError, "split: split_size must be non-negative, got {}", split_size);
  const int64_t size = split_dim_size(x, dim, "split");
  KILN_CHECK(split_size > 0 || size == 0, ValueError,
             "split: split_size can only be 0 if dim {} has size 0, but it has size {}", dim, size);
  // A split_size beyond the dim's size (or a 0-size dim) still gives one piece.
  const int64_t n = split_size == 0 ? 1 : std::max<int64_t>((size + split_size - 1) / split_size, 1);
  std::vector<int64_t> sizes;
  for (int64_t i = 0; i < n; ++i) sizes.push_back(i + 1 < n ? split_size : size - i * split_size);
  return sizes;
}

void check_split_with_sizes(const TensorType& x, const std::vector<int64_t>& sizes, int64_t& dim) {
  KILN_CHECK(!x.shape.empty(), ShapeError, "split: expects at least a 1-dimensional tensor");
  dim = wrap_dim(dim, static_cast<int64_t>(x.shape.size()), "split");
  const int64_t size = x.shape[dim];
  for (int64_t s : sizes)
    KILN_CHECK(s >= 0, ValueError, "split: split sizes must be non-negative, got {}", shape_str(sizes));
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  KILN_CHECK(is_dynamic(size) || total == size, ShapeError,
             "split: split sizes {} sum to {}, but dim {} of the tensor (shape {}) has size {}", shape_str(sizes),
             total, dim, shape_str(x.shape), size);
}

std::vector<int64_t> chunk_sizes(const TensorType& x, int64_t chunks, int64_t& dim) {
  KILN_CHECK(!x.shape.empty(), ShapeError, "chunk: expects at least a 1-dimensional tensor");
  KILN_CHECK(chunks > 0, ValueError, "chunk: chunks must be greater than 0, got {}", chunks);
  dim = wrap_dim(dim, static_cast<int64_t>(x.shape.size()), "chunk");
  const int64_t size = split_dim_size(x, dim, "chunk");
  // torch: pieces of ceil(size / chunks), so fewer than `chunks` may come
  // back; a 0-size dim still gives `chunks` empty pieces.
  if (size == 0) return std::vector<int64_t>(chunks, 0);
  return split_sizes(x, (size + chunks - 1) / chunks, dim);
}

// x split into narrow views of `sizes` along (wrapped) `dim`. In a trace,
// one node `op(x; attrs)` with a result per piece, each a view of x.
std::vector<Tensor> split_into(const Tensor& x, int64_t dim, const std::vector<int64_t>& sizes, const char* op,
                               const std::function<Attrs()>& attrs) {
  std::vector<Tensor> out;
  out.reserve(sizes.size());
  TraceHook* trace = active_trace();
  if (!trace) {
    int64_t at = 0;
    for (int64_t s : sizes) {
      out.push_back(x.narrow(dim, at, s));
      at += s;
    }
    return out;
  }
  out = trace->record(op_def(op), {x}, attrs());
  int64_t at = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int64_t start = at, length = sizes[i];
    at += length;
    if (should_record({x}))
      record(op, out[i], {x}, [shape = x.shape(), dim, start, length](const Tensor& g, const Needs&) -> Grads {
        Tensor z = zeros(shape, g.dtype(), g.device());
        copy_into(narrow(z, dim, start, length), g);
        return {z};
      });
    note_traced_view(out[i], x, &op_def("narrow"), make_attrs("dim, start, length", dim, start, length));
  }
  return out;
}
}  // namespace

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  int64_t d = dim;
  std::vector<int64_t> sizes = split_sizes(type_of(x), split_size, d);
  return split_into(x, d, sizes, "split", KILN_ATTRS(split_size, dim));
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  int64_t d = dim;
  check_split_with_sizes(type_of(x), sizes, d);
  return split_into(x, d, sizes, "split_with_sizes", KILN_ATTRS(sizes, dim));
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  int64_t d = dim;
  std::vector<int64_t> sizes = chunk_sizes(type_of(x), chunks, d);
  return split_into(x, d, sizes, "chunk", KILN_ATTRS(chunks, dim));
}

void register_join_ops() {
  register_typed<int64_t>({.name = "cat", .num_inputs = -1}, "dim",
                          [](const auto& in, int64_t dim) { return cat_meta(in, dim); },
                          [](const auto& in, int64_t dim) { return cat(in, dim); });
  register_typed<int64_t, int64_t>(
      {.name = "split", .num_outputs = -1}, "split_size, dim",
      [](const auto& in, int64_t size, int64_t dim) { return pieces(in[0], dim, split_sizes(in[0], size, dim)); },
      [](const auto& in, int64_t size, int64_t dim) { return split(in[0], size, dim); });
  register_typed<std::vector<int64_t>, int64_t>(
      {.name = "split_with_sizes", .num_outputs = -1}, "sizes, dim",
      [](const auto& in, const std::vector<int64_t>& sizes, int64_t dim) {
        check_split_with_sizes(in[0], sizes, dim);
        return pieces(in[0], dim, sizes);
      },
      [](const auto& in, const std::vector<int64_t>& sizes, int64_t dim) { return split(in[0], sizes, dim); });
  register_typed<int64_t, int64_t>(
      {.name = "chunk", .num_outputs = -1}, "chunks, dim",
      [](const auto& in, int64_t chunks, int64_t dim) { return pieces(in[0], dim, chunk_sizes(in[0], chunks, dim)); },
      [](const auto& in, int64_t chunks, int64_t dim) { return chunk(in[0], chunks, dim); });
}

}  // namespace kiln
