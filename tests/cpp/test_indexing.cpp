// index_select, gather, scatter_add, masked_fill, one_hot, nonzero and
// advanced indexing (index, index_put_).
#include <catch2/catch.hpp>

#include <random>

#include "kiln.h"

using namespace kiln;

namespace {
std::vector<double> vals(const Tensor& t) {
  Tensor c = t.to(DType::Float64).contiguous();
  return std::vector<double>(c.data<double>(), c.data<double>() + c.numel());
}
Tensor f32(std::vector<float> v, Shape shape) { return from_blob_copy(v.data(), std::move(shape), DType::Float32); }
Tensor i64(std::vector<int64_t> v, Shape shape) { return from_blob_copy(v.data(), std::move(shape), DType::Int64); }
Tensor i64(std::vector<int64_t> v) { Shape s{static_cast<int64_t>(v.size())}; return i64(std::move(v), s); }
Tensor mask(std::vector<uint8_t> v, Shape shape) { return from_blob_copy(v.data(), std::move(shape), DType::Bool); }
Tensor iota(Shape shape, DType dtype = DType::Float32) {
  return arange(0, numel(shape)).to(dtype).reshape(std::move(shape));
}
const Tensor _;  // a full slice in index()/index_put_()
}  // namespace

TEST_CASE("index_select picks rows or columns", "[indexing]") {
  Tensor x = iota({3, 4});
  Tensor r = index_select(x, 0, i64({2, 0, 2}));
  CHECK(r.shape() == Shape{3, 4});
  CHECK(vals(r) == std::vector<double>{8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11});
  r = index_select(x, -1, i64({3, 1}).to(DType::Int32));
  CHECK(r.shape() == Shape{3, 2});
  CHECK(vals(r) == std::vector<double>{3, 1, 7, 5, 11, 9});
  // Non-contiguous source and index.
  Tensor t = x.T();  // (4, 3)
  Tensor idx = i64({1, 9, 0, 9, 3}).slice(0, 0, 5, 2);  // [1, 0, 3]
  CHECK(vals(index_select(t, 0, idx)) == std::vector<double>{1, 5, 9, 0, 4, 8, 3, 7, 11});
  CHECK(index_select(x, 1, i64({})).shape() == Shape{3, 0});
  CHECK(index_select(x, 0, scalar_tensor(1, DType::Int64)).shape() == Shape{1, 4});
  CHECK(index_select(iota({3}, DType::Int8), 0, i64({2, 2})).dtype() == DType::Int8);

  CHECK_THROWS_AS(index_select(x, 0, i64({3})), IndexError);
  CHECK_THROWS_WITH(index_select(x, 1, i64({0, 4})),
                    Catch::Contains("index_select") && Catch::Contains("4") && Catch::Contains("size 4"));
  CHECK_THROWS_AS(index_select(x, 0, i64({-1})), IndexError);  // torch does not wrap here
  CHECK_THROWS_AS(index_select(x, 0, f32({0}, {1})), DTypeError);
  CHECK_THROWS_AS(index_select(x, 0, i64({0, 1}, {1, 2})), ShapeError);
}

TEST_CASE("index_select on a large table matches a serial loop", "[indexing]") {
  const int64_t rows = 1000, cols = 67, n = 3000;
  Tensor table = iota({rows, cols}, DType::Float64);
  std::mt19937 rng(7);
  std::vector<int64_t> ids(n);
  for (auto& v : ids) v = static_cast<int64_t>(rng() % rows);
  Tensor r = index_select(table, 0, i64(ids));
  REQUIRE(r.shape() == Shape{n, cols});
  const double* p = r.data<double>();
  bool ok = true;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < cols; ++j) ok &= p[i * cols + j] == static_cast<double>(ids[i] * cols + j);
  CHECK(ok);
  // Along the inner dim, with a bad index far into the list.
  ids[n - 5] = cols;
  for (auto& v : ids) v %= cols + 1;
  CHECK_THROWS_AS(index_select(table, 1, i64(ids)), IndexError);
}

