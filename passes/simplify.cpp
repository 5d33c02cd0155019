#include "passes/simplify.h"

#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/Diagnostics.h>
#include <mlir/Pass/PassManager.h>
#include <mlir/Transforms/GreedyPatternRewriteDriver.h>
#include <mlir/Transforms/Passes.h>

#include "passes/algebra.h"

#include "runtime/error.h"

namespace kiln::passes {

void simplify(mlir::ModuleOp module) {
  std::string diagnostics;
  mlir::ScopedDiagnosticHandler handler(module.getContext(), [&](mlir::Diagnostic& d) {
    diagnostics += d.str() + "\n";
    return mlir::success();
  });
  mlir::RewritePatternSet algebra(module.getContext());
  populate_algebra_patterns(algebra);
  if (mlir::failed(mlir::applyPatternsAndFoldGreedily(module, std::move(algebra))))
    fail<IrError>("algebraic simplification did not converge:\n{}", diagnostics);
  mlir::PassManager pm(module.getContext());
  pm.addPass(mlir::createCanonicalizerPass());
  pm.addPass(mlir::createCSEPass());
  if (mlir::failed(pm.run(module))) fail<IrError>("simplifying the kiln IR failed:\n{}", diagnostics);
}

}  // namespace kiln::passes
