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

struct TraceValue {
  ValueId id;
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
    ValueId value;  // kNoValue: set .grad to None
  };
  std::vector<GradWriteBack> grad_writebacks;

  // Runs the graph op by op on the eager kernels, writes in-place updates
  // back into the captured tensors, and returns the results.
  std::vector<Tensor> run(const std::vector<Tensor>& args) const;
};

class Tracer final : public TraceHook {
 public:
  explicit Tracer(std::string name, LocationFn location = {});
  ~Tracer() override;

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
