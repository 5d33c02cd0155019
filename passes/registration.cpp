#include "passes/registration.h"

// One header per pass, not mlir/InitAllPasses.h (~40 s per TU here).
#include <mlir/Conversion/AffineToStandard/AffineToStandard.h>
#include <mlir/Conversion/ArithToLLVM/ArithToLLVM.h>
#include <mlir/Conversion/ControlFlowToLLVM/ControlFlowToLLVM.h>
#include <mlir/Conversion/FuncToLLVM/ConvertFuncToLLVMPass.h>
#include <mlir/Conversion/MathToLLVM/MathToLLVM.h>
#include <mlir/Conversion/MemRefToLLVM/MemRefToLLVM.h>
#include <mlir/Conversion/ReconcileUnrealizedCasts/ReconcileUnrealizedCasts.h>
#include <mlir/Conversion/SCFToControlFlow/SCFToControlFlow.h>
#include <mlir/Dialect/Linalg/Passes.h>
#include <mlir/Dialect/MemRef/Transforms/Passes.h>
#include <mlir/Pass/PassRegistry.h>
#include <mlir/Transforms/Passes.h>

namespace kiln::passes {

void register_upstream_passes() {
  // A function-local static runs exactly once, even with concurrent callers.
  static const bool registered = [] {
    // Each pass registers under its own argument ("convert-scf-to-cf", ...).
    mlir::registerPass([] { return mlir::createCanonicalizerPass(); });
    mlir::registerPass([] { return mlir::createCSEPass(); });
    mlir::registerPass([] { return mlir::createConvertLinalgToLoopsPass(); });
    mlir::registerPass([] { return mlir::memref::createExpandStridedMetadataPass(); });
    mlir::registerPass([] { return mlir::createLowerAffinePass(); });
    mlir::registerPass([] { return mlir::createConvertSCFToCFPass(); });
    mlir::registerPass([] { return mlir::createFinalizeMemRefToLLVMConversionPass(); });
    mlir::registerPass([] { return mlir::createConvertMathToLLVMPass(); });
    mlir::registerPass([] { return mlir::createArithToLLVMConversionPass(); });
    mlir::registerPass([] { return mlir::createConvertFuncToLLVMPass(); });
    mlir::registerPass([] { return mlir::createConvertControlFlowToLLVMPass(); });
    mlir::registerPass([] { return mlir::createReconcileUnrealizedCastsPass(); });
    return true;
  }();
  (void)registered;
}

}  // namespace kiln::passes
