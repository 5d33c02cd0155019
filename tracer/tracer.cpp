#include "tracer/tracer.h"

#include "eager/autograd.h"
#include "eager/ops.h"

namespace kiln {

Tracer::Tracer(std::string name, LocationFn location) : location_(std::move(location)) {
  graph_.name = std::move(name);
}

Tracer::~Tracer() = default;

Tensor Tracer::argument(const TensorType& type) {
  ValueId id = graph_.add_value(type);
  graph_.arguments.push_back(id);
  return make_symbolic(type, std::make_shared<TraceValue>(TraceValue{id}));
}

int Tracer::capture(const Tensor& t) {
  auto [it, inserted] = capture_index_.try_emplace(t.impl_ptr(), static_cast<int>(captured_.size()));
  if (inserted) {
    captured_.push_back(t);
    graph_.captures.push_back(graph_.add_value(type_of(t)));
  }
  return it->second;
}

ValueId Tracer::value_of(const Tensor& t) {
  if (!t.defined()) return kNoValue;
  if (is_symbolic(t)) return trace_value(t)->id;
  if (auto it = assigned_.find(t.impl_ptr()); it != assigned_.end()) return it->second;
  return graph_.captures[capture(t)];
}

std::vector<Tensor> Tracer::record(const OpDef& op, const std::vector<Tensor>& inputs, const Attrs& attrs) {
  // The meta rule and anything it calls must not record themselves.
  TraceScope pause(nullptr);
  GraphNode node;
  node.op = &op;
  node.attrs = attrs;
  std::vector<TensorType> types;
  for (const Tensor& t : inputs) {
    node.inputs.push_back(value_of(t));
    types.push_back(t.defined() ? graph_.values[node.inputs.back()] : TensorType{.defined = false});
  }
  std::vector<TensorType> out_types = op.meta(types, attrs);
  std::vector<Tensor> outputs;
  for (const TensorType& type : out_types) {
    ValueId id = graph_.add_value(type);
    node.outputs.push_back(id);
    outputs.push_back(make_symbolic(type, std::make_shared<TraceValue>(TraceValue{id})));
  }
  if (location_) node.location = location_();
  graph_.nodes.push_back(std::move(node));
  return outputs;
}

void Tracer::assign(const Tensor& target, const Tensor& value) {
  ValueId id = value_of(value);
  if (is_symbolic(target)) {
    // Every handle to this tensor now sees the new value; views taken
    // earlier keep the old one, as SSA values do.
    target.impl_ptr()->traced = std::make_shared<TraceValue>(TraceValue{id});
    return;
  }
  KILN_CHECK(!target.impl_handle()->view_base, TraceError,
             "in-place update of a view (shape {}) of a tensor captured by a traced function is not supported; "
             "update the whole tensor, or pass it as an argument",
             shape_str(target.shape()));
  capture(target);
  assigned_[target.impl_ptr()] = id;
}

void Tracer::grad_will_change(const Tensor& leaf) {
  for (auto& [t, before] : grads_before_)
    if (t.is_same(leaf)) return;
  grads_before_.emplace_back(leaf, leaf.grad());
}

std::shared_ptr<TracedFunction> Tracer::finish(const std::vector<Tensor>& results) {
  auto fn = std::make_shared<TracedFunction>();
  for (const Tensor& r : results) {
    KILN_CHECK(r.defined(), TraceError, "{}: a traced function returned an undefined tensor", graph_.name);
    graph_.results.push_back(value_of(r));
  }
  // .grad set during the trace: the final value becomes a write-back, and
  // the tensor gets its old .grad back (a symbolic one must not escape).
  for (auto& [t, before] : grads_before_) {
    if (is_symbolic(t)) continue;  // an argument or intermediate: not state
    Tensor after = t.grad();
    int index = capture(t);
    fn->grad_writebacks.push_back({index, after.defined() ? value_of(after) : kNoValue});
    NoGradGuard no_grad;
    TraceScope pause(nullptr);
    t.set_grad(before);
  }
  for (auto& [impl, id] : assigned_) graph_.writebacks.push_back({capture_index_.at(impl), id});
  fn->graph = std::move(graph_);
  fn->captures = std::move(captured_);
  return fn;
}

// ---- the graph executor ----
std::vector<Tensor> TracedFunction::run(const std::vector<Tensor>& args) const {
  KILN_CHECK(args.size() == graph.arguments.size(), ValueError, "{}: expected {} tensor arguments, got {}",
             graph.name, graph.arguments.size(), args.size());
  std::vector<Tensor> values(graph.values.size());
  for (size_t i = 0; i < args.size(); ++i) values[graph.arguments[i]] = args[i];
  for (size_t i = 0; i < captures.size(); ++i) values[graph.captures[i]] = captures[i];
  std::vector<Tensor> inputs;
  for (const GraphNode& node : graph.nodes) {
    inputs.clear();
    for (ValueId id : node.inputs) inputs.push_back(id == kNoValue ? Tensor() : values[id]);
    std::vector<Tensor> outputs = node.op->run(inputs, node.attrs);
    for (size_t k = 0; k < node.outputs.size(); ++k) values[node.outputs[k]] = std::move(outputs[k]);
  }
  std::vector<Tensor> results;
  for (ValueId id : graph.results) results.push_back(values[id]);
  {
    NoGradGuard no_grad;
    for (const auto& wb : graph.writebacks) {
      const Tensor& target = captures[wb.capture_index];
      const Tensor& value = values[wb.value];
      if (!value.is_same(target)) Tensor(target).copy_(value);
    }
  }
  for (const auto& wb : grad_writebacks)
    captures[wb.capture_index].set_grad(wb.value == kNoValue ? Tensor() : values[wb.value]);
  return results;
}

}  // namespace kiln
