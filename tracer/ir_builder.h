#pragma once
// A traced function as a module of the kiln MLIR dialect, and the IR's
// text and bytecode forms. No MLIR types cross this header: callers (the
// Python binding, tests) get text and bytes.
//
// The module holds one func.func named after the function:
//   - its arguments are the tensor arguments, then the captured tensors
//     (marked {kiln.capture = i});
//   - its results are the function's results, then the new .grad of
//     captured tensors ({kiln.grad_of = i}), then the values written back
//     into captured tensors ({kiln.writeback = i});
//   - every op carries the user's file:line as its location.
#include <string>
#include <string_view>

#include "tracer/tracer.h"

namespace kiln {

// The stages a traced function can be printed at: "traced" (as recorded),
// "simplified" (passes/simplify.h), then the CPU compiler's stages
// (codegen/cpu_compiler.h): "decomposed", "linalg", "fused", "bufferized",
// "llvm", "optimized" (LLVM IR after O2), which raise codegen::NotCompilable for a function the compiler
// does not handle (control flow).
inline constexpr const char* kIrStages[] = {"traced", "simplified", "decomposed", "linalg",
                                            "fused",  "bufferized", "llvm",       "optimized"};

struct IrPrintOptions {
  bool locations = true;  // print each op's file:line (as #loc aliases)
  bool generic = false;   // MLIR's generic op form instead of the kiln syntax
  // Also return every op's results, in graph order, after the usual results
  // (marked {kiln.observe = value id}): the compiled code then keeps each
  // intermediate, which kiln.jit(f, check=True) compares with eager.
  bool observe_all = false;
};

// The traced function as kiln-dialect text at `stage` (verified);
// ValueError for an unknown stage.
std::string traced_ir(const TracedFunction& fn, std::string_view stage = "traced", const IrPrintOptions& options = {});
// The same module as MLIR bytecode.
std::string traced_bytecode(const TracedFunction& fn);

// Parses a kiln module from text or bytecode, verifies it and prints it;
// IrError with MLIR's diagnostics (and their locations) when it does not.
std::string reprint_ir(std::string_view text_or_bytecode, const IrPrintOptions& options = {});
// Parses a kiln module from text and writes it as bytecode.
std::string ir_to_bytecode(std::string_view text);
// Parses a kiln module, simplifies it and prints it.
std::string simplify_ir(std::string_view text_or_bytecode, const IrPrintOptions& options = {});

}  // namespace kiln
