"""__getitem__/__setitem__ against NumPy indexing, and the index ops
(index_select, gather, scatter_add, masked_fill, one_hot, nonzero)."""
import numpy as np
import pytest
import torch

import kiln
from conftest import (ALL_DTYPES, assert_close, is_float, kiln_from_values, layout_tensor, make_input,
                      random_values, tdt)

SHAPE = (4, 5, 6)
M = np.array  # index arrays; converted to kiln tensors for kiln


def to_kiln_index(idx):
    if isinstance(idx, np.ndarray):
        return kiln.from_numpy(idx.copy())
    if isinstance(idx, tuple):
        return tuple(to_kiln_index(i) for i in idx)
    return idx


MASK_45 = np.arange(20).reshape(4, 5) % 3 == 0
MASK_456 = np.arange(120).reshape(4, 5, 6) % 7 == 1

GETITEM = {
    "int": 0, "neg_int": -1, "ints2": (1, 2), "ints3": (1, -2, 3), "full": slice(None),
    "slice": slice(1, 3), "step": slice(None, None, 2), "neg_start": slice(-3, None),
    "step3_overrun": slice(1, 100, 3), "empty_slice": slice(5, 2), "neg_stop": slice(None, -1),
    "slice_int": (slice(None), 1), "ellipsis_int": (Ellipsis, 2), "int_ellipsis": (1, Ellipsis),
    "none": None, "none_int_none": (None, 1, None), "slice_none_slice": (slice(None), None, slice(1, 3)),
    "ellipsis_none": (Ellipsis, None), "ellipsis": Ellipsis, "empty_tuple": (),
    "steps_all": (slice(None, None, 3), slice(1, None, 2), slice(None, None, 4)),
    "int_array": M([0, 2, 3]), "neg_int_array": M([-1, 0, -4]), "int32_array": M([3, 1], dtype=np.int32),
    "list": [0, 2], "nested_list": [[0, 1], [2, 3]], "column_array": M([[0], [3]]),
    "repeated": M([1, 1, 0, 1]), "empty_array": M([], dtype=np.int64),
    "two_arrays": (M([0, 2]), M([1, 4])), "broadcast_arrays": (M([[0], [2]]), M([1, 4, 0])),
    "slice_array": (slice(None), M([0, 4])), "separated_arrays": (M([1, 2]), slice(None), M([0, 5])),
    "ellipsis_array": (Ellipsis, M([1, 2])), "array_slice_step": (M([3, 0]), slice(None, None, 2)),
    "three_arrays": (M([0, 1]), M([2, 3]), M([4, 5])), "none_array": (None, M([1, 2])),
    "bool_1d": M([True, False, True, True]), "bool_dim1": (slice(None), M([True, False, True, False, True])),
    "bool_all_false": M([False] * 4), "bool_0d_tensor_true": M(True), "bool_0d_tensor_false": M(False),
    "bool_with_slice": (M([True, False, True, True]), slice(1, 3)),
    "bool_2d": MASK_45, "bool_3d": MASK_456, "bool_2d_after_slice": (slice(None), MASK_456[0, :, :]),
    "python_true": True, "python_false": (None, False),
}

XFAIL_GETITEM = {}


def _params(table, xfails):
    return [pytest.param(k, marks=[pytest.mark.xfail(reason=xfails[k], strict=True)] if k in xfails else [])
            for k in table]


def _base(layout):
    values = np.arange(120, dtype=np.float32).reshape(SHAPE) * 0.5 - 7
    if layout == "contig":
        return kiln.from_numpy(values.copy()), values
    # a non-contiguous tensor with the same logical values
    return kiln.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1))).permute(1, 2, 0), values


@pytest.mark.parametrize("layout", ["contig", "transposed"])
@pytest.mark.parametrize("name", _params(GETITEM, XFAIL_GETITEM))
def test_getitem_matches_numpy(name, layout):
    x, a = _base(layout)
    idx = GETITEM[name]
    expected = a[idx]
    got = x[to_kiln_index(idx)]
    assert_close(got, expected, "float32", msg=f"x[{idx!r}]")


