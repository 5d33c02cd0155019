// GPU throughput of the C++ eager API on cuda:0: device-to-device copy
// bandwidth (the memory-bandwidth reference), elementwise ops, softmax,
// layer_norm, reductions (GB/s and % of the copy's bandwidth) and matmul
// (TFLOP/s). bench/bench_cuda_torch.py runs the same workloads in PyTorch
// and prints the same lines; bench/merge_cuda.py puts the two side by side
// (scripts/gpu_check.sh runs all three on a GPU machine).
//
// Each workload: `--warmup` calls, then `--reps` timed repetitions, each of
// `inner` back-to-back calls between two cuda::Events (inner is chosen so a
// repetition takes about `--target-ms`); the time per call is the median
// repetition divided by inner. Calls are launched asynchronously on the
// current stream, so host-side dispatch overlaps the GPU work unless it is
// the slower of the two (then it is what gets measured, as in real use).
//
// Output: one JSON object per line (a "meta" line, then one per workload,
// each printed as soon as it is measured), then a human-readable table.
// Bytes are the op's logical traffic (inputs read + outputs written once),
// whatever the implementation moves internally.
//
//   kiln_bench_cuda [--warmup N] [--reps N] [--target-ms MS] [--only SUBSTRING] [--list]
//
// Without a usable GPU it prints "no CUDA GPU: <reason>" and exits 0.
// --list prints the workload names and exits (no GPU needed).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "eager/ops.h"
#include "eager/autograd.h"
#include "runtime/cublas.h"
#include "runtime/cuda_driver.h"

namespace {

using namespace kiln;

struct Options {
  int warmup = 3;
  int reps = 15;
  double target_ms = 4.0;
  std::string only;  // run only workloads whose name contains this
  bool list = false;  // print the names only
};

struct Result {
  std::string workload, group, error;
  double ms = 0, min_ms = 0, max_ms = 0;
  int inner = 0, reps = 0;
  double bytes = 0, flops = 0;
  double gbps = 0, pct_copy = 0, tflops = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (c == '\n') out += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) out += ' ';
    else out += c;
  }
  return out;
}

void print_json(const Result& r) {
  if (!r.error.empty()) {
    std::printf("{\"workload\": \"%s\", \"group\": \"%s\", \"error\": \"%s\"}\n", json_escape(r.workload).c_str(),
                r.group.c_str(), json_escape(r.error).c_str());
  } else {
    std::printf(
        "{\"workload\": \"%s\", \"group\": \"%s\", \"ms\": %.6f, \"min_ms\": %.6f, \"max_ms\": %.6f, "
        "\"inner\": %d, \"reps\": %d, \"bytes\": %.0f, \"flops\": %.0f, \"gbps\": %.2f, \"pct_copy\": %.2f, "
        "\"tflops\": %.3f}\n",
        json_escape(r.workload).c_str(), r.group.c_str(), r.ms, r.min_ms, r.max_ms, r.inner, r.reps, r.bytes,
        r.flops, r.gbps, r.pct_copy, r.tflops);
  }
  std::fflush(stdout);
}

class Bench {
 public:
  explicit Bench(Options o) : o_(std::move(o)) {
    if (!o_.list) {
      start_ = std::make_unique<cuda::Event>(0);
      end_ = std::make_unique<cuda::Event>(0);
    }
  }

  bool wanted(const std::string& name) const { return o_.only.empty() || name.find(o_.only) != std::string::npos; }

  // Times `call` (which launches the op); `setup` makes its inputs first.
  // bytes / flops: per call, for GB/s and TFLOP/s.
  void run(const std::string& name, const std::string& group, double bytes, double flops,
           const std::function<std::function<void()>()>& setup) {
    if (!wanted(name)) return;
    if (o_.list) {
      std::printf("%s\n", name.c_str());
      return;
    }
    cuda::Event& start = *start_;
    cuda::Event& end = *end_;
    Result r;
    r.workload = name;
    r.group = group;
    r.bytes = bytes;
    r.flops = flops;
    try {
      std::function<void()> call = setup();
      for (int i = 0; i < o_.warmup; ++i) call();
      cuda::synchronize(0);
      // One timed call to size a repetition.
      start.record();
      call();
      end.record();
      end.synchronize();
      const double one = std::max(1e-4, static_cast<double>(start.elapsed_ms(end)));
      r.inner = static_cast<int>(std::clamp(std::ceil(o_.target_ms / one), 1.0, 1000.0));
      std::vector<double> per_call;
      for (int rep = 0; rep < o_.reps; ++rep) {
        start.record();
        for (int i = 0; i < r.inner; ++i) call();
        end.record();
        end.synchronize();
        per_call.push_back(start.elapsed_ms(end) / r.inner);
      }
      r.reps = o_.reps;
      r.ms = median(per_call);
      r.min_ms = *std::min_element(per_call.begin(), per_call.end());
      r.max_ms = *std::max_element(per_call.begin(), per_call.end());
      if (bytes > 0) {
        r.gbps = bytes / (r.ms * 1e-3) / 1e9;
        if (group == "copy") copy_gbps_ = r.gbps;
        r.pct_copy = copy_gbps_ > 0 ? 100.0 * r.gbps / copy_gbps_ : 0;
      }
      if (flops > 0) r.tflops = flops / (r.ms * 1e-3) / 1e12;
    } catch (const std::exception& e) {
      r.error = e.what();
      try {  // leave the device usable for the next workload if it can be
        cuda::synchronize(0);
      } catch (const std::exception&) {
      }
    }
    print_json(r);
    results_.push_back(r);
  }

