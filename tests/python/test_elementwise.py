"""Elementwise unary and binary ops against NumPy (and torch where NumPy has no
such op), on every dtype, odd and empty shapes, broadcasting and
non-contiguous inputs."""
import math
import operator

import numpy as np
import pytest
import torch

import kiln
from conftest import (ALL_DTYPES, BROADCAST_CASES, ELEMENTWISE_CASES, FLOAT_DTYPES, INT_DTYPES,
                      assert_close, is_float, kdt, make_input, round_to, tdt)

F = torch.nn.functional


def _torch64(fn):
    return lambda x: fn(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


# name: (reference on float64 / exact integer values, kind, input kind)
#   kind float:    int/bool inputs compute in float32; floats keep their dtype
#   kind numeric:  every dtype but bool; keeps the dtype
#   kind rounding: like numeric; the identity on integers
UNARY = {
    "neg": (np.negative, "numeric", "any"),
    "abs": (np.abs, "numeric", "any"),
    "exp": (np.exp, "float", "small"),
    "log": (np.log, "float", "positive"),
    "log1p": (np.log1p, "float", "positive"),
    "expm1": (np.expm1, "float", "small"),
    "sqrt": (np.sqrt, "float", "positive"),
    "rsqrt": (lambda x: 1.0 / np.sqrt(x), "float", "positive"),
    "sin": (np.sin, "float", "any"),
    "cos": (np.cos, "float", "any"),
    "tanh": (np.tanh, "float", "any"),
    "sigmoid": (lambda x: 1.0 / (1.0 + np.exp(-x)), "float", "any"),
    "relu": (lambda x: np.maximum(x, np.zeros_like(x)), "numeric", "any"),
    "gelu": (_torch64(F.gelu), "float", "any"),
    "gelu_tanh": (_torch64(lambda t: F.gelu(t, approximate="tanh")), "float", "any"),
    "silu": (_torch64(F.silu), "float", "any"),
    "erf": (_torch64(torch.erf), "float", "any"),
    "floor": (np.floor, "rounding", "any"),
    "ceil": (np.ceil, "rounding", "any"),
    "round": (np.round, "rounding", "any"),  # half to even, like torch.round
    "trunc": (np.trunc, "rounding", "any"),
    "sign": (np.sign, "numeric", "any"),
    "reciprocal": (lambda x: 1.0 / x, "float", "nonzero"),
}


def unary_result_dtype(kind, name):
    if kind == "float":
        return name if is_float(name) else "float32"
    if name == "bool":
        return None  # DTypeError
    return name


def unary_expected(op, name, values):
    ref, kind, _ = UNARY[op]
    out = unary_result_dtype(kind, name)
    if is_float(out):
        with np.errstate(all="ignore"):
            return round_to(ref(values.astype(np.float64)), out), out
    if kind == "rounding":
        return values.copy(), out
    with np.errstate(all="ignore"):
        return ref(values), out


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("op", list(UNARY))
def test_unary(op, dtype, rng):
    _, kind, input_kind = UNARY[op]
    for shape, layout in ELEMENTWISE_CASES:
        x, values = make_input(rng, shape, dtype, layout, input_kind)
        if unary_result_dtype(kind, dtype) is None:
            with pytest.raises(kiln.DTypeError):
                getattr(kiln, op)(x)
            return
        expected, out = unary_expected(op, dtype, values)
        msg = f"{op}({dtype}, shape={shape}, layout={layout})"
        assert_close(getattr(kiln, op)(x), expected, out, msg=msg)
        assert_close(getattr(x, op)(), expected, out, msg="method " + msg)
        # the input is left alone
        assert_close(x, values, dtype, msg="input after " + msg)


DTYPE_DIVERGENCES = {
    ("sign", "bool"): "kiln divergence: sign() of a bool tensor raises DTypeError; torch.sign returns "
                      "the bool tensor unchanged",
}


def _op_dtype_params(ops, divergences):
    return [pytest.param(op, dt, marks=[pytest.mark.xfail(reason=divergences[op, dt], strict=True)]
                         if (op, dt) in divergences else [])
            for op in ops for dt in ALL_DTYPES]


@pytest.mark.parametrize("op,dtype", _op_dtype_params(list(UNARY), DTYPE_DIVERGENCES))
def test_unary_dtype_matches_torch(op, dtype):
    """Where torch 1.13 CPU implements the op for the dtype, kiln gives the same result dtype."""
    tfn = {"gelu": F.gelu, "silu": F.silu, "relu": torch.relu,
           "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}.get(op) or getattr(torch, op)
    try:
        expected = tfn(torch.ones(3, dtype=tdt(dtype))).dtype
    except RuntimeError:
        pytest.skip(f"torch 1.13 has no CPU {op} for {dtype}")
    got = getattr(kiln, op)(kiln.ones(3, dtype=kdt(dtype))).dtype
    assert str(got).replace("kiln.", "") == str(expected).replace("torch.", "")


SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 0.5, -0.5, 2.5, -2.5,
           3.5, 20.0, -20.0, 80.0, -80.0, -87.0, -100.0, 1e30, -1e30]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", list(UNARY))
def test_unary_special_values(op, dtype):
    """NaN, infinities, zeros, tiny and huge values, exact halves: as torch
    (16-bit dtypes: torch computes in float32 from the rounded inputs)."""
    tfn = {"gelu": F.gelu, "silu": F.silu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}.get(op) \
        or getattr(torch, op)
    inputs = torch.tensor(SPECIAL, dtype=tdt(dtype))
    if dtype in ("float16", "bfloat16"):
        expected = tfn(inputs.float()).to(tdt(dtype)).double().numpy()
    else:
        expected = tfn(inputs).numpy()
    got = getattr(kiln, op)(kiln.tensor(SPECIAL, dtype=kdt(dtype)))
    assert_close(got, expected, dtype, msg=f"{op} on {SPECIAL}")


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_relu_propagates_nan(dtype):
    got = kiln.relu(kiln.tensor([math.nan, 1.0], dtype=kdt(dtype)))
    assert math.isnan(got[0].item())


def test_exp_float32_near_overflow_is_finite():
    # up to the largest float whose exp fits (88.7228317); the next one overflows
    x = np.concatenate([np.float32([88.4, 88.5, 88.7]), np.linspace(88.70, 88.7228317, 2001, dtype=np.float32)])
    got = kiln.exp(kiln.from_numpy(x))
    assert_close(got, np.exp(x.astype(np.float64)).astype(np.float32), "float32")


def test_exp_float32_range_limits():
    x = np.array([-80.0, -50.0, 0.0, 50.0, 80.0, 88.0, 88.3, 88.72283935546875, 88.8, 100.0, -200.0], dtype=np.float32)
    with np.errstate(over="ignore"):
        expected = np.exp(x.astype(np.float64)).astype(np.float32)
    assert_close(kiln.exp(kiln.from_numpy(x)), expected, "float32")


def test_tanh_keeps_sign_of_zero():
    got = kiln.tanh(kiln.tensor([-0.0], dtype=kiln.float32)).item()
    assert math.copysign(1.0, got) == -1.0


def test_gelu_approximate_argument(rng):
    x, v = make_input(rng, (4, 5), "float32")
    assert_close(kiln.gelu(x, approximate="tanh"), UNARY["gelu_tanh"][0](v), "float32")
    assert_close(x.gelu(approximate="none"), UNARY["gelu"][0](v), "float32")
    assert_close(kiln.gelu(x), UNARY["gelu"][0](v), "float32")
    with pytest.raises(ValueError):
        kiln.gelu(x, approximate="fast")


# ---- binary ----

# name: (reference, kind, (kind of a's values, kind of b's values))
BINARY = {
    "add": (np.add, "arith", ("any", "any")),
    "sub": (np.subtract, "arith", ("any", "any")),
    "mul": (np.multiply, "arith", ("any", "any")),
    "div": (np.true_divide, "float", ("any", "nonzero")),
    "floor_divide": (np.floor_divide, "arith", ("dyadic", "divisor")),
    "remainder": (np.remainder, "arith", ("dyadic", "divisor")),
    "pow": (np.power, "arith", ("base", "exponent")),
    "maximum": (np.maximum, "arith", ("any", "any")),
    "minimum": (np.minimum, "arith", ("any", "any")),
    "atan2": (np.arctan2, "float", ("any", "any")),
    "eq": (np.equal, "compare", ("few", "few")),
    "ne": (np.not_equal, "compare", ("few", "few")),
    "lt": (np.less, "compare", ("few", "few")),
    "le": (np.less_equal, "compare", ("few", "few")),
    "gt": (np.greater, "compare", ("few", "few")),
    "ge": (np.greater_equal, "compare", ("few", "few")),
    "logical_and": (np.logical_and, "logical", ("few", "few")),
    "logical_or": (np.logical_or, "logical", ("few", "few")),
    "logical_xor": (np.logical_xor, "logical", ("few", "few")),
    "bitwise_and": (np.bitwise_and, "bitwise", ("any", "any")),
    "bitwise_or": (np.bitwise_or, "bitwise", ("any", "any")),
    "bitwise_xor": (np.bitwise_xor, "bitwise", ("any", "any")),
}

# torch 1.13 rejects these on bool tensors; kiln computes them (see the report).
BOOL_UNSUPPORTED_IN_TORCH = {"sub", "floor_divide", "remainder", "pow"}


def binary_values(rng, shape, name, kind):
    """Values for binary-op operands; 'dyadic'/'divisor' keep floor division exact."""
    shape = tuple(shape)
    if kind in ("any", "nonzero") or name == "bool":
        from conftest import random_values
        return random_values(rng, shape, name, kind)
    if kind == "few":  # many ties, so == and != see both outcomes
        v = rng.integers(0 if name == "uint8" else -2, 3, size=shape)
        return v.astype(np.float64) / 2 if is_float(name) else v.astype(np.dtype(name))
    if kind == "dyadic":
        if is_float(name):
            return rng.integers(-40, 41, size=shape) / 8.0
        lo = 0 if name == "uint8" else -100
        return rng.integers(lo, 101, size=shape).astype(np.dtype(name))
    if kind == "divisor":
        mag = rng.integers(1, 13, size=shape)
        sign = np.where(rng.random(shape) < 0.5, -1, 1) if name != "uint8" else 1
        if is_float(name):
            return mag * sign / 4.0
        return (mag * sign).astype(np.dtype(name))
    if kind == "base":
        if is_float(name):
            return round_to(rng.uniform(0.1, 4.0, shape), name)
        return rng.integers(0 if name == "uint8" else -4, 5, size=shape).astype(np.dtype(name))
    if kind == "exponent":
        if is_float(name):
            return round_to(rng.uniform(-3.0, 3.0, shape), name)
        return rng.integers(0, 5, size=shape).astype(np.dtype(name))
    raise ValueError(kind)


def make_binary_input(rng, shape, name, layout, kind):
    from conftest import kiln_from_values
    shape = tuple(shape)
    if len(shape) == 0:
        layout = "contig"
    if layout == "expanded":
        base = binary_values(rng, (1,) + shape[1:], name, kind)
        return kiln_from_values(base, name).expand(*shape), np.broadcast_to(base, shape).copy()
    values = binary_values(rng, shape, name, kind)
    if layout == "contig":
        return kiln_from_values(values, name), values
    if layout == "transposed":
        perm = tuple(reversed(range(len(shape))))
        return kiln_from_values(np.ascontiguousarray(values.transpose(perm)), name).permute(*perm), values
    big = np.zeros(shape[:-1] + (2 * shape[-1] + 1,), dtype=values.dtype)
    big[..., 1::2] = values
    return kiln_from_values(big, name)[..., 1::2], values


def binary_result_dtype(kind, name):
    if kind in ("compare", "logical"):
        return "bool"
    if kind == "float":
        return name if is_float(name) else "float32"
    if kind == "bitwise" and is_float(name):
        return None
    return name


def binary_expected(op, name, a, b):
    ref, kind, _ = BINARY[op]
    out = binary_result_dtype(kind, name)
    with np.errstate(all="ignore"):
        if is_float(out):
            return round_to(ref(a.astype(np.float64), b.astype(np.float64)), out), out
        if name == "bool" and kind == "arith":
            # torch's bool arithmetic: + is or, * is and; max/min likewise
            r = ref(a.astype(np.int64), b.astype(np.int64)) != 0
            return r, out
        return np.asarray(ref(a, b)).astype(np.dtype(out)), out


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("op", list(BINARY))
def test_binary(op, dtype, rng):
    _, kind, (ka, kb) = BINARY[op]
    if dtype == "bool" and op in BOOL_UNSUPPORTED_IN_TORCH:
        pytest.skip("torch 1.13 has no bool version to compare with")
    for sa, sb, la, lb in BROADCAST_CASES:
        a, va = make_binary_input(rng, sa, dtype, la, ka)
        b, vb = make_binary_input(rng, sb, dtype, lb, kb)
        if binary_result_dtype(kind, dtype) is None:
            with pytest.raises(kiln.DTypeError):
                getattr(kiln, op)(a, b)
            return
        expected, out = binary_expected(op, dtype, va, vb)
        msg = f"{op}({dtype}: {sa} {la}, {sb} {lb})"
        assert_close(getattr(kiln, op)(a, b), expected, out, msg=msg)
        assert_close(getattr(a, op)(b), expected, out, msg="method " + msg)


BINARY_SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e30, -1e30, 1e-30, 3.0, 0.5]


