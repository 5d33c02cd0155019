"""Reductions with dim=None/int/tuple, keepdim and negative dims, against NumPy
(torch for logsumexp and for PyTorch-specific dtype rules)."""
import math
import warnings

import numpy as np
import pytest
import torch

import kiln
from conftest import (ALL_DTYPES, FLOAT_DTYPES, LAYOUTS, assert_close, is_float, layout_tensor, make_input,
                      random_values, round_to)

# (shape, dim): 0-d, 1-sized and 0-sized dims, negative dims, tuples, long
# rows and long columns (the vectorized and multi-threaded paths).
CASES = [
    ((), None), ((), 0), ((), -1), ((7,), None), ((7,), 0), ((7,), (-1,)), ((3, 5), 1), ((3, 5), -2),
    ((3, 5), (0, 1)), ((2, 3, 4), (0, 2)), ((2, 3, 4), (-1, 0)), ((2, 3, 4), 1), ((4, 1, 5), 1),
    ((2, 0, 3), 2), ((2, 0, 3), 1), ((2, 0, 3), None), ((5, 6, 7), (1,)), ((3, 4, 5, 2), (1, 3)),
    ((33, 65), 0), ((1000, 3), 0), ((3, 1001), 1), ((70000,), None),
]


def np_axis(dim, ndim):
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if ndim == 0:
        return None  # dim 0 / -1 of a 0-d tensor
    return tuple(d % ndim for d in dims)


def cases():
    for i, (shape, dim) in enumerate(CASES):
        for keepdim in (False, True):
            yield shape, dim, keepdim, LAYOUTS[i % len(LAYOUTS)]


def reduce_kwargs(dim, keepdim):
    kw = {"keepdim": keepdim}
    if dim is not None:
        kw["dim"] = dim
    return kw


def np_reduce(fn, v, dim, keepdim, **kw):
    axis = np_axis(dim, v.ndim)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty slices, ddof >= n
        r = fn(v, axis=axis, keepdims=keepdim, **kw)
    return np.asarray(r)


def sum_dtype(name):
    return name if is_float(name) else "int64"


REDUCTIONS = {
    # name: (NumPy reference on float64/int64 values, input kind, result dtype rule, empty behaviour)
    "sum": (np.sum, "any", sum_dtype, "identity"),
    "prod": (np.prod, "near_one", sum_dtype, "identity"),
    "mean": (np.mean, "any", lambda n: n if is_float(n) else None, "nan"),
    "amax": (np.max, "any", lambda n: n, "error"),
    "amin": (np.min, "any", lambda n: n, "error"),
    "any": (np.any, "sparse", lambda n: "bool", "identity"),
    "all": (np.all, "dense", lambda n: "bool", "identity"),
}


def reduction_values(rng, shape, name, kind):
    if kind == "near_one":
        if is_float(name):
            return round_to(rng.uniform(0.8, 1.25, shape), name)
        if name == "bool":
            return rng.random(shape) < 0.9
        if name == "uint8":
            return (rng.random(shape) < 0.98).astype(np.uint8)
        return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.dtype(name))
    if kind in ("sparse", "dense"):
        p = 0.05 if kind == "sparse" else 0.95
        v = random_values(rng, shape, name, "nonzero")
        return np.where(rng.random(shape) < p, v, np.zeros_like(v))
    return random_values(rng, shape, name, kind)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("op", list(REDUCTIONS))
def test_reduction(op, dtype, rng):
    ref, kind, rule, empty = REDUCTIONS[op]
    out = rule(dtype)
    for shape, dim, keepdim, layout in cases():
        values = reduction_values(rng, shape, dtype, kind)
        x, v = layout_tensor(values, dtype, layout)
        kw = reduce_kwargs(dim, keepdim)
        msg = f"{op}({dtype} {shape} {layout}, dim={dim}, keepdim={keepdim})"
        if out is None:
            with pytest.raises(kiln.DTypeError):
                getattr(x, op)(**kw)
            return
        axis = np_axis(dim, v.ndim)
        reduced_count = v.size if axis is None else int(np.prod([v.shape[a] for a in axis]))
        if reduced_count == 0 and empty == "error":
            with pytest.raises(IndexError):
                getattr(x, op)(**kw)
            continue
        if is_float(out):
            expected = np_reduce(ref, v.astype(np.float64), dim, keepdim)
        elif out == "bool":
            expected = np_reduce(ref, v, dim, keepdim)
        elif op in ("amax", "amin"):
            expected = np_reduce(ref, v, dim, keepdim)
        else:
            expected = np_reduce(ref, v.astype(np.int64), dim, keepdim)
        got = getattr(x, op)(**kw)
        assert_close(got, expected, out, msg=msg)
        if op in ("sum", "mean", "prod", "amax", "amin", "any", "all"):
            assert_close(getattr(kiln, op)(x, **kw), expected, out, msg="kiln." + msg)


