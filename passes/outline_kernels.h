#pragma once
// The end of the "fused" stage: the linalg.generic ops left in the entry
// function become kernels, functions of their own that the entry calls.
// Consecutive generics that split the same outer parallel loop, and read
// each other's results only at that loop's index, share one kernel: each
// call then runs all of them on its tile of rows (softmax's reductions and
// its normalization read the row while it is in cache).
// What remains in the entry is the schedule the runtime interprets: kernel
// calls, kiln ops that did not lower (run on the eager kernels), reshapes and
// constants.
//
// A kernel takes its inputs and returns its results (tensor semantics; also
// results only the kernel itself reads, so the runtime allocates them once);
// the initial values of its outputs (tensor.empty, or a fill generic such as
// the zero of a sum) and the constants it reads move into it. Each kernel
// carries two attributes for the CPU code generator:
//   kiln.tile_extent: the trip count of its outermost loop when that loop is
//     parallel and indexes dim 0 of every output, so the runtime may split it
//     across threads (0: the kernel runs whole);
//   kiln.work: iterations of its loop nest, to size the split.
// Kernel names carry the user's source line: k3_model_py_12.
#include <string>

namespace mlir {
class ModuleOp;
}

namespace kiln::passes {

// Outlines the generics of every function in `module` that is not itself a
// kernel; returns how many kernels it made.
int outline_kernels(mlir::ModuleOp module);

}  // namespace kiln::passes
