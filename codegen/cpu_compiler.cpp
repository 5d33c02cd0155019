#include "codegen/cpu_compiler.h"

#include <algorithm>
#include <cctype>
#include <chrono>
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
#include <mlir/Dialect/Func/IR/FuncOps.h>
#include <mlir/Dialect/Linalg/Passes.h>
#include <mlir/Dialect/Math/Transforms/Approximation.h>
#include <mlir/Dialect/Math/Transforms/Passes.h>
#include <mlir/Dialect/MemRef/Transforms/Passes.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/Diagnostics.h>
#include <mlir/IR/MLIRContext.h>
#include <mlir/Parser/Parser.h>
#include <mlir/Pass/PassManager.h>
#include <mlir/Transforms/GreedyPatternRewriteDriver.h>
#include <mlir/Transforms/Passes.h>

#include "ir/dialect.h"
#include "ir/dialects.h"
#include "passes/lower_to_linalg.h"
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

int stage_index(std::string_view stage) {
  for (int i = 0; i < 4; ++i)
    if (stage == kCompileStages[i]) return i;
  fail<ValueError>("no compile stage '{}'; the stages are 'linalg', 'fused', 'bufferized', 'llvm'", stage);
}

// One compilation: the module, walked through the stages in order.
struct Compilation {
  std::unique_ptr<mlir::MLIRContext> context = ir::make_context();
  Diagnostics diags{context.get()};
  mlir::OwningOpRef<mlir::ModuleOp> module;
  std::string name;     // the symbol: kiln_<function name>
  std::string display;  // the function's name, for messages
  std::vector<BufferType> inputs, outputs;

  explicit Compilation(std::string_view source) {
    mlir::ParserConfig config(context.get());
    module = mlir::parseSourceString<mlir::ModuleOp>(llvm::StringRef(source.data(), source.size()), config, "kiln-ir");
    if (!module) fail<IrError>("the kiln IR does not parse:\n{}", diags.take());
    auto funcs = llvm::to_vector(module->getOps<mlir::func::FuncOp>());
    if (funcs.size() != 1) fail<NotCompilable>("expected one function in the module, got {}", funcs.size());
    mlir::func::FuncOp func = funcs[0];
    // A C-friendly symbol that cannot collide with the libm functions the
    // code calls (a function named `cos` would call itself): kiln_<name>.
    std::string original = func.getName().str();
    bool plain = !original.empty() && std::all_of(original.begin(), original.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    });
    name = plain ? "kiln_" + original : "kiln_function";
    display = original;
    func.setName(name);
    auto collect = [&](mlir::TypeRange types, std::vector<BufferType>& out) {
      for (mlir::Type t : types) {
        auto rt = mlir::dyn_cast<mlir::RankedTensorType>(t);
        std::optional<DType> dtype = rt ? ir::dtype_of(rt.getElementType()) : std::nullopt;
        if (!rt || !rt.hasStaticShape() || !dtype)
          fail<NotCompilable>("{}: argument or result type {} is not compiled yet (static shapes only)", display,
                              type_text(t));
        out.push_back({Shape(rt.getShape().begin(), rt.getShape().end()), *dtype});
      }
    };
    collect(func.getArgumentTypes(), inputs);
    collect(func.getResultTypes(), outputs);
  }

  static std::string type_text(mlir::Type t) {
    std::string s;
    llvm::raw_string_ostream os(s);
    t.print(os);
    return s;
  }

  void run(mlir::PassManager& pm, std::string_view what) {
    if (mlir::failed(pm.run(*module))) fail<JitError>("kiln::codegen: {} failed:\n{}", what, diags.take());
  }

  // Runs stages 0..last (kCompileStages), after simplification.
  void to(int last) {
    passes::simplify(*module);
    std::vector<passes::NotLowered> kept = passes::lower_to_linalg(*module);
    if (!kept.empty())
      fail<NotCompilable>("{}: not compiled: {} at {}: {}", display, kept[0].op, kept[0].location, kept[0].reason);
    if (last == 0) return;
    passes::fuse_elementwise(*module);
    if (last == 1) return;
    {
      mlir::PassManager pm(context.get());
      pm.addPass(mlir::bufferization::createEmptyTensorToAllocTensorPass());
      mlir::bufferization::OneShotBufferizationOptions options;
      options.bufferizeFunctionBoundaries = true;
      options.setFunctionBoundaryTypeConversion(mlir::bufferization::LayoutMapOption::IdentityLayoutMap);
      pm.addPass(mlir::bufferization::createOneShotBufferizePass(options));
      mlir::bufferization::BufferResultsToOutParamsOpts out_params;
      // Returned buffers allocated in the function become the out-parameters
      // (no copy). LLVM 19's hoisting dereferences the defining op of every
      // returned value, so it crashes on a returned argument: hoist only when
      // no argument is returned (otherwise results are copied out).
      bool returns_argument = false;
      module->walk([&](mlir::func::ReturnOp ret) {
        for (mlir::Value v : ret.getOperands()) returns_argument |= mlir::isa<mlir::BlockArgument>(v);
      });
      out_params.hoistStaticAllocs = !returns_argument;
      pm.addPass(mlir::bufferization::createBufferResultsToOutParamsPass(out_params));
      pm.addPass(mlir::createCanonicalizerPass());
      mlir::bufferization::BufferDeallocationPipelineOptions dealloc;
      mlir::bufferization::buildBufferDeallocationPipeline(pm, dealloc);
      pm.addPass(mlir::createBufferizationToMemRefPass());
      pm.addPass(mlir::createCanonicalizerPass());
      run(pm, "bufferization");
    }
    if (last == 2) return;
    for (auto func : module->getOps<mlir::func::FuncOp>())
      func->setAttr("llvm.emit_c_interface", mlir::UnitAttr::get(context.get()));
    {
      mlir::PassManager pm(context.get());
      pm.addNestedPass<mlir::func::FuncOp>(mlir::createConvertLinalgToLoopsPass());
      run(pm, "linalg to loops");
    }
    {
      // Polynomial approximations of exp, tanh, log, erf, sin, ... (float32),
      // so that the loops they sit in vectorize instead of calling libm.
      mlir::RewritePatternSet patterns(context.get());
      mlir::populateMathPolynomialApproximationPatterns(patterns);
      if (mlir::failed(mlir::applyPatternsAndFoldGreedily(*module, std::move(patterns))))
        fail<JitError>("kiln::codegen: math approximation did not converge:\n{}", diags.take());
    }
    {
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
    }
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
  c.to(last);
  return c.print(locations);
}

