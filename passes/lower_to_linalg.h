#pragma once
// The "linalg" and "fused" stages.
//
// lower_to_linalg: kiln ops on static shapes become linalg.generic ops on
// tensors (plus tensor.empty, arith.constant, and tensor.expand_shape /
// collapse_shape for reshapes; no named linalg ops, no scf):
//   - elementwise: the unary and binary tables, where, clamp, casts and
//     broadcasts, full/full_like, kiln.constant; NumPy broadcasting in the
//     indexing maps (a size-1 or missing dim reads index 0), arith
//     conversions where an operand's element type differs from the
//     computation's. float32/float64 results, bool for comparisons and
//     logical ops, int32/int64 for add, sub, mul, neg, abs, maximum,
//     minimum, where, bitwise ops and casts;
//   - reductions over dims with keepdim: sum, mean, prod, amax, amin, any,
//     all, max/min(dim) with indices, argmax, argmin (one generic), var
//     (two), std and logsumexp (their result needs one more elementwise
//     generic). Float combinations carry fastmath
//     `reassoc` so that LLVM vectorizes them: the summation order, and so
//     the rounding, differs from eager's;
//   - softmax, log_softmax, native_layer_norm: two one-result reduction
//     generics (max, then sum of exp(x - max); mean, then mean squared
//     deviation) and one elementwise generic. Not one two-result online
//     pass: that measured 4-6x slower (its loop is not vectorized);
//     elementwise producers fuse into all three;
//   - layout: permute (a generic whose input map is the permutation), slice,
//     narrow, select, split, split_with_sizes, chunk (affine input maps),
//     broadcast_tensors, reshape, view, flatten, squeeze, unsqueeze
//     (collapse_shape then expand_shape);
//   - masked_fill, one_hot, gelu_tanh, casts (to_copy), copy;
//   - a training step's ops: sgd_step and adam_step (one generic with a
//     result per updated tensor); cross_entropy, nll_loss and their backward
//     ops with class indices on (N, C) inputs without label smoothing;
//     mse_loss and binary_cross_entropy_with_logits (one generic);
//   - views (permute, reshape, slice...) whose every use is matmul, linear or
//     conv2d stay kiln ops: eagerly free, and BLAS reads them in place.
// Reduction generics list the kept dims' loops before the reduced ones
// (the outermost loop is parallel) unless that would move the innermost
// contiguous dim out of the innermost loop; result maps are projected
// permutations of all parallel loops; keepdim results are expand_shapes of
// the reduced tensor.
// Partial: an op that cannot be lowered stays a kiln op (kiln ops and linalg
// results are the same builtin tensors, so they mix freely); the compiler runs
// it on the eager kernels. matmul, linear and conv2d always stay kiln ops.
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
