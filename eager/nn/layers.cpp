#include "eager/nn/layers.h"

#include <cmath>
#include <limits>

#include "eager/autograd.h"
#include "eager/nn/init.h"

namespace kiln::nn {

namespace F = functional;

namespace {

const char* py_bool(bool b) { return b ? "True" : "False"; }

// PyTorch prints an int-or-tuple argument the way it was given; kiln keeps
// one int when both dims agree.
std::string size2_str(const Size2& s) {
  return s.h == s.w ? std::to_string(s.h) : fmt::format("({}, {})", s.h, s.w);
}
std::string tuple_str(const Size2& s) { return fmt::format("({}, {})", s.h, s.w); }

std::string shape_tuple(const Shape& s) {
  if (s.size() == 1) return fmt::format("({},)", s[0]);
  return shape_str(s);
}

// The default init of Linear and Conv2d (PyTorch's reset_parameters):
// kaiming_uniform_(a = sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
// and the bias draws from the same range.
void reset_affine(const Tensor& weight, const Tensor& bias) {
  init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    int64_t fan_in = init::calculate_fan_in_and_fan_out(weight).first;
    double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
    init::uniform_(bias, -bound, bound);
  }
}

void check_positive(int64_t v, const char* layer, const char* what) {
  KILN_CHECK(v > 0, ValueError, "{}: {} must be positive, got {}", layer, what, v);
}

}  // namespace

// ---- Linear ----
Linear::Linear(int64_t in_features, int64_t out_features, bool bias)
    : Module("Linear"), in_features(in_features), out_features(out_features) {
  KILN_CHECK(in_features >= 0 && out_features >= 0, ValueError,
             "Linear: in_features and out_features must be non-negative, got {} and {}", in_features, out_features);
  weight = register_parameter("weight", Tensor::empty({out_features, in_features}));
  this->bias = register_parameter("bias", bias ? Tensor::empty({out_features}) : Tensor());
  reset_parameters();
}

void Linear::reset_parameters() { reset_affine(weight, bias); }

Tensor Linear::forward(const Tensor& x) {
  KILN_CHECK(x.dim() >= 1 && x.size(-1) == in_features, ShapeError,
             "Linear(in_features={}, out_features={}): expected an input whose last dimension is {}, got shape {}",
             in_features, out_features, in_features, shape_str(x.shape()));
  return F::linear(x, weight, bias);
}

std::string Linear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}", in_features, out_features, py_bool(bias.defined()));
}

// ---- Conv2d ----
Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, Size2 kernel_size, Size2 stride, Size2 padding,
               Size2 dilation, int64_t groups, bool bias)
    : Module("Conv2d"),
      in_channels(in_channels),
      out_channels(out_channels),
      groups(groups),
      kernel_size(kernel_size),
      stride(stride),
      padding(padding),
      dilation(dilation) {
  check_positive(in_channels, "Conv2d", "in_channels");
  check_positive(out_channels, "Conv2d", "out_channels");
  check_positive(groups, "Conv2d", "groups");
  KILN_CHECK(in_channels % groups == 0 && out_channels % groups == 0, ValueError,
             "Conv2d: in_channels ({}) and out_channels ({}) must be divisible by groups ({})", in_channels,
             out_channels, groups);
  KILN_CHECK(kernel_size.h > 0 && kernel_size.w > 0 && stride.h > 0 && stride.w > 0 && dilation.h > 0 &&
                 dilation.w > 0 && padding.h >= 0 && padding.w >= 0,
             ValueError, "Conv2d: kernel_size, stride and dilation must be positive and padding non-negative");
  weight = register_parameter("weight", Tensor::empty({out_channels, in_channels / groups, kernel_size.h, kernel_size.w}));
  this->bias = register_parameter("bias", bias ? Tensor::empty({out_channels}) : Tensor());
  reset_parameters();
}

void Conv2d::reset_parameters() { reset_affine(weight, bias); }

Tensor Conv2d::forward(const Tensor& x) {
  KILN_CHECK((x.dim() == 3 || x.dim() == 4) && x.size(-3) == in_channels, ShapeError,
             "Conv2d({}, {}): expected input (N, {}, H, W) or ({}, H, W), got shape {}", in_channels, out_channels,
             in_channels, in_channels, shape_str(x.shape()));
  return F::conv2d(x, weight, bias, stride.pair(), padding.pair(), dilation.pair(), groups);
}

