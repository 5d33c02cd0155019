// Call overhead of a cached kiln::jit function in C++: the same 4-op graph
// (a*b + a).exp() - b on 4-element tensors, run three ways in alternation:
// eager calls, TracedFunction::run (the graph executor alone) and the jit
// call (signature lookup + the executor). Prints one JSON object with
// nanoseconds per call (medians); bench/bench_jit.py puts it in its table.
//
//   kiln_bench_jit [--samples N] [--iters N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kiln.h"

namespace {
void* volatile g_sink;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class F>
double time_ns(F&& f, int iters) {
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) g_sink = f().impl_ptr();
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / iters;
}
}  // namespace

int main(int argc, char** argv) {
  int samples = 25, iters = 20000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--samples") == 0) samples = std::max(1, std::atoi(argv[i + 1]));
    else if (std::strcmp(argv[i], "--iters") == 0) iters = std::max(1, std::atoi(argv[i + 1]));
  }
  using namespace kiln;
  auto fn = [](const Tensor& a, const Tensor& b) { return (a * b + a).exp() - b; };
  auto jitted = jit(fn);
  Tensor a = randn({4}), b = randn({4});
  jitted(a, b);
  Tracer tracer("graph");
  Tensor sa = tracer.argument(type_of(a)), sb = tracer.argument(type_of(b));
  Tensor out;
  {
    TraceScope scope(&tracer);
    out = fn(sa, sb);
  }
  auto graph = tracer.finish({out});
  std::vector<double> eager, graph_run, jit_call;
  for (int s = 0; s < samples; ++s) {
    eager.push_back(time_ns([&] { return fn(a, b); }, iters));
    graph_run.push_back(time_ns([&] { return graph->run({a, b})[0]; }, iters));
    jit_call.push_back(time_ns([&] { return jitted(a, b); }, iters));
  }
  std::printf("{\"eager_ns\": %.1f, \"graph_ns\": %.1f, \"jit_ns\": %.1f, \"ops\": %zu}\n", median(eager),
              median(graph_run), median(jit_call), graph->graph.nodes.size());
  return 0;
}
