#pragma once
// A multi-pass row kernel (softmax: max, then exp and sum, then scale) reads
// each row from memory in its first pass, when the core has little else to
// do, and then computes on it from cache, when the memory system is idle:
// per thread, the two never overlap. This pass makes them: a later pass
// over row i, split into chunks of a few cache lines, prefetches the same
// columns of row i + 1 after each chunk, so that the next call's
// first pass finds its row in cache. Only for large inputs (those that do
// not stay in cache anyway) and a pass with a transcendental to hide the
// prefetches behind; on kernels after linalg became loops and the
// outer loop was tiled (codegen/cpu_compiler.cpp).
namespace mlir {
class ModuleOp;
}

namespace kiln::codegen {

void prefetch_next_rows(mlir::ModuleOp module);

}  // namespace kiln::codegen
