#pragma once
// A traced function: values (each with its TensorType) and the ops that
// produce them, in recording order. The tracer builds it; the graph
// executor runs it on the eager kernels; the IR builder turns it into a
// func.func of the kiln dialect (tracer/ir_builder.h).
#include <memory>
#include <string>
#include <vector>

#include "eager/op.h"

namespace kiln {

using ValueId = int;
inline constexpr ValueId kNoValue = -1;  // an absent optional operand

struct Graph;

struct GraphNode {
  const OpDef* op = nullptr;
  std::vector<ValueId> inputs;
  Attrs attrs;
  std::vector<ValueId> outputs;
  std::string location;  // the user's "file:line" that called the op
  // Control flow (kiln.cond: then, else; kiln.while_loop: cond, body): each
  // region is a graph whose arguments are the node's inputs it reads.
  std::vector<std::shared_ptr<const Graph>> regions;
};

struct Graph {
  std::string name;
  std::vector<TensorType> values;    // by ValueId
  std::vector<ValueId> arguments;    // the function's tensor arguments, in order
  // Concrete tensors the function reads (parameters, optimizer state,
  // constants), in first-use order; read by reference on every call.
  std::vector<ValueId> captures;
  std::vector<GraphNode> nodes;
  std::vector<ValueId> results;      // the function's tensor results, in order
  // In-place updates of captures: after a call, capture `index` holds `value`.
  struct WriteBack {
    int capture_index;
    ValueId value;
  };
  std::vector<WriteBack> writebacks;

  ValueId add_value(TensorType type) {
    values.push_back(std::move(type));
    return static_cast<ValueId>(values.size()) - 1;
  }
};

}  // namespace kiln
