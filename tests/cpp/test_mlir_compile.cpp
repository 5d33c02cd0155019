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
    CompiledFunction compiled(*traced);
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
  CHECK_THAT(traced_ir(*traced, "llvm"), Contains("llvm.func @_mlir_ciface_kiln_chain"));
}

TEST_CASE("a function that does not lower is refused with the op and its location", "[compile]") {
  std::string text = R"(
func.func @f(%x: tensor<2x3xf32>, %y: tensor<3x4xf32>) -> tensor<2x4xf32> {
  %s = kiln.matmul %x, %y : (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32> loc("net.py":12:0)
  return %s : tensor<2x4xf32>
}
)";
  try {
    codegen::CpuFunction fn(text);
    FAIL("expected NotCompilable");
  } catch (const codegen::NotCompilable& e) {
    CHECK_THAT(e.what(), Contains("kiln.matmul at net.py:12"));
  }
  Tracer tracer("g");
  Tensor x = tracer.argument({{2, 3}, DType::Int64});
  Tensor out;
  {
    TraceScope scope(&tracer);
    out = floor_divide(x, 2);  // integer floor division is not compiled
  }
  auto traced = tracer.finish({out});
  CHECK_THROWS_AS(CompiledFunction(*traced), codegen::NotCompilable);
}
