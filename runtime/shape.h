#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

using Shape = std::vector<int64_t>;
using Strides = std::vector<int64_t>;  // in elements, may be 0 (broadcast) or negative-free

int64_t numel(const Shape& shape);
Strides contiguous_strides(const Shape& shape);
std::string shape_str(const Shape& shape);  // "(2, 3)"

// NumPy broadcasting of two shapes; `op` names the op in the ShapeError.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// Wraps a possibly negative dim into [0, ndim); IndexError names the op.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

}  // namespace kiln
