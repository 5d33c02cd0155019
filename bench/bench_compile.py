#!/usr/bin/python3
"""kiln.jit(compile=True) vs kiln eager vs PyTorch eager vs TorchScript, one table.

    bench/run.sh --compile [--quick] [--no-save]    (builds, sets the thread environment, runs this)

Columns: kiln eager; kiln jit (warm, compile=True) and whether that variant ran compiled
code or fell back to the graph executor (from the jit cache); PyTorch 1.13 eager;
torch.jit.trace + torch.jit.freeze; for memory-bound rows the time the memory bandwidth
allows (bytes moved / bandwidth, bandwidth measured by a NumPy copy/triad in this same run);
ratios kiln jit / kiln eager, kiln jit / torch.jit and the share of the bandwidth limit
kiln jit reaches.

Method (DESIGN.md "Benchmarking facts"): 2 threads for everyone (OpenBLAS, OpenMP, kiln,
torch), OMP_WAIT_POLICY=PASSIVE; per row the four variants run alternately with the order
rotating every repetition, after a warm-up; each timed call directly follows an untimed call of
the same variant (steady state, as the bandwidth reference is measured: see run_interleaved);
cells are medians with the interquartile range.
Before timing, every kiln jit result is asserted to match kiln eager (allclose) and kiln eager
is checked against PyTorch (same weights and inputs).

Cold compile and disk-cache load are measured in child processes (this file with
--child WORKLOAD), so nothing cached in this process can make them look warm: the first
child gets a fresh empty KILN_CACHE_DIR; if it leaves files there, a second child with the
same directory measures loading from the disk cache.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_eager as be  # noqa: E402  (sets the thread environment before numpy/torch load)

import contextlib  # noqa: E402
import datetime  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kiln  # noqa: E402
import kiln.nn as knn  # noqa: E402
import kiln.nn.functional as KF  # noqa: E402
import bench_train as bt  # noqa: E402  (the MLP definition and weight copying)

TF = torch.nn.functional
GB = 1e9


# ------------------------------------------------------------ kiln jit status

def jit_status(f):
    """(how, note) for the variant(s) a jit function has run; how is "compiled" (every op in
    compiled kernels), "partly compiled" (kernels, with some ops left to the eager kernels between
    them), "graph executor" (not compiled) or "?".

    Uses f.stats() where jit.py has it, else the jit cache's per-variant note (in which
    "compiled" meant the whole graph), else cache_report's text: this keeps working as jit.py
    evolves."""
    if hasattr(f, "stats"):
        hows, notes = [], []
        for st in f.stats():
            eager = st.get("eager_ops_per_call") or 0
            if not st["compiled"]:
                hows.append("graph executor")
            elif st.get("kernels_per_call") == 0:  # compiled, but nothing lowered
                hows.append("eager kernels only")
            elif eager:
                hows.append("partly compiled")
            else:
                hows.append("compiled")
            note = st.get("note") or ""
            if st["compiled"] and eager:
                note += "; on the eager kernels: " + summarize_ops(st.get("eager_ops") or [])
            notes.append(note)
    else:
        try:
            notes = [e.compile_note or "" for e in f._entries.values()]
        except AttributeError:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):  # cache_report also prints
                text = f.cache_report()
            notes = (text or buf.getvalue()).splitlines()[1:]
        hows = ["compiled" if "compiled in" in n and "not compiled" not in n else "graph executor" for n in notes]
    if not hows:
        return "?", "no variant"
    worst = min(hows, key=["graph executor", "eager kernels only", "partly compiled", "compiled"].index)
    return worst, notes[hows.index(worst)]


def summarize_ops(ops):
    """['kiln.sum at f.py:3: why', 'kiln.sum at f.py:9: why', ...] -> 'kiln.sum ×2 (why), ...'."""
    counts, why = {}, {}
    for op in ops:
        name = op.split(" ")[0].rstrip(":")
        counts[name] = counts.get(name, 0) + 1
        why.setdefault(name, re.sub(r"^\S+( at \S+:\d+)?:\s*", "", op))
    reasons = set(why.values())
    tail = f" (all: {reasons.pop()})" if len(reasons) == 1 else ""
    return ", ".join(f"{n}" + (f" ×{c}" if c > 1 else "") + ("" if tail else f" ({why[n]})")
                     for n, c in counts.items()) + tail


def kernels_cell(f):
    """'3 kernels + 2 eager ops' from f.stats(), or '' where jit.py does not report it."""
    if not hasattr(f, "stats"):
        return ""
    st = f.stats()
    if not st or not st[0]["compiled"]:
        return ""
    k, e = st[0].get("kernels_per_call"), st[0].get("eager_ops_per_call") or 0
    if k == 0:  # compiled, but nothing in it lowered: the eager kernels run it all
        return " (" + summarize_ops(st[0].get("eager_ops") or []).split(" (all:")[0] + ")"
    return f" ({k} kernel{'s' if k != 1 else ''}" + (f" + {e} eager op{'s' if e != 1 else ''})" if e else ")")


def short_reason(note):
    """'step: not compiled: it captures 8 tensors (not compiled yet)' -> 'it captures 8 tensors'."""
    r = note.split("not compiled:")[-1].strip()
    r = re.sub(r" at \S+:\d+", "", r)          # drop the file:line, the footer has the full note
    r = re.sub(r"\s*\(not compiled yet\)", "", r)
    return r[:60] + ("…" if len(r) > 60 else "")


# --------------------------------------------------------------- bandwidth

def bandwidth(reps, n=1 << 24):
    """STREAM-like copy and triad with NumPy on float32 arrays of n elements (64 MiB each at 16M,
    far beyond any cache), GB/s counting bytes read + written. NumPy runs one thread; the
    two-thread variants split the arrays in halves over two Python threads (the kernels release
    the GIL), matching the 2 threads the frameworks get. Triad a = b + s*c takes two NumPy passes
    (a = s*c; a += b), i.e. 5 array transfers, and is counted as such."""
    a, b, c = np.empty(n, np.float32), np.ones(n, np.float32), np.full(n, 2.0, np.float32)
    a.fill(0)  # fault the pages in before timing
    halves = [slice(0, n // 2), slice(n // 2, n)]
    pool = ThreadPoolExecutor(2)

    def copy(s=slice(None)):
        np.copyto(a[s], b[s])

    def triad(s=slice(None)):
        np.multiply(c[s], np.float32(3.0), out=a[s])
        np.add(a[s], b[s], out=a[s])

    def two(fn):
        return lambda: list(pool.map(fn, halves))
    stats = be.run_interleaved({"copy 1T": copy, "copy 2T": two(copy), "triad 1T": triad, "triad 2T": two(triad)},
                               reps=reps, warmup=2, settle=True)
    pool.shutdown()
    moved = {"copy 1T": 2 * 4 * n, "copy 2T": 2 * 4 * n, "triad 1T": 5 * 4 * n, "triad 2T": 5 * 4 * n}
    return {k: moved[k] / s.med / GB for k, s in stats.items()}


# ---------------------------------------------------------------- TorchScript

class _Wrap(torch.nn.Module):
    """torch.jit.freeze needs a module: wraps a plain function (its tensors are inputs)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


