#!/usr/bin/python3
"""Eager-mode benchmark: kiln vs NumPy vs PyTorch (CPU), one table.

Run it through bench/run.sh (which builds kiln and the C++ dispatch bench and
sets the thread environment), or by hand:

    OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE KILN_NUM_THREADS=2 \
    PYTHONPATH=python /usr/bin/python3 bench/bench_eager.py [--cpp-bench PATH] [--quick]

Method (docs: DESIGN.md "Benchmarking facts"): every framework gets 2 threads;
each case is warmed up, then the frameworks run alternately (the order rotates
every repetition) and we report the median with the interquartile range.
Results are checked against NumPy once before timing. The table goes to
stdout and to bench/results/<date>-<hostname>.md.
"""
import os

THREAD_ENV = {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE",
              "KILN_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
# Must be in place before numpy/torch load OpenBLAS and OpenMP.
for _k, _v in THREAD_ENV.items():
    os.environ.setdefault(_k, _v)

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kiln  # noqa: E402

THREADS = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS = ("kiln", "numpy", "torch")
MB = 1 << 20


def print_and_save(text, when, kind=None):
    """Prints a result table and, unless --no-save, writes it to
    bench/results/<date>-<host>[-kind].md (via a temporary file)."""
    print(text)
    if "--no-save" in sys.argv:
        return
    suffix = f"-{kind}" if kind else ""
    path = os.path.join(REPO, "bench", "results", f"{when:%Y-%m-%d}-{socket.gethostname()}{suffix}.md")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    log(f"saved {os.path.relpath(path, REPO)}")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- statistics

def quantile(xs, q):
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class Stat:
    """Seconds per call: median, quartiles, extremes."""

    def __init__(self, samples):
        self.samples = list(samples)
        self.med = quantile(self.samples, 0.5)
        self.p25 = quantile(self.samples, 0.25)
        self.p75 = quantile(self.samples, 0.75)
        self.min = min(self.samples)
        self.max = max(self.samples)

    @classmethod
    def from_ns(cls, med, p25, p75, lo, hi):
        s = cls([med])
        s.med, s.p25, s.p75, s.min, s.max = (v * 1e-9 for v in (med, p25, p75, lo, hi))
        return s


# ------------------------------------------------------------------- timing

def run_interleaved(fns, reps, inner=1, warmup=3, settle=False):
    """fns: {framework: zero-arg callable}. Returns {framework: Stat} (seconds per call).

    With settle, each timed call directly follows an untimed call of the same
    callable: steady state, not the first call after another framework left
    the cores idle or busy (on the VM a core idle for ~10 ms runs the next
    few ms at up to half speed, which would charge each variant for the one
    before it).

    With inner > 1 each callable must itself loop `inner` times (so the loop
    is not another Python call per iteration) and the time is divided by it.
    The callables' results are dropped inside the timed region, so freeing the
    output is part of the cost (as in real eager code).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples = {name: [] for name in names}
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(reps):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn = fns[name]
                if settle:
                    fn()
                t0 = clock()
                fn()
                t1 = clock()
                samples[name].append((t1 - t0) / inner)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Stat(s) for name, s in samples.items()}


def minor_faults_per_call(fn, calls=4):
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


# ------------------------------------------------------------------ results

class Row:
    def __init__(self, name, stats, *, unit="ms", nbytes=None, flops=None, target=None,
                 note=None, kiln_from=None, bw_ref=False):
        self.name = name
        self.stats = stats            # {framework: Stat}; a missing framework prints n/a
        self.unit = unit              # "ms" or "us"
        self.nbytes = nbytes          # compulsory bytes read + written, for GB/s
        self.flops = flops
        self.target = target          # ("torch"|"numpy", max ratio) or None
        self.note = note              # text for a missing kiln cell
        self.kiln_from = kiln_from    # Stat used for kiln's ratios when kiln has no cell
        self.bw_ref = bw_ref


def fmt_time(stat, unit):
    scale = 1e3 if unit == "ms" else 1e6
    med, lo, hi = stat.med * scale, stat.p25 * scale, stat.p75 * scale

    def f(v):
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    return f"{f(med)} ({f(lo)}–{f(hi)})"


def ratio_cell(k, other):
    if k is None or other is None:
        return "—", None
    r = k.med / other.med
    lo, hi = k.p25 / other.p75, k.p75 / other.p25
    return f"{r:.2f}", (r, lo, hi)


def render(rows, copy_bw, meta, footer):
    head = ["Benchmark", "kiln eager", "NumPy", "PyTorch 1.13", "kiln/torch", "kiln/numpy",
            "kiln GB/s (% of copy BW)", "Target", "Result"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in rows:
        unit = "µs/op" if row.unit == "us" else "ms"
        cells = [f"{row.name} [{unit}]"]
        for fw in FRAMEWORKS:
            st = row.stats.get(fw)
            if st is not None:
                cells.append(fmt_time(st, row.unit))
            elif fw == "kiln" and row.note:
                cells.append(row.note)
            else:
                cells.append("—")
        k = row.stats.get("kiln") or row.kiln_from
        rt, rt_range = ratio_cell(k, row.stats.get("torch"))
        rn, rn_range = ratio_cell(k, row.stats.get("numpy"))
        cells += [rt, rn]
        if row.nbytes and k is not None:
            gbs = row.nbytes / k.med / 1e9
            cells.append(f"{gbs:.1f} ({100 * gbs / copy_bw:.0f}%)")
        elif row.flops and k is not None:
            cells.append(f"{row.flops / k.med / 1e9:.0f} GFLOP/s")
        else:
            cells.append("—")
        if row.target:
            ref, limit = row.target
            rng = rt_range if ref == "torch" else rn_range
            cells.append(f"≤ {limit}× {'PyTorch' if ref == 'torch' else 'NumPy'}")
            if rng is None:
                cells.append("n/a")
            else:
                r, lo, hi = rng
                verdict = "PASS" if r <= limit else "FAIL"
                if lo <= limit <= hi:
                    verdict += " (within noise)"
                cells.append(f"**{verdict}**" if verdict.startswith("FAIL") else verdict)
        else:
            cells += ["—", "—"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(meta + [""] + out + [""] + footer) + "\n"


# -------------------------------------------------------------------- setup

def git_rev():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_busy_seconds():
    """(CPU-seconds all processes were busy, CPU-seconds this process and its children used)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def kiln_copy(np_array):
    """A kiln tensor in kiln's own (64-byte aligned, caching) memory."""
    return kiln.from_numpy(np_array).clone()


def check(name, got, want, rtol=1e-4, atol=1e-5):
    got = got.numpy() if isinstance(got, kiln.Tensor) else (
        got.numpy() if isinstance(got, torch.Tensor) else got)
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.max(np.abs(got.astype(np.float64) - want))
        log(f"WARNING: {name}: result differs from NumPy (max abs err {err:.3g})")
        return False
    return True


def run_cpp_bench(path, quick):
    if not path:
        return None, "not built (pass --cpp-bench)"
    if not os.path.exists(path):
        return None, f"{path} not found"
    args = [path, "--samples", "9" if quick else "25", "--iters", "20000"]
    try:
        res = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
        d = json.loads(res.stdout.strip().splitlines()[-1])
        return Stat.from_ns(d["median_ns"], d["p25_ns"], d["p75_ns"], d["min_ns"], d["max_ns"]), None
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
        return None, f"failed: {e}"


# --------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpp-bench", help="path to the kiln_bench_dispatch binary")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test)")
    ap.add_argument("--out", help="where to write the markdown (default bench/results/<date>-<host>.md)")
    ap.add_argument("--no-save", action="store_true", help="print only")
    args = ap.parse_args()

    for k, v in THREAD_ENV.items():
        if os.environ.get(k) != v:
            log(f"WARNING: {k}={os.environ.get(k)} (the fair setting is {v})")
    torch.set_num_threads(THREADS)
    kiln.set_num_threads(THREADS)
    threads = {"kiln": kiln.get_num_threads(), "torch": torch.get_num_threads()}

    reps = 7 if args.quick else 41
    load_start = os.getloadavg()[0]
    t_start = time.time()
    busy_start, own_start = cpu_busy_seconds()

    rng = np.random.default_rng(0)
    n = 16 * MB  # 16M float32 = 64 MiB per tensor
    a_n, b_n, c_n = (rng.standard_normal(n, dtype=np.float32) for _ in range(3))
    a_k, b_k, c_k = (kiln_copy(x) for x in (a_n, b_n, c_n))
    a_t, b_t, c_t = (torch.from_numpy(x.copy()) for x in (a_n, b_n, c_n))
    out_n, out_t = np.empty_like(a_n), torch.empty_like(a_t)
    out_k = kiln_copy(np.zeros_like(a_n))
    tensor_bytes = n * 4

    rows = []
    faults = {}
    ok = True

    # ---- memory bandwidth: copy 16M float32 (read + write) ----
    log("copy (memory bandwidth) ...")
    copy_stats = run_interleaved({
        "kiln": lambda: out_k.copy_(a_k),
        "numpy": lambda: np.copyto(out_n, a_n),
        "torch": lambda: out_t.copy_(a_t),
    }, reps)
    ok &= check("copy", out_k, a_n)
    copy_bytes = 2 * tensor_bytes
    copy_gbs = {fw: copy_bytes / st.med / 1e9 for fw, st in copy_stats.items()}
    copy_bw = max(copy_gbs.values())
    rows.append(Row("copy 16M f32 (`dst.copy_(src)`, `np.copyto`)", copy_stats, nbytes=copy_bytes))

    # ---- add 16M ----
    log("add 16M ...")
    add_fns = {
        "kiln": lambda: a_k + b_k,
        "numpy": lambda: a_n + b_n,
        "torch": lambda: a_t + b_t,
    }
    ok &= check("add", a_k + b_k, a_n + b_n)
    add_stats = run_interleaved(add_fns, reps)
    faults["add 16M"] = {fw: minor_faults_per_call(fn) for fw, fn in add_fns.items()}
    rows.append(Row("add 16M f32 `a + b`", add_stats, nbytes=3 * tensor_bytes,
                    target=("torch", 1.5)))
    add_out_stats = run_interleaved({
        "numpy": lambda: np.add(a_n, b_n, out=out_n),
        "torch": lambda: torch.add(a_t, b_t, out=out_t),
    }, reps)
    rows.append(Row("add 16M f32, preallocated out= †", add_out_stats, nbytes=3 * tensor_bytes,
                    note="n/a †", kiln_from=add_stats["kiln"]))

    # ---- 4-op elementwise chain 16M: ((a * b + c).relu() * a) ----
    log("elementwise chain 16M ...")
    zero = np.float32(0)
    chain_fns = {
        "kiln": lambda: (a_k * b_k + c_k).relu() * a_k,
        "numpy": lambda: np.maximum(a_n * b_n + c_n, zero) * a_n,
        "torch": lambda: (a_t * b_t + c_t).relu() * a_t,
    }
    want = np.maximum(a_n * b_n + c_n, zero) * a_n
    ok &= check("chain", chain_fns["kiln"](), want)
    ok &= check("chain (torch)", chain_fns["torch"](), want)
    del want
    chain_stats = run_interleaved(chain_fns, reps)
    faults["chain 16M"] = {fw: minor_faults_per_call(fn) for fw, fn in chain_fns.items()}
    chain_bytes = 11 * tensor_bytes  # mul 3 + add 3 + relu 2 + mul 3 tensors moved, unfused
    rows.append(Row("chain 16M f32 `(a*b + c).relu() * a`", chain_stats, nbytes=chain_bytes,
                    target=("torch", 1.5)))

    def np_chain_out():
        np.multiply(a_n, b_n, out=out_n)
        np.add(out_n, c_n, out=out_n)
        np.maximum(out_n, zero, out=out_n)
        np.multiply(out_n, a_n, out=out_n)

    def torch_chain_out():
        torch.mul(a_t, b_t, out=out_t)
        out_t.add_(c_t)
        out_t.relu_()
        out_t.mul_(a_t)

    def kiln_chain_inplace():
        # No out= in kiln: the first op allocates (a cached block), the rest run in place.
        t = a_k * b_k
        t.add_(c_k)
        t.relu_()
        t.mul_(a_k)
        return t

    ok &= check("chain in place", kiln_chain_inplace(), np.maximum(a_n * b_n + c_n, zero) * a_n)
    chain_out_stats = run_interleaved({"kiln": kiln_chain_inplace, "numpy": np_chain_out,
                                       "torch": torch_chain_out}, reps)
    rows.append(Row("chain 16M f32, preallocated out= + in-place ‡", chain_out_stats,
                    nbytes=chain_bytes))
    del a_t, b_t, c_t, out_t

    # ---- row sums and softmax on 4096x4096 ----
    x_n = rng.standard_normal((4096, 4096), dtype=np.float32)
    x_k = kiln_copy(x_n)
    x_t = torch.from_numpy(x_n.copy())
    log("row sums 4096x4096 ...")
    ok &= check("sum(dim=1)", x_k.sum(dim=1), x_n.astype(np.float64).sum(axis=1), rtol=1e-4, atol=1e-3)
    sum_stats = run_interleaved({
        "kiln": lambda: x_k.sum(dim=1),
        "numpy": lambda: x_n.sum(axis=1),
        "torch": lambda: x_t.sum(dim=1),
    }, reps)
    rows.append(Row("row sums 4096² f32 `x.sum(dim=1)`", sum_stats, nbytes=x_n.nbytes,
                    target=("torch", 1.5)))

    log("softmax 4096x4096 ...")

    def np_softmax():
        e = np.exp(x_n - x_n.max(axis=1, keepdims=True))
        e /= e.sum(axis=1, keepdims=True)
        return e

    ok &= check("softmax", kiln.softmax(x_k, 1), np_softmax(), rtol=1e-4, atol=1e-7)
    softmax_stats = run_interleaved({
        "kiln": lambda: kiln.softmax(x_k, 1),
        "numpy": np_softmax,
        "torch": lambda: torch.softmax(x_t, dim=1),
    }, max(5, reps // 2))
    rows.append(Row("softmax rows 4096² f32", softmax_stats, nbytes=2 * x_n.nbytes,
                    target=("torch", 1.5)))
    del x_n, x_k, x_t

    # ---- matmul 1024^3 ----
    log("matmul 1024^3 ...")
    m_a = rng.standard_normal((1024, 1024), dtype=np.float32)
    m_b = rng.standard_normal((1024, 1024), dtype=np.float32)
    mk_a, mk_b = kiln_copy(m_a), kiln_copy(m_b)
    mt_a, mt_b = torch.from_numpy(m_a.copy()), torch.from_numpy(m_b.copy())
    ok &= check("matmul", mk_a @ mk_b, m_a.astype(np.float64) @ m_b, rtol=1e-3, atol=1e-2)
    mm_stats = run_interleaved({
        "kiln": lambda: mk_a @ mk_b,
        "numpy": lambda: m_a @ m_b,
        "torch": lambda: mt_a @ mt_b,
    }, reps, warmup=5)
    rows.append(Row("matmul 1024³ f32 `a @ b`", mm_stats, flops=2 * 1024 ** 3, target=("numpy", 1.2)))

    # ---- per-op dispatch overhead, 4-element tensors ----
    log("dispatch overhead ...")
    inner = 20000
    s_n = np.arange(4, dtype=np.float32)
    s_k, s_t = kiln_copy(s_n), torch.from_numpy(s_n.copy())

    def make_loop(x, y):
        def loop(x=x, y=y, r=range(inner)):
            for _ in r:
                x + y
        return loop

    disp_stats = run_interleaved({fw: make_loop(x, x) for fw, x in
                                  (("kiln", s_k), ("numpy", s_n), ("torch", s_t))},
                                 reps, inner=inner, warmup=1)
    rows.append(Row("Python dispatch: `a + b`, 4 elements", disp_stats, unit="us",
                    target=("torch", 1.5)))
    cpp_stat, cpp_err = run_cpp_bench(args.cpp_bench, args.quick)
    rows.append(Row("C++ dispatch: `kiln::add(a, b)`, 4 elements", {"kiln": cpp_stat} if cpp_stat else {},
                    unit="us", note=None if cpp_stat else f"n/a ({cpp_err})"))

    elapsed = time.time() - t_start
    load_end = os.getloadavg()[0]
    busy_end, own_end = cpu_busy_seconds()
    # Share of the machine's CPU time that other processes took during the run.
    others = max(0.0, (busy_end - busy_start) - (own_end - own_start)) / (elapsed * (os.cpu_count() or 1))

    # ---- report ----
    now = datetime.datetime.now()
    host = socket.gethostname()
    meta = [
        f"# kiln eager benchmark — {now:%Y-%m-%d %H:%M} on `{host}`",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; load average {load_start:.2f} at start, "
        f"{load_end:.2f} at end; run took {elapsed:.0f} s; other processes used {100 * others:.0f}% of "
        "the CPU time meanwhile"
        + (" — **the machine was busy: treat these numbers as noisy and rerun**." if others > 0.10 else "."),
        f"- kiln {kiln.__version__} (git {git_rev()}), NumPy {np.__version__}, PyTorch {torch.__version__} "
        f"(Debian, CPU), Python {platform.python_version()} (`{sys.executable}`).",
        f"- Threads: kiln {threads['kiln']}, torch {threads['torch']} (`torch.set_num_threads(2)`), "
        f"OpenBLAS 2; env "
        + " ".join(f"{k}={os.environ.get(k)}" for k in THREAD_ENV) + ".",
        f"- Memory bandwidth (copy 16M float32, bytes read + written, same run): kiln "
        f"{copy_gbs['kiln']:.1f} GB/s, NumPy (1 thread) {copy_gbs['numpy']:.1f} GB/s, PyTorch "
        f"{copy_gbs['torch']:.1f} GB/s; the fastest, {copy_bw:.1f} GB/s, is the \"copy BW\" below.",
    ]
    fl = faults
    footer = [
        f"Cells: median (interquartile range) of {reps} repetitions ({max(5, reps // 2)} for softmax, "
        f"{inner} calls per repetition for Python dispatch); frameworks run alternately, order "
        "rotating each repetition, after a warm-up. Ratios are of medians; a result is marked "
        "\"within noise\" when the target lies between the ratios of the quartiles. "
        + ("All results were checked against NumPy." if ok else
           "**Some results differed from NumPy: see the warnings on stderr.**"),
        "",
        "- **Allocation.** PyTorch 1.13 CPU has no caching allocator: each 64 MiB result is a fresh "
        "mmap from glibc that page-faults on first touch and is returned to the OS on free. kiln "
        "reuses freed blocks (size-class cache). Minor page faults per call — add 16M: "
        + ", ".join(f"{fw} {fl['add 16M'][fw]:.0f}" for fw in FRAMEWORKS)
        + "; chain 16M: " + ", ".join(f"{fw} {fl['chain 16M'][fw]:.0f}" for fw in FRAMEWORKS) + ".",
        "- **† Preallocated output** (like-for-like kernels, no page faults anywhere): NumPy and "
        "PyTorch write into a preallocated tensor with `out=`. kiln has no `out=` yet, so its cell "
        "is n/a and the ratios in that row use kiln's ordinary allocating `a + b` from the row above "
        "(its block comes from the cache, so it pays no page faults either).",
        "- **‡ In-place chain**: NumPy `multiply/add/maximum/multiply(..., out=t)`; PyTorch "
        "`torch.mul(a, b, out=t)` then `t.add_(c)`, `t.relu_()`, `t.mul_(a)`; kiln (no `out=`) "
        "`t = a * b` (a cached block) then the same three in-place methods.",
        "- **GB/s** counts the bytes each op must read and write unfused (add: 3 × 64 MiB; chain: "
        "mul 3 + add 3 + relu 2 + mul 3 = 11 × 64 MiB; row sums: the 64 MiB input; softmax: input + "
        "output, a lower bound), divided by kiln's median time; % is of the copy BW above. "
        "Write-allocate traffic is not counted (nor is it for copy), so an op that reads more than it "
        "writes (add) can exceed 100%.",
        "- **Chain** `((a*b + c).relu() * a)`: an unfused bias-add + ReLU + gating pattern, four eager "
        "ops, three temporaries; NumPy spells ReLU `np.maximum(x, 0)`.",
        "- **NumPy** ufuncs and reductions are single-threaded (only its matmul uses OpenBLAS's 2 "
        "threads); its softmax is `e = exp(x - x.max(1)); e /= e.sum(1)`. PyTorch's ATen kernels use "
        "AVX2 on this CPU by default, kiln's are built for x86-64-v3 (AVX2 + FMA).",
        "- **Dispatch**: time per `a + b` on 4-element float32 tensors in a Python `for` loop (loop "
        "overhead, ~0.02 µs, included for every framework); PyTorch with autograd on (default), no "
        "tensor requires grad. The C++ row is `kiln::add(a, b)` in a C++ loop "
        "(`bench/cpp/bench_dispatch.cpp`, result allocation included); no libtorch C++ to compare "
        "with (Debian's `libtorch-dev` is not installed)."
        + (f" kiln's Python binding adds {(disp_stats['kiln'].med - cpp_stat.med) * 1e6:.2f} µs per op "
           "over the C++ call." if cpp_stat else ""),
        "- Targets (from the issue): large elementwise ops and reductions ≤ 1.5× PyTorch eager; "
        "1024³ matmul ≤ 1.2× NumPy; Python per-op overhead ≤ 1.5× PyTorch's. Reported, not asserted.",
    ]
    text = render(rows, copy_bw, meta, footer)
    print(text, end="")
    if not args.no_save:
        path = args.out or os.path.join(REPO, "bench", "results", f"{now:%Y-%m-%d}-{host}.md")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        log(f"saved {os.path.relpath(path, os.getcwd())}")


if __name__ == "__main__":
    main()
