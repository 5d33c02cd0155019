// The autograd engine: accumulation, graph release, version checks, grad
// mode, functional transforms, and the elementwise rules by finite
// differences in float64.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>

#include "kiln.h"

using namespace kiln;
using Catch::Contains;

namespace {
Tensor leaf(Shape shape, double lo = -1.0, double hi = 1.0) {
  Tensor t = rand(shape, DType::Float64) * (hi - lo) + lo;
  return t.requires_grad_();
}

double max_abs_diff(const Tensor& a, const Tensor& b) { return amax(abs(a - b)).item<double>(); }

// d(sum(f(x) * w))/dx by central differences, for a fixed random w.
Tensor numeric_grad(const std::function<Tensor(const Tensor&)>& f, const Tensor& x, const Tensor& w) {
  NoGradGuard no_grad;
  Tensor xc = x.detach().clone();
  Tensor grad = zeros(x.shape(), DType::Float64);
  Tensor flat = xc.view({-1}), gflat = grad.view({-1});
  const double eps = 1e-6;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    double v = flat[i].item<double>();
    flat[i].fill_(v + eps);
    double up = (f(xc) * w).sum().item<double>();
    flat[i].fill_(v - eps);
    double down = (f(xc) * w).sum().item<double>();
    flat[i].fill_(v);
    gflat[i].fill_((up - down) / (2 * eps));
  }
  return grad;
}

void check_gradient(const std::function<Tensor(const Tensor&)>& f, Tensor x) {
  Tensor y = f(x);
  Tensor w = randn(y.shape(), DType::Float64);
  y.backward(w);
  Tensor expected = numeric_grad(f, x, w);
  INFO("analytic " << x.grad().str() << "\nnumeric " << expected.str());
  CHECK(max_abs_diff(x.grad(), expected) < 1e-5);
}
}  // namespace

TEST_CASE("backward accumulates into leaves through a graph", "[autograd]") {
  manual_seed(1);
  Tensor a = leaf({3}), b = leaf({3});
  Tensor y = (a * b + a).sum();
  REQUIRE(y.requires_grad());
  REQUIRE_FALSE(y.is_leaf());
  REQUIRE(grad_fn_name(*y.grad_fn()) == "SumBackward");
  y.backward();
  CHECK(max_abs_diff(a.grad(), b.detach() + 1) < 1e-12);
  CHECK(max_abs_diff(b.grad(), a.detach()) < 1e-12);
  // A second backward through a fresh graph adds to .grad.
  (a * 2).sum().backward();
  CHECK(max_abs_diff(a.grad(), b.detach() + 3) < 1e-12);
}

TEST_CASE("broadcast inputs get gradients of their own shape and dtype", "[autograd]") {
  Tensor a = ones({2, 1, 3}, DType::Float32).requires_grad_();
  Tensor b = ones({4, 1}, DType::Float64).requires_grad_();
  Tensor y = a * b;  // (2, 4, 3) float64
  y.backward(ones_like(y));
  CHECK(a.grad().shape() == Shape{2, 1, 3});
  CHECK(a.grad().dtype() == DType::Float32);
  CHECK(a.grad().sum().item<double>() == 24.0);
  CHECK(b.grad().shape() == Shape{4, 1});
  CHECK(b.grad()[0][0].item<double>() == 6.0);
}

TEST_CASE("a freed graph cannot be walked twice unless retained", "[autograd]") {
  Tensor x = leaf({2});
  Tensor y = (x.exp() * 3).sum();
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();
  CHECK_THROWS_WITH(y.backward(), Contains("retain_graph=True"));
}

TEST_CASE("modifying a saved tensor in place is reported at backward", "[autograd]") {
  Tensor x = leaf({3});
  Tensor h = x * 2;
  Tensor y = h.sin();  // saves h
  h.add_(1);
  CHECK_THROWS_WITH(y.sum().backward(),
                    Contains("SinBackward") && Contains("modified by an in-place operation"));
}

TEST_CASE("in-place ops on non-leaves rebase history; on leaves they fail", "[autograd]") {
  Tensor x = leaf({4});
  CHECK_THROWS_WITH(x.mul_(2), Contains("leaf tensor that requires grad"));
  Tensor h = x * 3;
  h.mul_(2);  // rule needs only the scalar
  h.exp_();   // rule needs only the output
  h.sum().backward();
  CHECK(max_abs_diff(x.grad(), (x.detach() * 6).exp() * 6) < 1e-9);
  // As in PyTorch, writing to the output that exp_ saved breaks its rule.
  Tensor k = x * 1;
  k.exp_();
  k.mul_(2);
  CHECK_THROWS_WITH(k.sum().backward(), Contains("ExpBackward"));
  {
    NoGradGuard no_grad;
    x.sub_(x.grad() * 0.1);  // an optimizer step
  }
  CHECK(x.is_leaf());
}

TEST_CASE("no_grad records nothing; detach cuts history", "[autograd]") {
  Tensor x = leaf({2});
  {
    NoGradGuard no_grad;
    Tensor y = x * 2;
    CHECK_FALSE(y.requires_grad());
  }
  Tensor d = (x * 2).detach();
  CHECK_FALSE(d.requires_grad());
  CHECK_THROWS_WITH(d.sum().backward(), Contains("does not require grad"));
  CHECK_THROWS_AS(ones({2}, DType::Int64).requires_grad_(), DTypeError);
}

