// matmul (all NumPy shape cases, BLAS layouts, dtypes, errors), softmax,
// log_softmax and layer_norm, each against a naive reference.
#include <catch2/catch.hpp>

#include <cmath>

#include "kiln.h"

using namespace kiln;

namespace {

std::vector<double> values(const Tensor& t) {
  Tensor c = t.to(DType::Float64).contiguous();
  return std::vector<double>(c.data<double>(), c.data<double>() + c.numel());
}

Tensor tensor_of(const std::vector<double>& v, Shape shape, DType dtype = DType::Float32) {
  return from_blob_copy(v.data(), std::move(shape), DType::Float64).to(dtype);
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, double rtol = 1e-5,
                 double atol = 1e-5) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i << ": " << got[i] << " vs " << want[i]);
    if (std::isnan(want[i])) CHECK(std::isnan(got[i]));
    else CHECK(std::abs(got[i] - want[i]) <= atol + rtol * std::abs(want[i]));
  }
}

// Naive batched product of a [..., m, k] and b [..., k, n] with equal batch
// shapes (tests broadcast with expand first).
std::vector<double> naive_matmul(const Tensor& a, const Tensor& b) {
  auto av = values(a), bv = values(b);
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  const int64_t batch = a.numel() / std::max<int64_t>(m * k, 1);
  std::vector<double> out(batch * m * n, 0.0);
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c)
        for (int64_t p = 0; p < k; ++p) out[(i * m + r) * n + c] += av[(i * m + r) * k + p] * bv[(i * k + p) * n + c];
  return out;
}

}  // namespace

TEST_CASE("matmul of 2-D operands in every BLAS layout", "[matmul]") {
  manual_seed(11);
  for (auto [m, k, n] : {std::tuple{3, 4, 5}, {1, 7, 6}, {6, 7, 1}, {1, 9, 1}, {17, 33, 9}, {64, 64, 64}}) {
    Tensor a = randn({m, k}), b = randn({k, n});
    auto want = naive_matmul(a, b);
    INFO(m << "x" << k << "x" << n);
    // Same values, different layouts: transposed copies read through the
    // BLAS transpose flags, strided slices copied first.
    Tensor at = a.T().contiguous().T(), bt = b.T().contiguous().T();
    Tensor as = stack({a, a}, 2).reshape({m, 2 * k}).slice(1, 0, std::nullopt, 2);
    for (auto [x, y] : {std::pair{a, b}, {at, b}, {a, bt}, {at, bt}, {as, b}}) {
      Tensor c = matmul(x, y);
      CHECK(c.shape() == Shape{m, n});
      check_close(values(c), want, 1e-4);
    }
    check_close(values(matmul(a.to(DType::Float64), b.to(DType::Float64))), want, 1e-10, 1e-10);
  }
}

TEST_CASE("matmul promotes 1-D operands and broadcasts batch dims", "[matmul]") {
  manual_seed(12);
  Tensor v = randn({4}), w = randn({4});
  Tensor dot = matmul(v, w);
  CHECK(dot.dim() == 0);
  double want = 0;
  for (int i = 0; i < 4; ++i) want += values(v)[i] * values(w)[i];
  CHECK(dot.item<double>() == Approx(want).epsilon(1e-5));

  Tensor m = randn({3, 4});
  CHECK(matmul(m, v).shape() == Shape{3});
  check_close(values(matmul(m, v)), naive_matmul(m, v.unsqueeze(1)));
  CHECK(matmul(v, m.T()).shape() == Shape{3});
  check_close(values(matmul(v, m.T())), naive_matmul(v.unsqueeze(0), m.T()));

  Tensor b3 = randn({2, 4, 5});
  CHECK(matmul(v, b3).shape() == Shape{2, 5});
  CHECK(matmul(b3.transpose(1, 2), v).shape() == Shape{2, 5});

  // Broadcast batch dims: (2, 1, 3, 4) @ (5, 4, 2) -> (2, 5, 3, 2).
  Tensor a = randn({2, 1, 3, 4}), b = randn({5, 4, 2});
  Tensor c = matmul(a, b);
  CHECK(c.shape() == Shape{2, 5, 3, 2});
  check_close(values(c), naive_matmul(a.expand({2, 5, 3, 4}), b.expand({2, 5, 4, 2})), 1e-4);
  // A shared right operand folds the batch into one GEMM; a transposed
  // batch does not.
  Tensor x = randn({6, 5, 4}), W = randn({4, 3});
  check_close(values(matmul(x, W)), naive_matmul(x, W.expand({6, 4, 3})), 1e-4);
  check_close(values(matmul(x.transpose(0, 1), W)), naive_matmul(x.transpose(0, 1), W.expand({5, 4, 3})), 1e-4);
  check_close(values(matmul(W.T(), x.transpose(1, 2))), naive_matmul(W.T().expand({6, 3, 4}), x.transpose(1, 2)), 1e-4);
  // Many small products run in parallel over the batch.
  Tensor p = randn({40, 8, 8}), q = randn({40, 8, 8});
  check_close(values(matmul(p, q)), naive_matmul(p, q), 1e-4);
  check_close(values(p.matmul(q.transpose(1, 2))), naive_matmul(p, q.transpose(1, 2)), 1e-4);
}

