#pragma once
// The layers of kiln::nn, with torch.nn's constructor arguments, parameter
// names, default initialization and forward semantics (PyTorch 1.13), so
// their state dicts interchange with PyTorch's.
//
//   auto model = std::make_shared<nn::Sequential>(nn::Linear(64, 128), nn::ReLU(), nn::Linear(128, 10));
//   Tensor logits = model->forward(x);
//
// Layers with many options take a struct, used like Python keywords:
//   nn::TransformerEncoderLayer(64, 4, {.dim_feedforward = 128, .batch_first = true})
#include <concepts>
#include <functional>
#include <optional>
#include <string>

#include "eager/nn/functional.h"
#include "eager/nn/module.h"

namespace kiln::nn {

// A 2-d size given as one int (both dims) or two: Conv2d(1, 8, 3) or {3, 5}.
struct Size2 {
  int64_t h, w;
  Size2(int64_t v) : h(v), w(v) {}  // NOLINT: implicit, like PyTorch's int-or-tuple
  Size2(int64_t h_, int64_t w_) : h(h_), w(w_) {}
  functional::Pair pair() const { return {h, w}; }
};

// y = x W^T + b. weight (out, in), bias (out).
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor forward(const Tensor& x);
  void reset_parameters();
  std::string extra_repr() const override;

  int64_t in_features, out_features;
  Tensor weight, bias;
};

// NCHW (or CHW) convolution. weight (out, in / groups, kh, kw), bias (out).
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, Size2 kernel_size, Size2 stride = 1, Size2 padding = 0,
         Size2 dilation = 1, int64_t groups = 1, bool bias = true);
  Tensor forward(const Tensor& x);
  void reset_parameters();
  std::string extra_repr() const override;

  int64_t in_channels, out_channels, groups;
  Size2 kernel_size, stride, padding, dilation;
  Tensor weight, bias;
};

class LayerNorm : public Module {
 public:
  LayerNorm(Shape normalized_shape, double eps = 1e-5, bool elementwise_affine = true);
  Tensor forward(const Tensor& x);
  std::string extra_repr() const override;

  Shape normalized_shape;
  double eps;
  bool elementwise_affine;
  Tensor weight, bias;
};

// Batch normalization over dim 1. momentum nullopt: a cumulative average.
// Buffers running_mean, running_var, num_batches_tracked (int64, 0-d).
class BatchNorm : public Module {
 public:
  Tensor forward(const Tensor& x);
  std::string extra_repr() const override;

  int64_t num_features;
  double eps;
  std::optional<double> momentum;
  bool affine, track_running_stats;
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 protected:
  BatchNorm(const char* name, int64_t num_features, double eps, std::optional<double> momentum, bool affine,
            bool track_running_stats);
  virtual void check_input(const Tensor& x) const = 0;
};

// Input (N, C) or (N, C, L).
class BatchNorm1d : public BatchNorm {
 public:
  explicit BatchNorm1d(int64_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1,
                       bool affine = true, bool track_running_stats = true)
      : BatchNorm("BatchNorm1d", num_features, eps, momentum, affine, track_running_stats) {}

 protected:
  void check_input(const Tensor& x) const override;
};

// Input (N, C, H, W).
class BatchNorm2d : public BatchNorm {
 public:
  explicit BatchNorm2d(int64_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1,
                       bool affine = true, bool track_running_stats = true)
      : BatchNorm("BatchNorm2d", num_features, eps, momentum, affine, track_running_stats) {}

 protected:
  void check_input(const Tensor& x) const override;
};

// weight (num_embeddings, embedding_dim), N(0, 1); the padding_idx row is zero.
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, std::optional<int64_t> padding_idx = std::nullopt);
  Tensor forward(const Tensor& indices);
  std::string extra_repr() const override;

  int64_t num_embeddings, embedding_dim;
  std::optional<int64_t> padding_idx;
  Tensor weight;
};

class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  Tensor forward(const Tensor& x);
  std::string extra_repr() const override;
  double p;
};