std::string Conv2d::extra_repr() const {
  std::string s = fmt::format("{}, {}, kernel_size={}, stride={}", in_channels, out_channels, tuple_str(kernel_size),
                              tuple_str(stride));
  if (padding.h != 0 || padding.w != 0) s += ", padding=" + tuple_str(padding);
  if (dilation.h != 1 || dilation.w != 1) s += ", dilation=" + tuple_str(dilation);
  if (groups != 1) s += fmt::format(", groups={}", groups);
  if (!bias.defined()) s += ", bias=False";
  return s;
}

// ---- LayerNorm ----
LayerNorm::LayerNorm(Shape normalized_shape, double eps, bool elementwise_affine)
    : Module("LayerNorm"), normalized_shape(std::move(normalized_shape)), eps(eps), elementwise_affine(elementwise_affine) {
  KILN_CHECK(!this->normalized_shape.empty(), ValueError, "LayerNorm: normalized_shape must not be empty");
  weight = register_parameter("weight", elementwise_affine ? ones(this->normalized_shape) : Tensor());
  bias = register_parameter("bias", elementwise_affine ? zeros(this->normalized_shape) : Tensor());
}

Tensor LayerNorm::forward(const Tensor& x) {
  const int64_t n = static_cast<int64_t>(normalized_shape.size());
  bool ok = x.dim() >= n && Shape(x.shape().end() - n, x.shape().end()) == normalized_shape;
  KILN_CHECK(ok, ShapeError, "LayerNorm({}): expected an input whose trailing dimensions are {}, got shape {}",
             shape_tuple(normalized_shape), shape_str(normalized_shape), shape_str(x.shape()));
  return F::layer_norm(x, normalized_shape, weight, bias, eps);
}

std::string LayerNorm::extra_repr() const {
  return fmt::format("{}, eps={}, elementwise_affine={}", shape_tuple(normalized_shape), eps,
                     py_bool(elementwise_affine));
}

// ---- BatchNorm ----
BatchNorm::BatchNorm(const char* name, int64_t num_features, double eps, std::optional<double> momentum, bool affine,
                     bool track_running_stats)
    : Module(name),
      num_features(num_features),
      eps(eps),
      momentum(momentum),
      affine(affine),
      track_running_stats(track_running_stats) {
  check_positive(num_features, name, "num_features");
  weight = register_parameter("weight", affine ? ones({num_features}) : Tensor());
  bias = register_parameter("bias", affine ? zeros({num_features}) : Tensor());
  running_mean = register_buffer("running_mean", track_running_stats ? zeros({num_features}) : Tensor());
  running_var = register_buffer("running_var", track_running_stats ? ones({num_features}) : Tensor());
  num_batches_tracked =
      register_buffer("num_batches_tracked", track_running_stats ? zeros({}, DType::Int64) : Tensor());
}

Tensor BatchNorm::forward(const Tensor& x) {
  check_input(x);
  double factor = momentum.value_or(0.0);
  if (is_training() && track_running_stats) {
    NoGradGuard no_grad;
    num_batches_tracked.add_(1);
    if (!momentum) factor = 1.0 / static_cast<double>(num_batches_tracked.item<int64_t>());
  }
  if (is_training()) {
    int64_t per_channel = x.numel() / x.size(1);
    KILN_CHECK(per_channel > 1, ValueError,
               "{}: expected more than 1 value per channel when training, got input shape {}", name(),
               shape_str(x.shape()));
  }
  // Eval without running statistics normalizes with the batch's own.
  bool use_batch_stats = is_training() || !running_mean.defined();
  return F::batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, factor, eps);
}

std::string BatchNorm::extra_repr() const {
  return fmt::format("{}, eps={}, momentum={}, affine={}, track_running_stats={}", num_features, eps,
                     momentum ? fmt::format("{}", *momentum) : "None", py_bool(affine), py_bool(track_running_stats));
}

