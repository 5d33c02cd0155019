// The CPU compiler (codegen/cpu_compiler.h, tracer/compiled.h): traced
// elementwise functions compiled to native code equal eager within the
// tolerance of MLIR's float32 polynomial approximations; what does not lower
// is refused with the op and its location.
#include <catch2/catch.hpp>

#include <cmath>

#include "codegen/cpu_compiler.h"
#include "kiln.h"
#include "tracer/compiled.h"
#include "tracer/ir_builder.h"

using namespace kiln;
using Catch::Matchers::Contains;

namespace {
// |got - want| <= atol + rtol * |want| everywhere (same shapes).
bool allclose(const Tensor& got, const Tensor& want, double rtol, double atol) {
  if (got.shape() != want.shape()) return false;
  Tensor g = got.to(DType::Float64).contiguous(), w = want.to(DType::Float64).contiguous();
  for (int64_t i = 0; i < g.numel(); ++i)
    if (!(std::abs(g.data<double>()[i] - w.data<double>()[i]) <= atol + rtol * std::abs(w.data<double>()[i])))
      return false;
  return true;
}

std::shared_ptr<TracedFunction> trace_chain(Shape xs, Shape ys, DType dtype) {
  Tracer tracer("chain", [] { return std::string("model.cpp:7"); });
  Tensor x = tracer.argument({xs, dtype});
  Tensor y = tracer.argument({ys, dtype});
  Tensor out;
  {
    TraceScope scope(&tracer);
    Tensor h = x * y + 1.0;
    out = (h.tanh() * (-h).exp() + h.sigmoid()).relu() - maximum(h, y);
  }
  return tracer.finish({out});
}

Tensor eager_chain(const Tensor& x, const Tensor& y) {
  Tensor h = x * y + 1.0;
  return (h.tanh() * (-h).exp() + h.sigmoid()).relu() - maximum(h, y);
}
}  // namespace

TEST_CASE("a traced elementwise chain compiles and equals eager", "[compile]") {
  for (DType dtype : {DType::Float32, DType::Float64}) {
    auto traced = trace_chain({4, 1, 5}, {3, 1}, dtype);
    CompiledFunction compiled(traced);
    Tensor x = randn({4, 1, 5}).to(dtype), y = randn({3, 1}).to(dtype);
    Tensor got = compiled.run({x, y})[0].to(DType::Float64).contiguous();
    Tensor want = eager_chain(x, y).to(DType::Float64).contiguous();
    REQUIRE(got.shape() == Shape{4, 3, 5});
    const double* g = got.data<double>();
    const double* w = want.data<double>();
    double tol = dtype == DType::Float32 ? 2e-5 : 1e-12;
    for (int64_t i = 0; i < got.numel(); ++i) CHECK(std::abs(g[i] - w[i]) <= tol * (1 + std::abs(w[i])));
  }
}

TEST_CASE("the compiler's stages print, and fusion makes one kernel", "[compile]") {
  auto traced = trace_chain({8}, {8}, DType::Float32);
  CHECK_THAT(traced_ir(*traced, "linalg"), Contains("linalg.generic"));
  std::string fused = traced_ir(*traced, "fused");
  size_t n = 0;
  for (size_t at = fused.find("linalg.generic"); at != std::string::npos; at = fused.find("linalg.generic", at + 1)) ++n;
  CHECK(n == 1);
  CHECK_THAT(traced_ir(*traced, "bufferized"), Contains("memref<8xf32>"));
  CHECK_THAT(traced_ir(*traced, "llvm"), Contains("llvm.func @_mlir_ciface_k0_model_cpp_7"));
}

