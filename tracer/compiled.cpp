#include "tracer/compiled.h"

#include "codegen/cpu_compiler.h"
#include "eager/ops.h"
#include "tracer/ir_builder.h"

namespace kiln {

CompiledFunction::CompiledFunction(const TracedFunction& fn) : name_(fn.graph.name) {
  const Graph& g = fn.graph;
  if (!g.captures.empty())
    fail<codegen::NotCompilable>("{}: not compiled: it captures {} tensors (not compiled yet)", name_, g.captures.size());
  if (!g.writebacks.empty() || !fn.grad_writebacks.empty())
    fail<codegen::NotCompilable>("{}: not compiled: it updates captured tensors (not compiled yet)", name_);
  if (g.results.empty()) fail<codegen::NotCompilable>("{}: not compiled: it returns no tensors", name_);
  for (ValueId id : g.arguments)
    if (g.values[id].device != kCPU) fail<codegen::NotCompilable>("{}: not compiled: a non-CPU argument", name_);
  fn_ = std::make_unique<codegen::CpuFunction>(traced_ir(fn, "traced", {.locations = true}));
}

CompiledFunction::~CompiledFunction() = default;

double CompiledFunction::compile_ms() const { return fn_->compile_ms(); }

std::vector<Tensor> CompiledFunction::run(const std::vector<Tensor>& args) const {
  const auto& in_types = fn_->inputs();
  KILN_CHECK(args.size() == in_types.size(), ValueError, "{}: expected {} tensor arguments, got {}", name_,
             in_types.size(), args.size());
  std::vector<Tensor> inputs;
  std::vector<void*> in_ptrs, out_ptrs;
  for (size_t i = 0; i < args.size(); ++i) {
    KILN_CHECK(args[i].shape() == in_types[i].shape && args[i].dtype() == in_types[i].dtype && args[i].device() == kCPU,
               ValueError, "{}: argument {} has shape {} and dtype {}; the compiled code takes {} {}", name_, i,
               shape_str(args[i].shape()), dtype_name(args[i].dtype()), shape_str(in_types[i].shape),
               dtype_name(in_types[i].dtype));
    inputs.push_back(args[i].is_contiguous() ? args[i] : args[i].contiguous());
    in_ptrs.push_back(inputs.back().data_ptr());
  }
  std::vector<Tensor> outputs;
  for (const auto& t : fn_->outputs()) {
    outputs.push_back(Tensor::empty(t.shape, t.dtype));
    out_ptrs.push_back(outputs.back().data_ptr());
  }
  fn_->run(in_ptrs, out_ptrs);
  return outputs;
}

}  // namespace kiln
