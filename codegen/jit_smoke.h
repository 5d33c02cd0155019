#pragma once
// The smallest end-to-end use of the CPU toolchain: MLIR text in, native code
// out, through the same lowering and ORC JIT that compiled kernels will use.
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

// A module compiled in-process for the host CPU at -O2.
class CpuJit {
 public:
  // Parses, lowers and compiles `mlir_source`; throws JitError.
  explicit CpuJit(std::string_view mlir_source);
  ~CpuJit();
  CpuJit(CpuJit&&) noexcept;
  CpuJit& operator=(CpuJit&&) noexcept;

  // Names of the functions the module defines after lowering, including the
  // `_mlir_ciface_<f>` wrappers that `llvm.emit_c_interface` asks for.
  const std::vector<std::string>& functions() const;

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
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::codegen
