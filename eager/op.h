#pragma once
// The op registry and the tracing interface.
//
// Every op is defined once, as an OpDef next to its kernel:
//   - its operands and attribute schema (which the IR's op definitions and
//     the graph executor are generated from),
//   - its meta rule: validation and the output types from the input types
//     and attributes, also for dynamic (`?`) dims. Eager calls the typed
//     meta function before it allocates; the IR's result-type inference
//     and the tracer call the same function through the OpDef,
//   - `run`: the op from generic arguments (the graph executor's entry).
//
// When a trace is active on this thread (TraceHook), public ops hand the
// call to the tracer instead of computing: the tracer records it and
// returns symbolic tensors (shape, dtype, device, no storage). Eager does
// not link the tracer or MLIR; it only knows this interface.
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "eager/tensor.h"

namespace kiln {

bool has_dynamic_dims(const Shape& shape);

// What a traced value is known to be.
struct TensorType {
  Shape shape;  // dims may be kDynamic
  DType dtype = DType::Float32;
  Device device = kCPU;
  // False for an absent optional operand (an undefined Tensor, e.g. no bias).
  bool defined = true;
  bool operator==(const TensorType&) const = default;
};
TensorType type_of(const Tensor& t);  // {.defined = false} for an undefined tensor
std::string type_str(const TensorType& t);  // "tensor<4x?xf32>" (MLIR's spelling)

// ---- attributes: an op's non-tensor arguments ----
enum class AttrKind : uint8_t { Bool, Int, Float, String, Ints, DType, Scalar };
using AttrValue = std::variant<std::monostate, bool, int64_t, double, std::string, std::vector<int64_t>, DType, Scalar>;

struct AttrSpec {
  std::string name;
  AttrKind kind;
  bool optional = false;  // may be absent (std::nullopt)
};

class Attrs {
 public:
  Attrs() = default;
  void set(std::string name, AttrValue value) { items_.emplace_back(std::move(name), std::move(value)); }
  const AttrValue* find(std::string_view name) const;
  // The value, converted to T (T = std::optional<U> for an optional attribute).
  template <class T>
  T get(std::string_view name) const;
  const std::vector<std::pair<std::string, AttrValue>>& items() const { return items_; }
  bool operator==(const Attrs&) const = default;

 private:
  std::vector<std::pair<std::string, AttrValue>> items_;
};

// make_attrs("dims, keepdim", dims, keepdim): names from a comma-separated
// list (KILN_ATTRS stringizes the argument names).
AttrValue to_attr(bool v);
AttrValue to_attr(int v);
AttrValue to_attr(int64_t v);
AttrValue to_attr(double v);
AttrValue to_attr(const std::string& v);
AttrValue to_attr(const char* v);
AttrValue to_attr(const std::vector<int64_t>& v);
AttrValue to_attr(DType v);
AttrValue to_attr(Scalar v);
template <size_t N>
AttrValue to_attr(const std::array<int64_t, N>& v) {
  return std::vector<int64_t>(v.begin(), v.end());
}
template <class T>
AttrValue to_attr(const std::optional<T>& v) {
  return v ? to_attr(*v) : AttrValue{};
}
std::vector<std::string> split_attr_names(const char* names);
template <class... Args>
Attrs make_attrs(const char* names, const Args&... values) {
  Attrs attrs;
  std::vector<std::string> split = split_attr_names(names);
  size_t i = 0;
  (attrs.set(split.at(i++), to_attr(values)), ...);
  return attrs;
}
// A lazily built attribute list: built only when a trace records the op.
#define KILN_ATTRS(...) [&] { return ::kiln::make_attrs(#__VA_ARGS__, __VA_ARGS__); }
#define KILN_NO_ATTRS [] { return ::kiln::Attrs(); }

// ---- the registry ----
struct OpDef {
  std::string name;
  // Tensor operands: a fixed count, or variadic (cat) when -1. An optional
  // operand (an absent bias) is passed as an undefined Tensor.
  int num_inputs = 1;
  int num_outputs = 1;
  // Operand names for the IR ("x, weight, bias?": a trailing '?' marks an
  // optional operand, "inputs..." a variadic one, "indices?..." a variadic
  // one with absent entries). Empty: x / a, b / a, b, c
  // by arity, "inputs..." when variadic.
  std::string operands;
  std::vector<AttrSpec> attrs;
  std::function<std::vector<TensorType>(const std::vector<TensorType>& inputs, const Attrs& attrs)> meta;
  std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs, const Attrs& attrs)> run;
  // Ops with effects the graph must keep in order (random numbers).
  bool stateful = false;
};

