#include "codegen/cpu_compiler.h"

#include <algorithm>
#include <dlfcn.h>
#include <sys/stat.h>

#include <fmt/format.h>
#include <chrono>
#include <cmath>
#include <utility>
#include <optional>

#include <mlir/Conversion/AffineToStandard/AffineToStandard.h>
#include <mlir/Conversion/ArithToLLVM/ArithToLLVM.h>
#include <mlir/Conversion/BufferizationToMemRef/BufferizationToMemRef.h>
#include <mlir/Conversion/ControlFlowToLLVM/ControlFlowToLLVM.h>
#include <mlir/Conversion/FuncToLLVM/ConvertFuncToLLVMPass.h>
#include <mlir/Conversion/MathToLLVM/MathToLLVM.h>
#include <mlir/Conversion/MathToLibm/MathToLibm.h>
#include <mlir/Conversion/MemRefToLLVM/MemRefToLLVM.h>
#include <mlir/Conversion/ReconcileUnrealizedCasts/ReconcileUnrealizedCasts.h>
#include <mlir/Conversion/SCFToControlFlow/SCFToControlFlow.h>
#include <mlir/Dialect/Bufferization/Pipelines/Passes.h>
#include <mlir/Dialect/Bufferization/Transforms/OneShotAnalysis.h>
#include <mlir/Dialect/Bufferization/Transforms/Passes.h>
#include <mlir/Dialect/Arith/IR/Arith.h>
#include <mlir/Dialect/Func/IR/FuncOps.h>
#include <mlir/Dialect/SCF/IR/SCF.h>
#include <mlir/Dialect/Tensor/IR/Tensor.h>
#include <mlir/Dialect/Utils/StaticValueUtils.h>
#include <mlir/Interfaces/SideEffectInterfaces.h>
#include <mlir/Dialect/LLVMIR/LLVMDialect.h>
#include <mlir/Dialect/LLVMIR/Transforms/Passes.h>
#include <mlir/Dialect/Linalg/Passes.h>
#include <mlir/Dialect/Math/IR/Math.h>
#include <mlir/Dialect/Math/Transforms/Approximation.h>
#include <mlir/Dialect/Math/Transforms/Passes.h>
#include <mlir/Dialect/MemRef/IR/MemRef.h>
#include <mlir/Dialect/MemRef/Transforms/Passes.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/Diagnostics.h>
#include <mlir/IR/Matchers.h>
#include <mlir/IR/MLIRContext.h>
#include <mlir/Parser/Parser.h>
#include <mlir/Pass/PassManager.h>
#include <mlir/Transforms/GreedyPatternRewriteDriver.h>
#include <mlir/Transforms/Passes.h>

#include "ir/dialect.h"
#include "ir/dialects.h"
#include "passes/lower_to_linalg.h"
#include "passes/decompose.h"
#include "passes/outline_kernels.h"
#include "codegen/disk_cache.h"
#include "codegen/program_io.h"
#include "codegen/prefetch_rows.h"
#include "codegen/promote_accumulators.h"
#include "codegen/streaming_stores.h"
#include "runtime/version.h"
#include "passes/simplify.h"

namespace kiln::codegen {
namespace {

class Diagnostics {
 public:
  explicit Diagnostics(mlir::MLIRContext* context)
      : handler_(context, [this](mlir::Diagnostic& d) {
          std::string loc;
          llvm::raw_string_ostream os(loc);
          d.getLocation().print(os);
          text_ += (text_.empty() ? "" : "\n") + loc + ": " + d.str();
          return mlir::success();
        }) {}
  std::string take() { return std::exchange(text_, {}); }

 private:
  std::string text_;
  mlir::ScopedDiagnosticHandler handler_;
};

std::string compiler_id();

// The arithmetic of a float32 approximation, built where `op` was and
// shaped like its result (constants splat for a vector type).
struct Approximation {
  mlir::PatternRewriter& rewriter;
  mlir::Location loc;
  mlir::Type type;

