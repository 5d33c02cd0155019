#pragma once
// Tracing: running a function on symbolic tensors while every op records
// itself into a Graph (the TraceHook eager calls), then running that graph.
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "eager/op.h"
#include "tracer/graph.h"

namespace kiln {

class Tracer;

struct TraceValue {
  ValueId id;
  const Tracer* owner;  // values of an enclosing trace are read by reference in a region
};

// Where a recorded op was called from ("file.py:12"); the Python binding
// sets one that walks the Python stack, C++ callers may set their own.
using LocationFn = std::function<std::string()>;

// A traced function, ready to run: its graph and the concrete tensors it
// captured (by reference: each call reads their current values).
struct TracedFunction {
  Graph graph;
  std::vector<Tensor> captures;
  // .grad of captured tensors after a call: a graph value, or cleared.
  struct GradWriteBack {
    int capture_index;
    ValueId value;  // the index of the graph result holding the new .grad; kNoValue: None
  };
  std::vector<GradWriteBack> grad_writebacks;
  size_t grad_results = 0;  // the graph's last results are those .grads

  // Runs the graph op by op on the eager kernels, writes in-place updates
  // back into the captured tensors, and returns the results.
  std::vector<Tensor> run(const std::vector<Tensor>& args) const;
};

// Runs `graph` (a function or a region) on the eager kernels: its arguments
// then its captures are bound to `inputs`; returns the results.
// `all_values`, if given, receives every value of the graph by ValueId.
std::vector<Tensor> execute(const Graph& graph, const std::vector<Tensor>& inputs,
                            std::vector<Tensor>* all_values = nullptr);

// A traced region function: given symbolic arguments, returns its results.
using RegionFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

class Tracer final : public TraceHook {
 public:
  explicit Tracer(std::string name, LocationFn location = {});
  ~Tracer() override;

  // kiln.cond / kiln.while_loop inside this trace: traces the branches (or
  // the condition and the body) as regions and records one node.
  std::vector<Tensor> cond(const Tensor& pred, const RegionFn& then_fn, const RegionFn& else_fn,
                           const std::vector<Tensor>& operands);
  std::vector<Tensor> while_loop(const RegionFn& cond_fn, const RegionFn& body_fn, const std::vector<Tensor>& init);

  // A symbolic argument of the traced function.
  Tensor argument(const TensorType& type);
  // Ends the trace: `results` (symbolic or concrete tensors) become the
  // graph's results; grads set during the trace become write-backs and the
  // traced tensors' .grad is restored.
  std::shared_ptr<TracedFunction> finish(const std::vector<Tensor>& results);

  std::vector<Tensor> record(const OpDef& op, const std::vector<Tensor>& inputs, const Attrs& attrs) override;
  void assign(const Tensor& target, const Tensor& value) override;
  void grad_will_change(const Tensor& leaf) override;

 private:
  ValueId value_of(const Tensor& t);
  int capture(const Tensor& t);
  // Traces fn as a region of this trace: its graph, and the values of this
  // trace it reads (its trailing arguments, after `args`).
  std::pair<std::shared_ptr<Graph>, std::vector<Tensor>> trace_region(const std::string& name, const RegionFn& fn,
                                                                       const std::vector<TensorType>& args);
  std::vector<Tensor> record_region_node(const char* op, std::vector<Tensor> inputs, Attrs attrs,
                                         std::vector<std::shared_ptr<const Graph>> regions,
                                         const std::vector<TensorType>& out_types);

  // A region's tracer: values of the enclosing trace and concrete tensors
  // become arguments of the region (outer_refs_, in order).
  Tracer* parent_ = nullptr;
  std::vector<Tensor> outer_refs_;
  std::unordered_map<const void*, ValueId> outer_ids_;

  Graph graph_;
  LocationFn location_;
  std::vector<Tensor> captured_;
  std::unordered_map<const TensorImpl*, int> capture_index_;
  // Concrete tensors written in place during the trace: their current value.
  std::unordered_map<const TensorImpl*, ValueId> assigned_;
  // Tensors whose .grad the trace changed, with the .grad they had before.
  std::vector<std::pair<Tensor, Tensor>> grads_before_;
};

}  // namespace kiln
