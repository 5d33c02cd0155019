"""matmul (1-D, 2-D, batched, broadcast) against NumPy; softmax, log_softmax and
layer_norm against torch."""
import math

import numpy as np
import pytest
import torch

import kiln
from conftest import TOLERANCES, assert_close, is_float, make_input

F = torch.nn.functional

# (shape of a, shape of b, layout of a, layout of b)
MATMUL_CASES = [
    ((5,), (5,), "contig", "contig"), ((0,), (0,), "contig", "contig"), ((1,), (1,), "contig", "contig"),
    ((4,), (4, 3), "sliced", "contig"), ((3, 4), (4,), "transposed", "sliced"), ((3, 4), (4, 5), "contig", "contig"),
    ((3, 4), (4, 5), "transposed", "transposed"), ((3, 4), (4, 5), "sliced", "sliced"),
    ((1, 4), (4, 1), "contig", "contig"), ((1, 7), (7, 5), "contig", "transposed"),
    ((6, 7), (7, 1), "transposed", "contig"), ((2, 3, 4), (2, 4, 5), "contig", "transposed"),
    ((2, 3, 4), (4, 5), "transposed", "contig"), ((3, 4), (2, 4, 5), "contig", "sliced"),
    ((2, 1, 3, 4), (5, 4, 2), "contig", "contig"), ((4,), (2, 4, 3), "contig", "contig"),
    ((2, 3, 4), (4,), "sliced", "contig"), ((4, 3, 4), (4, 5), "expanded", "contig"),
    ((3, 4), (3, 4, 5), "contig", "expanded"), ((0, 4), (4, 5), "contig", "contig"),
    ((3, 0), (0, 5), "contig", "contig"), ((3, 4), (4, 0), "contig", "contig"), ((0, 3, 4), (4, 2), "contig", "contig"),
    ((65, 129), (129, 33), "transposed", "contig"), ((2, 40, 70), (70, 30), "contig", "transposed"),
    ((3, 1, 5, 6), (1, 4, 6, 2), "contig", "contig"),
]


def assert_matmul_close(got, a, b, expected, dtype, msg):
    """|got - expected| <= tol * (|a| @ |b|) + rtol * |expected|: the rounding
    error bound of a k-term dot product, whatever the summation order."""
    assert got.dtype == getattr(kiln, dtype), msg
    assert tuple(got.shape) == expected.shape, f"{msg}: {got.shape} vs {expected.shape}"
    g = got.to(kiln.float64).numpy() if is_float(dtype) else got.numpy()
    if not is_float(dtype):
        np.testing.assert_array_equal(g, expected, err_msg=msg)
        return
    rtol, _ = TOLERANCES[dtype]
    bound = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)) if a.size and b.size else 0
    k = a.shape[-1] if a.ndim else 1
    err = np.abs(g - expected)
    limit = rtol * np.abs(expected) + rtol * np.maximum(1, k / 64) * bound + 1e-30
    assert np.all(err <= limit), f"{msg}: max error {np.max(err / limit) if err.size else 0} x the bound"


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64"])
def test_matmul(dtype, rng):
    for sa, sb, la, lb in MATMUL_CASES:
        a, va = make_input(rng, sa, dtype, la, "small")
        b, vb = make_input(rng, sb, dtype, lb, "small")
        if is_float(dtype):
            expected = np.matmul(va.astype(np.float64), vb.astype(np.float64))
        else:  # integer products wrap like NumPy's (and torch's)
            expected = np.matmul(va, vb)
        msg = f"matmul({dtype}: {sa} {la} @ {sb} {lb})"
        assert_matmul_close(kiln.matmul(a, b), va, vb, np.asarray(expected), dtype, msg)
        assert_matmul_close(a @ b, va, vb, np.asarray(expected), dtype, "@ " + msg)
        assert_matmul_close(a.matmul(b), va, vb, np.asarray(expected), dtype, "method " + msg)


def test_matmul_with_numpy_operand_and_mixed_dtypes(rng):
    a, va = make_input(rng, (3, 4), "float32")
    m = rng.standard_normal((4, 2))
    got = a @ m  # float32 tensor @ float64 array: promotes to float64
    assert_matmul_close(got, va, m, va.astype(np.float64) @ m, "float64", "tensor @ ndarray")
    got = m.T @ a.T
    assert_matmul_close(got, m.T, va.T, m.T @ va.T.astype(np.float64), "float64", "ndarray @ tensor")
    i = kiln.arange(4, dtype=kiln.int32)
    assert_close(i @ a.T, np.arange(4) @ va.T.astype(np.float64), "float32")


def test_matmul_errors():
    with pytest.raises(kiln.ShapeError):
        kiln.matmul(kiln.ones(3, 4), kiln.ones(5, 2))
    with pytest.raises(kiln.ShapeError):
        kiln.matmul(kiln.ones(3), kiln.ones(4))
    with pytest.raises(kiln.ShapeError):
        kiln.matmul(kiln.ones(2, 3, 4), kiln.ones(3, 4, 5))
    with pytest.raises(kiln.ShapeError):
        kiln.matmul(kiln.tensor(1.0), kiln.ones(3))
    with pytest.raises(kiln.DTypeError):
        kiln.matmul(kiln.ones(2, 2, dtype=kiln.bool), kiln.ones(2, 2, dtype=kiln.bool))
    with pytest.raises((kiln.DTypeError, TypeError)):
        kiln.matmul(kiln.ones(2, 2), "x")


def test_matmul_result_is_fresh_and_inputs_untouched(rng):
    a, va = make_input(rng, (3, 4), "float32", "transposed")
    b, vb = make_input(rng, (4, 2), "float32")
    c = a @ b
    c.mul_(0)
    assert_close(a, va, "float32")
    assert_close(b, vb, "float32")


