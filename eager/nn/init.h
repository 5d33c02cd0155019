#pragma once
// kiln::nn::init: torch.nn.init's in-place initializers. Each fills the
// tensor (a parameter, usually) without recording autograd history, draws
// from kiln's counter-based generator (manual_seed makes it repeatable) and
// returns the tensor.
#include <optional>
#include <string>
#include <utility>

#include "eager/tensor.h"

namespace kiln::nn::init {

// The recommended gain for a nonlinearity: "linear", "conv1d/2d/3d",
// "sigmoid" -> 1, "tanh" -> 5/3, "relu" -> sqrt(2), "leaky_relu" ->
// sqrt(2 / (1 + slope^2)) (slope defaults to 0.01), "selu" -> 3/4.
double calculate_gain(const std::string& nonlinearity, std::optional<double> param = std::nullopt);
// (fan_in, fan_out) of a weight shaped (out, in, *kernel); needs dim >= 2.
std::pair<int64_t, int64_t> calculate_fan_in_and_fan_out(const Tensor& t);

Tensor uniform_(const Tensor& t, double a = 0.0, double b = 1.0);
Tensor normal_(const Tensor& t, double mean = 0.0, double std = 1.0);
Tensor constant_(const Tensor& t, double value);
Tensor zeros_(const Tensor& t);
Tensor ones_(const Tensor& t);
Tensor xavier_uniform_(const Tensor& t, double gain = 1.0);
Tensor xavier_normal_(const Tensor& t, double gain = 1.0);
// mode: "fan_in" | "fan_out"; a: the negative slope for "leaky_relu".
Tensor kaiming_uniform_(const Tensor& t, double a = 0.0, const std::string& mode = "fan_in",
                        const std::string& nonlinearity = "leaky_relu");
Tensor kaiming_normal_(const Tensor& t, double a = 0.0, const std::string& mode = "fan_in",
                       const std::string& nonlinearity = "leaky_relu");

}  // namespace kiln::nn::init