struct CpuFunction::Impl {
  std::vector<BufferType> inputs, outputs;
  std::string entry;
  std::optional<CpuJit> jit;
  double compile_ms = 0;
};

CpuFunction::CpuFunction(std::string_view kiln_module) : impl_(std::make_unique<Impl>()) {
  auto start = std::chrono::steady_clock::now();
  std::string llvm_text;
  {
    Compilation c(kiln_module);
    c.to(3);
    impl_->inputs = c.inputs;
    impl_->outputs = c.outputs;
    impl_->entry = "_mlir_ciface_" + c.name;
    llvm_text = c.print(false);
  }
  impl_->jit.emplace(llvm_text);
  impl_->compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

CpuFunction::~CpuFunction() = default;
CpuFunction::CpuFunction(CpuFunction&&) noexcept = default;
CpuFunction& CpuFunction::operator=(CpuFunction&&) noexcept = default;

const std::vector<BufferType>& CpuFunction::inputs() const { return impl_->inputs; }
const std::vector<BufferType>& CpuFunction::outputs() const { return impl_->outputs; }
double CpuFunction::compile_ms() const { return impl_->compile_ms; }

void CpuFunction::run(std::span<void* const> inputs, std::span<void* const> outputs) const {
  KILN_CHECK(inputs.size() == impl_->inputs.size() && outputs.size() == impl_->outputs.size(), ValueError,
             "compiled function: expected {} inputs and {} outputs, got {} and {}", impl_->inputs.size(),
             impl_->outputs.size(), inputs.size(), outputs.size());
  // Memref descriptors of contiguous buffers: {allocated, aligned, offset,
  // sizes[rank], strides[rank]}, passed by pointer to _mlir_ciface_<f>.
  std::vector<std::vector<int64_t>> descriptors;
  auto describe = [&](void* data, const BufferType& type) {
    size_t rank = type.shape.size();
    std::vector<int64_t> d(3 + 2 * rank);
    d[0] = d[1] = static_cast<int64_t>(reinterpret_cast<intptr_t>(data));
    d[2] = 0;
    int64_t stride = 1;
    for (size_t i = rank; i-- > 0;) {
      d[3 + i] = type.shape[i];
      d[3 + rank + i] = stride;
      stride *= type.shape[i];
    }
    descriptors.push_back(std::move(d));
  };
  for (size_t i = 0; i < inputs.size(); ++i) describe(inputs[i], impl_->inputs[i]);
  for (size_t i = 0; i < outputs.size(); ++i) describe(outputs[i], impl_->outputs[i]);
  std::vector<void*> pointers;
  for (auto& d : descriptors) pointers.push_back(d.data());
  std::vector<void*> args;
  for (void*& p : pointers) args.push_back(&p);
  impl_->jit->invoke_packed(impl_->entry, args);
}

}  // namespace kiln::codegen
