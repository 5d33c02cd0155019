#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace kiln {

using Shape = std::vector<int64_t>;
using Strides = std::vector<int64_t>;  // in elements, may be 0 (broadcast) or negative-free

// A dimension whose size is known only when a traced function runs (MLIR's
// `?`); it appears in traced types, never in a tensor with memory.
inline constexpr int64_t kDynamic = std::numeric_limits<int64_t>::min();
inline bool is_dynamic(int64_t d) { return d == kDynamic; }

int64_t numel(const Shape& shape);
Strides contiguous_strides(const Shape& shape);
std::string shape_str(const Shape& shape);  // "(2, 3)"

// NumPy broadcasting of two shapes; `op` names the op in the ShapeError. A
// dynamic dim broadcasts with 1 or another dynamic dim to a dynamic dim, and
// with a known size n > 1 to n (checked when the traced function runs).
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// Wraps a possibly negative dim into [0, ndim); IndexError names the op.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

}  // namespace kiln
