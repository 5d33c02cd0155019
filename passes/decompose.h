#pragma once
// The "decomposed" stage: composite kiln ops become the primitives the
// compiler fuses. linear(x, w, b) becomes linear(x, w) + b, so the bias add
// fuses with the activation after it (the GEMM stays one BLAS call). Ops
// with their own lowering (softmax, layer_norm, cross_entropy, ...) are
// lowered to linalg directly.
namespace mlir {
class ModuleOp;
}

namespace kiln::passes {

void decompose(mlir::ModuleOp module);

}  // namespace kiln::passes
