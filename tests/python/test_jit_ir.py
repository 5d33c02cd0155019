"""The kiln MLIR dialect as kiln.jit prints it: every op located at the
user's line, print -> parse -> print stable, bytecode round trips, and IR
that does not verify raises kiln.IrError with MLIR's diagnostics (never a
crash)."""
import re

import numpy as np
import pytest

import kiln
import kiln.nn as nn

# Tracing is tested against the graph executor (bitwise equal to eager).
pytestmark = pytest.mark.usefixtures("graph_executor_jit")

rng = np.random.default_rng(3)


def t(*shape):
    return kiln.from_numpy(rng.standard_normal(shape).astype(np.float32))


def roundtrip(lowered):
    text = lowered.ir()
    assert kiln.ir_parse(text) == text
    assert kiln.ir_parse(lowered.bytecode()) == text
    return text


def test_elementwise_function_prints_kiln_ops_with_user_lines():
    def f(x, y):
        z = (x * y + 1.0).relu()  # LINE_A
        return kiln.where(z > 0.5, z, y).exp()  # LINE_B

    jf = kiln.jit(f)
    x, y = t(4, 3), t(4, 3)
    jf(x, y)
    text = roundtrip(jf.lower(x, y))
    assert "func.func @f(%arg0: tensor<4x3xf32>" in text
    for op in ("kiln.mul", "kiln.add", "kiln.relu", "kiln.gt", "kiln.where", "kiln.exp"):
        assert op in text
    assert "-> tensor<4x3xi1>" in text  # comparisons give bool (i1) tensors
    src = open(__file__).read().splitlines()
    line_a = next(i for i, s in enumerate(src, 1) if s.endswith("# LINE_A"))
    line_b = next(i for i, s in enumerate(src, 1) if s.endswith("# LINE_B"))
    assert f'test_jit_ir.py":{line_a}:0)' in text and f'test_jit_ir.py":{line_b}:0)' in text
    assert "loc(" not in jf.lower(x, y).ir(locations=False)
    assert '"kiln.mul"(%arg0, %arg1)' in jf.lower(x, y).ir(generic=True)


def test_lower_traces_without_running_and_shares_the_cache():
    calls = []

    def f(x):
        calls.append(1)
        return x * 2

    jf = kiln.jit(f)
    lowered = jf.lower(t(2, 2))
    assert len(calls) == 1 and "kiln.mul" in lowered.ir()
    jf(t(2, 2))
    assert len(calls) == 1, "the call reuses the variant lower() traced"
    with pytest.raises(ValueError, match="no IR stage 'ptx'"):
        lowered.ir("ptx")


def test_dynamic_dims_print_as_question_marks():
    jf = kiln.jit(lambda x: (x * x).relu(), dynamic=0)
    text = roundtrip(jf.lower(t(5, 3)))
    assert "tensor<?x3xf32>" in text


def test_captures_writebacks_and_grads_are_marked():
    w = kiln.ones(3, requires_grad=True)
    state = kiln.zeros(3)

    def step(x):
        loss = (x * w).sum()
        loss.backward()
        state.add_(1.0)
        return loss

    jf = kiln.jit(step)
    text = roundtrip(jf.lower(t(3)))
    assert "kiln.capture = 0" in text and "kiln.capture = 1" in text
    assert "kiln.grad_of = 0" in text and "kiln.writeback = 1" in text


def test_cond_and_while_loop_become_regions():
    def f(x, n):
        y = kiln.cond(x[0] > 0, lambda v: v * 2, lambda v: v - 1, x)
        return kiln.while_loop(lambda i, v: i < n, lambda i, v: (i + 1, v * 1.5), (kiln.zeros(()), y))

    jf = kiln.jit(f)
    x, n = t(3), kiln.tensor(3.0)
    jf(x, n)
    text = roundtrip(jf.lower(x, n))
    assert "kiln.cond" in text and "kiln.while_loop" in text and "kiln.yield" in text
    assert re.search(r"\} else \{", text) and re.search(r"\} do \{", text)


def test_module_forward_ir():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    jf = kiln.jit(lambda x: model(x))
    text = roundtrip(jf.lower(t(2, 8)))
    assert "kiln.capture" in text and "kiln.linear" in text


BROKEN = {
    "incompatible result type": (
        "func.func @f(%a: tensor<3xf32>, %b: tensor<3xf32>) -> tensor<3xf64> {\n"
        "  %0 = kiln.add %a, %b : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf64>\n"
        "  return %0 : tensor<3xf64>\n}",
        r"inferred type\(s\) 'tensor<3xf32>' are incompatible"),
    "meta rule error": (
        "func.func @f(%a: tensor<3xf32>, %b: tensor<4xf32>) -> tensor<4xf32> {\n"
        "  %0 = kiln.mul %a, %b : (tensor<3xf32>, tensor<4xf32>) -> tensor<4xf32>\n"
        "  return %0 : tensor<4xf32>\n}",
        r"mul.*\(3,\).*\(4,\)"),
    "unknown op": (
        "func.func @f(%a: tensor<3xf32>) -> tensor<3xf32> {\n"
        "  %0 = kiln.frobnicate %a : (tensor<3xf32>) -> tensor<3xf32>\n"
        "  return %0 : tensor<3xf32>\n}",
        r"frobnicate"),
    "missing attribute": (
        "func.func @f() -> tensor<2xf32> {\n"
        "  %0 = kiln.full {shape = array<i64: 2>} : () -> tensor<2xf32>\n"
        "  return %0 : tensor<2xf32>\n}",
        r"value"),
    "syntax": ("func.func @f(", r"expected"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_invalid_ir_raises_ir_error_with_the_diagnostic(case):
    text, pattern = BROKEN[case]
    with pytest.raises(kiln.IrError, match=pattern) as e:
        kiln.ir_parse(text)
    assert "kiln-ir:" in str(e.value), "the diagnostic names where in the text it is"


def test_corrupted_bytecode_raises_ir_error():
    jf = kiln.jit(lambda x: x.exp())
    code = jf.lower(t(3)).bytecode()
    assert code[:4] == b"ML\xefR"
    for cut in (len(code) // 2, 8):
        with pytest.raises(kiln.IrError):
            kiln.ir_parse(code[:cut])
    corrupted = bytearray(code)
    for i in range(len(corrupted) // 2, len(corrupted)):
        corrupted[i] ^= 0x5A
    with pytest.raises(kiln.IrError):
        kiln.ir_parse(bytes(corrupted))
