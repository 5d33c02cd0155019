#include "codegen/program_io.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace kiln::codegen {
namespace {

constexpr uint32_t kProgramFormat = 3;

class Writer {
 public:
  void u64(uint64_t v) { bytes_.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  void f64(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    u64(bits);
  }
  void str(std::string_view s) {
    u64(s.size());
    bytes_.append(s);
  }
  void ints(const std::vector<int64_t>& v) {
    u64(v.size());
    for (int64_t x : v) i64(x);
  }
  void ids(const std::vector<ProgramValueId>& v) { ints(std::vector<int64_t>(v.begin(), v.end())); }
  void type(const TensorType& t) {
    ints(t.shape);
    u64(static_cast<uint64_t>(t.dtype));
  }
  std::string take() { return std::move(bytes_); }

 private:
  std::string bytes_;
};

class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  uint64_t u64() {
    KILN_CHECK(bytes_.size() - at_ >= 8, Error, "compiled program: truncated");
    uint64_t v;
    std::memcpy(&v, bytes_.data() + at_, sizeof v);
    at_ += 8;
    return v;
  }
  int64_t i64() { return static_cast<int64_t>(u64()); }
  double f64() {
    uint64_t bits = u64();
    double v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
  size_t count(size_t item_bytes = 8) {
    uint64_t n = u64();
    KILN_CHECK(n <= (bytes_.size() - at_) / item_bytes, Error, "compiled program: a count past the end");
    return static_cast<size_t>(n);
  }
  std::string str() {
    size_t n = count(1);
    std::string s(bytes_.substr(at_, n));
    at_ += n;
    return s;
  }
  std::vector<int64_t> ints() {
    std::vector<int64_t> v(count());
    for (int64_t& x : v) x = i64();
    return v;
  }
  std::vector<ProgramValueId> ids(size_t num_values) {
    std::vector<ProgramValueId> v;
    for (int64_t x : ints()) {
      KILN_CHECK(x >= kAbsent && x < static_cast<int64_t>(num_values), Error, "compiled program: bad value id");
      v.push_back(static_cast<ProgramValueId>(x));
    }
    return v;
  }
  DType dtype() {
    uint64_t d = u64();
    KILN_CHECK(d <= static_cast<uint64_t>(DType::Float64), Error, "compiled program: bad dtype");
    return static_cast<DType>(d);
  }
  TensorType type() {
    TensorType t;
    t.shape = ints();
    t.dtype = dtype();
    return t;
  }
  bool done() const { return at_ == bytes_.size(); }

 private:
  std::string_view bytes_;
  size_t at_ = 0;
};

void write_attr(Writer& w, const AttrValue& value) {
  w.u64(value.index());
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) w.u64(v);
        else if constexpr (std::is_same_v<T, int64_t>) w.i64(v);
        else if constexpr (std::is_same_v<T, double>) w.f64(v);
        else if constexpr (std::is_same_v<T, std::string>) w.str(v);
        else if constexpr (std::is_same_v<T, std::vector<int64_t>>) w.ints(v);
        else if constexpr (std::is_same_v<T, DType>) w.u64(static_cast<uint64_t>(v));
        else if constexpr (std::is_same_v<T, Scalar>) {
          w.u64(static_cast<uint64_t>(v.category()));
          if (v.category() == DTypeCategory::Floating) w.f64(v.to_double());
          else w.i64(v.to_int());
        }
      },
      value);
}

AttrValue read_attr(Reader& r) {
  switch (r.u64()) {
    case 0: return std::monostate{};
    case 1: return r.u64() != 0;
    case 2: return r.i64();
    case 3: return r.f64();
    case 4: return r.str();
    case 5: return r.ints();
    case 6: return r.dtype();
    case 7: {
      auto category = static_cast<DTypeCategory>(r.u64());
      if (category == DTypeCategory::Floating) return Scalar(r.f64());
      if (category == DTypeCategory::Bool) return Scalar(r.i64() != 0);
      return Scalar(r.i64());
    }
    default: fail<Error>("compiled program: bad attribute kind");
  }
}

}  // namespace