void BatchNorm1d::check_input(const Tensor& x) const {
  KILN_CHECK((x.dim() == 2 || x.dim() == 3) && x.size(1) == num_features, ShapeError,
             "BatchNorm1d({}): expected input (N, {}) or (N, {}, L), got shape {}", num_features, num_features,
             num_features, shape_str(x.shape()));
}

void BatchNorm2d::check_input(const Tensor& x) const {
  KILN_CHECK(x.dim() == 4 && x.size(1) == num_features, ShapeError,
             "BatchNorm2d({}): expected input (N, {}, H, W), got shape {}", num_features, num_features,
             shape_str(x.shape()));
}

// ---- Embedding ----
Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, std::optional<int64_t> padding_idx)
    : Module("Embedding"), num_embeddings(num_embeddings), embedding_dim(embedding_dim) {
  check_positive(num_embeddings, "Embedding", "num_embeddings");
  check_positive(embedding_dim, "Embedding", "embedding_dim");
  if (padding_idx) {
    KILN_CHECK(*padding_idx >= -num_embeddings && *padding_idx < num_embeddings, ValueError,
               "Embedding: padding_idx ({}) must be within num_embeddings ({})", *padding_idx, num_embeddings);
    if (*padding_idx < 0) padding_idx = *padding_idx + num_embeddings;
  }
  this->padding_idx = padding_idx;
  // Initialized before it becomes a parameter, so zeroing a row is a plain write.
  Tensor w = normal(0.0, 1.0, {num_embeddings, embedding_dim});
  if (padding_idx) w.select(0, *padding_idx).fill_(0);
  weight = register_parameter("weight", w);
}

Tensor Embedding::forward(const Tensor& indices) {
  KILN_CHECK(!is_floating(indices.dtype()) && indices.dtype() != DType::Bool, DTypeError,
             "Embedding({}, {}): expected integer indices, got {}", num_embeddings, embedding_dim,
             dtype_name(indices.dtype()));
  return F::embedding(indices, weight, padding_idx);
}

std::string Embedding::extra_repr() const {
  std::string s = fmt::format("{}, {}", num_embeddings, embedding_dim);
  if (padding_idx) s += fmt::format(", padding_idx={}", *padding_idx);
  return s;
}

// ---- Dropout, activations ----
Dropout::Dropout(double p) : Module("Dropout"), p(p) {
  KILN_CHECK(p >= 0.0 && p <= 1.0, ValueError, "Dropout: p must be in [0, 1], got {}", p);
}

Tensor Dropout::forward(const Tensor& x) { return F::dropout(x, p, is_training()); }

std::string Dropout::extra_repr() const { return fmt::format("p={}, inplace=False", p); }

GELU::GELU(std::string approximate) : Module("GELU"), approximate(std::move(approximate)) {
  KILN_CHECK(this->approximate == "none" || this->approximate == "tanh", ValueError,
             "GELU: approximate must be 'none' or 'tanh', got '{}'", this->approximate);
}

std::string Flatten::extra_repr() const { return fmt::format("start_dim={}, end_dim={}", start_dim, end_dim); }

// ---- pooling ----
MaxPool2d::MaxPool2d(Size2 kernel_size, std::optional<Size2> stride, Size2 padding, Size2 dilation, bool ceil_mode)
    : Module("MaxPool2d"),
      kernel_size(kernel_size),
      stride(stride.value_or(kernel_size)),
      padding(padding),
      dilation(dilation),
      ceil_mode(ceil_mode) {}

Tensor MaxPool2d::forward(const Tensor& x) {
  KILN_CHECK(x.dim() == 3 || x.dim() == 4, ShapeError, "MaxPool2d: expected input (N, C, H, W) or (C, H, W), got shape {}",
             shape_str(x.shape()));
  return F::max_pool2d(x, kernel_size.pair(), stride.pair(), padding.pair(), dilation.pair(), ceil_mode);
}

std::string MaxPool2d::extra_repr() const {
  return fmt::format("kernel_size={}, stride={}, padding={}, dilation={}, ceil_mode={}", size2_str(kernel_size),
                     size2_str(stride), size2_str(padding), size2_str(dilation), py_bool(ceil_mode));
}

