#include "codegen/cpu_program.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "eager/autograd.h"
#include "runtime/allocator.h"
#include "runtime/parallel.h"

namespace kiln::codegen {
namespace {

// A strided memref descriptor as MLIR's C interface lays it out for rank N:
// {allocated, aligned, offset, sizes[N], strides[N]} (all 64-bit).
std::vector<int64_t> describe(const Tensor& t) {
  size_t rank = t.shape().size();
  std::vector<int64_t> d(3 + 2 * rank);
  d[0] = d[1] = static_cast<int64_t>(reinterpret_cast<intptr_t>(t.data_ptr()));
  int64_t stride = 1;
  for (size_t i = rank; i-- > 0;) {
    d[3 + i] = t.shape()[i];
    d[3 + rank + i] = stride;
    stride *= t.shape()[i];
  }
  return d;
}

// Calls kernel(begin, end, d0, d1, ...) through its exact prototype: every
// memref argument of the C interface is a pointer to its descriptor.
constexpr size_t kMaxKernelArgs = 128;  // passes/outline_kernels.cpp keeps groups below it
using Caller = void (*)(void* fn, int64_t begin, int64_t end, void* const* args);

template <size_t... I>
void call_with(void* fn, int64_t begin, int64_t end, void* const* args, std::index_sequence<I...>) {
  using Fn = void (*)(int64_t, int64_t, decltype((void)I, static_cast<void*>(nullptr))...);
  reinterpret_cast<Fn>(fn)(begin, end, args[I]...);
}
template <size_t... N>
constexpr std::array<Caller, sizeof...(N)> make_callers(std::index_sequence<N...>) {
  return {[](void* fn, int64_t b, int64_t e, void* const* args) { call_with(fn, b, e, args, std::make_index_sequence<N>()); }...};
}
constexpr auto kCallers = make_callers(std::make_index_sequence<kMaxKernelArgs + 1>());

void store_fence() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_sfence();
#endif
}

void run_kernel(const Kernel& kernel, const std::vector<Tensor>& args) {
  KILN_CHECK(args.size() <= kMaxKernelArgs, Error, "kernel {} takes {} buffers; at most {} are supported",
             kernel.symbol, args.size(), kMaxKernelArgs);
  std::vector<std::vector<int64_t>> descriptors;
  descriptors.reserve(args.size());
  std::vector<void*> pointers;
  for (const Tensor& t : args) {
    descriptors.push_back(describe(t));
    pointers.push_back(descriptors.back().data());
  }
  // Streaming stores (codegen/streaming_stores.h) are weakly ordered: each
  // task fences them before whoever reads the output can look.
  auto call = [caller = kCallers[args.size()], &kernel, &pointers](int64_t begin, int64_t end) {
    caller(kernel.address, begin, end, pointers.data());
  };
  if (kernel.tile_extent == 0) {
    call(0, 0);
    store_fence();
    return;
  }
  if (kernel.columns) {  // each task sweeps every row over its own columns, in one call
    int64_t per_task = std::max(kMinColumnsPerCall, (kernel.tile_extent + num_threads() - 1) / num_threads());
    parallel_for(0, kernel.tile_extent, per_task, [&](int64_t begin, int64_t end) {
      call(begin, end);
      store_fence();
    });
    return;
  }
  // Enough outer iterations per task that the pool's wake-up cost is noise,
  // and within a task, calls of at most ~16K iterations (best measured of
  // 4K..256K: softmax 6.5 vs 9.2 ms at 64K), so that a kernel of
  // several passes over its rows (softmax: max, sum, normalize) finds the
  // rows of the first pass still in cache in the next. Kernels rely on that
  // bound: an output they stage keeps a call's rows on the stack
  // (codegen/streaming_stores.h).
  constexpr int64_t kWorkPerTask = 1 << 15, kWorkPerCall = 1 << 14;
  int64_t per_row = std::max<int64_t>(1, kernel.work / kernel.tile_extent);
  int64_t grain = std::max<int64_t>(1, kWorkPerTask / per_row);
  int64_t rows_per_call = std::max<int64_t>(1, kWorkPerCall / per_row);
  parallel_for(0, kernel.tile_extent, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += rows_per_call)
      call(b, std::min(end, b + rows_per_call));
    store_fence();
  });
}

bool is_static(const TensorType& t) {
  return std::none_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return is_dynamic(d); });
}

int64_t bytes_of(const Tensor& t) { return t.defined() ? t.numel() * static_cast<int64_t>(itemsize(t.dtype())) : 0; }

}  // namespace

void Program::compute_liveness() {
  std::vector<int> last_use(values.size(), -1);
  for (size_t i = 0; i < steps.size(); ++i)
    for (ProgramValueId v : steps[i].inputs)
      if (v != kAbsent) last_use[v] = static_cast<int>(i);
  // A value nothing reads is released right after the step that made it.
  for (size_t i = 0; i < steps.size(); ++i)
    for (ProgramValueId v : steps[i].outputs)
      if (last_use[v] < static_cast<int>(i)) last_use[v] = static_cast<int>(i);
  for (ProgramValueId v : results) last_use[v] = static_cast<int>(steps.size());
  release_after.assign(steps.size(), {});
  for (size_t v = 0; v < values.size(); ++v)
    if (last_use[v] >= 0 && last_use[v] < static_cast<int>(steps.size()))
      release_after[last_use[v]].push_back(static_cast<ProgramValueId>(v));
}

