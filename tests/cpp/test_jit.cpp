// kiln::jit from C++: traced once per signature, bitwise equal to eager,
// captured state written back, gradients through the graph.
#include <catch2/catch.hpp>

#include "kiln.h"
#include "tracer/jit.h"

using namespace kiln;

namespace {
bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && all(eq(a, b)).item<bool>();
}
}  // namespace

TEST_CASE("jit traces once per signature and matches eager", "[jit]") {
  int traces = 0;
  auto f = jit([&](const Tensor& x, const Tensor& y) {
    ++traces;
    return (x * y + 1.0).tanh() - x.exp();
  });
  Tensor a = randn({3, 4}), b = randn({4});
  CHECK(same(f(a, b), (a * b + 1.0).tanh() - a.exp()));
  Tensor c = randn({3, 4});
  CHECK(same(f(c, b), (c * b + 1.0).tanh() - c.exp()));
  CHECK(traces == 1);
  f(randn({5, 4}), b);
  CHECK(traces == 2);
  CHECK(f.num_traces() == 2);
}

TEST_CASE("jit returns tuples and vectors; captures are written back", "[jit]") {
  Tensor w = ones({2});
  auto f = jit([&](const std::vector<Tensor>& xs) {
    w.mul_(3.0);
    return std::make_tuple(xs[0] + w, std::vector<Tensor>{xs[1] * 2.0, xs[0] - xs[1]});
  });
  Tensor x = ones({2}), y = full({2}, 5.0);
  auto [s, v] = f(std::vector<Tensor>{x, y});
  CHECK(same(s, full({2}, 4.0)));
  CHECK(same(v[0], full({2}, 10.0)));
  CHECK(same(w, full({2}, 3.0)));
  f(std::vector<Tensor>{x, y});
  CHECK(same(w, full({2}, 9.0)));
}

TEST_CASE("gradients flow through a jit function", "[jit]") {
  auto f = jit([](const Tensor& x) { return (x * x).sin(); });
  Tensor x = randn({4}, DType::Float64).requires_grad_();
  Tensor xe = x.detach().clone().requires_grad_();
  f(x).backward(ones({4}, DType::Float64));
  (xe * xe).sin().backward(ones({4}, DType::Float64));
  CHECK(same(x.grad(), xe.grad()));
}

TEST_CASE("an op without a registered definition is a TraceError", "[jit]") {
  auto f = jit([](const Tensor& x) { return x.item<double>() > 0 ? x : -x; });
  CHECK_THROWS_AS(f(ones({1})), TraceError);
}