AvgPool2d::AvgPool2d(Size2 kernel_size, std::optional<Size2> stride, Size2 padding, bool ceil_mode,
                     bool count_include_pad)
    : Module("AvgPool2d"),
      kernel_size(kernel_size),
      stride(stride.value_or(kernel_size)),
      padding(padding),
      ceil_mode(ceil_mode),
      count_include_pad(count_include_pad) {}

Tensor AvgPool2d::forward(const Tensor& x) {
  KILN_CHECK(x.dim() == 3 || x.dim() == 4, ShapeError, "AvgPool2d: expected input (N, C, H, W) or (C, H, W), got shape {}",
             shape_str(x.shape()));
  return F::avg_pool2d(x, kernel_size.pair(), stride.pair(), padding.pair(), ceil_mode, count_include_pad);
}

std::string AvgPool2d::extra_repr() const {
  return fmt::format("kernel_size={}, stride={}, padding={}", size2_str(kernel_size), size2_str(stride),
                     size2_str(padding));
}

std::string AdaptiveAvgPool2d::extra_repr() const { return "output_size=" + size2_str(output_size); }

// ---- containers ----
Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (const auto& call : calls_) y = call(y);
  return y;
}

ModulePtr Sequential::operator[](size_t i) const {
  KILN_CHECK(i < size(), IndexError, "Sequential: index {} is out of range for {} modules", i, size());
  return named_children()[i].second;
}

ModulePtr ModuleList::operator[](size_t i) const {
  KILN_CHECK(i < size(), IndexError, "ModuleList: index {} is out of range for {} modules", i, size());
  return named_children()[i].second;
}

// ---- MultiheadAttention ----
MultiheadAttention::MultiheadAttention(int64_t embed_dim, int64_t num_heads, MultiheadAttentionOptions options)
    : Module("MultiheadAttention"),
      embed_dim(embed_dim),
      num_heads(num_heads),
      head_dim(num_heads > 0 ? embed_dim / num_heads : 0),
      kdim(options.kdim.value_or(embed_dim)),
      vdim(options.vdim.value_or(embed_dim)),
      dropout(options.dropout),
      batch_first(options.batch_first) {
  check_positive(embed_dim, "MultiheadAttention", "embed_dim");
  check_positive(num_heads, "MultiheadAttention", "num_heads");
  KILN_CHECK(embed_dim % num_heads == 0, ValueError,
             "MultiheadAttention: embed_dim ({}) must be divisible by num_heads ({})", embed_dim, num_heads);
  KILN_CHECK(dropout >= 0.0 && dropout <= 1.0, ValueError, "MultiheadAttention: dropout must be in [0, 1], got {}",
             dropout);
  // PyTorch's registration order, so the state dicts list the same keys in
  // the same order.
  if (kdim == embed_dim && vdim == embed_dim) {
    in_proj_weight = register_parameter("in_proj_weight", Tensor::empty({3 * embed_dim, embed_dim}));
    register_parameter("q_proj_weight", Tensor());
    register_parameter("k_proj_weight", Tensor());
    register_parameter("v_proj_weight", Tensor());
  } else {
    q_proj_weight = register_parameter("q_proj_weight", Tensor::empty({embed_dim, embed_dim}));
    k_proj_weight = register_parameter("k_proj_weight", Tensor::empty({embed_dim, kdim}));
    v_proj_weight = register_parameter("v_proj_weight", Tensor::empty({embed_dim, vdim}));
    register_parameter("in_proj_weight", Tensor());
  }
  in_proj_bias = register_parameter("in_proj_bias", options.bias ? Tensor::empty({3 * embed_dim}) : Tensor());
  out_proj = register_module("out_proj", std::make_shared<Linear>(embed_dim, embed_dim, options.bias));
  reset_parameters();
}

void MultiheadAttention::reset_parameters() {
  if (in_proj_weight.defined()) {
    init::xavier_uniform_(in_proj_weight);
  } else {
    init::xavier_uniform_(q_proj_weight);
    init::xavier_uniform_(k_proj_weight);
    init::xavier_uniform_(v_proj_weight);
  }
  if (in_proj_bias.defined()) {
    init::zeros_(in_proj_bias);
    init::zeros_(out_proj->bias);
  }
}