  mlir::Value splat(mlir::Type t, mlir::TypedAttr a) const {
    mlir::Attribute value = a;
    if (auto shaped = mlir::dyn_cast<mlir::ShapedType>(t)) value = mlir::SplatElementsAttr::get(shaped, a);
    return rewriter.create<mlir::arith::ConstantOp>(loc, mlir::cast<mlir::TypedAttr>(value));
  }
  mlir::Value constant(double v) const { return splat(type, rewriter.getF32FloatAttr(static_cast<float>(v))); }
  mlir::Value fma(mlir::Value a, mlir::Value b, mlir::Value c) const {
    return rewriter.create<mlir::math::FmaOp>(loc, a, b, c);
  }
  // sum of coefficients[i] * x^(n-1-i), by Horner's rule (highest power first)
  mlir::Value polynomial(mlir::Value x, llvm::ArrayRef<double> coefficients) const {
    mlir::Value p = constant(coefficients.front());
    for (double c : coefficients.drop_front()) p = fma(p, x, constant(c));
    return p;
  }
};

// float32 erf(x) as x * P(x^2) / Q(x^2) on x clamped to [-4, 4] (the
// rational approximation of Eigen and XLA, max error ~1e-7): 13 FMAs and a
// division, less than half the work of MLIR's piecewise polynomial, which
// made gelu compute-bound.
struct RationalErf : mlir::OpRewritePattern<mlir::math::ErfOp> {
  using OpRewritePattern::OpRewritePattern;
  mlir::LogicalResult matchAndRewrite(mlir::math::ErfOp op, mlir::PatternRewriter& rewriter) const override {
    if (!mlir::getElementTypeOrSelf(op.getType()).isF32()) return mlir::failure();
    Approximation a{rewriter, op.getLoc(), op.getType()};
    // erf(c * y) (gelu's erf(x / sqrt 2)) takes c into the coefficients:
    // with x = c y, x^2 = c^2 y^2 and x P = y (c P).
    mlir::Value y = op.getOperand();
    double c = 1.0;
    if (auto mul = y.getDefiningOp<mlir::arith::MulFOp>()) {
      for (int side = 0; side < 2; ++side) {
        mlir::FloatAttr scale;
        if (mlir::matchPattern(mul->getOperand(side), mlir::m_Constant(&scale)) && scale.getValueAsDouble() > 0) {
          c = scale.getValueAsDouble();
          y = mul->getOperand(1 - side);
          break;
        }
      }
    }
    // coefficients of polynomials in x^2 (highest power first), rescaled to
    // y^2 and multiplied by `extra`
    auto in_y = [c](llvm::ArrayRef<double> k, double extra) {
      llvm::SmallVector<double> out;
      for (size_t i = 0; i < k.size(); ++i) out.push_back(k[i] * std::pow(c * c, double(k.size() - 1 - i)) * extra);
      return out;
    };
    const double alpha[] = {-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                            -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                            -1.60960333262415e-02};
    const double beta[] = {-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                           -7.37332916720468e-03, -1.42647390514189e-02};
    mlir::Value x = rewriter.create<mlir::arith::MinimumFOp>(a.loc, y, a.constant(4.0 / c));
    x = rewriter.create<mlir::arith::MaximumFOp>(a.loc, x, a.constant(-4.0 / c));
    mlir::Value x2 = rewriter.create<mlir::arith::MulFOp>(a.loc, x, x);
    mlir::Value p = rewriter.create<mlir::arith::MulFOp>(a.loc, x, a.polynomial(x2, in_y(alpha, c)));
    mlir::Value q = a.polynomial(x2, in_y(beta, 1.0));
    // q <= beta[4] < 0 on the clamped range, so the quotient may use the
    // host's reciprocal estimate refined by a Newton step (exact to ~1 ulp)
    // instead of a full-latency division that would dominate gelu.
    auto estimate = mlir::arith::FastMathFlags::arcp | mlir::arith::FastMathFlags::ninf;
    rewriter.replaceOpWithNewOp<mlir::arith::DivFOp>(op, p, q, estimate);
    return mlir::success();
  }
};

// float32 exp(x) = 2^n * e^r with n = round(x / ln 2), in 15 vector
// operations against the 20 of MLIR's approximation, which made softmax
// compute-bound. n is rounded by adding 1.5 * 2^23 (plus the exponent bias
// less one) in an FMA, so k's low mantissa bits already hold n + 126 and a
// shift makes them the exponent of 2^(n-1); the polynomial returns 2 e^r
// (|r| <= ln2 / 2). x is clamped above where the product overflows to +inf
// anyway; below -87 (where 2^(n-1) would not be a normal float) the result
// is 0. NaN stays NaN.
struct FastExp : mlir::OpRewritePattern<mlir::math::ExpOp> {
  using OpRewritePattern::OpRewritePattern;
  mlir::LogicalResult matchAndRewrite(mlir::math::ExpOp op, mlir::PatternRewriter& rewriter) const override {
    mlir::Type type = op.getType();
    if (!mlir::getElementTypeOrSelf(type).isF32()) return mlir::failure();
    Approximation a{rewriter, op.getLoc(), type};
    mlir::Type int_type = rewriter.getI32Type();
    if (auto shaped = mlir::dyn_cast<mlir::ShapedType>(type)) int_type = shaped.clone(int_type);
    mlir::Value x = op.getOperand();
    // softmax's exp(x - max) needs no clamp (passes/lower_to_linalg.cpp)
    mlir::Value xc = op->hasAttr("kiln.nonpositive") ? x : rewriter.create<mlir::arith::MinimumFOp>(a.loc, x, a.constant(88.8));
    mlir::Value shifter = a.constant(12582912.0 + 126.0);  // 1.5 * 2^23 + (127 - 1)
    mlir::Value k = a.fma(xc, a.constant(1.44269504088896341), shifter);
    mlir::Value n = rewriter.create<mlir::arith::SubFOp>(a.loc, k, shifter);
    mlir::Value r = a.fma(n, a.constant(-0.693359375), xc);  // ln 2 in two parts (Cody-Waite)
    r = a.fma(n, a.constant(2.12194440e-4), r);
    // 2 e^r: degree 6, fitted for relative error on [-ln2/2, ln2/2]
    // (1.9e-9; 1.2 ulp evaluated in float32)
    mlir::Value p = a.polynomial(r, {2.7674061505e-03, 1.6749682030e-02, 8.3336447079e-02, 3.3332839734e-01,
                                     9.9999984166e-01, 2.0000000728e+00, 2.0000000011e+00});
    mlir::Value bits = rewriter.create<mlir::arith::BitcastOp>(a.loc, int_type, k);
    bits = rewriter.create<mlir::arith::ShLIOp>(a.loc, bits, a.splat(int_type, rewriter.getI32IntegerAttr(23)));
    mlir::Value scale = rewriter.create<mlir::arith::BitcastOp>(a.loc, type, bits);
    mlir::Value e = rewriter.create<mlir::arith::MulFOp>(a.loc, p, scale);
    mlir::Value tiny =
        rewriter.create<mlir::arith::CmpFOp>(a.loc, mlir::arith::CmpFPredicate::OLT, x, a.constant(-87.0));
    rewriter.replaceOpWithNewOp<mlir::arith::SelectOp>(op, tiny, a.constant(0.0), e);
    return mlir::success();
  }
};

int stage_index(std::string_view stage) {
  for (int i = 0; i < 6; ++i)
    if (stage == kCompileStages[i]) return i;
  fail<ValueError>(
      "no compile stage '{}'; the stages are 'decomposed', 'linalg', 'fused', 'bufferized', 'llvm', 'optimized'",
      stage);
}


std::string type_text(mlir::Type t) {
  std::string s;
  llvm::raw_string_ostream os(s);
  t.print(os);
  return s;
}

// One compilation: the module, walked through the stages in order.
struct Compilation {
  std::unique_ptr<mlir::MLIRContext> context = ir::make_context();
  Diagnostics diags{context.get()};
  mlir::OwningOpRef<mlir::ModuleOp> module;
  mlir::func::FuncOp entry;
  std::string display;  // the function's name, for messages
  Program program;
  std::vector<std::string> host_ops;