  void print_table() const {
    std::printf("\n%-32s %10s %6s %10s %8s %10s\n", "workload", "ms/call", "inner", "GB/s", "% copy", "TFLOP/s");
    for (const Result& r : results_) {
      if (!r.error.empty()) {
        std::printf("%-32s ERROR: %s\n", r.workload.c_str(), r.error.c_str());
        continue;
      }
      std::printf("%-32s %10.4f %6d ", r.workload.c_str(), r.ms, r.inner);
      if (r.bytes > 0) std::printf("%10.1f %7.1f%% ", r.gbps, r.pct_copy);
      else std::printf("%10s %8s ", "-", "-");
      if (r.flops > 0) std::printf("%10.1f", r.tflops);
      else std::printf("%10s", "-");
      std::printf("\n");
    }
    std::fflush(stdout);
  }

  bool any_error() const {
    return std::any_of(results_.begin(), results_.end(), [](const Result& r) { return !r.error.empty(); });
  }

 private:
  Options o_;
  std::unique_ptr<cuda::Event> start_, end_;
  double copy_gbps_ = 0;
  std::vector<Result> results_;
};

const char* short_name(DType t) {
  switch (t) {
    case DType::Float32: return "f32";
    case DType::BFloat16: return "bf16";
    case DType::Float16: return "f16";
    default: return "?";
  }
}

double itemsize_of(DType t) { return t == DType::Float32 ? 4.0 : 2.0; }