std::pair<Tensor, Tensor> MultiheadAttention::forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                                      const Tensor& key_padding_mask, bool need_weights,
                                                      const Tensor& attn_mask, bool average_attn_weights,
                                                      bool is_causal) {
  const char* layout = batch_first ? "(N, L, E)" : "(L, N, E)";
  KILN_CHECK((query.dim() == 2 || query.dim() == 3) && key.dim() == query.dim() && value.dim() == query.dim(),
             ShapeError,
             "MultiheadAttention: query, key and value must all be batched {} or all unbatched (L, E); got shapes {}, "
             "{}, {}",
             layout, shape_str(query.shape()), shape_str(key.shape()), shape_str(value.shape()));
  KILN_CHECK(query.size(-1) == embed_dim && key.size(-1) == kdim && value.size(-1) == vdim, ShapeError,
             "MultiheadAttention(embed_dim={}, kdim={}, vdim={}): the last dimensions of query, key and value must be "
             "{}, {}, {}; got shapes {}, {}, {}",
             embed_dim, kdim, vdim, embed_dim, kdim, vdim, shape_str(query.shape()), shape_str(key.shape()),
             shape_str(value.shape()));
  const bool batched = query.dim() == 3;
  // Work batch first: (N, L, E).
  auto to_nle = [&](const Tensor& t) { return !batched ? t.unsqueeze(0) : batch_first ? t : t.transpose(0, 1); };
  Tensor q = to_nle(query), k = to_nle(key), v = to_nle(value);
  const int64_t N = q.size(0), L = q.size(1), S = k.size(1);
  KILN_CHECK(k.size(0) == N && v.size(0) == N && v.size(1) == S, ShapeError,
             "MultiheadAttention: query, key and value disagree in batch size or key/value length: shapes {}, {}, {} "
             "(layout {})",
             shape_str(query.shape()), shape_str(key.shape()), shape_str(value.shape()), layout);

  Tensor wq, wk, wv, bq, bk, bv;
  if (in_proj_weight.defined()) {
    wq = in_proj_weight.narrow(0, 0, embed_dim);
    wk = in_proj_weight.narrow(0, embed_dim, embed_dim);
    wv = in_proj_weight.narrow(0, 2 * embed_dim, embed_dim);
  } else {
    wq = q_proj_weight, wk = k_proj_weight, wv = v_proj_weight;
  }
  if (in_proj_bias.defined()) {
    bq = in_proj_bias.narrow(0, 0, embed_dim);
    bk = in_proj_bias.narrow(0, embed_dim, embed_dim);
    bv = in_proj_bias.narrow(0, 2 * embed_dim, embed_dim);
  }
  const int64_t H = num_heads, D = head_dim;
  // (N, L, E) -> (N, H, L, D)
  auto heads = [&](const Tensor& t, int64_t len) { return t.reshape({N, len, H, D}).transpose(1, 2); };
  Tensor qh = heads(F::linear(q, wq, bq), L);
  Tensor kh = heads(F::linear(k, wk, bk), S);
  Tensor vh = heads(F::linear(v, wv, bv), S);

  // Every mask becomes one additive float mask broadcastable to (N, H, L, S).
  const DType dt = qh.dtype();
  const double neg_inf = -std::numeric_limits<double>::infinity();
  auto additive = [&](const Tensor& m, const char* what) {
    if (m.dtype() == DType::Bool) return zeros(m.shape(), dt, m.device()).masked_fill(m, neg_inf);
    KILN_CHECK(is_floating(m.dtype()), DTypeError, "MultiheadAttention: {} must be bool or floating, got {}", what,
               dtype_name(m.dtype()));
    return m.to(dt);
  };
  Tensor mask;
  auto add_mask = [&](const Tensor& m) { mask = mask.defined() ? mask + m : m; };
  if (attn_mask.defined()) {
    Tensor m = additive(attn_mask, "attn_mask");
    if (m.dim() == 2) {
      KILN_CHECK(m.shape() == Shape({L, S}), ShapeError,
                 "MultiheadAttention: attn_mask of shape {} should be ({}, {}) (L, S)", shape_str(m.shape()), L, S);
      add_mask(m.reshape({1, 1, L, S}));
    } else {
      KILN_CHECK(m.dim() == 3 && m.shape() == Shape({N * H, L, S}), ShapeError,
                 "MultiheadAttention: attn_mask of shape {} should be ({}, {}) (L, S) or ({}, {}, {}) (N * num_heads, "
                 "L, S)",
                 shape_str(m.shape()), L, S, N * H, L, S);
      add_mask(m.reshape({N, H, L, S}));
    }
  }
  if (key_padding_mask.defined()) {
    Tensor m = additive(key_padding_mask, "key_padding_mask");
    Shape expected = batched ? Shape{N, S} : Shape{S};
    KILN_CHECK(m.shape() == expected, ShapeError, "MultiheadAttention: key_padding_mask of shape {} should be {}",
               shape_str(m.shape()), shape_str(expected));
    add_mask(m.reshape({N, 1, 1, S}));
  }
  if (is_causal) {
    Tensor above = arange(0, S).reshape({1, S}) > arange(0, L).reshape({L, 1});
    add_mask(zeros({L, S}, dt).masked_fill(above, neg_inf).reshape({1, 1, L, S}));
  }

  const double p = is_training() ? dropout : 0.0;
  Tensor out, weights;
  if (need_weights) {
    Tensor scores = matmul(qh, kh.transpose(-2, -1)).mul(1.0 / std::sqrt(static_cast<double>(D)));
    if (mask.defined()) scores = scores + mask;
    Tensor attn = softmax(scores, -1);
    if (p > 0.0) attn = F::dropout(attn, p, true);
    out = matmul(attn, vh);
    weights = average_attn_weights ? attn.mean({1}) : attn;
    if (!batched) weights = weights.squeeze(0);
  } else {
    out = F::scaled_dot_product_attention(qh, kh, vh, mask, p);
  }
  out = out_proj->forward(out.transpose(1, 2).reshape({N, L, embed_dim}));
  out = !batched ? out.squeeze(0) : batch_first ? out : out.transpose(0, 1);
  return {out, weights};
}