// An operand as the IR names it (parsed from OpDef::operands).
struct OperandSpec {
  enum Kind : uint8_t { Required, Optional, Variadic };
  std::string name;
  Kind kind = Required;
  // "name?...": a variadic operand whose entries may be absent (advanced
  // indexing's None positions); the IR lists the present ones and, when
  // one is absent, marks them in a `<name>_present` bool-array attribute.
  bool holes = false;
};
std::vector<OperandSpec> operand_specs(const OpDef& op);

// The OpDef of `name`; Error naming the op when there is none.
const OpDef& op_def(std::string_view name);
const OpDef* find_op(std::string_view name);
std::vector<const OpDef*> all_ops();  // sorted by name
// Each op family registers its ops in a function that op.cpp calls once
// (explicit calls, so a static library keeps every family linked).
void register_op(OpDef def);
void register_unary_ops();     // unary.cpp
void register_binary_ops();    // binary.cpp (with where, clamp)
void register_creation_ops();  // creation.cpp
void register_print_ops();     // print.cpp
void register_view_ops();      // views.cpp
void register_copy_ops();      // copy.cpp (to, clone, contiguous)
void register_join_ops();      // join.cpp
void register_indexing_ops();  // indexing.cpp
void register_reduce_ops();    // reduce.cpp
void register_matmul_ops();    // matmul.cpp
void register_nn_ops();        // nn_ops.cpp (softmax, log_softmax, layer_norm)
void register_functional_ops();  // nn/*.cpp (linear, conv, pools, norms, losses, dropout...)
void register_optim_ops();       // optim.cpp (the fused SGD / Adam updates)

// ---- registering an op from typed functions ----
// The attribute kind of a C++ attribute type (std::optional<T>: T's kind,
// optional).
template <class T>
struct attr_traits;
template <> struct attr_traits<bool> { static constexpr AttrKind kind = AttrKind::Bool; };
template <> struct attr_traits<int64_t> { static constexpr AttrKind kind = AttrKind::Int; };
template <> struct attr_traits<double> { static constexpr AttrKind kind = AttrKind::Float; };
template <> struct attr_traits<std::string> { static constexpr AttrKind kind = AttrKind::String; };
template <> struct attr_traits<std::vector<int64_t>> { static constexpr AttrKind kind = AttrKind::Ints; };
template <> struct attr_traits<DType> { static constexpr AttrKind kind = AttrKind::DType; };
template <> struct attr_traits<Scalar> { static constexpr AttrKind kind = AttrKind::Scalar; };
template <class T>
struct attr_traits<std::optional<T>> {
  static constexpr AttrKind kind = attr_traits<T>::kind;
  static constexpr bool optional = true;
};

// Registers `def` with attributes `attr_names` ("dim, start", as KILN_ATTRS
// names them) of the C++ types A...: meta(input types, attrs...) and
// run(inputs, attrs...) get them in that order and return one TensorType /
// Tensor or a vector of them.
//   register_typed<int64_t>({.name = "unsqueeze"}, "dim",
//       [](const auto& in, int64_t dim) { return unsqueeze_meta(in[0], dim); },
//       [](const auto& in, int64_t dim) { return unsqueeze(in[0], dim); });
template <class T>
inline constexpr bool is_optional_attr = requires { attr_traits<T>::optional; };

