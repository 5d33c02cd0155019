#include "eager/optim.h"

#include <charconv>
#include <cmath>
#include <numbers>

#include "eager/autograd.h"
#include "eager/ops.h"
#include "runtime/parallel.h"

namespace kiln::optim {

namespace {

// Elements per task: an update reads and writes several streams, so a
// smaller tensor is not worth a thread hand-off.
constexpr int64_t kGrain = 32768;

bool is_float_dtype(DType d) { return d == DType::Float32 || d == DType::Float64; }

// The fused loops need plain arrays of the parameter's dtype and shape.
bool fusable(const Tensor& param, std::initializer_list<const Tensor*> others) {
  if (!param.device().is_cpu() || !is_float_dtype(param.dtype()) || !param.is_contiguous()) return false;
  for (const Tensor* t : others)
    if (t->defined() && (t->dtype() != param.dtype() || t->shape() != param.shape() || !t->is_contiguous() ||
                         !t->device().is_cpu()))
      return false;
  return true;
}

bool use_fused(const std::optional<bool>& fused, const char* op, const Tensor& param,
               std::initializer_list<const Tensor*> others) {
  bool ok = fusable(param, others);
  if (fused == true && !ok)
    fail<ValueError>("{}: fused=True needs contiguous float32/float64 CPU parameters, gradients and state "
                     "of one dtype (got a {} parameter{}); use fused=None",
                     op, dtype_name(param.dtype()), param.is_contiguous() ? "" : " that is not contiguous");
  return ok && fused != false;
}

void check_grad(const Tensor& param, const Tensor& grad, const char* op) {
  KILN_CHECK(grad.shape() == param.shape(), ShapeError,
             "{}: the gradient's shape {} differs from the parameter's {}", op, shape_str(grad.shape()),
             shape_str(param.shape()));
  KILN_CHECK(is_floating(param.dtype()), DTypeError, "{}: can only update floating-point parameters, got {}", op,
             dtype_name(param.dtype()));
}

// New state is concrete even inside a trace (then it is captured state the
// graph reads and writes back, not a value computed on every call).
Tensor concrete_zeros(const Shape& shape, DType dtype, Device device = kCPU) {
  TraceScope pause(nullptr);
  return zeros(shape, dtype, device);
}

Tensor& state_tensor(ParamState& state, const char* name, const Tensor& like) {
  Tensor& t = state[name];
  if (!t.defined()) t = concrete_zeros(like.shape(), like.dtype(), like.device());
  return t;
}

// Runs fn<T>() with T the C++ type of a float32/float64 dtype.
template <class F>
void dispatch_float(DType d, F&& fn) {
  if (d == DType::Float32)
    fn.template operator()<float>();
  else
    fn.template operator()<double>();
}

// ---- SGD ----

struct SGDCoefs {
  double lr, momentum, dampening, weight_decay, grad_sign;
};

// One task's range; __restrict on the arguments lets GCC vectorize without
// runtime alias checks (it gives up on five streams).
template <class T, bool kMomentum, bool kFirst, bool kNesterov>
void sgd_range(T* __restrict p, const T* __restrict g, T* __restrict buf, int64_t begin, int64_t end,
               const SGDCoefs& c) {
  const T lr = T(c.lr), wd = T(c.weight_decay), mom = T(c.momentum), keep = T(1 - c.dampening),
          sign = T(c.grad_sign);
  const bool decay = c.weight_decay != 0;  // loop-invariant: GCC unswitches it
  for (int64_t i = begin; i < end; ++i) {
    T d = sign * g[i];
    if (decay) d += wd * p[i];
    if constexpr (kMomentum) {
      T b = kFirst ? d : mom * buf[i] + keep * d;
      buf[i] = b;
      d = kNesterov ? d + mom * b : b;
    }
    p[i] = p[i] - lr * d;
  }
}

template <class T, bool kMomentum, bool kFirst, bool kNesterov>
void sgd_loop(T* p, const T* g, T* buf, int64_t n, const SGDCoefs& c) {
  parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    sgd_range<T, kMomentum, kFirst, kNesterov>(p, g, buf, begin, end, c);
  });
}