TEST_CASE("gather reads along a dim", "[indexing]") {
  Tensor x = f32({1, 2, 3, 4}, {2, 2});
  CHECK(vals(gather(x, 1, i64({0, 0, 1, 0}, {2, 2}))) == std::vector<double>{1, 1, 4, 3});
  CHECK(vals(gather(x, 0, i64({1, 0}, {1, 2}))) == std::vector<double>{3, 2});
  // The index may be smaller than x in the other dims (torch allows it).
  Tensor y = iota({3, 4});
  Tensor r = gather(y, 1, i64({3, 2}, {2, 1}));
  CHECK(r.shape() == Shape{2, 1});
  CHECK(vals(r) == std::vector<double>{3, 6});
  // Strided x and index.
  Tensor yt = y.T();  // (4, 3)
  Tensor it = i64({0, 1, 2, 2, 1, 0}, {3, 2}).T();  // [[0,2,1],[1,2,0]]
  CHECK(vals(gather(yt, 0, it)) == std::vector<double>{0, 6, 9, 1, 6, 8});
  CHECK(gather(y, 0, Tensor::empty({0, 4}, DType::Int64)).shape() == Shape{0, 4});
  CHECK(gather(scalar_tensor(5.0), 0, scalar_tensor(0, DType::Int64)).item<double>() == 5.0);

  CHECK_THROWS_AS(gather(x, 1, i64({0, 2, 1, 0}, {2, 2})), IndexError);
  CHECK_THROWS_AS(gather(x, 1, i64({0, -1}, {1, 2})), IndexError);
  CHECK_THROWS_AS(gather(x, 1, i64({0, 0})), ShapeError);  // dims differ
  CHECK_THROWS_AS(gather(x, 1, i64({0, 0, 0}, {3, 1})), ShapeError);  // 3 > 2 in dim 0
}

TEST_CASE("scatter_add accumulates into a copy", "[indexing]") {
  Tensor x = zeros({3, 5});
  Tensor src = ones({2, 5});
  Tensor r = scatter_add(x, 0, i64({0, 1, 2, 0, 0}, {1, 5}), src);
  CHECK(vals(r) == std::vector<double>{1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0});
  CHECK(vals(x) == std::vector<double>(15, 0));  // x untouched
  // Repeated indices accumulate.
  r = scatter_add(x, 0, i64({0, 1, 2, 0, 0, 2, 0, 0, 1, 2}, {2, 5}), src);
  CHECK(vals(r) == std::vector<double>{1, 1, 1, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1});
  // Along dim 1, onto a non-contiguous x, with int32 indices.
  Tensor base = iota({3, 2}, DType::Int64).T();  // [[0,2,4],[1,3,5]]
  Tensor s = i64({10, 20, 30, 40}, {2, 2});
  r = scatter_add(base, 1, i64({2, 2, 0, 1}, {2, 2}).to(DType::Int32), s);
  CHECK(r.dtype() == DType::Int64);
  CHECK(vals(r) == std::vector<double>{0, 2, 34, 31, 43, 5});
  // Half accumulates through float.
  Tensor h = scatter_add(zeros({2}, DType::Float16), 0, i64({1, 1}), full({2}, 0.5, DType::Float16));
  CHECK(vals(h) == std::vector<double>{0, 1});

  CHECK_THROWS_AS(scatter_add(x, 0, i64({3}, {1, 1}), src), IndexError);
  CHECK_THROWS_AS(scatter_add(x, 0, i64({0}, {1, 1}), ones({1, 1}, DType::Float64)), DTypeError);
  CHECK_THROWS_AS(scatter_add(x, 0, i64({0, 0, 0}, {3, 1}), src), ShapeError);  // bigger than src
}

TEST_CASE("masked_fill broadcasts the mask and converts the value", "[indexing]") {
  Tensor x = iota({2, 3});
  Tensor m = mask({1, 0, 1}, {3});
  CHECK(vals(masked_fill(x, m, -1.0)) == std::vector<double>{-1, 1, -1, -1, 4, -1});
  CHECK(vals(x) == std::vector<double>{0, 1, 2, 3, 4, 5});
  Tensor xi = iota({2, 3}, DType::Int32).T();  // (3, 2), strided
  Tensor r = masked_fill(xi, mask({0, 1}, {1, 2}), 2.7);
  CHECK(r.dtype() == DType::Int32);
  CHECK(vals(r) == std::vector<double>{0, 2, 1, 2, 2, 2});
  // The result takes the broadcast shape when the mask is bigger (like torch).
  CHECK(masked_fill(f32({1}, {1}), mask({1, 0}, {2, 1}), 0.0).shape() == Shape{2, 1});
  CHECK(masked_fill(Tensor::empty({0, 3}), m, 1.0).shape() == Shape{0, 3});
  CHECK_THROWS_AS(masked_fill(x, ones({3}), 1.0), DTypeError);
  CHECK_THROWS_AS(masked_fill(x, mask({1, 0}, {2}), 1.0), ShapeError);
}