@pytest.mark.parametrize("op,dtype", [
    (op, dt)
    for op in BINARY if BINARY[op][1] != "bitwise" for dt in ["float16", "float32", "float64"]])
def test_binary_special_values(op, dtype):
    """Every pair of NaN, +-inf, +-0, tiny, huge and ordinary values, against NumPy in the same dtype."""
    import itertools
    a, b = (np.array(v) for v in zip(*itertools.product(BINARY_SPECIAL, BINARY_SPECIAL)))
    with np.errstate(all="ignore"):
        na, nb = a.astype(dtype), b.astype(dtype)
        expected = BINARY[op][0](na, nb)
    got = getattr(kiln, op)(kiln.from_numpy(na), kiln.from_numpy(nb))
    out = "bool" if expected.dtype == np.bool_ else dtype
    assert_close(got, expected.astype(np.float64) if out != "bool" else expected, out, msg=op)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("op", list(BINARY))
def test_binary_dtype_matches_torch(op, dtype):
    ta = torch.ones(3, dtype=tdt(dtype))
    try:
        expected = getattr(torch, op)(ta, ta).dtype
    except RuntimeError:
        pytest.skip(f"torch 1.13 has no CPU {op} for {dtype}")
    a = kiln.ones(3, dtype=kdt(dtype))
    assert str(getattr(kiln, op)(a, a).dtype).replace("kiln.", "") == str(expected).replace("torch.", "")