// ---- activations and reshapes (no parameters) ----
class ReLU : public Module {
 public:
  ReLU() : Module("ReLU") {}
  Tensor forward(const Tensor& x) { return functional::relu(x); }
};
class GELU : public Module {
 public:
  explicit GELU(std::string approximate = "none");
  Tensor forward(const Tensor& x) { return gelu(x, approximate); }
  std::string extra_repr() const override { return "approximate='" + approximate + "'"; }
  std::string approximate;
};
class SiLU : public Module {
 public:
  SiLU() : Module("SiLU") {}
  Tensor forward(const Tensor& x) { return functional::silu(x); }
};
class Tanh : public Module {
 public:
  Tanh() : Module("Tanh") {}
  Tensor forward(const Tensor& x) { return functional::tanh(x); }
};
class Sigmoid : public Module {
 public:
  Sigmoid() : Module("Sigmoid") {}
  Tensor forward(const Tensor& x) { return functional::sigmoid(x); }
};
class Softmax : public Module {
 public:
  explicit Softmax(int64_t dim) : Module("Softmax"), dim(dim) {}
  Tensor forward(const Tensor& x) { return functional::softmax(x, dim); }
  std::string extra_repr() const override { return "dim=" + std::to_string(dim); }
  int64_t dim;
};
class LogSoftmax : public Module {
 public:
  explicit LogSoftmax(int64_t dim) : Module("LogSoftmax"), dim(dim) {}
  Tensor forward(const Tensor& x) { return functional::log_softmax(x, dim); }
  std::string extra_repr() const override { return "dim=" + std::to_string(dim); }
  int64_t dim;
};
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1)
      : Module("Flatten"), start_dim(start_dim), end_dim(end_dim) {}
  Tensor forward(const Tensor& x) { return flatten(x, start_dim, end_dim); }
  std::string extra_repr() const override;
  int64_t start_dim, end_dim;
};
class Identity : public Module {
 public:
  Identity() : Module("Identity") {}
  Tensor forward(const Tensor& x) { return x; }
};

// ---- pooling ----
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(Size2 kernel_size, std::optional<Size2> stride = std::nullopt, Size2 padding = 0,
                     Size2 dilation = 1, bool ceil_mode = false);
  Tensor forward(const Tensor& x);
  std::string extra_repr() const override;
  Size2 kernel_size, stride, padding, dilation;
  bool ceil_mode;
};
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(Size2 kernel_size, std::optional<Size2> stride = std::nullopt, Size2 padding = 0,
                     bool ceil_mode = false, bool count_include_pad = true);
  Tensor forward(const Tensor& x);
  std::string extra_repr() const override;
  Size2 kernel_size, stride, padding;
  bool ceil_mode, count_include_pad;
};
class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(Size2 output_size) : Module("AdaptiveAvgPool2d"), output_size(output_size) {}
  Tensor forward(const Tensor& x) { return functional::adaptive_avg_pool2d(x, output_size.pair()); }
  std::string extra_repr() const override;
  Size2 output_size;
};

// ---- containers ----
// A module Sequential can hold: it has Tensor forward(const Tensor&).
template <class M>
concept TensorModule = std::derived_from<M, Module> && requires(M& m, const Tensor& x) {
  { m.forward(x) } -> std::convertible_to<Tensor>;
};

// Calls its children in order; they are named "0", "1", ...
class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  // Modules by value (moved into shared_ptrs) or as shared_ptrs.
  template <class... Ms>
    requires(sizeof...(Ms) > 0 && !(sizeof...(Ms) == 1 && (std::same_as<std::decay_t<Ms>, Sequential> && ...)))
  explicit Sequential(Ms&&... modules) : Sequential() {
    (push_back(std::forward<Ms>(modules)), ...);
  }

  template <TensorModule M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    KILN_CHECK(module, ValueError, "Sequential.push_back: null module");
    calls_.push_back([module](const Tensor& x) { return Tensor(module->forward(x)); });
    register_module(std::to_string(calls_.size() - 1), module);
    return module;
  }
  template <class M>
    requires TensorModule<std::decay_t<M>>
  std::shared_ptr<std::decay_t<M>> push_back(M&& module) {
    return push_back(std::make_shared<std::decay_t<M>>(std::forward<M>(module)));
  }

  Tensor forward(const Tensor& x);
  size_t size() const { return calls_.size(); }
  ModulePtr operator[](size_t i) const;
  template <class M>
  std::shared_ptr<M> at(size_t i) const {
    auto m = std::dynamic_pointer_cast<M>((*this)[i]);
    KILN_CHECK(m, ValueError, "Sequential.at: module {} is a {}, not the type asked for", i, (*this)[i]->name());
    return m;
  }

 private:
  // Each child's forward, bound to its concrete type.
  std::vector<std::function<Tensor(const Tensor&)>> calls_;
};

