// Tensor factories and the counter-based random generator.
#include <cmath>
#include <cstring>
#include <mutex>

#include "eager/cuda/launch.h"
#include "eager/loops.h"
#include "eager/philox.h"
#include "eager/op.h"
#include "eager/op_util.h"
#include "eager/ops.h"

namespace kiln {

Tensor zeros(Shape shape, DType dtype, Device device) { return full(std::move(shape), 0, dtype, device); }
Tensor ones(Shape shape, DType dtype, Device device) { return full(std::move(shape), 1, dtype, device); }

namespace {
// Compiled code runs on the CPU only so far (GPU code generation is a later
// step): a trace refuses to create CUDA tensors rather than run them on the CPU.
void check_traceable_device(Device device, const char* op) {
  KILN_CHECK(device.is_cpu() || !active_trace(), TraceError,
             "{}: kiln.jit compiles for the cpu only so far; create {} tensors outside the traced function, or "
             "run it eagerly (kiln.config.run_functions_eagerly(True))",
             op, device.str());
}
}  // namespace

Tensor full(Shape shape, Scalar value, std::optional<DType> dtype, Device device) {
  check_traceable_device(device, "full");
  if (auto traced = trace_if_active("full", {}, KILN_ATTRS(shape, value, dtype))) return (*traced)[0];
  Tensor out = Tensor::empty(std::move(shape), dtype.value_or(default_dtype(value.category())), device);
  fill(out, value);
  return out;
}

Tensor scalar_tensor(Scalar value, std::optional<DType> dtype) { return full({}, value, dtype); }

Tensor zeros_like(const Tensor& x, std::optional<DType> dtype) { return full_like(x, 0, dtype); }
Tensor ones_like(const Tensor& x, std::optional<DType> dtype) { return full_like(x, 1, dtype); }
Tensor full_like(const Tensor& x, Scalar value, std::optional<DType> dtype) {
  // Traced with x as an operand: x's shape may be dynamic.
  if (auto traced = trace_if_active("full_like", {x}, KILN_ATTRS(value, dtype))) return (*traced)[0];
  return full(x.shape(), value, dtype.value_or(x.dtype()), x.device());
}
Tensor empty_like(const Tensor& x, std::optional<DType> dtype) {
  return Tensor::empty(x.shape(), dtype.value_or(x.dtype()), x.device());
}

Tensor from_blob_copy(const void* data, Shape shape, DType dtype) {
  Tensor out = Tensor::empty(std::move(shape), dtype);
  if (out.numel() > 0) std::memcpy(out.data_ptr(), data, out.numel() * out.itemsize());
  return out;
}

Tensor arange(Scalar start, Scalar end, Scalar step, std::optional<DType> dtype_opt) {
  bool any_float = start.category() == DTypeCategory::Floating ||
                   end.category() == DTypeCategory::Floating || step.category() == DTypeCategory::Floating;
  DType dtype = dtype_opt.value_or(any_float ? DType::Float32 : DType::Int64);
  double s = start.to_double(), e = end.to_double(), st = step.to_double();
  KILN_CHECK(st != 0, ValueError, "arange: step must be nonzero");
  KILN_CHECK(std::isfinite(s) && std::isfinite(e), ValueError, "arange: start and end must be finite");
  KILN_CHECK((st > 0 && e >= s) || (st < 0 && e <= s), ValueError,
             "arange: upper bound and larger bound inconsistent with step sign (start {}, end {}, step {})",
             s, e, st);
  double count = std::ceil((e - s) / st);
  KILN_CHECK(count < 9.2e18, ValueError, "arange: ({} - {}) / {} = {} elements is too many", e, s, st, count);
  int64_t n = any_float ? static_cast<int64_t>(count)
                        : (end.to_int() - start.to_int() + step.to_int() - (step.to_int() > 0 ? 1 : -1)) /
                              step.to_int();
  Tensor out = Tensor::empty({std::max<int64_t>(n, 0)}, dtype);
  dispatch_numeric(dtype, "arange", [&]<class T>() {
    T* o = out.data<T>();
    for (int64_t i = 0; i < out.numel(); ++i) {
      if (any_float) o[i] = T(static_cast<compute_t<T>>(s + static_cast<double>(i) * st));
      else o[i] = static_cast<T>(start.to_int() + i * step.to_int());
    }
  });
  return out;
}

Tensor linspace(double start, double end, int64_t steps, DType dtype) {
  KILN_CHECK(steps >= 0, ValueError, "linspace: number of steps must be non-negative, got {}", steps);
  Tensor out = Tensor::empty({steps}, dtype);
  double step = steps > 1 ? (end - start) / static_cast<double>(steps - 1) : 0.0;
  dispatch_numeric(dtype, "linspace", [&]<class T>() {
    T* o = out.data<T>();
    // Fill from both ends, as PyTorch does, so the last value is exactly `end`.
    int64_t half = steps / 2;
    for (int64_t i = 0; i < steps; ++i) {
      double v = (i < half || steps == 1) ? start + step * static_cast<double>(i)
                          : end - step * static_cast<double>(steps - 1 - i);
      o[i] = T(static_cast<compute_t<T>>(v));
    }
  });
  return out;
}

Tensor eye(int64_t n, std::optional<int64_t> m_opt, DType dtype) {
  int64_t m = m_opt.value_or(n);
  KILN_CHECK(n >= 0 && m >= 0, ValueError, "eye: sizes must be non-negative, got {} x {}", n, m);
  Tensor out = zeros({n, m}, dtype);
  for (int64_t i = 0; i < std::min(n, m); ++i) fill(select(select(out, 0, i), 0, i), 1);
  return out;
}

// ---- random: Philox4x32-10 (eager/philox.h) ----

namespace {

struct Generator {
  std::mutex mutex;
  uint64_t seed = 67280421310721ull;
  uint64_t offset = 0;