TEST_CASE("matmul dtypes", "[matmul]") {
  Tensor ai = tensor_of({1, 2, 3, 4, 5, 6}, {2, 3}, DType::Int32);
  Tensor bi = tensor_of({1, 0, 2, 1, -1, 3}, {3, 2}, DType::Int32);
  Tensor ci = matmul(ai, bi);
  CHECK(ci.dtype() == DType::Int32);
  CHECK(values(ci) == std::vector<double>{2, 11, 8, 23});
  CHECK(matmul(ai.to(DType::Int64), bi).dtype() == DType::Int64);
  Tensor mixed = matmul(ai, bi.to(DType::Float32));
  CHECK(mixed.dtype() == DType::Float32);
  CHECK(values(mixed) == std::vector<double>{2, 11, 8, 23});
  Tensor h = matmul(ai.to(DType::Float16), bi.to(DType::Float16));
  CHECK(h.dtype() == DType::Float16);
  CHECK(values(h) == std::vector<double>{2, 11, 8, 23});
  CHECK(matmul(ai.to(DType::BFloat16), bi.to(DType::BFloat16)).dtype() == DType::BFloat16);
  // Integer overflow wraps like PyTorch's.
  Tensor big = full({1, 1}, 200, DType::UInt8);
  CHECK(matmul(big, big).item<int64_t>() == (200 * 200) % 256);
  CHECK_THROWS_AS(matmul(ai.to(DType::Bool), bi.to(DType::Bool)), DTypeError);
}

TEST_CASE("matmul edge sizes and errors", "[matmul]") {
  CHECK(values(matmul(zeros({2, 0}), zeros({0, 3}))) == std::vector<double>(6, 0.0));
  CHECK(matmul(zeros({0, 4}), zeros({4, 3})).shape() == Shape{0, 3});
  CHECK(matmul(zeros({0}), zeros({0})).item<double>() == 0.0);
  CHECK(matmul(zeros({2, 0, 4}), zeros({4, 3})).shape() == Shape{2, 0, 3});
  CHECK_THROWS_AS(matmul(zeros({2, 3}), zeros({4, 5})), ShapeError);
  CHECK_THROWS_WITH(matmul(zeros({2, 3}), zeros({4, 5})),
                    Catch::Contains("matmul") && Catch::Contains("(2, 3)") && Catch::Contains("(4, 5)"));
  CHECK_THROWS_AS(matmul(zeros({3}), zeros({4})), ShapeError);
  CHECK_THROWS_AS(matmul(zeros({2, 2, 3}), zeros({3, 3, 4})), ShapeError);
  CHECK_THROWS_WITH(matmul(zeros({2, 2, 3}), zeros({3, 3, 4})), Catch::Contains("(3, 3, 4)"));
  CHECK_THROWS_AS(matmul(scalar_tensor(1.0), zeros({3})), ShapeError);
}

namespace {
// softmax along `dim` by the definition, in double.
std::vector<double> naive_softmax(const Tensor& x, int64_t dim, bool log) {
  auto v = values(x);
  const int64_t d = dim < 0 ? dim + x.dim() : dim;
  int64_t A = 1, R = x.shape()[d], B = 1;
  for (int64_t i = 0; i < d; ++i) A *= x.shape()[i];
  for (int64_t i = d + 1; i < x.dim(); ++i) B *= x.shape()[i];
  std::vector<double> out(v.size());
  for (int64_t a = 0; a < A; ++a)
    for (int64_t b = 0; b < B; ++b) {
      double m = -INFINITY, s = 0;
      for (int64_t r = 0; r < R; ++r) m = std::max(m, v[(a * R + r) * B + b]);
      for (int64_t r = 0; r < R; ++r) s += std::exp(v[(a * R + r) * B + b] - m);
      for (int64_t r = 0; r < R; ++r) {
        double z = v[(a * R + r) * B + b] - m;
        out[(a * R + r) * B + b] = log ? z - std::log(s) : std::exp(z) / s;
      }
    }
  return out;
}
}  // namespace

TEST_CASE("softmax and log_softmax along any dim", "[nn]") {
  manual_seed(13);
  for (Shape shape : {Shape{5}, Shape{3, 7}, Shape{2, 37, 4}, Shape{4, 3, 300}, Shape{2, 300, 3}}) {
    Tensor x = randn(shape) * 4.0;
    for (int64_t dim = -static_cast<int64_t>(shape.size()); dim < static_cast<int64_t>(shape.size()); ++dim) {
      INFO("shape " << shape_str(shape) << " dim " << dim);
      check_close(values(softmax(x, dim)), naive_softmax(x, dim, false), 1e-5, 1e-7);
      check_close(values(log_softmax(x, dim)), naive_softmax(x, dim, true), 1e-5, 1e-5);
      check_close(values(x.to(DType::Float64).softmax(dim)), naive_softmax(x, dim, false), 1e-12, 1e-14);
    }
    // Non-contiguous input.
    if (shape.size() >= 2) {
      Tensor xt = x.transpose(0, 1);
      check_close(values(softmax(xt, -1)), naive_softmax(xt, -1, false), 1e-5, 1e-7);
    }
  }
}

