#!/usr/bin/env python3
"""PyTorch's side of the GPU benchmark (bench/cpp/bench_cuda.cpp is kiln's).

The same workloads on cuda:0, timed the same way: `--warmup` calls, then
`--reps` repetitions of `inner` back-to-back calls between two
torch.cuda.Events (inner chosen so a repetition takes about `--target-ms`);
time per call = median repetition / inner. Prints the same lines as
kiln_bench_cuda: a {"meta": ...} JSON line, one JSON line per workload (as
soon as it is measured), then a human-readable table. bench/merge_cuda.py
puts the two outputs side by side; scripts/gpu_check.sh runs everything.

    python3 bench/bench_cuda_torch.py [--warmup N] [--reps N] [--target-ms MS] [--only SUBSTRING]

Without torch or without a CUDA device it prints why ("no CUDA GPU: ...")
and exits 0.
"""
import argparse
import json
import math
import statistics
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--target-ms", type=float, default=4.0)
    p.add_argument("--only", default="", help="run only workloads whose name contains this")
    return p.parse_args()


def emit(obj):
    print(json.dumps(obj), flush=True)


def set_tf32(torch, on):
    """TF32 for float32 matmuls, through whichever API this torch has (the
    newer fp32_precision one when present: torch refuses a mix of the two)."""
    m = torch.backends.cuda.matmul
    try:  # torch 1.x raises AssertionError for an unknown attribute, 2.x AttributeError
        m.fp32_precision  # noqa: B018
        has_new_api = True
    except Exception:
        has_new_api = False
    if has_new_api:
        m.fp32_precision = "tf32" if on else "ieee"
        return "fp32_precision"
    m.allow_tf32 = on
    return "allow_tf32"


class Bench:
    def __init__(self, torch, args):
        self.torch = torch
        self.args = args
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)
        self.copy_gbps = 0.0
        self.results = []

    def run(self, name, group, nbytes, flops, setup):
        """Times the call that setup() returns (setup makes its inputs)."""
        a = self.args
        if a.only and a.only not in name:
            return
        torch = self.torch
        r = {"workload": name, "group": group}
        try:
            call = setup()
            for _ in range(a.warmup):
                call()
            torch.cuda.synchronize()
            self.start.record()
            call()
            self.end.record()
            self.end.synchronize()
            one = max(1e-4, self.start.elapsed_time(self.end))
            inner = int(min(1000.0, max(1.0, math.ceil(a.target_ms / one))))
            per_call = []
            for _ in range(a.reps):
                self.start.record()
                for _ in range(inner):
                    call()
                self.end.record()
                self.end.synchronize()
                per_call.append(self.start.elapsed_time(self.end) / inner)
            ms = statistics.median(per_call)
            gbps = nbytes / (ms * 1e-3) / 1e9 if nbytes else 0.0
            if group == "copy":
                self.copy_gbps = gbps
            r.update(ms=round(ms, 6), min_ms=round(min(per_call), 6), max_ms=round(max(per_call), 6),
                     inner=inner, reps=a.reps, bytes=nbytes, flops=flops, gbps=round(gbps, 2),
                     pct_copy=round(100.0 * gbps / self.copy_gbps, 2) if nbytes and self.copy_gbps else 0.0,
                     tflops=round(flops / (ms * 1e-3) / 1e12, 3) if flops else 0.0)
            del call
        except Exception as e:  # keep going: one failing workload should not hide the others
            r["error"] = f"{type(e).__name__}: {e}".replace("\n", " ")
            try:
                torch.cuda.synchronize()
            except Exception:
                pass
        emit(r)
        self.results.append(r)

    def print_table(self):
        print(f"\n{'workload':<32} {'ms/call':>10} {'inner':>6} {'GB/s':>10} {'% copy':>8} {'TFLOP/s':>10}")
        for r in self.results:
            if "error" in r:
                print(f"{r['workload']:<32} ERROR: {r['error']}")
                continue
            bw = f"{r['gbps']:10.1f} {r['pct_copy']:7.1f}%" if r["bytes"] else f"{'-':>10} {'-':>8}"
            tf = f"{r['tflops']:10.1f}" if r["flops"] else f"{'-':>10}"
            print(f"{r['workload']:<32} {r['ms']:10.4f} {r['inner']:6d} {bw} {tf}")
        sys.stdout.flush()