template <class T>
void sgd_fused(const Tensor& param, const Tensor& grad, const Tensor& buf, bool first, const SGDOptions& o) {
  SGDCoefs c{o.lr, o.momentum, o.dampening, o.weight_decay, o.maximize ? -1.0 : 1.0};
  T* p = param.data<T>();
  const T* g = grad.data<T>();
  T* b = buf.defined() ? buf.data<T>() : nullptr;
  int64_t n = param.numel();
  if (o.momentum == 0)
    sgd_loop<T, false, false, false>(p, g, b, n, c);
  else if (first)
    o.nesterov ? sgd_loop<T, true, true, true>(p, g, b, n, c) : sgd_loop<T, true, true, false>(p, g, b, n, c);
  else
    o.nesterov ? sgd_loop<T, true, false, true>(p, g, b, n, c) : sgd_loop<T, true, false, false>(p, g, b, n, c);
}

// ---- Adam ----

struct AdamCoefs {
  double beta1, beta2, eps, l2, decay, grad_sign, bias2_sqrt, neg_step_size;
};

template <class T, bool kAmsgrad>
void adam_range(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, T* __restrict vmax,
                int64_t begin, int64_t end, const AdamCoefs& c) {
  const T beta1 = T(c.beta1), one_minus_beta1 = T(1 - c.beta1), beta2 = T(c.beta2),
          one_minus_beta2 = T(1 - c.beta2), eps = T(c.eps), l2 = T(c.l2), decay = T(c.decay),
          sign = T(c.grad_sign), bias2_sqrt = T(c.bias2_sqrt), neg_step = T(c.neg_step_size);
  // Loop-invariant branches (GCC unswitches them), so that no weight decay
  // means no `0 * p` term (NaN for an infinite p, where PyTorch keeps inf).
  const bool has_l2 = c.l2 != 0, has_decay = c.decay != 1;
  for (int64_t i = begin; i < end; ++i) {
    T pi = has_decay ? p[i] * decay : p[i];
    T gi = sign * g[i];
    if (has_l2) gi += l2 * pi;
    T mi = m[i] * beta1 + one_minus_beta1 * gi;
    T vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    if constexpr (kAmsgrad) {
      vi = vmax[i] < vi ? vi : vmax[i];
      vmax[i] = vi;
    }
    T denom = std::sqrt(vi) / bias2_sqrt + eps;
    p[i] = pi + neg_step * mi / denom;
  }
}

template <class T, bool kAmsgrad>
void adam_loop(T* p, const T* g, T* m, T* v, T* vmax, int64_t n, const AdamCoefs& c) {
  parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    adam_range<T, kAmsgrad>(p, g, m, v, vmax, begin, end, c);
  });
}

template <class T>
void adam_fused(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& vmax,
                const AdamCoefs& c) {
  T* vm = vmax.defined() ? vmax.data<T>() : nullptr;
  if (vm)
    adam_loop<T, true>(param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), vm, param.numel(), c);
  else
    adam_loop<T, false>(param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), vm, param.numel(), c);
}

}  // namespace

