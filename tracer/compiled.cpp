#include "tracer/compiled.h"

#include <cmath>

#include <fmt/format.h>

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
  ir_ = traced_ir(*fn_, "traced", {.locations = true});
  std::vector<ValueId> inputs = g.arguments;
  inputs.insert(inputs.end(), g.captures.begin(), g.captures.end());
  for (ValueId id : inputs)
    for (int64_t d : g.values[id].shape) per_shape_ |= is_dynamic(d);
  if (!per_shape_) code_ = std::make_shared<codegen::CpuFunction>(ir_);
}

std::shared_ptr<codegen::CpuFunction> CompiledFunction::code_for(const std::vector<Tensor>& inputs) const {
  if (!per_shape_) return code_;
  std::vector<Shape> shapes;
  for (const Tensor& t : inputs) shapes.push_back(t.shape());
  std::lock_guard<std::mutex> lock(mutex_);
  auto& code = by_shape_[shapes];
  if (!code) code = std::make_shared<codegen::CpuFunction>(codegen::specialize_ir(ir_, shapes));
  last_ = code;
  return code;
}

std::shared_ptr<codegen::CpuFunction> CompiledFunction::current() const {
  if (!per_shape_) return code_;
  std::lock_guard<std::mutex> lock(mutex_);
  return last_;
}

CompiledFunction::~CompiledFunction() = default;

double CompiledFunction::compile_ms() const { return current() ? current()->compile_ms() : 0.0; }
bool CompiledFunction::from_cache() const { return current() && current()->from_cache(); }

std::vector<std::pair<std::string, std::string>> compiled_cache_key(const TracedFunction& fn) {
  return codegen::cpu_cache_key(traced_ir(fn, "traced", {.locations = true})).parts;
}
int CompiledFunction::num_kernels() const { return current() ? current()->num_kernels() : 0; }
std::vector<std::pair<std::string, int64_t>> CompiledFunction::kernels() const {
  std::vector<std::pair<std::string, int64_t>> out;
  if (auto code = current())
    for (const codegen::Kernel& k : code->program().kernels) out.emplace_back(k.symbol, k.tile_extent);
  return out;
}
int CompiledFunction::num_host_ops() const { return static_cast<int>(host_ops().size()); }
const std::vector<std::string>& CompiledFunction::host_ops() const {
  static const std::vector<std::string> none;
  std::shared_ptr<codegen::CpuFunction> code = current();
  return code ? code->host_ops() : none;  // a CpuFunction lives as long as this object
}
int64_t CompiledFunction::peak_intermediate_bytes() const {
  return current() ? current()->peak_intermediate_bytes() : 0;
}

std::vector<Tensor> CompiledFunction::inputs_for(const std::vector<Tensor>& args) const {
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
  return inputs;
}

std::vector<Tensor> CompiledFunction::finish(std::vector<Tensor> results) const {
  const Graph& g = fn_->graph;
  {
    NoGradGuard no_grad;
    for (size_t k = 0; k < g.writebacks.size(); ++k) {
      const Tensor& target = fn_->captures[g.writebacks[k].capture_index];
      const Tensor& value = results[g.results.size() + k];
      // written in place by its kernel: only the version counter to bump
      if (value.is_same(target)) target.bump_version();
      else Tensor(target).copy_(value);
    }
  }
  for (const auto& wb : fn_->grad_writebacks)
    fn_->captures[wb.capture_index].set_grad(wb.value == kNoValue ? Tensor() : results[static_cast<size_t>(wb.value)]);
  results.resize(g.results.size() - fn_->grad_results);
  return results;
}

std::vector<Tensor> CompiledFunction::run(const std::vector<Tensor>& args) const {
  std::vector<Tensor> inputs = inputs_for(args);
  return finish(code_for(inputs)->run(inputs));
}

namespace {
// Empty if `got` matches `want`; else what differs.
std::string difference(const Tensor& got, const Tensor& want, double rtol, double atol) {
  if (got.defined() != want.defined()) return "one of them is undefined";
  if (!got.defined()) return {};
  if (got.shape() != want.shape() || got.dtype() != want.dtype())
    return fmt::format("compiled {} vs eager {}", type_str(type_of(got)), type_str(type_of(want)));
  NoGradGuard no_grad;
  Tensor g = got.to(DType::Float64).contiguous(), w = want.to(DType::Float64).contiguous();
  bool exact = !is_floating(want.dtype());
  for (int64_t i = 0; i < g.numel(); ++i) {
    double a = g.data<double>()[i], b = w.data<double>()[i];
    bool same = exact ? a == b
                      : (std::isnan(b) ? std::isnan(a)
                                       : (std::isinf(b) ? a == b : std::abs(a - b) <= atol + rtol * std::abs(b)));
    if (!same)
      return fmt::format("at flat index {} compiled {} vs eager {} (|diff| {:.3g}; rtol {}, atol {})", i, a, b,
                         std::abs(a - b), rtol, atol);
  }
  return {};
}
}  // namespace