FUSION_KINDS = ("prim::TensorExprGroup", "prim::FusionGroup", "prim::CudaFusionGroup", "prim::StaticSubgraph")


def torchscript(module, args, freeze=True):
    """torch.jit.trace (+ freeze, which needs eval mode and no training) and a warm-up, so the
    profiling executor has specialized the graph; returns (callable, fuser groups found in the
    graph that actually ran)."""
    with torch.no_grad():
        traced = torch.jit.trace(module, args, check_trace=False)
    if freeze:
        traced = torch.jit.freeze(traced.eval())
    for _ in range(4):  # the profiling executor optimizes after a couple of profiled runs
        traced(*args)
    graph = str(torch.jit.last_executed_optimized_graph())
    found = sorted({k for k in FUSION_KINDS if k in graph})
    return traced, found


def torch_fuser_state():
    """What TorchScript's CPU fusion is set to in this build (1.13 has no getter for the strategy,
    but the setter returns the previous one: set it and put it back)."""
    C = torch._C
    strategy = C._jit_set_fusion_strategy([("STATIC", 2), ("DYNAMIC", 10)])
    C._jit_set_fusion_strategy(strategy)
    return {
        "profiling executor": C._get_graph_executor_optimize(),
        "NNC (TensorExpr) fuser enabled": C._jit_texpr_fuser_enabled(),
        "NNC may fuse on CPU": C._jit_can_fuse_on_cpu(),
        "NNC built with LLVM": C._llvm_enabled() if hasattr(C, "_llvm_enabled") else "unknown",
        "legacy fuser may fuse on CPU": C._jit_can_fuse_on_cpu_legacy(),
        "fusion strategy": strategy,
    }