namespace {
// The fused updates as ops (a trace records them; the graph runs the same
// kernel, so a traced step gives eager's bits, FMA contraction included).
// They update copies of the parameter and state and return them.
SGDOptions sgd_options(const Attrs& a) {
  SGDOptions o;
  o.lr = a.get<double>("lr");
  o.momentum = a.get<double>("momentum");
  o.dampening = a.get<double>("dampening");
  o.weight_decay = a.get<double>("weight_decay");
  o.nesterov = a.get<bool>("nesterov");
  o.maximize = a.get<bool>("maximize");
  return o;
}

std::vector<Tensor> sgd_fused_op(const Tensor& param, const Tensor& grad, const Tensor& buf, const SGDOptions& o) {
  auto attrs = [&] {
    return make_attrs("lr, momentum, dampening, weight_decay, nesterov, maximize", o.lr, o.momentum, o.dampening,
                      o.weight_decay, o.nesterov, o.maximize);
  };
  if (auto traced = trace_if_active("sgd_step", {param, grad, buf}, attrs)) return *traced;
  Tensor p = clone(param), b = buf.defined() ? clone(buf) : Tensor();
  dispatch_float(param.dtype(), [&]<class T>() { sgd_fused<T>(p, contiguous(grad), b, false, o); });
  return b.defined() ? std::vector<Tensor>{p, b} : std::vector<Tensor>{p};
}

std::vector<Tensor> adam_fused_op(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                                  const Tensor& vmax, const Tensor& step, const AdamOptions& o, bool decoupled) {
  auto attrs = [&] {
    return make_attrs("lr, beta1, beta2, eps, weight_decay, maximize, decoupled", o.lr, o.beta1, o.beta2, o.eps,
                      o.weight_decay, o.maximize, decoupled);
  };
  if (auto traced = trace_if_active("adam_step", {param, grad, m, v, vmax, step}, attrs)) return *traced;
  std::vector<Tensor> out = {clone(param), clone(m), clone(v)};
  if (vmax.defined()) out.push_back(clone(vmax));
  const double s = step.item<double>();
  AdamCoefs c{};
  c.beta1 = o.beta1;
  c.beta2 = o.beta2;
  c.eps = o.eps;
  c.l2 = decoupled ? 0 : o.weight_decay;
  c.decay = decoupled ? 1 - o.lr * o.weight_decay : 1;
  c.grad_sign = o.maximize ? -1 : 1;
  c.bias2_sqrt = std::sqrt(1 - std::pow(o.beta2, s));
  c.neg_step_size = -o.lr / (1 - std::pow(o.beta1, s));
  dispatch_float(param.dtype(), [&]<class T>() {
    adam_fused<T>(out[0], contiguous(grad), out[1], out[2], vmax.defined() ? out[3] : Tensor(), c);
  });
  return out;
}

AdamOptions adam_options(const Attrs& a) {
  AdamOptions o;
  o.lr = a.get<double>("lr");
  o.beta1 = a.get<double>("beta1");
  o.beta2 = a.get<double>("beta2");
  o.eps = a.get<double>("eps");
  o.weight_decay = a.get<double>("weight_decay");
  o.maximize = a.get<bool>("maximize");
  return o;
}
}  // namespace

void register_ops() {
  auto same_types = [](const std::vector<TensorType>& in, std::initializer_list<size_t> which) {
    std::vector<TensorType> out;
    for (size_t i : which)
      if (in[i].defined) out.push_back(in[i]);
    return out;
  };
  register_op({.name = "sgd_step",
               .num_inputs = 3,
               .num_outputs = -1,
               .operands = "param, grad, momentum_buffer?",
               .attrs = {{"lr", AttrKind::Float}, {"momentum", AttrKind::Float}, {"dampening", AttrKind::Float},
                         {"weight_decay", AttrKind::Float}, {"nesterov", AttrKind::Bool}, {"maximize", AttrKind::Bool}},
               .meta = [same_types](const std::vector<TensorType>& in, const Attrs&) { return same_types(in, {0, 2}); },
               .run = [](const std::vector<Tensor>& in, const Attrs& a) {
                 return sgd_fused_op(in[0], in[1], in[2], sgd_options(a));
               }});
  register_op({.name = "adam_step",
               .num_inputs = 6,
               .num_outputs = -1,
               .operands = "param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq?, step",
               .attrs = {{"lr", AttrKind::Float}, {"beta1", AttrKind::Float}, {"beta2", AttrKind::Float},
                         {"eps", AttrKind::Float}, {"weight_decay", AttrKind::Float}, {"maximize", AttrKind::Bool},
                         {"decoupled", AttrKind::Bool}},
               .meta = [same_types](const std::vector<TensorType>& in, const Attrs&) {
                 return same_types(in, {0, 2, 3, 4});
               },
               .run = [](const std::vector<Tensor>& in, const Attrs& a) {
                 return adam_fused_op(in[0], in[1], in[2], in[3], in[4], in[5], adam_options(a),
                                      a.get<bool>("decoupled"));
               }});
}

