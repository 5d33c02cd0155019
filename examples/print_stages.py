#!/usr/bin/python3
"""Prints a small function at every stage of kiln's compiler (docs/compiler.md shows this output).

    PYTHONPATH=python /usr/bin/python3 examples/print_stages.py [stage ...]
"""
import sys

import numpy as np

import kiln
import kiln.nn.functional as F


def layer(x, w, b):
    h = F.gelu(F.linear(x, w, b))  # the GEMM calls BLAS; + b and gelu fuse into what follows
    return F.softmax(h, dim=-1)  # max, sum of exp, scale: the same kernel, row tile by row tile


rng = np.random.default_rng(0)
x = kiln.from_numpy(rng.standard_normal((4, 8)).astype(np.float32))
w = kiln.from_numpy(rng.standard_normal((16, 8)).astype(np.float32))
b = kiln.from_numpy(rng.standard_normal(16).astype(np.float32))

stages = sys.argv[1:] or ["traced", "simplified", "decomposed", "linalg", "fused", "bufferized", "llvm", "optimized"]
lowered = kiln.jit(layer, compile=True).lower(x, w, b)
for stage in stages:
    print(f"// ===== {stage} =====")
    print(lowered.ir(stage, locations=False))
f = kiln.jit(layer, compile=True)
np.testing.assert_allclose(f(x, w, b).numpy(), layer(x, w, b).numpy(), rtol=1e-5, atol=1e-6)
print("//", f.stats()[0]["note"])