  explicit Compilation(std::string_view source) {
    mlir::ParserConfig config(context.get());
    module = mlir::parseSourceString<mlir::ModuleOp>(llvm::StringRef(source.data(), source.size()), config, "kiln-ir");
    if (!module) fail<IrError>("the kiln IR does not parse:\n{}", diags.take());
    auto funcs = llvm::to_vector(module->getOps<mlir::func::FuncOp>());
    if (funcs.size() != 1) fail<NotCompilable>("expected one function in the module, got {}", funcs.size());
    entry = funcs[0];
    display = entry.getName().str();
    entry.walk([&](mlir::Operation* op) {
      if (op->getNumRegions() != 0 && op != entry.getOperation())
        fail<NotCompilable>("{}: not compiled: {} at {}: control flow is not compiled yet", display,
                            op->getName().getStringRef().str(), ir::location_text(op->getLoc()));
    });
  }

  void run(mlir::PassManager& pm, std::string_view what) {
    if (mlir::failed(pm.run(*module))) fail<JitError>("kiln::codegen: {} failed:\n{}", what, diags.take());
  }

  bool simplified = false;
  void simplify() {
    if (!simplified) passes::simplify(*module);
    simplified = true;
  }

  // Runs stages 0..last (kCompileStages), after simplification.
  void to(int last) {
    simplify();
    passes::decompose(*module);
    if (last == 0) return;
    for (const passes::NotLowered& op : passes::lower_to_linalg(*module))
      host_ops.push_back(fmt::format("{} at {}: {}", op.op, op.location, op.reason));
    if (last == 1) return;
    passes::fuse_elementwise(*module);
    passes::outline_kernels(*module);
    write_back_in_place();
    if (last == 2) return;
    extract_program();
    bufferize();
    if (last == 3) return;
    lower_to_llvm();
  }