BASIC = ["int", "neg_int", "ints2", "full", "slice", "step", "neg_start", "step3_overrun", "slice_int",
         "ellipsis_int", "none", "none_int_none", "slice_none_slice", "ellipsis_none", "ellipsis",
         "empty_tuple", "steps_all"]


@pytest.mark.parametrize("name", BASIC)
def test_basic_indexing_returns_a_view(name):
    x, _ = _base("contig")
    v = x[GETITEM[name]]
    before = v.numpy().copy()
    x.add_(1)
    np.testing.assert_array_equal(v.numpy(), before + 1)


def test_advanced_indexing_returns_a_copy():
    x, _ = _base("contig")
    v = x[kiln.tensor([0, 1])]
    m = x[kiln.tensor([True, False, True, False])]
    before, mb = v.numpy().copy(), m.numpy().copy()
    x.add_(1)
    np.testing.assert_array_equal(v.numpy(), before)
    np.testing.assert_array_equal(m.numpy(), mb)


def test_int_with_separated_array_follows_torch():
    """x[1, :, [0, 2]]: torch (and kiln) apply the int first, so the result is (5, 2);
    NumPy counts the int as an advanced index and gives (2, 5)."""
    x, a = _base("contig")
    t = torch.from_numpy(a)
    got = x[1, :, [0, 2]]
    assert_close(got, t[1, :, [0, 2]].numpy(), "float32")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_getitem_every_dtype(dtype, rng):
    x, v = make_input(rng, (5, 7), dtype, "sliced")
    assert_close(x[1:4, ::2], v[1:4, ::2], dtype)
    assert_close(x[kiln.tensor([4, 0, 2])], v[[4, 0, 2]], dtype)
    assert_close(x[:, kiln.tensor([6, 1])], v[:, [6, 1]], dtype)
    mask = rng.random(5) < 0.5
    assert_close(x[kiln.from_numpy(mask)], v[mask], dtype)
    assert_close(x[-1, 3], v[-1, 3], dtype)


SETITEM = ["int", "neg_int", "ints2", "ints3", "slice", "step", "step3_overrun", "empty_slice", "slice_int",
           "ellipsis_int", "none_int_none", "ellipsis", "steps_all", "int_array", "neg_int_array",
           "int32_array", "list", "column_array", "empty_array", "two_arrays", "broadcast_arrays",
           "slice_array", "separated_arrays", "ellipsis_array", "array_slice_step", "three_arrays",
           "bool_1d", "bool_dim1", "bool_all_false", "bool_0d_tensor_true", "bool_with_slice",
           "bool_2d", "bool_3d"]


@pytest.mark.parametrize("value_kind", ["scalar", "full", "broadcast"])
@pytest.mark.parametrize("name", _params(SETITEM, XFAIL_GETITEM))
def test_setitem_matches_numpy(name, value_kind, rng):
    x, a = _base("transposed")
    a = a.copy()
    idx = GETITEM[name]
    target_shape = a[idx].shape
    if value_kind == "scalar":
        value_np, value_k = 99.0, 99.0
    elif value_kind == "full":
        value_np = rng.integers(-50, 50, size=target_shape).astype(np.float32)
        value_k = kiln.from_numpy(value_np.copy())
    else:
        if len(target_shape) == 0:
            pytest.skip("nothing to broadcast")
        value_np = rng.integers(-50, 50, size=target_shape[-1:]).astype(np.int64)
        value_k = kiln.from_numpy(value_np.copy())  # int values into a float tensor
    v0 = x._version
    a[idx] = value_np
    x[to_kiln_index(idx)] = value_k
    assert_close(x, a, "float32", msg=f"x[{idx!r}] = {value_kind}")
    assert x._version > v0 or a[idx].size == 0


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_setitem_every_dtype(dtype, rng):
    x, v = make_input(rng, (5, 7), dtype, "contig")
    v = v.copy()
    val = random_values(rng, (3, 4), dtype)
    x[1:4, ::2] = kiln_from_values(val, dtype)
    v[1:4, ::2] = val
    x[kiln.tensor([0, 4]), 1] = kiln_from_values(val[0, :2], dtype)
    v[[0, 4], 1] = val[0, :2]
    x[0] = 1
    v[0] = 1
    assert_close(x, v, dtype)