void sgd_update(const Tensor& param, const Tensor& grad, ParamState& state, const SGDOptions& o) {
  NoGradGuard no_grad;
  check_grad(param, grad, "SGD");
  Tensor p = param;
  Tensor* buf = nullptr;
  bool first = false;
  if (o.momentum != 0) {
    buf = &state["momentum_buffer"];
    first = !buf->defined();
  }
  if (active_trace() && (o.momentum == 0 || o.dampening == 0) &&
      use_fused(o.fused, "SGD", param, {&grad, buf && !first ? buf : &grad})) {
    // A new buffer is zeros: momentum * 0 + d is d, eager's first step.
    if (first) *buf = concrete_zeros(param.shape(), param.dtype(), param.device());
    std::vector<Tensor> out = sgd_fused_op(param, grad, buf ? *buf : Tensor(), o);
    trace_assign(p, out[0], "SGD");
    if (buf) trace_assign(*buf, out[1], "SGD");
    return;
  }
  if (!active_trace() && use_fused(o.fused, "SGD", param, {&grad, buf && !first ? buf : &grad})) {
    if (first) *buf = Tensor::empty(param.shape(), param.dtype());
    dispatch_float(param.dtype(), [&]<class T>() { sgd_fused<T>(param, grad, buf ? *buf : Tensor(), first, o); });
    p.bump_version();
    if (buf) buf->bump_version();
    return;
  }
  // The same math as the loop, as kiln ops (PyTorch's order of operations).
  Tensor d = o.maximize ? neg(grad) : grad;
  if (o.weight_decay != 0) d = add(d, mul(param, o.weight_decay));
  if (o.momentum != 0 && first && active_trace()) {
    // Traced, the first step's buffer is zeros: momentum * 0 + d is d, as
    // eager's first step; with dampening, a flag picks d on the first call.
    *buf = concrete_zeros(param.shape(), param.dtype(), param.device());
    if (o.dampening != 0) {
      Tensor& started = state["momentum_started"];
      started = concrete_zeros({}, DType::Bool);
      Tensor next = add(mul(*buf, o.momentum), mul(d, 1 - o.dampening));
      Tensor(*buf).copy_(where(started, next, d));
      started.fill_(true);
      first = false;
      d = o.nesterov ? add(d, mul(*buf, o.momentum)) : *buf;
      p.sub_(mul(d, o.lr));
      return;
    }
    first = false;
  }
  if (o.momentum != 0) {
    if (first)
      *buf = clone(d);
    else
      buf->mul_(o.momentum).add_(mul(d, 1 - o.dampening));
    d = o.nesterov ? add(d, mul(*buf, o.momentum)) : *buf;
  }
  p.sub_(mul(d, o.lr));
}