TEST_CASE("one_hot encodes int64 classes", "[indexing]") {
  Tensor r = one_hot(i64({0, 2, 1}), 4);
  CHECK(r.dtype() == DType::Int64);
  CHECK(r.shape() == Shape{3, 4});
  CHECK(vals(r) == std::vector<double>{1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0});
  r = one_hot(i64({1, 3}, {2, 1}));  // inferred: max + 1
  CHECK(r.shape() == Shape{2, 1, 4});
  CHECK(vals(r) == std::vector<double>{0, 1, 0, 0, 0, 0, 0, 1});
  CHECK(one_hot(i64({}), 3).shape() == Shape{0, 3});
  CHECK(one_hot(scalar_tensor(2, DType::Int64), 3).shape() == Shape{3});
  CHECK_THROWS_AS(one_hot(i64({0, 3}), 3), IndexError);
  CHECK_THROWS_AS(one_hot(i64({-1}), 3), IndexError);
  CHECK_THROWS_AS(one_hot(i64({}), -1), ValueError);
  CHECK_THROWS_AS(one_hot(f32({1}, {1}), 3), DTypeError);
}

TEST_CASE("nonzero lists coordinates in row-major order", "[indexing]") {
  Tensor x = f32({0, 1, 0, 2, 3, 0}, {2, 3});
  Tensor r = nonzero(x);
  CHECK(r.dtype() == DType::Int64);
  CHECK(r.shape() == Shape{3, 2});
  CHECK(vals(r) == std::vector<double>{0, 1, 1, 0, 1, 1});
  CHECK(vals(nonzero(x.T())) == std::vector<double>{0, 1, 1, 0, 1, 1});
  CHECK(nonzero(Tensor::empty({0, 4})).shape() == Shape{0, 2});
  CHECK(nonzero(scalar_tensor(3.0)).shape() == Shape{1, 0});
  CHECK(nonzero(scalar_tensor(0.0)).shape() == Shape{0, 0});
  CHECK(vals(nonzero(mask({1, 0, 1}, {3}))) == std::vector<double>{0, 2});
  CHECK(nonzero(f32({NAN, 0}, {2})).shape() == Shape{1, 1});

  // Enough elements for several blocks on several threads.
  const int64_t a = 700, b = 301;
  Tensor big = remainder(iota({a, b}, DType::Int64), 7) == Scalar(3);
  Tensor nz = nonzero(big);
  int64_t expected = 0;
  bool ok = true;
  const int64_t* p = nz.data<int64_t>();
  for (int64_t i = 0; i < a * b; ++i)
    if (i % 7 == 3) {
      ok &= p[2 * expected] == i / b && p[2 * expected + 1] == i % b;
      ++expected;
    }
  CHECK(nz.shape() == Shape{expected, 2});
  CHECK(ok);
}

TEST_CASE("index with one index tensor", "[indexing]") {
  Tensor x = iota({3, 4});
  CHECK(vals(index(x, {i64({2, -3})})) == std::vector<double>{8, 9, 10, 11, 0, 1, 2, 3});
  Tensor r = index(x, {_, i64({3, 0, 1, 1}, {2, 2})});  // x[:, idx2d]
  CHECK(r.shape() == Shape{3, 2, 2});
  CHECK(vals(r.select(0, 1)) == std::vector<double>{7, 4, 5, 5});
  r = index(x.T(), {i64({-1})});  // a strided source
  CHECK(vals(r) == std::vector<double>{3, 7, 11});
  CHECK(index(x, {i64({})}).shape() == Shape{0, 4});
  CHECK(index(x, {_, scalar_tensor(1, DType::Int32)}).shape() == Shape{3});
  CHECK(vals(index(x, {})) == vals(x));

  CHECK_THROWS_AS(index(x, {i64({3})}), IndexError);
  CHECK_THROWS_AS(index(x, {i64({-4})}), IndexError);
  CHECK_THROWS_WITH(index(x, {_, i64({5})}),
                    Catch::Contains("index 5") && Catch::Contains("dimension 1") && Catch::Contains("size 4"));
  CHECK_THROWS_AS(index(x, {_, _, i64({0})}), IndexError);  // too many indices
  CHECK_THROWS_AS(index(x, {f32({0}, {1})}), IndexError);
  CHECK_THROWS_AS(index(scalar_tensor(1.0), {i64({0})}), IndexError);
}

