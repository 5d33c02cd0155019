#include "eager/cuda/launch.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "eager/cuda/kernel_args.h"
#include "eager/loops.h"
#include "eager/ops.h"
#include "runtime/cuda_driver.h"

#ifdef KILN_HAVE_CUDA_KERNELS
#include "eager/cuda/binary_fatbin.h"
#include "eager/cuda/copy_fatbin.h"
#include "eager/cuda/index_fatbin.h"
#include "eager/cuda/pool_fatbin.h"
#include "eager/cuda/rows_fatbin.h"
#include "eager/cuda/unary_fatbin.h"
#endif

namespace kiln::cuda_kernels {
namespace {

#ifdef KILN_HAVE_CUDA_KERNELS
#define KILN_IMAGE(NAME) \
  const cuda::KernelImage NAME##_image{#NAME, reinterpret_cast<const unsigned char*>(kiln_##NAME##_fatbin), sizeof kiln_##NAME##_fatbin}
KILN_IMAGE(unary);
KILN_IMAGE(binary);
KILN_IMAGE(copy);
KILN_IMAGE(rows);
KILN_IMAGE(index);
KILN_IMAGE(pool);
#undef KILN_IMAGE
#else
const cuda::KernelImage unary_image{"unary", nullptr, 0}, binary_image = unary_image, copy_image = unary_image,
                        rows_image = unary_image, index_image = unary_image, pool_image = unary_image;
#endif

// The dtype's part of a kernel's name (eager/cuda/device.cuh).
const char* suffix(DType d) {
  switch (d) {
    case DType::Bool: return "b8";
    case DType::UInt8: return "u8";
    case DType::Int8: return "i8";
    case DType::Int32: return "i32";
    case DType::Int64: return "i64";
    case DType::Float16: return "f16";
    case DType::BFloat16: return "bf16";
    case DType::Float32: return "f32";
    case DType::Float64: return "f64";
  }
  return "?";
}


template <class Args>
void launch(const cuda::KernelImage& image, const std::string& kernel, int device, int64_t blocks, Args& args) {
#ifndef KILN_HAVE_CUDA_KERNELS
  fail<DeviceError>("{}: this build of kiln has no CUDA kernels (nvcc was not found when it was built)", kernel);
#endif
  if (blocks == 0) return;
  KILN_CHECK(blocks < (int64_t{1} << 31), ShapeError, "{}: too many elements for one launch", kernel);
  void* params[] = {&args};
  cuda::launch(device, image, kernel.c_str(),
               {.grid_x = static_cast<unsigned>(blocks), .block_x = static_cast<unsigned>(kThreads)}, params);
}

int device_of(const Tensor& t) { return t.device().index; }

// A CPU operand of a CUDA kernel must be one value (a 0-d tensor, maybe
// expanded); it is passed by value.
bool is_host_scalar(const Tensor& t) {
  return t.device().is_cpu() && std::all_of(t.strides().begin(), t.strides().end(), [](int64_t s) { return s == 0; });
}

Operand scalar_operand(Scalar s) {
  Operand op{};
  op.data = nullptr;
  if (s.category() == DTypeCategory::Floating) {
    op.value = s.to_double();
    op.int_value = static_cast<int64_t>(op.value);
  } else {
    op.int_value = s.to_int();
    op.value = static_cast<double>(op.int_value);
  }
  return op;
}

// Builds the Elementwise parameters of out = f(inputs...) and hands them to
// `go` once per launch: loops of more than kMaxDims coalesced dims are split
// along their outermost dims.
template <int N, class Go>
void plan_elementwise(const std::string& kernel, const Tensor& out, const std::array<const Tensor*, N>& inputs,
                      Go&& go) {
  if (out.numel() == 0) return;
  std::array<const Tensor*, N + 1> all;
  all[0] = &out;
  for (int k = 0; k < N; ++k) {
    const Tensor& in = *inputs[k];
    KILN_CHECK(in.shape() == out.shape(), ShapeError, "{}: operand of shape {} for an output of shape {}", kernel,
               shape_str(in.shape()), shape_str(out.shape()));
    // named after the op the user called (the kernel is an implementation detail)
    KILN_CHECK(in.device() == out.device() || is_host_scalar(in), DeviceError,
               "{}: expected all tensors on {}, got one on {}; move it with .to()",
               current_op() ? current_op() : kernel.c_str(), out.device().str(), in.device().str());
    all[k + 1] = &in;
  }
  LoopPlan<N + 1> plan = plan_loop<N + 1>(out.shape(), all, /*on_device=*/true);
  Elementwise<N> args{};
  std::array<bool, N> scalar{};
  for (int k = 0; k < N; ++k) {
    scalar[k] = is_host_scalar(*inputs[k]);
    if (scalar[k]) args.in[k] = scalar_operand(inputs[k]->as_strided({}, {}, inputs[k]->offset()).item());
  }
  const int nd = static_cast<int>(plan.shape.size());
  // The loop over dims [first, nd), at the bases given.
  auto run = [&](auto&& self, int first, std::array<char*, N + 1> base) -> void {
    if (nd - first > kMaxDims) {
      for (int64_t i = 0; i < plan.shape[first]; ++i) {
        std::array<char*, N + 1> b = base;
        for (int k = 0; k <= N; ++k) b[k] += i * plan.strides[k][first];
        self(self, first + 1, b);
      }
      return;
    }
    args.ndim = nd - first;
    args.n = 1;
    for (int d = first; d < nd; ++d) {
      args.sizes[d - first] = plan.shape[d];
      args.n *= plan.shape[d];
      args.out_strides[d - first] = plan.strides[0][d];
      for (int k = 0; k < N; ++k) args.in[k].strides[d - first] = plan.strides[k + 1][d];
    }
    args.out = base[0];
    for (int k = 0; k < N; ++k)
      if (!scalar[k]) args.in[k].data = base[k + 1];
    auto group_aligned = [](const char* p, size_t item) { return reinterpret_cast<uintptr_t>(p) % (item * kVec) == 0; };
    args.vector = args.ndim == 1 && args.out_strides[0] == int64_t(out.itemsize()) && group_aligned(args.out, out.itemsize());
    for (int k = 0; k < N && args.vector; ++k)
      args.vector = scalar[k] || (args.in[k].strides[0] == int64_t(inputs[k]->itemsize()) &&
                                  group_aligned(args.in[k].data, inputs[k]->itemsize()));
    go(args);
  };
  run(run, 0, plan.base);
}

int64_t blocks_for(int64_t n) { return (n + kThreads * kVec - 1) / (kThreads * kVec); }

template <int N>
void run_elementwise(const cuda::KernelImage& image, const std::string& kernel, const Tensor& out,
                     const std::array<const Tensor*, N>& inputs) {
  plan_elementwise<N>(kernel, out, inputs,
                      [&](Elementwise<N>& args) { launch(image, kernel, device_of(out), blocks_for(args.n), args); });
}

}  // namespace

bool built() {
#ifdef KILN_HAVE_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

std::string unary_kernel(std::string_view op, DType dtype) { return fmt::format("kiln_unary_{}_{}", op, suffix(dtype)); }
std::string binary_kernel(std::string_view op, DType compute) {
  return fmt::format("kiln_binary_{}_{}", op, suffix(compute));
}
std::string copy_kernel(DType to, DType from) { return fmt::format("kiln_copy_{}_{}", suffix(to), suffix(from)); }
std::string where_kernel(DType dtype) { return fmt::format("kiln_where_{}", suffix(dtype)); }
std::string random_kernel(std::string_view op, DType dtype) { return fmt::format("kiln_{}_{}", op, suffix(dtype)); }
std::string rows_kernel(std::string_view op, DType dtype) { return fmt::format("kiln_rows_{}_{}", op, suffix(dtype)); }
std::string columns_kernel(std::string_view op, DType dtype) {
  return fmt::format("kiln_columns_{}_{}", op, suffix(dtype));
}
std::string pool_kernel(std::string_view kind, DType dtype) { return fmt::format("kiln_pool_{}_{}", kind, suffix(dtype)); }
std::string index_kernel(std::string_view kind, DType dtype, DType index) {
  if (kind == "add") return fmt::format("kiln_index_add_{}_{}", suffix(dtype), suffix(index));
  return fmt::format("kiln_index_{}_w{}_{}", kind, itemsize(dtype), suffix(index));
}

bool has_kernel(std::string_view name) {
#ifdef KILN_HAVE_CUDA_KERNELS
  for (const char* const* names : {kiln_unary_fatbin_kernels, kiln_binary_fatbin_kernels, kiln_copy_fatbin_kernels,
                                   kiln_rows_fatbin_kernels, kiln_index_fatbin_kernels, kiln_pool_fatbin_kernels})
    for (const char* const* n = names; *n; ++n)
      if (name == *n) return true;
#endif
  return false;
}

void copy(const Tensor& out, const Tensor& in) {
  run_elementwise<1>(copy_image, copy_kernel(out.dtype(), in.dtype()), out, {&in});
}

void fill(const Tensor& out, Scalar value) {
  // The value converted on the host, as the CPU's fill converts it (a float
  // into an integer dtype wraps through int64 there; a device cast would
  // saturate), then copied into every element.
  Tensor s = scalar_tensor(value, out.dtype()).expand(out.shape());
  run_elementwise<1>(copy_image, copy_kernel(out.dtype(), out.dtype()), out, {&s});
}

void unary(std::string_view op, const Tensor& out, const Tensor& in) {
  run_elementwise<1>(unary_image, unary_kernel(op, in.dtype()), out, {&in});
}

void binary(std::string_view op, const Tensor& out, const Tensor& a, const Tensor& b) {
  run_elementwise<2>(binary_image, binary_kernel(op, a.dtype()), out, {&a, &b});
}

void where(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  run_elementwise<3>(copy_image, where_kernel(out.dtype()), out, {&cond, &a, &b});
}

void indexed(std::string_view kind, const Tensor& plain, const Tensor& base, const Tensor& index,
             const IndexRule& rule) {
  if (kind == "add") {
    const DType d = plain.dtype();
    KILN_CHECK(d == DType::Float32 || d == DType::Float64 || d == DType::Float16 || d == DType::BFloat16 ||
                   d == DType::Int32 || d == DType::Int64,
               DTypeError, "{}: accumulating {} values is not supported on CUDA (float and int32/int64 are); "
               "convert them first", rule.op, dtype_name(d));
  }
  const std::string kernel = index_kernel(kind, plain.dtype(), index.dtype());
  Indexed args{};
  args.stride = rule.stride;
  args.size = rule.size;
  args.wrap = rule.wrap;
  args.dim = static_cast<int>(rule.dim);
  std::snprintf(args.op, sizeof args.op, "%s", rule.op);
  // The plain side is the loop's "output"; base and index its inputs.
  plan_elementwise<2>(kernel, plain, {&base, &index}, [&](Elementwise<2>& loop) {
    args.loop = loop;
    launch(index_image, kernel, device_of(plain), blocks_for(loop.n), args);
  });
}

namespace {
void run_pool(const std::string& kernel, const nn::functional::PoolGeom& g, bool adaptive, bool count_include_pad,
              const Tensor& in, const Tensor& out, const Tensor& indices) {
  const int64_t outputs = g.planes * g.Ho * g.Wo;
  if (outputs == 0) return;
  KILN_CHECK(in.is_contiguous() && out.is_contiguous(), Error, "{}: expects contiguous planes", kernel);
  Pool args{g, static_cast<const char*>(in.address()), static_cast<char*>(out.address()),
            indices.defined() ? static_cast<char*>(indices.address()) : nullptr, adaptive, count_include_pad};
  launch(pool_image, kernel, device_of(out), (outputs + kThreads - 1) / kThreads, args);
}
}  // namespace

void pool(std::string_view kind, const nn::functional::PoolGeom& g, bool count_include_pad, const Tensor& in,
          const Tensor& out, const Tensor& indices) {
  run_pool(pool_kernel(kind == "max" ? "max" : "avg", in.dtype()), g, kind == "adaptive", count_include_pad, in, out,
           indices);
}

void pool_backward(std::string_view kind, const nn::functional::PoolGeom& g, bool count_include_pad,
                   const Tensor& grad, const Tensor& dx) {
  run_pool(pool_kernel("avg_backward", dx.dtype()), g, kind == "adaptive", count_include_pad, grad, dx, Tensor());
}

namespace {
void run_random(const char* op, const Tensor& out, uint64_t seed, uint64_t first, double a, double b) {
  Random args{static_cast<char*>(out.address()), out.numel(), seed, first, a, b};
  launch(copy_image, random_kernel(op, out.dtype()), device_of(out), blocks_for(args.n), args);
}
double bits_as_double(int64_t v) {
  double d;
  std::memcpy(&d, &v, sizeof d);
  return d;
}
}  // namespace

void rand(const Tensor& out, uint64_t seed, uint64_t first) { run_random("rand", out, seed, first, 0, 0); }
void normal(const Tensor& out, uint64_t seed, uint64_t first, double mean, double std) {
  run_random("normal", out, seed, first, mean, std);
}
void randint(const Tensor& out, uint64_t seed, uint64_t first, int64_t low, int64_t high) {
  // low and the range travel as bits: a double holds integers exactly only up to 2^53.
  run_random("randint", out, seed, first, bits_as_double(low),
             bits_as_double(static_cast<int64_t>(static_cast<uint64_t>(high) - static_cast<uint64_t>(low))));
}

namespace {
constexpr int64_t kWarps = kThreads / 32;

// A warp per row up to kWarpRowCols columns (kWarps rows a block), else a block.
int64_t row_blocks(int64_t rows, int64_t cols) { return cols <= kWarpRowCols ? (rows + kWarps - 1) / kWarps : rows; }

void run_rows(const std::string& kernel, const Tensor& out, const Tensor& in, int64_t rows, int64_t cols,
              Rows args = {}) {
  if (rows == 0) return;
  KILN_CHECK(in.is_contiguous() && out.is_contiguous() && in.device() == out.device(), Error,
             "{}: expects contiguous inputs and outputs on one device", kernel);
  args.in = static_cast<const char*>(in.address());
  args.out = static_cast<char*>(out.address());
  args.rows = rows;
  args.cols = cols;
  launch(rows_image, kernel, device_of(out), row_blocks(rows, cols), args);
}
}  // namespace

void reduce_rows(std::string_view op, const Tensor& out, const Tensor& in, int64_t rows, int64_t cols) {
  run_rows(rows_kernel(op, in.dtype()), out, in, rows, cols);
}

void reduce_columns(std::string_view op, const Tensor& out, const Tensor& in, int64_t outer, int64_t count,
                    int64_t inner) {
  if (outer == 0 || inner == 0) return;
  KILN_CHECK(in.is_contiguous() && out.is_contiguous() && in.device() == out.device(), Error,
             "reduce_columns: expects contiguous inputs and outputs on one device");
  Columns args{static_cast<const char*>(in.address()), static_cast<char*>(out.address()), outer, count, inner};
  launch(rows_image, columns_kernel(op, in.dtype()), device_of(out), outer * ((inner + 31) / 32), args);
}

void arg_rows(bool max, const Tensor& values, const Tensor& indices, const Tensor& in, int64_t rows, int64_t cols) {
  if (rows == 0) return;
  KILN_CHECK(in.is_contiguous(), Error, "arg_rows: expects a contiguous input");
  Rows args{};
  args.in = static_cast<const char*>(in.address());
  args.out = values.defined() ? static_cast<char*>(values.address()) : nullptr;
  args.indices = static_cast<char*>(indices.address());
  args.rows = rows;
  args.cols = cols;
  launch(rows_image, rows_kernel(max ? "argmax" : "argmin", in.dtype()), device_of(in), row_blocks(rows, cols), args);
}

void softmax_rows(bool log, const Tensor& out, const Tensor& in, int64_t rows, int64_t cols) {
  run_rows(rows_kernel(log ? "log_softmax" : "softmax", in.dtype()), out, in, rows, cols);
}

void layer_norm_rows(const Tensor& out, const Tensor& in, const Tensor& weight, const Tensor& bias, double eps,
                     int64_t rows, int64_t cols) {
  Rows args{};
  args.weight = weight.defined() ? static_cast<const char*>(weight.address()) : nullptr;
  args.bias = bias.defined() ? static_cast<const char*>(bias.address()) : nullptr;
  args.eps = eps;
  for (const Tensor& p : {weight, bias})
    if (p.defined() && p.dtype() != in.dtype()) args.params_in_compute_type = true;
  run_rows(rows_kernel("layer_norm", in.dtype()), out, in, rows, cols, args);
}

}  // namespace kiln::cuda_kernels
