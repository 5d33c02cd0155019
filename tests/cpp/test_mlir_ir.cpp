// The kiln dialect: a traced function printed as IR, print -> parse -> print
// and bytecode round trips, the simplified stage (folding through the
// eager kernels, CSE, dead-op removal), and IR errors as exceptions.
#include <catch2/catch.hpp>

#include "kiln.h"
#include "tracer/ir_builder.h"

using namespace kiln;
using Catch::Matchers::Contains;

namespace {
std::shared_ptr<TracedFunction> trace_example() {
  Tracer tracer("example", [] { return std::string("model.cpp:42"); });
  Tensor x = tracer.argument({{2, kDynamic}, DType::Float32});
  Tensor y = tracer.argument({{kDynamic}, DType::Float32});
  Tensor out;
  {
    TraceScope scope(&tracer);
    out = ((x * y + 1.0).relu() * x).exp();
  }
  return tracer.finish({out});
}
}  // namespace

TEST_CASE("a traced function prints as the kiln dialect and round trips", "[ir]") {
  std::string text = traced_ir(*trace_example());
  CHECK_THAT(text, Contains("func.func @example(%arg0: tensor<2x?xf32>"));
  CHECK_THAT(text, Contains("%arg1: tensor<?xf32>"));
  CHECK_THAT(text, Contains("kiln.mul %arg0, %arg1 : (tensor<2x?xf32>, tensor<?xf32>) -> tensor<2x?xf32>"));
  CHECK_THAT(text, Contains("kiln.relu"));
  CHECK_THAT(text, Contains("loc(\"model.cpp\":42:0)"));
  CHECK(reprint_ir(text) == text);
  std::string code = ir_to_bytecode(text);
  CHECK(code.substr(0, 4) == "ML\xef" "R");
  CHECK(reprint_ir(code) == text);
  CHECK(traced_bytecode(*trace_example()) == code);
}

TEST_CASE("the simplified stage folds constants through the eager kernels", "[ir]") {
  std::string text = R"(
func.func @f(%x: tensor<2xf32>) -> (tensor<2xf32>, tensor<2xf32>) {
  %a = kiln.constant dense<[1.0, 2.5]> : tensor<2xf32>
  %b = kiln.constant dense<[3.0, -1.0]> : tensor<2xf32>
  %s = kiln.mul %a, %b : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>
  %e = kiln.exp %s : (tensor<2xf32>) -> tensor<2xf32>
  %r = kiln.reshape %x {shape = array<i64: 2>} : (tensor<2xf32>) -> tensor<2xf32>
  %y1 = kiln.add %r, %e : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>
  %y2 = kiln.add %x, %e : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>
  %dead = kiln.neg %x : (tensor<2xf32>) -> tensor<2xf32>
  return %y1, %y2 : tensor<2xf32>, tensor<2xf32>
})";
  std::string simple = simplify_ir(text, {.locations = false});
  // exp(1 * 3) and exp(2.5 * -1), as the eager kernel computes them.
  CHECK_THAT(simple, Contains("kiln.constant dense<[20.0855"));
  CHECK_THAT(simple, Contains("8.2085"));
  CHECK_THAT(simple, !Contains("kiln.mul"));
  CHECK_THAT(simple, !Contains("kiln.exp"));
  CHECK_THAT(simple, !Contains("kiln.reshape"));  // reshape to its own shape is the identity
  CHECK_THAT(simple, !Contains("kiln.neg"));      // dead
  CHECK_THAT(simple, Contains("return %1, %1"));  // the two adds are one after CSE
}

TEST_CASE("invalid IR raises IrError with MLIR's diagnostics", "[ir]") {
  CHECK_THROWS_AS(reprint_ir("func.func @f("), IrError);
  CHECK_THROWS_WITH(reprint_ir(R"(
func.func @f(%a: tensor<3xf32>, %b: tensor<4xf32>) -> tensor<4xf32> {
  %0 = kiln.add %a, %b : (tensor<3xf32>, tensor<4xf32>) -> tensor<4xf32>
  return %0 : tensor<4xf32>
})"),
                    Contains("add") && Contains("(3,)") && Contains("kiln-ir:3:"));
  CHECK_THROWS_AS(reprint_ir(std::string("ML\xef" "R\x01\x02garbage", 12)), IrError);
  CHECK_THROWS_AS(traced_ir(*trace_example(), "ptx"), ValueError);
}