# ---------------------------------------------------------------- workloads

def allclose_or_die(name, got, want, rtol, atol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        err = np.nanmax(np.abs(got - want))
        raise AssertionError(f"{name}: kiln jit differs from kiln eager (max abs err {err:.3g}, "
                             f"rtol {rtol}, atol {atol})")


def k2n(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t.numpy()


class Case:
    """One row: the four callables (zero-argument, results dropped), its bytes if memory-bound."""

    def __init__(self, name, fns, jitted, nbytes=None, note=None):
        self.name, self.fns, self.jitted, self.nbytes, self.note = name, fns, jitted, nbytes, note


def pointwise_case(name, kfn, tfn, kargs, targs, nbytes, tol):
    """A function of tensors only (no captured state): gelu, softmax, layer_norm, the op chain."""
    jitted = kiln.jit(kfn, compile=True)
    want = kfn(*kargs)
    allclose_or_die(name, jitted(*kargs).numpy(), want.numpy(), *tol)
    allclose_or_die(name + " (2nd call)", jitted(*kargs).numpy(), want.numpy(), *tol)
    be.check(f"{name}: kiln eager vs torch", want, tfn(*targs).numpy(), rtol=1e-4, atol=1e-4)
    ts, fused = torchscript(_Wrap(tfn), targs)
    fns = {"kiln eager": lambda: kfn(*kargs), "kiln jit": lambda: jitted(*kargs),
           "torch eager": lambda: tfn(*targs), "torch.jit": lambda: ts(*targs)}
    return Case(name, fns, jitted, nbytes, {"torch fusion groups": fused})


def gelu_case():
    rng = np.random.default_rng(0)
    n = 4096
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((n, n), (n,), (n,)))
    nbytes = 2 * x.nbytes + w.nbytes + b.nbytes  # x read, out written, w and b read once
    return pointwise_case("gelu(x·w + b), 4096×4096 f32", lambda x, w, b: KF.gelu(x * w + b),
                          lambda x, w, b: TF.gelu(x * w + b), [kiln.from_numpy(v) for v in (x, w, b)],
                          [torch.from_numpy(v) for v in (x, w, b)], nbytes, (1e-4, 1e-5))


def softmax_case():
    x = np.random.default_rng(1).standard_normal((4096, 4096)).astype(np.float32)
    return pointwise_case("softmax(dim=-1), 4096×4096 f32", lambda x: KF.softmax(x, dim=-1),
                          lambda x: TF.softmax(x, dim=-1), [kiln.from_numpy(x)], [torch.from_numpy(x)],
                          2 * x.nbytes, (1e-4, 1e-6))


def layer_norm_case():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8192, 1024)).astype(np.float32)
    w, b = rng.standard_normal(1024).astype(np.float32), rng.standard_normal(1024).astype(np.float32)
    return pointwise_case("layer_norm(1024), 8192×1024 f32", lambda x, w, b: KF.layer_norm(x, (1024,), w, b),
                          lambda x, w, b: TF.layer_norm(x, (1024,), w, b), [kiln.from_numpy(v) for v in (x, w, b)],
                          [torch.from_numpy(v) for v in (x, w, b)], 2 * x.nbytes + w.nbytes + b.nbytes,
                          (1e-4, 1e-4))