  // A captured tensor's new value (an optimizer step's parameter, its
  // moments) is written by its kernel into the tensor's own buffer, with no
  // copy afterwards, when nothing reads the old value later: the generic
  // that computes it reads the capture elementwise (same indexing as its
  // output) and is its only reader in the kernel. The kernel records
  // {result, operand} pairs in kiln.in_place; the runtime then binds the
  // result to the operand's tensor.
  void write_back_in_place() {
    llvm::DenseMap<int64_t, mlir::BlockArgument> capture_arg;
    for (unsigned i = 0; i < entry.getNumArguments(); ++i)
      if (auto c = entry.getArgAttrOfType<mlir::IntegerAttr>(i, "kiln.capture")) capture_arg[c.getInt()] = entry.getArgument(i);
    auto ret = mlir::cast<mlir::func::ReturnOp>(entry.getBody().front().getTerminator());
    llvm::DenseMap<mlir::Operation*, llvm::SmallVector<int64_t>> pairs;  // kernel -> {result, operand}...
    for (unsigned r = 0; r < ret.getNumOperands(); ++r) {
      auto target = entry.getResultAttrOfType<mlir::IntegerAttr>(r, "kiln.writeback");
      auto it = target ? capture_arg.find(target.getInt()) : capture_arg.end();
      if (it == capture_arg.end()) continue;
      mlir::BlockArgument captured = it->second;
      auto call = ret.getOperand(r).getDefiningOp<mlir::func::CallOp>();
      if (!call) continue;
      if (llvm::any_of(captured.getUsers(), [&](mlir::Operation* u) { return u != call && call->isBeforeInBlock(u); }))
        continue;  // the old value is read after the update
      auto operand = llvm::find(call.getOperands(), captured);
      if (operand == call.getOperands().end()) continue;
      auto j = static_cast<unsigned>(operand - call.getOperands().begin());
      unsigned k = mlir::cast<mlir::OpResult>(ret.getOperand(r)).getResultNumber();
      auto kernel = module->lookupSymbol<mlir::func::FuncOp>(call.getCallee());
      mlir::BlockArgument arg = kernel.getArgument(j);
      mlir::Value result = kernel.getBody().front().getTerminator()->getOperand(k);
      auto generic = result.getDefiningOp<mlir::linalg::GenericOp>();
      if (!generic || !arg.hasOneUse() || arg.getUses().begin()->getOwner() != generic.getOperation()) continue;
      mlir::OpOperand& read = *arg.getUses().begin();
      unsigned n = mlir::cast<mlir::OpResult>(result).getResultNumber();
      mlir::OpOperand* init = generic.getDpsInitOperand(n);
      if (!generic.isDpsInput(&read) || !init->get().getDefiningOp<mlir::tensor::EmptyOp>() ||
          !generic.getRegionOutputArgs()[n].use_empty() || arg.getType() != init->get().getType() ||
          generic.getMatchingIndexingMap(&read) != generic.getMatchingIndexingMap(init))
        continue;
      init->set(arg);
      pairs[kernel.getOperation()].append({static_cast<int64_t>(k), static_cast<int64_t>(j)});
    }
    for (auto& [kernel, list] : pairs)
      kernel->setAttr("kiln.in_place", mlir::DenseI64ArrayAttr::get(context.get(), list));
  }

  // The entry function becomes the Program; the module keeps the kernels.
  void extract_program() {
    llvm::DenseMap<mlir::Value, ProgramValueId> ids;
    auto id_of = [&](mlir::Value v) {
      if (auto it = ids.find(v); it != ids.end()) return it->second;
      std::optional<TensorType> type = ir::kiln_type(v.getType());
      if (!type) fail<NotCompilable>("{}: not compiled: a value of type {}", display, type_text(v.getType()));
      auto id = static_cast<ProgramValueId>(program.values.size());
      program.values.push_back(*type);
      ids[v] = id;
      return id;
    };
    for (mlir::Value arg : entry.getArguments()) program.arguments.push_back(id_of(arg));
    llvm::StringMap<int> kernel_index;
    for (mlir::Operation& op : entry.getBody().front()) {
      if (auto ret = mlir::dyn_cast<mlir::func::ReturnOp>(op)) {
        for (mlir::Value v : ret.getOperands()) program.results.push_back(id_of(v));
        continue;
      }
      Step step;
      step.location = ir::location_text(op.getLoc());
      if (auto call = mlir::dyn_cast<mlir::func::CallOp>(op)) {
        step.kind = Step::Kind::Kernel;
        auto [it, added] = kernel_index.try_emplace(call.getCallee(), static_cast<int>(program.kernels.size()));
        if (added) {
          auto kernel = module->lookupSymbol<mlir::func::FuncOp>(call.getCallee());
          program.kernels.push_back({.symbol = call.getCallee().str(),
                                     .tile_extent = kernel->getAttrOfType<mlir::IntegerAttr>("kiln.tile_extent").getInt(),
                                     .work = kernel->getAttrOfType<mlir::IntegerAttr>("kiln.work").getInt()});
          if (auto in_place = kernel->getAttrOfType<mlir::DenseI64ArrayAttr>("kiln.in_place"))
            for (size_t i = 0; i + 1 < in_place.size(); i += 2)
              program.kernels.back().in_place.emplace_back(static_cast<int>(in_place[i]), static_cast<int>(in_place[i + 1]));
        }
        step.kernel = it->second;
      } else if (auto constant = mlir::dyn_cast<mlir::arith::ConstantOp>(op)) {
        auto dense = mlir::dyn_cast<mlir::DenseElementsAttr>(constant.getValue());
        if (!dense) fail<NotCompilable>("{}: not compiled: a constant at {} is not a dense tensor", display, step.location);
        step.kind = Step::Kind::Constant;
        step.constant = ir::tensor_from_attr(dense);
      } else if (mlir::isa<mlir::tensor::ExpandShapeOp, mlir::tensor::CollapseShapeOp>(op)) {
        step.kind = Step::Kind::Reshape;
      } else if (std::optional<ir::EagerCall> call = ir::eager_call(&op)) {
        step.kind = Step::Kind::Host;
        step.op = call->def;
        step.attrs = std::move(call->attrs);
        for (int operand : call->operands)
          step.inputs.push_back(operand < 0 ? kAbsent : id_of(op.getOperand(static_cast<unsigned>(operand))));
      } else {
        fail<NotCompilable>("{}: not compiled: {} at {} is not something the CPU program runs", display,
                            op.getName().getStringRef().str(), step.location);
      }
      if (step.kind != Step::Kind::Host)
        for (mlir::Value v : op.getOperands()) step.inputs.push_back(id_of(v));
      for (mlir::Value v : op.getResults()) step.outputs.push_back(id_of(v));
      program.steps.push_back(std::move(step));
    }
    program.compute_liveness();
    entry.erase();
    for (auto kernel : module->getOps<mlir::func::FuncOp>()) {
      kernel.setPublic();
      // Inputs belong to the caller: bufferization must not write into them,
      // except the captured tensors updated in place (write_back_in_place).
      auto in_place = kernel->getAttrOfType<mlir::DenseI64ArrayAttr>("kiln.in_place");
      for (unsigned i = 0; i < kernel.getNumArguments(); ++i) {
        bool written = false;
        for (size_t p = 1; in_place && p < in_place.size(); p += 2) written |= in_place[p] == static_cast<int64_t>(i);
        kernel.setArgAttr(i, "bufferization.writable", mlir::BoolAttr::get(context.get(), written));
      }
    }
  }

