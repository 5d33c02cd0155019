// PyTorch-style printing: tensor([[ 1.0000, -2.5000], ...], dtype=kiln.float64)
#include <cmath>

#include "eager/ops.h"

namespace kiln {
namespace {

constexpr int64_t kSummarizeAbove = 1000;
constexpr int64_t kEdgeItems = 3;

struct Formatter {
  DType dtype;
  enum { Int, Bool, FloatInt, Fixed, Sci } mode = Int;
  size_t width = 1;

  std::string format(double v) const {
    switch (mode) {
      case Bool: return v != 0 ? "True" : "False";
      case Int: return fmt::format("{}", static_cast<int64_t>(v));
      case FloatInt:
        if (!std::isfinite(v)) break;
        return fmt::format("{:.0f}.", v);
      case Fixed:
        if (!std::isfinite(v)) break;
        return fmt::format("{:.4f}", v);
      case Sci:
        if (!std::isfinite(v)) break;
        return fmt::format("{:.4e}", v);
    }
    return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  }
};

// The elements that will be printed (edges only, when summarizing).
void collect(const Tensor& x, bool summarize, std::vector<double>& out) {
  if (x.dim() == 0) {
    out.push_back(x.item<double>());
    return;
  }
  int64_t n = x.shape()[0];
  for (int64_t i = 0; i < n; ++i) {
    if (summarize && n > 2 * kEdgeItems && i == kEdgeItems) i = n - kEdgeItems;
    collect(select(x, 0, i), summarize, out);
  }
}

Formatter make_formatter(const Tensor& x, bool summarize) {
  Formatter f{x.dtype()};
  std::vector<double> values;
  collect(x, summarize, values);
  if (x.dtype() == DType::Bool) f.mode = Formatter::Bool;
  else if (!is_floating(x.dtype())) f.mode = Formatter::Int;
  else {
    bool all_int = true;
    double max_abs = 0, min_abs = INFINITY;
    for (double v : values) {
      if (!std::isfinite(v)) continue;
      all_int = all_int && v == std::nearbyint(v);
      double a = std::fabs(v);
      max_abs = std::max(max_abs, a);
      if (a > 0) min_abs = std::min(min_abs, a);
    }
    if (all_int) f.mode = max_abs >= 1e8 ? Formatter::Sci : Formatter::FloatInt;
    else if (max_abs >= 1e8 || (min_abs < 1e-4) || (min_abs < INFINITY && max_abs / min_abs > 1000))
      f.mode = Formatter::Sci;
    else f.mode = Formatter::Fixed;
  }
  for (double v : values) f.width = std::max(f.width, f.format(v).size());
  return f;
}

void print_rec(const Tensor& x, const Formatter& f, bool summarize, size_t indent, std::string& out) {
  if (x.dim() == 0) {
    std::string s = f.format(x.item<double>());
    out += std::string(f.width - std::min(f.width, s.size()), ' ') + s;
    return;
  }
  out += '[';
  int64_t n = x.shape()[0];
  std::string sep = x.dim() == 1 ? ", " : "," + std::string(x.dim() - 1, '\n') + std::string(indent + 1, ' ');
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) out += sep;
    if (summarize && n > 2 * kEdgeItems && i == kEdgeItems) {
      out += "...";
      out += sep;
      i = n - kEdgeItems;
    }
    print_rec(select(x, 0, i), f, summarize, indent + 1, out);
  }
  out += ']';
}

}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "tensor(<undefined>)";
  std::string body;
  std::vector<std::string> suffix;
  if (numel() == 0 && dim() != 1) {
    body = "[]";
    suffix.push_back("size=" + shape_str(shape()));
  } else if (numel() == 0) {
    body = "[]";
  } else {
    bool summarize = numel() > kSummarizeAbove;
    Formatter f = make_formatter(*this, summarize);
    print_rec(*this, f, summarize, 7, body);  // 7 = strlen("tensor(")
  }
  if (dtype() != DType::Float32 && dtype() != DType::Int64 && dtype() != DType::Bool)
    suffix.push_back(fmt::format("dtype=kiln.{}", dtype_name(dtype())));
  if (!device().is_cpu()) suffix.push_back(fmt::format("device='{}'", device().str()));
  std::string out = "tensor(" + body;
  for (auto& s : suffix) out += ", " + s;
  return out + ")";
}

}  // namespace kiln
