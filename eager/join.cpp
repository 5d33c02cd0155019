// Joining (cat, stack) and splitting (split, chunk). Splits are views; joins
// copy each input into a narrowed slice of one output.
#include <numeric>

#include "eager/autograd.h"
#include "eager/ops.h"

namespace kiln {

namespace {
// torch keeps accepting 1-D empty tensors in cat whatever the other shapes
// are (a legacy of `torch.Tensor()` placeholders).
bool skipped_in_cat(const Tensor& x) { return x.dim() == 1 && x.shape()[0] == 0; }
}  // namespace

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  KILN_CHECK(!xs.empty(), ValueError, "cat: expected a non-empty list of tensors");
  DType dtype = xs[0].dtype();
  const Tensor* ref = nullptr;
  size_t ref_i = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    KILN_CHECK(x.defined(), ValueError, "cat: tensor {} is undefined", i);
    KILN_CHECK(x.dim() > 0, ShapeError, "cat: zero-dimensional tensor {} cannot be concatenated", i);
    KILN_CHECK(x.device() == xs[0].device(), DeviceError,
               "cat: tensor {} is on {} but tensor 0 is on {}", i, x.device().str(),
               xs[0].device().str());
    dtype = promote_types(dtype, x.dtype());
    if (!ref && !skipped_in_cat(x)) {
      ref = &x;
      ref_i = i;
    }
  }
  if (!ref) return Tensor::empty({0}, dtype, xs[0].device());

  const int64_t nd = ref->dim();
  dim = wrap_dim(dim, nd, "cat");
  Shape shape = ref->shape();
  shape[dim] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    if (skipped_in_cat(x)) continue;
    KILN_CHECK(x.dim() == nd, ShapeError,
               "cat: tensor {} has {} dims (shape {}) but tensor {} has {} (shape {})", i, x.dim(),
               shape_str(x.shape()), ref_i, nd, shape_str(ref->shape()));
    for (int64_t d = 0; d < nd; ++d)
      KILN_CHECK(d == dim || x.shape()[d] == ref->shape()[d], ShapeError,
                 "cat: sizes must match except in dim {}; tensor {} has shape {} but tensor {} "
                 "has shape {} (dim {})",
                 dim, i, shape_str(x.shape()), ref_i, shape_str(ref->shape()), d);
    shape[dim] += x.shape()[dim];
  }

  auto compute = [&] {
    Tensor out = Tensor::empty(std::move(shape), dtype, ref->device());
    int64_t at = 0;
    for (const Tensor& x : xs) {
      if (skipped_in_cat(x)) continue;
      const int64_t len = x.shape()[dim];
      if (len > 0) copy_into(out.narrow(dim, at, len), x);
      at += len;
    }
    return out;
  };
  // autograd_op() takes a fixed list of inputs; this is its body for a vector.
  if (!should_record(xs)) return compute();
  Tensor out;
  {
    NoGradGuard no_grad;
    out = compute();
  }
  // Each input's gradient is its slice of g (a view, no copy).
  std::vector<int64_t> sizes;
  for (const Tensor& x : xs) sizes.push_back(skipped_in_cat(x) ? -1 : x.shape()[dim]);
  record("cat", out, xs, [sizes, dim](const Tensor& g, const Needs& need) -> Grads {
    Grads grads(sizes.size());
    int64_t at = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (sizes[i] < 0) {
        if (need[i]) grads[i] = zeros({0}, g.dtype());
        continue;
      }
      if (need[i]) grads[i] = narrow(g, dim, at, sizes[i]);
      at += sizes[i];
    }
    return grads;
  });
  return out;
}

Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {
  KILN_CHECK(!xs.empty(), ValueError, "stack: expected a non-empty list of tensors");
  for (size_t i = 1; i < xs.size(); ++i)
    KILN_CHECK(xs[i].shape() == xs[0].shape(), ShapeError,
               "stack: expects each tensor to be equal size, but got {} at entry 0 and {} at "
               "entry {}",
               shape_str(xs[0].shape()), shape_str(xs[i].shape()), i);
  dim = wrap_dim(dim, xs[0].dim() + 1, "stack");
  std::vector<Tensor> expanded;
  expanded.reserve(xs.size());
  for (const Tensor& x : xs) expanded.push_back(x.unsqueeze(dim));
  return cat(expanded, dim);
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  KILN_CHECK(x.dim() > 0, ShapeError, "split: expects at least a 1-dimensional tensor");
  dim = wrap_dim(dim, x.dim(), "split");
  const int64_t size = x.shape()[dim];
  KILN_CHECK(split_size >= 0, ValueError, "split: split_size must be non-negative, got {}",
             split_size);
  KILN_CHECK(split_size > 0 || size == 0, ValueError,
             "split: split_size can only be 0 if dim {} has size 0, but it has size {}", dim, size);
  // A split_size beyond the dim's size (or a 0-size dim) still gives one piece.
  const int64_t n = split_size == 0 ? 1 : std::max<int64_t>((size + split_size - 1) / split_size, 1);
  std::vector<Tensor> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t start = i * split_size;
    out.push_back(x.narrow(dim, start, i + 1 < n ? split_size : size - start));
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  KILN_CHECK(x.dim() > 0, ShapeError, "split: expects at least a 1-dimensional tensor");
  dim = wrap_dim(dim, x.dim(), "split");
  const int64_t size = x.shape()[dim];
  for (int64_t s : sizes)
    KILN_CHECK(s >= 0, ValueError, "split: split sizes must be non-negative, got {}",
               shape_str(sizes));
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  KILN_CHECK(total == size, ShapeError,
             "split: split sizes {} sum to {}, but dim {} of the tensor (shape {}) has size {}",
             shape_str(sizes), total, dim, shape_str(x.shape()), size);
  std::vector<Tensor> out;
  out.reserve(sizes.size());
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(x.narrow(dim, at, s));
    at += s;
  }
  return out;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  KILN_CHECK(x.dim() > 0, ShapeError, "chunk: expects at least a 1-dimensional tensor");
  KILN_CHECK(chunks > 0, ValueError, "chunk: chunks must be greater than 0, got {}", chunks);
  dim = wrap_dim(dim, x.dim(), "chunk");
  const int64_t size = x.shape()[dim];
  // torch: pieces of ceil(size / chunks), so fewer than `chunks` may come
  // back; a 0-size dim still gives `chunks` empty pieces.
  if (size == 0) return split(x, std::vector<int64_t>(chunks, 0), dim);
  return split(x, (size + chunks - 1) / chunks, dim);
}

void register_join_ops() {}

}  // namespace kiln
