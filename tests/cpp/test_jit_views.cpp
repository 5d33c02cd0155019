// kiln::jit over views, copies, joins and indexing: bitwise equal to eager,
// writes through views reach their base, meta errors keep eager's types.
#include <catch2/catch.hpp>

#include "kiln.h"
#include "tracer/jit.h"

using namespace kiln;

namespace {
bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && all(eq(a, b)).item<bool>();
}

Tensor body(const Tensor& x, const Tensor& idx) {
  Tensor y = x.transpose(0, 1).contiguous().view({-1, 3});
  Tensor z = cat({y.slice(0, 1, std::nullopt, 2), y.narrow(0, 0, 1)}, 0);
  Tensor g = z.index_select(1, idx).unsqueeze(0).expand({2, -1, -1}).flatten(0, 1);
  Tensor w = clone(x);
  w.slice(1, 1, std::nullopt).mul_(2.0);  // through a view of a traced value
  w.select(0, 0).fill_(-1.0);
  std::vector<Tensor> parts = w.split(1, 1);
  Tensor m = masked_fill(stack(parts, 0).squeeze(-1), gt(stack(parts, 0).squeeze(-1), 0.5), 0.0);
  return cat({g.reshape({-1}), m.flatten(), x.gather(1, idx.unsqueeze(0).expand({x.shape()[0], -1})).flatten(),
              to_dtype(one_hot(idx, 3), DType::Float32).flatten()},
             0);
}
}  // namespace

TEST_CASE("jit traces views, joins and indexing bitwise equal to eager", "[jit]") {
  auto f = jit([](const Tensor& x, const Tensor& idx) { return body(x, idx); });
  Tensor idx = from_blob_copy(std::vector<int64_t>{2, 0}.data(), {2}, DType::Int64);
  for (int i = 0; i < 2; ++i) {
    Tensor x = randn({4, 3});
    CHECK(same(f(x, idx), body(x, idx)));
    Tensor xt = randn({3, 4}).transpose(0, 1);  // non-contiguous argument
    CHECK(same(f(xt, idx), body(xt, idx)));
  }
  CHECK(f.num_traces() == 1);
}

TEST_CASE("jit writes through a view of captured state back", "[jit]") {
  Tensor w = zeros({2, 3});
  auto f = jit([&](const Tensor& x) {
    w.slice(1, 1, std::nullopt).add_(x.slice(1, 1, std::nullopt));
    return x * 2.0;
  });
  Tensor x = ones({2, 3});
  f(x);
  f(x);
  Tensor want = zeros({2, 3});
  want.slice(1, 1, std::nullopt).fill_(2.0);
  CHECK(same(w, want));
}

TEST_CASE("jit meta errors have eager's exception types", "[jit]") {
  CHECK_THROWS_AS(jit([](const Tensor& x) { return x.view({7, -1}); })(randn({3, 4})), ShapeError);
  CHECK_THROWS_AS(jit([](const Tensor& x) { return x.select(0, 5); })(randn({3, 4})), IndexError);
  CHECK_THROWS_AS(jit([](const Tensor& x) { return cat({x, x.select(0, 0)}, 0); })(randn({3, 4})), ShapeError);
  CHECK_THROWS_AS(jit([](const Tensor& x) { return x.index_select(0, x); })(randn({3})), DTypeError);
}
