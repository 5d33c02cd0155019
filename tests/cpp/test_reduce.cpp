// Reductions against a naive multi-index reference: every subset of dims,
// keepdim, negative dims, permuted and sliced inputs, dtype rules, empty
// reductions, NaN, and the threaded paths (long rows, few outputs).
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>

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

// Reduces `x` (any layout) over the dims in `mask` by folding f over the
// elements of each output, in index order; the result is in output order.
std::vector<double> naive(const Tensor& x, const std::vector<bool>& mask, double init,
                          const std::function<double(double, double)>& f) {
  std::vector<double> v = values(x);
  const Shape& s = x.shape();
  const int64_t nd = x.dim();
  int64_t nout = 1;
  for (int64_t d = 0; d < nd; ++d)
    if (!mask[d]) nout *= s[d];
  std::vector<double> out(nout, init);
  std::vector<int64_t> idx(nd, 0);
  for (int64_t flat = 0; flat < static_cast<int64_t>(v.size()); ++flat) {
    int64_t o = 0;
    for (int64_t d = 0; d < nd; ++d)
      if (!mask[d]) o = o * s[d] + idx[d];
    out[o] = f(out[o], v[flat]);
    for (int64_t d = nd - 1; d >= 0 && ++idx[d] == s[d]; --d) idx[d] = 0;
  }
  return out;
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, double rtol = 1e-5,
                 double atol = 1e-6) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      CHECK(std::isnan(got[i]));
    } else if (std::isinf(want[i])) {
      CHECK(got[i] == want[i]);
    } else {
      INFO("element " << i);
      CHECK(std::abs(got[i] - want[i]) <= atol + rtol * std::abs(want[i]));
    }
  }
}