template <class... A, class Meta, class Run>
void register_typed(OpDef def, const char* attr_names, Meta meta, Run run) {
  std::vector<std::string> names = sizeof...(A) ? split_attr_names(attr_names) : std::vector<std::string>{};
  KILN_CHECK(names.size() == sizeof...(A), Error, "op '{}': {} attribute names for {} attribute types", def.name,
             names.size(), sizeof...(A));
  [&]<size_t... I>(std::index_sequence<I...>) {
    (def.attrs.push_back({names[I], attr_traits<A>::kind, is_optional_attr<A>}), ...);
  }(std::index_sequence_for<A...>{});
  auto get = [names](const Attrs& attrs) {
    return [&]<size_t... I>(std::index_sequence<I...>) {
      return std::tuple<A...>{attrs.get<A>(names[I])...};
    }(std::index_sequence_for<A...>{});
  };
  def.meta = [meta, get](const std::vector<TensorType>& in, const Attrs& attrs) -> std::vector<TensorType> {
    auto out = std::apply([&](const A&... a) { return meta(in, a...); }, get(attrs));
    if constexpr (std::is_same_v<decltype(out), TensorType>) return {std::move(out)};
    else return out;
  };
  def.run = [run, get](const std::vector<Tensor>& in, const Attrs& attrs) -> std::vector<Tensor> {
    auto out = std::apply([&](const A&... a) { return run(in, a...); }, get(attrs));
    if constexpr (std::is_same_v<decltype(out), Tensor>) return {std::move(out)};
    else return out;
  };
  register_op(std::move(def));
}

// ---- tracing ----
struct TraceValue;  // the tracer's handle for a symbolic tensor

class TraceHook {
 public:
  virtual ~TraceHook() = default;
  // Records `op(inputs; attrs)` and returns its symbolic outputs. Concrete
  // inputs (parameters, optimizer state, constants) become captures.
  virtual std::vector<Tensor> record(const OpDef& op, const std::vector<Tensor>& inputs, const Attrs& attrs) = 0;
  // An in-place op's result: from now on `target` holds `value`.
  virtual void assign(const Tensor& target, const Tensor& value) = 0;
  // `leaf.grad` is about to be set (by backward() or by assignment), so the
  // trace can write the new .grad back after each call.
  virtual void grad_will_change(const Tensor& leaf) = 0;
};

// The trace active on this thread, or null.
TraceHook* active_trace();
// Sets the active trace for a scope (null: pause tracing, e.g. while the
// tracer itself runs meta rules).
class TraceScope {
 public:
  explicit TraceScope(TraceHook* hook);
  ~TraceScope();
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  TraceHook* previous_;
};

// A storage-less tensor standing for a traced value.
Tensor make_symbolic(const TensorType& type, std::shared_ptr<TraceValue> value);
inline bool is_symbolic(const Tensor& t) { return t.defined() && t.impl_ptr()->traced != nullptr; }
inline const std::shared_ptr<TraceValue>& trace_value(const Tensor& t) { return t.impl_ptr()->traced; }

// A view taken inside a trace is a value of its own (SSA); it remembers the
// value it views (`root`, symbolic or a capture) and the view ops that take
// root to it, so that an in-place write through it is traced as a
// functional "<view op>_scatter" of the new value into root, assigned to
// root. A null op: the view cannot be written through (its name says why).
struct TracedView {
  Tensor root;
  uint64_t root_version = 0;  // root's version when the view was taken
  std::vector<std::pair<const OpDef*, Attrs>> ops;
  std::string not_writable;  // when an op is null: the op that made it, and why
};
// Marks `out` (an op's symbolic result) as the view `op(x; attrs)` of x.
void note_traced_view(const Tensor& out, const Tensor& x, const OpDef* op, Attrs attrs,
                      const char* not_writable = "");
// In a trace, `view` (a TracedView) now holds `value`: records the scatter
// into its root and assigns it (trace_assign calls this).
void trace_write_through_view(const Tensor& view, const Tensor& value, const char* op);

// Runs op `name` through the trace when one is active; else nullopt and the
// caller computes eagerly. For ops that do not go through autograd_op
// (creation, in-place writes).
std::optional<std::vector<Tensor>> trace_if_active(const char* name, const std::vector<Tensor>& inputs,
                                                   const std::function<Attrs()>& attrs);

}  // namespace kiln