OPERATORS = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "floor_divide": operator.floordiv, "remainder": operator.mod, "pow": operator.pow,
    "bitwise_and": operator.and_, "bitwise_or": operator.or_, "bitwise_xor": operator.xor,
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt,
    "ge": operator.ge,
}


@pytest.mark.parametrize("dtype", ["int32", "int64", "float32", "float64"])
@pytest.mark.parametrize("op", list(OPERATORS))
def test_operators_tensor_tensor(op, dtype, rng):
    _, kind, (ka, kb) = BINARY[op]
    a, va = make_binary_input(rng, (3, 4), dtype, "transposed", ka)
    b, vb = make_binary_input(rng, (4,), dtype, "contig", kb)
    if binary_result_dtype(kind, dtype) is None:
        with pytest.raises(kiln.DTypeError):
            OPERATORS[op](a, b)
        return
    expected, out = binary_expected(op, dtype, va, vb)
    assert_close(OPERATORS[op](a, b), expected, out)


# Python scalars on either side; scalars keep the tensor's dtype within a category.
SCALARS = {"int": 3, "negint": -2, "float": 2.5, "negfloat": -1.5, "bool": True}


def scalar_result(op, tensor_dtype, scalar):
    """(compute dtype, result dtype) by torch's promotion rules."""
    common = str(torch.result_type(torch.ones(2, dtype=tdt(tensor_dtype)), scalar)).replace("torch.", "")
    kind = BINARY[op][1]
    if kind in ("compare", "logical"):
        return common, "bool"
    if kind == "float" and not is_float(common):
        return "float32", "float32"
    return common, common


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("scalar", list(SCALARS))
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "floor_divide", "remainder", "pow",
                                "maximum", "minimum", "atan2", "eq", "lt", "ge", "logical_and",
                                "bitwise_and", "bitwise_xor"])