std::string serialize_program(const Program& p, const std::vector<std::string>& notes) {
  Writer w;
  w.u64(kProgramFormat);
  w.u64(p.values.size());
  for (const TensorType& t : p.values) w.type(t);
  w.ids(p.arguments);
  w.ids(p.results);
  w.u64(p.kernels.size());
  for (const Kernel& k : p.kernels) {
    w.str(k.symbol);
    w.i64(k.tile_extent);
    w.u64(k.columns);
    w.i64(k.work);
    w.u64(k.in_place.size());
    for (auto [result, operand] : k.in_place) {
      w.i64(result);
      w.i64(operand);
    }
  }
  w.u64(p.steps.size());
  for (const Step& s : p.steps) {
    w.u64(static_cast<uint64_t>(s.kind));
    w.i64(s.kernel);
    w.str(s.op ? s.op->name : "");
    w.u64(s.attrs.items().size());
    for (const auto& [name, value] : s.attrs.items()) {
      w.str(name);
      write_attr(w, value);
    }
    if (s.kind == Step::Kind::Constant) {
      Tensor c = s.constant.contiguous();
      w.type(type_of(c));
      w.str(std::string_view(static_cast<const char*>(c.data_ptr()), c.numel() * c.itemsize()));
    }
    w.ids(s.inputs);
    w.ids(s.outputs);
    w.str(s.location);
  }
  w.u64(notes.size());
  for (const std::string& n : notes) w.str(n);
  return w.take();
}

Program deserialize_program(std::string_view bytes, std::vector<std::string>& notes) {
  Reader r(bytes);
  KILN_CHECK(r.u64() == kProgramFormat, Error, "compiled program: another format version");
  Program p;
  p.values.resize(r.count());
  for (TensorType& t : p.values) t = r.type();
  p.arguments = r.ids(p.values.size());
  p.results = r.ids(p.values.size());
  p.kernels.resize(r.count());
  for (Kernel& k : p.kernels) {
    k.symbol = r.str();
    k.tile_extent = r.i64();
    k.columns = r.u64() != 0;
    k.work = r.i64();
    k.in_place.resize(r.count(16));
    for (auto& [result, operand] : k.in_place) {
      result = static_cast<int>(r.i64());
      operand = static_cast<int>(r.i64());
    }
  }
  p.steps.resize(r.count());
  for (Step& s : p.steps) {
    uint64_t kind = r.u64();
    KILN_CHECK(kind <= static_cast<uint64_t>(Step::Kind::Constant), Error, "compiled program: bad step kind");
    s.kind = static_cast<Step::Kind>(kind);
    s.kernel = static_cast<int>(r.i64());
    KILN_CHECK(s.kind != Step::Kind::Kernel || (s.kernel >= 0 && s.kernel < static_cast<int>(p.kernels.size())),
               Error, "compiled program: bad kernel index");
    std::string op = r.str();
    if (s.kind == Step::Kind::Host) {
      s.op = find_op(op);
      KILN_CHECK(s.op, Error, "compiled program: no op '{}' in this build", op);
    }
    for (size_t n = r.count(); n > 0; --n) {
      std::string name = r.str();
      s.attrs.set(std::move(name), read_attr(r));
    }
    if (s.kind == Step::Kind::Constant) {
      TensorType t = r.type();
      std::string data = r.str();
      s.constant = Tensor::empty(t.shape, t.dtype);
      KILN_CHECK(data.size() == static_cast<size_t>(s.constant.numel()) * s.constant.itemsize(), Error,
                 "compiled program: constant of the wrong size");
      std::memcpy(s.constant.data_ptr(), data.data(), data.size());
    }
    s.inputs = r.ids(p.values.size());
    s.outputs = r.ids(p.values.size());
    s.location = r.str();
  }
  notes.resize(r.count());
  for (std::string& n : notes) n = r.str();
  KILN_CHECK(r.done(), Error, "compiled program: trailing bytes");
  auto defined = [](const std::vector<ProgramValueId>& ids) {
    return std::none_of(ids.begin(), ids.end(), [](ProgramValueId v) { return v == kAbsent; });
  };
  bool ok = defined(p.arguments) && defined(p.results);
  for (const Step& s : p.steps) {
    ok &= defined(s.outputs) && (s.kind == Step::Kind::Host || defined(s.inputs));
    if (s.kind == Step::Kind::Kernel)
      for (auto [result, operand] : p.kernels[s.kernel].in_place)
        ok &= result >= 0 && operand >= 0 && static_cast<size_t>(result) < s.outputs.size() &&
              static_cast<size_t>(operand) < s.inputs.size();
  }
  KILN_CHECK(ok, Error, "compiled program: an absent value where one is required");
  p.compute_liveness();
  return p;
}

}  // namespace kiln::codegen
