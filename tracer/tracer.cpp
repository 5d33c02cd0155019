#include "tracer/tracer.h"

#include <algorithm>

#include "eager/autograd.h"
#include "eager/ops.h"

namespace kiln {

Tracer::Tracer(std::string name, LocationFn location) : location_(std::move(location)) {
  graph_.name = std::move(name);
}

Tracer::~Tracer() = default;

namespace {
// Code generation targets the CPU only so far; a GPU tensor in a trace would
// be read by CPU code.
void check_cpu_only(Device device, const Shape& shape, const char* what) {
  KILN_CHECK(device.is_cpu(), TraceError,
             "kiln.jit compiles for the cpu only so far, and {} (shape {}) is on {}; call the function without "
             "kiln.jit for GPU tensors, or move them with .cpu()",
             what, shape_str(shape), device.str());
}
}  // namespace

Tensor Tracer::argument(const TensorType& type) {
  check_cpu_only(type.device, type.shape, "an argument");
  ValueId id = graph_.add_value(type);
  graph_.arguments.push_back(id);
  return make_symbolic(type, std::make_shared<TraceValue>(TraceValue{id, this}));
}

int Tracer::capture(const Tensor& t) {
  check_cpu_only(t.device(), t.shape(), "a tensor the function uses");
  auto [it, inserted] = capture_index_.try_emplace(t.impl_ptr(), static_cast<int>(captured_.size()));
  if (inserted) {
    captured_.push_back(t);
    graph_.captures.push_back(graph_.add_value(type_of(t)));
  }
  return it->second;
}

ValueId Tracer::value_of(const Tensor& t) {
  if (!t.defined()) return kNoValue;
  // Eager code reading a view sees later in-place updates of its base; in
  // the graph a view is a value computed when it was taken. Refuse the read
  // rather than give the old values.
  if (const auto& view = t.impl_ptr()->traced_view; view && view->root.version() != view->root_version)
    fail<TraceError>("a view (shape {}) of a tensor that was updated in place after the view was taken is read "
                     "here: eager code would see the update, a traced graph cannot; take the view again after the "
                     "update",
                     shape_str(t.shape()));
  if (is_symbolic(t) && trace_value(t)->owner == this) return trace_value(t)->id;
  if (parent_) {
    // In a region, anything from outside is read through an extra argument.
    const void* identity = is_symbolic(t) ? static_cast<const void*>(trace_value(t).get()) : t.impl_ptr();
    auto [it, inserted] = outer_ids_.try_emplace(identity, kNoValue);
    if (inserted) {
      it->second = graph_.add_value(type_of(t));
      graph_.arguments.push_back(it->second);
      outer_refs_.push_back(t);
    }
    return it->second;
  }
  KILN_CHECK(!is_symbolic(t), TraceError,
             "a tensor traced by another kiln.jit function (shape {}) is used here; return it from that function "
             "instead of keeping it",
             shape_str(t.shape()));
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
    outputs.push_back(make_symbolic(type, std::make_shared<TraceValue>(TraceValue{id, this})));
  }
  if (location_) node.location = location_();
  graph_.nodes.push_back(std::move(node));
  return outputs;
}

void Tracer::assign(const Tensor& target, const Tensor& value) {
  ValueId id = value_of(value);
  if (is_symbolic(target) && trace_value(target)->owner == this) {
    // Every handle to this tensor now sees the new value; views taken
    // earlier keep the old one, as SSA values do.
    target.impl_ptr()->traced = std::make_shared<TraceValue>(TraceValue{id, this});
    return;
  }
  KILN_CHECK(!parent_, TraceError,
             "in-place update (shape {}) of a tensor from outside a kiln.cond / kiln.while_loop region is not "
             "supported; return the new value from the region instead",
             shape_str(target.shape()));
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
    // A new .grad is an extra result of the graph (by its result index).
    ValueId result = kNoValue;
    if (after.defined()) {
      result = static_cast<ValueId>(graph_.results.size());
      graph_.results.push_back(value_of(after));
      ++fn->grad_results;
    }
    fn->grad_writebacks.push_back({index, result});
    NoGradGuard no_grad;
    TraceScope pause(nullptr);
    t.set_grad(before);
  }
  for (auto& [impl, id] : assigned_) graph_.writebacks.push_back({capture_index_.at(impl), id});
  // In capture order, not the hash map's (pointer) order: the same function
  // traces to the same IR in every process, so the disk cache hits.
  std::sort(graph_.writebacks.begin(), graph_.writebacks.end(),
            [](const Graph::WriteBack& a, const Graph::WriteBack& b) { return a.capture_index < b.capture_index; });
  fn->graph = std::move(graph_);
  fn->captures = std::move(captured_);
  return fn;
}

