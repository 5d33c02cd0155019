#pragma once
// Compiling a kiln module (a traced function's IR) to native CPU code:
//   simplified -> linalg -> fused -> bufferized -> llvm -> ORC JIT.
// Elementwise functions on static shapes only in this increment
// (passes/lower_to_linalg.h says which ops); anything else is refused with
// NotCompilable, naming the first op that does not lower and its location.
// The header is free of MLIR/LLVM types.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "codegen/jit_smoke.h"
#include "runtime/dtype.h"
#include "runtime/shape.h"

namespace kiln::codegen {

// The function is outside what the compiler handles yet; what() says why.
class NotCompilable : public JitError {
 public:
  using JitError::JitError;
};

// The compiler's stages, after the kiln-level "traced" and "simplified".
inline constexpr const char* kCompileStages[] = {"linalg", "fused", "bufferized", "llvm"};

// `kiln_module` (text or bytecode of a kiln module with one func.func)
// simplified and compiled up to `stage`, as text.
std::string compile_stage_ir(std::string_view kiln_module, std::string_view stage, bool locations = true);

struct BufferType {
  Shape shape;
  DType dtype;
};

// A compiled kiln function: it reads contiguous input buffers and writes
// contiguous output buffers that the caller allocates.
class CpuFunction {
 public:
  // Compiles; NotCompilable when the function does not lower, JitError or
  // IrError when compilation itself fails.
  explicit CpuFunction(std::string_view kiln_module);
  ~CpuFunction();
  CpuFunction(CpuFunction&&) noexcept;
  CpuFunction& operator=(CpuFunction&&) noexcept;

  const std::vector<BufferType>& inputs() const;
  const std::vector<BufferType>& outputs() const;
  double compile_ms() const;

  // inputs[i] / outputs[i]: the data of contiguous buffers of the types above.
  void run(std::span<void* const> inputs, std::span<void* const> outputs) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::codegen
