#pragma once
// Algebraic simplification of kiln ops, part of the "simplified" stage:
//   x * 1, 1 * x, x / 1, x + 0, 0 + x, x - 0   -> x   (same type only: no
//                                                 broadcast or promotion lost)
//   neg(neg(x)), reciprocal(reciprocal(x))     -> x
//   permute(permute(x))                        -> one permute, or x
//   reshape-like(reshape-like(x))              -> one reshape
//   broadcast(broadcast(x))                    -> one broadcast
// (Transposes feeding matmul cost nothing: the eager matmul reads a
// transposed view through BLAS's transpose flags.)
namespace mlir {
class RewritePatternSet;
}

namespace kiln::passes {

void populate_algebra_patterns(mlir::RewritePatternSet& patterns);

}  // namespace kiln::passes