bool CompiledFunction::comparable() const {
  for (const GraphNode& node : fn_->graph.nodes)
    if (node.op->stateful || !node.regions.empty()) return false;
  return true;
}

namespace {
// The captured tensors a call writes back, with copies of their values, so a
// failed check can undo what the compiled code wrote in place.
std::vector<std::pair<Tensor, Tensor>> snapshot(const TracedFunction& fn) {
  NoGradGuard no_grad;
  std::vector<std::pair<Tensor, Tensor>> saved;
  for (const auto& wb : fn.graph.writebacks)
    saved.emplace_back(fn.captures[wb.capture_index], fn.captures[wb.capture_index].clone());
  return saved;
}
void restore(const std::vector<std::pair<Tensor, Tensor>>& saved) {
  NoGradGuard no_grad;
  for (const auto& [target, value] : saved) Tensor(target).copy_(value);
}
}  // namespace

std::vector<Tensor> CompiledFunction::run_checked(const std::vector<Tensor>& args, double rtol, double atol) const {
  std::vector<Tensor> inputs = inputs_for(args);
  std::shared_ptr<codegen::CpuFunction> code = code_for(inputs);
  if (!comparable()) return finish(code->run(inputs));
  // Eager first: the compiled code may update captured tensors in place.
  std::vector<Tensor> eager;
  {
    NoGradGuard no_grad;
    eager = execute(fn_->graph, inputs);
  }
  std::vector<std::pair<Tensor, Tensor>> saved = snapshot(*fn_);
  std::vector<Tensor> compiled = code->run(inputs);
  for (size_t i = 0; i < eager.size(); ++i) {
    std::string why = difference(compiled[i], eager[i], rtol, atol);
    if (!why.empty()) {
      const Graph& g = fn_->graph;
      std::string which = i < g.results.size() ? fmt::format("result {}", i)
                                               : fmt::format("the value written back into captured tensor {}",
                                                             g.writebacks[i - g.results.size()].capture_index);
      restore(saved);
      report_divergence(inputs, rtol, atol, fmt::format("{}: {}", which, why));
    }
  }
  return finish(std::move(compiled));
}

void CompiledFunction::report_divergence(const std::vector<Tensor>& inputs, double rtol, double atol,
                                         const std::string& fallback) const {
  const Graph& g = fn_->graph;
  std::string observed_ir = traced_ir(*fn_, "traced", {.locations = true, .observe_all = true});
  if (per_shape_) {
    std::vector<Shape> shapes;
    for (const Tensor& t : inputs) shapes.push_back(t.shape());
    observed_ = std::make_unique<codegen::CpuFunction>(codegen::specialize_ir(observed_ir, shapes));
  } else if (!observed_) {
    observed_ = std::make_unique<codegen::CpuFunction>(observed_ir);
  }
  std::vector<Tensor> eager;
  {
    NoGradGuard no_grad;
    execute(g, inputs, &eager);
  }
  std::vector<std::pair<Tensor, Tensor>> saved = snapshot(*fn_);
  std::vector<Tensor> compiled = observed_->run(inputs);
  std::string first;  // the first op whose result differs
  size_t k = g.results.size() + g.writebacks.size();
  for (const GraphNode& node : g.nodes) {
    for (ValueId id : node.outputs) {
      std::string why = difference(compiled[k++], eager[id], rtol, atol);
      if (first.empty() && !why.empty())
        first = fmt::format("kiln.{} ({}): {}", node.op->name,
                            node.location.empty() ? "unknown location" : node.location, why);
    }
  }
  restore(saved);
  if (!first.empty())
    fail<CheckError>(
        "{}: compiled and eager results differ, first at {}. Run without check=True to keep the compiled result, "
        "or compile=False to run eagerly; please report it with the function's IR (f.lower(*args).ir('traced')).",
        g.name, first);
  fail<CheckError>("{}: compiled and eager results differ in {} (no single op's result differs on its own)", g.name,
                   fallback);
}

}  // namespace kiln
