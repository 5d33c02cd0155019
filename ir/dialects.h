#pragma once
// The one place that knows which MLIR dialects kiln uses. Kept apart from
// mlir/InitAllDialects.h, which costs ~40 s per translation unit here.
#include <memory>

namespace mlir {
class DialectRegistry;
class MLIRContext;
}  // namespace mlir

namespace kiln::ir {

// Registers kiln, func, arith, math, memref, scf, cf, linalg, tensor, vector and
// llvm, plus the interfaces that translate the llvm dialect to LLVM IR.
void register_dialects(mlir::DialectRegistry& registry);

// A context with those dialects registered (loaded lazily, on first use).
// Threading is off: kiln compiles many small kernels, for which a context's
// thread pool costs more than it returns, on machines with few cores.
std::unique_ptr<mlir::MLIRContext> make_context();

}  // namespace kiln::ir