// A list of submodules named "0", "1", ...; no forward of its own.
class ModuleList : public Module {
 public:
  ModuleList() : Module("ModuleList") {}
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    register_module(std::to_string(size()), module);
    return module;
  }
  template <class M>
    requires std::derived_from<std::decay_t<M>, Module>
  std::shared_ptr<std::decay_t<M>> push_back(M&& module) {
    return push_back(std::make_shared<std::decay_t<M>>(std::forward<M>(module)));
  }
  size_t size() const { return named_children().size(); }
  ModulePtr operator[](size_t i) const;
  template <class M>
  std::shared_ptr<M> at(size_t i) const {
    auto m = std::dynamic_pointer_cast<M>((*this)[i]);
    KILN_CHECK(m, ValueError, "ModuleList.at: module {} is a {}, not the type asked for", i, (*this)[i]->name());
    return m;
  }
};

// ---- attention ----
struct MultiheadAttentionOptions {
  double dropout = 0.0;
  bool bias = true;
  // Key and value feature sizes when they differ from embed_dim; then the
  // projections are q_proj_weight/k_proj_weight/v_proj_weight instead of
  // in_proj_weight, as in PyTorch.
  std::optional<int64_t> kdim = std::nullopt, vdim = std::nullopt;
  bool batch_first = false;
};

// torch.nn.MultiheadAttention: in_proj_weight (3E, E), in_proj_bias (3E),
// out_proj (a Linear E -> E). Inputs (L, N, E), or (N, L, E) when
// batch_first, or unbatched (L, E).
class MultiheadAttention : public Module {
 public:
  MultiheadAttention(int64_t embed_dim, int64_t num_heads, MultiheadAttentionOptions options = {});
  // key_padding_mask (N, S): true (or -inf) ignores that key. attn_mask
  // (L, S) or (N * num_heads, L, S): bool true = not allowed, or float added
  // to the scores. Returns the output and, when need_weights, the attention
  // weights (N, L, S), averaged over heads unless !average_attn_weights
  // (then (N, num_heads, L, S)); else an undefined tensor.
  std::pair<Tensor, Tensor> forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                    const Tensor& key_padding_mask = {}, bool need_weights = true,
                                    const Tensor& attn_mask = {}, bool average_attn_weights = true,
                                    bool is_causal = false);
  void reset_parameters();

  int64_t embed_dim, num_heads, head_dim, kdim, vdim;
  double dropout;
  bool batch_first;
  Tensor in_proj_weight, in_proj_bias, q_proj_weight, k_proj_weight, v_proj_weight;
  std::shared_ptr<Linear> out_proj;
};

struct TransformerEncoderLayerOptions {
  int64_t dim_feedforward = 2048;
  double dropout = 0.1;
  std::string activation = "relu";  // "relu" | "gelu"
  double layer_norm_eps = 1e-5;
  bool batch_first = false;
  bool norm_first = false;
};

// torch.nn.TransformerEncoderLayer: self_attn, linear1, dropout, linear2,
// norm1, norm2, dropout1, dropout2 (PyTorch's names).
class TransformerEncoderLayer : public Module {
 public:
  TransformerEncoderLayer(int64_t d_model, int64_t nhead, TransformerEncoderLayerOptions options = {});
  Tensor forward(const Tensor& src, const Tensor& src_mask = {}, const Tensor& src_key_padding_mask = {},
                 bool is_causal = false);

  TransformerEncoderLayerOptions options;
  std::shared_ptr<MultiheadAttention> self_attn;
  std::shared_ptr<Linear> linear1, linear2;
  std::shared_ptr<Dropout> dropout, dropout1, dropout2;
  std::shared_ptr<LayerNorm> norm1, norm2;

 private:
  Tensor activation(const Tensor& x) const;
};

}  // namespace kiln::nn
