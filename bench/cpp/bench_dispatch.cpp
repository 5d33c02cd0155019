// Per-op dispatch overhead of the C++ eager API: kiln::add on two 4-element
// float32 tensors in a tight loop (allocation of the result included, as in
// any eager call). Prints one JSON object with nanoseconds per op; the Python
// driver (bench/bench_eager.py) puts it in the table next to the Python
// numbers.
//
//   kiln_bench_dispatch [--samples N] [--iters N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kiln.h"

namespace {

// Keeps the compiler from dropping the loop body.
void* volatile g_sink;

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double pos = p * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace

int main(int argc, char** argv) {
  int samples = 25;
  int iters = 20000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--samples") == 0) samples = std::max(1, std::atoi(argv[i + 1]));
    else if (std::strcmp(argv[i], "--iters") == 0) iters = std::max(1, std::atoi(argv[i + 1]));
  }

  kiln::manual_seed(0);
  const kiln::Tensor a = kiln::rand({4});
  const kiln::Tensor b = kiln::rand({4});

  using clock = std::chrono::steady_clock;
  for (int i = 0; i < iters; ++i) {  // warm-up: caches, allocator bins
    kiln::Tensor c = kiln::add(a, b);
    g_sink = c.data_ptr();
  }
  std::vector<double> ns_per_op;
  ns_per_op.reserve(samples);
  for (int s = 0; s < samples; ++s) {
    const auto t0 = clock::now();
    for (int i = 0; i < iters; ++i) {
      kiln::Tensor c = kiln::add(a, b);
      g_sink = c.data_ptr();
    }
    const auto t1 = clock::now();
    ns_per_op.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / iters);
  }
  std::printf(
      "{\"op\": \"kiln::add 4-element float32\", \"iters\": %d, \"samples\": %d, "
      "\"threads\": %d, \"median_ns\": %.2f, \"p25_ns\": %.2f, \"p75_ns\": %.2f, "
      "\"min_ns\": %.2f, \"max_ns\": %.2f}\n",
      iters, samples, kiln::num_threads(), percentile(ns_per_op, 0.5),
      percentile(ns_per_op, 0.25), percentile(ns_per_op, 0.75), percentile(ns_per_op, 0.0),
      percentile(ns_per_op, 1.0));
  return 0;
}
