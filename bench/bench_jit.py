#!/usr/bin/python3
"""kiln.jit overheads: one table, measured in one run.

    bench/run.sh --jit            (builds, sets the thread environment, runs this)

- Call overhead (Python): a cached jit function vs running its traced graph
  directly (TracedFunction.run) vs the same ops eagerly, on 4-element tensors
  so the kernels cost nearly nothing. Target: the jit call adds ≤ 5 µs over
  the graph.
- Call overhead (C++): the same through kiln::jit (bench/cpp/bench_jit.cpp).
  Target ≤ 1 µs.
- Trace time of the MLP training step (784-512-512-10, batch 256,
  cross-entropy, AdamW): the first call's tracing, without running the graph.
  Target < 50 ms.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_eager as be  # noqa: E402  (sets the thread environment first)

import datetime  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import kiln  # noqa: E402
import kiln.nn as nn  # noqa: E402
import kiln.nn.functional as F  # noqa: E402


def python_overhead(reps):
    a, b = kiln.randn(4), kiln.randn(4)

    def fn(x, y):
        return (x * y + x).exp() - y
    jitted = kiln.jit(fn, compile=False)  # jit − graph: the cost of the cache lookup alone
    jitted(a, b)
    graph = next(iter(jitted._entries.values())).traced
    inner = 2000

    def loop(f):
        def run():
            for _ in range(inner):
                f()
        return run
    return be.run_interleaved({"eager": loop(lambda: fn(a, b)), "graph": loop(lambda: graph.run([a, b])),
                               "jit": loop(lambda: jitted(a, b))}, reps=reps, inner=inner), graph.num_ops


def mlp_trace_ms(reps):
    rng = np.random.default_rng(0)
    x = kiln.from_numpy(rng.standard_normal((256, 784)).astype(np.float32))
    y = kiln.from_numpy(rng.integers(0, 10, 256))
    times, ops = [], None
    for _ in range(reps):
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        opt = kiln.optim.AdamW(model.parameters(), lr=1e-3)

        def step(xb, yb):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        jitted = kiln.jit(step)
        t0 = time.perf_counter()
        jitted._retrace(_signature(jitted, (x, y)), _structure(2), [x, y], (x, y), {})
        times.append(time.perf_counter() - t0)
        ops = next(iter(jitted._entries.values())).traced.num_ops
    return be.Stat(times), ops


def _structure(n):
    return sys.modules["kiln.jit"]._flat_structure(n)


def _signature(jitted, args):
    J = sys.modules["kiln.jit"]
    jitted._dynamic = {}
    return J._Signature(_structure(len(args)), list(args), {})


def main():
    quick = "--quick" in sys.argv
    kiln.set_num_threads(be.THREADS)
    t0 = datetime.datetime.now()
    py, nops = python_overhead(9 if quick else 25)
    cpp_path = os.path.join(be.REPO, os.environ.get("KILN_BUILD_DIR", "build"), "bench", "cpp", "kiln_bench_jit")
    cpp = json.loads(subprocess.run([cpp_path, "--samples", "5" if quick else "25"], capture_output=True, text=True,
                                    check=True).stdout)
    try:
        trace, trace_ops = mlp_trace_ms(3 if quick else 7)
        trace_cell = f"{trace.med * 1e3:.1f} ms ({trace.p25 * 1e3:.1f}–{trace.p75 * 1e3:.1f}), {trace_ops} ops"
        trace_ok = "PASS" if trace.med < 0.05 else "FAIL"
    except kiln.TraceError as e:
        trace_cell, trace_ok = "not traceable yet: " + str(e).splitlines()[0], "—"

    us = 1e6
    py_over = (py["jit"].med - py["graph"].med) * us
    cpp_over = (cpp["jit_ns"] - cpp["graph_ns"]) / 1e3
    lines = [f"# kiln.jit overheads — {t0:%Y-%m-%d %H:%M} on `{socket.gethostname()}`", "",
             f"- CPU: {be.cpu_model()}; kiln {kiln.__version__} (git {be.git_rev()}); Python 3 (`/usr/bin/python3`).",
             f"- Graph: `(a*b + a).exp() - b` on 4-element float32 tensors ({nops} ops).", "",
             "| Measure | eager | graph executor | jit call | jit − graph | Target | Result |",
             "|---|---|---|---|---|---|---|",
             f"| Python call [µs] | {be.fmt_time(py['eager'], 'us')} | {be.fmt_time(py['graph'], 'us')} | "
             f"{be.fmt_time(py['jit'], 'us')} | {py_over:.2f} | ≤ 5 µs | {'PASS' if py_over <= 5 else 'FAIL'} |",
             f"| C++ call [µs] | {cpp['eager_ns'] / 1e3:.3f} | {cpp['graph_ns'] / 1e3:.3f} | {cpp['jit_ns'] / 1e3:.3f} | "
             f"{cpp_over:.3f} | ≤ 1 µs | {'PASS' if cpp_over <= 1 else 'FAIL'} |",
             f"| Trace the MLP training step (784-512-512-10, batch 256, AdamW) | | | {trace_cell} | | < 50 ms | "
             f"{trace_ok} |", "",
             "Python cells: median (interquartile range) of repetitions of 2000 calls, the three run alternately. "
             "C++: medians of 25 samples of 20000 calls. The graph executor runs each recorded op on the eager "
             "kernels (codegen comes in the next issue), so 'graph executor' vs 'eager' is the executor's own cost "
             "per op and 'jit − graph' is the cost of the cache lookup and argument handling."]
    be.print_and_save("\n".join(lines) + "\n", t0, "jit")


if __name__ == "__main__":
    main()
