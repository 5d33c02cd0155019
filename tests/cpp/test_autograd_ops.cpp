// Backward rules of the non-elementwise ops through the C++ API: analytic
// gradients (kiln::gradients with a random upstream gradient) against
// central finite differences in float64.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>

#include "eager/autograd.h"
#include "kiln.h"

using namespace kiln;

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

double dot(const Tensor& a, const Tensor& b) { return sum(mul(a, b)).item<double>(); }

// Checks d<f(xs), u>/dxs for a random u. eps 1e-6 on O(1) inputs leaves
// float64 differences accurate to ~1e-9; the tolerance is atol 1e-6 + rtol 1e-5.
void gradcheck(const Fn& f, std::vector<Tensor> xs) {
  for (Tensor& x : xs) x = x.to(DType::Float64).contiguous().clone().requires_grad_();
  Tensor y = f(xs);
  Tensor u = randn(y.shape(), DType::Float64);
  std::vector<Tensor> analytic = gradients({y}, xs, {u}, false, /*allow_unused=*/true);
  NoGradGuard no_grad;
  const double eps = 1e-6;
  for (size_t i = 0; i < xs.size(); ++i) {
    double* p = xs[i].data<double>();
    for (int64_t j = 0; j < xs[i].numel(); ++j) {
      const double saved = p[j];
      p[j] = saved + eps;
      const double up = dot(f(xs), u);
      p[j] = saved - eps;
      const double down = dot(f(xs), u);
      p[j] = saved;
      const double numeric = (up - down) / (2 * eps);
      const double got =
          analytic[i].defined() ? analytic[i].contiguous().data<double>()[j] : 0.0;
      INFO("input " << i << " (shape " << shape_str(xs[i].shape()) << "), element " << j << ": analytic "
                    << got << " vs numeric " << numeric);
      CHECK(std::abs(got - numeric) <= 1e-6 + 1e-5 * std::abs(numeric));
    }
  }
}

}  // namespace

TEST_CASE("matmul gradients, batched, broadcast and 1-D", "[autograd]") {
  manual_seed(1);
  auto mm = [](const std::vector<Tensor>& t) { return matmul(t[0], t[1]); };
  gradcheck(mm, {randn({3, 4}), randn({4, 5})});
  gradcheck(mm, {randn({2, 3, 4}), randn({4, 2})});      // a linear layer: b's gradient sums the batch
  gradcheck(mm, {randn({3, 4}), randn({2, 4, 2})});      // a broadcast along b's batch
  gradcheck(mm, {randn({2, 1, 3, 4}), randn({3, 4, 2})});  // both broadcast
  gradcheck(mm, {randn({4}), randn({4, 3})});
  gradcheck(mm, {randn({2, 3, 4}), randn({4})});
  gradcheck(mm, {randn({4}), randn({4})});
  // a transposed (non-contiguous) operand
  gradcheck([](const std::vector<Tensor>& t) { return matmul(t[0].T(), t[1]); }, {randn({4, 3}), randn({4, 2})});
}

TEST_CASE("sum and mean gradients over dims", "[autograd]") {
  manual_seed(2);
  gradcheck([](const std::vector<Tensor>& t) { return sum(t[0], {1}); }, {randn({2, 3, 4})});
  gradcheck([](const std::vector<Tensor>& t) { return sum(t[0], {0, -1}, true); }, {randn({2, 3, 4})});
  gradcheck([](const std::vector<Tensor>& t) { return sum(t[0]); }, {randn({3, 2})});
  gradcheck([](const std::vector<Tensor>& t) { return mean(t[0], {-2}); }, {randn({2, 3, 4})});
}

TEST_CASE("softmax, log_softmax and layer_norm gradients", "[autograd]") {
  manual_seed(3);
  gradcheck([](const std::vector<Tensor>& t) { return softmax(t[0], 1); }, {randn({3, 5})});
  gradcheck([](const std::vector<Tensor>& t) { return softmax(t[0], 0); }, {randn({4, 3})});
  gradcheck([](const std::vector<Tensor>& t) { return log_softmax(t[0], -1); }, {randn({2, 3, 4})});
  gradcheck([](const std::vector<Tensor>& t) { return layer_norm(t[0], {4}, t[1], t[2]); },
            {randn({3, 4}), randn({4}), randn({4})});
}

TEST_CASE("view gradients: slice, select, permute, expand", "[autograd]") {
  manual_seed(4);
  gradcheck([](const std::vector<Tensor>& t) { return slice(t[0], 1, 1, 5, 2); }, {randn({3, 6})});
  gradcheck([](const std::vector<Tensor>& t) { return slice(t[0], 0, -2, std::nullopt); }, {randn({4, 2})});
  gradcheck([](const std::vector<Tensor>& t) { return select(t[0], 1, -1); }, {randn({3, 4})});
  gradcheck([](const std::vector<Tensor>& t) { return mul(permute(t[0], {2, 0, 1}), t[1]); },
            {randn({2, 3, 4}), randn({4, 2, 3})});
  gradcheck([](const std::vector<Tensor>& t) { return expand(t[0], {2, 3, 4}); }, {randn({3, 1})});
}

TEST_CASE("cat and index gradients accumulate", "[autograd]") {
  manual_seed(5);
  gradcheck([](const std::vector<Tensor>& t) { return cat({t[0], t[1]}, 1); }, {randn({2, 3}), randn({2, 2})});
  Tensor idx = from_blob_copy(std::vector<int64_t>{0, 2, 0, 0}.data(), {4}, DType::Int64);
  gradcheck([&](const std::vector<Tensor>& t) { return index_select(t[0], 0, idx); }, {randn({3, 2})});
  gradcheck([&](const std::vector<Tensor>& t) { return index(t[0], {Tensor(), idx}); }, {randn({2, 3})});
}

TEST_CASE("no recording when nothing requires grad or under NoGradGuard", "[autograd]") {
  Tensor x = randn({3, 4});
  CHECK_FALSE(matmul(x, x.T()).requires_grad());
  x.requires_grad_();
  CHECK(sum(x, {1}).requires_grad());
  CHECK(grad_fn_name(*slice(x, 0, 1, 2).grad_fn()) == "SliceBackward");
  NoGradGuard no_grad;
  CHECK_FALSE(softmax(x, 1).requires_grad());
}
