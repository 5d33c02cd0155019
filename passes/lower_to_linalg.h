#pragma once
// The "linalg" and "fused" stages.
//
// lower_to_linalg: kiln elementwise ops (the unary and binary tables, where,
// clamp, casts and broadcasts, full/full_like, kiln.constant) on static
// shapes become linalg.generic ops on tensors, with NumPy broadcasting in
// their indexing maps (a size-1 or missing dim reads index 0) and arith
// conversions where an operand's element type differs from the computation's.
// Only float32 and float64 results are computed (bool for comparisons).
// All or nothing: if any op cannot be lowered, the module is left untouched
// and the reason names the first such op and its location.
//
// fuse_elementwise: linalg elementwise fusion, producers with several uses
// included (they are recomputed in each consumer), so an elementwise chain
// becomes one linalg.generic.
#include <string>

namespace mlir {
class ModuleOp;
}

namespace kiln::passes {

// Empty on success; otherwise why the module does not lower
// ("kiln.softmax at model.py:12: not an elementwise op"). Never throws for
// unsupported input.
std::string lower_to_linalg(mlir::ModuleOp module);

// Fuses elementwise linalg.generic ops; IrError with diagnostics on failure.
void fuse_elementwise(mlir::ModuleOp module);

}  // namespace kiln::passes