  // Reserves the counter blocks for n elements: (seed, first block).
  std::pair<uint64_t, uint64_t> reserve(int64_t n) {
    std::lock_guard lock(mutex);
    uint64_t first = offset;
    offset += static_cast<uint64_t>(n + 1) / 2;
    return {seed, first};
  }
};

Generator& generator() {
  static Generator g;
  return g;
}

// fn(philox::Bits) -> double, for each element, written as dtype; on a GPU
// `on_device(out, seed, first)` runs the same computation there.
template <class F, class OnDevice>
Tensor random_tensor(Shape shape, DType dtype, Device device, const char* op, F fn, OnDevice on_device) {
  Tensor out = Tensor::empty(std::move(shape), dtype, device);
  const int64_t n = out.numel();
  const auto [seed, first] = generator().reserve(n);
  if (!device.is_cpu()) {
    on_device(out, seed, first);
    return out;
  }
  dispatch_numeric(dtype, op, [&]<class T>() {
    T* o = out.data<T>();
    parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        o[i] = convert<T>(fn(philox::element(seed, first, static_cast<uint64_t>(i))));
      }
    });
  });
  return out;
}

}  // namespace

void manual_seed(uint64_t seed) {
  std::lock_guard lock(generator().mutex);
  generator().seed = seed;
  generator().offset = 0;
}

