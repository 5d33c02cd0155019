// Proves the LLVM/MLIR 19 toolchain end to end: parse, lower to the llvm
// dialect, JIT with ORC, call, and errors surfacing as exceptions.
#include <catch2/catch.hpp>

#include "tests/cpp/memref.h"

#include <cstdint>
#include <vector>

#include "codegen/jit_smoke.h"

using kiln::codegen::CpuJit;
using kiln::codegen::JitError;
using Catch::Contains;

namespace {

constexpr const char* kScalars = R"mlir(
func.func @add_scale(%a: f32, %b: f32) -> f32 {
  %c = arith.constant 2.5 : f32
  %s = arith.addf %a, %b : f32
  %r = arith.mulf %s, %c : f32
  return %r : f32
}

// 1 + 2 + ... + n, with an scf.for carrying the sum.
func.func @sum_to(%n: i64) -> i64 {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %zero = arith.constant 0 : i64
  %one = arith.constant 1 : i64
  %ub = arith.index_cast %n : i64 to index
  %sum = scf.for %i = %c0 to %ub step %c1 iter_args(%acc = %zero) -> (i64) {
    %k = arith.index_cast %i : index to i64
    %k1 = arith.addi %k, %one : i64
    %next = arith.addi %acc, %k1 : i64
    scf.yield %next : i64
  }
  return %sum : i64
}
)mlir";

}  // namespace

TEST_CASE("JIT: scalar functions through the packed interface", "[mlir]") {
  CpuJit jit(kScalars);
  CHECK(jit.call<float>("add_scale", 1.5f, 2.0f) == 8.75f);
  CHECK(jit.call<int64_t>("sum_to", int64_t{100}) == 5050);
  CHECK(jit.call<int64_t>("sum_to", int64_t{0}) == 0);
  // Plain scalar functions are also callable directly.
  auto* add_scale = jit.function<float(float, float)>("add_scale");
  CHECK(add_scale(-1.0f, 3.0f) == 5.0f);
}

TEST_CASE("JIT: memrefs, scf loops and linalg through the C interface", "[mlir]") {
  CpuJit jit(R"mlir(
    func.func @total(%x: memref<?xf32>) -> f32 attributes {llvm.emit_c_interface} {
      %c0 = arith.constant 0 : index
      %c1 = arith.constant 1 : index
      %zero = arith.constant 0.0 : f32
      %n = memref.dim %x, %c0 : memref<?xf32>
      %sum = scf.for %i = %c0 to %n step %c1 iter_args(%acc = %zero) -> (f32) {
        %v = memref.load %x[%i] : memref<?xf32>
        %next = arith.addf %acc, %v : f32
        scf.yield %next : f32
      }
      return %sum : f32
    }

    // y = exp(x) * s, elementwise, as linalg on memrefs.
    func.func @exp_scale(%x: memref<?xf32>, %y: memref<?xf32>, %s: f32)
        attributes {llvm.emit_c_interface} {
      linalg.generic {indexing_maps = [affine_map<(i) -> (i)>, affine_map<(i) -> (i)>],
                      iterator_types = ["parallel"]}
          ins(%x : memref<?xf32>) outs(%y : memref<?xf32>) {
        ^bb0(%in: f32, %out: f32):
          %e = math.exp %in : f32
          %r = arith.mulf %e, %s : f32
          linalg.yield %r : f32
      }
      return
    }
  )mlir");

  std::vector<float> x{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  MemRef1D xd = view(x);
  auto* total = jit.function<float(MemRef1D*)>("_mlir_ciface_total");
  CHECK(total(&xd) == 66.0f);

  std::vector<float> in{0.0f, 1.0f, -2.0f};
  std::vector<float> out(in.size());
  MemRef1D ind = view(in), outd = view(out);
  // Packed call of the C-interface wrapper: each argument by address.
  jit.call("_mlir_ciface_exp_scale", &ind, &outd, 3.0f);
  CHECK(out[0] == Approx(3.0f));
  CHECK(out[1] == Approx(3.0f * 2.718281828f));
  CHECK(out[2] == Approx(3.0f * 0.135335283f));
}

TEST_CASE("JIT: the llvm-dialect stage can be printed", "[mlir]") {
  std::string llvm_ir = kiln::codegen::lower_to_llvm_dialect(kScalars);
  CHECK_THAT(llvm_ir, Contains("llvm.func @add_scale") && Contains("llvm.fmul"));
  CHECK_THAT(llvm_ir, !Contains("scf.for") && !Contains("arith."));
}

TEST_CASE("JIT: errors are exceptions naming the stage, never aborts", "[mlir]") {
  SECTION("malformed input: the parse error with its location") {
    REQUIRE_THROWS_AS(CpuJit("func.func @f(%a: f32) -> f32 {\n  return %b : f32\n}"),
                      JitError);
    REQUIRE_THROWS_WITH(CpuJit("func.func @f(%a: f32) -> f32 {\n  return %b : f32\n}"),
                        Contains("parsing the MLIR input failed") &&
                            Contains("input:2:10: error: use of undeclared SSA value name"));
  }
  SECTION("input the pipeline cannot lower: the pass diagnostics") {
    // Tensors need bufferization, which this pipeline does not run.
    REQUIRE_THROWS_WITH(CpuJit(R"mlir(
      func.func @f(%n: index) -> tensor<?xf32> {
        %t = tensor.empty(%n) : tensor<?xf32>
        return %t : tensor<?xf32>
      })mlir"),
                        Contains("lowering to the llvm dialect failed") &&
                            Contains("input:3:14: error: 'tensor.empty' was not lowered"));
  }
  SECTION("unknown function or symbol") {
    CpuJit jit(kScalars);
    REQUIRE_THROWS_WITH(jit.call<float>("add_scal", 1.0f, 2.0f),
                        Contains("no function 'add_scal'") && Contains("add_scale, sum_to"));
    REQUIRE_THROWS_WITH(jit.lookup("missing"), Contains("no symbol 'missing'"));
  }
}