  void bufferize() {
    // The kernel's inputs come first; its fresh outputs become the
    // out-parameters after them (mark_streaming_stores needs to know which).
    mlir::OpBuilder b(context.get());
    for (auto kernel : module->getOps<mlir::func::FuncOp>())
      kernel->setAttr("kiln.inputs", b.getI64IntegerAttr(kernel.getNumArguments()));
    mlir::PassManager pm(context.get());
    pm.addPass(mlir::bufferization::createEmptyTensorToAllocTensorPass());
    mlir::bufferization::OneShotBufferizationOptions options;
    options.bufferizeFunctionBoundaries = true;
    options.setFunctionBoundaryTypeConversion(mlir::bufferization::LayoutMapOption::IdentityLayoutMap);
    pm.addPass(mlir::bufferization::createOneShotBufferizePass(options));
    // Returned buffers allocated in a kernel become its out-parameters, which
    // the runtime allocates (no copy).
    mlir::bufferization::BufferResultsToOutParamsOpts out_params;
    out_params.hoistStaticAllocs = true;
    // A result written into an argument (an in-place update) is no result.
    pm.addPass(mlir::bufferization::createDropEquivalentBufferResultsPass());
    pm.addPass(mlir::bufferization::createBufferResultsToOutParamsPass(out_params));
    pm.addPass(mlir::createCanonicalizerPass());
    mlir::bufferization::BufferDeallocationPipelineOptions dealloc;
    mlir::bufferization::buildBufferDeallocationPipeline(pm, dealloc);
    pm.addPass(mlir::createBufferizationToMemRefPass());
    pm.addPass(mlir::createCanonicalizerPass());
    run(pm, "bufferization");
    for (auto kernel : module->getOps<mlir::func::FuncOp>()) {
      // Every buffer is its own allocation (inputs may repeat, but are only
      // read), so LLVM need not guard its vector loops with alias checks.
      for (unsigned i = 0; i < kernel.getNumArguments(); ++i) {
        kernel.removeArgAttr(i, "bufferization.writable");
        kernel.setArgAttr(i, "llvm.noalias", b.getUnitAttr());
      }
      // The outer-loop range [begin, end) this call runs (see tile_loops).
      kernel.insertArgument(0, b.getIndexType(), {}, kernel.getLoc());
      kernel.insertArgument(1, b.getIndexType(), {}, kernel.getLoc());
      kernel->setAttr("llvm.emit_c_interface", b.getUnitAttr());
    }
  }

  // A tileable kernel's top-level loops all run its outer parallel dim
  // [0, extent): they now run [begin, end), the range the runtime hands
  // each thread. Anything else at top level that has effects (other than a
  // buffer each call allocates for itself) makes the kernel run whole.
  void tile_loops() {
    for (auto kernel : module->getOps<mlir::func::FuncOp>()) {
      auto attr = kernel->getAttrOfType<mlir::IntegerAttr>("kiln.tile_extent");
      int64_t extent = attr ? attr.getInt() : 0;
      if (extent == 0) {
        if (attr) tile_columns(kernel);
        continue;
      }
      mlir::Block& body = kernel.getBody().front();
      llvm::SmallVector<mlir::scf::ForOp> loops;
      bool ok = true;
      for (mlir::Operation& op : body) {
        if (auto loop = mlir::dyn_cast<mlir::scf::ForOp>(op)) {
          auto lb = mlir::getConstantIntValue(loop.getLowerBound());
          auto ub = mlir::getConstantIntValue(loop.getUpperBound());
          auto st = mlir::getConstantIntValue(loop.getStep());
          ok &= lb == 0 && ub == extent && st == 1;
          loops.push_back(loop);
        } else if (!mlir::isa<mlir::func::ReturnOp, mlir::memref::AllocOp, mlir::memref::AllocaOp,
                              mlir::memref::DeallocOp>(op) &&
                   !mlir::isMemoryEffectFree(&op)) {
          ok = false;
        }
      }
      if (!ok || loops.empty()) extent = 0;
      for (mlir::scf::ForOp loop : loops) {
        if (extent == 0) break;
        loop.getLowerBoundMutable().assign(body.getArgument(0));
        loop.getUpperBoundMutable().assign(body.getArgument(1));
      }
      kernel->setAttr("kiln.tile_extent", mlir::IntegerAttr::get(attr.getType(), extent));
      for (Kernel& k : program.kernels)
        if (k.symbol == kernel.getName()) k.tile_extent = extent;
    }
  }

