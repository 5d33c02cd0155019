// cat, stack, split and chunk.
#include <catch2/catch.hpp>

#include "kiln.h"

using namespace kiln;

namespace {
std::vector<double> vals(const Tensor& t) {
  Tensor c = t.to(DType::Float64).contiguous();
  return std::vector<double>(c.data<double>(), c.data<double>() + c.numel());
}
Tensor f32(std::vector<float> v, Shape shape) { return from_blob_copy(v.data(), std::move(shape), DType::Float32); }
Tensor iota(Shape shape, DType dtype = DType::Float32) {
  return arange(0, numel(shape)).to(dtype).reshape(std::move(shape));
}
}  // namespace

TEST_CASE("cat joins along any dim and promotes dtypes", "[join]") {
  Tensor a = iota({2, 3});
  Tensor b = f32({10, 11, 12}, {1, 3});
  Tensor r = cat({a, b});
  CHECK(r.shape() == Shape{3, 3});
  CHECK(vals(r) == std::vector<double>{0, 1, 2, 3, 4, 5, 10, 11, 12});

  Tensor c = f32({7, 8}, {2, 1});
  r = cat({a, c}, -1);
  CHECK(r.shape() == Shape{2, 4});
  CHECK(vals(r) == std::vector<double>{0, 1, 2, 7, 3, 4, 5, 8});

  // Non-contiguous inputs: a transposed view and a strided slice.
  Tensor t = iota({3, 2}).T();  // [[0,2,4],[1,3,5]]
  Tensor s = iota({2, 6}).slice(1, 0, 6, 2);  // [[0,2,4],[6,8,10]]
  r = cat({t, s}, 0);
  CHECK(vals(r) == std::vector<double>{0, 2, 4, 1, 3, 5, 0, 2, 4, 6, 8, 10});
  r = cat({t, s, t}, 1);
  CHECK(r.shape() == Shape{2, 9});
  CHECK(vals(r) == std::vector<double>{0, 2, 4, 0, 2, 4, 0, 2, 4, 1, 3, 5, 6, 8, 10, 1, 3, 5});

  CHECK(cat({iota({2}, DType::Int32), iota({2}, DType::Float32)}).dtype() == DType::Float32);
  CHECK(cat({iota({2}, DType::Bool), iota({2}, DType::Int64)}).dtype() == DType::Int64);
  Tensor mixed = cat({iota({2}, DType::Int32), f32({0.5f}, {1})});
  CHECK(vals(mixed) == std::vector<double>{0, 1, 0.5});
  CHECK(cat({iota({2}, DType::Float16), iota({2}, DType::BFloat16)}).dtype() == DType::Float32);
}

TEST_CASE("cat handles empty tensors like torch", "[join]") {
  Tensor a = iota({2, 3});
  Tensor legacy = Tensor::empty({0}, DType::Float64);
  // A 1-D empty tensor is skipped whatever its shape, but its dtype counts.
  Tensor r = cat({legacy, a, legacy});
  CHECK(r.shape() == Shape{2, 3});
  CHECK(r.dtype() == DType::Float64);
  CHECK(vals(r) == vals(a));
  CHECK(cat({legacy, legacy}).shape() == Shape{0});
  // Size 0 in the cat dim joins normally; the other dims must still match.
  CHECK(cat({Tensor::empty({0, 3}), a}).shape() == Shape{2, 3});
  CHECK(cat({Tensor::empty({2, 0}), a}, 1).shape() == Shape{2, 3});
  CHECK(cat({Tensor::empty({0, 3}), Tensor::empty({0, 3})}).shape() == Shape{0, 3});
  CHECK_THROWS_AS(cat({Tensor::empty({0, 4}), a}), ShapeError);
  CHECK(cat({a}).shape() == Shape{2, 3});
}

TEST_CASE("cat reports mismatched shapes", "[join]") {
  Tensor a = iota({2, 3}), b = iota({2, 4});
  CHECK_THROWS_AS(cat({a, b}, 0), ShapeError);
  CHECK_THROWS_WITH(cat({a, a, b}, 0),
                    Catch::Contains("cat") && Catch::Contains("tensor 2") && Catch::Contains("(2, 4)") &&
                        Catch::Contains("(2, 3)"));
  CHECK(cat({a, b}, 1).shape() == Shape{2, 7});
  CHECK_THROWS_AS(cat({a, iota({2, 3, 1})}), ShapeError);
  CHECK_THROWS_AS(cat({scalar_tensor(1.0), scalar_tensor(2.0)}), ShapeError);
  CHECK_THROWS_AS(cat({}), ValueError);
  CHECK_THROWS_AS(cat({a, a}, 2), IndexError);
}