namespace {
// Meta rules of the random ops (traced as stateful ops: each run of the
// graph draws fresh numbers from the global generator, as eager would).
// A shape given as numbers cannot follow a dynamic dim of a traced tensor
// (x.shape() reads it as kDynamic): the *_like ops take x itself.
void check_static_shape(const Shape& shape, const char* op) {
  KILN_CHECK(!has_dynamic_dims(shape), TraceError,
             "{}: shape {} has a dynamic dim of a traced tensor; use {}_like(x), which follows x's shape on every "
             "call",
             op, shape_str(shape), op);
}
TensorType rand_meta(const Shape& shape, DType dtype) {
  check_static_shape(shape, "rand");
  KILN_CHECK(is_floating(dtype), DTypeError, "rand: dtype must be floating, got {}", dtype_name(dtype));
  return {shape, dtype};
}
TensorType normal_meta(double std, const Shape& shape, DType dtype) {
  check_static_shape(shape, "randn");
  KILN_CHECK(is_floating(dtype), DTypeError, "normal: dtype must be floating, got {}", dtype_name(dtype));
  KILN_CHECK(std >= 0, ValueError, "normal: std must be non-negative, got {}", std);
  return {shape, dtype};
}
TensorType randint_meta(int64_t low, int64_t high, const Shape& shape, DType dtype) {
  check_static_shape(shape, "randint");
  KILN_CHECK(high > low, ValueError, "randint: high ({}) must be greater than low ({})", high, low);
  return {shape, dtype};
}
TensorType random_like_meta(const TensorType& x, std::optional<DType> dtype, const char* op) {
  DType d = dtype.value_or(x.dtype);
  KILN_CHECK(is_floating(d), DTypeError, "{}: dtype must be floating, got {}", op, dtype_name(d));
  return {x.shape, d, x.device};
}
}  // namespace

Tensor rand(Shape shape, DType dtype, Device device) {
  rand_meta(shape, dtype);
  check_traceable_device(device, "rand");
  if (auto traced = trace_if_active("rand", {}, KILN_ATTRS(shape, dtype))) return (*traced)[0];
  // As many random bits as the dtype has significand bits, so every value
  // is exact and rounding can never produce 1.0.
  const int bits = philox::uniform_bits(static_cast<int>(itemsize(dtype)), dtype == DType::BFloat16);
  return random_tensor(
      std::move(shape), dtype, device, "rand", [bits](philox::Bits r) { return philox::uniform(r, bits); },
      [](const Tensor& out, uint64_t seed, uint64_t first) { cuda_kernels::rand(out, seed, first); });
}

Tensor randn(Shape shape, DType dtype, Device device) { return normal(0.0, 1.0, std::move(shape), dtype, device); }

Tensor normal(double mean, double std, Shape shape, DType dtype, Device device) {
  normal_meta(std, shape, dtype);
  check_traceable_device(device, "normal");
  if (auto traced = trace_if_active("normal", {}, KILN_ATTRS(mean, std, shape, dtype))) return (*traced)[0];
  return random_tensor(
      std::move(shape), dtype, device, "normal", [mean, std](philox::Bits r) { return philox::normal(r, mean, std); },
      [&](const Tensor& out, uint64_t seed, uint64_t first) { cuda_kernels::normal(out, seed, first, mean, std); });
}

Tensor randint(int64_t low, int64_t high, Shape shape, DType dtype, Device device) {
  randint_meta(low, high, shape, dtype);
  check_traceable_device(device, "randint");
  if (auto traced = trace_if_active("randint", {}, KILN_ATTRS(low, high, shape, dtype))) return (*traced)[0];
  const uint64_t range = static_cast<uint64_t>(high - low);
  // Computed in integers: a double would lose bits for ranges beyond 2^53.
  Tensor out = Tensor::empty(std::move(shape), dtype, device);
  const int64_t n = out.numel();
  const auto [seed, first] = generator().reserve(n);
  if (!device.is_cpu()) {
    dispatch_numeric(dtype, "randint", []<class T>() {});  // the CPU's dtype error
    cuda_kernels::randint(out, seed, first, low, high);
    return out;
  }
  dispatch_numeric(dtype, "randint", [&]<class T>() {
    T* o = out.data<T>();
    parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        o[i] = convert<T>(philox::integer(philox::element(seed, first, static_cast<uint64_t>(i)), low, range));
      }
    });
  });
  return out;
}

Tensor rand_like(const Tensor& x, std::optional<DType> dtype) {
  random_like_meta(type_of(x), dtype, "rand_like");
  if (auto traced = trace_if_active("rand_like", {x}, KILN_ATTRS(dtype))) return (*traced)[0];
  return rand(x.shape(), dtype.value_or(x.dtype()), x.device());
}
Tensor randn_like(const Tensor& x, std::optional<DType> dtype) {
  random_like_meta(type_of(x), dtype, "randn_like");
  if (auto traced = trace_if_active("randn_like", {x}, KILN_ATTRS(dtype))) return (*traced)[0];
  return randn(x.shape(), dtype.value_or(x.dtype()), x.device());
}