void adam_update(const Tensor& param, const Tensor& grad, ParamState& state, const AdamOptions& o,
                 bool decoupled) {
  NoGradGuard no_grad;
  const char* op = decoupled ? "AdamW" : "Adam";
  check_grad(param, grad, op);
  Tensor p = param;
  Tensor& step = state["step"];
  if (!step.defined()) step = concrete_zeros({}, DType::Float32);
  Tensor& m = state_tensor(state, "exp_avg", param);
  Tensor& v = state_tensor(state, "exp_avg_sq", param);
  Tensor vmax = o.amsgrad ? state_tensor(state, "max_exp_avg_sq", param) : Tensor();
  bool fused = use_fused(o.fused, op, param, {&grad, &m, &v, &vmax});  // may throw: before any write
  step.add_(1);

  if (fused && active_trace()) {
    std::vector<Tensor> out = adam_fused_op(param, grad, m, v, vmax, step, o, decoupled);
    trace_assign(p, out[0], op);
    trace_assign(m, out[1], op);
    trace_assign(v, out[2], op);
    if (vmax.defined()) trace_assign(vmax, out[3], op);
    return;
  }
  if (fused) {
    double s = step.item<double>();
    AdamCoefs c{};
    c.beta1 = o.beta1;
    c.beta2 = o.beta2;
    c.eps = o.eps;
    c.l2 = decoupled ? 0 : o.weight_decay;
    c.decay = decoupled ? 1 - o.lr * o.weight_decay : 1;
    c.grad_sign = o.maximize ? -1 : 1;
    c.bias2_sqrt = std::sqrt(1 - std::pow(o.beta2, s));
    c.neg_step_size = -o.lr / (1 - std::pow(o.beta1, s));
    dispatch_float(param.dtype(), [&]<class T>() { adam_fused<T>(param, grad, m, v, vmax, c); });
    for (const Tensor* t : {&p, &m, &v, &vmax})
      if (t->defined()) t->bump_version();
    return;
  }
  // The same math as kiln ops. The bias corrections are tensor ops on the
  // step (in float64, like PyTorch's Python floats), so a traced update
  // reads the step instead of baking it in.
  Tensor g = o.maximize ? neg(grad) : grad;
  if (decoupled) {
    if (o.weight_decay != 0) p.mul_(1 - o.lr * o.weight_decay);
  } else if (o.weight_decay != 0) {
    g = add(g, mul(param, o.weight_decay));
  }
  // Written in the fused loop's order of operations, so both give the same bits.
  m.mul_(o.beta1).add_(mul(g, 1 - o.beta1));
  v.mul_(o.beta2).add_(mul(mul(g, 1 - o.beta2), g));
  Tensor s = step.to(DType::Float64);
  Tensor bias2_sqrt = sqrt(sub(1.0, pow(o.beta2, s)));
  Tensor neg_step_size = div(-o.lr, sub(1.0, pow(o.beta1, s)));
  if (o.amsgrad) maximum_(vmax, v);
  Tensor denom = add(div(sqrt(o.amsgrad ? vmax : v), to_dtype(bias2_sqrt, param.dtype())), o.eps);
  p.add_(div(mul(m, to_dtype(neg_step_size, param.dtype())), denom));
}

// ---- Optimizer ----

Optimizer::Optimizer(std::vector<ParamGroup> groups, GroupOptions defaults) : defaults_(std::move(defaults)) {
  for (ParamGroup& g : groups) add_param_group(std::move(g));
}

void Optimizer::add_param_group(ParamGroup group) {
  for (const auto& [name, value] : group.options)
    KILN_CHECK(defaults_.count(name), ValueError, "add_param_group: unknown option '{}'", name);
  for (const auto& [name, value] : defaults_) group.options.try_emplace(name, value);
  for (const Tensor& p : group.params) {
    KILN_CHECK(p.defined(), ValueError, "optimizer: an undefined tensor among the parameters");
    KILN_CHECK(is_floating(p.dtype()), DTypeError, "optimizer: can only optimize floating-point tensors, got {}",
               dtype_name(p.dtype()));
    for (const ParamGroup& other : groups_)
      for (const Tensor& q : other.params)
        KILN_CHECK(!q.is_same(p), ValueError, "optimizer: a parameter appears in more than one group");
  }
  groups_.push_back(std::move(group));
}

void Optimizer::zero_grad(bool set_to_none) {
  for (ParamGroup& g : groups_)
    for (const Tensor& p : g.params) {
      Tensor grad = p.grad();
      if (!grad.defined()) continue;
      if (set_to_none) {
        p.set_grad(Tensor());
      } else {
        grad.zero_();
      }
    }
}

const std::vector<Tensor>& Optimizer::params(size_t group) const {
  KILN_CHECK(group < groups_.size(), IndexError, "optimizer: group {} out of range ({} groups)", group,
             groups_.size());
  return groups_[group].params;
}

const GroupOptions& Optimizer::options(size_t group) const {
  KILN_CHECK(group < groups_.size(), IndexError, "optimizer: group {} out of range ({} groups)", group,
             groups_.size());
  return groups_[group].options;
}