TEST_CASE("softmax handles extreme values like PyTorch", "[nn]") {
  Tensor x = tensor_of({1000, 1000, -INFINITY, 0, -INFINITY, -INFINITY, -1e4, 1e4}, {4, 2});
  auto s = values(softmax(x, 1));
  CHECK(s[0] == Approx(0.5));
  CHECK(s[1] == Approx(0.5));
  CHECK(s[2] == 0.0);
  CHECK(s[3] == 1.0);
  CHECK(std::isnan(s[4]));  // a row of -inf has no softmax
  CHECK(std::isnan(s[5]));
  CHECK(s[6] == 0.0);
  CHECK(s[7] == 1.0);
  auto ls = values(log_softmax(x, 1));
  CHECK(ls[0] == Approx(-std::log(2.0)));
  CHECK(ls[2] == -INFINITY);
  CHECK(ls[3] == 0.0);
  CHECK(ls[6] == Approx(-2e4));
  // The same down columns.
  auto sc = values(softmax(x.T().contiguous(), 0));
  CHECK(sc[0] == Approx(0.5));
  CHECK(std::isnan(sc[2]));
  CHECK(softmax(scalar_tensor(3.0), 0).item<double>() == 1.0);
}

TEST_CASE("softmax dtypes and errors", "[nn]") {
  Tensor h = tensor_of({1, 2, 3, 4}, {2, 2}, DType::Float16);
  Tensor sh = softmax(h, 1);
  CHECK(sh.dtype() == DType::Float16);
  check_close(values(sh), naive_softmax(h, 1, false), 1e-3, 1e-3);
  check_close(values(log_softmax(h.to(DType::BFloat16), 0)), naive_softmax(h, 0, true), 1e-2, 1e-2);
  CHECK_THROWS_AS(softmax(tensor_of({1, 2}, {2}, DType::Int64), 0), DTypeError);
  CHECK_THROWS_AS(softmax(zeros({2, 3}), 2), IndexError);
  CHECK(softmax(zeros({0, 3}), 1).shape() == Shape{0, 3});
}

TEST_CASE("layer_norm", "[nn]") {
  manual_seed(14);
  Tensor x = randn({3, 4, 10}) * 3.0 + 5.0;
  Tensor w = randn({4, 10}), b = randn({4, 10});
  auto xv = values(x), wv = values(w), bv = values(b);
  for (bool affine : {false, true}) {
    Tensor y = affine ? layer_norm(x, {4, 10}, w, b, 1e-5) : layer_norm(x, {4, 10});
    CHECK(y.shape() == x.shape());
    std::vector<double> want(xv.size());
    for (int r = 0; r < 3; ++r) {
      double mean = 0, var = 0;
      for (int i = 0; i < 40; ++i) mean += xv[r * 40 + i] / 40;
      for (int i = 0; i < 40; ++i) var += (xv[r * 40 + i] - mean) * (xv[r * 40 + i] - mean) / 40;
      for (int i = 0; i < 40; ++i) {
        double z = (xv[r * 40 + i] - mean) / std::sqrt(var + 1e-5);
        want[r * 40 + i] = affine ? z * wv[i] + bv[i] : z;
      }
    }
    check_close(values(y), want, 1e-4, 1e-5);
  }
  // Over the last dim only, with a transposed input and float64.
  Tensor xt = randn({8, 6}).T();
  Tensor y = layer_norm(xt.to(DType::Float64), {8});
  auto yv = values(y);
  for (int r = 0; r < 6; ++r) {
    double s = 0, s2 = 0;
    for (int i = 0; i < 8; ++i) {
      s += yv[r * 8 + i];
      s2 += yv[r * 8 + i] * yv[r * 8 + i];
    }
    CHECK(std::abs(s) < 1e-12);
    CHECK(s2 / 8 == Approx(1.0).epsilon(1e-4));
  }
  CHECK(layer_norm(x.to(DType::Float16), {10}).dtype() == DType::Float16);
  CHECK_THROWS_AS(layer_norm(x, {4}), ShapeError);
  CHECK_THROWS_WITH(layer_norm(x, {4}), Catch::Contains("(4,)") && Catch::Contains("(3, 4, 10)"));
  CHECK_THROWS_AS(layer_norm(x, {10}, ones({4})), ShapeError);
  CHECK_THROWS_AS(layer_norm(x, {1, 3, 4, 10}), ShapeError);
  CHECK_THROWS_AS(layer_norm(x.to(DType::Int32), {10}), DTypeError);
}
