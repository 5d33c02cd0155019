#pragma once
// What the CPU compiler produces and the runtime interprets: a schedule of
// steps over values (tensors), where a step is a compiled kernel, a kiln op
// the compiler left to the eager kernels, a reshape or a constant. Free of
// MLIR and LLVM: the executor only needs the kernels' addresses.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "eager/op.h"
#include "eager/tensor.h"

namespace kiln::codegen {

using ProgramValueId = int;
inline constexpr ProgramValueId kAbsent = -1;  // an absent optional operand of a host op

struct Kernel {
  std::string symbol;      // its C interface: void(int64 begin, int64 end, memref descriptor*...)
  int64_t tile_extent = 0; // trip count of the outer loop the runtime may split (0: run whole)
  bool columns = false;     // the split loop is the columns of a column reduction: one call per task
  int64_t work = 0;        // iterations of the whole loop nest
  void* address = nullptr; // set once the code is loaded
  // {result, operand}: the kernel writes that result into that operand's
  // buffer (a captured tensor updated in place); it takes no buffer for it.
  std::vector<std::pair<int, int>> in_place;
};

// A column kernel's call covers at least this many columns: 8 KiB of
// float32 per row. Shorter pieces of rows do not stream (the prefetchers
// start over on every page): a column sum of 8192 x 1024 measured 2.5 ms
// split in two against 1.2 on one thread, while 1024 x 8192 went from 1.5 to
// 0.73 ms.
inline constexpr int64_t kMinColumnsPerCall = 2048;

struct Step {
  enum class Kind { Kernel, Host, Reshape, Constant };
  Kind kind = Kind::Host;
  int kernel = -1;                     // Kernel: index into Program::kernels
  const OpDef* op = nullptr;           // Host: the eager op
  Attrs attrs;                         // Host: its attributes
  Tensor constant;                     // Constant
  std::vector<ProgramValueId> inputs;  // kAbsent for an absent optional operand
  std::vector<ProgramValueId> outputs;
  std::string location;                // the user's file:line, for messages
};

struct Program {
  std::vector<TensorType> values;  // by id (shapes may have kDynamic dims)
  std::vector<ProgramValueId> arguments, results;
  std::vector<Step> steps;
  std::vector<Kernel> kernels;
  // After step i, the values whose last use it was (freed unless results).
  std::vector<std::vector<ProgramValueId>> release_after;

  void compute_liveness();
};

struct RunStats {
  int64_t peak_intermediate_bytes = 0;  // most bytes held at once by values the program allocated
};

// Runs `program` on `inputs` (its arguments, in order); kernels split their
// outer loop over the thread pool. Returns the results.
std::vector<Tensor> run_program(const Program& program, const std::vector<Tensor>& inputs, RunStats* stats = nullptr);

}  // namespace kiln::codegen
