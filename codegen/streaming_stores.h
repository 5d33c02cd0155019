#pragma once
// A kernel's large output that the kernel only writes is written with
// non-temporal (streaming) stores: they skip the read
// for ownership that a plain store does for every cache line, a third of the
// traffic of an elementwise kernel (copy at 64 MiB measured 49 vs 65 GB/s
// here). Only buffers the runtime allocates for the call (64-byte aligned,
// runtime/allocator.h) qualify; the kernel records that alignment with
// memref.assume_alignment, and codegen keeps the non-temporal hint only on
// vector stores LLVM proves aligned (an unaligned one would be split into
// scalar stores). The runtime fences after each call (cpu_program.cpp):
// streaming stores are weakly ordered.
#include <cstdint>

namespace mlir {
class ModuleOp;
}

namespace kiln::codegen {

// Outputs smaller than this stay in cache for the kernel that reads them next.
inline constexpr int64_t kStreamingStoreBytes = int64_t{16} << 20;

// A row of an output that is staged in scratch (streaming_stores.cpp) is at
// most this big: the scratch lives on the calling thread's stack.
inline constexpr int64_t kScratchRowBytes = int64_t{256} << 10;

// On kernels after linalg became loops: marks the stores into each large,
// write-only fresh output (a kernel argument at or after 2 + its kiln.inputs).
void mark_streaming_stores(mlir::ModuleOp module);

}  // namespace kiln::codegen
