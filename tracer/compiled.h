#pragma once
// A traced function compiled to native CPU code (codegen/cpu_compiler.h),
// for callers that hold a TracedFunction. This increment compiles whole
// graphs of elementwise ops on static float shapes, with no captures,
// write-backs or control flow; construction throws codegen::NotCompilable
// (a kiln::Error) saying why otherwise, and the caller keeps running the
// graph executor (TracedFunction::run).
#include <memory>
#include <vector>

#include "tracer/tracer.h"

namespace kiln {
namespace codegen {
class CpuFunction;
}

class CompiledFunction {
 public:
  explicit CompiledFunction(const TracedFunction& fn);
  ~CompiledFunction();

  // Same contract as TracedFunction::run (no gradients are recorded).
  std::vector<Tensor> run(const std::vector<Tensor>& args) const;
  double compile_ms() const;

 private:
  std::string name_;
  std::unique_ptr<codegen::CpuFunction> fn_;
};

}  // namespace kiln
