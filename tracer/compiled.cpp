#include "tracer/compiled.h"

#include "codegen/cpu_compiler.h"
#include "eager/autograd.h"
#include "tracer/ir_builder.h"

namespace kiln {

CompiledFunction::CompiledFunction(std::shared_ptr<const TracedFunction> fn) : fn_(std::move(fn)) {
  const Graph& g = fn_->graph;
  for (const TensorType& t : g.values)
    if (t.device != kCPU)
      fail<codegen::NotCompilable>("{}: not compiled: it uses {} tensors (the compiler targets the CPU)", g.name,
                                   t.device.str());
  code_ = std::make_unique<codegen::CpuFunction>(traced_ir(*fn_, "traced", {.locations = true}));
}

CompiledFunction::~CompiledFunction() = default;

double CompiledFunction::compile_ms() const { return code_->compile_ms(); }
int CompiledFunction::num_kernels() const { return code_->num_kernels(); }
int CompiledFunction::num_host_ops() const { return static_cast<int>(code_->host_ops().size()); }
const std::vector<std::string>& CompiledFunction::host_ops() const { return code_->host_ops(); }
int64_t CompiledFunction::peak_intermediate_bytes() const { return code_->peak_intermediate_bytes(); }

std::vector<Tensor> CompiledFunction::run(const std::vector<Tensor>& args) const {
  const Graph& g = fn_->graph;
  KILN_CHECK(args.size() == g.arguments.size(), ValueError, "{}: expected {} tensor arguments, got {}", g.name,
             g.arguments.size(), args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    const TensorType& want = g.values[g.arguments[i]];
    bool shape_ok = args[i].shape().size() == want.shape.size();
    for (size_t d = 0; shape_ok && d < want.shape.size(); ++d)
      shape_ok = is_dynamic(want.shape[d]) || want.shape[d] == args[i].shape()[d];
    KILN_CHECK(shape_ok && args[i].dtype() == want.dtype && args[i].device() == want.device, ValueError,
               "{}: argument {} is {}; the compiled code takes {}", g.name, i, type_str(type_of(args[i])),
               type_str(want));
  }
  std::vector<Tensor> inputs = args;
  inputs.insert(inputs.end(), fn_->captures.begin(), fn_->captures.end());
  std::vector<Tensor> results = code_->run(inputs);
  {
    NoGradGuard no_grad;
    for (size_t k = 0; k < g.writebacks.size(); ++k) {
      const Tensor& target = fn_->captures[g.writebacks[k].capture_index];
      const Tensor& value = results[g.results.size() + k];
      if (!value.is_same(target)) Tensor(target).copy_(value);
    }
  }
  for (const auto& wb : fn_->grad_writebacks)
    fn_->captures[wb.capture_index].set_grad(wb.value == kNoValue ? Tensor() : results[static_cast<size_t>(wb.value)]);
  results.resize(g.results.size() - fn_->grad_results);
  return results;
}

}  // namespace kiln
