#pragma once
// The CPU toolchain end to end: MLIR text in, native code out. Compiling
// produces a relocatable object (a "kiln object", see compile_object), and a
// CpuJit always runs by linking such an object into an ORC JIT, so an object
// taken from the disk cache runs exactly like a fresh compile.
// The header is free of MLIR/LLVM so that callers compile fast.
#include <array>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "runtime/error.h"

namespace kiln::codegen {

// Compilation failed; what() names the stage (parse, lower, jit, lookup) and
// carries MLIR's diagnostics with their source locations.
class JitError : public Error {
 public:
  using Error::Error;
};

// Lowers a module of func/arith/math/memref/scf/cf (and linalg on memrefs)
// to the llvm dialect and returns its text: the "llvm" stage of the pipeline.
std::string lower_to_llvm_dialect(std::string_view mlir_source);

// The host as code generation sees it: triple, CPU name, every CPU feature
// and the LLVM version, e.g. "x86_64-pc-linux-gnu;cpu=znver4;features=+adx,
// ...;llvm=19.1.7". Objects are only valid where this is the same, so it
// belongs in every cache key of native code.
std::string host_target_id();

// Lowers `mlir_source` (as lower_to_llvm_dialect does), optimizes it at -O2
// for the host CPU with all its features (AVX-512 where present) and returns
// a kiln object: a versioned, checksummed envelope holding host_target_id(),
// the names of the functions, and the PIC ELF relocatable object. Every
// defined function `f` gets the packed wrapper `_mlir_f(void**)` that
// mlir::ExecutionEngine would generate, so invoke_packed works on it.
// Throws JitError.
std::string compile_object(std::string_view mlir_source);

// The LLVM IR that compile_object emits code from: translated, then
// optimized at O2 for the host (loops vectorized to its SIMD width show as
// <16 x float> on AVX-512). For reading, as the "optimized" stage.
std::string optimized_llvm_ir(std::string_view mlir_source);

// The ELF relocatable object inside a kiln object (for linking an AOT
// artifact or inspecting the code with objdump); throws JitError if
// `object` is not a valid kiln object.
std::string_view object_elf(std::string_view object);

// Makes `address` the definition of `name` for generated code in every CpuJit
// linked afterwards. Symbols also resolve against the process (libm, libc)
// and against the shared library kiln itself is linked into, which Python
// loads privately (RTLD_LOCAL); registering is for the rest, e.g. runtime
// functions in an executable that does not export its symbols.
void register_host_symbol(std::string name, void* address);

// A module compiled for the host CPU at -O2 and linked in-process.
class CpuJit {
 public:
  // compile_object(mlir_source), then from_object; throws JitError.
  explicit CpuJit(std::string_view mlir_source);

  // Links a kiln object (compile_object's or object_code()'s result) with
  // no MLIR and no LLVM optimization or code generation: a few milliseconds.
  // Truncated or corrupt bytes, an object for another target or a symbol
  // nothing defines throw JitError.
  static CpuJit from_object(std::string_view object);

  ~CpuJit();
  CpuJit(CpuJit&&) noexcept;
  CpuJit& operator=(CpuJit&&) noexcept;

  // Names of the functions the module defines after lowering, including the
  // `_mlir_ciface_<f>` wrappers that `llvm.emit_c_interface` asks for.
  const std::vector<std::string>& functions() const;

  // The kiln object this JIT runs, for the disk cache or an artifact.
  const std::string& object_code() const;

  // Address of a symbol; throws JitError if there is none.
  void* lookup(std::string_view symbol) const;

  // `_mlir_ciface_<f>` takes memrefs as pointers to descriptors, so it is the
  // one to call directly: function<void(Desc*, float)>("_mlir_ciface_f").
  template <class Fn>
  Fn* function(std::string_view symbol) const {
    static_assert(std::is_function_v<Fn>);
    return reinterpret_cast<Fn*>(lookup(symbol));
  }

  // Calls `name` through its packed wrapper: args[i] points at argument i,
  // then one pointer per result, where the result is written.
  void invoke_packed(std::string_view name, std::span<void*> args) const;

  // invoke_packed for scalar signatures: call<float>("f", 1.f, 2.f).
  // R and Args must match the MLIR types exactly (f32 = float, i64 and index
  // = int64_t, i32 = int32_t); nothing can check that at run time.
  template <class R = void, class... Args>
  R call(std::string_view name, Args... args) const {
    if constexpr (std::is_void_v<R>) {
      std::array<void*, sizeof...(Args)> packed{static_cast<void*>(&args)...};
      invoke_packed(name, packed);
    } else {
      R result{};
      std::array<void*, sizeof...(Args) + 1> packed{static_cast<void*>(&args)...,
                                                    static_cast<void*>(&result)};
      invoke_packed(name, packed);
      return result;
    }
  }

 private:
  struct Impl;
  explicit CpuJit(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::codegen