  // A kernel whose outer loop reduces (a column sum: for i { for j {
  // acc[j] += x[i, j] } }) has no outer parallel loop to split. When every
  // top-level loop runs the same columns [0, n) (directly, or inside a
  // loop over rows) and every buffer the kernel writes is only touched at
  // the column being run, the column loops run [begin, end) instead: each
  // call then sweeps all rows over its own columns (runtime: one call per
  // task, Kernel::columns).
  void tile_columns(mlir::func::FuncOp kernel) {
    mlir::Block& body = kernel.getBody().front();
    llvm::SmallVector<mlir::scf::ForOp> column_loops;
    std::optional<int64_t> n;
    auto runs_whole = [](mlir::scf::ForOp loop) -> std::optional<int64_t> {
      if (mlir::getConstantIntValue(loop.getLowerBound()) != 0 || mlir::getConstantIntValue(loop.getStep()) != 1 ||
          !loop.getInitArgs().empty())
        return std::nullopt;
      return mlir::getConstantIntValue(loop.getUpperBound());
    };
    auto nested_loops = [](mlir::scf::ForOp loop) {
      return llvm::to_vector(loop.getBody()->getOps<mlir::scf::ForOp>());
    };
    for (mlir::Operation& op : body) {
      auto loop = mlir::dyn_cast<mlir::scf::ForOp>(op);
      if (!loop) {
        if (!mlir::isa<mlir::func::ReturnOp>(op) && !mlir::isMemoryEffectFree(&op)) return;
        continue;
      }
      auto inner = nested_loops(loop);
      mlir::scf::ForOp columns = loop;
      if (inner.size() == 1) {  // a loop over rows around the column loop
        columns = inner.front();
        if (!runs_whole(loop)) return;
        for (mlir::Operation& other : *loop.getBody())
          if (&other != columns.getOperation() && !mlir::isMemoryEffectFree(&other)) return;
      } else if (!inner.empty()) {
        return;
      }
      std::optional<int64_t> extent = runs_whole(columns);
      if (!extent || !nested_loops(columns).empty() || (n && *n != *extent)) return;
      n = extent;
      column_loops.push_back(columns);
    }
    if (!n || *n < 2 * kMinColumnsPerCall) return;
    // every access to a written buffer is at the column being run
    llvm::DenseSet<mlir::Value> written;
    kernel.walk([&](mlir::memref::StoreOp store) { written.insert(store.getMemRef()); });
    bool own_columns = true;
    kernel.walk([&](mlir::Operation* op) {
      mlir::Value memref;
      mlir::ValueRange index;
      if (auto load = mlir::dyn_cast<mlir::memref::LoadOp>(op)) memref = load.getMemRef(), index = load.getIndices();
      if (auto store = mlir::dyn_cast<mlir::memref::StoreOp>(op)) memref = store.getMemRef(), index = store.getIndices();
      if (!memref) {
        for (mlir::Value v : op->getOperands()) own_columns &= !written.contains(v);  // a view, a copy...
        return;
      }
      if (!written.contains(memref)) return;
      auto loop = op->getParentOfType<mlir::scf::ForOp>();
      own_columns &= loop && llvm::is_contained(column_loops, loop) && !index.empty() &&
                     index.back() == loop.getInductionVar() &&
                     llvm::count(index, loop.getInductionVar()) == 1;
    });
    if (!own_columns) return;
    for (mlir::scf::ForOp loop : column_loops) {
      loop.getLowerBoundMutable().assign(body.getArgument(0));
      loop.getUpperBoundMutable().assign(body.getArgument(1));
    }
    kernel->setAttr("kiln.tile_extent", mlir::IntegerAttr::get(mlir::IntegerType::get(context.get(), 64), *n));
    kernel->setAttr("kiln.tile_columns", mlir::UnitAttr::get(context.get()));
    for (Kernel& k : program.kernels)
      if (k.symbol == kernel.getName()) k.tile_extent = *n, k.columns = true;
  }