void Optimizer::set_option(size_t group, const std::string& name, double value) {
  KILN_CHECK(group < groups_.size(), IndexError, "optimizer: group {} out of range ({} groups)", group,
             groups_.size());
  KILN_CHECK(defaults_.count(name), ValueError, "optimizer: unknown option '{}'", name);
  groups_[group].options[name] = value;
}

void Optimizer::set_lr(double lr) {
  for (ParamGroup& g : groups_) g.options["lr"] = lr;
}

const ParamState& Optimizer::state(const Tensor& param) const {
  static const ParamState empty;
  auto it = state_.find(param.impl_ptr());
  return it == state_.end() ? empty : it->second;
}

StateDict Optimizer::state_dict() const {
  StateDict out;
  size_t index = 0;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (const auto& [name, value] : groups_[g].options)
      out[fmt::format("param_groups.{}.{}", g, name)] = scalar_tensor(value, DType::Float64);
    for (const Tensor& p : groups_[g].params) {
      for (const auto& [name, t] : state(p))
        if (t.defined()) out[fmt::format("state.{}.{}", index, name)] = t;
      ++index;
    }
  }
  return out;
}

void Optimizer::load_state_dict(const StateDict& sd) {
  std::vector<const Tensor*> flat;
  for (const ParamGroup& g : groups_)
    for (const Tensor& p : g.params) flat.push_back(&p);
  std::unordered_map<const TensorImpl*, ParamState> state;
  std::vector<GroupOptions> options(groups_.size());
  for (const auto& [key, value] : sd) {
    auto dot1 = key.find('.'), dot2 = key.find('.', dot1 == std::string::npos ? 0 : dot1 + 1);
    KILN_CHECK(dot1 != std::string::npos && dot2 != std::string::npos, ValueError,
               "load_state_dict: unexpected key '{}' (want state.<i>.<name> or param_groups.<g>.<option>)", key);
    std::string kind = key.substr(0, dot1), name = key.substr(dot2 + 1);
    size_t index = 0;
    const char* first = key.data() + dot1 + 1;
    const char* last = key.data() + dot2;
    auto [end, err] = std::from_chars(first, last, index);
    KILN_CHECK(err == std::errc() && end == last && first != last, ValueError,
               "load_state_dict: unexpected key '{}' (want state.<i>.<name> or param_groups.<g>.<option>)", key);
    if (kind == "param_groups") {
      KILN_CHECK(index < groups_.size(), ValueError,
                 "load_state_dict: the state_dict has more parameter groups than this optimizer ({})",
                 groups_.size());
      KILN_CHECK(defaults_.count(name), ValueError, "load_state_dict: unknown option '{}'", name);
      options[index][name] = value.item<double>();
    } else if (kind == "state") {
      KILN_CHECK(index < flat.size(), ValueError,
                 "load_state_dict: state for parameter {} but this optimizer has {} parameters", index, flat.size());
      const Tensor& p = *flat[index];
      KILN_CHECK(name == "step" || value.shape() == p.shape(), ShapeError,
                 "load_state_dict: state '{}' of parameter {} has shape {}, the parameter {}", name, index,
                 shape_str(value.shape()), shape_str(p.shape()));
      state[p.impl_ptr()][name] = name == "step" ? to_dtype(value, DType::Float32) : to_dtype(value, p.dtype());
    } else {
      fail<ValueError>("load_state_dict: unexpected key '{}'", key);
    }
  }
  // Copies, so that the loaded optimizer never shares buffers with the source.
  for (auto& [impl, ps] : state)
    for (auto& [name, t] : ps) t = clone(t);
  for (size_t g = 0; g < groups_.size(); ++g)
    for (const auto& [name, value] : options[g]) groups_[g].options[name] = value;
  state_ = std::move(state);
}

// ---- SGD, Adam, AdamW ----