// ---- control flow ----
std::pair<std::shared_ptr<Graph>, std::vector<Tensor>> Tracer::trace_region(const std::string& name,
                                                                             const RegionFn& fn,
                                                                             const std::vector<TensorType>& args) {
  Tracer region(name, location_);
  region.parent_ = this;
  std::vector<Tensor> symbolic;
  for (const TensorType& type : args) symbolic.push_back(region.argument(type));
  std::vector<Tensor> results;
  {
    // Region values do not take part in autograd inside the trace; the
    // executed graph is differentiable like any eager code.
    NoGradGuard no_grad;
    TraceScope scope(&region);
    results = fn(symbolic);
  }
  for (const Tensor& r : results) region.graph_.results.push_back(region.value_of(r));
  return {std::make_shared<Graph>(std::move(region.graph_)), std::move(region.outer_refs_)};
}

std::vector<Tensor> Tracer::record_region_node(const char* op, std::vector<Tensor> inputs, Attrs attrs,
                                               std::vector<std::shared_ptr<const Graph>> regions,
                                               const std::vector<TensorType>& out_types) {
  TraceScope pause(nullptr);
  GraphNode node;
  // Control flow is not a registered op: the executor and the IR builder
  // handle nodes with regions themselves.
  static const OpDef cond_def{.name = "cond", .num_inputs = -1, .num_outputs = -1};
  static const OpDef while_def{.name = "while_loop", .num_inputs = -1, .num_outputs = -1};
  node.op = std::string_view(op) == "cond" ? &cond_def : &while_def;
  for (const Tensor& t : inputs) node.inputs.push_back(value_of(t));
  node.attrs = std::move(attrs);
  node.regions = std::move(regions);
  std::vector<Tensor> outputs;
  for (const TensorType& type : out_types) {
    node.outputs.push_back(graph_.add_value(type));
    outputs.push_back(make_symbolic(type, std::make_shared<TraceValue>(TraceValue{node.outputs.back(), this})));
  }
  if (location_) node.location = location_();
  graph_.nodes.push_back(std::move(node));
  return outputs;
}

namespace {
std::vector<TensorType> result_types(const Graph& g) {
  std::vector<TensorType> out;
  for (ValueId id : g.results) out.push_back(g.values[id]);
  return out;
}

std::string types_str(const std::vector<TensorType>& types) {
  std::string s;
  for (const auto& t : types) s += (s.empty() ? "" : ", ") + type_str(t);
  return "(" + s + ")";
}
}  // namespace

std::vector<Tensor> Tracer::cond(const Tensor& pred, const RegionFn& then_fn, const RegionFn& else_fn,
                                 const std::vector<Tensor>& operands) {
  KILN_CHECK(pred.dtype() == DType::Bool && (pred.dim() == 0 || (pred.dim() == 1 && pred.size(0) == 1)), TraceError,
             "kiln.cond: the predicate must be a one-element bool tensor, got {} of shape {}",
             dtype_name(pred.dtype()), shape_str(pred.shape()));
  std::vector<TensorType> types;
  for (const Tensor& t : operands) types.push_back(type_of(t));
  auto [then_graph, then_refs] = trace_region("then", then_fn, types);
  auto [else_graph, else_refs] = trace_region("else", else_fn, types);
  auto then_types = result_types(*then_graph), else_types = result_types(*else_graph);
  KILN_CHECK(then_types == else_types, TraceError,
             "kiln.cond: the branches must return tensors of the same shapes and dtypes; true_fn returns {} and "
             "false_fn returns {}",
             types_str(then_types), types_str(else_types));
  std::vector<Tensor> inputs = {pred};
  inputs.insert(inputs.end(), operands.begin(), operands.end());
  inputs.insert(inputs.end(), then_refs.begin(), then_refs.end());
  inputs.insert(inputs.end(), else_refs.begin(), else_refs.end());
  Attrs attrs;
  attrs.set("num_operands", static_cast<int64_t>(operands.size()));
  attrs.set("num_then_refs", static_cast<int64_t>(then_refs.size()));
  return record_region_node("cond", inputs, attrs, {then_graph, else_graph}, then_types);
}

