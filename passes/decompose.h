#pragma once
// The "decomposed" stage: composite kiln ops become the primitives the
// compiler fuses. linear(x, w, b) becomes matmul(x, permute(w)) + b, so the
// bias add fuses with the activation after it (the matmul calls BLAS, reading
// the transposed weight in place). Ops with their own lowering (softmax,
// layer_norm, cross_entropy, ...) are lowered to linalg directly.
namespace mlir {
class ModuleOp;
}

namespace kiln::passes {

void decompose(mlir::ModuleOp module);

}  // namespace kiln::passes