def main():
    args = parse_args()
    try:
        import torch
    except Exception as e:
        print(f"no CUDA GPU: PyTorch could not be imported ({type(e).__name__}: {e})")
        return 0
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        print(f"no CUDA GPU: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device "
              f"(torch.cuda.is_available() is False)")
        return 0

    dev = torch.device("cuda", 0)
    p = torch.cuda.get_device_properties(0)
    tf32_api = set_tf32(torch, False)
    emit({"meta": {"framework": "torch", "torch": torch.__version__, "cuda": torch.version.cuda,
                   "device": p.name, "sm": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                   "memory_gib": round(p.total_memory / 2**30, 1), "tf32_api": tf32_api,
                   "fp16_reduced_precision_reduction":
                       bool(torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction),
                   "warmup": args.warmup, "reps": args.reps, "target_ms": args.target_ms}})

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    b = Bench(torch, args)
    F = torch.nn.functional
    short = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, dtype=dtype, device=dev)

    def holder_call(fn):
        box = [None]

        def call():
            box[0] = fn()
        return call

    # ---- the reference: device-to-device copy of 1 GiB (read + write) ----
    n = 1 << 30

    def copy_setup():
        src = torch.ones(n, dtype=torch.uint8, device=dev)
        dst = torch.empty(n, dtype=torch.uint8, device=dev)
        return lambda: dst.copy_(src)
    b.run("copy u8 1GiB", "copy", 2 * n, 0, copy_setup)

    # ---- elementwise ----
    for side in (4096, 16384):
        for dt in (torch.float32, torch.bfloat16):
            numel, es = side * side, torch.empty((), dtype=dt).element_size()
            suffix = f" {short[dt]} {side}x{side}"

            def add_setup(side=side, dt=dt):
                x, y = randn(side, side, dtype=dt), randn(side, side, dtype=dt)
                return holder_call(lambda: torch.add(x, y))
            b.run("add" + suffix, "elementwise", 3 * numel * es, 0, add_setup)
            if dt != torch.float32:
                continue
            for name, fn in (("mul_scalar", lambda x: torch.mul(x, 2.5)), ("gelu", F.gelu), ("exp", torch.exp)):
                def setup(side=side, dt=dt, fn=fn):
                    x = randn(side, side, dtype=dt)
                    return holder_call(lambda: fn(x))
                b.run(name + suffix, "elementwise", 2 * numel * es, 0, setup)

    # ---- rows: softmax and layer_norm over the last dim ----
    cols = 4096
    for rows in (4096, 16384):
        for dt in (torch.float32, torch.bfloat16):
            numel, es = rows * cols, torch.empty((), dtype=dt).element_size()
            suffix = f" {short[dt]} {rows}x{cols}"

            def softmax_setup(rows=rows, dt=dt):
                x = randn(rows, cols, dtype=dt)
                return holder_call(lambda: torch.softmax(x, -1))
            b.run("softmax" + suffix, "rows", 2 * numel * es, 0, softmax_setup)

            def ln_setup(rows=rows, dt=dt):
                x, w, bias = randn(rows, cols, dtype=dt), randn(cols, dtype=dt), randn(cols, dtype=dt)
                return holder_call(lambda: F.layer_norm(x, (cols,), w, bias))
            b.run("layer_norm" + suffix, "rows", 2 * numel * es + 2 * cols * es, 0, ln_setup)

    # ---- reductions ----
    rows, cols = 16384, 4096
    for name, dim, out_n in (("sum dim-1", -1, rows), ("sum dim0", 0, cols)):
        def sum_setup(dim=dim):
            x = randn(rows, cols)
            return holder_call(lambda: torch.sum(x, dim))
        b.run(f"{name} f32 {rows}x{cols}", "reduce", 4 * (rows * cols + out_n), 0, sum_setup)

    # ---- matmul (cuBLAS) ----
    for s in (4096, 8192):
        for label, dt, tf32 in (("f32", torch.float32, False), ("tf32", torch.float32, True),
                                ("bf16", torch.bfloat16, False), ("f16", torch.float16, False)):
            def mm_setup(s=s, dt=dt, tf32=tf32):
                set_tf32(torch, tf32)
                x, y = randn(s, s, dtype=dt), randn(s, s, dtype=dt)
                return holder_call(lambda: torch.matmul(x, y))
            b.run(f"matmul {label} {s}^3", "matmul", 0, 2 * s * s * s, mm_setup)
            set_tf32(torch, False)

    # ---- launch-bound: a tiny add, the per-op floor ----
    def tiny_setup():
        x, y = randn(256, 256), randn(256, 256)
        return holder_call(lambda: torch.add(x, y))
    b.run("add f32 256x256 (launch-bound)", "latency", 3 * 256 * 256 * 4, 0, tiny_setup)

    b.print_table()
    return 1 if any("error" in r for r in b.results) else 0


if __name__ == "__main__":
    sys.exit(main())