def test_setitem_with_list_and_numpy_values():
    x = kiln.zeros(3, 4)
    x[0] = [1, 2, 3, 4]
    x[1] = np.array([5.0, 6.0, 7.0, 8.0])
    x[2, 1:3] = (9, 10)
    assert x.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [0, 9, 10, 0]]
    x[1][x[1] > 6] = 0
    assert x.tolist() == [[1, 2, 3, 4], [5, 6, 0, 0], [0, 9, 10, 0]]
    x[1:] = 0
    x[:, kiln.tensor([3, 0])] = kiln.tensor([[-1.0, -2.0]])
    assert x.tolist() == [[-2, 2, 3, -1], [-2, 0, 0, -1], [-2, 0, 0, -1]]


def test_setitem_errors_leave_tensor_unchanged():
    x = kiln.zeros(3, 4)
    with pytest.raises(kiln.ShapeError):
        x[0] = kiln.ones(3)
    with pytest.raises(kiln.ShapeError):
        x[kiln.tensor([0, 1])] = kiln.ones(3, 4)
    with pytest.raises(IndexError):
        x[3] = 1
    assert x.tolist() == [[0] * 4] * 3
    with pytest.raises(IndexError):
        x[kiln.tensor([0, 5])] = 1  # (like torch, rows before the bad index may be written)


@pytest.mark.parametrize("index", [
    4, -5, (0, 5), (0, 0, 6), (0, 0, 0, 0), (Ellipsis, Ellipsis), M([4]), M([0, -5]), [7],
    (M([0, 1]), M([0, 1, 2])), M([True, False]), M([[True] * 5] * 3), 1.5, "a", M([0.0, 1.0]),
    (slice(None), slice(1.5, 2)), (slice(None, None, -1)),
], ids=lambda i: repr(i).replace(" ", "")[:40])
def test_bad_index_raises(index):
    x, _ = _base("contig")
    with pytest.raises((IndexError, ValueError, TypeError)) as info:
        x[to_kiln_index(index)]
    if not isinstance(index, slice) or index.step is None:
        assert isinstance(info.value, IndexError), f"{type(info.value).__name__}: {info.value}"


def test_negative_step_slice_raises_value_error():
    with pytest.raises(ValueError):
        kiln.arange(5)[::-1]


def test_index_zero_dim_tensor():
    s = kiln.tensor(3.0)
    assert s[...].shape == () and s[None].shape == (1,) and s[()].item() == 3.0
    with pytest.raises(IndexError):
        s[0]
    with pytest.raises(IndexError):
        s[:]


# ---- index ops ----

@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_index_select(dtype, rng):
    x, v = make_input(rng, (4, 5, 3), dtype, "transposed")
    for dim in [0, 1, 2, -1]:
        n = v.shape[dim]
        for idx in [rng.integers(0, n, size=7), np.array([n - 1]), np.array([], np.int64)]:
            for itype in [np.int64, np.int32]:
                i = kiln.from_numpy(idx.astype(itype))
                assert_close(x.index_select(dim, i), np.take(v, idx, axis=dim), dtype)
                assert_close(kiln.index_select(x, dim, i), np.take(v, idx, axis=dim), dtype)
    assert_close(x.index_select(1, kiln.tensor(2)), np.take(v, [2], axis=1), dtype)