Shape expected_shape(const Shape& s, const std::vector<bool>& mask, bool keepdim) {
  Shape out;
  for (size_t d = 0; d < s.size(); ++d) {
    if (!mask[d]) out.push_back(s[d]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

// Inputs of one logical shape in three layouts: contiguous, a permuted dense
// view, and a strided slice (which the engine copies).
std::vector<Tensor> layouts(const Shape& shape) {
  Tensor base = randn(shape);
  std::vector<Tensor> out{base};
  if (shape.size() >= 2) {
    DimList rev;
    for (int64_t d = static_cast<int64_t>(shape.size()); d-- > 0;) rev.push_back(d);
    Shape rshape(shape.rbegin(), shape.rend());
    out.push_back(randn(rshape).permute(rev));
  }
  Shape wide = shape;
  wide.back() *= 2;
  out.push_back(randn(wide).slice(-1, 0, std::nullopt, 2));
  return out;
}

}  // namespace

TEST_CASE("sum, mean, prod, amax, amin match a naive reduction over every dim subset", "[reduce]") {
  manual_seed(1);
  for (Shape shape : {Shape{7}, Shape{3, 4}, Shape{2, 3, 5}, Shape{2, 1, 3, 4}, Shape{3, 70, 2}}) {
    const int64_t nd = static_cast<int64_t>(shape.size());
    for (const Tensor& x : layouts(shape)) {
      for (int64_t bits = 0; bits < (1 << nd); ++bits) {
        std::vector<bool> mask(nd);
        DimList dims;
        for (int64_t d = 0; d < nd; ++d)
          if (bits >> d & 1) {
            mask[d] = true;
            dims.push_back(d % 2 ? d - nd : d);  // exercise negative dims too
          }
        if (dims.empty()) mask.assign(nd, true);  // {} means all dims
        int64_t count = 1;
        for (int64_t d = 0; d < nd; ++d)
          if (mask[d]) count *= shape[d];
        for (bool keepdim : {false, true}) {
          INFO("shape " << shape_str(shape) << " dims " << shape_str(dims) << " keepdim " << keepdim);
          Tensor s = sum(x, dims, keepdim);
          CHECK(s.shape() == expected_shape(shape, mask, keepdim));
          auto ref_sum = naive(x, mask, 0, std::plus<>());
          check_close(values(s), ref_sum);
          std::vector<double> ref_mean = ref_sum;
          for (double& v : ref_mean) v /= double(count);
          check_close(values(mean(x, dims, keepdim)), ref_mean);
          check_close(values(prod(x, dims, keepdim)), naive(x, mask, 1, std::multiplies<>()), 1e-4);
          check_close(values(amax(x, dims, keepdim)),
                      naive(x, mask, -INFINITY, [](double a, double b) { return std::max(a, b); }));
          check_close(values(amin(x, dims, keepdim)),
                      naive(x, mask, INFINITY, [](double a, double b) { return std::min(a, b); }));
        }
      }
    }
  }
}

TEST_CASE("reductions follow PyTorch's dtype rules", "[reduce]") {
  Tensor i32 = tensor_of({1, 2, 3, 4}, {2, 2}, DType::Int32);
  CHECK(sum(i32).dtype() == DType::Int64);
  CHECK(sum(i32).item<int64_t>() == 10);
  CHECK(prod(i32).dtype() == DType::Int64);
  CHECK(prod(i32).item<int64_t>() == 24);
  CHECK(sum(i32, {}, false, DType::Int32).dtype() == DType::Int32);
  CHECK(sum(i32, {}, false, DType::Float64).dtype() == DType::Float64);
  CHECK(amax(i32).dtype() == DType::Int32);
  CHECK(amax(i32).item<int64_t>() == 4);
  Tensor b = tensor_of({1, 0, 1, 1}, {4}, DType::Bool);
  CHECK(sum(b).dtype() == DType::Int64);
  CHECK(sum(b).item<int64_t>() == 3);
  CHECK(any(b).dtype() == DType::Bool);
  CHECK(any(b).item<bool>());
  CHECK_FALSE(all(b).item<bool>());
  Tensor h = tensor_of({0.5, 1.5, 2.25}, {3}, DType::Float16);
  CHECK(sum(h).dtype() == DType::Float16);
  CHECK(sum(h).item<double>() == 4.25);
  CHECK(mean(h).dtype() == DType::Float16);
  Tensor bf = tensor_of({1, 2, 3, 4}, {4}, DType::BFloat16);
  CHECK(mean(bf).item<double>() == 2.5);
  CHECK_THROWS_AS(mean(i32), DTypeError);
  CHECK_THROWS_WITH(mean(i32), Catch::Contains("mean(): could not infer output dtype"));
  CHECK_THROWS_AS(var(i32), DTypeError);
  // Large int64 sums stay exact.
  Tensor big = full({3}, Scalar(int64_t(1) << 60), DType::Int64);
  CHECK(sum(big, {}, false).item<int64_t>() == 3 * (int64_t(1) << 60));
}

TEST_CASE("float32 sums are accurate for long inputs", "[reduce]") {
  // 2^22 copies of 0.1f: a float accumulator would drift far off.
  const int64_t n = int64_t(1) << 22;
  Tensor x = full({n}, 0.1, DType::Float32);
  const double want = double(0.1f) * double(n);
  CHECK(std::abs(sum(x).item<double>() - want) <= 1e-6 * want);
  CHECK(std::abs(mean(x).item<double>() - double(0.1f)) <= 1e-6 * 0.1);
  // The same as columns ([n/4, 4] over dim 0) and as a few long rows.
  Tensor cols = sum(x.view({n / 4, 4}), {0});
  for (double v : values(cols)) CHECK(std::abs(v - want / 4) <= 1e-6 * want);
  for (double v : values(sum(x.view({4, n / 4}), {1}))) CHECK(std::abs(v - want / 4) <= 1e-6 * want);
}

TEST_CASE("threaded paths agree with one thread", "[reduce]") {
  const int saved = num_threads();
  manual_seed(7);
  for (Shape shape : {Shape{1 << 18}, Shape{3, 100000}, Shape{100000, 3}, Shape{200000, 2}, Shape{2, 40000, 5},
                      Shape{64, 4096}}) {
    Tensor x = randn(shape);
    std::vector<DimList> dim_sets{{}, {0}, {-1}};
    if (shape.size() == 3) dim_sets.push_back({0, 2});
    for (const DimList& dims : dim_sets) {
      INFO("shape " << shape_str(shape) << " dims " << shape_str(dims));
      set_num_threads(1);
      auto s1 = values(sum(x, dims)), m1 = values(amax(x, dims)), v1 = values(var(x, dims));
      set_num_threads(2);
      check_close(values(sum(x, dims)), s1, 1e-5, 1e-4);  // float32 results: splits may round differently
      CHECK(values(amax(x, dims)) == m1);
      check_close(values(var(x, dims)), v1, 1e-6, 1e-9);
    }
    if (shape.size() == 2) {
      set_num_threads(1);
      auto a1 = values(argmax(x, 1)), a0 = values(argmax(x, 0)), af = values(argmin(x));
      set_num_threads(2);
      CHECK(values(argmax(x, 1)) == a1);
      CHECK(values(argmax(x, 0)) == a0);
      CHECK(values(argmin(x)) == af);
    }
  }
  set_num_threads(saved);
}

TEST_CASE("empty reductions", "[reduce]") {
  Tensor e = zeros({0, 3});
  CHECK(values(sum(e, {0})) == std::vector<double>{0, 0, 0});
  CHECK(values(prod(e, {0})) == std::vector<double>{1, 1, 1});
  CHECK(std::isnan(mean(e).item<double>()));
  CHECK(sum(e).item<double>() == 0);
  CHECK(sum(e, {1}).shape() == Shape{0});
  CHECK(amax(e, {1}).shape() == Shape{0});  // reducing a non-empty dim is fine
  CHECK_THROWS_AS(amax(e, {0}), IndexError);
  CHECK_THROWS_AS(amin(e), IndexError);
  CHECK_THROWS_WITH(amax(e), Catch::Contains("amax") && Catch::Contains("(0, 3)"));
  CHECK_THROWS_AS(argmax(e), IndexError);
  CHECK_THROWS_AS(max(e, 0), IndexError);
  CHECK(argmax(e, 1).shape() == Shape{0});
  CHECK(any(e).item<bool>() == false);
  CHECK(all(e).item<bool>() == true);
  CHECK(std::isnan(var(e).item<double>()));
  CHECK(logsumexp(e, {0}).shape() == Shape{3});
  CHECK(std::isinf(logsumexp(e, {0})[0].item<double>()));
}

TEST_CASE("0-d tensors and size-1 dims", "[reduce]") {
  Tensor s = scalar_tensor(2.5);
  CHECK(sum(s).item<double>() == 2.5);
  CHECK(sum(s, {0}).dim() == 0);
  CHECK(sum(s, {-1}, true).dim() == 0);
  CHECK(amax(s).item<double>() == 2.5);
  CHECK(argmax(s).item<int64_t>() == 0);
  CHECK(max(s, 0).first.item<double>() == 2.5);
  Tensor x = tensor_of({1, 2, 3}, {3, 1});
  CHECK(values(sum(x, {1})) == std::vector<double>{1, 2, 3});
  CHECK(sum(x, {1}, true).shape() == Shape{3, 1});
  CHECK(values(amax(x, {1})) == std::vector<double>{1, 2, 3});
}

TEST_CASE("bad dims raise", "[reduce]") {
  Tensor x = zeros({2, 3});
  CHECK_THROWS_AS(sum(x, {0, 0}), ValueError);
  CHECK_THROWS_AS(sum(x, {1, -1}), ValueError);
  CHECK_THROWS_WITH(sum(x, {1, -1}), Catch::Contains("multiple times"));
  CHECK_THROWS_AS(sum(x, {2}), IndexError);
  CHECK_THROWS_AS(argmax(x, -3), IndexError);
}

TEST_CASE("NaN propagates through max, min and their indices", "[reduce]") {
  Tensor x = tensor_of({1, NAN, 3, 5, 2, NAN}, {2, 3});
  auto m = values(amax(x, {1}));
  CHECK(std::isnan(m[0]));
  CHECK(std::isnan(m[1]));
  CHECK(std::isnan(amin(x).item<double>()));
  CHECK(values(argmax(x, 1)) == std::vector<double>{1, 2});
  CHECK(values(argmin(x, 1)) == std::vector<double>{1, 2});
  CHECK(argmax(x).item<int64_t>() == 1);
  auto [v, i] = max(x, 0);
  CHECK(values(i) == std::vector<double>{1, 0, 1});
  CHECK(std::isnan(values(v)[1]));
  // A NaN deep inside a long row, past the vectorized lanes.
  Tensor row = zeros({1000});
  row.narrow(0, 613, 1).fill_(NAN);
  row.narrow(0, 700, 1).fill_(NAN);
  row.narrow(0, 5, 1).fill_(100.0);
  CHECK(argmax(row).item<int64_t>() == 613);
  CHECK(std::isnan(amax(row).item<double>()));
  CHECK(argmin(row).item<int64_t>() == 613);
}

TEST_CASE("max/min with indices and argmax/argmin", "[reduce]") {
  // Ties go to the first occurrence, also across vector lanes.
  std::vector<double> v(100, 1.0);
  v[37] = 9;
  v[80] = 9;
  v[3] = -4;
  v[90] = -4;
  Tensor row = tensor_of(v, {100});
  CHECK(argmax(row).item<int64_t>() == 37);
  CHECK(argmin(row).item<int64_t>() == 3);
  Tensor flat_ties = ones({70});
  CHECK(argmax(flat_ties).item<int64_t>() == 0);
  CHECK(argmin(flat_ties).item<int64_t>() == 0);

  manual_seed(3);
  for (Tensor x : {randn({4, 5, 6}), randn({6, 5, 4}).permute({2, 1, 0}), randint(-3, 3, {4, 5, 6}, DType::Int32)}) {
    for (int64_t dim : {0, 1, 2, -1}) {
      for (bool keepdim : {false, true}) {
        auto [val, idx] = max(x, dim, keepdim);
        auto [minval, minidx] = min(x, dim, keepdim);
        const int64_t d = dim < 0 ? dim + 3 : dim;
        std::vector<bool> mask(3, false);
        mask[d] = true;
        CHECK(val.shape() == expected_shape(x.shape(), mask, keepdim));
        CHECK(idx.dtype() == DType::Int64);
        CHECK(val.dtype() == x.dtype());
        CHECK(values(val) == naive(x, mask, -INFINITY, [](double a, double b) { return std::max(a, b); }));
        CHECK(values(minval) == naive(x, mask, INFINITY, [](double a, double b) { return std::min(a, b); }));
        CHECK(values(argmax(x, dim, keepdim)) == values(idx));
        CHECK(values(argmin(x, dim, keepdim)) == values(minidx));
        // The index selects the value, and it is the first such index.
        Tensor picked = gather(x, d, keepdim ? idx : idx.unsqueeze(d));
        CHECK(values(picked) == values(keepdim ? val : val.unsqueeze(d)));
        auto xv = values(x.contiguous());
        auto iv = values(idx);
        Shape s = x.shape();
        int64_t A = 1, B = 1;
        for (int64_t k = 0; k < d; ++k) A *= s[k];
        for (int64_t k = d + 1; k < 3; ++k) B *= s[k];
        for (int64_t a = 0; a < A; ++a)
          for (int64_t b = 0; b < B; ++b) {
            int64_t first = 0;
            for (int64_t r = 1; r < s[d]; ++r)
              if (xv[(a * s[d] + r) * B + b] > xv[(a * s[d] + first) * B + b]) first = r;
            CHECK(iv[a * B + b] == first);
          }
      }
    }
  }
  Tensor x = tensor_of({3, 9, 2, 9, 1, 0}, {2, 3});
  CHECK(argmax(x).item<int64_t>() == 1);
  CHECK(argmax(x, std::nullopt, true).shape() == Shape{1, 1});
  CHECK(argmin(x).item<int64_t>() == 5);
}

TEST_CASE("var and std", "[reduce]") {
  manual_seed(5);
  for (const Tensor& x : layouts({3, 4, 5})) {
    for (DimList dims : {DimList{}, DimList{0}, DimList{-1}, DimList{0, 2}, DimList{1, 2}}) {
      std::vector<bool> mask(3, dims.empty());
      for (int64_t d : dims) mask[d < 0 ? d + 3 : d] = true;
      auto s1 = naive(x, mask, 0, std::plus<>());
      auto s2 = naive(x, mask, 0, [](double a, double b) { return a + b * b; });
      int64_t n = 1;
      for (int d = 0; d < 3; ++d)
        if (mask[d]) n *= x.shape()[d];
      for (int64_t correction : {0, 1}) {
        std::vector<double> want(s1.size()), want_std(s1.size());
        for (size_t i = 0; i < s1.size(); ++i) {
          want[i] = (s2[i] - s1[i] * s1[i] / double(n)) / double(n - correction);
          want_std[i] = std::sqrt(want[i]);
        }
        for (bool keepdim : {false, true}) {
          INFO("dims " << shape_str(dims) << " correction " << correction);
          Tensor v = var(x, dims, correction, keepdim);
          CHECK(v.shape() == expected_shape(x.shape(), mask, keepdim));
          check_close(values(v), want, 1e-4);
          check_close(values(kiln::std(x, dims, correction, keepdim)), want_std, 1e-4);
        }
      }
    }
  }
  // Exact two-pass: a large offset does not cancel the variance away.
  Tensor shifted = tensor_of({1e4 + 1, 1e4 + 2, 1e4 + 3, 1e4 + 4}, {4});
  CHECK(var(shifted).item<double>() == Approx(5.0 / 3.0).epsilon(1e-6));
  CHECK(var(shifted, {}, 0).item<double>() == Approx(1.25).epsilon(1e-6));
  // n - correction <= 0 divides by zero like PyTorch.
  CHECK(std::isnan(var(ones({1})).item<double>()));
  CHECK(var(tensor_of({1, 2}, {2}, DType::Float16)).dtype() == DType::Float16);
  CHECK(var(tensor_of({1, 2}, {2}, DType::Float16)).item<double>() == 0.5);
}

TEST_CASE("logsumexp", "[reduce]") {
  manual_seed(9);
  for (const Tensor& x : layouts({4, 6, 3})) {
    for (DimList dims : {DimList{1}, DimList{-1}, DimList{0, 2}, DimList{}}) {
      std::vector<bool> mask(3, dims.empty());
      for (int64_t d : dims) mask[d < 0 ? d + 3 : d] = true;
      auto se = naive(x, mask, 0, [](double a, double b) { return a + std::exp(b); });
      for (double& v : se) v = std::log(v);
      check_close(values(logsumexp(x, dims)), se);
    }
  }
  // Large values do not overflow; -inf rows give -inf; +inf gives +inf.
  Tensor x = tensor_of({1000, 1000, -INFINITY, -INFINITY, INFINITY, 0}, {3, 2});
  auto r = values(logsumexp(x, {1}));
  CHECK(r[0] == Approx(1000 + std::log(2.0)));
  CHECK(r[1] == -INFINITY);
  CHECK(r[2] == INFINITY);
  CHECK(logsumexp(x, {1}, true).shape() == Shape{3, 1});
  CHECK(logsumexp(tensor_of({0, 0}, {2}, DType::Int64), {0}).dtype() == DType::Float32);
}

TEST_CASE("any and all", "[reduce]") {
  Tensor x = tensor_of({0, 0, 1, 4, 2, 3}, {2, 3}, DType::Int32);
  CHECK(values(any(x, {1})) == std::vector<double>{1, 1});
  CHECK(values(all(x, {1})) == std::vector<double>{0, 1});
  CHECK(values(any(x, {0})) == std::vector<double>{1, 1, 1});
  CHECK(values(all(x, {0})) == std::vector<double>{0, 0, 1});
  CHECK(any(x, {0}, true).shape() == Shape{1, 3});
  Tensor f = tensor_of({0.0, NAN, 0.0}, {3});
  CHECK(any(f).item<bool>());  // NaN is truthy
  CHECK_FALSE(all(f).item<bool>());
  Tensor big = zeros({5000}, DType::Bool);
  CHECK_FALSE(any(big).item<bool>());
  big.narrow(0, 4321, 1).fill_(true);
  CHECK(any(big).item<bool>());
  CHECK_FALSE(all(big).item<bool>());
}

TEST_CASE("Tensor reduction methods forward to the ops", "[reduce]") {
  Tensor x = tensor_of({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(values(x.sum({1})) == std::vector<double>{6, 15});
  CHECK(values(x.mean({0})) == std::vector<double>{2.5, 3.5, 4.5});
  CHECK(values(x.T().sum({1})) == std::vector<double>{5, 7, 9});
  CHECK(values(x.T().amax({0}, true)) == std::vector<double>{3, 6});
  CHECK(x.T().amax({0}, true).shape() == Shape{1, 2});
}