def test_binary_with_python_scalar(op, scalar, side, rng):
    s = SCALARS[scalar]
    for dtype in ["uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64"]:
        if dtype == "uint8" and s < 0:
            continue
        kind_a = {"pow": "base", "floor_divide": "dyadic", "remainder": "dyadic"}.get(op, "any")
        if side == "left" and op in ("floor_divide", "remainder", "div"):
            kind_a = "divisor"
        if side == "left" and op == "pow":
            kind_a = "exponent"
        x, vx = make_binary_input(rng, (2, 3), dtype, "sliced", kind_a)
        compute, out = scalar_result(op, dtype, s)
        kind = BINARY[op][1]
        msg = f"{op}: {dtype} tensor, scalar {s!r} on the {side}"
        if kind == "bitwise" and is_float(compute):
            with pytest.raises(kiln.DTypeError):
                getattr(kiln, op)(x, s) if side == "right" else getattr(kiln, op)(s, x)
            continue
        if op == "pow" and side == "right" and not is_float(compute) and s < 0:
            continue  # integer to a negative power: torch raises, kiln gives 0 / +-1
        if is_float(compute):
            tv, sv = vx.astype(np.float64), np.float64(s)
        else:
            tv, sv = vx.astype(np.dtype(compute)), np.array(s).astype(np.dtype(compute))
        ref = BINARY[op][0]
        with np.errstate(all="ignore"):
            e = ref(tv, sv) if side == "right" else ref(sv, tv)
        e = round_to(e, out) if is_float(out) else np.asarray(e).astype(np.dtype(out))
        got = getattr(kiln, op)(x, s) if side == "right" else getattr(kiln, op)(s, x)
        assert_close(got, e, out, msg=msg)
        if op in OPERATORS:
            got = OPERATORS[op](x, s) if side == "right" else OPERATORS[op](s, x)
            assert_close(got, e, out, msg="operator " + msg)