def test_sum_dtype_argument(rng):
    x, v = make_input(rng, (4, 5), "float32", "transposed")
    got = x.sum(dim=1, dtype=kiln.float64)
    assert_close(got, v.astype(np.float64).sum(1), "float64")
    i = kiln.tensor([100, 100, 100], dtype=kiln.int8)
    assert i.sum().dtype == kiln.int64 and i.sum().item() == 300
    assert i.sum(dtype=kiln.int8).dtype == kiln.int8
    assert i.sum(dtype=kiln.float16).item() == 300.0
    b = kiln.tensor([True, True, False])
    assert b.sum().dtype == kiln.int64 and b.sum().item() == 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("op", ["var", "std"])
def test_var_std(op, dtype, rng):
    np_fn = np.var if op == "var" else np.std
    for shape, dim, keepdim, layout in cases():
        x, v = make_input(rng, shape, dtype, layout)
        for correction in (0, 1, 2):
            expected = np_reduce(np_fn, v.astype(np.float64), dim, keepdim, ddof=correction)
            axis = np_axis(dim, v.ndim)
            n = v.size if axis is None else int(np.prod([v.shape[a] for a in axis]))
            if n - correction <= 0:  # torch (and kiln): divide by max(n - c, 0)
                expected = np.where(np.isnan(expected), expected, np.nan if n == 0 else np.inf)
            msg = f"{op}({shape} {layout}, dim={dim}, keepdim={keepdim}, correction={correction})"
            got = getattr(x, op)(correction=correction, **reduce_kwargs(dim, keepdim))
            if n - correction <= 0:
                assert got.shape == expected.shape
                g = got.to(kiln.float64).numpy()
                assert np.all(np.isnan(g) | np.isinf(g)), msg
                continue
            assert_close(got, expected, dtype, msg=msg)
        # unbiased=True/False
        if shape and v.size > 2:
            assert_close(getattr(x, op)(unbiased=False), np_fn(v.astype(np.float64)), dtype)
            assert_close(getattr(x, op)(), np_fn(v.astype(np.float64), ddof=1), dtype)
            assert_close(getattr(kiln, op)(x, 0, True), np_fn(v.astype(np.float64), axis=0, ddof=1), dtype)
    with pytest.raises(kiln.DTypeError):
        getattr(kiln.arange(5), op)()


def test_var_is_accurate_with_large_mean():
    v = (1e4 + np.random.default_rng(0).standard_normal(10000)).astype(np.float32)
    assert_close(kiln.from_numpy(v).var(), np.var(v.astype(np.float64), ddof=1), "float32", rtol=1e-4)


@pytest.mark.parametrize("dtype", ["int32", "int64", "float16", "bfloat16", "float32", "float64"])
def test_logsumexp(dtype, rng):
    out = dtype if is_float(dtype) else "float32"
    for shape, dim, keepdim, layout in cases():
        if dim is None:
            dim = tuple(range(len(shape))) if shape else 0
        x, v = make_input(rng, shape, dtype, layout)
        expected = torch.logsumexp(torch.from_numpy(v.astype(np.float64)), dim=np_axis(dim, v.ndim) or (),
                                   keepdim=keepdim).numpy() if v.ndim else v.astype(np.float64)
        got = x.logsumexp(dim, keepdim=keepdim)
        assert_close(got, expected, out, msg=f"logsumexp({shape} {layout}, {dim}, {keepdim})")
        assert_close(kiln.logsumexp(x, dim=dim, keepdim=keepdim), expected, out)


def test_logsumexp_extremes():
    x = kiln.tensor([[1000.0, 1000.0], [-1000.0, -1000.0], [-math.inf, -math.inf], [math.inf, 1.0],
                     [math.nan, 1.0], [-math.inf, 0.0]])
    t = torch.logsumexp(torch.tensor(x.tolist()), dim=1).numpy()
    assert_close(x.logsumexp(1), t, "float32")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_max_min_with_dim(dtype, rng):
    for shape, dim, keepdim, layout in cases():
        if not isinstance(dim, int):
            continue
        if dtype == "bool":
            values = rng.random(shape) < 0.5
        else:  # few distinct values: ties must give the first index
            values = rng.integers(0, 4, size=shape).astype(np.float64 if is_float(dtype) else np.dtype(dtype))
        x, v = layout_tensor(values, dtype, layout)
        axis = dim % v.ndim if v.ndim else None
        for name, np_val, np_idx in (("max", np.max, np.argmax), ("min", np.min, np.argmin)):
            msg = f"{name}({dtype} {shape} {layout}, dim={dim}, keepdim={keepdim})"
            if v.ndim and v.shape[axis] == 0:
                with pytest.raises(IndexError):
                    getattr(x, name)(dim, keepdim)
                continue
            r = getattr(x, name)(dim, keepdim=keepdim)
            values_, indices = r
            assert r.values is values_ or r.values.tolist() == values_.tolist()
            ev = np_val(v, axis=axis, keepdims=keepdim) if v.ndim else v
            ei = np_idx(v, axis=axis) if v.ndim else np.array(0)
            if keepdim and v.ndim:
                ei = np.expand_dims(ei, axis)
            assert_close(r.values, np.asarray(ev), dtype, msg=msg)
            assert_close(r.indices, np.asarray(ei), "int64", msg=msg)
            fn = kiln.max if name == "max" else kiln.min
            assert_close(fn(x, dim=dim, keepdim=keepdim).indices, np.asarray(ei), "int64", msg=msg)
            am = x.argmax(dim, keepdim=keepdim) if name == "max" else x.argmin(dim, keepdim=keepdim)
            assert_close(am, np.asarray(ei), "int64", msg="arg" + msg)


