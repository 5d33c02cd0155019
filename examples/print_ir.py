"""Prints a traced function's kiln-dialect IR at each stage (docs/ir.md shows this output).

    PYTHONPATH=python /usr/bin/python3 examples/print_ir.py
"""
import kiln
import kiln.nn.functional as F


@kiln.jit
def gated(x, w, b):
    h = F.linear(x, w, b)
    scale = kiln.full((), 2.0) * 0.5      # constants: the simplified stage folds them
    y = F.gelu(h) * scale
    return y.reshape(y.shape[0], -1).softmax(dim=-1)


kiln.manual_seed(0)
x, w, b = kiln.randn(8, 16), kiln.randn(32, 16), kiln.randn(32)
lowered = gated.lower(x, w, b)
for stage in lowered.STAGES:
    print(f"// ---- stage: {stage}")
    print(lowered.ir(stage))
