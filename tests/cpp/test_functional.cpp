// kiln::nn::functional from C++: forward values against naive references and
// gradients through kiln::grad (the Python suite compares with PyTorch).
#include <catch2/catch.hpp>

#include <cmath>

#include "eager/autograd.h"
#include "eager/nn/functional.h"
#include "kiln.h"

using namespace kiln;
namespace F = kiln::nn::functional;

namespace {

std::vector<double> vals(const Tensor& t) {
  Tensor c = t.to(DType::Float64).contiguous();
  return std::vector<double>(c.data<double>(), c.data<double>() + c.numel());
}

Tensor seq(Shape shape, double scale = 0.1, DType dtype = DType::Float64) {
  // Deterministic, non-symmetric values.
  const int64_t n = numel(shape);
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = std::sin(1.3 * i + 0.7) * scale * (1 + i % 5);
  return from_blob_copy(v.data(), std::move(shape), DType::Float64).to(dtype);
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol = 1e-9) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i << ": " << got[i] << " vs " << want[i]);
    CHECK(std::abs(got[i] - want[i]) <= tol * (1 + std::abs(want[i])));
  }
}

// Direct 2-D convolution, NCHW, in double.
std::vector<double> naive_conv(const Tensor& x, const Tensor& w, const Tensor& b, F::Pair s, F::Pair p, F::Pair d,
                               int64_t groups) {
  auto xv = vals(x), wv = vals(w), bv = b.defined() ? vals(b) : std::vector<double>();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t O = w.size(0), Cg = w.size(1), kh = w.size(2), kw = w.size(3);
  const int64_t Ho = (H + 2 * p[0] - d[0] * (kh - 1) - 1) / s[0] + 1;
  const int64_t Wo = (W + 2 * p[1] - d[1] * (kw - 1) - 1) / s[1] + 1;
  std::vector<double> out(N * O * Ho * Wo);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          double acc = bv.empty() ? 0.0 : bv[o];
          const int64_t g = o / (O / groups);
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t i = 0; i < kh; ++i)
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t ih = oh * s[0] - p[0] + i * d[0], iw = ow * s[1] - p[1] + j * d[1];
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += xv[((n * C + g * Cg + c) * H + ih) * W + iw] * wv[((o * Cg + c) * kh + i) * kw + j];
              }
          out[((n * O + o) * Ho + oh) * Wo + ow] = acc;
        }
  (void)C;
  return out;
}

// Central differences of sum(f(args) * up) with respect to args[which].
std::vector<double> numeric_grad(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                                 std::vector<Tensor> args, size_t which, const Tensor& up) {
  NoGradGuard no_grad;
  const double eps = 1e-6;
  Tensor base = args[which].contiguous().clone();
  std::vector<double> g(base.numel());
  double* p = base.data<double>();
  for (int64_t i = 0; i < base.numel(); ++i) {
    const double old = p[i];
    args[which] = base;
    p[i] = old + eps;
    const double hi = sum(mul(f(args), up)).item<double>();
    p[i] = old - eps;
    const double lo = sum(mul(f(args), up)).item<double>();
    p[i] = old;
    g[i] = (hi - lo) / (2 * eps);
  }
  return g;
}

}  // namespace

TEST_CASE("linear: forward and gradients", "[functional]") {
  Tensor x = seq({3, 4}), w = seq({2, 4}, 0.3), b = seq({2}, 1.0);
  Tensor y = F::linear(x, w, b);
  auto xv = vals(x), wv = vals(w), bv = vals(b);
  std::vector<double> want(6);
  for (int i = 0; i < 3; ++i)
    for (int o = 0; o < 2; ++o) {
      want[i * 2 + o] = bv[o];
      for (int k = 0; k < 4; ++k) want[i * 2 + o] += xv[i * 4 + k] * wv[o * 4 + k];
    }
  check_close(vals(y), want);

  auto f = [](const std::vector<Tensor>& a) { return F::linear(a[0], a[1], a[2]); };
  Tensor up = seq({3, 2}, 1.0);
  auto loss = [&](const std::vector<Tensor>& a) { return sum(mul(f(a), up)); };
  auto grads = grad(loss, {x, w, b}, {0, 1, 2});
  for (size_t i = 0; i < 3; ++i) check_close(vals(grads[i]), numeric_grad(f, {x, w, b}, i, up), 1e-6);
}