TEST_CASE("index with several index tensors follows NumPy placement", "[indexing]") {
  Tensor x = iota({2, 3, 4});
  // Adjacent: the broadcast dims stay in place.
  Tensor r = index(x, {_, i64({0, 2}), i64({1, 3})});
  CHECK(r.shape() == Shape{2, 2});
  CHECK(vals(r) == std::vector<double>{1, 11, 13, 23});
  // Separated by a slice: the broadcast dims go first.
  r = index(x, {i64({0, 1}), _, i64({1, 2})});
  CHECK(r.shape() == Shape{2, 3});
  CHECK(vals(r) == std::vector<double>{1, 5, 9, 14, 18, 22});
  // Broadcasting index tensors: (2, 1) with (3,) gives (2, 3).
  Tensor y = iota({3, 4});
  r = index(y, {i64({0, 2}, {2, 1}), i64({0, 1, 3})});
  CHECK(r.shape() == Shape{2, 3});
  CHECK(vals(r) == std::vector<double>{0, 1, 3, 8, 9, 11});
  r = index(y.T(), {i64({-1, 0}), i64({1, -1})});
  CHECK(vals(r) == std::vector<double>{7, 8});
  CHECK_THROWS_AS(index(y, {i64({0, 1}), i64({0, 1, 2})}), IndexError);  // no broadcast
  CHECK_THROWS_AS(index(y, {i64({0, 1}), i64({0, 4})}), IndexError);
}

TEST_CASE("index with bool masks", "[indexing]") {
  Tensor x = iota({2, 3});
  Tensor m = mask({1, 0, 1, 0, 1, 1}, {2, 3});
  Tensor r = index(x, {m});
  CHECK(r.shape() == Shape{4});
  CHECK(vals(r) == std::vector<double>{0, 2, 4, 5});
  r = index(x, {_, mask({0, 1, 1}, {3})});
  CHECK(r.shape() == Shape{2, 2});
  CHECK(vals(r) == std::vector<double>{1, 2, 4, 5});
  r = index(x, {mask({0, 1}, {2})});
  CHECK(r.shape() == Shape{1, 3});
  CHECK(vals(r) == std::vector<double>{3, 4, 5});
  // A 2-D mask over the last two dims of a 3-D tensor.
  Tensor z = iota({2, 2, 2});
  r = index(z, {_, mask({1, 0, 0, 1}, {2, 2})});
  CHECK(r.shape() == Shape{2, 2});
  CHECK(vals(r) == std::vector<double>{0, 3, 4, 7});
  // Mask and int index together: the mask's coordinates broadcast with it.
  r = index(x, {i64({1}), mask({1, 0, 1}, {3})});
  CHECK(vals(r) == std::vector<double>{3, 5});
  // A 0-d mask adds a dim (NumPy's x[True] / x[False]).
  CHECK(index(x, {scalar_tensor(true, DType::Bool)}).shape() == Shape{1, 2, 3});
  CHECK(index(x, {scalar_tensor(false, DType::Bool)}).shape() == Shape{0, 2, 3});
  CHECK(index(x, {_, _, scalar_tensor(true, DType::Bool)}).shape() == Shape{2, 3, 1});
  CHECK(index(x, {mask({0, 0, 0, 0, 0, 0}, {2, 3})}).shape() == Shape{0});

  CHECK_THROWS_AS(index(x, {mask({1, 0, 1}, {3})}), IndexError);  // wrong size
  CHECK_THROWS_AS(index(x, {_, _, mask({1}, {1})}), IndexError);
}

