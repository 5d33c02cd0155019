// Printing that matches PyTorch's repr: the same number formats (integer
// mode "1.", fixed "1.0000", scientific "1.0000e+00"), widths, summarizing
// with "..." above 1000 elements and wrapping rows at 80 columns.
#include <cmath>
#include <cstdio>

#include "eager/op.h"
#include "eager/ops.h"

namespace kiln {
namespace {

constexpr int64_t kSummarizeAbove = 1000;
constexpr int64_t kEdgeItems = 3;
constexpr size_t kLineWidth = 80;

struct Formatter {
  enum Mode { Int, Bool, FloatInt, Fixed, Sci } mode = Int;
  size_t width = 1;

  std::string format(double v) const {
    if (mode == Bool) return v != 0 ? "True" : "False";
    if (mode == Int) return fmt::format("{}", static_cast<int64_t>(v));
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    if (mode == FloatInt) return fmt::format("{:.0f}.", v);
    if (mode == Fixed) return fmt::format("{:.4f}", v);
    return fmt::format("{:.4e}", v);
  }
  std::string padded(double v) const {
    std::string s = format(v);
    return std::string(width - std::min(width, s.size()), ' ') + s;
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

// PyTorch's _Formatter: for floats, the mode and the width come from the
// finite nonzero values.
Formatter make_formatter(const Tensor& x, bool summarize) {
  Formatter f;
  std::vector<double> values;
  collect(x, summarize, values);
  if (x.dtype() == DType::Bool) {
    f.mode = Formatter::Bool;
  } else if (!is_floating(x.dtype())) {
    f.mode = Formatter::Int;
  } else {
    bool all_int = true, any = false;
    double max_abs = 0, min_abs = INFINITY;
    for (double v : values) {
      if (!std::isfinite(v)) continue;
      all_int = all_int && v == std::ceil(v);
      if (v == 0) continue;
      any = true;
      max_abs = std::max(max_abs, std::fabs(v));
      min_abs = std::min(min_abs, std::fabs(v));
    }
    bool wide = any && (max_abs / min_abs > 1000 || max_abs > 1e8);
    if (all_int) f.mode = wide ? Formatter::Sci : Formatter::FloatInt;
    else f.mode = (wide || (any && min_abs < 1e-4)) ? Formatter::Sci : Formatter::Fixed;
  }
  // Like PyTorch, float widths come from the finite nonzero values only.
  for (double v : values)
    if (!is_floating(x.dtype()) || (std::isfinite(v) && v != 0)) f.width = std::max(f.width, f.format(v).size());
  return f;
}

void print_rec(const Tensor& x, const Formatter& f, bool summarize, size_t indent, std::string& out) {
  if (x.dim() == 0) {
    out += f.padded(x.item<double>());
    return;
  }
  const int64_t n = x.shape()[0];
  auto skipped = [&](int64_t i) { return summarize && n > 2 * kEdgeItems && i == kEdgeItems; };
  if (x.dim() == 1) {
    std::vector<std::string> items;
    for (int64_t i = 0; i < n; ++i) {
      if (skipped(i)) {
        items.push_back(" ...");
        i = n - kEdgeItems;
      }
      items.push_back(f.padded(select(x, 0, i).item<double>()));
    }
    size_t per_line = std::max<size_t>(1, (kLineWidth - std::min(kLineWidth, indent)) / (f.width + 2));
    out += '[';
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out += i % per_line == 0 ? ",\n" + std::string(indent + 1, ' ') : ", ";
      out += items[i];
    }
    out += ']';
    return;
  }
  std::string sep = "," + std::string(x.dim() - 1, '\n') + std::string(indent + 1, ' ');
  out += '[';
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) out += sep;
    if (skipped(i)) {
      out += "..." + sep;
      i = n - kEdgeItems;
    }
    print_rec(select(x, 0, i), f, summarize, indent + 1, out);
  }
  out += ']';
}

}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "tensor(<undefined>)";
  if (impl().traced) return fmt::format("Tensor(<traced>, shape={}, dtype={})", shape_str(shape()), dtype_name(dtype()));
  if (!device().is_cpu()) {  // the values as the CPU prints them, then the device
    std::string host = cpu().str();
    host.pop_back();
    return fmt::format("{}, device='{}')", host, device().str());
  }
  std::string body;
  std::vector<std::string> suffix;
  if (numel() == 0) {
    body = "[]";
    if (dim() != 1) suffix.push_back("size=" + shape_str(shape()));
  } else {
    bool summarize = numel() > kSummarizeAbove;
    print_rec(*this, make_formatter(*this, summarize), summarize, 7, body);  // 7 = strlen("tensor(")
  }
  bool default_dtype = dtype() == DType::Float32 || (numel() > 0 && (dtype() == DType::Int64 || dtype() == DType::Bool));
  if (!default_dtype) suffix.push_back(fmt::format("dtype=kiln.{}", dtype_name(dtype())));
  std::string out = "tensor(" + body;
  for (auto& s : suffix) out += ", " + s;
  return out + ")";
}

Tensor print_value(const Tensor& x, const std::string& label) {
  if (auto traced = trace_if_active("print", {x}, KILN_ATTRS(label))) return (*traced)[0];
  std::string text = label.empty() ? x.str() : label + " " + x.str();
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  return x;
}

void register_print_ops() {
  register_op({.name = "print",
               .attrs = {{"label", AttrKind::String}},
               .meta = [](const std::vector<TensorType>& in, const Attrs&) -> std::vector<TensorType> { return {in[0]}; },
               .run = [](const std::vector<Tensor>& in, const Attrs& a) -> std::vector<Tensor> {
                 return {print_value(in[0], a.get<std::string>("label"))};
               },
               .stateful = true});
}

}  // namespace kiln