std::vector<Tensor> run_program(const Program& program, const std::vector<Tensor>& inputs, RunStats* stats) {
  KILN_CHECK(inputs.size() == program.arguments.size(), ValueError, "compiled program: expected {} inputs, got {}",
             program.arguments.size(), inputs.size());
  NoGradGuard no_grad;
  std::vector<Tensor> values(program.values.size());
  for (size_t i = 0; i < inputs.size(); ++i) values[program.arguments[i]] = inputs[i];
  int64_t live = 0, peak = 0;
  std::vector<char> owned(program.values.size(), 0);  // allocated by this run and still held
  // KILN_PROFILE=1: each step's time on stderr (kernels, eager ops, copies).
  static const bool profile = std::getenv("KILN_PROFILE") != nullptr;
  auto started = std::chrono::steady_clock::now();
  for (size_t s = 0; s < program.steps.size(); ++s) {
    const Step& step = program.steps[s];
    if (profile) started = std::chrono::steady_clock::now();
    std::vector<Tensor> in;
    for (ProgramValueId v : step.inputs) in.push_back(v == kAbsent ? Tensor() : values[v]);
    std::vector<Tensor> out;
    // which outputs this step allocated (counted in `live` until released)
    std::vector<char> fresh(step.outputs.size(), step.kind == Step::Kind::Host);
    switch (step.kind) {
      case Step::Kind::Kernel: {
        const Kernel& kernel = program.kernels[step.kernel];
        std::vector<Tensor> args;
        for (Tensor& t : in) args.push_back(t.is_contiguous() ? t : t.contiguous());
        out.resize(step.outputs.size());
        for (auto [result, operand] : kernel.in_place) out[result] = in[operand];
        for (size_t k = 0; k < step.outputs.size(); ++k) {
          if (out[k].defined()) continue;  // written in place
          const TensorType& type = program.values[step.outputs[k]];
          KILN_CHECK(is_static(type), Error, "kernel {}: output of dynamic shape", kernel.symbol);
          out[k] = Tensor::empty(type.shape, type.dtype);
          // kernels assume it (codegen/streaming_stores.h)
          KILN_CHECK(reinterpret_cast<uintptr_t>(out[k].data_ptr()) % kCpuAlignment == 0, Error,
                     "kernel {}: output buffer is not {}-byte aligned", kernel.symbol, kCpuAlignment);
          fresh[k] = 1;
          args.push_back(out[k]);
        }
        run_kernel(kernel, args);
        // an in-place operand that had to be made contiguous gets its values back
        for (auto [result, operand] : kernel.in_place)
          if (!args[operand].is_same(in[operand])) Tensor(in[operand]).copy_(args[operand]);
        break;
      }
      case Step::Kind::Host:
        out = step.op->run(in, step.attrs);
        break;
      case Step::Kind::Reshape:
        out.push_back(in[0].contiguous().reshape(program.values[step.outputs[0]].shape));
        break;
      case Step::Kind::Constant:
        out.push_back(step.constant);
        break;
    }
    KILN_CHECK(out.size() == step.outputs.size(), Error, "compiled program: step {} made {} values, expected {}", s,
               out.size(), step.outputs.size());
    for (size_t k = 0; k < out.size(); ++k) {
      ProgramValueId v = step.outputs[k];
      values[v] = std::move(out[k]);
      if (fresh[k]) {
        owned[v] = 1;
        live += bytes_of(values[v]);
      }
    }
    peak = std::max(peak, live);
    if (profile) {
      double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - started).count();
      std::string what = step.kind == Step::Kind::Kernel ? program.kernels[step.kernel].symbol
                         : step.kind == Step::Kind::Host ? "eager " + step.op->name
                                                         : "reshape/constant";
      std::fprintf(stderr, "kiln profile: step %3zu %9.1f us  %s (%s)\n", s, us, what.c_str(), step.location.c_str());
    }
    for (ProgramValueId v : program.release_after[s]) {
      if (owned[v]) live -= bytes_of(values[v]);
      owned[v] = 0;
      values[v] = Tensor();
    }
  }
  if (stats) stats->peak_intermediate_bytes = peak;
  // A value returned twice (CSE merged two equal computations) is two
  // tensors, as eagerly: writing into one must not change the other.
  std::vector<Tensor> results;
  std::vector<char> returned(program.values.size(), 0);
  for (ProgramValueId v : program.results) {
    bool again = returned[v] && !std::count(program.arguments.begin(), program.arguments.end(), v);
    results.push_back(again ? values[v].clone() : values[v]);
    returned[v] = 1;
  }
  return results;
}

}  // namespace kiln::codegen