TEST_CASE("stack adds a dim", "[join]") {
  Tensor a = f32({1, 2, 3}, {3}), b = f32({4, 5, 6}, {3});
  Tensor r = stack({a, b});
  CHECK(r.shape() == Shape{2, 3});
  CHECK(vals(r) == std::vector<double>{1, 2, 3, 4, 5, 6});
  r = stack({a, b}, 1);
  CHECK(r.shape() == Shape{3, 2});
  CHECK(vals(r) == std::vector<double>{1, 4, 2, 5, 3, 6});
  CHECK(stack({a, b}, -1).shape() == Shape{3, 2});
  CHECK(stack({scalar_tensor(1.0), scalar_tensor(2.0)}).shape() == Shape{2});
  CHECK(stack({Tensor::empty({0}), Tensor::empty({0})}).shape() == Shape{2, 0});
  Tensor t = iota({2, 2}).T();
  CHECK(vals(stack({t, t}, 1)) == std::vector<double>{0, 2, 0, 2, 1, 3, 1, 3});
  CHECK_THROWS_AS(stack({a, f32({1, 2}, {2})}), ShapeError);
  CHECK_THROWS_AS(stack({a, b}, 2), IndexError);
  CHECK_THROWS_AS(stack({}), ValueError);
}

TEST_CASE("split returns views by size or by sizes", "[join]") {
  Tensor x = iota({5, 2});
  auto parts = split(x, 2);
  REQUIRE(parts.size() == 3);
  CHECK(parts[0].shape() == Shape{2, 2});
  CHECK(parts[2].shape() == Shape{1, 2});
  CHECK(vals(parts[1]) == std::vector<double>{4, 5, 6, 7});
  CHECK(vals(parts[2]) == std::vector<double>{8, 9});
  parts[1].fill_(-1);  // views: writes reach x
  CHECK(vals(x.select(0, 2)) == std::vector<double>{-1, -1});

  CHECK(split(x, 7).size() == 1);
  CHECK(split(x, 1, 1).size() == 2);
  CHECK(vals(split(x, 1, -1)[1]) == std::vector<double>{1, 3, -1, -1, 9});
  CHECK(split(Tensor::empty({0, 3}), 2).size() == 1);
  CHECK(split(Tensor::empty({0, 3}), 0).size() == 1);
  CHECK_THROWS_AS(split(x, 0), ValueError);
  CHECK_THROWS_AS(split(x, -1), ValueError);
  CHECK_THROWS_AS(split(scalar_tensor(1.0), 1), ShapeError);

  parts = split(x, std::vector<int64_t>{1, 0, 4});
  REQUIRE(parts.size() == 3);
  CHECK(parts[0].shape() == Shape{1, 2});
  CHECK(parts[1].shape() == Shape{0, 2});
  CHECK(parts[2].shape() == Shape{4, 2});
  CHECK(parts[2].storage() == x.storage());
  CHECK_THROWS_WITH(split(x, std::vector<int64_t>{2, 2}), Catch::Contains("split"));
  CHECK_THROWS_AS(split(x, std::vector<int64_t>{2, 2}), ShapeError);
  CHECK_THROWS_AS(split(x, std::vector<int64_t>{6, -1}), ValueError);
}

TEST_CASE("chunk sizes pieces like torch", "[join]") {
  auto sizes = [](const std::vector<Tensor>& ts, int64_t dim) {
    std::vector<int64_t> s;
    for (const Tensor& t : ts) s.push_back(t.size(dim));
    return s;
  };
  CHECK(sizes(chunk(iota({5}), 3), 0) == std::vector<int64_t>{2, 2, 1});
  CHECK(sizes(chunk(iota({6}), 4), 0) == std::vector<int64_t>{2, 2, 2});  // fewer than asked
  CHECK(sizes(chunk(iota({2}), 5), 0) == std::vector<int64_t>{1, 1});
  CHECK(sizes(chunk(iota({0}), 3), 0) == std::vector<int64_t>{0, 0, 0});
  CHECK(sizes(chunk(iota({3, 7}), 2, 1), 1) == std::vector<int64_t>{4, 3});
  auto parts = chunk(iota({3, 4}).T(), 2, 1);  // a non-contiguous source
  CHECK(vals(parts[1]) == std::vector<double>{8, 9, 10, 11});
  CHECK_THROWS_AS(chunk(iota({3}), 0), ValueError);
}
