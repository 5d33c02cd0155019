#include "eager/nn/init.h"

#include <cmath>

#include "eager/autograd.h"
#include "eager/ops.h"

namespace kiln::nn::init {

namespace {

void check_floating(const Tensor& t, const char* op) {
  KILN_CHECK(t.defined(), ValueError, "nn.init.{}: undefined tensor", op);
  KILN_CHECK(is_floating(t.dtype()), DTypeError, "nn.init.{}: expected a floating-point tensor, got {}", op,
             dtype_name(t.dtype()));
}

// Draws in float32 at least, so float16 parameters get the same values as a
// float32 draw rounded, whatever the storage dtype.
DType draw_dtype(DType d) { return d == DType::Float64 ? DType::Float64 : DType::Float32; }

Tensor fill_with(const Tensor& t, const Tensor& values) {
  NoGradGuard no_grad;
  Tensor(t).copy_(values);
  return t;
}

int64_t fan(const Tensor& t, const std::string& mode, const char* op) {
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  KILN_CHECK(mode == "fan_in" || mode == "fan_out", ValueError,
             "nn.init.{}: mode must be \"fan_in\" or \"fan_out\", got \"{}\"", op, mode);
  return mode == "fan_in" ? fan_in : fan_out;
}

}  // namespace

double calculate_gain(const std::string& nonlinearity, std::optional<double> param) {
  if (nonlinearity == "linear" || nonlinearity == "conv1d" || nonlinearity == "conv2d" ||
      nonlinearity == "conv3d" || nonlinearity == "conv_transpose1d" || nonlinearity == "conv_transpose2d" ||
      nonlinearity == "conv_transpose3d" || nonlinearity == "sigmoid")
    return 1.0;
  if (nonlinearity == "tanh") return 5.0 / 3.0;
  if (nonlinearity == "relu") return std::sqrt(2.0);
  if (nonlinearity == "leaky_relu") {
    double slope = param.value_or(0.01);
    return std::sqrt(2.0 / (1.0 + slope * slope));
  }
  if (nonlinearity == "selu") return 3.0 / 4.0;
  fail<ValueError>("nn.init.calculate_gain: unsupported nonlinearity \"{}\"", nonlinearity);
}

std::pair<int64_t, int64_t> calculate_fan_in_and_fan_out(const Tensor& t) {
  KILN_CHECK(t.dim() >= 2, ValueError,
             "nn.init: fan in and fan out can't be computed for a tensor with fewer than 2 dimensions (shape {})",
             shape_str(t.shape()));
  int64_t receptive = 1;
  for (int64_t d = 2; d < t.dim(); ++d) receptive *= t.size(d);
  return {t.size(1) * receptive, t.size(0) * receptive};
}

Tensor uniform_(const Tensor& t, double a, double b) {
  check_floating(t, "uniform_");
  KILN_CHECK(a <= b, ValueError, "nn.init.uniform_: a ({}) must not exceed b ({})", a, b);
  NoGradGuard no_grad;
  Tensor u = rand(t.shape(), draw_dtype(t.dtype()));
  return fill_with(t, u.mul_(b - a).add_(a));
}

Tensor normal_(const Tensor& t, double mean, double std) {
  check_floating(t, "normal_");
  KILN_CHECK(std >= 0, ValueError, "nn.init.normal_: std must be non-negative, got {}", std);
  NoGradGuard no_grad;
  return fill_with(t, normal(mean, std, t.shape(), draw_dtype(t.dtype())));
}

Tensor constant_(const Tensor& t, double value) {
  check_floating(t, "constant_");
  NoGradGuard no_grad;
  Tensor(t).fill_(value);
  return t;
}

Tensor zeros_(const Tensor& t) { return constant_(t, 0.0); }
Tensor ones_(const Tensor& t) { return constant_(t, 1.0); }

Tensor xavier_uniform_(const Tensor& t, double gain) {
  check_floating(t, "xavier_uniform_");
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  double std = gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out));
  double bound = std::sqrt(3.0) * std;
  return uniform_(t, -bound, bound);
}

Tensor xavier_normal_(const Tensor& t, double gain) {
  check_floating(t, "xavier_normal_");
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  return normal_(t, 0.0, gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out)));
}

Tensor kaiming_uniform_(const Tensor& t, double a, const std::string& mode, const std::string& nonlinearity) {
  check_floating(t, "kaiming_uniform_");
  int64_t f = fan(t, mode, "kaiming_uniform_");
  KILN_CHECK(f > 0, ValueError, "nn.init.kaiming_uniform_: {} of a tensor of shape {} is 0", mode,
             shape_str(t.shape()));
  double bound = std::sqrt(3.0) * calculate_gain(nonlinearity, a) / std::sqrt(static_cast<double>(f));
  return uniform_(t, -bound, bound);
}

Tensor kaiming_normal_(const Tensor& t, double a, const std::string& mode, const std::string& nonlinearity) {
  check_floating(t, "kaiming_normal_");
  int64_t f = fan(t, mode, "kaiming_normal_");
  KILN_CHECK(f > 0, ValueError, "nn.init.kaiming_normal_: {} of a tensor of shape {} is 0", mode,
             shape_str(t.shape()));
  return normal_(t, 0.0, calculate_gain(nonlinearity, a) / std::sqrt(static_cast<double>(f)));
}

}  // namespace kiln::nn::init
