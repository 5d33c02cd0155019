// Runtime and core tensor behaviour: dtypes, promotion, allocator, thread
// pool, views, elementwise ops, printing, random numbers.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>

#include "kiln.h"

using namespace kiln;

namespace {
std::vector<float> values(const Tensor& t) {
  Tensor c = t.to(DType::Float32).contiguous();
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}
}  // namespace

TEST_CASE("dtype promotion follows PyTorch", "[core]") {
  CHECK(promote_types(DType::Int32, DType::Float16) == DType::Float16);
  CHECK(promote_types(DType::Bool, DType::Int8) == DType::Int8);
  CHECK(promote_types(DType::Float16, DType::BFloat16) == DType::Float32);
  Tensor i32 = zeros({2}, DType::Int32), f16 = zeros({2}, DType::Float16);
  Tensor f64_0d = scalar_tensor(1.0, DType::Float64);
  CHECK(result_type({{&i32, {}}, {nullptr, Scalar(2)}}) == DType::Int32);
  CHECK(result_type({{&i32, {}}, {nullptr, Scalar(2.5)}}) == DType::Float32);
  CHECK(result_type({{&f16, {}}, {nullptr, Scalar(2.5)}}) == DType::Float16);
  CHECK(result_type({{&f16, {}}, {&f64_0d, {}}}) == DType::Float16);  // 0-d does not widen
  CHECK(result_type({{&i32, {}}, {&f64_0d, {}}}) == DType::Float64);  // but raises the category
  CHECK((i32 + 1.5).dtype() == DType::Float32);
  CHECK((i32 / 2).dtype() == DType::Float32);
  CHECK((i32 > 0).dtype() == DType::Bool);
}

TEST_CASE("half and bfloat16 round to nearest even", "[core]") {
  CHECK(static_cast<float>(Half(1.0f / 3.0f)) == Approx(0.333251953125f));
  CHECK(static_cast<float>(Half(65504.0f)) == 65504.0f);
  CHECK(std::isinf(static_cast<float>(Half(70000.0f))));
  CHECK(static_cast<float>(Half(5.96046448e-8f)) == 5.96046448e-8f);  // smallest subnormal
  CHECK(static_cast<float>(BFloat16(1.00390625f)) == 1.0f);  // tie rounds to even
  CHECK(std::isnan(static_cast<float>(BFloat16(NAN))));
}

TEST_CASE("the cpu allocator reuses freed blocks", "[core]") {
  Allocator& a = cpu_allocator();
  void* p = a.allocate(1 << 20);
  CHECK(reinterpret_cast<uintptr_t>(p) % kCpuAlignment == 0);
  a.deallocate(p, 1 << 20);
  uint64_t hits = a.stats().num_cache_hits;
  void* q = a.allocate((1 << 20) - 100);  // same size class
  CHECK(q == p);
  CHECK(a.stats().num_cache_hits == hits + 1);
  a.deallocate(q, (1 << 20) - 100);
}

TEST_CASE("parallel_for covers the range exactly once and rethrows", "[core]") {
  std::vector<std::atomic<int>> hits(100000);
  parallel_for(0, 100000, 1000, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i]++;
  });
  for (auto& h : hits) REQUIRE(h == 1);
  CHECK_THROWS_AS(parallel_for(0, 100000, 10, [](int64_t b, int64_t) {
                    if (b > 0) fail<ValueError>("boom");
                  }),
                  ValueError);
}

TEST_CASE("views share storage and track versions", "[core]") {
  Tensor x = arange(0, 12).to(DType::Float32).reshape({3, 4});
  Tensor col = x.slice(1, 1, 3);  // x[:, 1:3]
  CHECK(col.shape() == Shape{3, 2});
  CHECK_FALSE(col.is_contiguous());
  uint64_t v = x.version();
  col.mul_(10);
  CHECK(x.version() > v);
  CHECK(values(x) == std::vector<float>{0, 10, 20, 3, 4, 50, 60, 7, 8, 90, 100, 11});
  Tensor t = x.T();
  CHECK(t.shape() == Shape{4, 3});
  CHECK(values(t.contiguous())[1] == 4);
  CHECK(x.slice(1, std::nullopt, std::nullopt, 2).shape() == Shape{3, 2});
  CHECK(values(x.select(0, -1)) == std::vector<float>{8, 90, 100, 11});
  CHECK(x.unsqueeze(0).shape() == Shape{1, 3, 4});
  CHECK(x.unsqueeze(0).squeeze().shape() == Shape{3, 4});
  CHECK(x.flatten().shape() == Shape{12});
  CHECK(x.view({2, -1}).shape() == Shape{2, 6});
  CHECK_THROWS_AS(t.view({12}), ShapeError);  // not viewable: reshape copies instead
  CHECK(t.reshape({12}).shape() == Shape{12});
  CHECK_THROWS_AS(x.view({5, 3}), ShapeError);
  CHECK_THROWS_AS(x.select(0, 3), IndexError);
  CHECK_THROWS_AS(x.permute({0, 0}), ShapeError);
  Tensor e = ones({3, 1}).expand({2, 3, 4});
  CHECK(e.strides() == Strides{0, 1, 0});
  CHECK_THROWS_AS(ones({3, 2}).expand({3, 4}), ShapeError);
}

