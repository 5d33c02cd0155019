"""The compiled-code disk cache seen from kiln.jit: a second process loads the
compiled function instead of compiling it (no MLIR, no LLVM), a corrupted entry
is recompiled, concurrent processes compiling the same function agree, and
kiln.cache.explain_miss says which part of the key changed."""
import json
import os
import subprocess
import sys

import numpy as np

import kiln

PYTHON = os.path.join(os.path.dirname(__file__), "..", "..", "python")

# A child process: compiles (or loads) a function with a matmul between
# kernels and reports how, with a checksum of its result.
CHILD = r"""
import json, sys
import numpy as np
import kiln
w = kiln.from_numpy(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3))
def f(x):
    return ((x * 2 + 1).tanh() @ w).exp() - 1
x = kiln.from_numpy(np.linspace(-2, 2, 20, dtype=np.float32).reshape(5, 4))
g = kiln.jit(f, compile=True)
y = g(x)
want = f(x).numpy()
[s] = g.stats()
print(json.dumps({"from_cache": s["from_disk_cache"], "compiled": s["compiled"], "kernels": s["kernels_per_call"],
                  "ok": bool(np.allclose(y.numpy(), want, rtol=1e-5, atol=1e-6)),
                  "stats": kiln.cache.stats(), "explain": kiln.cache.explain_miss(g, x)}))
"""


def run_child(cache_dir, code=CHILD):
    env = dict(os.environ, KILN_CACHE_DIR=str(cache_dir), PYTHONPATH=PYTHON)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_compiled_function_from_disk(tmp_path):
    first = run_child(tmp_path)
    assert first["compiled"] and first["ok"] and not first["from_cache"]
    assert first["stats"]["stores"] == 1 and first["explain"] == "hit"
    second = run_child(tmp_path)
    assert second["from_cache"] and second["ok"] and second["kernels"] == first["kernels"]
    assert second["stats"]["hits"] == 1 and second["stats"]["stores"] == 0


def test_a_corrupted_entry_is_recompiled(tmp_path):
    run_child(tmp_path)
    [entry] = [p for p in tmp_path.iterdir() if p.suffix == ".kcache"]
    data = bytearray(entry.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    entry.write_bytes(bytes(data))
    again = run_child(tmp_path)
    assert again["ok"] and not again["from_cache"]
    assert again["stats"]["corrupt"] == 1 and again["stats"]["stores"] == 1
    assert run_child(tmp_path)["from_cache"]


def test_two_processes_compiling_at_once_agree(tmp_path):
    env = dict(os.environ, KILN_CACHE_DIR=str(tmp_path), PYTHONPATH=PYTHON)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert all(r["ok"] for r in results)
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".kcache"]) == 1
    assert run_child(tmp_path)["from_cache"]


def test_explain_miss_names_the_part_that_changed():
    kiln.cache.clear()
    x = kiln.ones(3)

    def make():  # the same source line each time: locations are part of the IR
        return kiln.jit(lambda x: (x * 2).exp(), compile=True)

    f = make()
    f(x)
    assert kiln.cache.explain_miss(f, x) == "hit"
    g = kiln.jit(lambda x: (x * 2).log(), compile=True)
    why = kiln.cache.explain_miss(g, x)
    assert why.startswith("ir differs") and "kiln.log" in why and "kiln.exp" in why
    h = make()
    assert kiln.cache.explain_miss(h, kiln.ones(3).double()).startswith("ir differs")  # another dtype
    assert h(x).numpy().tolist() == f(x).numpy().tolist()
    [called] = [s for s in h.stats() if s["calls"]]
    assert called["from_disk_cache"]


TRAIN_CHILD = r"""
import json
import numpy as np
import kiln, kiln.nn as knn, kiln.nn.functional as F
kiln.manual_seed(0)
model = knn.Sequential(knn.Linear(12, 16), knn.ReLU(), knn.Linear(16, 3))
opt = kiln.optim.AdamW(model.parameters(), lr=1e-2)
x = kiln.from_numpy(np.linspace(-1, 1, 60, dtype=np.float32).reshape(5, 12))
y = kiln.from_numpy(np.array([0, 1, 2, 1, 0]))
def step(x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    return loss
f = kiln.jit(step, compile=True)
losses = [float(f(x, y).item()) for _ in range(3)]
[s] = f.stats()
print(json.dumps({"from_cache": s["from_disk_cache"], "losses": losses}))
"""


def test_a_training_step_traces_to_the_same_ir_in_every_process(tmp_path):
    # (write-backs into optimizer state once came out in hash-map order)
    first = run_child(tmp_path, TRAIN_CHILD)
    second = run_child(tmp_path, TRAIN_CHILD)
    assert not first["from_cache"] and second["from_cache"]
    assert second["losses"] == first["losses"]


def test_cached_object_code_carries_a_line_table_of_the_users_source(tmp_path):
    # The child's kernels come from line 7 of "<string>" (python -c): the
    # object's DWARF line table names that file (gdb then breaks at its lines).
    run_child(tmp_path)
    [entry] = [p for p in tmp_path.iterdir() if p.suffix == ".kcache"]
    data = entry.read_bytes()
    elf = data[data.index(b"\x7fELF"):]
    assert b".debug_line" in elf and b"<string>" in elf