std::string dims(int64_t r, int64_t c) { return std::to_string(r) + "x" + std::to_string(c); }

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (std::strcmp(argv[i], "--warmup") == 0 && has_value) o.warmup = std::max(0, std::atoi(argv[++i]));
    else if (std::strcmp(argv[i], "--reps") == 0 && has_value) o.reps = std::max(1, std::atoi(argv[++i]));
    else if (std::strcmp(argv[i], "--target-ms") == 0 && has_value) o.target_ms = std::atof(argv[++i]);
    else if (std::strcmp(argv[i], "--only") == 0 && has_value) o.only = argv[++i];
    else if (std::strcmp(argv[i], "--list") == 0) o.list = true;
    else {
      std::fprintf(stderr, "usage: %s [--warmup N] [--reps N] [--target-ms MS] [--only SUBSTRING] [--list]\n",
                   argv[0]);
      return 2;
    }
  }

  if (!o.list && (!cuda::available() || cuda::device_count() == 0)) {
    const std::string why = cuda::unavailable_reason();
    std::printf("no CUDA GPU: %s\n", why.empty() ? "no CUDA device found" : why.c_str());
    return 0;
  }

  const Device dev{DeviceType::CUDA, 0};
  if (!o.list) {
    const cuda::DeviceProperties p = cuda::device_properties(0);
    const std::string cublas_why = cublas::unavailable_reason();
    std::printf(
        "{\"meta\": {\"framework\": \"kiln\", \"device\": \"%s\", \"sm\": \"%d.%d\", \"multiprocessors\": %d, "
        "\"memory_gib\": %.1f, \"driver\": %d, \"cublas\": \"%s\", \"warmup\": %d, \"reps\": %d, "
        "\"target_ms\": %.2f}}\n",
        json_escape(p.name).c_str(), p.compute_capability_major, p.compute_capability_minor, p.multiprocessors,
        static_cast<double>(p.total_memory) / (1 << 30), cuda::driver_version(),
        json_escape(cublas_why.empty() ? "ok" : cublas_why).c_str(), o.warmup, o.reps, o.target_ms);
    std::fflush(stdout);
  }

  NoGradGuard no_grad;
  manual_seed(0);
  Bench b(o);

  // ---- the reference: device-to-device copy of 1 GiB (read + write) ----
  {
    const int64_t n = int64_t{1} << 30;
    b.run("copy u8 1GiB", "copy", 2.0 * n, 0, [&] {
      auto src = std::make_shared<Tensor>(Tensor::empty({n}, DType::UInt8, dev));
      auto dst = std::make_shared<Tensor>(Tensor::empty({n}, DType::UInt8, dev));
      cuda::memset(src->address(), 1, n, 0);
      return std::function<void()>([src, dst, n] { cuda::copy_on_device(dst->address(), src->address(), n, 0); });
    });
  }

  // ---- elementwise ----
  for (int64_t side : {4096, 16384}) {
    for (DType t : {DType::Float32, DType::BFloat16}) {
      const double n = static_cast<double>(side) * side, es = itemsize_of(t);
      const std::string suffix = std::string(" ") + short_name(t) + " " + dims(side, side);
      b.run("add" + suffix, "elementwise", 3 * n * es, 0, [&] {
        auto x = std::make_shared<Tensor>(randn({side, side}, t, dev));
        auto y = std::make_shared<Tensor>(randn({side, side}, t, dev));
        auto out = std::make_shared<Tensor>();
        return std::function<void()>([=] { *out = add(*x, *y); });
      });
      if (t != DType::Float32) continue;
      b.run("mul_scalar" + suffix, "elementwise", 2 * n * es, 0, [&] {
        auto x = std::make_shared<Tensor>(randn({side, side}, t, dev));
        auto out = std::make_shared<Tensor>();
        return std::function<void()>([=] { *out = mul(*x, 2.5); });
      });
      b.run("gelu" + suffix, "elementwise", 2 * n * es, 0, [&] {
        auto x = std::make_shared<Tensor>(randn({side, side}, t, dev));
        auto out = std::make_shared<Tensor>();
        return std::function<void()>([=] { *out = gelu(*x); });
      });
      b.run("exp" + suffix, "elementwise", 2 * n * es, 0, [&] {
        auto x = std::make_shared<Tensor>(randn({side, side}, t, dev));
        auto out = std::make_shared<Tensor>();
        return std::function<void()>([=] { *out = exp(*x); });
      });
    }
  }

  // ---- rows: softmax and layer_norm over the last dim ----
  for (int64_t rows : {4096, 16384}) {
    const int64_t cols = 4096;
    for (DType t : {DType::Float32, DType::BFloat16}) {
      const double n = static_cast<double>(rows) * cols, es = itemsize_of(t);
      const std::string suffix = std::string(" ") + short_name(t) + " " + dims(rows, cols);
      b.run("softmax" + suffix, "rows", 2 * n * es, 0, [&] {
        auto x = std::make_shared<Tensor>(randn({rows, cols}, t, dev));
        auto out = std::make_shared<Tensor>();
        return std::function<void()>([=] { *out = softmax(*x, -1); });
      });
      b.run("layer_norm" + suffix, "rows", 2 * n * es + 2.0 * cols * es, 0, [&] {
        auto x = std::make_shared<Tensor>(randn({rows, cols}, t, dev));
        auto w = std::make_shared<Tensor>(randn({cols}, t, dev));
        auto bias = std::make_shared<Tensor>(randn({cols}, t, dev));
        auto out = std::make_shared<Tensor>();
        return std::function<void()>([=] { *out = layer_norm(*x, {cols}, *w, *bias); });
      });
    }
  }

  // ---- reductions ----
  {
    const int64_t rows = 16384, cols = 4096;
    const double n = static_cast<double>(rows) * cols;
    b.run("sum dim-1 f32 " + dims(rows, cols), "reduce", 4 * (n + rows), 0, [&] {
      auto x = std::make_shared<Tensor>(randn({rows, cols}, DType::Float32, dev));
      auto out = std::make_shared<Tensor>();
      return std::function<void()>([=] { *out = sum(*x, {-1}); });
    });
    b.run("sum dim0 f32 " + dims(rows, cols), "reduce", 4 * (n + cols), 0, [&] {
      auto x = std::make_shared<Tensor>(randn({rows, cols}, DType::Float32, dev));
      auto out = std::make_shared<Tensor>();
      return std::function<void()>([=] { *out = sum(*x, {0}); });
    });
  }

  // ---- matmul (cuBLAS) ----
  struct Mm {
    const char* label;
    DType dtype;
    bool tf32;
  };
  for (int64_t s : {4096, 8192}) {
    for (const Mm& m : {Mm{"f32", DType::Float32, false}, Mm{"tf32", DType::Float32, true},
                        Mm{"bf16", DType::BFloat16, false}, Mm{"f16", DType::Float16, false}}) {
      const double flops = 2.0 * s * s * s;
      b.run(std::string("matmul ") + m.label + " " + std::to_string(s) + "^3", "matmul", 0, flops, [&] {
        cublas::set_allow_tf32(m.tf32);
        auto x = std::make_shared<Tensor>(randn({s, s}, m.dtype, dev));
        auto y = std::make_shared<Tensor>(randn({s, s}, m.dtype, dev));
        auto out = std::make_shared<Tensor>();
        return std::function<void()>([=] { *out = matmul(*x, *y); });
      });
      cublas::set_allow_tf32(false);
    }
  }

  // ---- launch-bound: a tiny add, the per-op floor ----
  b.run("add f32 256x256 (launch-bound)", "latency", 3.0 * 256 * 256 * 4, 0, [&] {
    auto x = std::make_shared<Tensor>(randn({256, 256}, DType::Float32, dev));
    auto y = std::make_shared<Tensor>(randn({256, 256}, DType::Float32, dev));
    auto out = std::make_shared<Tensor>();
    return std::function<void()>([=] { *out = add(*x, *y); });
  });

  if (o.list) return 0;
  b.print_table();
  return b.any_error() ? 1 : 0;
}