def test_unary_operators(rng):
    x, v = make_input(rng, (3, 4), "float32", "transposed")
    assert_close(-x, -v, "float32")
    assert_close(+x, v, "float32")
    assert_close(abs(x), np.abs(v), "float32")
    i, vi = make_input(rng, (5,), "int32")
    assert_close(~i, ~vi, "int32")
    b, vb = make_input(rng, (5,), "bool")
    assert_close(~b, ~vb, "bool")
    with pytest.raises(kiln.DTypeError):
        ~x


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_logical_not_and_bitwise_not(dtype, rng):
    x, v = make_input(rng, (4, 5), dtype, "transposed", "few" if dtype != "bool" else "any")
    assert_close(kiln.logical_not(x), np.logical_not(v), "bool")
    assert_close(x.logical_not(), np.logical_not(v), "bool")
    if is_float(dtype):
        with pytest.raises(kiln.DTypeError):
            kiln.bitwise_not(x)
    else:
        assert_close(kiln.bitwise_not(x), np.invert(v), dtype)


# ---- division by zero ----

@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_integer_division_by_zero_does_not_crash(dtype):
    a = kiln.tensor([7, 0, 5, 100], dtype=kdt(dtype))
    z = kiln.zeros(4, dtype=kdt(dtype))
    # NumPy's convention (with a warning): 0 for both
    assert (a // z).tolist() == [0, 0, 0, 0]
    assert (a % z).tolist() == [0, 0, 0, 0]
    assert (a // 0).tolist() == [0, 0, 0, 0]
    assert (a % 0).tolist() == [0, 0, 0, 0]
    assert kiln.floor_divide(7, z).tolist() == [0, 0, 0, 0]
    d = a / z  # true division computes in float32
    assert d.dtype == kiln.float32
    np.testing.assert_array_equal(d.numpy(), np.array([np.inf, np.nan, np.inf, np.inf], np.float32))


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64"])
def test_integer_min_divided_by_minus_one_does_not_crash(dtype):
    lo = np.iinfo(np.dtype(dtype)).min
    a = kiln.tensor([lo, lo, 7], dtype=kdt(dtype))
    b = kiln.tensor([-1, 1, -1], dtype=kdt(dtype))
    assert (a // b).tolist() == [lo, lo, -7]  # wraps, as torch and NumPy
    assert (a % b).tolist() == [0, 0, 0]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_float_division_by_zero(dtype):
    a = kiln.tensor([1.0, -1.0, 0.0, 3.0], dtype=kdt(dtype))
    z = kiln.tensor([0.0, 0.0, 0.0, -0.0], dtype=kdt(dtype))
    e = np.array([np.inf, -np.inf, np.nan, -np.inf])
    assert_close(a / z, e, dtype)
    assert_close(a // z, torch.floor_divide(torch.tensor([1.0, -1, 0, 3]), torch.tensor([0.0, 0, 0, -0.0])).numpy(),
                 dtype)


def test_floor_divide_and_remainder_python_semantics():
    # the result of % takes the divisor's sign; // rounds toward -inf
    for dtype in ["int32", "int64", "float32", "float64"]:
        a = kiln.tensor([7, -7, 7, -7], dtype=kdt(dtype))
        b = kiln.tensor([2, 2, -2, -2], dtype=kdt(dtype))
        assert (a // b).tolist() == [3, -4, -4, 3]
        assert (a % b).tolist() == [1, 1, -1, -1]


def test_float_floor_divide_is_consistent_with_remainder():
    a = kiln.tensor([1.0, 1.0], dtype=kiln.float64)
    b = kiln.tensor([0.1, 0.1], dtype=kiln.float64)
    assert (a // b).tolist() == [1.0 // 0.1] * 2
    assert (a // 0.1).tolist() == [9.0, 9.0]


def test_integer_pow_negative_exponent_does_not_crash():
    a = kiln.tensor([1, -1, 2, -1, 0], dtype=kiln.int64)
    b = kiln.tensor([-3, -3, -1, -2, 3], dtype=kiln.int64)
    r = a ** b  # torch raises here; kiln defines 1**n=1, (-1)**n=+-1, else 0 (no crash either way)
    assert r.tolist() == [1, -1, 0, 1, 0]


def test_integer_overflow_wraps():
    a = kiln.tensor([250, 10], dtype=kiln.uint8)
    assert (a + 10).tolist() == [4, 20]
    assert (a * 2).tolist() == [244, 20]
    b = kiln.tensor([127, -128], dtype=kiln.int8)
    assert (b + 1).tolist() == [-128, -127]
    assert (-b).tolist() == [-127, -128]
    assert kiln.tensor([3], dtype=kiln.int32).pow(40).tolist() == [int(np.int32(3) ** np.int32(40))]


# ---- clamp and where ----

@pytest.mark.parametrize("dtype", ["uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32",
                                   "float64"])
def test_clamp(dtype, rng):
    x, v = make_input(rng, (5, 6), dtype, "transposed", "small")
    for lo, hi in [(0, 2), (-1, None), (None, 1), (2, 1), (0.5, 2.5), (-1.5, None)]:
        if dtype == "uint8" and ((lo is not None and lo < 0) or (hi is not None and hi < 0)):
            continue
        # torch's promotion: a float bound makes an integer tensor float32
        float_bound = isinstance(lo, float) or isinstance(hi, float)
        out = dtype if is_float(dtype) or not float_bound else "float32"
        e = v.astype(np.float64)
        if lo is not None:
            e = np.maximum(e, lo)
        if hi is not None:
            e = np.minimum(e, hi)
        e = round_to(e, out) if is_float(out) else e.astype(np.dtype(out))
        assert_close(x.clamp(lo, hi), e, out, msg=f"clamp({lo}, {hi})")
        assert_close(kiln.clamp(x, min=lo, max=hi), e, out, msg=f"kiln.clamp({lo}, {hi})")
    with pytest.raises((ValueError, TypeError)):
        x.clamp()


def test_clamp_inplace_and_nan():
    x = kiln.tensor([-2.0, 0.5, float("nan"), 7.0])
    y = x.clamp_(0, 1)
    assert y is x
    r = x.tolist()
    assert r[0] == 0 and r[1] == 0.5 and math.isnan(r[2]) and r[3] == 1.0
    assert kiln.clip(kiln.tensor([5.0]), max=2).tolist() == [2.0]


def test_where(rng):
    cond_v = rng.random((3, 1, 5)) < 0.5
    cond = kiln.from_numpy(cond_v.copy())
    a, va = make_input(rng, (4, 5), "float32", "transposed")
    b, vb = make_input(rng, (5,), "float64")
    got = kiln.where(cond, a, b)
    assert_close(got, np.where(cond_v, va, vb), "float64")
    # scalars take the other branch's dtype within a category, as torch
    i, vi = make_input(rng, (4, 5), "int32")
    assert_close(kiln.where(cond, i, 7), np.where(cond_v, vi, 7).astype(np.int32), "int32")
    assert_close(kiln.where(cond, i, 2.5), np.where(cond_v, vi, 2.5), "float32")
    assert_close(kiln.where(cond, 1.5, a), np.where(cond_v, 1.5, va), "float32")
    tb = torch.where(torch.from_numpy(cond_v), 1, 2.5)
    assert_close(kiln.where(cond, 1, 2.5), tb.numpy(), str(tb.dtype).replace("torch.", ""))
    assert_close(a.where(cond, 0.0), np.where(cond_v, va, 0.0), "float32")
    with pytest.raises(kiln.DTypeError):
        kiln.where(kiln.ones(5), a, b)
    with pytest.raises(kiln.ShapeError):
        kiln.where(cond, kiln.ones(3, 4), b)


# ---- in-place elementwise ----

@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "floor_divide", "remainder", "pow", "maximum",
                                "minimum", "atan2"])
def test_inplace_binary_methods(op, rng):
    _, _, (ka, kb) = BINARY[op]
    x, vx = make_binary_input(rng, (3, 4), "float32", "contig", ka)
    y, vy = make_binary_input(rng, (4,), "float32", "contig", kb)
    expected = getattr(kiln, op)(x, y).numpy().copy()
    v0 = x._version
    r = getattr(x, op + "_")(y)
    assert r is x
    assert x._version > v0
    np.testing.assert_array_equal(x.numpy(), expected)


@pytest.mark.parametrize("op", [o for o, (_, kind, _) in UNARY.items()])
def test_inplace_unary_methods(op, rng):
    _, _, kind_in = UNARY[op]
    x, v = make_input(rng, (4, 3), "float64", "contig", kind_in)
    expected = getattr(kiln, op)(x).numpy().copy()
    v0 = x._version
    r = getattr(x, op + "_")()
    assert r is x and x._version > v0
    np.testing.assert_array_equal(x.numpy(), expected)


def test_inplace_operators_keep_identity_and_dtype():
    x = kiln.ones(2, 3)
    ident = id(x)
    x += 1
    x *= kiln.tensor([1.0, 2.0, 3.0])
    x -= 0.5
    x /= 2
    x **= 2
    assert id(x) == ident and x.dtype == kiln.float32
    np.testing.assert_allclose(x.numpy(), ((2 * np.array([[1, 2, 3]] * 2) - 0.5) / 2) ** 2, rtol=1e-6)
    i = kiln.arange(6)
    i += 2
    i //= 2
    i %= 2
    i &= 1
    i |= 2
    i ^= 1
    assert i.dtype == kiln.int64
    assert i.tolist() == (((((np.arange(6) + 2) // 2) % 2) & 1 | 2) ^ 1).tolist()


def test_inplace_result_type_must_fit():
    i = kiln.arange(4)
    with pytest.raises(kiln.DTypeError):
        i += 1.5  # float result into an int64 tensor, as torch refuses
    with pytest.raises(kiln.DTypeError):
        i /= 2
    with pytest.raises(kiln.DTypeError):
        i.exp_()
    assert i.tolist() == [0, 1, 2, 3]
    f = kiln.zeros(4)
    f += kiln.arange(4)  # int into float is fine
    assert f.tolist() == [0, 1, 2, 3]
    b = kiln.zeros(4, dtype=kiln.bool)
    with pytest.raises(kiln.DTypeError):
        b += 1
    x = kiln.zeros(4)
    with pytest.raises(kiln.ShapeError):
        x += kiln.ones(3, 4)  # the output would need to grow
    assert x.tolist() == [0, 0, 0, 0]