TEST_CASE("index_put_ writes in place", "[indexing]") {
  Tensor x = zeros({3, 4});
  uint64_t v0 = x.version();
  index_put_(x, {i64({0, 2})}, f32({1, 2, 3, 4}, {4}));  // rows, values broadcast
  CHECK(x.version() > v0);
  CHECK(vals(x) == std::vector<double>{1, 2, 3, 4, 0, 0, 0, 0, 1, 2, 3, 4});
  index_put_(x, {_, i64({-1})}, scalar_tensor(9.5, DType::Float64));  // converted to float32
  CHECK(x.dtype() == DType::Float32);
  CHECK(vals(x) == std::vector<double>{1, 2, 3, 9.5, 0, 0, 0, 9.5, 1, 2, 3, 9.5});
  // x[x > 2] = 0
  index_put_(x, {x > 2}, scalar_tensor(0.0));
  CHECK(vals(x) == std::vector<double>{1, 2, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0});
  // A mask with per-element values; a mask over inner dims with a scalar.
  Tensor w = iota({2, 3});
  index_put_(w, {w > 2}, f32({-3, -4, -5}, {3}));
  CHECK(vals(w) == std::vector<double>{0, 1, 2, -3, -4, -5});
  Tensor w3 = zeros({2, 2, 3}, DType::Int32);
  index_put_(w3, {mask({1, 0, 0, 1}, {2, 2})}, scalar_tensor(2.9));  // converted: 2
  CHECK(vals(w3) == std::vector<double>{2, 2, 2, 0, 0, 0, 0, 0, 0, 2, 2, 2});
  Tensor w4 = zeros({3, 2, 2}).permute({0, 2, 1});  // strided
  index_put_(w4, {_, mask({1, 1, 0, 1}, {2, 2})}, scalar_tensor(1.0));
  CHECK(vals(w4) == std::vector<double>{1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1});
  // Pointwise pairs into a strided view.
  Tensor y = zeros({4, 3});
  index_put_(y.T(), {i64({0, 2}), i64({1, 3})}, f32({5, 6}, {2}));
  CHECK(vals(y) == std::vector<double>{0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 6});
  // Values taken from x itself are read before x is written.
  Tensor s = iota({4});
  index_put_(s, {i64({1, 2, 3})}, s.slice(0, 0, 3));
  CHECK(vals(s) == std::vector<double>{0, 0, 1, 2});
  // Indices that are x itself.
  Tensor p = i64({1, 0});
  index_put_(p, {p}, i64({5, 7}));
  CHECK(vals(p) == std::vector<double>{7, 5});

  CHECK_THROWS_AS(index_put_(x, {i64({3})}, scalar_tensor(1.0)), IndexError);
  CHECK_THROWS_AS(index_put_(x, {i64({0, 1})}, ones({3, 4})), ShapeError);
  CHECK_THROWS_AS(index_put_(x, {i64({0, 1})}, ones({3})), ShapeError);
  CHECK_THROWS_AS(index_put_(x, {mask({1, 0}, {2})}, scalar_tensor(1.0)), IndexError);
}

TEST_CASE("gather and scatter_add on large tensors match serial loops", "[indexing]") {
  const int64_t n = 300, m = 257, k = 50;  // big enough to split across threads
  std::mt19937 rng(3);
  for (int64_t dim : {0, 1}) {
    const int64_t range = dim == 0 ? n : m;
    Shape ishape = dim == 0 ? Shape{k, m} : Shape{n, k};
    std::vector<int64_t> ids(numel(ishape));
    for (auto& v : ids) v = static_cast<int64_t>(rng() % range);
    Tensor idx = i64(ids, ishape);
    Tensor x = iota({n, m}, DType::Float64);
    Tensor g = gather(x, dim, idx);
    Tensor src = iota(ishape, DType::Float64) + 1.0;
    Tensor s = scatter_add(zeros({n, m}, DType::Float64), dim, idx, src);
    std::vector<double> expect(n * m, 0.0);
    bool gather_ok = true;
    for (int64_t i = 0; i < ishape[0]; ++i)
      for (int64_t j = 0; j < ishape[1]; ++j) {
        const int64_t f = i * ishape[1] + j, v = ids[f];
        const int64_t target = dim == 0 ? v * m + j : i * m + v;
        gather_ok &= g.data<double>()[f] == static_cast<double>(target);
        expect[target] += static_cast<double>(f + 1);
      }
    CHECK(gather_ok);
    CHECK(vals(s) == expect);
  }
}