TEST_CASE("elementwise ops broadcast over strided views", "[core]") {
  Tensor a = arange(0, 6).to(DType::Float64).reshape({2, 3});
  Tensor row = from_blob_copy(std::vector<double>{10, 20, 30}.data(), {3}, DType::Float64);
  CHECK(values(a + row) == std::vector<float>{10, 21, 32, 13, 24, 35});
  CHECK(values(a.T() * 2) == std::vector<float>{0, 6, 2, 8, 4, 10});
  CHECK(values(maximum(a, Scalar(2.5))) == std::vector<float>{2.5, 2.5, 2.5, 3, 4, 5});
  CHECK(values(remainder(Scalar(-7), full({1}, 3))) == std::vector<float>{2});
  CHECK(values(floor_divide(full({1}, -7), Scalar(2))) == std::vector<float>{-4});
  CHECK(values(floor_divide(full({1}, 7), Scalar(0))) == std::vector<float>{0});  // no SIGFPE
  CHECK(values(where(a > 2, a, Scalar(-1.0))) == std::vector<float>{-1, -1, -1, 3, 4, 5});
  CHECK(values(clamp(a, 1, 4)) == std::vector<float>{1, 1, 2, 3, 4, 4});
  CHECK_THROWS_AS(ones({2, 3}) + ones({4}), ShapeError);
  CHECK_THROWS_AS(bitwise_and(ones({2}), ones({2})), DTypeError);
  Tensor i = zeros({2}, DType::Int64);
  CHECK_THROWS_AS(i.add_(1.5), DTypeError);  // float result into an int tensor
  CHECK_THROWS_AS(ones({1}).add_(ones({3})), ShapeError);
}

TEST_CASE("in-place ops write into self, reading overlapping inputs first", "[core]") {
  Tensor x = arange(0, 5).to(DType::Float32);
  void* data = x.data_ptr();
  x.mul_(2).add_(1).neg_().abs_();
  CHECK(x.data_ptr() == data);
  CHECK(values(x) == std::vector<float>{1, 3, 5, 7, 9});
  Tensor tail = x.slice(0, 1, std::nullopt), head = x.slice(0, 0, 4);
  tail.add_(head);  // x[1:] += x[:-1] reads the old values
  CHECK(values(x) == std::vector<float>{1, 4, 8, 12, 16});
  Tensor h = ones({3}, DType::Float16);
  h.add_(ones({3}, DType::Float32));  // float32 result converted into float16
  CHECK(values(h) == std::vector<float>{2, 2, 2});
  CHECK_THROWS_AS(ones({1}).expand({3}).add_(1), ValueError);
}

TEST_CASE("fast float exp and tanh are accurate", "[core]") {
  Tensor x = linspace(-20, 20, 4001, DType::Float64);
  auto ex = values(exp(x.to(DType::Float32)));
  auto th = values(tanh(x.to(DType::Float32)));
  Tensor xs = x.contiguous();
  for (int64_t i = 0; i < x.numel(); ++i) {
    double v = static_cast<float>(xs.data<double>()[i]);  // the float32 input
    REQUIRE(ex[i] == Approx(std::exp(v)).epsilon(2e-7));
    REQUIRE(th[i] == Approx(std::tanh(v)).epsilon(2e-7).margin(1e-30));
  }
  CHECK(values(exp(full({1}, -INFINITY)))[0] == 0.0f);
  CHECK(std::isinf(values(exp(full({1}, 100.0f)))[0]));
  CHECK(std::isnan(values(exp(full({1}, NAN)))[0]));
}

TEST_CASE("printing looks like PyTorch", "[core]") {
  CHECK(from_blob_copy(std::vector<float>{1, 2.5f}.data(), {2}, DType::Float32).str() ==
        "tensor([1.0000, 2.5000])");
  CHECK(ones({2, 2}).str() == "tensor([[1., 1.],\n        [1., 1.]])");
  CHECK(arange(0, 3).to(DType::Int32).str() == "tensor([0, 1, 2], dtype=kiln.int32)");
  CHECK(zeros({0, 3}).str() == "tensor([], size=(0, 3))");
  CHECK(scalar_tensor(true).str() == "tensor(True)");
  CHECK(arange(0, 2000).str() == "tensor([   0,    1,    2,  ..., 1997, 1998, 1999])");
}

TEST_CASE("random numbers are seeded and well distributed", "[core]") {
  manual_seed(42);
  auto a = values(randn({10000}));
  manual_seed(42);
  auto b = values(randn({10000}));
  CHECK(a == b);
  double mean = 0, sq = 0;
  for (float v : a) mean += v, sq += v * v;
  mean /= a.size();
  CHECK(std::abs(mean) < 0.05);
  CHECK(std::abs(sq / a.size() - 1) < 0.05);
  auto u = values(rand({10000}));
  for (float v : u) REQUIRE((v >= 0 && v < 1));
  Tensor r = randint(-3, 5, {1000});
  auto rv = values(r);
  for (float v : rv) REQUIRE((v >= -3 && v < 5));
  CHECK(r.dtype() == DType::Int64);
}