TEST_CASE("backward of a non-scalar needs a gradient", "[autograd]") {
  Tensor x = leaf({3});
  CHECK_THROWS_WITH((x * 2).backward(), Contains("only for outputs with one element"));
}

TEST_CASE("gradients() and grad() leave .grad alone", "[autograd]") {
  Tensor x = leaf({3}), z = leaf({3});
  Tensor y = (x * x * z).sum();
  auto g = gradients({y}, {x});
  CHECK(max_abs_diff(g[0], x.detach() * z.detach() * 2) < 1e-12);
  CHECK_FALSE(x.grad().defined());
  CHECK_FALSE(z.grad().defined());

  auto [value, grads] = value_and_grad([](const std::vector<Tensor>& a) { return (a[0] * a[1]).sum(); },
                                       {full({2}, 3.0, DType::Float64), full({2}, 5.0, DType::Float64)}, {0, 1});
  CHECK(value.item<double>() == 30.0);
  CHECK(grads[0][0].item<double>() == 5.0);
  CHECK(grads[1][1].item<double>() == 3.0);
}

TEST_CASE("retain_grad keeps a non-leaf's gradient", "[autograd]") {
  Tensor x = leaf({2});
  Tensor h = x * 2;
  h.retain_grad();
  (h * 3).sum().backward();
  CHECK(h.grad()[0].item<double>() == 3.0);
}

TEST_CASE("unary rules match finite differences", "[autograd]") {
  manual_seed(7);
  using F = std::function<Tensor(const Tensor&)>;
  std::vector<std::pair<const char*, F>> positive = {
      {"log", [](const Tensor& x) { return log(x); }},     {"sqrt", [](const Tensor& x) { return sqrt(x); }},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }}, {"reciprocal", [](const Tensor& x) { return reciprocal(x); }},
      {"log1p", [](const Tensor& x) { return log1p(x); }},
  };
  std::vector<std::pair<const char*, F>> any = {
      {"neg", [](const Tensor& x) { return neg(x); }},       {"abs", [](const Tensor& x) { return abs(x); }},
      {"exp", [](const Tensor& x) { return exp(x); }},       {"expm1", [](const Tensor& x) { return expm1(x); }},
      {"sin", [](const Tensor& x) { return sin(x); }},       {"cos", [](const Tensor& x) { return cos(x); }},
      {"tanh", [](const Tensor& x) { return tanh(x); }},     {"sigmoid", [](const Tensor& x) { return sigmoid(x); }},
      {"relu", [](const Tensor& x) { return relu(x); }},     {"gelu", [](const Tensor& x) { return gelu(x); }},
      {"gelu_tanh", [](const Tensor& x) { return gelu_tanh(x); }}, {"silu", [](const Tensor& x) { return silu(x); }},
      {"erf", [](const Tensor& x) { return erf(x); }},
      {"clamp", [](const Tensor& x) { return clamp(x, Scalar(-0.5), Scalar(0.5)); }},
  };
  for (auto& [name, f] : positive) {
    INFO(name);
    check_gradient(f, leaf({2, 3}, 0.5, 2.0));
  }
  for (auto& [name, f] : any) {
    INFO(name);
    check_gradient(f, leaf({5}, -2.0, 2.0));
  }
}

TEST_CASE("binary rules match finite differences on both sides", "[autograd]") {
  manual_seed(8);
  using F2 = std::function<Tensor(const Tensor&, const Tensor&)>;
  std::vector<std::pair<const char*, F2>> ops = {
      {"add", [](const Tensor& a, const Tensor& b) { return a + b; }},
      {"sub", [](const Tensor& a, const Tensor& b) { return a - b; }},
      {"mul", [](const Tensor& a, const Tensor& b) { return a * b; }},
      {"div", [](const Tensor& a, const Tensor& b) { return a / b; }},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); }},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }},
      {"atan2", [](const Tensor& a, const Tensor& b) { return atan2(a, b); }},
      {"remainder", [](const Tensor& a, const Tensor& b) { return remainder(a, b); }},
      {"where", [](const Tensor& a, const Tensor& b) { return where(gt(a, 1.2), a, b); }},
  };
  for (auto& [name, f] : ops) {
    INFO(name);
    Tensor a = leaf({2, 3}, 0.5, 2.0), b = leaf({3}, 0.5, 2.0);  // b broadcasts
    Tensor bc = b.detach(), ac = a.detach();
    check_gradient([&](const Tensor& x) { return f(x, bc); }, a);
    check_gradient([&](const Tensor& x) { return f(ac, x); }, b);
  }
  // Python-number operands.
  check_gradient([](const Tensor& x) { return pow(x, Scalar(3)); }, leaf({4}, 0.5, 2.0));
  check_gradient([](const Tensor& x) { return pow(Scalar(2.0), x); }, leaf({4}));
  check_gradient([](const Tensor& x) { return Scalar(1.0) / x; }, leaf({4}, 0.5, 2.0));
}
