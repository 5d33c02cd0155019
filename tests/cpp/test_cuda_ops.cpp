// The CUDA eager path against the CPU: every kernel family (copies and casts,
// the unary and binary op tables, where/fill, random numbers, reductions,
// softmax/layer_norm, matmul, autograd) runs on the same inputs on both
// devices and must give the CPU's values, or fail the way the CPU does. New
// CUDA memory is poisoned (0xFF bytes: NaN for floats, -1 for integers), so
// an element a kernel forgets to write shows as a mismatch. Without a GPU
// every case WARNs and skips, except the first: it dresses host memory up as
// a CUDA tensor to check that CPU kernels refuse device tensors.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <typeinfo>
#include <utility>
#include <vector>

#include "eager/cuda/launch.h"
#include "eager/nn/functional.h"
#include "eager/nn/layers.h"
#include "eager/optim.h"
#include "kiln.h"
#include "runtime/cublas.h"
#include "runtime/cuda_driver.h"

using namespace kiln;

namespace {

const Device kCuda{DeviceType::CUDA, 0};
const std::vector<DType> kAll = {DType::Bool,    DType::UInt8,    DType::Int8,    DType::Int32,  DType::Int64,
                                 DType::Float16, DType::BFloat16, DType::Float32, DType::Float64};
const std::vector<DType> kFloats = {DType::Float32, DType::Float16, DType::BFloat16, DType::Float64};
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
using Ts = std::vector<Tensor>;
using Fn = std::function<Tensor(const Ts&)>;

// The skip guard every GPU case starts with: false (after a WARN) without a
// GPU or without kernels in this build; otherwise it turns on poisoning of
// new CUDA memory (0xFF bytes), so elements a kernel does not write differ
// from the CPU's.
// KILN_EXPECT_CUDA=1 (set where the tests run under the CUDA emulator,
// tests/cuda_emulator) turns the skip into a failure.
bool have_gpu() {
  if (!cuda::available()) {
    if (std::getenv("KILN_EXPECT_CUDA")) FAIL("KILN_EXPECT_CUDA is set, but " << cuda::unavailable_reason());
    WARN("no CUDA GPU here (" << cuda::unavailable_reason() << "): skipped");
    return false;
  }
  if (!cuda_kernels::built()) {
    WARN("a CUDA GPU, but this build has no CUDA kernels (nvcc was not found): skipped");
    return false;
  }
  cuda::set_poison_allocations(true);
  return true;
}

bool have_cublas() {
  if (cublas::available()) return true;
  if (std::getenv("KILN_EXPECT_CUDA")) FAIL("KILN_EXPECT_CUDA is set, but " << cublas::unavailable_reason());
  WARN("no cuBLAS here (" << cublas::unavailable_reason() << "): skipped");
  return false;
}

struct Tol {
  double rtol = 0, atol = 0;
};
// By result dtype: integers and bool exactly; floats loosely enough for
// transcendental functions, which round differently on the two devices.
Tol tol_for(DType d) {
  switch (d) {
    case DType::Float32: return {2e-5, 1e-6};
    case DType::Float64: return {1e-12, 1e-12};
    case DType::Float16: return {2e-3, 1e-5};
    case DType::BFloat16: return {1e-2, 1e-5};
    default: return {0, 0};
  }
}

std::vector<double> values(const Tensor& t) {
  Tensor c = t.cpu().to(DType::Float64).contiguous();
  return std::vector<double>(c.data<double>(), c.data<double>() + c.numel());
}

std::string index_str(int64_t flat, const Shape& shape) {
  std::string s;
  for (size_t d = shape.size(); d-- > 0; flat /= shape[d])
    s = std::to_string(flat % shape[d]) + (s.empty() ? "" : ", " + s);
  return "[" + s + "]";
}

// `got` (a GPU result) against `want` (the CPU's): on the GPU, same dtype
// and shape, then |got - want| <= atol + rtol |want| elementwise, NaN where
// want is NaN, equal infinities; the first mismatch is reported.
void check_close(const Tensor& got, const Tensor& want, Tol tol, const std::string& what) {
  INFO(what);
  REQUIRE(got.defined());
  CHECK(got.device() == kCuda);
  CHECK(got.dtype() == want.dtype());
  REQUIRE(got.shape() == want.shape());
  const std::vector<double> g = values(got), w = values(want);
  int64_t bad = 0, first = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const bool ok = std::isnan(w[i])   ? std::isnan(g[i])
                    : std::isinf(w[i]) ? g[i] == w[i]
                                       : std::abs(g[i] - w[i]) <= tol.atol + tol.rtol * std::abs(w[i]);
    if (!ok && bad++ == 0) first = static_cast<int64_t>(i);
  }
  if (bad == 0) return;
  INFO(fmt::format("{} of {} elements differ (rtol {}, atol {}); the first, {} of {}: got {}, want {}", bad, g.size(),
                   tol.rtol, tol.atol, index_str(first, want.shape()), shape_str(want.shape()), g[first], w[first]));
  CHECK(bad == 0);
}

// Bit for bit (copies, random bits).
void check_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  INFO(what);
  CHECK(got.device() == kCuda);
  REQUIRE(got.dtype() == want.dtype());
  REQUIRE(got.shape() == want.shape());
  Tensor g = got.cpu().contiguous(), w = want.contiguous();
  const size_t n = static_cast<size_t>(g.numel()) * g.itemsize();
  if (n > 0 && std::memcmp(g.data_ptr(), w.data_ptr(), n) != 0) {
    check_close(got, want, {}, what);
    FAIL_CHECK("the bits differ");
  }
}

// The error `f` throws, as "<type>: <message>", or "" for none.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return std::string(typeid(e).name()) + ": " + e.what();
  }
  return "";
}
std::string kind_of(const std::string& error) { return error.substr(0, error.find(':')); }

// f on CPU `inputs` and on GPU copies of them (those marked in `cpu_side`
// stay on the CPU): the GPU must give the CPU's values within `tol` (the
// result dtype's by default), or throw the CPU's kind of error.
void same_as_cpu(const std::string& what, const Fn& f, const Ts& inputs, std::optional<Tol> tol = std::nullopt,
                 const std::vector<bool>& cpu_side = {}) {
  Ts on_gpu;
  for (size_t i = 0; i < inputs.size(); ++i)
    on_gpu.push_back(i < cpu_side.size() && cpu_side[i] ? inputs[i] : inputs[i].to(kCuda));
  Tensor want, got;
  const std::string cpu_error = error_of([&] { want = f(inputs); });
  const std::string gpu_error = error_of([&] { got = f(on_gpu); });
  if (!cpu_error.empty() || !gpu_error.empty()) {
    INFO(what << "\n  cpu: " << (cpu_error.empty() ? "no error" : cpu_error)
              << "\n  gpu: " << (gpu_error.empty() ? "no error" : gpu_error));
    CHECK(kind_of(gpu_error) == kind_of(cpu_error));
    return;
  }
  check_close(got, want, tol.value_or(tol_for(want.dtype())), what);
}

// An in-place op for same_as_cpu: `write` updates a clone of the first
// input (reading any of them), which is the result.
Fn on_clone(std::function<void(Tensor&, const Ts&)> write) {
  return [write](const Ts& in) {
    Tensor t = in[0].clone();
    write(t, in);
    return t;
  };
}

// f(device) after manual_seed(seed), on the GPU then on the CPU.
std::pair<Tensor, Tensor> seeded(uint64_t seed, const std::function<Tensor(Device)>& f) {
  manual_seed(seed);
  Tensor gpu = f(kCuda);
  manual_seed(seed);
  return {gpu, f(kCPU)};
}