def test_index_select_errors():
    x = kiln.zeros(3, 4)
    with pytest.raises(IndexError):
        x.index_select(0, kiln.tensor([3]))
    with pytest.raises(IndexError):
        x.index_select(1, kiln.tensor([-5]))
    with pytest.raises(IndexError):
        x.index_select(2, kiln.tensor([0]))
    with pytest.raises(kiln.DTypeError):
        x.index_select(0, kiln.tensor([0.0]))
    with pytest.raises(kiln.ShapeError):
        x.index_select(0, kiln.tensor([[0]]))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_gather(dtype, rng):
    x, v = make_input(rng, (4, 5, 3), dtype, "sliced")
    tx = torch.from_numpy(v.astype(np.float64))
    for dim in [0, 1, 2, -2]:
        ishape = [3, 4, 2]
        ishape[dim] = 6
        idx = rng.integers(0, v.shape[dim], size=ishape)
        expected = torch.gather(tx, dim, torch.from_numpy(idx)).numpy()
        got = x.gather(dim, kiln.from_numpy(idx))
        assert_close(got, expected.astype(v.dtype) if not is_float(dtype) else expected, dtype)
        assert_close(kiln.gather(x, dim, kiln.from_numpy(idx.astype(np.int32)).T.contiguous().T), expected
                     if is_float(dtype) else expected.astype(v.dtype), dtype)
    with pytest.raises(IndexError):
        x.gather(0, kiln.full((1, 1, 1), 4))
    with pytest.raises(kiln.ShapeError):
        x.gather(0, kiln.zeros(2, 2, dtype=kiln.int64))
    with pytest.raises(IndexError):
        x.gather(3, kiln.zeros(1, 1, 1, dtype=kiln.int64))


@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "float16", "bfloat16", "float32", "float64"])
def test_scatter_add(dtype, rng):
    tdtype = tdt(dtype) if dtype not in ("float16", "bfloat16") else torch.float32
    x, v = make_input(rng, (4, 5), dtype, "transposed", "small" if dtype != "uint8" else "any")
    for dim in [0, 1, -1]:
        ishape = (6, 3) if dim == 0 else (3, 7)
        idx = rng.integers(0, v.shape[dim], size=ishape)  # with repeats
        src_v = random_values(rng, (7, 8), dtype, "small" if dtype != "uint8" else "positive")
        expected = torch.from_numpy(v.copy()).to(tdtype).scatter_add(
            dim, torch.from_numpy(idx), torch.from_numpy(np.asarray(src_v)).to(tdtype))
        got = x.scatter_add(dim, kiln.from_numpy(idx), kiln_from_values(src_v, dtype))
        expected = expected.to(torch.float64).numpy() if is_float(dtype) else expected.numpy()
        assert_close(got, expected, dtype, msg=f"dim {dim}")
        got = kiln.scatter_add(x, dim, kiln.from_numpy(idx), kiln_from_values(src_v, dtype))
        assert_close(got, expected, dtype, msg=f"dim {dim}")
    assert_close(x, v, dtype, msg="scatter_add is out of place")


def test_scatter_add_errors():
    x = kiln.zeros(3, 4)
    with pytest.raises(kiln.DTypeError):
        x.scatter_add(0, kiln.zeros(1, 1, dtype=kiln.int64), kiln.ones(1, 1, dtype=kiln.float64))
    with pytest.raises(IndexError):
        x.scatter_add(0, kiln.full((1, 1), 3), kiln.ones(1, 1))
    with pytest.raises(IndexError):
        x.scatter_add(1, kiln.full((1, 1), -1), kiln.ones(1, 1))
    with pytest.raises(kiln.ShapeError):
        x.scatter_add(0, kiln.zeros(2, 2, dtype=kiln.int64), kiln.ones(1, 1))
    assert x.tolist() == [[0] * 4] * 3


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_masked_fill(dtype, rng):
    x, v = make_input(rng, (3, 4, 5), dtype, "transposed")
    for mshape in [(3, 4, 5), (4, 1), (5,), ()]:
        mask = rng.random(mshape) < 0.4
        value = True if dtype == "bool" else (7 if not is_float(dtype) else -2.5)
        expected = np.where(mask, np.array(value).astype(v.dtype), v)
        got = x.masked_fill(kiln.from_numpy(np.array(mask)), value)
        assert_close(got, expected, dtype, msg=str(mshape))
        got = kiln.masked_fill(x, kiln.from_numpy(np.array(mask)), kiln.tensor(value))
        assert_close(got, expected, dtype, msg=str(mshape))
    with pytest.raises(kiln.DTypeError):
        x.masked_fill(kiln.ones(5), 1)
    with pytest.raises(kiln.ShapeError):
        x.masked_fill(kiln.ones(2, dtype=kiln.bool), 1)


