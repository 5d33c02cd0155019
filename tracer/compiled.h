#pragma once
// A traced function compiled to native CPU code (codegen/cpu_compiler.h):
// the ops that lower run as fused kernels, the others on the eager kernels.
// A function traced with dynamic dims is compiled once per shape its calls
// bring (kernels need static shapes), each from the disk cache when it can.
// Captured tensors are read and written back as TracedFunction::run does.
// Construction throws codegen::NotCompilable (a kiln::Error) for what the
// compiler refuses (control flow, non-CPU tensors); the caller then keeps the
// graph executor.
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tracer/tracer.h"

namespace kiln {
namespace codegen {
class CpuFunction;
}

// The disk-cache key of fn's compiled code, as (part, value) pairs.
std::vector<std::pair<std::string, std::string>> compiled_cache_key(const TracedFunction& fn);

class CompiledFunction {
 public:
  explicit CompiledFunction(std::shared_ptr<const TracedFunction> fn);
  ~CompiledFunction();

  // Same contract as TracedFunction::run (no gradients are recorded).
  std::vector<Tensor> run(const std::vector<Tensor>& args) const;

  // run, shadowed by the graph executor (the eager kernels, op by op): if a
  // result differs beyond |compiled - eager| <= atol + rtol * |eager| (NaNs
  // where eager has NaNs), nothing is written back and CheckError names the
  // first op whose compiled result differs, with its location. Functions
  // with random ops are not compared (both runs would draw different
  // numbers): comparable() says whether calls are compared.
  std::vector<Tensor> run_checked(const std::vector<Tensor>& args, double rtol, double atol) const;
  bool comparable() const;

  // Compiled once per call shape (dynamic dims); the figures below are then
  // those of the last shape compiled or run (zeros before the first call).
  bool per_shape() const { return per_shape_; }
  double compile_ms() const;  // or the disk-cache load time
  bool from_cache() const;
  int num_kernels() const;
  int num_host_ops() const;
  // Each kernel's name and the trip count of the outer loop the thread pool
  // splits (0: it runs whole on one thread).
  std::vector<std::pair<std::string, int64_t>> kernels() const;
  const std::vector<std::string>& host_ops() const;  // "kiln.matmul at net.py:3: why"
  int64_t peak_intermediate_bytes() const;           // of the last call

 private:
  std::vector<Tensor> inputs_for(const std::vector<Tensor>& args) const;
  std::vector<Tensor> finish(std::vector<Tensor> results) const;
  [[noreturn]] void report_divergence(const std::vector<Tensor>& inputs, double rtol, double atol,
                                      const std::string& fallback) const;

  // The code for these inputs (arguments, then captures).
  std::shared_ptr<codegen::CpuFunction> code_for(const std::vector<Tensor>& inputs) const;
  std::shared_ptr<codegen::CpuFunction> current() const;

  std::shared_ptr<const TracedFunction> fn_;
  bool per_shape_ = false;
  std::string ir_;  // the traced IR (per_shape_: specialized on each new shape)
  std::shared_ptr<codegen::CpuFunction> code_;  // !per_shape_
  mutable std::mutex mutex_;
  mutable std::map<std::vector<Shape>, std::shared_ptr<codegen::CpuFunction>> by_shape_;
  mutable std::shared_ptr<codegen::CpuFunction> last_;
  mutable std::unique_ptr<codegen::CpuFunction> observed_;  // every intermediate kept (check mode)
};

}  // namespace kiln