// Values of `dtype` for op tests: small integers (uint8 from 0), truth
// values, or floats in [lo, hi) of which one in six is exactly 0.
Tensor sample(const Shape& shape, DType dtype, double lo = -3, double hi = 3) {
  if (dtype == DType::Bool) return randint(0, 2, shape).to(DType::Bool);
  if (dtype == DType::UInt8) return randint(0, 11, shape).to(dtype);
  if (!is_floating(dtype)) return randint(-5, 6, shape).to(dtype);
  Tensor x = rand(shape, DType::Float64) * (hi - lo) + lo;
  return where(eq(randint(0, 6, shape), 0), 0.0, x).to(dtype);
}

// 0, -0, 1, -1, inf, -inf, NaN, 2.5.
Tensor specials(DType dtype) {
  const double v[] = {0.0, -0.0, 1, -1, kInf, -kInf, kNaN, 2.5};
  return from_blob_copy(v, {8}, DType::Float64).to(dtype);
}

// The op tables, from the .def files the CPU and CUDA kernels come from.
struct UnaryOp {
  const char* name;
  std::string_view kind;
  Tensor (*fn)(const Tensor&);
  Tensor& (*inplace)(Tensor&);
};
const UnaryOp kUnaryOps[] = {
#define KILN_UNARY(NAME, KIND, ...) \
  {#NAME, #KIND, [](const Tensor& x) { return kiln::NAME(x); }, [](Tensor& x) -> Tensor& { return kiln::NAME##_(x); }},
#include "eager/unary_ops.def"
#undef KILN_UNARY
};

struct BinaryOp {
  const char* name;
  Tensor (*tt)(const Tensor&, const Tensor&);
  Tensor (*ts)(const Tensor&, Scalar);
  Tensor (*st)(Scalar, const Tensor&);
  Tensor& (*inplace)(Tensor&, const Tensor&);
  Tensor& (*inplace_scalar)(Tensor&, Scalar);
};
const BinaryOp kBinaryOps[] = {
#define KILN_BINARY(NAME, ...)                                                                           \
  {#NAME, [](const Tensor& a, const Tensor& b) { return kiln::NAME(a, b); },                           \
   [](const Tensor& a, Scalar b) { return kiln::NAME(a, b); },                                         \
   [](Scalar a, const Tensor& b) { return kiln::NAME(a, b); },                                         \
   [](Tensor& a, const Tensor& b) -> Tensor& { return kiln::NAME##_(a, b); },                          \
   [](Tensor& a, Scalar b) -> Tensor& { return kiln::NAME##_(a, b); }},
#include "eager/binary_ops.def"
#undef KILN_BINARY
};

std::string scalar_str(Scalar s) {
  if (s.category() == DTypeCategory::Floating) return fmt::format("{}", s.to_double());
  if (s.category() == DTypeCategory::Bool) return s.to_int() ? "true" : "false";
  return std::to_string(s.to_int());
}

}  // namespace

TEST_CASE("cuda: CPU kernels refuse a CUDA tensor instead of reading its memory", "[cuda]") {
  // Zeroed host memory dressed up as cuda:0 (no driver needed). A CPU kernel
  // that read it anyway would see plausible values (index 0, false, 0.0)
  // and return a result, so only a refusal passes.
  std::vector<int64_t> host(64, 0);
  auto fake = [&](Shape shape, DType dtype) {
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = Storage::borrow(host.data(), host.size() * sizeof(int64_t), kCuda, {});
    impl->strides = contiguous_strides(shape);
    impl->shape = std::move(shape);
    impl->dtype = dtype;
    return Tensor(std::move(impl));
  };
  // An index or mask on another device than the input: a DeviceError from
  // the op's checks, before any kernel, naming the op and both devices.
  auto refuses = [](const std::string& what, const std::function<void()>& op, const char* name) {
    INFO(what);
    try {
      op();
      FAIL_CHECK("no error");
    } catch (const DeviceError& e) {
      CHECK_THAT(std::string(e.what()), Catch::StartsWith(std::string(name) + ":") && Catch::Contains("cuda:0") &&
                                            Catch::Contains("cpu"));
    }
  };
  const Tensor x = ones({4, 3}), f = fake({4, 3}, DType::Float32);
  CHECK(f.device() == kCuda);
  CHECK_THROWS_AS(f.data<float>(), DeviceError);
  refuses("index_select, CUDA indices", [&] { index_select(x, 0, fake({2}, DType::Int64)); }, "index_select");
  refuses("gather, CUDA indices", [&] { gather(x, 0, fake({2, 3}, DType::Int64)); }, "gather");
  refuses("masked_fill, CUDA mask", [&] { masked_fill(x, fake({4, 3}, DType::Bool), 1.0); }, "masked_fill");
  refuses("scatter_add, CUDA indices", [&] { scatter_add(x, 0, fake({2, 3}, DType::Int64), ones({2, 3})); },
          "scatter_add");
  // Mixed devices are refused before any kernel runs.
  CHECK_THROWS_WITH(add(f, x), Catch::Contains("cuda:0") && Catch::Contains("cpu"));
  CHECK_THROWS_WITH(mul(x, f), Catch::Contains("cuda:0") && Catch::Contains("cpu"));
  CHECK_THROWS_AS(matmul(f, x.T()), DeviceError);
  CHECK_THROWS_AS(cat({x, f}), DeviceError);
  // Ops on fake tensors alone reach CUDA kernels where those exist, and a
  // real GPU must not be handed host memory: these only without a driver.
  if (cuda::available()) return;
  // Without a driver, they stop at the first allocation, saying why.
  for (const auto& op : std::vector<std::function<void()>>{[&] { nonzero(f); }, [&] { one_hot(fake({3}, DType::Int64), 4); },
                                                           [&] { argmax(f, 1); }})
    CHECK_THROWS_WITH(op(), Catch::Contains("CUDA is not available"));
  CHECK_THROWS_AS(matmul(fake({2, 2}, DType::Int64), fake({2, 2}, DType::Int64)), DTypeError);
}

TEST_CASE("cuda: values survive CPU -> CUDA -> CPU for every dtype and layout", "[cuda]") {
  if (!have_gpu()) return;
  manual_seed(1);
  const std::vector<Shape> shapes = {{}, {0}, {1}, {7}, {3, 0, 2}, {5, 1, 3}, {1031}, {17, 33}};
  const std::vector<std::pair<std::string, std::function<Tensor(const Tensor&)>>> views = {
      {"transposed", [](const Tensor& t) { return t.transpose(0, 1); }},
      {"every third column", [](const Tensor& t) { return t.slice(1, 1, std::nullopt, 3); }},
      {"every other row, transposed", [](const Tensor& t) { return t.slice(0, 0, std::nullopt, 2).T(); }},
      {"one column", [](const Tensor& t) { return t.select(1, 3); }},
      {"a row broadcast", [](const Tensor& t) { return t.select(0, 1).unsqueeze(0).expand({4, 10}); }},
      {"3-D permuted", [](const Tensor& t) { return t.reshape({2, 3, 10}).permute({2, 0, 1}); }},
  };
  for (DType dtype : kAll) {
    for (const Shape& shape : shapes) {
      Tensor x = sample(shape, dtype);
      check_bits(x.cuda(), x, fmt::format("{} {}", dtype_name(dtype), shape_str(shape)));
    }
    Tensor base = sample({6, 10}, dtype), on_gpu = base.cuda();
    CHECK(on_gpu.to(kCuda).is_same(on_gpu));
    for (const auto& [what, view] : views) {
      const std::string label = fmt::format("{} {}", dtype_name(dtype), what);
      check_bits(view(base).cuda(), view(base), label + ", from the CPU");
      check_bits(view(on_gpu), view(base), label + ", back from the GPU");
      check_bits(view(on_gpu).contiguous(), view(base), label + ", made contiguous on the GPU");
    }
  }
}

TEST_CASE("cuda: every unary op matches the CPU", "[cuda]") {
  if (!have_gpu()) return;
  manual_seed(2);
  for (const UnaryOp& op : kUnaryOps) {
    const std::string_view name = op.name;
    const bool positive = name == "log" || name == "log1p" || name == "sqrt" || name == "rsqrt";
    for (DType dtype : kAll) {
      // Rounding ops get quarters (ties included), the others their domain.
      Tensor x = op.kind == "Rounding" && is_floating(dtype)
                     ? (randint(-12, 13, {5, 37}).to(DType::Float64) / 4).to(dtype)
                     : sample({5, 37}, dtype, positive ? 0.05 : -3, positive ? 4 : 3);
      const std::string what = fmt::format("{}({})", name, dtype_name(dtype));
      same_as_cpu(what, [&](const Ts& in) { return op.fn(in[0]); }, {x});
      same_as_cpu(what + " of a transposed view", [&](const Ts& in) { return op.fn(in[0].T()); }, {x});
      same_as_cpu(what + " in place", on_clone([&](Tensor& t, const Ts&) { op.inplace(t); }), {x});
      if (is_floating(dtype))
        same_as_cpu(what + " of 0, -0, 1, -1, inf, -inf, NaN, 2.5", [&](const Ts& in) { return op.fn(in[0]); },
                    {specials(dtype)});
    }
  }
}

TEST_CASE("cuda: every binary op matches the CPU", "[cuda]") {
  if (!have_gpu()) return;
  manual_seed(3);
  const std::vector<std::pair<DType, DType>> mixed = {{DType::Int32, DType::Float32}, {DType::UInt8, DType::Int8},
                                                     {DType::Bool, DType::Float16}, {DType::Float16, DType::BFloat16},
                                                     {DType::Int64, DType::Float64}};
  for (const BinaryOp& op : kBinaryOps) {
    auto tt = [&](const Ts& in) { return op.tt(in[0], in[1]); };
    for (DType dtype : kAll) {
      const std::string what = fmt::format("{}({})", op.name, dtype_name(dtype));
      // Integer inputs include zeros: division by zero and the signs of
      // floor_divide and remainder must follow the CPU.
      const Tensor a = sample({3, 1, 5}, dtype), b = sample({4, 5}, dtype), z = sample({}, dtype);
      same_as_cpu(what + " (3,1,5) with (4,5)", tt, {a, b});
      same_as_cpu(what + " of a transposed and a strided view", [&](const Ts& in) {
        return op.tt(in[0].T(), in[1].slice(1, 0, std::nullopt, 2));
      }, {sample({5, 4}, dtype), sample({4, 10}, dtype)});
      for (Scalar s : {Scalar(2.5), Scalar(3), Scalar(0), Scalar(true)}) {
        const std::string value = scalar_str(s);
        same_as_cpu(what + " tensor, " + value, [&](const Ts& in) { return op.ts(in[0], s); }, {b});
        same_as_cpu(what + " " + value + ", tensor", [&](const Ts& in) { return op.st(s, in[0]); }, {b});
      }
      // A 0-d CPU tensor combines with a CUDA tensor as a scalar, either side.
      same_as_cpu(what + " with a 0-d CPU tensor on the right", tt, {b, z}, std::nullopt, {false, true});
      same_as_cpu(what + " with a 0-d CPU tensor on the left", tt, {z, b}, std::nullopt, {true, false});
      same_as_cpu(what + " of two 0-d tensors", tt, {z, sample({}, dtype)});
      same_as_cpu(what + " in place, broadcast operand",
                  on_clone([&](Tensor& t, const Ts& in) { op.inplace(t, in[1]); }), {b, sample({5}, dtype)});
      same_as_cpu(what + " in place into a strided view", on_clone([&](Tensor& t, const Ts& in) {
        Tensor v = t.slice(1, 1, std::nullopt, 2);
        op.inplace(v, in[1]);
      }), {sample({4, 9}, dtype), sample({4, 4}, dtype)});
      same_as_cpu(what + " in place with 2", on_clone([&](Tensor& t, const Ts&) { op.inplace_scalar(t, 2); }), {b});
      if (is_floating(dtype))
        same_as_cpu(what + " of every pair of 0, -0, 1, -1, inf, -inf, NaN, 2.5", [&](const Ts& in) {
          return op.tt(in[0].reshape({8, 1}), in[1].reshape({1, 8}));
        }, {specials(dtype), specials(dtype)});
    }
    for (const auto& [da, db] : mixed)
      same_as_cpu(fmt::format("{}({}, {})", op.name, dtype_name(da), dtype_name(db)), tt,
                  {sample({3, 4}, da), sample({3, 4}, db)});
  }
}

TEST_CASE("cuda: where and clamp match the CPU", "[cuda]") {
  if (!have_gpu()) return;
  manual_seed(4);
  auto where3 = [](const Ts& in) { return where(in[0], in[1], in[2]); };
  for (DType dtype : kAll) {
    const std::string name(dtype_name(dtype));
    const Tensor cond = sample({3, 1, 5}, DType::Bool), a = sample({4, 5}, dtype), b = sample({5}, dtype);
    same_as_cpu("where " + name + " broadcast", where3, {cond, a, b});
    same_as_cpu("where " + name + " of views", [](const Ts& in) {
      return where(in[0].T(), in[1].slice(0, 0, std::nullopt, 2), in[2]);
    }, {sample({5, 4}, DType::Bool), sample({8, 5}, dtype), b});
    same_as_cpu("where " + name + ", scalar right", [](const Ts& in) { return where(in[0], in[1], 2.5); }, {cond, a});
    same_as_cpu("where " + name + ", scalar left", [](const Ts& in) { return where(in[0], 1, in[1]); }, {cond, b});
    same_as_cpu("where " + name + ", 0-d CPU condition", where3, {sample({}, DType::Bool), a, b}, std::nullopt,
                {true, false, false});
    same_as_cpu("where " + name + ", 0-d CPU branch", where3, {cond, a, sample({}, dtype)}, std::nullopt,
                {false, false, true});
    same_as_cpu("where " + name + ", int32 and float16 branches", where3,
                {cond, sample({4, 5}, DType::Int32), sample({5}, DType::Float16)});
    const Tensor x = sample({6, 7}, dtype);
    same_as_cpu("clamp " + name + " to [-1, 2]", [](const Ts& in) { return clamp(in[0], -1, 2); }, {x});
    same_as_cpu("clamp " + name + " to <= 0.5", [](const Ts& in) { return clamp(in[0], std::nullopt, 0.5); }, {x});
    same_as_cpu("clamp " + name + " to >= 1", [](const Ts& in) { return clamp(in[0], 1, std::nullopt); }, {x});
    same_as_cpu("clamp_ " + name, on_clone([](Tensor& t, const Ts&) { t.clamp_(-2, 2); }), {x});
  }
  same_as_cpu("where with NaN", [](const Ts& in) { return where(gt(in[0], 0), in[0], kNaN); },
              {specials(DType::Float32)});
}

TEST_CASE("cuda: creation and fill match the CPU", "[cuda]") {
  if (!have_gpu()) return;
  manual_seed(5);
  for (DType dtype : kAll) {
    const std::string name(dtype_name(dtype));
    // -1.0 into uint8: the CPU converts float scalars to integers through int64 (255).
    for (Scalar v : {Scalar(2.5), Scalar(-3), Scalar(true), Scalar(0), Scalar(-1.0), Scalar(100)}) {
      const std::string what = fmt::format("full {} with {}", name, scalar_str(v));
      check_close(full({3, 5}, v, dtype, kCuda), full({3, 5}, v, dtype), {}, what);
      check_close(full({}, v, dtype, kCuda), full({}, v, dtype), {}, what + ", 0-d");
    }
    check_close(zeros({2, 1031}, dtype, kCuda), zeros({2, 1031}, dtype), {}, "zeros " + name);
    check_close(ones({2, 1031}, dtype, kCuda), ones({2, 1031}, dtype), {}, "ones " + name);
    check_close(full({0, 4}, 1, dtype, kCuda), full({0, 4}, 1, dtype), {}, "full " + name + " (0, 4)");
    same_as_cpu("fill_ of every other column, " + name,
                on_clone([](Tensor& t, const Ts&) { t.slice(1, 0, std::nullopt, 2).fill_(7); }),
                {sample({4, 7}, dtype)});
    same_as_cpu("zero_ of a transposed block, " + name,
                on_clone([](Tensor& t, const Ts&) { t.narrow(0, 1, 2).T().zero_(); }), {sample({4, 7}, dtype)});
  }
  for (Scalar v : {Scalar(2.5), Scalar(3), Scalar(false)})  // the scalar's default dtype
    check_close(full({3}, v, std::nullopt, kCuda), full({3}, v), {}, "full of " + scalar_str(v) + ", default dtype");
  check_close(zeros_like(ones({2, 3}, DType::Int32, kCuda)), zeros({2, 3}, DType::Int32), {}, "zeros_like");
  check_close(full_like(ones({2, 3}, DType::Float16, kCuda), 0.5), full({2, 3}, 0.5, DType::Float16), {}, "full_like");
}

TEST_CASE("cuda: casts between every pair of dtypes match the CPU", "[cuda]") {
  if (!have_gpu()) return;
  for (DType from : kAll) {
    for (DType to : kAll) {
      // C++ leaves negative floats converted to unsigned types undefined
      // (x86 wraps, GPUs saturate): uint8 sees magnitudes only.
      std::vector<double> v = {0, 1, 2.75, 7, 100, 126.5, -1, -7.5};
      if (from == DType::UInt8 || to == DType::UInt8)
        for (double& e : v) e = std::abs(e);
      const Tensor x = from_blob_copy(v.data(), {2, 4}, DType::Float64).to(from);
      const std::string what = fmt::format("{} -> {}", dtype_name(from), dtype_name(to));
      same_as_cpu(what, [&](const Ts& in) { return in[0].to(to); }, {x}, Tol{});
      same_as_cpu(what + " of a transposed view", [&](const Ts& in) { return in[0].T().to(to); }, {x}, Tol{});
    }
  }
}

TEST_CASE("cuda: copy_into strided, broadcast and overlapping CUDA views", "[cuda]") {
  if (!have_gpu()) return;
  manual_seed(6);
  for (DType dtype : {DType::Float32, DType::Int64, DType::Float16, DType::Bool, DType::UInt8}) {
    const std::string name(dtype_name(dtype));
    const Tensor dst = sample({4, 9}, dtype);
    same_as_cpu(name + ": a CPU float64 tensor into every other column",
                on_clone([](Tensor& t, const Ts& in) { copy_into(t.slice(1, 1, std::nullopt, 2), in[1]); }),
                {dst, sample({4, 4}, DType::Float64, 0, 5)}, std::nullopt, {false, true});
    same_as_cpu(name + ": a broadcast int32 row into a transposed view",
                on_clone([](Tensor& t, const Ts& in) { copy_into(t.T(), in[1]); }), {dst, sample({4}, DType::Int32)});
    same_as_cpu(name + ": a 0-d CPU tensor into a column",
                on_clone([](Tensor& t, const Ts& in) { copy_into(t.select(1, 3), in[1]); }),
                {dst, sample({}, DType::Float64, 0, 5)}, std::nullopt, {false, true});
    same_as_cpu(name + ": shifted onto itself (overlapping)",
                on_clone([](Tensor& t, const Ts&) { copy_into(t.slice(1, 1, std::nullopt), t.slice(1, 0, -1)); }),
                {dst});
    same_as_cpu(name + ": contiguous, same dtype", [](const Ts& in) {
      Tensor t = empty_like(in[0]);
      copy_into(t, in[0]);
      return t;
    }, {dst});
  }
}

TEST_CASE("cuda: random numbers equal the CPU's draws from the same seed", "[cuda]") {
  if (!have_gpu()) return;
  for (DType dtype : kFloats) {
    // Box-Muller's log and cos may differ in the last bit on the device.
    const Tol normal_tol = dtype == DType::Float32 ? Tol{1e-6, 1e-6} : tol_for(dtype);
    for (const Shape& shape : std::vector<Shape>{{1}, {0}, {7, 3}, {1025}, {3, 1000}}) {
      const std::string what = fmt::format("{} {}", dtype_name(dtype), shape_str(shape));
      auto [u, u_cpu] = seeded(42, [&](Device d) { return rand(shape, dtype, d); });
      check_bits(u, u_cpu, "rand " + what);
      auto [n, n_cpu] = seeded(43, [&](Device d) { return randn(shape, dtype, d); });
      check_close(n, n_cpu, normal_tol, "randn " + what);
      auto [m, m_cpu] = seeded(44, [&](Device d) { return normal(2.0, 3.0, shape, dtype, d); });
      check_close(m, m_cpu, normal_tol, "normal(2, 3) " + what);
    }
  }
  for (DType dtype : {DType::Int64, DType::Int32, DType::Int8, DType::UInt8, DType::Float32, DType::Float16}) {
    const int64_t low = dtype == DType::UInt8 ? 0 : -5, high = dtype == DType::UInt8 ? 200 : 17;
    auto [r, r_cpu] = seeded(45, [&](Device d) { return randint(low, high, {3, 1000}, dtype, d); });
    check_bits(r, r_cpu, fmt::format("randint {}", dtype_name(dtype)));
  }
  // A range beyond 2^53: integers all the way.
  const int64_t huge = int64_t{1} << 62;
  auto [big, big_cpu] = seeded(46, [=](Device d) { return randint(-huge, huge, {2000}, DType::Int64, d); });
  check_bits(big, big_cpu, "randint over 2^63");
  // Each draw advances the generator by the same amount on both devices.
  auto [third, third_cpu] = seeded(47, [](Device d) {
    rand({10}, DType::Float32, d);
    randn({3}, DType::Float32, d);
    return rand({10}, DType::Float32, d);
  });
  check_bits(third, third_cpu, "the third draw");
  // randint has no bool kernel: the CPU's DTypeError, not a missing-kernel error.
  const std::string cpu_error = error_of([] { randint(0, 2, {4}, DType::Bool); });
  const std::string gpu_error = error_of([] { randint(0, 2, {4}, DType::Bool, kCuda); });
  INFO("cpu: " << cpu_error << "\ngpu: " << gpu_error);
  CHECK(kind_of(gpu_error) == kind_of(cpu_error));
}

TEST_CASE("cuda: reductions match the CPU", "[cuda]") {
  if (!have_gpu()) return;
  manual_seed(7);
  const std::pair<const char*, Tensor (*)(const Tensor&, const DimList&, bool)> reductions[] = {
      {"sum", [](const Tensor& x, const DimList& d, bool k) { return sum(x, d, k); }},
      {"mean", [](const Tensor& x, const DimList& d, bool k) { return mean(x, d, k); }},
      {"prod", [](const Tensor& x, const DimList& d, bool k) { return prod(x, d, k); }},
      {"amax", [](const Tensor& x, const DimList& d, bool k) { return amax(x, d, k); }},
      {"amin", [](const Tensor& x, const DimList& d, bool k) { return amin(x, d, k); }},
      {"any", [](const Tensor& x, const DimList& d, bool k) { return any(x, d, k); }},
      {"all", [](const Tensor& x, const DimList& d, bool k) { return all(x, d, k); }},
  };
  // (shape, dims): last, first, middle, several, all; rows wider than 1024;
  // leading and middle dims over at least 32 columns (the column kernel:
  // fewer rows than warps, a partial last tile, a size-1 dim among them).
  const std::vector<std::pair<Shape, std::vector<DimList>>> cases = {
      {{5, 7, 3}, {{}, {-1}, {0}, {1}, {0, 2}, {0, 1, 2}}},
      {{3, 1500}, {{1}, {0}}},
      {{2, 2000, 3}, {{1}}},
      {{}, {{}}},
      {{21, 1, 11, 70}, {{0}, {2}, {0, 1, 2}, {1, 2}}}};
  for (const auto& [name, fn] : reductions) {
    for (DType dtype : {DType::Float32, DType::Float64, DType::Int32, DType::Int64, DType::Bool, DType::Float16}) {
      // Float sums add in float32 on the GPU, in float64 on the CPU.
      const Tol tol = dtype == DType::Float32   ? Tol{1e-5, 1e-4}
                      : dtype == DType::Float64 ? Tol{1e-12, 1e-10}
                                                : tol_for(dtype);
      auto reduce = [fn = fn](const DimList& dims, bool keepdim) {
        return [=](const Ts& in) { return fn(in[0], dims, keepdim); };
      };
      for (const auto& [shape, dim_lists] : cases) {
        // Products of values near 1 (or -1, 0, 1): no overflow on either side.
        const Tensor x = std::string_view(name) != "prod" ? sample(shape, dtype)
                         : is_floating(dtype)             ? sample(shape, DType::Float64, 0.9, 1.1).to(dtype)
                                                          : randint(-1, 2, shape).to(dtype);
        for (const DimList& dims : dim_lists)
          for (bool keepdim : {false, true})
            same_as_cpu(fmt::format("{}({} {}, dims {}, keepdim {})", name, dtype_name(dtype), shape_str(shape),
                                    shape_str(dims), keepdim),
                        reduce(dims, keepdim), {x}, tol);
        if (shape.size() == 3)
          same_as_cpu(fmt::format("{}({}) of a permuted view", name, dtype_name(dtype)),
                      [fn = fn](const Ts& in) { return fn(in[0].permute({2, 0, 1}), {0, 2}, false); }, {x}, tol);
      }
      // Empty reductions: identities, errors and empty results as on the CPU.
      for (const DimList& dims : std::vector<DimList>{{1}, {0}, {}, {0, 2}})
        same_as_cpu(fmt::format("{}({} (3, 0, 4), dims {})", name, dtype_name(dtype), shape_str(dims)),
                    reduce(dims, false), {sample({3, 0, 4}, dtype)}, tol);
    }
    same_as_cpu(fmt::format("{} of 0, -0, 1, -1, inf, -inf, NaN, 2.5", name),
                [fn = fn](const Ts& in) { return fn(in[0].reshape({2, 4}), {1}, false); }, {specials(DType::Float32)});
  }
  // A float16 mean whose sum does not fit float16 (2000 * 50 > 65504).
  same_as_cpu("mean of 2000 float16 50s", [](const Ts& in) { return mean(in[0], {1}); },
              {full({2, 2000}, 50.0, DType::Float16)});
}

TEST_CASE("cuda: softmax, log_softmax and layer_norm match the CPU", "[cuda]") {
  if (!have_gpu()) return;
  manual_seed(8);
  for (DType dtype : kFloats) {
    const std::string name(dtype_name(dtype));
    const Tol tol = dtype == DType::Float32   ? Tol{2e-5, 1e-6}
                    : dtype == DType::Float64 ? Tol{1e-10, 1e-12}
                                              : tol_for(dtype);
    // Rows narrower and wider than a warp's 1024 columns; 13 rows are more
    // than one block of 8 warps.
    for (int64_t cols : {7, 1000, 4099}) {
      Tensor x = randn({13, cols}, DType::Float64) * 3;
      x.select(0, 0).select(0, 1).fill_(-kInf);  // one -inf in a row
      x.select(0, 5).fill_(-kInf);                // a row of -inf: NaN, as in PyTorch
      x = x.to(dtype);
      for (int64_t dim : {-1, 0}) {
        const std::string what = fmt::format("{} (13, {}) over dim {}", name, cols, dim);
        same_as_cpu("softmax " + what, [&](const Ts& in) { return softmax(in[0], dim); }, {x}, tol);
        same_as_cpu("log_softmax " + what, [&](const Ts& in) { return log_softmax(in[0], dim); }, {x}, tol);
      }
    }
    same_as_cpu("softmax " + name + " of rows with inf and NaN",
                [](const Ts& in) { return softmax(in[0].reshape({2, 4}), -1); }, {specials(dtype)}, tol);
    const Tensor x3 = randn({4, 6, 9}, dtype);
    same_as_cpu("softmax " + name + " (4, 6, 9) over dim 1", [](const Ts& in) { return softmax(in[0], 1); }, {x3}, tol);
    same_as_cpu("log_softmax " + name + " of a permuted view",
                [](const Ts& in) { return log_softmax(in[0].transpose(0, 2), -1); }, {x3}, tol);
    for (int64_t cols : {5, 768, 3000}) {
      const Tensor x = (randn({6, cols}, DType::Float64) * 2 + 1).to(dtype);
      const Tensor w = randn({cols}, dtype), b = randn({cols}, dtype);
      const std::string what = fmt::format("layer_norm {} (6, {})", name, cols);
      same_as_cpu(what, [&](const Ts& in) { return layer_norm(in[0], {cols}); }, {x}, tol);
      same_as_cpu(what + ", weight and bias", [&](const Ts& in) { return layer_norm(in[0], {cols}, in[1], in[2]); },
                  {x, w, b}, tol);
      same_as_cpu(what + ", weight", [&](const Ts& in) { return layer_norm(in[0], {cols}, in[1]); }, {x, w}, tol);
      same_as_cpu(what + ", bias", [&](const Ts& in) { return layer_norm(in[0], {cols}, {}, in[1]); }, {x, b}, tol);
      // float32 parameters with another input dtype: computed with, not rounded to, the input's
      same_as_cpu(what + ", float32 weight and bias",
                  [&](const Ts& in) { return layer_norm(in[0], {cols}, in[1], in[2]); },
                  {x, randn({cols}, DType::Float32), randn({cols}, DType::Float32)}, tol);
    }
    same_as_cpu("layer_norm " + name + " over the last two dims of a view", [](const Ts& in) {
      return layer_norm(in[0].transpose(0, 1), {3, 7}, in[1], in[2], 1e-3);
    }, {randn({3, 4, 7}, dtype), randn({3, 7}, dtype), randn({3, 7}, dtype)}, tol);
  }
}

TEST_CASE("cuda: matmul matches the CPU", "[cuda]") {
  if (!have_gpu() || !have_cublas()) return;
  struct Tf32Off {
    Tf32Off() { cublas::set_allow_tf32(false); }
    ~Tf32Off() { cublas::set_allow_tf32(false); }
  } tf32_off;
  manual_seed(9);
  auto mm = [](const Ts& in) { return matmul(in[0], in[1]); };
  const std::vector<std::tuple<std::string, Shape, Shape, Fn>> cases = {
      {"(7,33) @ (33,5)", {7, 33}, {33, 5}, mm},
      {"(129,257) @ (257,65)", {129, 257}, {257, 65}, mm},
      {"vector @ matrix", {33}, {33, 5}, mm},
      {"matrix @ vector", {7, 33}, {33}, mm},
      {"vector @ vector", {33}, {33}, mm},
      {"(1,1) @ (1,1)", {1, 1}, {1, 1}, mm},
      {"(4,7,33) @ (33,5)", {4, 7, 33}, {33, 5}, mm},
      {"(7,33) @ (4,33,5)", {7, 33}, {4, 33, 5}, mm},
      {"(2,1,7,33) @ (3,33,5)", {2, 1, 7, 33}, {3, 33, 5}, mm},
      {"a.T @ b", {33, 7}, {33, 5}, [](const Ts& in) { return matmul(in[0].T(), in[1]); }},
      {"a @ b.T", {7, 33}, {5, 33}, [](const Ts& in) { return matmul(in[0], in[1].T()); }},
      {"batched, both transposed", {4, 33, 7}, {4, 5, 33},
       [](const Ts& in) { return matmul(in[0].transpose(1, 2), in[1].transpose(1, 2)); }},
      {"every other column of a", {7, 66}, {33, 5},
       [](const Ts& in) { return matmul(in[0].slice(1, 0, std::nullopt, 2), in[1]); }},
      {"a strided vector", {66}, {33, 5},
       [](const Ts& in) { return matmul(in[0].slice(0, 0, std::nullopt, 2), in[1]); }},
      {"k = 0", {3, 0}, {0, 4}, mm},
      {"m = 0", {0, 5}, {5, 3}, mm},
  };
  for (DType dtype : kFloats) {
    // cuBLAS and OpenBLAS add in different orders.
    const Tol tol = dtype == DType::Float32   ? Tol{1e-4, 1e-4}
                    : dtype == DType::Float64 ? Tol{1e-12, 1e-12}
                    : dtype == DType::Float16 ? Tol{5e-3, 5e-3}
                                              : Tol{2e-2, 2e-2};
    for (const auto& [what, sa, sb, f] : cases)
      same_as_cpu(fmt::format("{} {}", dtype_name(dtype), what), f, {randn(sa, dtype), randn(sb, dtype)}, tol);
  }
  cublas::set_allow_tf32(true);  // inputs rounded to 10-bit mantissas
  same_as_cpu("float32 with TF32", mm, {randn({64, 128}), randn({128, 32})}, Tol{1e-2, 5e-2});
  cublas::set_allow_tf32(false);
  for (DType dtype : {DType::Int32, DType::Int64, DType::UInt8}) {
    const Tensor a = ones({2, 3}, dtype);
    CHECK_NOTHROW(matmul(a, a.T()));
    CHECK_THROWS_AS(matmul(a.cuda(), a.T().cuda()), DTypeError);
  }
}

TEST_CASE("cuda: mixing devices is refused, naming both", "[cuda]") {
  if (!have_gpu()) return;
  const Tensor g = ones({3}, DType::Float32, kCuda), c = ones({3});
  CHECK_THROWS_WITH(add(g, c), Catch::Contains("cuda:0") && Catch::Contains("cpu"));
  CHECK_THROWS_WITH(add(c, g), Catch::Contains("cuda:0") && Catch::Contains("cpu"));
  Tensor s = g.clone();
  CHECK_THROWS_AS(s.add_(c), DeviceError);
  CHECK_THROWS_AS(matmul(ones({2, 3}, DType::Float32, kCuda), ones({3, 2})), DeviceError);
  CHECK_THROWS_AS(where(ones({3}, DType::Bool), g, g), DeviceError);
  CHECK_THROWS_AS(layer_norm(ones({2, 3}, DType::Float32, kCuda), {3}, ones({3})), DeviceError);
  CHECK_THROWS_AS(cat({g, c}), DeviceError);
  // The GPU must never be handed host indices.
  CHECK_THROWS_AS(index_select(ones({4, 3}, DType::Float32, kCuda), 0, zeros({2}, DType::Int64)), DeviceError);
  // A 0-d CPU tensor is a scalar, as in PyTorch.
  check_close(add(g, scalar_tensor(2.0)), full({3}, 3.0), {}, "cuda + 0-d cpu");
}

TEST_CASE("cuda: indexing, composite and nn ops match the CPU", "[cuda]") {
  if (!have_gpu()) return;
  namespace F = nn::functional;
  manual_seed(10);
  const Tensor x = randn({4, 6}), idx = randint(0, 4, {3}), idx2 = randint(0, 4, {2, 6}), mask = gt(x, 0.0);
  const Tensor img = randn({2, 3, 8, 8}), kernel = randn({5, 3, 3, 3}), q = randn({2, 5, 8});
  const std::vector<std::tuple<const char*, Fn, Ts>> ops = {
      {"index_select", [](const Ts& in) { return index_select(in[0], 0, in[1]); }, {x, idx}},
      {"gather", [](const Ts& in) { return gather(in[0], 0, in[1]); }, {x, idx2}},
      {"scatter_add", [](const Ts& in) { return scatter_add(in[0], 0, in[1], in[0].narrow(0, 0, 2)); }, {x, idx2}},
      {"masked_fill", [](const Ts& in) { return masked_fill(in[0], in[1], 0.5); }, {x, mask}},
      {"index", [](const Ts& in) { return index(in[0], {in[1]}); }, {x, mask}},
      {"nonzero", [](const Ts& in) { return nonzero(in[0]); }, {mask}},
      {"one_hot", [](const Ts& in) { return one_hot(in[0], 5); }, {idx}},
      {"argmax", [](const Ts& in) { return argmax(in[0], 1); }, {x}},
      {"max", [](const Ts& in) { return max(in[0], 1).first; }, {x}},
      {"var", [](const Ts& in) { return var(in[0], {1}); }, {x}},
      {"logsumexp", [](const Ts& in) { return logsumexp(in[0], {1}); }, {x}},
      {"cat", [](const Ts& in) { return cat({in[0], in[0].T().T()}, 1); }, {x}},
      {"stack", [](const Ts& in) { return stack({in[0], in[0]}, 1); }, {x}},
      {"linear", [](const Ts& in) { return F::linear(in[0], in[1].T(), in[1][0]); }, {x, randn({6, 6})}},
      {"embedding", [](const Ts& in) { return F::embedding(in[1], in[0]); }, {x, idx}},
      {"cross_entropy", [](const Ts& in) { return F::cross_entropy(in[0], in[1]); }, {x, randint(0, 6, {4})}},
      {"mse_loss", [](const Ts& in) { return F::mse_loss(in[0], in[1]); }, {x, randn({4, 6})}},
      {"conv2d", [](const Ts& in) { return F::conv2d(in[0], in[1]); }, {img, kernel}},
      {"max_pool2d", [](const Ts& in) { return F::max_pool2d(in[0], {2, 2}); }, {img}},
      {"avg_pool2d", [](const Ts& in) { return F::avg_pool2d(in[0], {3, 3}, nn::functional::Pair{2, 2}, {1, 1}, true, false); }, {img}},
      {"adaptive_avg_pool2d", [](const Ts& in) { return F::adaptive_avg_pool2d(in[0], {3, 5}); }, {img}},
      {"max_pool2d strided, padded", [](const Ts& in) { return F::max_pool2d(in[0], {3, 3}, nn::functional::Pair{2, 2}, {1, 1}); }, {img}},
      {"batch_norm", [](const Ts& in) { return F::batch_norm(in[0], Tensor(), Tensor(), in[1], in[1], true); },
       {img, randn({3})}},
      {"nll_loss", [](const Ts& in) { return F::nll_loss(log_softmax(in[0], 1), in[1]); }, {x, randint(0, 6, {4})}},
      {"cross_entropy, probabilities, smoothed",
       [](const Ts& in) { return F::cross_entropy(in[0], softmax(in[1], 1), Tensor(), -100, "mean", 0.1); },
       {x, randn({4, 6})}},
      {"binary_cross_entropy_with_logits",
       [](const Ts& in) { return F::binary_cross_entropy_with_logits(in[0], sigmoid(in[1])); }, {x, randn({4, 6})}},
      {"index, two index tensors", [](const Ts& in) { return index(in[0], {in[1], in[2]}); },
       {x, randint(-4, 4, {5}), randint(0, 6, {5})}},
      {"index, 2-d mask", [](const Ts& in) { return index(in[0], {in[1]}); }, {x, mask}},
      {"scaled_dot_product_attention",
       [](const Ts& in) { return F::scaled_dot_product_attention(in[0], in[0], in[0]); }, {q}},
  };
  for (const auto& [name, f, inputs] : ops) {
    INFO(name);
    const Tensor want = f(inputs);
    Ts on_gpu;
    for (const Tensor& t : inputs) on_gpu.push_back(t.cuda());
    check_close(f(on_gpu), want, {1e-4, 1e-5}, name);
  }
}

TEST_CASE("cuda: work on a side stream, timed with events", "[cuda]") {
  if (!have_gpu()) return;
  manual_seed(12);
  const Tensor x = randn({256, 256}), on_gpu = x.cuda();
  cuda::Stream stream(0);
  cuda::Event start(0), end(0);
  Tensor got;
  {
    cuda::StreamGuard guard(stream);
    CHECK(cuda::current_stream(0) == stream.id());
    start.record();
    got = sum(exp(on_gpu), {1});
    end.record();
  }
  CHECK(cuda::current_stream(0) == StreamId{0});
  stream.synchronize();
  end.synchronize();
  CHECK(start.elapsed_ms(end) >= 0);
  check_close(got, sum(exp(x), {1}), {1e-5, 1e-4}, "exp and sum on a side stream");
}

TEST_CASE("cuda: the caching allocator reuses blocks, poisons them and returns to its baseline", "[cuda][allocator]") {
  if (!have_gpu()) return;
  cuda::synchronize(0);
  const BlockAllocatorStats base = cuda::memory_stats(0);
  { Tensor a = Tensor::empty({1000}, DType::Float32, kCuda); }
  const BlockAllocatorStats freed = cuda::memory_stats(0);
  CHECK(freed.allocated_bytes == base.allocated_bytes);
  {
    Tensor b = Tensor::empty({1000}, DType::Float32, kCuda);
    const BlockAllocatorStats again = cuda::memory_stats(0);
    CHECK(again.num_allocs == freed.num_allocs + 1);
    CHECK(again.num_cache_hits == freed.num_cache_hits + 1);
    CHECK(again.num_segments == freed.num_segments);
    CHECK(again.allocated_bytes > base.allocated_bytes);
    // Poisoned: fresh float memory reads NaN, fresh integer memory -1.
    for (double v : values(b)) CHECK(std::isnan(v));
    for (double v : values(Tensor::empty({5}, DType::Int32, kCuda))) CHECK(v == -1);
  }
  {
    manual_seed(13);
    Tensor x = randn({300, 500}, DType::Float32, kCuda);
    Tensor y = layer_norm(softmax(exp(x) + x, -1), {500});
    if (cublas::available()) y = matmul(y, x.T());
    CHECK(std::isfinite(sum(y).item<double>()));
  }
  CHECK(cuda::memory_stats(0).allocated_bytes == base.allocated_bytes);
}

TEST_CASE("cuda: gradients on the GPU match the CPU's and stay on the GPU", "[cuda]") {
  if (!have_gpu() || !have_cublas()) return;
  manual_seed(14);
  using Loss = std::function<Tensor(const Ts&)>;
  // A small MLP: matmul, bias add, relu, gelu, tanh, log_softmax, sums.
  const Loss mlp = [](const Ts& p) {
    Tensor h = relu(add(matmul(p[0], p[1]), p[2]));
    Tensor y = gelu(add(matmul(h, p[3]), p[4]));
    return add(add(sum(mul(y, y)), mean(tanh(h))), sum(mul(log_softmax(y, -1), y)));
  };
  auto mlp_params = [](DType d) {
    return Ts{randn({6, 5}, d), randn({5, 8}, d), randn({8}, d), randn({8, 3}, d), randn({3}, d)};
  };
  const Ts xw = {randn({4, 6}, DType::Float64), randn({4, 6}, DType::Float64)};
  const std::vector<std::tuple<std::string, Loss, Ts, Tol>> cases = {
      {"MLP float64", mlp, mlp_params(DType::Float64), {1e-10, 1e-12}},
      {"MLP float32", mlp, mlp_params(DType::Float32), {1e-4, 1e-4}},
      {"slice, select, narrow", [](const Ts& p) {
         return sum(mul(p[0].slice(1, 1, 5), p[1].slice(1, 0, 4))) + sum(p[0].select(0, 2)) +
                sum(p[0].narrow(0, 1, 2) * 3);
       }, xw, {1e-10, 1e-12}},
      {"split, chunk, cat", [](const Ts& p) {
         Ts parts = p[0].split(2, 1);
         return sum(mul(cat({parts[2], parts[0]}, 1), p[1].narrow(1, 0, 4))) +
                sum(mul(p[0].chunk(2, 0)[1], p[1].chunk(2, 0)[0]));
       }, xw, {1e-10, 1e-12}},
      {"transpose, reshape, expand", [](const Ts& p) {
         return sum(mul(p[0].T().reshape({3, 8}), p[1].T().reshape({3, 8}))) +
                sum(p[0].select(1, 0).unsqueeze(1).expand({4, 5}));
       }, xw, {1e-10, 1e-12}},
      {"softmax, log_softmax",
       [](const Ts& p) { return sum(mul(softmax(p[0], -1), p[1])) + sum(mul(log_softmax(p[0], 0), p[1])); }, xw,
       {1e-10, 1e-12}},
      {"layer_norm",
       [](const Ts& p) { return sum(mul(layer_norm(p[0], {6}, p[1].select(0, 0), p[1].select(0, 1)), p[0])); }, xw,
       {1e-10, 1e-12}},
      // A small convnet: cuDNN convolution, batch_norm, pooling, embedding-free
      // classifier with cross_entropy (gather, scatter_add in backward).
      {"convnet", [](const Ts& p) {
         namespace F = nn::functional;
         Tensor h = F::conv2d(p[0], p[1], p[2], {1, 1}, {1, 1});
         h = relu(F::batch_norm(h, Tensor(), Tensor(), p[3], p[4], true));
         h = F::avg_pool2d(F::max_pool2d(h, {2, 2}), {2, 2});
         h = F::adaptive_avg_pool2d(h, {1, 1}).flatten(1);
         return F::cross_entropy(F::linear(h, p[5]), to_device(arange(0, 2).to(DType::Int64), h.device()));
       },
       Ts{randn({2, 3, 8, 8}, DType::Float64), randn({4, 3, 3, 3}, DType::Float64), randn({4}, DType::Float64),
          randn({4}, DType::Float64), randn({4}, DType::Float64), randn({5, 4}, DType::Float64)},
       {1e-8, 1e-10}},
  };
  for (const auto& [what, loss, init, tol] : cases) {
    // The loss and every leaf's gradient, computed on `device`.
    auto run = [&](Device device) {
      Ts leaves;
      for (const Tensor& t : init) {
        leaves.push_back(device.is_cpu() ? t.clone() : t.to(device));
        leaves.back().requires_grad_();
      }
      Tensor l = loss(leaves);
      l.backward();
      Ts out = {l.detach()};
      for (const Tensor& leaf : leaves) out.push_back(leaf.grad());
      return out;
    };
    const Ts want = run(kCPU);
    Ts got;
    const std::string error = error_of([&] { got = run(kCuda); });
    INFO(what << (error.empty() ? "" : ": " + error));
    REQUIRE(error.empty());
    for (size_t i = 0; i < want.size(); ++i) {
      REQUIRE(got[i].defined());
      check_close(got[i], want[i], tol, i == 0 ? what + ": loss" : fmt::format("{}: grad of leaf {}", what, i - 1));
    }
  }
}

// Last in the file: a kernel fault here would lose the GPU context for every
// case after it.
TEST_CASE("cuda: 0-d CPU index tensors into a CUDA tensor work or are refused, never fault", "[cuda]") {
  if (!have_gpu()) return;
  const Tensor x = arange(0, 12, 1, DType::Float32).reshape({3, 4});
  const Tensor i = scalar_tensor(1), j = scalar_tensor(2);
  const std::vector<std::pair<std::string, Fn>> cases = {
      {"x[i]", [&](const Ts& in) { return index(in[0], {i}); }},
      {"x[i, j]", [&](const Ts& in) { return index(in[0], {i, j}); }},
      {"x[i] = 7",
       on_clone([&](Tensor& t, const Ts&) { index_put_(t, {i}, full({4}, 7.0, DType::Float32, t.device())); })},
  };
  for (const auto& [what, f] : cases) {
    const Tensor want = f({x});
    Tensor got;
    const std::string error = error_of([&] {
      got = f({x.cuda()});
      cuda::synchronize(0);
    });
    INFO(what << ": " << error);
    if (error.empty()) check_close(got, want, {}, what);
    else CHECK_THAT(error, Catch::Contains("DeviceError") && !Catch::Contains("CUDA_ERROR"));
  }
}

TEST_CASE("cuda: Module::to moves a model in place, so an optimizer made before trains it", "[cuda]") {
  if (!have_gpu() || !have_cublas()) return;
  manual_seed(4);
  auto make = [] {
    return std::make_shared<nn::Sequential>(nn::Linear(6, 8), nn::ReLU(), nn::Linear(8, 3));
  };
  auto cpu = make(), gpu = make();
  gpu->load_state_dict(cpu->state_dict());
  optim::SGD cpu_opt(cpu->parameters(), {.lr = 0.1, .momentum = 0.9});
  optim::SGD gpu_opt(gpu->parameters(), {.lr = 0.1, .momentum = 0.9});  // made on the cpu parameters
  const Tensor x = randn({5, 6}), t = randint(0, 3, {5});
  auto step = [](nn::Sequential& model, optim::SGD& opt, const Tensor& xs, const Tensor& ts) {
    opt.zero_grad();
    Tensor loss = nn::functional::cross_entropy(model.forward(xs), ts);
    loss.backward();
    opt.step();
  };
  nn::functional::cross_entropy(gpu->forward(x), t).backward();  // gradients on the cpu, to move too
  Tensor before = gpu->parameters()[0];
  gpu->to(kCuda);
  CHECK(gpu->parameters()[0].is_same(before));  // the same tensors, now on the GPU
  for (const Tensor& p : gpu->parameters()) {
    CHECK(p.device() == kCuda);
    if (p.grad().defined()) CHECK(p.grad().device() == kCuda);
  }
  // Its state (momentum) is made by the first step, on the parameters' device.
  for (int i = 0; i < 3; ++i) {
    step(*cpu, cpu_opt, x, t);
    const std::string error = error_of([&] { step(*gpu, gpu_opt, x.cuda(), t.cuda()); });
    INFO(error);
    REQUIRE(error.empty());
  }
  const auto want = cpu->parameters();
  const auto got = gpu->parameters();
  for (size_t i = 0; i < want.size(); ++i) check_close(got[i], want[i], {1e-5, 1e-6}, "parameter after training");
  // saved from the GPU, loaded on the cpu
  const std::string path = (std::filesystem::temp_directory_path() / "kiln_cuda_module_to.safetensors").string();
  gpu->save(path);
  auto loaded = make();
  loaded->load(path);
  std::filesystem::remove(path);
  for (size_t i = 0; i < want.size(); ++i) check_close(loaded->parameters()[i].cuda(), want[i], {1e-5, 1e-6}, "reloaded");
}

// Two GPUs: ctest runs this under the emulator with two devices
// (KILN_CUDA_EMULATOR_DEVICES=2, and KILN_EXPECT_CUDA_DEVICES=2 to make a
// skip a failure); with one GPU it skips.
TEST_CASE("cuda: a second GPU: ops, copies between GPUs, streams and memory per device", "[cuda][multi_gpu]") {
  if (!have_gpu() || !have_cublas()) return;
  if (cuda::device_count() < 2) {
    const char* expected = std::getenv("KILN_EXPECT_CUDA_DEVICES");
    if (expected && std::atoi(expected) >= 2) FAIL("KILN_EXPECT_CUDA_DEVICES is set, but there is one GPU");
    WARN("one GPU here: the two-GPU case is skipped");
    return;
  }
  namespace F = nn::functional;
  const Device gpu1{DeviceType::CUDA, 1};
  manual_seed(9);
  const Tensor x = randn({6, 8}), w = randn({8, 5}), img = randn({2, 3, 6, 6}), k = randn({4, 3, 3, 3});
  // Results on cuda:1 are compared on cuda:0: a copy between GPUs too.
  Tensor y = softmax(add(matmul(x.to(gpu1), w.to(gpu1)), 1.0), -1);
  CHECK(y.device() == gpu1);
  check_close(y.to(kCuda), softmax(add(matmul(x, w), 1.0), -1), {1e-5, 1e-6}, "matmul and softmax on cuda:1");
  Tensor c = F::conv2d(img.to(gpu1), k.to(gpu1), {}, {1, 1}, {1, 1});
  check_close(c.to(kCuda), F::conv2d(img, k, {}, {1, 1}, {1, 1}), {1e-4, 1e-5}, "conv2d on cuda:1");
  check_close(sum(x.cuda().to(gpu1), {0}).to(kCuda), sum(x, {0}), {1e-5, 1e-6}, "cuda:0 -> cuda:1 -> cuda:0");
  CHECK_THROWS_WITH(add(x.cuda(), x.to(gpu1)), Catch::Contains("cuda:0") && Catch::Contains("cuda:1"));
  // each device's allocator counts its own memory
  const size_t before0 = cuda::memory_stats(0).allocated_bytes, before1 = cuda::memory_stats(1).allocated_bytes;
  {
    Tensor big = zeros({1 << 18}, DType::Float32, gpu1);
    CHECK(cuda::memory_stats(1).allocated_bytes >= before1 + (size_t{1} << 20));
    CHECK(cuda::memory_stats(0).allocated_bytes == before0);
  }
  CHECK(cuda::memory_stats(1).allocated_bytes == before1);
  // a stream of cuda:1 carries cuda:1's work
  cuda::Stream side(1);
  Tensor z;
  {
    cuda::StreamGuard guard(side);
    z = mul(x.to(gpu1), 2.0);
  }
  side.synchronize();
  check_close(z.to(kCuda), mul(x, 2.0), {}, "on a cuda:1 stream");
  // gradients stay on their GPU
  Tensor a = x.to(gpu1).detach();
  a.requires_grad_();
  sum(mul(a, a)).backward();
  REQUIRE(a.grad().defined());
  CHECK(a.grad().device() == gpu1);
  check_close(a.grad().to(kCuda), mul(x, 2.0), {1e-6, 1e-6}, "gradient on cuda:1");
}

// A kernel that fails (here an index out of range, which only the kernel
// sees) ruins the process's GPU context, so this case is hidden and runs in
// a process of its own: `kiln_tests "[cuda_fault]"` (ctest runs it under the
// CUDA emulator). The kernel's message reaches stdout; the error reaches the
// next call that waits for the GPU.
TEST_CASE("cuda: a failing kernel is reported at the next call that waits", "[.][cuda_fault]") {
  if (!have_gpu()) return;
  const Tensor x = arange(0, 5, 1, DType::Float32).cuda();
  const Tensor idx = full({2}, 7.0, DType::Int64, kCuda);
  std::fflush(stdout);
  std::FILE* captured = std::tmpfile();
  REQUIRE(captured);
  const int saved_stdout = dup(STDOUT_FILENO);
  dup2(fileno(captured), STDOUT_FILENO);
  const std::string error = error_of([&] {
    Tensor y = index_select(x, 0, idx);
    cuda::synchronize(0);
  });
  std::fflush(stdout);
  dup2(saved_stdout, STDOUT_FILENO);
  close(saved_stdout);
  std::string printed(4096, '\0');
  std::rewind(captured);
  printed.resize(std::fread(printed.data(), 1, printed.size(), captured));
  std::fclose(captured);
  CHECK_THAT(printed, Catch::Contains("index_select: index 7 is out of bounds for dimension 0 with size 5"));
  CHECK_THAT(error, Catch::Contains("DeviceError") && Catch::Contains("cuCtxSynchronize failed") &&
                        Catch::Contains("context is unusable"));
  // every later call fails the same way, rather than running on a broken context
  CHECK_THROWS_AS(x.cpu(), DeviceError);
}
