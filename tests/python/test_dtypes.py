"""Type promotion (vs torch.result_type) and dtype conversion (vs torch's casts)."""
import math

import numpy as np
import pytest
import torch

import kiln
from conftest import ALL_DTYPES, INT_DTYPES, assert_close, dname, is_float, kdt, tdt

# kiln has no int16: uint8 with int8 promotes to int32 where torch gives int16.
KILN_FOR_TORCH = {"int16": "int32"}


def torch_promotion(dtype):
    name = str(dtype).replace("torch.", "")
    return KILN_FOR_TORCH.get(name, name)


def kt(name, shape=(2,)):
    return kiln.ones(*shape, dtype=kdt(name)) if shape else kiln.ones((), dtype=kdt(name))


def tt(name, shape=(2,)):
    return torch.ones(shape, dtype=tdt(name))


@pytest.mark.parametrize("a", ALL_DTYPES)
def test_promote_types(a):
    for b in ALL_DTYPES:
        got = dname(kiln.promote_types(kdt(a), kdt(b)))
        assert got == torch_promotion(torch.promote_types(tdt(a), tdt(b))), (a, b)


@pytest.mark.parametrize("a", ALL_DTYPES)
def test_result_type_tensor_tensor(a):
    for b in ALL_DTYPES:
        expected = torch_promotion(torch.result_type(tt(a), tt(b)))
        assert dname(kiln.result_type(kt(a), kt(b))) == expected, (a, b)
        assert dname((kt(a) + kt(b)).dtype) == expected, (a, b)
        assert dname(kiln.maximum(kt(a), kt(b)).dtype) == expected, (a, b)
        assert (kt(a) < kt(b)).dtype == kiln.bool


@pytest.mark.parametrize("a", ALL_DTYPES)
def test_result_type_zero_dim_tensors(a):
    """A 0-d tensor only decides the dtype when its category is higher."""
    for b in ALL_DTYPES:
        for sa, sb in [((2,), ()), ((), (2,)), ((), ())]:
            expected = torch_promotion(torch.result_type(tt(a, sa), tt(b, sb)))
            got = kiln.result_type(kt(a, sa), kt(b, sb))
            assert dname(got) == expected, (a, sa, b, sb)
            assert dname(kiln.mul(kt(a, sa), kt(b, sb)).dtype) == expected, (a, sa, b, sb)


SCALARS = [0, 3, -2, 2**40, 1.5, -0.0, 1e10, True, False]


@pytest.mark.parametrize("a", ALL_DTYPES)
def test_result_type_tensor_scalar(a):
    for s in SCALARS:
        for shape in [(2,), ()]:
            expected = torch_promotion(torch.result_type(tt(a, shape), s))
            assert dname(kiln.result_type(kt(a, shape), s)) == expected, (a, shape, s)
            assert dname(kiln.result_type(s, kt(a, shape))) == expected, (a, shape, s)
            if a == "bool" or (isinstance(s, int) and not isinstance(s, bool) and abs(s) > 100):
                continue
            assert dname(kiln.maximum(kt(a, shape), s).dtype) == expected, (a, s)
            assert dname(kiln.maximum(s, kt(a, shape)).dtype) == expected, (a, s)


@pytest.mark.parametrize("op", ["add", "mul", "div", "maximum", "lt", "eq"])
@pytest.mark.parametrize("a", ALL_DTYPES)
def test_mixed_dtype_values(op, a, rng):
    """Mixed-dtype binary ops convert both operands to the promoted dtype first."""
    for b in ALL_DTYPES:
        if op in ("add", "mul", "maximum") and a == b == "bool":
            continue
        va = rng.integers(0 if "uint8" in (a, b) else -3, 4, size=(3, 4))
        vb = rng.integers(1, 4, size=(4,))
        if a == "bool":
            va = va > 0
        if b == "bool":
            vb = vb > 1
        xa = kiln.tensor(va, dtype=kdt(a))
        xb = kiln.tensor(vb, dtype=kdt(b))
        common = dname(kiln.result_type(xa, xb))
        got = getattr(kiln, op)(xa, xb)
        ea = va.astype(np.float64) if is_float(common) else va.astype(np.int64)
        eb = vb.astype(np.float64) if is_float(common) else vb.astype(np.int64)
        ref = {"add": np.add, "mul": np.multiply, "div": np.true_divide, "maximum": np.maximum,
               "lt": np.less, "eq": np.equal}[op]
        with np.errstate(all="ignore"):
            e = ref(ea, eb)
        if op in ("lt", "eq"):
            out = "bool"
        elif op == "div":
            out = common if is_float(common) else "float32"
        else:
            out = common
        if out == "bool" and op not in ("lt", "eq"):
            e = e != 0
        assert_close(got, e if is_float(out) else e.astype(np.dtype(out)), out, msg=f"{op}({a}, {b})")


# ---- conversion ----

def torch_values(t):
    return t.to(torch.float64).numpy() if t.dtype.is_floating_point else t.numpy()