def chain_ops(lib):
    """100 elementwise ops on a tensor, cycling through four that keep values bounded."""
    tanh = lib.tanh

    def chain(x):
        for _ in range(25):
            x = tanh(-(x * 0.9 + 0.1))
        return x
    return chain


def chain_case():
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    return pointwise_case("chain of 100 elementwise ops, 1000 f32", chain_ops(kiln), chain_ops(torch),
                          [kiln.from_numpy(x)], [torch.from_numpy(x)], None, (1e-4, 1e-5))


def mlp_forward_case():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((256, 784)).astype(np.float32)
    torch.manual_seed(0)
    tmodel, kmodel = bt.mlp(torch), bt.mlp(kiln)
    bt.copy_weights(kmodel, tmodel)
    kx, tx = kiln.from_numpy(x), torch.from_numpy(x)
    jitted = kiln.jit(lambda v: kmodel(v), compile=True)
    want = kmodel(kx)
    allclose_or_die("mlp forward", jitted(kx).numpy(), want.numpy(), 1e-4, 1e-5)
    be.check("mlp forward: kiln vs torch", want, k2n(tmodel(tx)), rtol=1e-4, atol=1e-4)
    ts, fused = torchscript(tmodel.eval(), (tx,))
    fns = {"kiln eager": lambda: kmodel(kx), "kiln jit": lambda: jitted(kx),
           "torch eager": lambda: tmodel(tx), "torch.jit": lambda: ts(tx)}
    return Case("MLP 784-512-512-10 forward, batch 256", fns, jitted, None, {"torch fusion groups": fused})


def sgd_step(lib, model, lr=0.01):
    F = KF if lib is kiln else TF
    opt = lib.optim.SGD(model.parameters(), lr=lr)

    def step(xb, yb):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return step


