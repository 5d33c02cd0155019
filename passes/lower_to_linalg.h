#pragma once
// The "linalg" and "fused" stages.
//
// lower_to_linalg: kiln elementwise ops (the unary and binary tables, where,
// clamp, casts and broadcasts, full/full_like, kiln.constant) on static
// shapes become linalg.generic ops on tensors, with NumPy broadcasting in
// their indexing maps (a size-1 or missing dim reads index 0) and arith
// conversions where an operand's element type differs from the computation's.
// Only float32 and float64 results are computed (bool for comparisons).
// Partial: an op that cannot be lowered stays a kiln op (kiln ops and linalg
// results are the same builtin tensors, so they mix freely); the compiler runs
// it on the eager kernels.
//
// fuse_elementwise: linalg elementwise fusion, producers with several uses
// included (they are recomputed in each consumer), so an elementwise chain
// becomes one linalg.generic.
#include <string>
#include <vector>

namespace mlir {
class ModuleOp;
}

namespace kiln::passes {

// An op left in the kiln dialect, and why ("not an elementwise op").
struct NotLowered {
  std::string op;        // "kiln.softmax"
  std::string location;  // "model.py:12"
  std::string reason;
};

// Lowers what it can; returns the ops it left, in program order. Never throws
// for unsupported input.
std::vector<NotLowered> lower_to_linalg(mlir::ModuleOp module);

// Fuses elementwise linalg.generic ops; IrError with diagnostics on failure.
void fuse_elementwise(mlir::ModuleOp module);

}  // namespace kiln::passes
