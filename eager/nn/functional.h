#pragma once
// kiln::nn::functional: the neural-network ops, in C++ and (bound as
// kiln.nn.functional) in Python, with PyTorch's names, arguments and
// semantics. Each is a kiln op with a backward rule (eager/autograd.h).
// Users alias it: namespace F = kiln::nn::functional;
#include <array>
#include <optional>
#include <string>
#include <vector>

#include "eager/ops.h"

namespace kiln::nn::functional {

using Pair = std::array<int64_t, 2>;

// The activations and normalizations that are plain kiln ops.
using kiln::gelu;
using kiln::layer_norm;
using kiln::log_softmax;
using kiln::relu;
using kiln::sigmoid;
using kiln::silu;
using kiln::softmax;
using kiln::tanh;

// y = x @ weight.T + bias; x (..., in), weight (out, in), bias (out) or undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = {});

// NCHW (or CHW, unbatched). weight (out, in / groups, kh, kw).
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = {}, Pair stride = {1, 1},
              Pair padding = {0, 0}, Pair dilation = {1, 1}, int64_t groups = 1);
// stride defaults to kernel_size.
Tensor max_pool2d(const Tensor& x, Pair kernel_size, std::optional<Pair> stride = std::nullopt,
                  Pair padding = {0, 0}, Pair dilation = {1, 1}, bool ceil_mode = false);
Tensor avg_pool2d(const Tensor& x, Pair kernel_size, std::optional<Pair> stride = std::nullopt,
                  Pair padding = {0, 0}, bool ceil_mode = false, bool count_include_pad = true);
Tensor adaptive_avg_pool2d(const Tensor& x, Pair output_size);

// Zeroes elements with probability p and scales the rest by 1/(1-p), from
// the counter-based generator; the identity when !training or p == 0.
Tensor dropout(const Tensor& x, double p = 0.5, bool training = true);

// Training: normalizes with the batch statistics over (N, H, W) / (N, L) and
// updates running_mean/running_var in place (unbiased var) when defined;
// eval: uses the running statistics.
Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight = {}, const Tensor& bias = {}, bool training = false,
                  double momentum = 0.1, double eps = 1e-5);

// Rows of weight (num, dim) picked by integer indices of any shape; the row
// padding_idx gets no gradient.
Tensor embedding(const Tensor& indices, const Tensor& weight,
                 std::optional<int64_t> padding_idx = std::nullopt);

// reduction: "none" | "mean" | "sum".
Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction = "mean");
// input (N, C) or (N, C, d...) logits; target class indices (N) / (N, d...)
// of an integer dtype, or class probabilities shaped like input.
Tensor cross_entropy(const Tensor& input, const Tensor& target, const Tensor& weight = {},
                     int64_t ignore_index = -100, const std::string& reduction = "mean",
                     double label_smoothing = 0.0);
Tensor nll_loss(const Tensor& input, const Tensor& target, const Tensor& weight = {},
                int64_t ignore_index = -100, const std::string& reduction = "mean");
Tensor binary_cross_entropy_with_logits(const Tensor& input, const Tensor& target,
                                        const Tensor& weight = {}, const Tensor& pos_weight = {},
                                        const std::string& reduction = "mean");

// Backward kernels, ops of their own so that backward() inside a trace
// records them. need_target: also the gradient for a target of class
// probabilities (a second result).
std::vector<Tensor> cross_entropy_backward(const Tensor& grad, const Tensor& input, const Tensor& target,
                                           const Tensor& weight, int64_t ignore_index, const std::string& reduction,
                                           double label_smoothing, bool need_target);
std::vector<Tensor> conv2d_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, Pair stride,
                                    Pair padding, Pair dilation, int64_t groups, bool need_input, bool need_weight);
Tensor max_pool2d_backward(const Tensor& grad, const Tensor& x, const Tensor& indices);
Tensor avg_pool2d_backward(const Tensor& grad, const Tensor& x, Pair kernel_size, std::optional<Pair> stride,
                           Pair padding, bool ceil_mode, bool count_include_pad);
Tensor adaptive_avg_pool2d_backward(const Tensor& grad, const Tensor& x);
Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_weights,
                          std::optional<int64_t> padding_idx);
Tensor nll_loss_backward(const Tensor& grad, const Tensor& input, const Tensor& target, const Tensor& weight,
                         int64_t ignore_index, const std::string& reduction);

// q (..., L, E), k (..., S, E), v (..., S, Ev). attn_mask: bool (true =
// attend) or float (added to the scores), broadcastable to (..., L, S).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& attn_mask = {}, double dropout_p = 0.0,
                                    bool is_causal = false, std::optional<double> scale = std::nullopt);

}  // namespace kiln::nn::functional
