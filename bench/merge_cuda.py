#!/usr/bin/env python3
"""Puts kiln's and PyTorch's GPU benchmark outputs side by side.

    python3 bench/merge_cuda.py KILN_OUTPUT TORCH_OUTPUT [--markdown | --tsv]

The inputs are what build/bench/cpp/kiln_bench_cuda and
bench/bench_cuda_torch.py print: JSON lines ({"meta": ...} and one
{"workload": ...} per workload) among human-readable lines, which are
skipped. Prints one row per workload: kiln's and PyTorch's throughput
(GB/s for memory-bound workloads, TFLOP/s for matmul, microseconds per call
for the launch-bound one), kiln/PyTorch (time ratio: above 1 means kiln is
faster) and each framework's share of its own measured device-to-device copy
bandwidth (the memory-bandwidth limit). Then the geometric mean of the ratio
per group. Standard library only.
"""
import argparse
import json
import math
import sys


def load(path):
    """(meta, {workload: result}, [workload order], [other lines worth showing])"""
    meta, results, order, notes = {}, {}, [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        return meta, results, order, [f"cannot read {path}: {e}"]
    for line in lines:
        s = line.strip()
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except ValueError:
                continue
            if "meta" in obj:
                meta = obj["meta"]
            elif "workload" in obj:
                if obj["workload"] not in results:
                    order.append(obj["workload"])
                results[obj["workload"]] = obj
        elif s.startswith(("no CUDA GPU", "terminate called", "Traceback")):
            notes.append(s)
    # % of copy bandwidth against this file's own copy measurement.
    copy = next((r.get("gbps", 0) for r in results.values() if r.get("group") == "copy" and "error" not in r), 0)
    for r in results.values():
        if "error" not in r and r.get("bytes") and copy:
            r["pct_copy"] = 100.0 * r["gbps"] / copy
    return meta, results, order, notes


def value(r):
    """(number, unit) shown for a result: throughput, or us/call when launch-bound."""
    if r is None or "error" in r:
        return None, ""
    if r.get("group") == "latency":
        return r["ms"] * 1e3, "us"
    if r.get("flops"):
        return r["tflops"], "TFLOP/s"
    return r["gbps"], "GB/s"


def cell(r):
    if r is None:
        return "-"
    if "error" in r:
        return "ERROR"
    v, _ = value(r)
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def pct(r):
    if r is None or "error" in r or not r.get("bytes") or r.get("group") == "latency":
        return "-"
    return f"{r.get('pct_copy', 0):.1f}%"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kiln")
    p.add_argument("torch")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="a Markdown table")
    fmt.add_argument("--tsv", action="store_true", help="tab-separated values")
    a = p.parse_args()

    kmeta, kres, korder, knotes = load(a.kiln)
    tmeta, tres, torder, tnotes = load(a.torch)
    order = korder + [w for w in torder if w not in kres]

    if not a.tsv:
        for name, meta, notes in (("kiln", kmeta, knotes), ("PyTorch", tmeta, tnotes)):
            if meta:
                extra = f", torch {meta['torch']} (CUDA {meta.get('cuda')})" if "torch" in meta else ""
                print(f"# {name}: {meta.get('device', '?')} (sm {meta.get('sm', '?')}){extra}; "
                      f"warmup {meta.get('warmup')}, median of {meta.get('reps')}")
            for n in notes[:5]:
                print(f"# {name}: {n}")
        if not order:
            print("no results to compare")
            return 1

    header = ["workload", "unit", "kiln", "PyTorch", "kiln/PyTorch", "kiln %copy", "torch %copy"]
    rows, by_group = [], {}
    for w in order:
        k, t = kres.get(w), tres.get(w)
        unit = value(k)[1] or value(t)[1]
        ratio = "-"
        if k and t and "error" not in k and "error" not in t and k["ms"] > 0:
            q = t["ms"] / k["ms"]  # time ratio: > 1 when kiln is faster
            ratio = f"{q:.2f}x"
            by_group.setdefault((k.get("group") or t.get("group") or "?"), []).append(q)
        rows.append([w, unit, cell(k), cell(t), ratio, pct(k), pct(t)])

    if a.tsv:
        print("\t".join(header))
        for r in rows:
            print("\t".join(r))
        return 0
    if a.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        line = lambda r: "  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])  # noqa: E731
                                   for i, c in enumerate(r))
        print(line(header))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print(line(r))
    print()
    print("kiln/PyTorch = PyTorch's time / kiln's time (above 1: kiln faster); %copy = GB/s as a share of the "
          "same framework's device-to-device copy bandwidth.")
    for g, qs in by_group.items():
        gm = math.exp(sum(math.log(q) for q in qs) / len(qs))
        print(f"geometric mean kiln/PyTorch, {g}: {gm:.2f}x over {len(qs)} workloads")
    for n, res in (("kiln", kres), ("PyTorch", tres)):
        for w, r in res.items():
            if "error" in r:
                print(f"{n} ERROR in {w}: {r['error'][:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