// ---- TransformerEncoderLayer ----
TransformerEncoderLayer::TransformerEncoderLayer(int64_t d_model, int64_t nhead, TransformerEncoderLayerOptions opts)
    : Module("TransformerEncoderLayer"), options(std::move(opts)) {
  KILN_CHECK(options.activation == "relu" || options.activation == "gelu", ValueError,
             "TransformerEncoderLayer: activation must be \"relu\" or \"gelu\", got \"{}\"", options.activation);
  self_attn = register_module("self_attn", std::make_shared<MultiheadAttention>(
                                               d_model, nhead,
                                               MultiheadAttentionOptions{.dropout = options.dropout,
                                                                         .batch_first = options.batch_first}));
  linear1 = register_module("linear1", std::make_shared<Linear>(d_model, options.dim_feedforward));
  dropout = register_module("dropout", std::make_shared<Dropout>(options.dropout));
  linear2 = register_module("linear2", std::make_shared<Linear>(options.dim_feedforward, d_model));
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(Shape{d_model}, options.layer_norm_eps));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(Shape{d_model}, options.layer_norm_eps));
  dropout1 = register_module("dropout1", std::make_shared<Dropout>(options.dropout));
  dropout2 = register_module("dropout2", std::make_shared<Dropout>(options.dropout));
}

Tensor TransformerEncoderLayer::activation(const Tensor& x) const {
  return options.activation == "gelu" ? F::gelu(x) : F::relu(x);
}

Tensor TransformerEncoderLayer::forward(const Tensor& src, const Tensor& src_mask, const Tensor& src_key_padding_mask,
                                        bool is_causal) {
  auto sa_block = [&](const Tensor& x) {
    return dropout1->forward(self_attn->forward(x, x, x, src_key_padding_mask, false, src_mask, true, is_causal).first);
  };
  auto ff_block = [&](const Tensor& x) {
    return dropout2->forward(linear2->forward(dropout->forward(activation(linear1->forward(x)))));
  };
  Tensor x = src;
  if (options.norm_first) {
    x = x + sa_block(norm1->forward(x));
    x = x + ff_block(norm2->forward(x));
  } else {
    x = norm1->forward(x + sa_block(x));
    x = norm2->forward(x + ff_block(x));
  }
  return x;
}

}  // namespace kiln::nn