@pytest.mark.parametrize("src", ALL_DTYPES)
def test_to_dtype_matches_torch(src, rng):
    if src == "bool":
        v = rng.random(20) < 0.5
    elif src == "uint8":
        v = rng.integers(0, 256, size=20)
    elif src in INT_DTYPES:
        v = rng.integers(-100, 101, size=20)
    else:  # non-negative floats with fractions: a cast to uint8 is then defined
        v = np.concatenate([rng.uniform(0, 120, 10), -rng.uniform(0, 120, 6), [0.0, -0.0, 0.5, 99.75]])
    t_all = torch.tensor(v).to(tdt(src))
    for dst in ALL_DTYPES:
        t_src = t_all
        if dst == "uint8" and src != "bool":  # negative values to uint8 are undefined in C++
            t_src = t_all[torch.from_numpy(torch_values(t_all) >= 0)]
        k_src = kiln.tensor(torch_values(t_src), dtype=kdt(src))
        expected = torch_values(t_src.to(tdt(dst)))
        got = k_src.to(kdt(dst))
        assert got.dtype == kdt(dst)
        got = got.numpy() if dst == "bool" else got.to(kiln.float64).numpy()
        np.testing.assert_array_equal(got, expected.astype(got.dtype), err_msg=f"{src} -> {dst}")


@pytest.mark.parametrize("dst", ["float16", "bfloat16"])
def test_float_to_16bit_rounding_matches_torch(dst, rng):
    """Round to nearest even, overflow to inf, NaN kept, subnormals kept."""
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-11,
                        1.0 + 3 * 2**-11, 65504.0, 65519.0, 65520.0, 70000.0, 1e-8, 3e-8, 6e-8, 1e-40,
                        3.3e38, 3.4e38, -3.4e38, 1e-45], dtype=np.float32)
    values = np.concatenate([special, (rng.standard_normal(2000) * 10.0 ** rng.integers(-8, 8, 2000))
                             .astype(np.float32)])
    expected = torch.from_numpy(values).to(tdt(dst)).to(torch.float64).numpy()
    got = kiln.from_numpy(values).to(kdt(dst)).to(kiln.float64).numpy()
    np.testing.assert_array_equal(got, expected)
    # float64 sources too
    values64 = values.astype(np.float64) * (1 + 1e-12)
    expected = torch.from_numpy(values64).to(tdt(dst)).to(torch.float64).numpy()
    got = kiln.from_numpy(values64).to(kdt(dst)).to(kiln.float64).numpy()
    np.testing.assert_array_equal(got, expected)


def test_to_same_dtype_returns_self_and_copy_flag():
    x = kiln.ones(3)
    assert x.to(kiln.float32) is x or x.to(kiln.float32).data_ptr() == x.data_ptr()
    c = x.to(kiln.float32, copy=True)
    assert c.data_ptr() != x.data_ptr()
    assert x.to(np.float16).dtype == kiln.float16
    assert x.to(dtype=kiln.int32).dtype == kiln.int32
    assert x.to("cpu").dtype == kiln.float32
    assert x.double().dtype == kiln.float64 and x.half().dtype == kiln.float16
    assert x.bfloat16().dtype == kiln.bfloat16 and x.long().dtype == kiln.int64
    assert x.int().dtype == kiln.int32 and x.bool().dtype == kiln.bool and x.float().dtype == kiln.float32
    assert x.type_as(kiln.zeros(1, dtype=kiln.uint8)).dtype == kiln.uint8


def test_dtype_objects():
    assert repr(kiln.float32) == "kiln.float32" and str(kiln.int64) == "kiln.int64"
    assert kiln.float == kiln.float32 and kiln.double == kiln.float64 and kiln.half == kiln.float16
    assert kiln.long == kiln.int64
    assert kiln.float32.itemsize == 4 and kiln.bfloat16.itemsize == 2 and kiln.bool.itemsize == 1
    assert kiln.float16.is_floating_point and not kiln.int32.is_floating_point
    for name in ALL_DTYPES:
        assert kiln.ones(2, dtype=name).dtype == kdt(name)
        assert kiln.ones(2, dtype=kdt(name)).element_size() == torch.ones(2, dtype=tdt(name)).element_size()
    with pytest.raises(kiln.DTypeError):
        kiln.ones(2, dtype="complex64")
    with pytest.raises(kiln.DTypeError):
        kiln.ones(2, dtype=np.int16)


def test_item_and_python_conversions():
    assert kiln.tensor(2.5).item() == 2.5 and isinstance(kiln.tensor(2.5).item(), float)
    assert kiln.tensor(3).item() == 3 and isinstance(kiln.tensor(3).item(), int)
    assert kiln.tensor(True).item() is True
    assert kiln.tensor([7], dtype=kiln.uint8).item() == 7
    assert float(kiln.tensor(1.5, dtype=kiln.bfloat16)) == 1.5
    assert int(kiln.tensor([-3.7])) == -3
    assert [10, 20, 30][kiln.tensor(1)] == 20  # __index__
    with pytest.raises(TypeError):
        [1, 2][kiln.tensor(1.0)]
    assert bool(kiln.tensor([1])) and not bool(kiln.tensor(0.0))
    with pytest.raises(ValueError):
        bool(kiln.tensor([1, 2]))
    with pytest.raises(ValueError):
        kiln.ones(2).item()
    assert math.isnan(kiln.tensor(float("nan")).item())
