#include "eager/op.h"

#include <algorithm>
#include <map>
#include <mutex>

namespace kiln {

bool has_dynamic_dims(const Shape& shape) {
  return std::any_of(shape.begin(), shape.end(), is_dynamic);
}

TensorType type_of(const Tensor& t) {
  if (!t.defined()) return {.defined = false};
  return {t.shape(), t.dtype(), t.device()};
}

std::string type_str(const TensorType& t) {
  static const std::map<DType, const char*> mlir_names = {
      {DType::Bool, "i1"},   {DType::UInt8, "ui8"},   {DType::Int8, "i8"},      {DType::Int32, "i32"},
      {DType::Int64, "i64"}, {DType::Float16, "f16"}, {DType::BFloat16, "bf16"}, {DType::Float32, "f32"},
      {DType::Float64, "f64"}};
  std::string s = "tensor<";
  for (int64_t d : t.shape) s += (is_dynamic(d) ? std::string("?") : std::to_string(d)) + "x";
  return s + mlir_names.at(t.dtype) + ">";
}

// ---- attributes ----
const AttrValue* Attrs::find(std::string_view name) const {
  for (const auto& [n, v] : items_)
    if (n == name) return &v;
  return nullptr;
}

namespace {
template <class T>
T convert_attr(const AttrValue& v, std::string_view name) {
  if constexpr (std::is_same_v<T, int64_t>) {
    if (auto* b = std::get_if<bool>(&v)) return *b;
  }
  if constexpr (std::is_same_v<T, double>) {
    if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  }
  if constexpr (std::is_same_v<T, Scalar>) {
    if (auto* b = std::get_if<bool>(&v)) return Scalar(*b);
    if (auto* i = std::get_if<int64_t>(&v)) return Scalar(*i);
    if (auto* d = std::get_if<double>(&v)) return Scalar(*d);
  }
  if (auto* x = std::get_if<T>(&v)) return *x;
  fail<Error>("attribute '{}' has an unexpected kind", name);
}

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};
}  // namespace

template <class T>
T Attrs::get(std::string_view name) const {
  const AttrValue* v = find(name);
  if constexpr (is_optional<T>::value) {
    if (!v || std::holds_alternative<std::monostate>(*v)) return std::nullopt;
    return convert_attr<typename T::value_type>(*v, name);
  } else {
    KILN_CHECK(v && !std::holds_alternative<std::monostate>(*v), Error, "missing attribute '{}'", name);
    return convert_attr<T>(*v, name);
  }
}

#define KILN_ATTR_GET(T) template T Attrs::get<T>(std::string_view) const; \
  template std::optional<T> Attrs::get<std::optional<T>>(std::string_view) const;
KILN_ATTR_GET(bool)
KILN_ATTR_GET(int64_t)
KILN_ATTR_GET(double)
KILN_ATTR_GET(std::string)
KILN_ATTR_GET(std::vector<int64_t>)
KILN_ATTR_GET(DType)
KILN_ATTR_GET(Scalar)
#undef KILN_ATTR_GET

AttrValue to_attr(bool v) { return v; }
AttrValue to_attr(int v) { return static_cast<int64_t>(v); }
AttrValue to_attr(int64_t v) { return v; }
AttrValue to_attr(double v) { return v; }
AttrValue to_attr(const std::string& v) { return v; }
AttrValue to_attr(const char* v) { return std::string(v); }
AttrValue to_attr(const std::vector<int64_t>& v) { return v; }
AttrValue to_attr(DType v) { return v; }
AttrValue to_attr(Scalar v) { return v; }

std::vector<std::string> split_attr_names(const char* names) {
  std::vector<std::string> out;
  std::string cur;
  for (const char* p = names;; ++p) {
    if (*p == ',' || *p == '\0') {
      out.push_back(cur);
      cur.clear();
      if (*p == '\0') break;
    } else if (*p != ' ') {
      cur += *p;
    }
  }
  return out;
}