void register_creation_ops() {
  for (const char* name : {"rand_like", "randn_like"})
    register_op({.name = name,
                 .attrs = {{"dtype", AttrKind::DType, true}},
                 .meta = [name](const std::vector<TensorType>& in, const Attrs& a) -> std::vector<TensorType> {
                   return {random_like_meta(in[0], a.get<std::optional<DType>>("dtype"), name)};
                 },
                 .run = [name](const std::vector<Tensor>& in, const Attrs& a) -> std::vector<Tensor> {
                   auto dtype = a.get<std::optional<DType>>("dtype");
                   return {std::string_view(name) == "rand_like" ? rand_like(in[0], dtype) : randn_like(in[0], dtype)};
                 },
                 .stateful = true});
  register_op({.name = "rand",
               .num_inputs = 0,
               .attrs = {{"shape", AttrKind::Ints}, {"dtype", AttrKind::DType}},
               .meta = KILN_META(rand_meta(a.get<Shape>("shape"), a.get<DType>("dtype"))),
               .run = KILN_RUN(rand(a.get<Shape>("shape"), a.get<DType>("dtype"))),
               .stateful = true});
  register_op({.name = "normal",
               .num_inputs = 0,
               .attrs = {{"mean", AttrKind::Float}, {"std", AttrKind::Float}, {"shape", AttrKind::Ints},
                         {"dtype", AttrKind::DType}},
               .meta = KILN_META(normal_meta(a.get<double>("std"), a.get<Shape>("shape"), a.get<DType>("dtype"))),
               .run = KILN_RUN(normal(a.get<double>("mean"), a.get<double>("std"), a.get<Shape>("shape"),
                                      a.get<DType>("dtype"))),
               .stateful = true});
  register_op({.name = "randint",
               .num_inputs = 0,
               .attrs = {{"low", AttrKind::Int}, {"high", AttrKind::Int}, {"shape", AttrKind::Ints},
                         {"dtype", AttrKind::DType}},
               .meta = KILN_META(randint_meta(a.get<int64_t>("low"), a.get<int64_t>("high"), a.get<Shape>("shape"),
                                              a.get<DType>("dtype"))),
               .run = KILN_RUN(randint(a.get<int64_t>("low"), a.get<int64_t>("high"), a.get<Shape>("shape"),
                                       a.get<DType>("dtype"))),
               .stateful = true});
  register_op({.name = "full",
               .num_inputs = 0,
               .attrs = {{"shape", AttrKind::Ints}, {"value", AttrKind::Scalar}, {"dtype", AttrKind::DType, true}},
               .meta = [](const std::vector<TensorType>&, const Attrs& a) -> std::vector<TensorType> {
                 Scalar value = a.get<Scalar>("value");
                 return {{a.get<Shape>("shape"), a.get<std::optional<DType>>("dtype").value_or(default_dtype(value.category()))}};
               },
               .run = [](const std::vector<Tensor>&, const Attrs& a) -> std::vector<Tensor> {
                 return {full(a.get<Shape>("shape"), a.get<Scalar>("value"), a.get<std::optional<DType>>("dtype"))};
               }});
  register_op({.name = "full_like",
               .attrs = {{"value", AttrKind::Scalar}, {"dtype", AttrKind::DType, true}},
               .meta = [](const std::vector<TensorType>& in, const Attrs& a) -> std::vector<TensorType> {
                 return {{in[0].shape, a.get<std::optional<DType>>("dtype").value_or(in[0].dtype), in[0].device}};
               },
               .run = [](const std::vector<Tensor>& in, const Attrs& a) -> std::vector<Tensor> {
                 return {full_like(in[0], a.get<Scalar>("value"), a.get<std::optional<DType>>("dtype"))};
               }});
}

}  // namespace kiln