@pytest.mark.parametrize("dtype", ["uint8", "int32", "float16", "float32", "float64"])
def test_argmax_argmin_flattened(dtype, rng):
    for shape, layout in [((7,), "contig"), ((3, 5), "transposed"), ((2, 3, 4), "sliced"), ((4, 5), "expanded"),
                          ((), "contig"), ((1000, 3), "transposed")]:
        values = rng.integers(0, 5, size=shape).astype(np.float64 if is_float(dtype) else np.dtype(dtype))
        x, v = layout_tensor(values, dtype, layout)
        assert_close(x.argmax(), np.asarray(np.argmax(v)), "int64", msg=f"{shape} {layout}")
        assert_close(x.argmin(), np.asarray(np.argmin(v)), "int64")
        assert_close(kiln.argmax(x), np.asarray(np.argmax(v)), "int64")
        if v.ndim:
            keep = x.argmax(keepdim=True)
            assert keep.shape == (1,) * v.ndim and keep.item() == np.argmax(v)
    with pytest.raises(IndexError):
        kiln.zeros(0).argmax()
    with pytest.raises(IndexError):
        kiln.zeros(3).argmax(1)


def test_max_min_without_dim_and_with_tensor(rng):
    x, v = make_input(rng, (4, 6), "float32", "transposed")
    assert_close(x.max(), np.asarray(v.max()), "float32")
    assert_close(kiln.min(x), np.asarray(v.min()), "float32")
    y, w = make_input(rng, (6,), "float32")
    assert_close(x.max(y), np.maximum(v, w), "float32")
    assert_close(x.min(y), np.minimum(v, w), "float32")
    with pytest.raises(IndexError):
        kiln.zeros(0).max()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_nan_propagation(dtype):
    x = kiln.tensor([[1.0, math.nan, 3.0], [4.0, 5.0, 6.0]], dtype=getattr(kiln, dtype))
    for op in ("sum", "mean", "amax", "amin", "prod"):
        r = getattr(x, op)(dim=1).to(kiln.float64).tolist()
        assert math.isnan(r[0]) and not math.isnan(r[1]), op
    assert math.isnan(x.max().item()) and math.isnan(x.min().item())
    assert x.argmax(1).tolist() == [1, 2] and x.argmin(1).tolist() == [1, 0]
    mx = x.max(1)
    assert math.isnan(mx.values[0].item()) and mx.indices.tolist() == [1, 2]
    assert x.any().item() is True  # nan is truthy


def test_reduction_errors():
    x = kiln.zeros(2, 3)
    for op in ("sum", "mean", "prod", "amax", "amin", "any", "all"):
        with pytest.raises(IndexError):
            getattr(x, op)(dim=2)
        with pytest.raises(IndexError):
            getattr(x, op)(dim=(0, -3))
        with pytest.raises(ValueError):
            getattr(x, op)(dim=(1, -1))  # repeated dim
        with pytest.raises(kiln.DTypeError):
            getattr(x, op)(dim=1.5)
    for op in ("var", "std", "logsumexp"):
        with pytest.raises(IndexError):
            getattr(x, op)(dim=5)
    with pytest.raises(IndexError):
        x.max(2)
    with pytest.raises(IndexError):
        x.argmin(-3)
    with pytest.raises(kiln.DTypeError):
        kiln.arange(4).mean()
    with pytest.raises(kiln.DTypeError):
        kiln.tensor([True]).mean()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_long_float_sums_are_accurate(dtype):
    v = np.full(200000, 0.1)
    x = kiln.tensor(v, dtype=getattr(kiln, dtype))
    exact = round_to(np.full(1, 0.1), dtype)[0] * 200000
    assert_close(x.sum(), np.asarray(exact), dtype)
    assert_close(x.mean(), np.asarray(round_to(np.full(1, 0.1), dtype)[0]), dtype)