TEST_CASE("ops that do not lower run on the eager kernels between compiled kernels", "[compile]") {
  std::string text = R"(
func.func @f(%x: tensor<2x3xf32>, %y: tensor<3x4xf32>) -> tensor<2x4xf32> {
  %e = kiln.exp %x : (tensor<2x3xf32>) -> tensor<2x3xf32> loc("net.py":11:0)
  %m = kiln.matmul %e, %y : (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32> loc("net.py":12:0)
  %r = kiln.relu %m : (tensor<2x4xf32>) -> tensor<2x4xf32> loc("net.py":13:0)
  return %r : tensor<2x4xf32>
}
)";
  codegen::CpuFunction fn(text);
  REQUIRE(fn.host_ops().size() == 1);
  CHECK_THAT(fn.host_ops()[0], Contains("kiln.matmul at net.py:12"));
  CHECK(fn.num_kernels() == 2);
  const auto& steps = fn.program().steps;
  REQUIRE(steps.size() == 3);
  CHECK(steps[0].kind == codegen::Step::Kind::Kernel);
  CHECK(steps[1].kind == codegen::Step::Kind::Host);
  CHECK(steps[2].kind == codegen::Step::Kind::Kernel);
  CHECK_THAT(fn.program().kernels[0].symbol, Contains("net_py_11"));
  Tensor x = randn({2, 3}), y = randn({3, 4});
  // a non-contiguous argument is copied to the layout the kernel reads
  Tensor xt = randn({3, 2}).transpose(0, 1);
  for (const Tensor& a : {x, xt}) {
    Tensor got = fn.run({a, y})[0];
    Tensor want = relu(matmul(a.exp(), y));
    CHECK(allclose(got, want, 1e-5, 1e-6));
  }
}

TEST_CASE("kernels split their outer loop across threads and agree with eager", "[compile]") {
  Tracer tracer("big", [] { return std::string("model.cpp:9"); });
  Tensor x = tracer.argument({{1024, 257}, DType::Float32});
  Tensor w = tracer.argument({{257}, DType::Float32});
  Tensor out;
  {
    TraceScope scope(&tracer);
    out = (x * w + 1.0).tanh();
  }
  auto traced = tracer.finish({out});
  CompiledFunction compiled(traced);
  CHECK(compiled.num_kernels() == 1);
  int before = num_threads();
  set_num_threads(4);
  Tensor xs = randn({1024, 257}), ws = randn({257});
  Tensor got = compiled.run({xs, ws})[0];
  set_num_threads(before);
  CHECK(allclose(got, (xs * ws + 1.0).tanh(), 1e-5, 1e-6));
}

TEST_CASE("captured tensors are read and written back", "[compile]") {
  Tensor p = randn({64, 33});
  Tensor start = p.clone();
  Tracer tracer("step");
  Tensor g = tracer.argument({{64, 33}, DType::Float32});
  {
    TraceScope scope(&tracer);
    NoGradGuard no_grad;
    p.sub_(g * 0.5);
  }
  auto traced = tracer.finish({});
  CompiledFunction compiled(traced);
  CHECK(compiled.num_kernels() >= 1);
  Tensor grad = randn({64, 33});
  compiled.run({grad});
  CHECK(allclose(p, start - grad * 0.5, 1e-6, 1e-6));
  compiled.run({grad});
  CHECK(allclose(p, start - grad, 1e-5, 1e-6));
}

TEST_CASE("control flow is refused with the op and its location", "[compile]") {
  std::string text = R"(
func.func @f(%p: tensor<i1>, %x: tensor<3xf32>) -> tensor<3xf32> {
  %r = kiln.cond %p, %x {num_operands = 1 : i64, num_then_refs = 0 : i64} : (tensor<i1>, tensor<3xf32>) -> tensor<3xf32> {
  ^bb0(%a: tensor<3xf32>):
    kiln.yield %a : tensor<3xf32>
  } else {
  ^bb0(%a: tensor<3xf32>):
    kiln.yield %a : tensor<3xf32>
  } loc("net.py":12:0)
  return %r : tensor<3xf32>
}
)";
  try {
    codegen::CpuFunction fn(text);
    FAIL("expected NotCompilable");
  } catch (const codegen::NotCompilable& e) {
    CHECK_THAT(e.what(), Contains("kiln.cond at net.py:12"));
  } catch (const IrError& e) {
    // the hand-written IR above does not match kiln.cond's syntax
    FAIL(e.what());
  }
}
