// Lowering kiln ops to linalg (passes/lower_to_linalg.h): the structure of
// the stages (how many kernels softmax and layer_norm fuse into, reassociable
// reductions, loop order) and compiled results against eager and hand values.
//
// Tolerances: float reductions combine with fastmath `reassoc` (LLVM
// vectorizes them, so the summation order differs from eager's, which sums
// float32 in double in places), and float32 exp/log use MLIR's polynomial
// approximations: float32 results agree to rtol = atol = 1e-5 for the sizes
// used here, float64 to 1e-12.
#include <catch2/catch.hpp>

#include <algorithm>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include <mlir/Dialect/Func/IR/FuncOps.h>
#include <mlir/Dialect/Linalg/IR/Linalg.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/MLIRContext.h>
#include <mlir/IR/Verifier.h>
#include <mlir/Parser/Parser.h>

#include "codegen/cpu_compiler.h"
#include "eager/nn/functional.h"
#include "ir/dialects.h"
#include "kiln.h"
#include "passes/lower_to_linalg.h"
#include "passes/simplify.h"
#include "tracer/ir_builder.h"

using namespace kiln;
using Catch::Matchers::Contains;

namespace {

using Fn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// `f` traced on arguments of `types`, as kiln IR text.
std::string trace_text(const std::vector<TensorType>& types, const Fn& f) {
  Tracer tracer("f", [] { return std::string("model.cpp:1"); });
  std::vector<Tensor> args;
  for (const TensorType& t : types) args.push_back(tracer.argument(t));
  std::vector<Tensor> outs;
  {
    TraceScope scope(&tracer);
    outs = f(args);
  }
  return traced_ir(*tracer.finish(outs), "traced");
}

// Compiles `text`, requiring that every op lowered (no eager steps), and runs it.
std::vector<Tensor> run_compiled(const std::string& text, const std::vector<Tensor>& inputs) {
  codegen::CpuFunction fn(text);
  INFO((fn.host_ops().empty() ? std::string() : fn.host_ops()[0]));
  REQUIRE(fn.host_ops().empty());
  return fn.run(inputs);
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Compiles f for `inputs` and checks every result against eager f.
void check_against_eager(const std::vector<Tensor>& inputs, const Fn& f, double tol) {
  std::vector<TensorType> types;
  for (const Tensor& t : inputs) types.push_back(type_of(t));
  std::vector<Tensor> got = run_compiled(trace_text(types, f), inputs);
  std::vector<Tensor> want = f(inputs);
  REQUIRE(got.size() == want.size());
  for (size_t r = 0; r < got.size(); ++r) {
    REQUIRE(got[r].shape() == want[r].shape());
    REQUIRE(got[r].dtype() == want[r].dtype());
    Tensor g = got[r].to(DType::Float64).contiguous(), w = want[r].to(DType::Float64).contiguous();
    const double* pg = g.data<double>();
    const double* pw = w.data<double>();
    for (int64_t i = 0; i < g.numel(); ++i) {
      INFO("result " << r << " element " << i << ": " << pg[i] << " vs " << pw[i]);
      if (std::isnan(pw[i])) CHECK(std::isnan(pg[i]));
      else if (std::isinf(pw[i])) CHECK(pg[i] == pw[i]);
      else CHECK(std::abs(pg[i] - pw[i]) <= tol * (1 + std::abs(pw[i])));
    }
  }
}

Tensor values(Shape shape, std::vector<double> v, DType dtype = DType::Float32) {
  return from_blob_copy(v.data(), std::move(shape), DType::Float64).to(dtype);
}
Tensor ints(Shape shape, std::vector<int64_t> v, DType dtype = DType::Int64) {
  return from_blob_copy(v.data(), std::move(shape), DType::Int64).to(dtype);
}

}  // namespace

TEST_CASE("reductions lower to one reassociable generic, kept loops outermost", "[lowering]") {
  // sum over the last dim: parallel then reduction loop, reassoc on the add
  std::string rows = trace_text({{{4, 6}, DType::Float32}}, [](auto& a) -> std::vector<Tensor> {
    return {sum(a[0], {1}, /*keepdim=*/true)};
  });
  std::string linalg = codegen::compile_stage_ir(rows, "linalg");
  CHECK(count(linalg, "linalg.generic") == 1);
  CHECK_THAT(linalg, Contains("fastmath<reassoc>"));
  CHECK_THAT(linalg, Contains("iterator_types = [\"parallel\", \"reduction\"]"));
  CHECK_THAT(linalg, Contains("tensor.expand_shape"));
  // sum over the first dim: the contiguous dim stays the innermost loop
  std::string cols = trace_text({{{4, 6}, DType::Float32}}, [](auto& a) -> std::vector<Tensor> {
    return {sum(a[0], {0})};
  });
  CHECK_THAT(codegen::compile_stage_ir(cols, "linalg"), Contains("iterator_types = [\"reduction\", \"parallel\"]"));
  // over the middle dim of three: batch loop outermost, contiguous innermost
  std::string mid = trace_text({{{2, 3, 5}, DType::Float32}}, [](auto& a) -> std::vector<Tensor> {
    return {amax(a[0], {1})};
  });
  CHECK_THAT(codegen::compile_stage_ir(mid, "linalg"),
             Contains("iterator_types = [\"parallel\", \"reduction\", \"parallel\"]"));
}

TEST_CASE("reductions equal hand values and eager", "[lowering]") {
  Tensor x = values({2, 3}, {1, 2, 3, 4, 5, -6});
  auto got = run_compiled(trace_text({type_of(x)}, [](auto& a) -> std::vector<Tensor> {
                            return {sum(a[0], {1}, true), mean(a[0], {0}), amax(a[0]), amin(a[0], {1}), prod(a[0], {0}),
                                    amax(a[0] - 10.0, {1}), amin(a[0] + 10.0, {1})};
                          }),
                          {x});
  auto at = [](const Tensor& t, int64_t i) { return t.to(DType::Float64).contiguous().data<double>()[i]; };
  REQUIRE(got[0].shape() == Shape{2, 1});
  CHECK(at(got[0], 0) == 6);
  CHECK(at(got[0], 1) == 3);
  CHECK(at(got[1], 0) == Approx(2.5));
  CHECK(at(got[1], 2) == Approx(-1.5));
  CHECK(got[2].shape() == Shape{});
  CHECK(at(got[2], 0) == 5);
  CHECK(at(got[3], 1) == -6);
  CHECK(at(got[4], 2) == -18);
  CHECK(at(got[5], 0) == -7);  // the identities are -inf and +inf, not 0
  CHECK(at(got[6], 0) == 11);

  for (DType dt : {DType::Float32, DType::Float64}) {
    double tol = dt == DType::Float32 ? 1e-5 : 1e-12;
    Tensor y = randn({3, 1, 17, 5}).to(dt);
    check_against_eager({y}, [](auto& a) -> std::vector<Tensor> {
      return {sum(a[0], {0, 2}), mean(a[0], {-1}, true), amax(a[0], {2}), amin(a[0], {0, 1, 2, 3}, true),
              var(a[0], {2}, 1), kiln::std(a[0], {0, 3}, 0, true), logsumexp(a[0], {2}), prod(a[0], {3})};
    }, tol);
  }
  // integer and bool inputs: sums are int64, any/all bool
  Tensor i = ints({2, 3}, {3, -1, 4, 1, -5, 9}, DType::Int32);
  check_against_eager({i}, [](auto& a) -> std::vector<Tensor> {
    return {sum(a[0], {1}), amax(a[0], {0}), any(gt(a[0], 5), {1}), all(gt(a[0], -2), {0})};
  }, 0);
}

// Three generics, each with one reduction result at most: two reductions for
// the statistics, one elementwise normalization; an elementwise producer fuses
// into all three (a one-pass two-result form did not vectorize: see
// passes/lower_to_linalg.cpp). Over the last dim they share one kernel, which
// runs them tile by tile (passes/outline_kernels.h); the kernel starts its
// reductions with fill generics (no inputs).
TEST_CASE("softmax and layer_norm fuse into three generics in one kernel, also with producers", "[lowering]") {
  struct Case {
    const char* name;
    Fn f;
    size_t kernels;
  };
  std::vector<Case> cases = {
      {"softmax", [](auto& a) -> std::vector<Tensor> { return {softmax(a[0], -1)}; }, 1},
      {"softmax of x*2+1", [](auto& a) -> std::vector<Tensor> { return {softmax(a[0] * 2.0 + 1.0, 1)}; }, 1},
      {"log_softmax dim 0", [](auto& a) -> std::vector<Tensor> { return {log_softmax(a[0].exp(), 0)}; }, 3},
      {"layer_norm", [](auto& a) -> std::vector<Tensor> { return {layer_norm(a[0], {16}, a[1], a[2], 1e-5)}; }, 1},
      {"layer_norm of tanh(x)", [](auto& a) -> std::vector<Tensor> { return {layer_norm(a[0].tanh(), {16})}; }, 1},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    std::string text = trace_text({{{8, 16}, DType::Float32}, {{16}, DType::Float32}, {{16}, DType::Float32}}, c.f);
    std::string fused = codegen::compile_stage_ir(text, "fused");
    INFO(fused);
    CHECK(count(fused, "linalg.generic") - count(fused, "[\"parallel\"]} outs(") == 3);
    CHECK(count(fused, "call @k") <= c.kernels);
    CHECK(count(fused, "\"reduction\"") == 2);
    CHECK(count(fused, "fastmath<reassoc") == 2);  // softmax's max: <reassoc,nnan,nsz>
  }
}

TEST_CASE("softmax, log_softmax and layer_norm equal eager", "[lowering]") {
  for (DType dt : {DType::Float32, DType::Float64}) {
    double tol = dt == DType::Float32 ? 1e-5 : 1e-12;
    for (Shape shape : {Shape{7}, Shape{1, 1}, Shape{3, 33}, Shape{2, 5, 3}}) {
      INFO(shape_str(shape));
      Tensor x = (randn(shape) * 3.0).to(dt);
      int64_t last = static_cast<int64_t>(shape.size()) - 1;
      check_against_eager({x}, [last](auto& a) -> std::vector<Tensor> {
        return {softmax(a[0], last), softmax(a[0] * 0.5, 0), log_softmax(a[0], -1)};  // distinct results: a value returned twice crashes bufferization (codegen)
      }, tol);
      Shape norm(shape.end() - 1, shape.end());
      Tensor w = randn(norm).to(dt), b = randn(norm).to(dt);
      check_against_eager({x + 100.0, w, b}, [norm](auto& a) -> std::vector<Tensor> {
        return {layer_norm(a[0], norm, a[1], a[2], 1e-5), layer_norm(a[0], norm, Tensor(), Tensor(), 1e-3)};
      }, dt == DType::Float32 ? 1e-4 : 1e-10);  // float32: the offset of 100 costs digits of the mean
    }
  }
  // masked rows: -inf entries, a row of -inf only (NaN, as eager)
  double inf = std::numeric_limits<double>::infinity();
  Tensor m = values({3, 3}, {-inf, 1, 2, -inf, -inf, -inf, 0, -inf, 3});
  check_against_eager({m}, [](auto& a) -> std::vector<Tensor> {
    return {softmax(a[0], 1), log_softmax(a[0], 1), logsumexp(a[0], {1})};
  }, 1e-5);
  auto got = run_compiled(trace_text({type_of(m)}, [](auto& a) -> std::vector<Tensor> { return {softmax(a[0], 1)}; }),
                          {m})[0].to(DType::Float64).contiguous();
  CHECK(got.data<double>()[1] == Approx(1 / (1 + std::exp(1.0))));
  CHECK(std::isnan(got.data<double>()[3]));
}

TEST_CASE("layout ops lower to generics and reshapes", "[lowering]") {
  Tensor x = randn({2, 3, 4});
  Fn f = [](auto& a) -> std::vector<Tensor> {
    return {permute(a[0], {2, 0, 1}), transpose(a[0], 0, 2).contiguous(), reshape(a[0], {4, 6}),
            reshape(a[0], {3, 8}), flatten(a[0], 1, 2), unsqueeze(a[0], 1), squeeze(unsqueeze(a[0], 0), 0),
            slice(a[0], 2, 1, std::nullopt, 2), narrow(a[0], 1, 1, 2), select(a[0], 1, -1),
            narrow(a[0], 2, 0, 3) * 2.0, slice(a[0], 1, std::nullopt, 2, 1) + 1.0,  // prefixes: i mod size
            reshape(a[0], {24}) * 2.0};
  };
  check_against_eager({x}, f, 0);
  std::string linalg = codegen::compile_stage_ir(trace_text({type_of(x)}, f), "linalg");
  CHECK_THAT(linalg, Contains("tensor.collapse_shape"));
  CHECK_THAT(linalg, Contains("tensor.expand_shape"));
  CHECK_THAT(linalg, !Contains("kiln."));
  CHECK_THAT(linalg, !Contains("extract_slice"));
}

TEST_CASE("integer arithmetic keeps integer results", "[lowering]") {
  for (DType dt : {DType::Int32, DType::Int64}) {
    Tensor a = ints({2, 3}, {3, -7, 0, 12, -1, 5}, dt);
    Tensor b = ints({3}, {2, -3, 4}, dt);
    check_against_eager({a, b}, [](auto& v) -> std::vector<Tensor> {
      return {v[0] + v[1], v[0] - v[1] * 3, -v[0], v[0].abs(), maximum(v[0], v[1]), minimum(v[0], v[1]),
              where(gt(v[0], 0), v[0], v[1])};
    }, 0);
  }
}

TEST_CASE("optimizer steps are one generic with a result per updated tensor", "[lowering]") {
  Tensor p = randn({5, 7}), g = randn({5, 7}), m = randn({5, 7}), v = randn({5, 7}).abs(), vmax = v * 1.5;
  std::vector<Tensor> none;
  auto sgd = [&](double mom, bool nesterov, double wd) -> Fn {
    return [=](auto& a) {
      return op_def("sgd_step").run({a[0], a[1], mom != 0 ? a[2] : Tensor()},
                                    make_attrs("lr, momentum, dampening, weight_decay, nesterov, maximize", 0.1, mom,
                                               0.1, wd, nesterov, false));
    };
  };
  check_against_eager({p, g, m}, sgd(0, false, 0), 1e-6);
  check_against_eager({p, g, m}, sgd(0.9, true, 0.01), 1e-6);
  Tensor step = full({}, 3.0);
  for (bool amsgrad : {false, true})
    for (bool decoupled : {false, true}) {
      Fn adam = [=](auto& a) {
        return op_def("adam_step").run({a[0], a[1], a[2], a[3], amsgrad ? a[4] : Tensor(), a[5]},
                                       make_attrs("lr, beta1, beta2, eps, weight_decay, maximize, decoupled", 1e-3,
                                                  0.9, 0.999, 1e-8, 0.01, false, decoupled));
      };
      check_against_eager({p, g, m, v, vmax, step}, adam, 1e-5);
      std::vector<TensorType> types;
      for (const Tensor& t : {p, g, m, v, vmax, step}) types.push_back(type_of(t));
      std::string fused = codegen::compile_stage_ir(trace_text(types, adam), "fused");
      CHECK(count(fused, "linalg.generic") == 1);
    }
}

TEST_CASE("cross_entropy, nll_loss and their backward ops equal eager", "[lowering]") {
  Tensor x = randn({6, 5}) * 2.0;
  Tensor t = ints({6}, {0, 4, 2, -100, 1, 4});
  Tensor w = randn({5}).abs() + 0.5;
  for (const char* red : {"mean", "sum", "none"})
    for (bool weighted : {false, true}) {
      INFO(red << (weighted ? " weighted" : ""));
      Fn f = [=](auto& a) -> std::vector<Tensor> {
        Tensor weight = weighted ? a[2] : Tensor();
        Tensor loss = nn::functional::cross_entropy(a[0], a[1], weight, -100, red, 0.0);
        Tensor g = std::string(red) == "none" ? a[3] : a[3].sum();
        return {loss, nn::functional::cross_entropy_backward(g, a[0], a[1], weight, -100, red, 0.0, false)[0]};
      };
      check_against_eager({x, t, w, randn({6})}, f, 1e-5);
      Fn nll = [=](auto& a) -> std::vector<Tensor> {
        Tensor weight = weighted ? a[2] : Tensor();
        Tensor logp = log_softmax(a[0], 1);
        Tensor loss = nn::functional::nll_loss(logp, a[1], weight, -100, red);
        Tensor g = std::string(red) == "none" ? a[3] : a[3].sum();
        return {loss, nn::functional::nll_loss_backward(g, logp, a[1], weight, -100, red)};
      };
      check_against_eager({x, t, w, randn({6})}, nll, 1e-5);
    }
}

namespace {
// What the lowering emits, per its contract: in the function, only generics,
// tensor.empty, arith.constant, expand/collapse_shape and the kiln ops left;
// each generic's results indexed by projected permutations of all its
// parallel loops (and, for a result written every iteration such as
// softmax's exp values, of its reduction loops too).
void check_contract(mlir::ModuleOp module) {
  module.walk([](mlir::func::FuncOp func) {
    for (mlir::Operation& op : func.getBody().getOps()) {
      llvm::StringRef name = op.getName().getStringRef();
      INFO(name.str());
      CHECK((name.starts_with("kiln.") || llvm::is_contained({"linalg.generic", "tensor.empty", "arith.constant",
                                                              "tensor.expand_shape", "tensor.collapse_shape",
                                                              "func.return"},
                                                             name)));
      auto generic = mlir::dyn_cast<mlir::linalg::GenericOp>(op);
      if (!generic) continue;
      for (mlir::OpOperand& init : generic.getDpsInitsMutable()) {
        mlir::AffineMap map = generic.getMatchingIndexingMap(&init);
        CHECK(map.isProjectedPermutation());
        llvm::SmallVector<unsigned> parallel, used;
        generic.getParallelDims(parallel);
        for (mlir::AffineExpr e : map.getResults()) used.push_back(mlir::cast<mlir::AffineDimExpr>(e).getPosition());
        llvm::sort(used);
        CHECK(std::includes(used.begin(), used.end(), parallel.begin(), parallel.end()));
      }
    }
  });
}

// The ops of a traced module that lower_to_linalg leaves, as "op: reason";
// checks the contract after lowering and after fusion.
std::vector<std::string> left_ops(const std::string& text) {
  auto context = ir::make_context();
  mlir::OwningOpRef<mlir::ModuleOp> module = mlir::parseSourceString<mlir::ModuleOp>(text, context.get());
  REQUIRE(module);
  passes::simplify(*module);
  std::vector<std::string> left;
  for (const passes::NotLowered& n : passes::lower_to_linalg(*module)) left.push_back(n.op + ": " + n.reason);
  REQUIRE(mlir::succeeded(mlir::verify(*module)));
  check_contract(*module);
  passes::fuse_elementwise(*module);
  REQUIRE(mlir::succeeded(mlir::verify(*module)));
  check_contract(*module);
  return left;
}
}  // namespace

TEST_CASE("every lowered op keeps the emission contract", "[lowering]") {
  std::string text = trace_text(
      {{{4, 1, 6}, DType::Float32}, {{5, 6}, DType::Float32}, {{6}, DType::Float32}, {{4}, DType::Int64},
       {{5, 6}, DType::Float64}},
      [](auto& a) -> std::vector<Tensor> {
        Tensor h = a[0] * a[1] + a[2];  // (4, 5, 6)
        Tensor x2 = reshape(h, {20, 6});
        return {sum(h, {0, 2}, true), mean(h, {1}), amax(h, {0}), var(h, {2}, 1, true), kiln::std(h, {0, 1}, 0, false),
                logsumexp(h, {1}), any(gt(h, 0), {2}), softmax(h, 0), log_softmax(h, -1),
                layer_norm(h, {5, 6}, Tensor(), Tensor(), 1e-5), layer_norm(h, {6}, a[2], a[2], 1e-5),
                permute(h, {2, 0, 1}), slice(h, 1, 1, 4, 2), select(h, 2, 3), narrow(h, 0, 1, 2), flatten(h, 0, 1),
                unsqueeze(x2, 1), nn::functional::cross_entropy(select(h, 2, 0), a[3], Tensor(), -100, "mean", 0.0),
                nn::functional::mse_loss(a[1], a[4], "sum"), to_dtype(h, DType::Int32) * 3};
      });
  std::vector<std::string> left = left_ops(text);
  for (const std::string& l : left) FAIL_CHECK(l);
}

TEST_CASE("a training step lowers except its matmuls and the views feeding them", "[lowering]") {
  // An MLP layer's step as the tracer records it: linear, relu, cross_entropy,
  // their backward ops, the weight gradient through a transpose, the bias
  // gradient as a sum, and the SGD update.
  std::string text = trace_text({{{8, 5}, DType::Float32}, {{8}, DType::Int64}, {{3, 5}, DType::Float32},
                                 {{3}, DType::Float32}, {{3, 5}, DType::Float32}},
                                [](auto& a) -> std::vector<Tensor> {
                                  const Tensor &x = a[0], &t = a[1], &w = a[2], &b = a[3], &buf = a[4];
                                  Tensor y = relu(nn::functional::linear(x, w, b));
                                  Tensor loss = nn::functional::cross_entropy(y, t, Tensor(), -100, "mean", 0.0);
                                  Tensor g = nn::functional::cross_entropy_backward(full_like(loss, 1.0), y, t, Tensor(),
                                                                                    -100, "mean", 0.0, false)[0];
                                  g = where(gt(y, 0), g, Scalar(0.0));
                                  Tensor gw = matmul(transpose(g, 0, 1), x), gb = sum(g, {0});
                                  auto attrs = make_attrs("lr, momentum, dampening, weight_decay, nesterov, maximize",
                                                          0.1, 0.9, 0.0, 0.0, false, false);
                                  std::vector<Tensor> out = op_def("sgd_step").run({w, gw, buf}, attrs);
                                  out.push_back(op_def("sgd_step").run({b, gb, Tensor()}, attrs)[0]);
                                  out.push_back(loss);
                                  return out;
                                });
  std::vector<std::string> left = left_ops(text);
  INFO(text);
  REQUIRE(left.size() == 3);
  CHECK_THAT(left[0], Contains("kiln.linear: stays a kiln op"));
  CHECK_THAT(left[1], Contains("kiln.permute: a view feeding only matmul"));
  CHECK_THAT(left[2], Contains("kiln.matmul: stays a kiln op"));
}

// A tool, not a check: `KILN_IR_FILE=step.mlir kiln_mlir_tests "[.report]" -s`
// lists the ops of a traced function (f.lower(...).ir("traced") from Python)
// that stay kiln ops, and why.
TEST_CASE("report the ops of $KILN_IR_FILE that do not lower", "[.report]") {
  const char* path = std::getenv("KILN_IR_FILE");
  REQUIRE(path != nullptr);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  auto context = ir::make_context();
  mlir::OwningOpRef<mlir::ModuleOp> module = mlir::parseSourceString<mlir::ModuleOp>(text.str(), context.get());
  REQUIRE(module);
  passes::simplify(*module);
  for (const passes::NotLowered& n : passes::lower_to_linalg(*module))
    WARN(n.op << " at " << n.location << ": " << n.reason);
  passes::fuse_elementwise(*module);
  REQUIRE(mlir::succeeded(mlir::verify(*module)));
  size_t generics = 0;
  module->walk([&](mlir::Operation* op) { generics += op->getName().getStringRef() == "linalg.generic"; });
  WARN(generics << " linalg.generic after fusion");
  if (std::getenv("KILN_PRINT_FUSED")) module->print(llvm::outs());
}