namespace {

GroupOptions to_group_options(const SGDOptions& o) {
  return {{"lr", o.lr}, {"momentum", o.momentum}, {"dampening", o.dampening}, {"weight_decay", o.weight_decay},
          {"nesterov", o.nesterov}, {"maximize", o.maximize}};
}

SGDOptions sgd_options(const GroupOptions& g, std::optional<bool> fused) {
  return {g.at("lr"), g.at("momentum"), g.at("dampening"), g.at("weight_decay"), g.at("nesterov") != 0,
          g.at("maximize") != 0, fused};
}

template <class Options>
GroupOptions adam_group_options(const Options& o) {
  return {{"lr", o.lr},   {"beta1", o.beta1},     {"beta2", o.beta2},     {"eps", o.eps},
          {"weight_decay", o.weight_decay}, {"amsgrad", o.amsgrad}, {"maximize", o.maximize}};
}

AdamOptions adam_options(const GroupOptions& g, std::optional<bool> fused) {
  return {g.at("lr"), g.at("beta1"), g.at("beta2"), g.at("eps"), g.at("weight_decay"), g.at("amsgrad") != 0,
          g.at("maximize") != 0, fused};
}

std::vector<ParamGroup> one_group(std::vector<Tensor> params) {
  std::vector<ParamGroup> groups(1);
  groups[0].params = std::move(params);
  return groups;
}

void check_sgd(const SGDOptions& o) {
  KILN_CHECK(o.lr >= 0, ValueError, "SGD: invalid learning rate {}", o.lr);
  KILN_CHECK(o.momentum >= 0, ValueError, "SGD: invalid momentum {}", o.momentum);
  KILN_CHECK(o.weight_decay >= 0, ValueError, "SGD: invalid weight_decay {}", o.weight_decay);
  KILN_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0), ValueError,
             "SGD: nesterov momentum needs momentum > 0 and dampening = 0");
}

template <class Options>
void check_adam(const Options& o, const char* op) {
  KILN_CHECK(o.lr >= 0, ValueError, "{}: invalid learning rate {}", op, o.lr);
  KILN_CHECK(o.eps >= 0, ValueError, "{}: invalid eps {}", op, o.eps);
  KILN_CHECK(o.beta1 >= 0 && o.beta1 < 1, ValueError, "{}: invalid beta1 {} (want 0 <= beta1 < 1)", op, o.beta1);
  KILN_CHECK(o.beta2 >= 0 && o.beta2 < 1, ValueError, "{}: invalid beta2 {} (want 0 <= beta2 < 1)", op, o.beta2);
  KILN_CHECK(o.weight_decay >= 0, ValueError, "{}: invalid weight_decay {}", op, o.weight_decay);
}

AdamOptions as_adam(const AdamWOptions& o) {
  return {o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.amsgrad, o.maximize, o.fused};
}

}  // namespace

SGD::SGD(std::vector<Tensor> params, const SGDOptions& options) : SGD(one_group(std::move(params)), options) {}

SGD::SGD(std::vector<ParamGroup> groups, const SGDOptions& options)
    : Optimizer(std::move(groups), to_group_options(options)) {
  check_sgd(options);
  fused_ = options.fused;
}

void SGD::step() {
  NoGradGuard no_grad;
  for (ParamGroup& g : groups_) {
    SGDOptions o = sgd_options(g.options, fused_);
    check_sgd(o);
    for (const Tensor& p : g.params) {
      Tensor grad = p.grad();
      if (grad.defined()) sgd_update(p, grad, state_of(p), o);
    }
  }
}

Adam::Adam(std::vector<Tensor> params, const AdamOptions& options)
    : Adam(one_group(std::move(params)), options, false) {}

Adam::Adam(std::vector<ParamGroup> groups, const AdamOptions& options) : Adam(std::move(groups), options, false) {}

Adam::Adam(std::vector<ParamGroup> groups, const AdamOptions& options, bool decoupled)
    : Optimizer(std::move(groups), adam_group_options(options)), decoupled_(decoupled) {
  check_adam(options, decoupled ? "AdamW" : "Adam");
  fused_ = options.fused;
}

