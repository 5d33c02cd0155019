#pragma once
// The "simplified" stage: algebraic simplification (passes/algebra.h), then
// canonicalization, which runs the kiln dialect's
// folders (constant operands folded through the eager kernels, reshape-like
// ops that change nothing removed) and removes dead pure ops, then CSE.
// Ops with effects (random numbers, kiln.print) stay, in order.
namespace mlir {
class ModuleOp;
}

namespace kiln::passes {

// Simplifies `module` in place; IrError with MLIR's diagnostics on failure.
void simplify(mlir::ModuleOp module);

}  // namespace kiln::passes