  void lower_to_llvm() {
    {
      mlir::PassManager pm(context.get());
      pm.addNestedPass<mlir::func::FuncOp>(mlir::createConvertLinalgToLoopsPass());
      run(pm, "linalg to loops");
    }
    promote_accumulators(*module);
    tile_loops();
    mark_streaming_stores(*module);
    prefetch_next_rows(*module);
    {
      // Polynomial approximations of exp, tanh, log, erf, sin, ... (float32),
      // so that the loops they sit in vectorize instead of calling libm.
      mlir::RewritePatternSet patterns(context.get());
      patterns.add<RationalErf, FastExp>(context.get(), /*benefit=*/2);
      mlir::populateMathPolynomialApproximationPatterns(patterns);
      if (mlir::failed(mlir::applyPatternsAndFoldGreedily(*module, std::move(patterns))))
        fail<JitError>("kiln::codegen: math approximation did not converge:\n{}", diags.take());
    }
    mlir::PassManager pm(context.get());
    pm.addPass(mlir::memref::createExpandStridedMetadataPass());
    pm.addPass(mlir::createLowerAffinePass());
    pm.addPass(mlir::createConvertSCFToCFPass());
    pm.addPass(mlir::createConvertMathToLLVMPass());
    pm.addPass(mlir::createConvertMathToLibmPass());  // what has no LLVM intrinsic (tanh, erf in float64)
    pm.addPass(mlir::createFinalizeMemRefToLLVMConversionPass());
    pm.addPass(mlir::createArithToLLVMConversionPass());
    pm.addPass(mlir::createConvertFuncToLLVMPass());
    pm.addPass(mlir::createConvertControlFlowToLLVMPass());
    pm.addPass(mlir::createReconcileUnrealizedCastsPass());
    run(pm, "lowering to the llvm dialect");
    add_debug_info();
  }

  // Debug info from the ops' locations (the user's file:line): the object's
  // line table maps each kernel's instructions back to the Python source.
  // MLIR's pass reads plain file locations only (ours are fused with the
  // function's name), and LLVM wants one on every call in a function with
  // debug info (the C-interface wrappers' calls have none of their own): so
  // each function and op first gets the first file location inside its own,
  // or its function's, and the module the first kernel's file.
  void add_debug_info() {
    auto file_loc = [](mlir::Location loc) -> std::optional<mlir::FileLineColLoc> {
      std::optional<mlir::FileLineColLoc> found;
      loc->walk([&](mlir::Location inner) {
        if (auto f = mlir::dyn_cast<mlir::FileLineColLoc>(inner)) found = f;
        return found ? mlir::WalkResult::interrupt() : mlir::WalkResult::advance();
      });
      return found;
    };
    std::optional<mlir::FileLineColLoc> module_loc;
    for (auto fn : module->getOps<mlir::LLVM::LLVMFuncOp>()) {
      std::optional<mlir::FileLineColLoc> fn_loc = file_loc(fn.getLoc());
      if (!fn_loc) continue;
      if (!module_loc) module_loc = fn_loc;
      fn->setLoc(*fn_loc);
      fn.walk([&](mlir::Operation* op) { op->setLoc(file_loc(op->getLoc()).value_or(*fn_loc)); });
    }
    if (!module_loc) return;
    (*module)->setLoc(*module_loc);
    mlir::PassManager pm(context.get());
    pm.addPass(mlir::LLVM::createDIScopeForLLVMFuncOpPass());
    run(pm, "adding debug info");
  }

  // What compiled code depends on: the simplified IR (with the locations
  // that name kernels), the host, the compiler and its options.
  CacheKey cache_key() {
    return CacheKey{{{"ir", print(true)},
                     {"target", host_target_id()},
                     {"kiln", compiler_id()},
                     {"options", "cpu; O2; fuse-elementwise; outer-loop tiles"}}};
  }

  std::string print(bool locations) {
    mlir::OpPrintingFlags flags;
    if (locations) flags.enableDebugInfo(true, false);
    std::string text;
    llvm::raw_string_ostream os(text);
    module->print(os, flags);
    return text;
  }
};

}  // namespace

std::string compile_stage_ir(std::string_view kiln_module, std::string_view stage, bool locations) {
  int last = stage_index(stage);
  Compilation c(kiln_module);
  if (stage == "optimized") {
    c.to(stage_index("llvm"));
    return c.program.kernels.empty() ? "; no kernels: every op runs on the eager kernels\n"
                                     : optimized_llvm_ir(c.print(false));
  }
  c.to(last);
  return c.print(locations);
}

struct CpuFunction::Impl {
  Program program;
  std::vector<std::string> host_ops;
  std::optional<CpuJit> jit;
  double compile_ms = 0;
  bool from_cache = false;
  mutable std::atomic<int64_t> peak_bytes{0};
};

namespace {
// Identifies the compiler that produced cached code: kiln's version and the
// binary the compiler is linked into (its size and modification time), so a
// rebuilt compiler never loads its predecessor's code.
std::string compiler_id() {
  static const std::string id = [] {
    std::string binary = "unknown";
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&compiler_id), &info) && info.dli_fname) {
      struct stat st {};
      if (::stat(info.dli_fname, &st) == 0)
        binary = fmt::format("{}:{}:{}.{}", info.dli_fname, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    }
    return fmt::format("kiln {}; {}", kKilnVersion, binary);
  }();
  return id;
}

// A cache entry: the schedule, then the kernels' object code.
std::string pack(const Program& program, const std::vector<std::string>& notes, std::string_view object) {
  std::string schedule = serialize_program(program, notes);
  std::string blob = fmt::format("{:016x}", schedule.size());
  blob += schedule;
  blob += object;
  return blob;
}
}  // namespace

