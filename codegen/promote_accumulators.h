#pragma once
// After linalg becomes loops, a reduction accumulates through memory: each
// inner iteration loads out[i], adds, stores out[i]. LLVM promotes that to a
// register (and so vectorizes the reduction) only when it can prove nothing
// else in the loop touches out, which it cannot once the loop also stores
// elsewhere (a generic with two results: softmax's sum and exp). This pass
// does it on the loops: a load and a store of the same loop-invariant place,
// which nothing else in the loop accesses (through any view of the same
// buffer), become a loop-carried value, loaded before and stored after.
namespace mlir {
class ModuleOp;
}

namespace kiln::codegen {

void promote_accumulators(mlir::ModuleOp module);

}  // namespace kiln::codegen
