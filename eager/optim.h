#pragma once
// kiln::optim: SGD, Adam and AdamW, learning-rate schedules and
// clip_grad_norm_, with PyTorch's semantics (torch.optim, 1.13).
//
//   kiln::optim::AdamW opt(model.parameters(), {.lr = 1e-3});
//   opt.zero_grad(); loss.backward(); opt.step();
//
// The per-parameter update math lives in sgd_update()/adam_update() below;
// the C++ optimizer classes and the Python ones (kiln.optim) both call them.
// Each update has two implementations of the same math:
//  - a fused loop, one pass over memory, for contiguous float32/float64 CPU
//    tensors (PyTorch's single-tensor Adam makes ~8 passes; this makes 1);
//  - a composition of kiln in-place ops (mul_, add_, sqrt, maximum...), which
//    works for every layout and dtype and is what a tracer captures, since
//    the bias corrections are tensor ops on the step tensor too.
// fused = nullopt picks the loop where it applies; false forces the ops;
// true insists on the loop (a ValueError where it does not apply).
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "eager/tensor.h"

namespace kiln::optim {

// One parameter's state, as in PyTorch's optimizer.state[p]: "step" (a 0-d
// float32 tensor), "momentum_buffer", "exp_avg", "exp_avg_sq",
// "max_exp_avg_sq". Missing entries are created on the first update.
using ParamState = std::map<std::string, Tensor>;

struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
  bool maximize = false;
  std::optional<bool> fused;
};

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
  bool amsgrad = false;
  bool maximize = false;
  std::optional<bool> fused;
};

// AdamW's defaults differ from Adam's only in weight_decay.
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
  bool maximize = false;
  std::optional<bool> fused;
};

// ---- the per-parameter updates (in place, with grad mode off) ----
void sgd_update(const Tensor& param, const Tensor& grad, ParamState& state, const SGDOptions& options);
// decoupled_weight_decay: AdamW (the parameter decays by lr * weight_decay)
// instead of Adam (weight_decay * param is added to the gradient).
void adam_update(const Tensor& param, const Tensor& grad, ParamState& state, const AdamOptions& options,
                 bool decoupled_weight_decay = false);

// ---- optimizers ----
// Hyperparameters of a group by name ("lr", "momentum", "beta1", ...;
// booleans as 0/1), like a PyTorch param group's dict.
using GroupOptions = std::map<std::string, double>;

struct ParamGroup {
  std::vector<Tensor> params;
  // Overrides of the optimizer's defaults for this group (e.g. {{"lr", 0.1}}).
  GroupOptions options;
};

// An optimizer's state as flat named tensors (safetensors-friendly):
// "state.<i>.<name>" for parameter i (numbered across the groups in order)
// and "param_groups.<g>.<option>" as 0-d float64 tensors.
using StateDict = std::map<std::string, Tensor>;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Updates every parameter that has a gradient, with grad mode off.
  virtual void step() = 0;
  // set_to_none: drop the gradients (the next backward allocates them);
  // otherwise zero them in place.
  void zero_grad(bool set_to_none = true);

  void add_param_group(ParamGroup group);
  size_t num_param_groups() const { return groups_.size(); }
  const std::vector<Tensor>& params(size_t group = 0) const;
  const GroupOptions& options(size_t group = 0) const;
  // Sets one hyperparameter of a group (the schedulers set "lr").
  void set_option(size_t group, const std::string& name, double value);
  double lr(size_t group = 0) const { return options(group).at("lr"); }
  void set_lr(double lr);  // every group
  void set_lr(size_t group, double lr) { set_option(group, "lr", lr); }

  // The state of a parameter (empty before its first update).
  const ParamState& state(const Tensor& param) const;

  StateDict state_dict() const;
  // Takes a state_dict of an optimizer of the same kind over parameters of
  // the same shapes; the tensors are copied.
  void load_state_dict(const StateDict& state_dict);

 protected:
  Optimizer(std::vector<ParamGroup> groups, GroupOptions defaults);
  ParamState& state_of(const Tensor& param) { return state_[param.impl_ptr()]; }
  std::vector<ParamGroup> groups_;
  std::optional<bool> fused_;

 private:
  GroupOptions defaults_;
  // Keyed by the parameter's TensorImpl: the groups hold the parameters, so
  // the keys stay valid.
  std::unordered_map<const TensorImpl*, ParamState> state_;
};

class SGD : public Optimizer {
 public:
  explicit SGD(std::vector<Tensor> params, const SGDOptions& options = {});
  SGD(std::vector<ParamGroup> groups, const SGDOptions& options = {});
  void step() override;
};

class Adam : public Optimizer {
 public:
  explicit Adam(std::vector<Tensor> params, const AdamOptions& options = {});
  Adam(std::vector<ParamGroup> groups, const AdamOptions& options = {});
  void step() override;

 protected:
  Adam(std::vector<ParamGroup> groups, const AdamOptions& options, bool decoupled);

 private:
  bool decoupled_ = false;
};

class AdamW : public Adam {
 public:
  explicit AdamW(std::vector<Tensor> params, const AdamWOptions& options = {});
  AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options = {});
};

// ---- learning-rate schedules ----
// Each sets lr = f(base_lr, epoch) on every group of the optimizer at
// construction (epoch 0) and on every step() (epoch + 1), in closed form.
class LRScheduler {
 public:
  virtual ~LRScheduler() = default;
  void step();
  int64_t last_epoch() const { return last_epoch_; }
  // The learning rate of each group as last set.
  std::vector<double> get_last_lr() const;

 protected:
  explicit LRScheduler(Optimizer& optimizer);
  // Call at the end of a subclass's constructor: sets the epoch-0 rates.
  void init();
  virtual double lr_at(double base_lr, size_t group, int64_t epoch) const = 0;

 private:
  void apply();
  Optimizer& optimizer_;
  std::vector<double> base_lrs_;
  int64_t last_epoch_ = 0;
};

// lr = base_lr * gamma^(epoch / step_size)
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& optimizer, int64_t step_size, double gamma = 0.1);

 private:
  double lr_at(double base_lr, size_t group, int64_t epoch) const override;
  int64_t step_size_;
  double gamma_;
};

// lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2
class CosineAnnealingLR : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min = 0);

 private:
  double lr_at(double base_lr, size_t group, int64_t epoch) const override;
  int64_t t_max_;
  double eta_min_;
};

// lr = base_lr * factor(epoch)
class LambdaLR : public LRScheduler {
 public:
  LambdaLR(Optimizer& optimizer, std::function<double(int64_t epoch)> factor);

 private:
  double lr_at(double base_lr, size_t group, int64_t epoch) const override;
  std::function<double(int64_t)> factor_;
};

// ---- gradient clipping ----
// Scales the gradients in place so that their joint norm (norm_type-norm of
// the per-tensor norms; inf: the largest |g|) is at most max_norm, and
// returns the norm before clipping as a 0-d tensor. Parameters without a
// gradient are skipped.
Tensor clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0,
                       bool error_if_nonfinite = false);

}  // namespace kiln::optim