def mlp_train_case():
    """The training step traced whole by kiln.jit (forward, loss, backward, SGD update; the model
    and optimizer are captured), as bench_jit.py jits it. TorchScript cannot trace backward and
    the optimizer (and freeze drops gradients), so its column runs the same eager step around
    a torch.jit.trace'd (not frozen) model: the usual way to use TorchScript for training."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((256, 784)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    kx, ky, tx, ty = kiln.from_numpy(x), kiln.from_numpy(y), torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(0)
    tmodel = bt.mlp(torch)
    k_eager, k_jit = bt.mlp(kiln), bt.mlp(kiln)
    bt.copy_weights(k_eager, tmodel)
    bt.copy_weights(k_jit, tmodel)
    eager_step = sgd_step(kiln, k_eager)
    jitted = kiln.jit(sgd_step(kiln, k_jit), compile=True)
    # Same weights, same batch: losses and updated weights agree step for step.
    losses = []
    for i in range(2):
        losses.append(eager_step(kx, ky).item())
        allclose_or_die(f"mlp train step {i} loss", jitted(kx, ky).item(), losses[-1], 1e-4, 1e-5)
    for (name, a), b in zip(k_jit.state_dict().items(), k_eager.state_dict().values()):
        allclose_or_die(f"mlp train: {name} after 2 steps", a.numpy(), b.numpy(), 1e-4, 1e-5)
    t_step = sgd_step(torch, tmodel)
    tl = t_step(tx, ty).item()
    be.check("mlp train: first loss kiln vs torch", np.array(losses[0]), np.array(tl), rtol=1e-4, atol=1e-5)
    tmodel2 = bt.mlp(torch)
    tmodel2.load_state_dict(tmodel.state_dict())
    traced, fused = torchscript(tmodel2, (tx,), freeze=False)
    ts_step = sgd_step(torch, traced)
    ts_step(tx, ty)
    fns = {"kiln eager": lambda: eager_step(kx, ky), "kiln jit": lambda: jitted(kx, ky),
           "torch eager": lambda: t_step(tx, ty), "torch.jit": lambda: ts_step(tx, ty)}
    return Case("MLP training step (fwd+CE+bwd+SGD), batch 256", fns, jitted, None,
                {"torch fusion groups": fused, "torch.jit": "trace (no freeze)"})


def mlp_step_gemms():
    """The MLP training step's eight GEMMs alone, in NumPy (the same OpenBLAS kiln and PyTorch
    call): forward x·W1ᵀ, h1·W2ᵀ, h2·W3ᵀ; weight gradients gᵀ·h; input gradients g·W (none
    for the data). No variant of the step can be faster than these."""
    rng = np.random.default_rng(7)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x, w1, w2, w3 = f(256, 784), f(512, 784), f(512, 512), f(10, 512)
    h1, h2, g1, g2, g3 = f(256, 512), f(256, 512), f(256, 512), f(256, 512), f(256, 10)

    def gemms():
        x @ w1.T, h1 @ w2.T, h2 @ w3.T
        g3.T @ h2, g2.T @ h1, g1.T @ x
        g3 @ w3, g2 @ w2
    return gemms


def transformer_case():
    """torch.nn.TransformerEncoderLayer and kiln.nn's (same parameter names): batch_first,
    GELU, no dropout, eval mode, no grad. PyTorch 1.13 eager takes its fused 'fast path'
    (torch._transformer_encoder_layer_fwd) here; that is what its users get."""
    rng = np.random.default_rng(6)
    src = rng.standard_normal((8, 128, 256)).astype(np.float32)
    torch.manual_seed(0)
    kw = dict(dim_feedforward=1024, dropout=0.0, activation="gelu", batch_first=True)
    tlayer = torch.nn.TransformerEncoderLayer(256, 4, **kw).eval()
    klayer = knn.TransformerEncoderLayer(256, 4, **kw)
    klayer.eval()
    bt.copy_weights(klayer, tlayer)
    ks, ts_in = kiln.from_numpy(src), torch.from_numpy(src)
    jitted = kiln.jit(lambda s: klayer(s), compile=True)
    want = klayer(ks)
    allclose_or_die("transformer", jitted(ks).numpy(), want.numpy(), 1e-4, 1e-4)
    be.check("transformer: kiln vs torch", want, k2n(tlayer(ts_in)), rtol=1e-3, atol=1e-4)
    ts, fused = torchscript(tlayer, (ts_in,))
    fns = {"kiln eager": lambda: klayer(ks), "kiln jit": lambda: jitted(ks),
           "torch eager": lambda: tlayer(ts_in), "torch.jit": lambda: ts(ts_in)}
    return Case("Transformer encoder layer fwd (8×128, d 256, 4 heads, MLP 1024)", fns, jitted, None,
                {"torch fusion groups": fused})


# ------------------------------------------------- cold compile, disk cache

def child_main(workload):
    """Runs in a fresh process: first call of a fresh jit function vs its warm calls, as JSON."""
    kiln.set_num_threads(be.THREADS)
    rng = np.random.default_rng(0)
    if workload == "mlp_step":
        x = kiln.from_numpy(rng.standard_normal((256, 784)).astype(np.float32))
        y = kiln.from_numpy(rng.integers(0, 10, 256))
        f, args = kiln.jit(sgd_step(kiln, bt.mlp(kiln)), compile=True), (x, y)
    elif workload == "chain100":
        f, args = kiln.jit(chain_ops(kiln), compile=True), (kiln.from_numpy(rng.standard_normal(1000).astype(np.float32)),)
    else:
        raise SystemExit(f"unknown workload {workload}")
    t0 = time.perf_counter()
    f(*args)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(7):
        t0 = time.perf_counter()
        f(*args)
        warm.append(time.perf_counter() - t0)
    how, note = jit_status(f)
    compiled = how != "graph executor"
    try:
        trace_ms = next(iter(f._entries.values())).trace_ms
    except (AttributeError, StopIteration):
        trace_ms = None
    print(json.dumps({"first_ms": first * 1e3, "warm_ms": be.quantile(warm, 0.5) * 1e3, "compiled": compiled,
                      "note": note, "trace_ms": trace_ms}))


def run_child(workload, cache_dir):
    env = dict(os.environ, KILN_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", workload], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child {workload} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cold_and_disk(workload):
    """(cold child result, disk-cache child result or None, note)."""
    cache_dir = tempfile.mkdtemp(prefix="kiln-bench-cache-")
    try:
        cold = run_child(workload, cache_dir)
        files = [os.path.join(r, f) for r, _, fs in os.walk(cache_dir) for f in fs]
        if not files:
            return cold, None, "n/a (no disk cache yet: the first process wrote nothing to KILN_CACHE_DIR)"
        size = sum(os.path.getsize(p) for p in files)
        disk = run_child(workload, cache_dir)
        return cold, disk, f"{len(files)} file(s), {size / 1024:.0f} KiB in KILN_CACHE_DIR"
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def compile_lines(workload, label):
    cold, disk, disk_note = cold_and_disk(workload)
    compile_ms = re.search(r"compiled in ([\d.]+) ms", cold["note"] or "")
    if cold["compiled"]:
        cold_cell = (f"first call {cold['first_ms']:.1f} ms − warm call {cold['warm_ms']:.2f} ms = "
                     f"**{cold['first_ms'] - cold['warm_ms']:.1f} ms** (of which tracing "
                     f"{cold['trace_ms'] or float('nan'):.1f} ms"
                     + (f", compiler's own count {compile_ms.group(1)} ms" if compile_ms else "") + ")")
    else:
        cold_cell = (f"n/a (runs on the graph executor: {short_reason(cold['note'])}); its first call "
                     f"{cold['first_ms']:.1f} ms vs warm {cold['warm_ms']:.2f} ms")
    if disk is None:
        disk_cell = disk_note
    else:
        disk_cell = (f"first call in a 2nd process {disk['first_ms']:.1f} ms − warm {disk['warm_ms']:.2f} ms = "
                     f"**{disk['first_ms'] - disk['warm_ms']:.1f} ms** (of which tracing "
                     f"{disk['trace_ms'] or float('nan'):.1f} ms; {disk_note}"
                     + ("" if disk["compiled"] else "; that process did not run compiled code") + ")")
    return [f"- Cold compile, {label} (fresh process, empty KILN_CACHE_DIR): {cold_cell}.",
            f"- Disk-cache load, {label} (second process, same KILN_CACHE_DIR): {disk_cell}."]


# ------------------------------------------------------------------- main

FW = ("kiln eager", "kiln jit", "torch eager", "torch.jit")


def main():
    quick = "--quick" in sys.argv
    torch.set_num_threads(be.THREADS)
    kiln.set_num_threads(be.THREADS)
    reps_big, reps_small = (5, 9) if quick else (15, 25)
    busy0, own0 = be.cpu_busy_seconds()
    load0 = os.getloadavg()[0]
    t0 = datetime.datetime.now()

    be.log("memory bandwidth ...")
    bw_before = bandwidth(5 if quick else 11)
    builders = [(gelu_case, reps_big, True), (softmax_case, reps_big, True), (layer_norm_case, reps_big, True),
                (mlp_forward_case, reps_small, True), (mlp_train_case, reps_small, False),
                (transformer_case, reps_small, True), (chain_case, reps_small, True)]
    rows = []
    for build, reps, inference in builders:
        be.log(f"{build.__name__} ...")
        # Inference rows run with autograd off in both frameworks (the eager frameworks would
        # otherwise record graphs for the parameters that require grad).
        ctx = contextlib.ExitStack()
        if inference:
            ctx.enter_context(torch.no_grad())
            ctx.enter_context(kiln.no_grad())
        with ctx:
            case = build()
            inner = 20 if case.nbytes is None and "chain" in case.name else 1
            fns = case.fns
            if inner > 1:  # call-overhead rows: loop inside the timed callable
                fns = {k: (lambda f: lambda: [f() for _ in range(inner)])(f) for k, f in fns.items()}
            stats = be.run_interleaved(fns, reps=reps, inner=inner, warmup=3, settle=True)
            if case.nbytes:  # measured as the bandwidth reference is: back to back, alone
                stats["kiln jit alone"] = be.run_interleaved({"j": fns["kiln jit"]}, reps=reps, warmup=2)["j"]
        how, note = jit_status(case.jitted)
        rows.append((case, stats, how, kernels_cell(case.jitted), note))
    bw_after = bandwidth(5 if quick else 11)
    bw_all = {k: max(bw_before[k], bw_after[k]) for k in bw_before}
    bw = max(bw_all.values())

    be.log("cold compile and disk cache (child processes) ...")
    extra = compile_lines("mlp_step", "MLP training step") + compile_lines("chain100", "100-op chain")
    step = next(st for c, st, *_ in rows if c.name.startswith("MLP training step"))
    floor = be.run_interleaved({"gemms": mlp_step_gemms()}, reps=reps_small, warmup=3, settle=True)["gemms"].med
    extra.append(f"- MLP training step, GEMM floor: its 8 GEMMs alone (NumPy, same OpenBLAS, 822 MFLOP) take "
                 f"**{floor * 1e3:.2f} ms**; kiln eager {step['kiln eager'].med * 1e3:.2f} ms, kiln jit "
                 f"{step['kiln jit'].med * 1e3:.2f} ms (of which {100 * floor / step['kiln jit'].med:.0f}% GEMM). "
                 f"1.5x kiln eager would be {step['kiln eager'].med / 1.5 * 1e3:.2f} ms.")

    busy1, own1 = be.cpu_busy_seconds()
    elapsed = (datetime.datetime.now() - t0).total_seconds()
    other = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(elapsed * be.THREADS, 1e-9)
    fuser = torch_fuser_state()

    head = ["Workload", "kiln eager [ms]", "kiln jit [ms]", "kiln jit ran", "PyTorch eager [ms]",
            "torch.jit trace+freeze [ms]", "BW limit [ms]", "kiln jit alone [ms]", "jit / eager", "jit / torch.jit",
            "jit alone % of BW"]
    lines = [f"# kiln.jit(compile=True) benchmark — {t0:%Y-%m-%d %H:%M} on `{socket.gethostname()}`", "",
             f"- CPU: {be.cpu_model()}, {os.cpu_count()} logical CPUs; load average {load0:.2f} at start, "
             f"{os.getloadavg()[0]:.2f} at end; run took {elapsed:.0f} s; other processes used "
             f"{100 * other:.0f}% of the CPU time meanwhile.",
             f"- kiln {kiln.__version__} (git {be.git_rev()}), PyTorch {torch.__version__} (Debian, CPU), "
             f"NumPy {np.__version__}; 2 threads each (OpenBLAS, OpenMP, kiln), OMP_WAIT_POLICY=PASSIVE; "
             f"kiln imported from `{os.path.dirname(os.path.dirname(kiln.__file__))}`.",
             "- Memory bandwidth (NumPy, bytes read + written, 64 MiB arrays; best of before/after the rows): "
             + ", ".join(f"{k} {v:.1f} GB/s" for k, v in bw_all.items())
             + f"; the best, **{bw:.1f} GB/s**, sets the BW limit column.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    notes = []
    for case, stats, how, kernels, note in rows:
        unit = "ms"
        cells = [case.name + (" [µs/call]" if "chain" in case.name else "")]
        if "chain" in case.name:
            unit = "us"
        for fw in FW:
            cells.append(be.fmt_time(stats[fw], unit))
            if fw == "kiln jit":
                cells.append(how + kernels if how != "graph executor" else how + ": " + short_reason(note))
        limit = case.nbytes / (bw * GB) if case.nbytes else None
        cells.insert(6, f"{limit * 1e3:.2f}" if limit else "—")
        alone = stats.get("kiln jit alone")
        cells.insert(7, be.fmt_time(alone, unit) if alone else "—")
        for a, b in (("kiln jit", "kiln eager"), ("kiln jit", "torch.jit")):
            _, r = be.ratio_cell(stats[a], stats[b])
            cells.append(f"{r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f})")
        cells.append(f"{100 * limit / alone.med:.0f}%" if limit else "—")
        lines.append("| " + " | ".join(cells) + " |")
        if how == "graph executor":
            notes.append(f"  - {case.name}, kiln jit: graph executor because {note.split('not compiled:')[-1].strip()}")
        elif how != "compiled":
            notes.append(f"  - {case.name}, kiln jit: {note}")
        groups = case.note.get("torch fusion groups") if case.note else None
        notes_ts = case.note.get("torch.jit") if case.note else None
        if notes_ts:
            notes.append(f"  - {case.name}, torch.jit column: {notes_ts}")
        if groups:
            notes.append(f"  - {case.name}: TorchScript fused: {', '.join(groups)}")
    any_groups = any(c.note and c.note.get("torch fusion groups") for c, *_ in rows)
    lines += ["",
              "Cells: median (interquartile range) over repetitions in which the four variants run alternately "
              "(order rotating) after a warm-up, each timed call right after an untimed call of the same "
              "variant (steady state; on this VM a core left idle ~10 ms runs the next few ms at up to half "
              "speed, which would charge each variant for the one before it); ratios are of medians, with the range pairing each side's "
              "quartiles with the other's opposite ones — differences inside it are noise. BW limit = the "
              "minimal bytes (inputs read once, output written once) / the bandwidth above. kiln jit alone: the "
              "same compiled function timed back to back with nothing in between, as the bandwidth reference "
              "is (the interleaved kiln jit column pays for the previous variant's dirty cache lines: a call "
              "after kiln eager's gelu measured 5.2 against 4.0 ms); % of BW is of that time. Every kiln jit "
              "result was asserted equal (allclose) to kiln eager before timing; the training step's losses "
              "and updated weights too. Inference rows run under no_grad in both frameworks. kiln has a "
              "caching allocator; PyTorch 1.13 CPU does not (its large outputs page-fault every call), so "
              "the large elementwise rows compare allocators as well as kernels.",
              "",
              "- TorchScript: " + ", ".join(f"{k} = {v}" for k, v in fuser.items()) + ". "
              + ("Fusion groups were found in some executed graphs (listed below)." if any_groups else
                 "No `prim::TensorExprGroup`/`prim::FusionGroup` appeared in any executed optimized graph: "
                 "Debian's PyTorch has no LLVM, so NNC does not fuse on CPU, and the torch.jit column runs "
                 "the frozen graph op by op on ATen kernels (freeze folds parameters, nothing more here)."),
              ] + extra
    if notes:
        lines += ["- Notes:"] + notes
    be.print_and_save("\n".join(lines) + "\n", t0, "compile")


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_main(sys.argv[sys.argv.index("--child") + 1])
    else:
        main()