std::string specialize_ir(std::string_view kiln_module, const std::vector<Shape>& shapes) {
  Compilation c(kiln_module);
  mlir::func::FuncOp func = c.entry;
  KILN_CHECK(shapes.size() == func.getNumArguments(), ShapeError, "{}: {} argument shapes for {} arguments", c.display,
             shapes.size(), func.getNumArguments());
  mlir::Block& body = func.getBody().front();
  for (unsigned i = 0; i < func.getNumArguments(); ++i) {
    auto type = mlir::cast<mlir::RankedTensorType>(func.getArgument(i).getType());
    bool fits = type.getRank() == static_cast<int64_t>(shapes[i].size());
    for (int64_t d = 0; fits && d < type.getRank(); ++d)
      fits = type.isDynamicDim(d) || type.getDimSize(d) == shapes[i][static_cast<size_t>(d)];
    KILN_CHECK(fits, ShapeError, "{}: argument {} of type {} cannot take shape {}", c.display, i, type_text(type),
               shape_str(shapes[i]));
    body.getArgument(i).setType(mlir::RankedTensorType::get(shapes[i], type.getElementType()));
  }
  for (mlir::Operation& op : body) {
    if (auto ret = mlir::dyn_cast<mlir::func::ReturnOp>(op)) {
      func.setType(mlir::FunctionType::get(c.context.get(), body.getArgumentTypes(), ret.getOperandTypes()));
      continue;
    }
    if (!ir::eager_call(&op)) continue;  // kiln.constant: its type is its value's
    llvm::SmallVector<mlir::Type> types;
    if (mlir::failed(ir::infer_result_types(op.getName().stripDialect(), c.context.get(), op.getLoc(),
                                            op.getOperands(), op.getAttrDictionary(), types)))
      fail<ShapeError>("{}: specializing to the call's shapes failed:\n{}", c.display, c.diags.take());
    for (auto [result, type] : llvm::zip(op.getResults(), types)) result.setType(type);
  }
  return c.print(true);
}

CacheKey cpu_cache_key(std::string_view kiln_module) {
  Compilation c(kiln_module);
  c.simplify();
  return c.cache_key();
}

CpuFunction::CpuFunction(std::string_view kiln_module) : impl_(std::make_unique<Impl>()) {
  auto start = std::chrono::steady_clock::now();
  auto elapsed_ms = [&] {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  };
  Compilation c(kiln_module);
  c.simplify();
  CacheKey key = c.cache_key();
  DiskCache& cache = DiskCache::instance();
  if (std::optional<std::string> blob = cache.load(key)) {
    try {
      size_t n = blob->size() >= 16 ? std::stoull(blob->substr(0, 16), nullptr, 16) : blob->size();
      KILN_CHECK(blob->size() >= 16 + n, Error, "truncated entry");
      impl_->program = deserialize_program(std::string_view(*blob).substr(16, n), impl_->host_ops);
      if (!impl_->program.kernels.empty()) impl_->jit.emplace(CpuJit::from_object(std::string_view(*blob).substr(16 + n)));
      for (Kernel& k : impl_->program.kernels) k.address = impl_->jit->lookup("_mlir_ciface_" + k.symbol);
      impl_->from_cache = true;
      impl_->compile_ms = elapsed_ms();
      return;
    } catch (const std::exception&) {
      // An entry this build cannot use: compile afresh and overwrite it.
      impl_->program = {};
      impl_->host_ops.clear();
      impl_->jit.reset();
    }
  }
  c.to(stage_index("llvm"));
  impl_->program = std::move(c.program);
  impl_->host_ops = std::move(c.host_ops);
  std::string object;
  if (!impl_->program.kernels.empty()) {
    object = compile_object(c.print(true));  // with locations: the debug info
    impl_->jit.emplace(CpuJit::from_object(object));
    for (Kernel& k : impl_->program.kernels) k.address = impl_->jit->lookup("_mlir_ciface_" + k.symbol);
  }
  cache.store(key, pack(impl_->program, impl_->host_ops, object));
  impl_->compile_ms = elapsed_ms();
}

CpuFunction::~CpuFunction() = default;
CpuFunction::CpuFunction(CpuFunction&&) noexcept = default;
CpuFunction& CpuFunction::operator=(CpuFunction&&) noexcept = default;

const Program& CpuFunction::program() const { return impl_->program; }
const std::vector<std::string>& CpuFunction::host_ops() const { return impl_->host_ops; }
int CpuFunction::num_kernels() const { return static_cast<int>(impl_->program.kernels.size()); }
double CpuFunction::compile_ms() const { return impl_->compile_ms; }
bool CpuFunction::from_cache() const { return impl_->from_cache; }
int64_t CpuFunction::peak_intermediate_bytes() const { return impl_->peak_bytes.load(); }

std::vector<Tensor> CpuFunction::run(const std::vector<Tensor>& inputs) const {
  RunStats stats;
  std::vector<Tensor> results = run_program(impl_->program, inputs, &stats);
  impl_->peak_bytes.store(stats.peak_intermediate_bytes);
  return results;
}

}  // namespace kiln::codegen
