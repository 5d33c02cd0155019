#pragma once
// Compiling a kiln module (a traced function's IR) to native CPU code:
//   simplified -> decomposed -> linalg -> fused (kernels outlined) -> bufferized -> llvm -> ORC JIT,
// and running it. What lowers to linalg becomes kernels; every other op stays
// a step that runs on the eager kernels (codegen/cpu_program.h), so any
// function without control flow compiles. The header is free of MLIR/LLVM.
#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "codegen/cpu_program.h"
#include "codegen/disk_cache.h"
#include "codegen/jit_smoke.h"

namespace kiln::codegen {

// The function is outside what the compiler handles (control flow); what()
// says why.
class NotCompilable : public JitError {
 public:
  using JitError::JitError;
};

// The compiler's stages, after the kiln-level "traced" and "simplified".
inline constexpr const char* kCompileStages[] = {"decomposed", "linalg", "fused", "bufferized", "llvm", "optimized"};

// `kiln_module` (text or bytecode of a kiln module with one func.func)
// simplified and compiled up to `stage`, as text. From "bufferized" on it
// holds the kernels only (the schedule is the entry function of "fused");
// "optimized" is LLVM IR after LLVM's O2 for the host (vectorized loops).
std::string compile_stage_ir(std::string_view kiln_module, std::string_view stage, bool locations = true);

// `kiln_module` with its function's arguments given static `shapes` (which
// must fit their `?` dims) and every op's result types inferred again: a
// function traced with dynamic dims, specialized to the shapes of a call.
// ShapeError when a shape does not fit.
std::string specialize_ir(std::string_view kiln_module, const std::vector<Shape>& shapes);

// The disk-cache key of `kiln_module`'s compiled code (kiln.cache.explain_miss).
CacheKey cpu_cache_key(std::string_view kiln_module);

class CpuFunction {
 public:
  // Compiles; NotCompilable for what the compiler refuses, JitError or
  // IrError when compilation itself fails.
  explicit CpuFunction(std::string_view kiln_module);
  ~CpuFunction();
  CpuFunction(CpuFunction&&) noexcept;
  CpuFunction& operator=(CpuFunction&&) noexcept;

  // The function's arguments (contiguous or not), its results.
  std::vector<Tensor> run(const std::vector<Tensor>& inputs) const;

  const Program& program() const;
  // One line per op left to the eager kernels: "kiln.matmul at net.py:3: not an elementwise op".
  const std::vector<std::string>& host_ops() const;
  int num_kernels() const;
  double compile_ms() const;  // or the time to load it from the disk cache
  bool from_cache() const;    // loaded from the disk cache (codegen/disk_cache.h): no MLIR or LLVM ran
  int64_t peak_intermediate_bytes() const;  // of the last run

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::codegen