std::vector<Tensor> Tracer::while_loop(const RegionFn& cond_fn, const RegionFn& body_fn,
                                       const std::vector<Tensor>& init) {
  std::vector<TensorType> types;
  for (const Tensor& t : init) types.push_back(type_of(t));
  auto [cond_graph, cond_refs] = trace_region("cond", cond_fn, types);
  auto [body_graph, body_refs] = trace_region("body", body_fn, types);
  auto cond_types = result_types(*cond_graph), body_types = result_types(*body_graph);
  KILN_CHECK(cond_types.size() == 1 && cond_types[0].dtype == DType::Bool && !has_dynamic_dims(cond_types[0].shape) &&
                 numel(cond_types[0].shape) == 1,
             TraceError, "kiln.while_loop: cond_fn must return one one-element bool tensor, got {}",
             types_str(cond_types));
  KILN_CHECK(body_types == types, TraceError,
             "kiln.while_loop: body_fn must return the loop values with unchanged shapes and dtypes: it gets {} and "
             "returns {}",
             types_str(types), types_str(body_types));
  std::vector<Tensor> inputs = init;
  inputs.insert(inputs.end(), cond_refs.begin(), cond_refs.end());
  inputs.insert(inputs.end(), body_refs.begin(), body_refs.end());
  Attrs attrs;
  attrs.set("num_operands", static_cast<int64_t>(init.size()));
  attrs.set("num_then_refs", static_cast<int64_t>(cond_refs.size()));
  return record_region_node("while_loop", inputs, attrs, {cond_graph, body_graph}, types);
}

// ---- the graph executor ----
namespace {
std::vector<Tensor> run_region_node(const GraphNode& node, const std::vector<Tensor>& in) {
  auto n = static_cast<size_t>(node.attrs.get<int64_t>("num_operands"));
  auto first_refs = static_cast<size_t>(node.attrs.get<int64_t>("num_then_refs"));
  auto args_for = [&](const std::vector<Tensor>& values, size_t refs_begin, size_t refs_end) {
    std::vector<Tensor> args = values;
    args.insert(args.end(), in.begin() + refs_begin, in.begin() + refs_end);
    return args;
  };
  if (node.op->name == "cond") {
    std::vector<Tensor> operands(in.begin() + 1, in.begin() + 1 + n);
    size_t then_begin = 1 + n, else_begin = then_begin + first_refs;
    if (in[0].item<bool>()) return execute(*node.regions[0], args_for(operands, then_begin, else_begin));
    return execute(*node.regions[1], args_for(operands, else_begin, in.size()));
  }
  std::vector<Tensor> values(in.begin(), in.begin() + n);
  size_t cond_begin = n, body_begin = n + first_refs;
  while (execute(*node.regions[0], args_for(values, cond_begin, body_begin))[0].item<bool>())
    values = execute(*node.regions[1], args_for(values, body_begin, in.size()));
  return values;
}
}  // namespace

std::vector<Tensor> execute(const Graph& graph, const std::vector<Tensor>& inputs, std::vector<Tensor>* all_values) {
  std::vector<Tensor> values(graph.values.size());
  size_t i = 0;
  for (ValueId id : graph.arguments) values[id] = inputs.at(i++);
  for (ValueId id : graph.captures) values[id] = inputs.at(i++);
  std::vector<Tensor> node_inputs;
  for (const GraphNode& node : graph.nodes) {
    node_inputs.clear();
    for (ValueId id : node.inputs) node_inputs.push_back(id == kNoValue ? Tensor() : values[id]);
    std::vector<Tensor> outputs =
        node.regions.empty() ? node.op->run(node_inputs, node.attrs) : run_region_node(node, node_inputs);
    for (size_t k = 0; k < node.outputs.size(); ++k) values[node.outputs[k]] = std::move(outputs[k]);
  }
  std::vector<Tensor> results;
  for (ValueId id : graph.results) results.push_back(values[id]);
  // Values for the caller's write-backs ride after the results.
  for (const auto& wb : graph.writebacks) results.push_back(values[wb.value]);
  if (all_values) *all_values = std::move(values);
  return results;
}

std::vector<Tensor> TracedFunction::run(const std::vector<Tensor>& args) const {
  KILN_CHECK(args.size() == graph.arguments.size(), ValueError, "{}: expected {} tensor arguments, got {}",
             graph.name, graph.arguments.size(), args.size());
  std::vector<Tensor> inputs = args;
  inputs.insert(inputs.end(), captures.begin(), captures.end());
  std::vector<Tensor> results = execute(graph, inputs);
  {
    NoGradGuard no_grad;
    for (size_t k = 0; k < graph.writebacks.size(); ++k) {
      const Tensor& target = captures[graph.writebacks[k].capture_index];
      const Tensor& value = results[graph.results.size() + k];
      if (!value.is_same(target)) Tensor(target).copy_(value);
    }
  }
  for (const auto& wb : grad_writebacks)
    captures[wb.capture_index].set_grad(wb.value == kNoValue ? Tensor() : results[static_cast<size_t>(wb.value)]);
  results.resize(graph.results.size() - grad_results);
  return results;
}

}  // namespace kiln
