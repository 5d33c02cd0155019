"""Creation functions (against torch's shapes, dtypes and values) and random
numbers (reproducibility, ranges, moments)."""
import math

import numpy as np
import pytest
import torch

import kiln
from conftest import ALL_DTYPES, FLOAT_DTYPES, INT_DTYPES, kdt, tdt


def same_as_torch(k, t, msg=""):
    assert str(k.dtype).replace("kiln.", "") == str(t.dtype).replace("torch.", ""), msg
    assert tuple(k.shape) == tuple(t.shape), msg
    g = k.to(kiln.float64).numpy() if k.dtype != kiln.bool else k.numpy()
    e = t.to(torch.float64).numpy() if t.dtype != torch.bool else t.numpy()
    np.testing.assert_array_equal(g, e, err_msg=msg)


SIZES = [(), (0,), (1,), (3,), (2, 3), (2, 0, 4), (1, 1, 1, 5)]


@pytest.mark.parametrize("dtype", ALL_DTYPES + [None])
def test_zeros_ones_full_empty(dtype):
    kd = kdt(dtype) if dtype else None
    td = tdt(dtype) if dtype else None
    for size in SIZES:
        same_as_torch(kiln.zeros(size, dtype=kd), torch.zeros(size, dtype=td), f"zeros{size}")
        same_as_torch(kiln.ones(*size, dtype=kd), torch.ones(size, dtype=td), f"ones{size}")
        same_as_torch(kiln.zeros(list(size), dtype=kd), torch.zeros(list(size), dtype=td))
        e = kiln.empty(*size, dtype=kd)
        assert e.shape == size and e.dtype == (kd or kiln.float32)
        assert e.is_contiguous() or e.numel() == 0  # see test_views.py::test_empty_tensors_are_contiguous
        if dtype != "bool":
            same_as_torch(kiln.full(size, 7, dtype=kd), torch.full(size, 7, dtype=td), f"full{size}")
    # full infers its dtype from the value, as torch
    same_as_torch(kiln.full((2,), 3), torch.full((2,), 3))
    same_as_torch(kiln.full((2,), 2.5), torch.full((2,), 2.5))
    same_as_torch(kiln.full((2,), True), torch.full((2,), True))
    same_as_torch(kiln.full([2, 1], -1.5, dtype=kiln.float64), torch.full([2, 1], -1.5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_like_functions(dtype, rng):
    x = kiln.ones(2, 3, dtype=kdt(dtype)).T
    for fn in (kiln.zeros_like, kiln.ones_like, kiln.empty_like):
        r = fn(x)
        assert r.shape == (3, 2) and r.dtype == kdt(dtype)
    assert kiln.zeros_like(x, dtype=kiln.float64).dtype == kiln.float64
    assert kiln.ones_like(x).to(kiln.float64).numpy().tolist() == [[1.0, 1.0]] * 3
    if dtype != "bool":
        assert kiln.full_like(x, 5).to(kiln.float64).numpy().tolist() == [[5.0, 5.0]] * 3
    assert x.new_zeros(4).dtype == kdt(dtype) and x.new_ones((1, 2)).shape == (1, 2)
    assert x.new_full((2,), 1).dtype == kdt(dtype)
    assert x.new_tensor([1, 0]).dtype == kdt(dtype)


ARANGE = [(5,), (0,), (2, 9), (2, 9, 3), (10, 2, -3), (0, 1, 0.1), (1.5, 4.0), (-1, 1, 0.25), (0.0, 2.0, 0.3),
          (1, 10, 2.5), (5, 5), (-3, 3), (0, 5, 1.5), (3, -3, -1)]


@pytest.mark.parametrize("args", ARANGE, ids=str)
def test_arange(args):
    same_as_torch(kiln.arange(*args), torch.arange(*args), str(args))
    for dtype in ["int32", "float64", "float16", "bfloat16"]:
        if dtype.startswith("int") and any(isinstance(a, float) for a in args):
            continue
        k = kiln.arange(*args, dtype=kdt(dtype))
        t = torch.arange(*args, dtype=tdt(dtype))
        assert k.dtype == kdt(dtype) and k.shape == tuple(t.shape)
        np.testing.assert_allclose(k.to(kiln.float64).numpy(), t.to(torch.float64).numpy(), rtol=1e-2)


def test_arange_errors():
    with pytest.raises(ValueError):
        kiln.arange(0, 5, 0)
    with pytest.raises(ValueError):
        kiln.arange(5, 0, 1)
    with pytest.raises(ValueError):
        kiln.arange(0, math.inf)
    with pytest.raises(kiln.DTypeError):
        kiln.arange(0, "5")


@pytest.mark.parametrize("args", [(0, 1, 5), (-2, 2, 7), (3, -1, 4), (0, 1, 1),
                                  (0, 1, 0), (0.5, 0.5, 3), (0, 10, 101), (-1, 1, 2)], ids=str)
def test_linspace(args):
    for dtype in [None, "float64", "float16"]:
        k = kiln.linspace(*args, dtype=kdt(dtype) if dtype else None)
        t = torch.linspace(*args, dtype=tdt(dtype) if dtype else None)
        assert k.dtype == (kdt(dtype) if dtype else kiln.float32) and k.shape == tuple(t.shape)
        rtol = {"float16": 1e-3, None: 1e-6}.get(dtype, 1e-12)
        np.testing.assert_allclose(k.to(kiln.float64).numpy(), t.to(torch.float64).numpy(), rtol=rtol, atol=rtol)
        if k.numel():
            assert k[-1].item() == t[-1].item()  # exactly `end`
    with pytest.raises(ValueError):
        kiln.linspace(0, 1, -1)


@pytest.mark.parametrize("n,m", [(0, None), (1, None), (3, None), (2, 4), (4, 2), (3, 0)])
def test_eye(n, m):
    for dtype in [None, "int64", "bool", "float16"]:
        kd, td = (kdt(dtype), tdt(dtype)) if dtype else (None, None)
        t = torch.eye(n, m, dtype=td) if m is not None else torch.eye(n, dtype=td)
        same_as_torch(kiln.eye(n, m, dtype=kd), t)
    with pytest.raises(ValueError):
        kiln.eye(-1)


# ---- tensor() ----

@pytest.mark.parametrize("data", [
    1, 2.5, True, [1, 2, 3], [1.5, 2, 3], [True, False], [[1, 2], [3, 4]], [[1.0], [2.0]], [], [[], []],
    [1, 2.5], [True, 2], [[[1]]], [0.1, 1e-8, 3e20], (1, 2), [np.int32(3), np.int32(4)],
], ids=repr)
def test_tensor_from_python_data(data):
    same_as_torch(kiln.tensor(data), torch.tensor(data), repr(data))
    for dtype in ALL_DTYPES:
        try:
            expected = torch.tensor(data, dtype=tdt(dtype))
        except RuntimeError:  # torch refuses values that overflow the dtype
            continue
        same_as_torch(kiln.tensor(data, dtype=kdt(dtype)), expected, f"{data!r} as {dtype}")


@pytest.mark.parametrize("np_dtype", [np.bool_, np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32,
                                      np.float64])
def test_tensor_from_numpy_keeps_dtype_and_copies(np_dtype, rng):
    a = (rng.standard_normal((3, 4)) * 10).astype(np_dtype)
    t = kiln.tensor(a)
    same_as_torch(t, torch.tensor(a))
    a[...] = 0  # tensor() copies
    assert t.numpy().any()
    same_as_torch(kiln.tensor(a.T), torch.tensor(a.T))  # non-contiguous input
    assert kiln.as_tensor(a).shape == (3, 4)
    same_as_torch(kiln.tensor(a, dtype=kiln.float64), torch.tensor(a, dtype=torch.float64))


def test_tensor_copies_its_input():
    a = np.arange(4.0)
    t = kiln.tensor(a)
    a[0] = 100
    assert t.tolist() == [0, 1, 2, 3]
    k = kiln.tensor(t)
    t.add_(1)
    assert k.tolist() == [0, 1, 2, 3]
    assert kiln.tensor(t, dtype=kiln.int32).dtype == kiln.int32
    assert kiln.is_tensor(t) and not kiln.is_tensor(a)


def test_tensor_errors():
    with pytest.raises(kiln.ShapeError):
        kiln.tensor([[1, 2], [3]])
    with pytest.raises(kiln.DTypeError):
        kiln.tensor(["a", "b"])
    with pytest.raises(kiln.DTypeError):
        kiln.tensor([1], dtype="complex")
    with pytest.raises(kiln.DTypeError):
        kiln.tensor(np.array([1 + 2j]))
    with pytest.raises((kiln.DTypeError, ValueError, OverflowError)):
        kiln.tensor([2**70])
    with pytest.raises(kiln.DeviceError):
        kiln.tensor([1.0], device="cuda")
    with pytest.raises(kiln.DeviceError):
        kiln.zeros(2, device="cuda:0")
    assert kiln.zeros(2, device="cpu").device == "cpu"


def test_creation_errors():
    with pytest.raises(kiln.ShapeError):
        kiln.zeros(-1)
    with pytest.raises(kiln.ShapeError):
        kiln.empty(2, -3)
    with pytest.raises(TypeError):
        kiln.zeros(2.5)
    with pytest.raises(kiln.DTypeError):
        kiln.full((2,), "x")
    with pytest.raises(kiln.DTypeError):
        kiln.ones(2, dtype="int16")


# ---- random ----

@pytest.mark.parametrize("fn", ["rand", "randn", "randint", "normal"])
def test_manual_seed_reproducibility(fn):
    def draw():
        if fn == "randint":
            return kiln.randint(0, 1000, (50,)), kiln.randint(-5, 5, (3, 7))
        if fn == "normal":
            return kiln.normal(2.0, 3.0, (50,)), kiln.normal(0.0, 1.0, (3, 7))
        return getattr(kiln, fn)(50), getattr(kiln, fn)(3, 7, dtype=kiln.float64)

    kiln.manual_seed(1234)
    a1, a2 = draw()
    kiln.manual_seed(1234)
    b1, b2 = draw()
    assert a1.tolist() == b1.tolist() and a2.tolist() == b2.tolist()
    assert a1.tolist() != a2.flatten()[:50].tolist()  # consecutive draws differ
    kiln.manual_seed(4321)
    c1, _ = draw()
    assert c1.tolist() != a1.tolist()
    # a draw of n numbers is the prefix of a longer one from the same state (counter-based)
    kiln.manual_seed(7)
    long = getattr(kiln, "rand")(100)
    kiln.manual_seed(7)
    short = kiln.rand(40)
    assert long[:40].tolist() == short.tolist()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rand_range_and_moments(dtype):
    kiln.manual_seed(0)
    x = kiln.rand(200000, dtype=kdt(dtype)).numpy().astype(np.float64)
    assert x.min() >= 0.0 and x.max() < 1.0
    assert abs(x.mean() - 0.5) < 0.005 and abs(x.var() - 1 / 12) < 0.002
    hist, _ = np.histogram(x, bins=10, range=(0, 1))
    assert np.all(np.abs(hist / len(x) - 0.1) < 0.005)
    assert kiln.rand(2, 3).shape == (2, 3) and kiln.rand((4,)).dtype == kiln.float32


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_rand_16bit_excludes_one(dtype):
    kiln.manual_seed(0)
    x = kiln.rand(100000, dtype=kdt(dtype)).to(kiln.float32).numpy()
    assert x.min() >= 0.0 and x.max() < 1.0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_randn_moments(dtype):
    kiln.manual_seed(1)
    x = kiln.randn(200000, dtype=kdt(dtype)).to(kiln.float64).numpy()
    assert np.all(np.isfinite(x))
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01
    assert abs(np.mean(x ** 3)) < 0.03 and abs(np.mean(x ** 4) - 3) < 0.1  # skew 0, kurtosis 3
    assert abs(np.mean(np.abs(x) < 1) - 0.6827) < 0.005
    y = kiln.normal(5.0, 0.5, (100000,)).numpy()
    assert abs(y.mean() - 5) < 0.01 and abs(y.std() - 0.5) < 0.01
    r = kiln.randn_like(kiln.zeros(3, 4, dtype=kdt(dtype)))
    assert r.shape == (3, 4) and r.dtype == kdt(dtype)
    assert kiln.rand_like(kiln.zeros(2, dtype=kiln.float64)).dtype == kiln.float64


@pytest.mark.parametrize("dtype", INT_DTYPES + [None])
def test_randint(dtype):
    kiln.manual_seed(3)
    lo, hi = (0, 7) if dtype == "uint8" else (-3, 7)
    x = kiln.randint(lo, hi, (100000,), dtype=kdt(dtype) if dtype else None)
    assert x.dtype == (kdt(dtype) if dtype else kiln.int64)
    v = x.numpy()
    assert v.min() == lo and v.max() == hi - 1
    counts = np.bincount(v.astype(np.int64) - lo)
    assert np.all(np.abs(counts / len(v) - 1 / (hi - lo)) < 0.01)
    assert kiln.randint(5, size=(3,)).numpy().max() < 5
    big = kiln.randint(0, 2**62, (1000,)).numpy()
    assert big.max() > 2**60


def test_random_errors():
    with pytest.raises(kiln.DTypeError):
        kiln.rand(3, dtype=kiln.int32)
    with pytest.raises(kiln.DTypeError):
        kiln.randn(3, dtype=kiln.bool)
    with pytest.raises(ValueError):
        kiln.randint(5, 5, (3,))
    with pytest.raises(ValueError):
        kiln.normal(0.0, -1.0, (3,))
    with pytest.raises(TypeError):
        kiln.randint(5)