@pytest.mark.parametrize("num_classes", [-1, 5, 9])
@pytest.mark.parametrize("shape", [(7,), (2, 3), (), (0,)])
def test_one_hot(shape, num_classes, rng):
    idx = rng.integers(0, 5, size=shape)
    if num_classes == -1 and idx.size == 0:
        with pytest.raises(ValueError):
            kiln.one_hot(kiln.from_numpy(np.array(idx)), num_classes)
        return
    expected = torch.nn.functional.one_hot(torch.from_numpy(np.array(idx)), num_classes).numpy()
    for itype in [np.int64, np.int32]:
        got = kiln.one_hot(kiln.from_numpy(np.array(idx, dtype=itype)), num_classes)
        assert_close(got, expected, "int64")


def test_one_hot_errors():
    with pytest.raises(IndexError):
        kiln.one_hot(kiln.tensor([0, 5]), 5)
    with pytest.raises(IndexError):
        kiln.one_hot(kiln.tensor([-1, 2]))
    with pytest.raises(kiln.DTypeError):
        kiln.one_hot(kiln.tensor([1.0]), 3)
    with pytest.raises(ValueError):
        kiln.one_hot(kiln.tensor([1]), -2)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_nonzero(dtype, rng):
    for shape, layout in [((7,), "contig"), ((3, 4), "transposed"), ((2, 3, 5), "sliced"), ((0, 3), "contig"),
                          ((), "contig"), ((4, 5), "expanded"), ((), "contig")]:
        values = random_values(rng, shape, dtype, "nonzero")
        values = np.where(rng.random(shape) < 0.5, values, np.zeros_like(values))
        x, v = layout_tensor(values, dtype, layout)
        expected = torch.nonzero(torch.from_numpy(np.array(v != 0))).numpy()
        assert_close(x.nonzero(), expected, "int64", msg=f"{shape} {layout}")
        assert_close(kiln.nonzero(x), expected, "int64")


def test_nonzero_special_values():
    x = kiln.tensor([0.0, -0.0, float("nan"), float("inf"), 1e-30])
    assert x.nonzero().tolist() == [[2], [3], [4]]


@pytest.mark.xfail(reason="kiln bug (eager/indexing.cpp): index values are not bounds-checked when the result "
                          "is empty: kiln.zeros(2, 3)[kiln.zeros(0, dtype=kiln.int64), kiln.tensor([9])] and "
                          "kiln.zeros(0, 3, 0)[..., kiln.tensor([2, 1])] return empty tensors; torch and NumPy "
                          "raise IndexError", strict=True)
@pytest.mark.parametrize("case", ["broadcast_to_empty", "zero_size_dim"])
def test_out_of_range_index_with_empty_result_raises(case):
    with pytest.raises(IndexError):
        if case == "broadcast_to_empty":
            kiln.zeros(2, 3)[kiln.zeros(0, dtype=kiln.int64), kiln.tensor([9])]
        else:
            kiln.zeros(0, 3, 0)[..., kiln.tensor([2, 1])]


def test_out_of_range_index_into_empty_dim_raises():
    with pytest.raises(IndexError):
        kiln.zeros(2, 0)[:, kiln.tensor([1])]
    with pytest.raises(IndexError):
        kiln.zeros(0, 3).index_select(0, kiln.tensor([2]))


def test_index_put_accumulates_like_numpy_through_views():
    z = kiln.arange(6)
    z[kiln.tensor([0, 0, 1])] += 1  # read, add, write: repeated indices count once, as NumPy
    assert z.tolist() == [1, 2, 2, 3, 4, 5]
