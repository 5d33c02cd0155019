// The eager demo from C++, through the umbrella header.
#include <fmt/core.h>

#include "kiln.h"

int main() {
  using namespace kiln;
  manual_seed(0);
  Tensor x = randn({4, 3});
  double wv[] = {1, 2, 3, 4, 5, 6};
  Tensor w = from_blob_copy(wv, {3, 2}, DType::Float64).to(DType::Float32);
  Tensor y = matmul(x, w).relu() + 1.0;
  fmt::print("y = {}\nrow sums = {}\n", y.str(), y.sum({1}, true).str());

  Tensor z = arange(0, 6).to(DType::Float64).reshape({2, 3});
  z.slice(1, 1, std::nullopt).mul_(2);  // z[:, 1:] *= 2
  fmt::print("z = {}\n", z.str());
  try {
    ones({2, 3}) + ones({4});
  } catch (const ShapeError& e) {
    fmt::print("a clear error: {}\n", e.what());
  }
}