# ---- softmax / log_softmax ----

SOFTMAX_CASES = [((), 0), ((), -1), ((7,), 0), ((3, 5), 1), ((3, 5), 0), ((3, 5), -1), ((2, 3, 4), 1),
                 ((2, 3, 4), -3), ((4, 1, 6), 1), ((2, 0, 3), 2), ((2, 0, 3), 1), ((5, 300), 1), ((300, 70), 0),
                 ((3, 33, 40), 1)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax(op, dtype, rng):
    tfn = getattr(F, op)
    for i, (shape, dim) in enumerate(SOFTMAX_CASES):
        layout = ["contig", "transposed", "sliced", "expanded"][i % 4]
        x, v = make_input(rng, shape, dtype, layout)
        expected = tfn(torch.from_numpy(v.astype(np.float64)), dim=dim).numpy()
        msg = f"{op}({dtype} {shape} {layout}, dim={dim})"
        assert_close(getattr(kiln, op)(x, dim), expected, dtype, msg=msg)
        assert_close(getattr(x, op)(dim=dim), expected, dtype, msg="method " + msg)


def test_softmax_extremes():
    rows = [[1000.0, 1000.0, -1000.0], [-1000.0, -1000.0, -1000.0], [-math.inf, 0.0, 1.0],
            [-math.inf, -math.inf, -math.inf], [math.inf, 0.0, 1.0], [math.nan, 0.0, 1.0], [88.0, -88.0, 0.0]]
    for dtype in ["float32", "float64"]:
        x = kiln.tensor(rows, dtype=getattr(kiln, dtype))
        t = torch.tensor(rows, dtype=getattr(torch, dtype))
        assert_close(kiln.softmax(x, 1), F.softmax(t, 1).numpy(), dtype)
        assert_close(kiln.log_softmax(x, 1), F.log_softmax(t, 1).numpy(), dtype)
        assert_close(kiln.softmax(x.T, 0), F.softmax(t.T, 0).numpy(), dtype)  # down columns


def test_softmax_rows_sum_to_one(rng):
    x, _ = make_input(rng, (64, 1000), "float32")
    s = kiln.softmax(x * 10, -1).sum(-1)
    assert_close(s, np.ones(64), "float32")


def test_softmax_errors():
    with pytest.raises(kiln.DTypeError):
        kiln.softmax(kiln.arange(4), 0)
    with pytest.raises(kiln.DTypeError):
        kiln.log_softmax(kiln.ones(3, dtype=kiln.bool), 0)
    with pytest.raises(IndexError):
        kiln.softmax(kiln.ones(3, 4), 2)
    with pytest.raises(IndexError):
        kiln.ones(3, 4).log_softmax(-3)


# ---- layer_norm ----

LAYER_NORM_CASES = [((4, 5), (5,)), ((2, 3, 4), (4,)), ((2, 3, 4), (3, 4)), ((7,), (7,)), ((3, 1), (1,)),
                    ((2, 0, 4), (4,)), ((64, 333), (333,)), ((5, 2, 3), (5, 2, 3))]


@pytest.mark.parametrize("affine", ["none", "weight", "both"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_layer_norm(dtype, affine, rng):
    for i, (shape, nshape) in enumerate(LAYER_NORM_CASES):
        layout = ["contig", "transposed", "sliced", "expanded"][i % 4]
        x, v = make_input(rng, shape, dtype, layout)
        w = b = None
        tw = tb = None
        if affine in ("weight", "both"):
            w, vw = make_input(rng, nshape, dtype, "sliced")
            tw = torch.from_numpy(vw.astype(np.float64))
        if affine == "both":
            b, vb = make_input(rng, nshape, dtype)
            tb = torch.from_numpy(vb.astype(np.float64))
        for eps in (1e-5, 0.1):
            expected = F.layer_norm(torch.from_numpy(v.astype(np.float64)), nshape, tw, tb, eps).numpy()
            got = kiln.layer_norm(x, nshape, w, b, eps=eps)
            # the output is normalized to O(1): compare with an absolute tolerance of the dtype's rtol
            rtol = {"float16": 2e-3, "bfloat16": 2e-2, "float32": 1e-5, "float64": 1e-10}[dtype]
            assert_close(got, expected, dtype, rtol=rtol, atol=rtol * 10,
                         msg=f"layer_norm({dtype} {shape} {layout}, {nshape}, {affine}, eps={eps})")


def test_layer_norm_constant_rows_and_large_offsets():
    x = kiln.tensor([[3.0, 3.0, 3.0], [1e4 + 1, 1e4 + 2, 1e4 + 3]])
    expected = F.layer_norm(torch.tensor(x.tolist()), (3,)).numpy()
    assert_close(kiln.layer_norm(x, (3,)), expected, "float32", atol=1e-4)
    assert_close(kiln.layer_norm(x, [3]), expected, "float32", atol=1e-4)
    assert_close(kiln.layer_norm(x, 3), expected, "float32", atol=1e-4)


def test_layer_norm_errors():
    x = kiln.ones(2, 3, 4)
    with pytest.raises(kiln.ShapeError):
        kiln.layer_norm(x, (3,))
    with pytest.raises(kiln.ShapeError):
        kiln.layer_norm(x, (1, 2, 3, 4))
    with pytest.raises(kiln.ShapeError):
        kiln.layer_norm(x, (4,), kiln.ones(3))
    with pytest.raises(kiln.ShapeError):
        kiln.layer_norm(x, (4,), None, kiln.ones(4, 1))
    with pytest.raises(kiln.DTypeError):
        kiln.layer_norm(kiln.ones(2, 3, dtype=kiln.int32), (3,))
