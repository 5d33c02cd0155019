"""Shared helpers for kiln's Python tests.

Reference values come from NumPy (and from PyTorch 1.13 CPU where NumPy has no
such op, or for PyTorch-specific rules such as type promotion). Inputs are
drawn from a seeded NumPy RNG.

Tolerances (see TOLERANCES and assert_close):
  float64   rtol 1e-10, atol 1e-12
  float32   rtol 1e-5,  atol 1e-6   (kiln's float exp/tanh are ~1-2 ulp polynomials)
  float16   rtol 1e-3,  atol 1e-3
  bfloat16  rtol 1e-2,  atol 1e-2   (compared through float32)
  integer and bool results must match exactly.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

# Compiled code goes to a cache of this run, not the user's ~/.cache/kiln
# (read once, when the cache is first used).
if "KILN_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ["KILN_CACHE_DIR"] = tempfile.mkdtemp(prefix="kiln-test-cache-")
    atexit.register(shutil.rmtree, os.environ["KILN_CACHE_DIR"], True)

import kiln  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ALL_DTYPES = ["bool", "uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64"]
INT_DTYPES = ["uint8", "int8", "int32", "int64"]
FLOAT_DTYPES = ["float16", "bfloat16", "float32", "float64"]
NUMERIC_DTYPES = INT_DTYPES + FLOAT_DTYPES

TOLERANCES = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-6),
    "float16": (1e-3, 1e-3),
    "bfloat16": (1e-2, 1e-2),
}

NP_DTYPES = {"bool": np.bool_, "uint8": np.uint8, "int8": np.int8, "int32": np.int32,
             "int64": np.int64, "float16": np.float16, "bfloat16": np.float32,
             "float32": np.float32, "float64": np.float64}


def kdt(name):
    """kiln dtype object from a name."""
    return getattr(kiln, name)


def tdt(name):
    """torch dtype object from a name."""
    return getattr(torch, name)


def dname(dtype):
    """Name of a kiln dtype ('float32')."""
    return str(dtype).replace("kiln.", "")


def is_float(name):
    return name in FLOAT_DTYPES


def round_to(values, name):
    """float64 values rounded to the precision of dtype `name` (returned as float64)."""
    values = np.asarray(values, dtype=np.float64)
    if name == "bfloat16":
        if values.ndim == 0:
            return torch.tensor(float(values)).to(torch.bfloat16).to(torch.float64).numpy()
        return torch.from_numpy(values).to(torch.bfloat16).to(torch.float64).numpy()
    if name in ("float16", "float32"):
        return values.astype(NP_DTYPES[name]).astype(np.float64)
    return values


def to_numpy(t):
    """A copy of a kiln tensor as a NumPy array (bfloat16 through float32)."""
    assert isinstance(t, kiln.Tensor), f"expected a kiln.Tensor, got {type(t).__name__}"
    if t.dtype == kiln.bfloat16:
        return np.array(t.to(kiln.float32).numpy(), copy=True)
    return np.array(t.numpy(), copy=True)


def tolerance(name, rtol=None, atol=None):
    r, a = TOLERANCES.get(name, (0.0, 0.0))
    return (r if rtol is None else rtol), (a if atol is None else atol)


def assert_close(actual, expected, dtype=None, rtol=None, atol=None, check_dtype=True, msg=""):
    """Checks a kiln tensor against expected values (array-like).

    `dtype` (a name or kiln dtype) is the dtype `actual` must have; by default
    it is taken from `expected` (NumPy dtype). Float comparisons use the
    tolerance of that dtype (TOLERANCES) unless given; NaNs must match NaNs
    and infinities must match exactly. Integer and bool results are exact.
    """
    expected = np.asarray(expected)
    if dtype is None:
        dtype = {np.dtype(v): k for k, v in NP_DTYPES.items() if k != "bfloat16"}[expected.dtype]
    elif not isinstance(dtype, str):
        dtype = dname(dtype)
    assert isinstance(actual, kiln.Tensor), f"{msg}: expected a kiln.Tensor, got {type(actual).__name__}"
    if check_dtype:
        assert actual.dtype == kdt(dtype), f"{msg}: dtype {actual.dtype}, expected kiln.{dtype}"
    assert tuple(actual.shape) == expected.shape, f"{msg}: shape {tuple(actual.shape)}, expected {expected.shape}"
    got = to_numpy(actual)
    if is_float(dname(actual.dtype)):
        r, a = tolerance(dname(actual.dtype), rtol, atol)
        with np.errstate(over="ignore", invalid="ignore"):
            exp = round_to(expected.astype(np.float64), dname(actual.dtype))  # overflow -> inf, as kiln
        g = got.astype(np.float64)
        # Infinities must agree exactly (assert_allclose alone would accept
        # inf vs a huge finite value only if within tolerance: keep it strict).
        np.testing.assert_array_equal(np.isposinf(g), np.isposinf(exp), err_msg=f"{msg}: +inf positions")
        np.testing.assert_array_equal(np.isneginf(g), np.isneginf(exp), err_msg=f"{msg}: -inf positions")
        np.testing.assert_allclose(g, exp, rtol=r, atol=a, equal_nan=True, err_msg=msg)
    else:
        np.testing.assert_array_equal(got, expected.astype(got.dtype) if expected.size else expected,
                                      err_msg=msg)


# ---- inputs ----

def random_values(rng, shape, name, kind="any"):
    """Values of dtype `name` (NumPy array; floats as float64 already rounded to
    the dtype). kind: 'any' | 'positive' | 'unit' (|x| < 1) | 'small' (ints in
    [-4, 4] / floats in [-3, 3]) | 'nonzero'."""
    shape = tuple(shape)
    if name == "bool":
        return rng.random(shape) < 0.5 if kind != "nonzero" else np.ones(shape, bool)
    if name in INT_DTYPES:
        info = np.iinfo(NP_DTYPES[name])
        if kind == "positive" or kind == "nonzero" and name == "uint8":
            lo, hi = 1, 11
        elif name == "uint8":
            lo, hi = 0, 20 if kind == "small" else 256
        elif kind == "small":
            lo, hi = -4, 5
        else:
            lo, hi = max(info.min, -100), min(info.max, 100)
        v = rng.integers(lo, hi, size=shape, dtype=np.int64)
        if kind == "nonzero":
            v[v == 0] = 1
        return v.astype(NP_DTYPES[name])
    if kind == "positive":
        v = rng.uniform(0.1, 5.0, shape)
    elif kind == "unit":
        v = rng.uniform(-0.95, 0.95, shape)
    elif kind == "small":
        v = rng.uniform(-3, 3, shape)
    else:
        v = rng.standard_normal(shape) * 3
    v = np.array(v, dtype=np.float64)  # (0-d draws come back as Python floats)
    if kind == "nonzero":
        v[np.abs(v) < 0.1] = 0.5
    return round_to(v, name)


def kiln_from_values(values, name):
    """A contiguous kiln tensor of dtype `name` holding `values` exactly."""
    values = np.asarray(values)
    if name == "bfloat16":
        return kiln.from_numpy(np.array(values, dtype=np.float32, copy=True, order="C")).to(kiln.bfloat16)
    return kiln.from_numpy(np.array(values, dtype=NP_DTYPES[name], copy=True, order="C"))


LAYOUTS = ["contig", "transposed", "sliced", "expanded"]


def make_input(rng, shape, name, layout="contig", kind="any"):
    """(kiln tensor, reference values) with the given logical shape and memory
    layout: 'contig', 'transposed' (a permuted view), 'sliced' (a view with
    step 2 and an offset in the last dim) or 'expanded' (stride 0 in dim 0)."""
    shape = tuple(shape)
    if layout == "expanded" and len(shape) > 0:
        base = random_values(rng, (1,) + shape[1:], name, kind)
        return layout_tensor(np.broadcast_to(base, shape), name, layout)
    return layout_tensor(random_values(rng, shape, name, kind), name, layout)


def layout_tensor(values, name, layout="contig"):
    """(kiln tensor holding `values` in the given layout, the values it holds).
    For 'expanded', dim 0 of the result repeats values[0]."""
    values = np.asarray(values)
    shape = values.shape
    if len(shape) == 0:
        layout = "contig"
    if layout == "contig":
        return kiln_from_values(values, name), values
    if layout == "expanded":
        base = values[:1]
        return kiln_from_values(base, name).expand(*shape), np.broadcast_to(base, shape).copy()
    if layout == "transposed":
        perm = tuple(reversed(range(len(shape))))
        t = kiln_from_values(np.ascontiguousarray(values.transpose(perm)), name).permute(*perm)
        return t, values
    if layout == "sliced":
        big = np.zeros(shape[:-1] + (2 * shape[-1] + 1,), dtype=values.dtype)
        big[..., 1::2] = values
        return kiln_from_values(big, name)[..., 1::2], values
    raise ValueError(layout)


# Shapes and layouts every elementwise op is run on: 0-d, 0- and 1-sized
# dims, odd sizes, and non-contiguous views, plus sizes large enough to be
# split across threads.
ELEMENTWISE_CASES = [
    ((), "contig"), ((0,), "contig"), ((1,), "contig"), ((7,), "contig"), ((3, 5), "contig"),
    ((2, 0, 3), "contig"), ((1, 4, 1), "contig"), ((5, 3), "transposed"), ((3, 4, 5), "transposed"),
    ((4, 7), "sliced"), ((2, 3, 5), "sliced"), ((6, 5), "expanded"), ((3, 2, 4), "expanded"),
    ((67, 129), "transposed"), ((50001,), "sliced"),
]

# Pairs of shapes that broadcast, with the layouts used for each operand.
BROADCAST_CASES = [
    ((), (), "contig", "contig"), ((5,), (), "contig", "contig"), ((), (5,), "contig", "sliced"),
    ((0,), (1,), "contig", "contig"), ((1,), (0,), "contig", "contig"), ((7,), (7,), "sliced", "contig"),
    ((3, 1), (1, 4), "contig", "contig"), ((2, 3, 4), (4,), "transposed", "sliced"),
    ((2, 1, 4), (3, 1), "expanded", "contig"), ((2, 0, 3), (1, 3), "contig", "expanded"),
    ((5, 3), (5, 3), "transposed", "transposed"), ((4, 6), (4, 6), "expanded", "sliced"),
    ((33, 65), (65,), "transposed", "contig"), ((30001,), (30001,), "sliced", "contig"),
]


@pytest.fixture(autouse=True)
def _seed_torch(request):
    """Seed PyTorch from the test's id: weights that tests copy from torch
    modules are then the same on every run, so a failure reproduces."""
    import zlib
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's id, so each test is reproducible."""
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def graph_executor_jit():
    """kiln.jit without compile=True runs the graph executor, which is bitwise equal to eager:
    for the tests of tracing itself (compiled code is tested in test_jit_compile*.py)."""
    before = kiln.config.compile_by_default
    kiln.config.compile_by_default = False
    yield
    kiln.config.compile_by_default = before