TEST_CASE("conv2d: against a direct convolution, and its gradients", "[functional]") {
  struct Case {
    Shape x, w;
    F::Pair s, p, d;
    int64_t groups;
  };
  for (const Case& c : {Case{{2, 3, 6, 7}, {4, 3, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 1},
                        Case{{1, 4, 7, 6}, {6, 2, 3, 2}, {2, 1}, {1, 0}, {1, 2}, 2},
                        Case{{2, 3, 5, 5}, {2, 3, 1, 1}, {1, 1}, {0, 0}, {1, 1}, 1}}) {
    Tensor x = seq(c.x), w = seq(c.w, 0.5), b = seq({c.w[0]}, 1.0);
    Tensor y = F::conv2d(x, w, b, c.s, c.p, c.d, c.groups);
    check_close(vals(y), naive_conv(x, w, b, c.s, c.p, c.d, c.groups));

    auto f = [&](const std::vector<Tensor>& a) { return F::conv2d(a[0], a[1], a[2], c.s, c.p, c.d, c.groups); };
    Tensor up = seq(y.shape(), 1.0);
    auto grads = grad([&](const std::vector<Tensor>& a) { return sum(mul(f(a), up)); }, {x, w, b}, {0, 1, 2});
    for (size_t i = 0; i < 3; ++i) check_close(vals(grads[i]), numeric_grad(f, {x, w, b}, i, up), 1e-6);
  }
}

TEST_CASE("conv2d: error names the shapes", "[functional]") {
  try {
    F::conv2d(zeros({8, 4, 32, 32}), zeros({16, 3, 3, 3}));
    FAIL("no error");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) ==
          "conv2d: expected input of shape (N, C, H, W) with C = 3 (weight (16, 3, 3, 3)), got (8, 4, 32, 32)");
  }
}

TEST_CASE("max_pool2d and avg_pool2d on a small plane", "[functional]") {
  Tensor x = arange(0, 16, 1, DType::Float64).reshape({1, 1, 4, 4});
  check_close(vals(F::max_pool2d(x, {2, 2})), {5, 7, 13, 15});
  check_close(vals(F::avg_pool2d(x, {2, 2})), {2.5, 4.5, 10.5, 12.5});
  // padding 1, count_include_pad=false: the corner window averages x[0, 0] alone.
  CHECK(vals(F::avg_pool2d(x, {2, 2}, F::Pair{2, 2}, {1, 1}, false, false))[0] == 0.0);
  check_close(vals(F::adaptive_avg_pool2d(x, {1, 1})), {7.5});

  Tensor xl = x.clone().requires_grad_();
  F::max_pool2d(xl, {2, 2}).sum().backward();
  check_close(vals(xl.grad()), {0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1});
}

TEST_CASE("cross_entropy: value and gradient (softmax - onehot) / N", "[functional]") {
  Tensor logits = seq({3, 5}, 1.0).requires_grad_();
  std::vector<int64_t> tv = {4, 0, 2};
  Tensor target = from_blob_copy(tv.data(), {3}, DType::Int64);
  Tensor loss = F::cross_entropy(logits, target);
  Tensor lsm = log_softmax(logits.detach(), 1);
  auto l = vals(lsm);
  CHECK(loss.item<double>() == Approx(-(l[0 * 5 + 4] + l[1 * 5 + 0] + l[2 * 5 + 2]) / 3).epsilon(1e-12));
  loss.backward();
  auto p = vals(softmax(logits.detach(), 1));
  for (int r = 0; r < 3; ++r) p[r * 5 + tv[r]] -= 1;
  for (double& v : p) v /= 3;
  check_close(vals(logits.grad()), p);
  // Through log_softmax + nll_loss, the same.
  CHECK(F::nll_loss(lsm, target).item<double>() == Approx(loss.item<double>()).epsilon(1e-12));
}

TEST_CASE("batch_norm: training updates the running statistics", "[functional]") {
  Tensor x = seq({4, 2, 3}, 1.0);
  Tensor rm = zeros({2}, DType::Float64), rv = ones({2}, DType::Float64);
  Tensor y = F::batch_norm(x, rm, rv, {}, {}, /*training=*/true, 0.5, 0.0);
  auto xv = vals(x);
  for (int c = 0; c < 2; ++c) {
    double m = 0, v = 0;
    for (int n = 0; n < 4; ++n)
      for (int s = 0; s < 3; ++s) m += xv[(n * 2 + c) * 3 + s] / 12;
    for (int n = 0; n < 4; ++n)
      for (int s = 0; s < 3; ++s) v += std::pow(xv[(n * 2 + c) * 3 + s] - m, 2);
    CHECK(vals(rm)[c] == Approx(0.5 * m));
    CHECK(vals(rv)[c] == Approx(0.5 + 0.5 * v / 11));
    CHECK(vals(y)[(1 * 2 + c) * 3 + 2] == Approx((xv[(1 * 2 + c) * 3 + 2] - m) / std::sqrt(v / 12)));
  }
}

TEST_CASE("embedding: rows, padding_idx gradient, range error", "[functional]") {
  Tensor w = seq({5, 3}, 1.0).requires_grad_();
  std::vector<int64_t> iv = {1, 4, 1, 0};
  Tensor idx = from_blob_copy(iv.data(), {2, 2}, DType::Int64);
  Tensor e = F::embedding(idx, w, 1);
  CHECK(e.shape() == Shape{2, 2, 3});
  e.sum().backward();
  check_close(vals(w.grad()), {1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1});
  std::vector<int64_t> bad = {7};
  CHECK_THROWS_AS(F::embedding(from_blob_copy(bad.data(), {1}, DType::Int64), w), IndexError);
}

TEST_CASE("scaled_dot_product_attention matches its composition", "[functional]") {
  Tensor q = seq({2, 3, 4}), k = seq({2, 5, 4}, 0.2), v = seq({2, 5, 2}, 0.3);
  Tensor want = matmul(softmax(mul(matmul(q, k.transpose(-2, -1)), 0.5), -1), v);
  check_close(vals(F::scaled_dot_product_attention(q, k, v)), vals(want));
}
