"""from_numpy / .numpy() memory sharing, NumPy operands and conversions."""
import gc

import numpy as np
import pytest

import kiln
from conftest import ALL_DTYPES, NP_DTYPES, assert_close, kdt

NUMPY_DTYPES = [d for d in ALL_DTYPES if d != "bfloat16"]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_from_numpy_is_zero_copy(dtype, rng):
    a = (rng.standard_normal((3, 4)) * 10).astype(NP_DTYPES[dtype])
    t = kiln.from_numpy(a)
    assert t.dtype == kdt(dtype) and t.shape == (3, 4)
    assert t.data_ptr() == a.ctypes.data
    a[1, 2] = 1  # array -> tensor
    assert t[1, 2].item() == a[1, 2]
    t[0, 0] = 0  # tensor -> array
    assert a[0, 0] == 0
    if dtype != "bool":
        t.add_(1 if dtype != "float16" else 0.5)
        assert_close(t, a, dtype)
        np.testing.assert_array_equal(t.numpy(), a)


@pytest.mark.parametrize("view", ["T", "step", "offset", "step2d", "broadcast"])
def test_from_numpy_strided_views_share_memory(view):
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    a = {"T": base.T, "step": base[:, ::3], "offset": base[2:, 1:], "step2d": base[1::2, ::4],
         "broadcast": np.broadcast_to(base[0], (4, 10))}[view]
    t = kiln.from_numpy(a)
    np.testing.assert_array_equal(t.numpy(), a)
    if view == "broadcast":  # read-only: copied (writing through it would change every row)
        return
    assert t.stride() == tuple(s // 4 for s in a.strides)
    assert t.data_ptr() == a.ctypes.data
    base += 1
    np.testing.assert_array_equal(t.numpy(), a)


def test_from_numpy_copies_what_it_cannot_view():
    a = np.arange(10, dtype=np.float32)
    r = a[::-1]  # negative stride
    t = kiln.from_numpy(r)
    assert t.tolist() == r.tolist()
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3)
    assert kiln.from_numpy(big_endian).tolist() == big_endian.tolist()
    raw = np.zeros(4 * 5 + 1, dtype=np.uint8)
    unaligned = raw[1:].view(np.float32)
    unaligned[:] = [1.5, 2.5, 3.5, 4.5, 5.5]
    assert kiln.from_numpy(unaligned).tolist() == [1.5, 2.5, 3.5, 4.5, 5.5]
    ro = np.arange(3.0)
    ro.setflags(write=False)
    t = kiln.from_numpy(ro)
    t.add_(1)  # must not write through to a read-only array
    assert ro.tolist() == [0, 1, 2] and t.tolist() == [1, 2, 3]


def test_from_numpy_zero_d_and_empty():
    t = kiln.from_numpy(np.array(2.5))
    assert t.shape == () and t.item() == 2.5
    e = kiln.from_numpy(np.zeros((0, 3), np.int32))
    assert e.shape == (0, 3) and e.dtype == kiln.int32
    assert kiln.from_numpy(np.zeros((3, 0), np.float32)).sum(0).tolist() == []


def test_inplace_on_empty_numpy_tensor():
    t = kiln.from_numpy(np.zeros((3, 0), np.float32))
    t.add_(1)
    t.T.mul_(2)
    assert t.shape == (3, 0)


@pytest.mark.parametrize("np_dtype", [np.int16, np.uint16, np.uint32, np.uint64, np.complex64, np.float128,
                                      np.object_, "U3", "datetime64[s]"])
def test_from_numpy_unsupported_dtype(np_dtype):
    a = np.zeros(3, dtype=np_dtype)
    with pytest.raises(kiln.DTypeError):
        kiln.from_numpy(a)
    with pytest.raises(TypeError):
        kiln.tensor(a)


def test_from_numpy_keeps_array_alive():
    t = kiln.from_numpy(np.arange(1000, dtype=np.int64) * 3)  # the temporary array has no other owner
    gc.collect()
    assert t[999].item() == 2997 and t.sum().item() == 3 * 999 * 1000 // 2
    views = [kiln.from_numpy(np.full(10, i, dtype=np.float32))[::2] for i in range(50)]
    gc.collect()
    assert [v[0].item() for v in views] == list(range(50))


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_numpy_shares_memory(dtype):
    t = kiln.ones(3, 4, dtype=kdt(dtype))
    a = t.numpy()
    assert a.dtype == NP_DTYPES[dtype] and a.shape == (3, 4)
    assert a.ctypes.data == t.data_ptr()
    a[1, 1] = 0
    assert t[1, 1].item() == 0
    t[2] = 0
    assert not a[2].any()
    b = np.asarray(t)
    assert np.shares_memory(a, b)


def test_numpy_of_views_and_lifetime():
    t = kiln.arange(24, dtype=kiln.float64).reshape(4, 6)
    v = t.T[::2]
    a = v.numpy()
    np.testing.assert_array_equal(a, np.arange(24.0).reshape(4, 6).T[::2])
    assert a.strides == tuple(s * 8 for s in v.stride())
    t.mul_(2)
    np.testing.assert_array_equal(a, 2 * np.arange(24.0).reshape(4, 6).T[::2])
    a = kiln.arange(5).numpy()  # the tensor itself is gone: the array keeps its storage alive
    gc.collect()
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert np.array(kiln.ones(2), dtype=np.float64).dtype == np.float64
    m = memoryview(kiln.arange(6, dtype=kiln.int32).reshape(2, 3))
    assert m.format == "i" and m.shape == (2, 3) and m.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_bfloat16_has_no_numpy_dtype():
    t = kiln.ones(3, dtype=kiln.bfloat16)
    with pytest.raises(kiln.DTypeError):
        t.numpy()
    assert t.tolist() == [1.0, 1.0, 1.0]
    assert t.to(kiln.float32).numpy().tolist() == [1.0, 1.0, 1.0]


def test_numpy_operands():
    t = kiln.arange(4, dtype=kiln.float32)
    a = np.arange(4, dtype=np.float64)
    r = t + a  # an ndarray operand is a dimensioned tensor
    assert isinstance(r, kiln.Tensor) and r.dtype == kiln.float64
    r = a + t  # NumPy defers to the tensor's reflected operator
    assert isinstance(r, kiln.Tensor) and r.dtype == kiln.float64 and r.tolist() == [0, 2, 4, 6]
    r = a * t
    assert isinstance(r, kiln.Tensor) and r.tolist() == [0, 1, 4, 9]
    assert isinstance(a < t, kiln.Tensor)
    r = t * np.float64(2.0)  # NumPy scalars are scalars: the tensor keeps its dtype
    assert r.dtype == kiln.float32 and r.tolist() == [0, 2, 4, 6]
    r = kiln.arange(3, dtype=kiln.int32) + np.int64(1)
    assert r.dtype == kiln.int32 and r.tolist() == [1, 2, 3]
    assert (t + [1, 1, 1, 1]).tolist() == [1, 2, 3, 4]
    assert (t == t.numpy()).all().item()
    e = np.exp(t)  # NumPy functions accept tensors through __array__
    np.testing.assert_allclose(e, np.exp(np.arange(4.0)), rtol=1e-6)
    assert kiln.tensor(np.float32(2.5)).dtype == kiln.float32


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_tolist(dtype, rng):
    v = rng.integers(0, 5, size=(2, 3))
    t = kiln.tensor(v, dtype=kdt(dtype))
    expected = v.astype(NP_DTYPES[dtype]).tolist()
    assert t.tolist() == expected
    assert t[0, 1].tolist() == expected[0][1]