void Adam::step() {
  NoGradGuard no_grad;
  for (ParamGroup& g : groups_) {
    AdamOptions o = adam_options(g.options, fused_);
    check_adam(o, decoupled_ ? "AdamW" : "Adam");
    for (const Tensor& p : g.params) {
      Tensor grad = p.grad();
      if (grad.defined()) adam_update(p, grad, state_of(p), o, decoupled_);
    }
  }
}

AdamW::AdamW(std::vector<Tensor> params, const AdamWOptions& options)
    : Adam(one_group(std::move(params)), as_adam(options), true) {}

AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options)
    : Adam(std::move(groups), as_adam(options), true) {}

// ---- schedulers ----

LRScheduler::LRScheduler(Optimizer& optimizer) : optimizer_(optimizer) {
  for (size_t g = 0; g < optimizer.num_param_groups(); ++g) base_lrs_.push_back(optimizer.lr(g));
}

void LRScheduler::init() { apply(); }

void LRScheduler::step() {
  ++last_epoch_;
  apply();
}

void LRScheduler::apply() {
  for (size_t g = 0; g < base_lrs_.size(); ++g) optimizer_.set_lr(g, lr_at(base_lrs_[g], g, last_epoch_));
}

std::vector<double> LRScheduler::get_last_lr() const {
  std::vector<double> out;
  for (size_t g = 0; g < base_lrs_.size(); ++g) out.push_back(optimizer_.lr(g));
  return out;
}

StepLR::StepLR(Optimizer& optimizer, int64_t step_size, double gamma)
    : LRScheduler(optimizer), step_size_(step_size), gamma_(gamma) {
  KILN_CHECK(step_size > 0, ValueError, "StepLR: step_size must be positive, got {}", step_size);
  init();
}

double StepLR::lr_at(double base_lr, size_t, int64_t epoch) const {
  return base_lr * std::pow(gamma_, static_cast<double>(epoch / step_size_));
}

CosineAnnealingLR::CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min)
    : LRScheduler(optimizer), t_max_(T_max), eta_min_(eta_min) {
  KILN_CHECK(T_max > 0, ValueError, "CosineAnnealingLR: T_max must be positive, got {}", T_max);
  init();
}

double CosineAnnealingLR::lr_at(double base_lr, size_t, int64_t epoch) const {
  return eta_min_ + (base_lr - eta_min_) * (1 + std::cos(std::numbers::pi * static_cast<double>(epoch) /
                                                         static_cast<double>(t_max_))) / 2;
}

LambdaLR::LambdaLR(Optimizer& optimizer, std::function<double(int64_t)> factor)
    : LRScheduler(optimizer), factor_(std::move(factor)) {
  init();
}

double LambdaLR::lr_at(double base_lr, size_t, int64_t epoch) const { return base_lr * factor_(epoch); }

// ---- clip_grad_norm_ ----

Tensor clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type,
                       bool error_if_nonfinite) {
  NoGradGuard no_grad;
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (g.defined()) grads.push_back(g);
  }
  if (grads.empty()) return zeros({});
  bool inf = std::isinf(norm_type);
  std::vector<Tensor> norms;
  for (const Tensor& g : grads) {
    Tensor a = abs(g);
    norms.push_back(inf ? amax(a) : norm_type == 2 ? sqrt(sum(mul(g, g))) : pow(sum(pow(a, norm_type)), 1 / norm_type));
  }
  Tensor all = stack(norms);
  Tensor total = inf ? amax(all) : pow(sum(pow(all, norm_type)), 1 / norm_type);
  if (error_if_nonfinite) {
    double t = total.item<double>();
    KILN_CHECK(std::isfinite(t), ValueError,
               "clip_grad_norm_: the total norm of order {} of the gradients is non-finite ({}), so they cannot "
               "be clipped; pass error_if_nonfinite=false to clip anyway",
               norm_type, t);
  }
  Tensor coef = clamp(div(max_norm, add(total, 1e-6)), std::nullopt, Scalar(1.0));
  for (Tensor& g : grads) g.mul_(coef);
  return total;
}

}  // namespace kiln::optim

namespace kiln {
void register_optim_ops() { optim::register_ops(); }
}  // namespace kiln