std::vector<OperandSpec> operand_specs(const OpDef& op) {
  std::vector<OperandSpec> specs;
  if (op.operands.empty()) {
    static const char* const by_arity[] = {"", "x", "a, b", "a, b, c"};
    if (op.num_inputs < 0) return {{"inputs", OperandSpec::Variadic}};
    KILN_CHECK(op.num_inputs <= 3, Error, "op '{}': name its {} operands (OpDef::operands)", op.name, op.num_inputs);
    if (op.num_inputs == 0) return specs;
    return operand_specs(OpDef{.name = op.name, .num_inputs = op.num_inputs, .operands = by_arity[op.num_inputs]});
  }
  for (const std::string& item : split_attr_names(op.operands.c_str())) {
    OperandSpec spec{item};
    if (item.ends_with("?...")) spec = {item.substr(0, item.size() - 4), OperandSpec::Variadic, true};
    else if (item.ends_with("...")) spec = {item.substr(0, item.size() - 3), OperandSpec::Variadic};
    else if (item.ends_with("?")) spec = {item.substr(0, item.size() - 1), OperandSpec::Optional};
    specs.push_back(std::move(spec));
  }
  bool variadic = std::any_of(specs.begin(), specs.end(), [](auto& s) { return s.kind == OperandSpec::Variadic; });
  KILN_CHECK(variadic ? op.num_inputs < 0 : static_cast<int>(specs.size()) == op.num_inputs, Error,
             "op '{}': operands \"{}\" do not match num_inputs {}", op.name, op.operands, op.num_inputs);
  return specs;
}

// ---- the registry ----
namespace {
struct Registry {
  std::mutex mutex;
  std::map<std::string, OpDef, std::less<>> ops;
};
Registry& registry() {
  static Registry r;
  return r;
}
void register_all_ops();  // below: the family registrars

void ensure_registered() {
  static std::once_flag once;
  std::call_once(once, register_all_ops);
}
}  // namespace

void register_op(OpDef def) {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  std::string name = def.name;
  KILN_CHECK(!r.ops.count(name), Error, "op '{}' is registered twice", name);
  r.ops.emplace(std::move(name), std::move(def));
}

const OpDef* find_op(std::string_view name) {
  ensure_registered();
  Registry& r = registry();
  auto it = r.ops.find(name);
  return it == r.ops.end() ? nullptr : &it->second;
}

const OpDef& op_def(std::string_view name) {
  const OpDef* def = find_op(name);
  KILN_CHECK(def, Error, "no op named '{}' is registered", name);
  return *def;
}

std::vector<const OpDef*> all_ops() {
  ensure_registered();
  std::vector<const OpDef*> out;
  for (auto& [name, def] : registry().ops) out.push_back(&def);
  return out;
}

// ---- tracing ----
namespace {
thread_local TraceHook* t_trace = nullptr;
}

TraceHook* active_trace() { return t_trace; }
TraceScope::TraceScope(TraceHook* hook) : previous_(t_trace) { t_trace = hook; }
TraceScope::~TraceScope() { t_trace = previous_; }

Tensor make_symbolic(const TensorType& type, std::shared_ptr<TraceValue> value) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = Storage::borrow(nullptr, 0, type.device, {});
  impl->shape = type.shape;
  impl->strides = Strides(type.shape.size(), 0);
  // Strides of a value without memory only matter to code that would read
  // it, which is refused; keep them contiguous where sizes are known.
  int64_t stride = 1;
  for (size_t i = type.shape.size(); i-- > 0;) {
    impl->strides[i] = stride;
    stride = is_dynamic(type.shape[i]) ? 1 : stride * std::max<int64_t>(type.shape[i], 1);
  }
  impl->dtype = type.dtype;
  impl->traced = std::move(value);
  return Tensor(std::move(impl));
}

std::optional<std::vector<Tensor>> trace_if_active(const char* name, const std::vector<Tensor>& inputs,
                                                   const std::function<Attrs()>& attrs) {
  TraceHook* trace = t_trace;
  if (!trace) return std::nullopt;
  return trace->record(op_def(name), inputs, attrs());
}

void Tensor::needs_value_error() const {
  fail<TraceError>("a traced tensor (shape {}) has no value while its function is traced: .item(), .numpy(), "
                   "bool(), printing values and Python control flow on tensor values cannot be traced; use "
                   "kiln.cond / kiln.while_loop for control flow, pass the value as a static (non-tensor) "
                   "argument, or use kiln.print to print at run time",
                   shape_str(shape()));
}

namespace {
// The op families (each defined next to its kernels).
void register_all_ops() {
  register_unary_ops();
  register_binary_ops();
  register_creation_ops();
  register_print_ops();
  register_view_ops();
  register_copy_ops();
  register_join_ops();
  register_indexing_ops();
  register_reduce_ops();
  register_matmul_ops();
  register_nn_ops();
  register_functional_ops();
  register_optim_ops();
}
}  // namespace

}  // namespace kiln
