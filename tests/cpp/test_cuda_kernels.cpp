// Every kernel the CUDA launchers (eager/cuda/launch.h) can ask for is in
// this build's fatbins, checked without a GPU against the kernel names nvcc
// compiled: a launcher and a .cu file that spell a name differently would
// otherwise fail only on a GPU. The dtypes each op family launches for
// follow the ops' own rules: the CPU op runs first and says which dtypes it
// accepts.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "eager/cuda/launch.h"
#include "kiln.h"

using namespace kiln;

namespace {
const std::vector<DType> kAllDTypes = {DType::Bool,    DType::UInt8,    DType::Int8,    DType::Int32,  DType::Int64,
                                       DType::Float16, DType::BFloat16, DType::Float32, DType::Float64};

template <class F>
bool cpu_accepts(F&& op) {
  try {
    op();
    return true;
  } catch (const Error&) {
    return false;
  }
}
}  // namespace

TEST_CASE("every CUDA kernel the ops can launch is built", "[cuda]") {
  if (!cuda_kernels::built()) {
    WARN("this build has no CUDA kernels (nvcc was not found): skipped");
    return;
  }
  CHECK_FALSE(cuda_kernels::has_kernel("kiln_unary_exp_q7"));
  std::vector<std::string> missing;
  auto need = [&](const std::string& name) {
    if (!cuda_kernels::has_kernel(name)) missing.push_back(name);
  };
  for (DType d : kAllDTypes) {
    const Tensor x = ones({2}, d);
    // Unary ops launch on their result's dtype; rounding ops on integers
    // are the identity and launch nothing.
#define KILN_UNARY(NAME, KIND, ...)                                                     \
    if (Tensor y; cpu_accepts([&] { y = kiln::NAME(x); }) &&                            \
                  !(std::string_view(#KIND) == "Rounding" && !is_floating(d)))          \
      need(cuda_kernels::unary_kernel(#NAME, y.dtype()));
#include "eager/unary_ops.def"
#undef KILN_UNARY
    // Binary ops launch on the dtype they compute in: the promoted one, or
    // float32 for a Float op of integers.
#define KILN_BINARY(NAME, KIND, ...)                                                                   \
    if (cpu_accepts([&] { kiln::NAME(x, x); }))                                                        \
      need(cuda_kernels::binary_kernel(#NAME, std::string_view(#KIND) == "Float" && !is_floating(d)    \
                                                  ? DType::Float32 : d));
#include "eager/binary_ops.def"
#undef KILN_BINARY
    for (DType from : kAllDTypes) need(cuda_kernels::copy_kernel(d, from));
    need(cuda_kernels::where_kernel(d));
    for (const char* op : {"sum", "prod"})
      if (cpu_accepts([&] { kiln::sum(x); }))
        need(cuda_kernels::rows_kernel(op, d)), need(cuda_kernels::columns_kernel(op, d));
    for (const char* op : {"max", "min"}) need(cuda_kernels::columns_kernel(op, d));
    for (const char* op : {"max", "min", "argmax", "argmin"}) need(cuda_kernels::rows_kernel(op, d));
    if (is_floating(d)) {
      for (const char* op : {"softmax", "log_softmax", "layer_norm"}) need(cuda_kernels::rows_kernel(op, d));
      for (const char* op : {"rand", "normal"}) need(cuda_kernels::random_kernel(op, d));
      for (const char* kind : {"max", "avg", "avg_backward"}) need(cuda_kernels::pool_kernel(kind, d));
    }
    if (cpu_accepts([&] { randint(0, 3, {2}, d); })) need(cuda_kernels::random_kernel("randint", d));
    for (DType index : {DType::Int32, DType::Int64}) {
      for (const char* kind : {"take", "put"}) need(cuda_kernels::index_kernel(kind, d, index));
      if (is_floating(d) || d == DType::Int32 || d == DType::Int64)
        need(cuda_kernels::index_kernel("add", d, index));
    }
  }
  INFO("missing kernels: " << fmt::format("{}", fmt::join(missing, ", ")));
  CHECK(missing.empty());
}
