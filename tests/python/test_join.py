"""cat / stack against NumPy (and torch's promotion), split / chunk against torch."""
import numpy as np
import pytest
import torch

import kiln
from conftest import ALL_DTYPES, assert_close, dname, make_input, tdt

CAT_CASES = [
    ([(2, 3), (4, 3)], 0), ([(2, 3), (2, 5)], 1), ([(2, 3), (2, 5)], -1), ([(3,), (0,), (4,)], 0),
    ([(2, 0, 3), (2, 4, 3)], 1), ([(1, 2, 3)], 0), ([(2, 3, 4), (2, 3, 1), (2, 3, 2)], 2),
    ([(0, 3), (0, 3)], 0), ([(5, 7), (5, 7), (5, 7)], -2), ([(100, 33), (50, 33)], 0),
]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cat(dtype, rng):
    layouts = ["contig", "transposed", "sliced", "expanded"]
    for n, (shapes, dim) in enumerate(CAT_CASES):
        xs, vs = zip(*[make_input(rng, s, dtype, layouts[(n + i) % 4]) for i, s in enumerate(shapes)])
        expected = np.concatenate(vs, axis=dim)
        msg = f"cat({shapes}, dim={dim})"
        assert_close(kiln.cat(list(xs), dim), expected, dtype, msg=msg)
        assert_close(kiln.cat(tuple(xs), dim=dim), expected, dtype, msg=msg)
        assert_close(kiln.concat(list(xs), dim), expected, dtype, msg=msg)


def test_cat_promotes_like_torch(rng):
    for a in ALL_DTYPES:
        for b in ["bool", "int32", "float16", "float64"]:
            ka, kb = kiln.ones(2, dtype=getattr(kiln, a)), kiln.zeros(3, dtype=getattr(kiln, b))
            expected = torch.cat([torch.ones(2, dtype=tdt(a)), torch.zeros(3, dtype=tdt(b))])
            got = kiln.cat([ka, kb])
            assert dname(got.dtype) == str(expected.dtype).replace("torch.", ""), (a, b)
            assert got.to(kiln.float64).tolist() == expected.to(torch.float64).tolist()


def test_cat_skips_legacy_empty_1d():
    x = kiln.ones(2, 3)
    assert kiln.cat([kiln.zeros(0), x, kiln.zeros(0)]).shape == (2, 3)
    assert kiln.cat([kiln.zeros(0), kiln.zeros(0)]).shape == (0,)


def test_cat_result_is_a_copy():
    a, b = kiln.ones(2), kiln.zeros(2)
    c = kiln.cat([a, b])
    a.add_(1)
    assert c.tolist() == [1, 1, 0, 0]


def test_cat_errors():
    with pytest.raises(ValueError):
        kiln.cat([])
    with pytest.raises(kiln.ShapeError):
        kiln.cat([kiln.ones(2, 3), kiln.ones(3, 3)], 1)
    with pytest.raises(kiln.ShapeError):
        kiln.cat([kiln.ones(2, 3), kiln.ones(2, 3, 1)])
    with pytest.raises(kiln.ShapeError):
        kiln.cat([kiln.tensor(1.0), kiln.tensor(2.0)])
    with pytest.raises(IndexError):
        kiln.cat([kiln.ones(2, 3), kiln.ones(2, 3)], 2)
    with pytest.raises(IndexError):
        kiln.cat([kiln.ones(2, 3)], -3)
    with pytest.raises(TypeError):
        kiln.cat([kiln.ones(2), [1, 2]])


STACK_CASES = [([(3,), (3,)], 0), ([(3,), (3,)], 1), ([(3,), (3,)], -1), ([(2, 3)] * 3, 1), ([(2, 3)] * 3, -3),
               ([()] * 4, 0), ([(0, 2)] * 2, 2), ([(2, 3, 4)], 3), ([(40, 50)] * 3, 1)]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_stack(dtype, rng):
    layouts = ["contig", "transposed", "sliced", "expanded"]
    for n, (shapes, dim) in enumerate(STACK_CASES):
        xs, vs = zip(*[make_input(rng, s, dtype, layouts[(n + i) % 4]) for i, s in enumerate(shapes)])
        expected = np.stack(vs, axis=dim)
        assert_close(kiln.stack(list(xs), dim), expected, dtype, msg=f"stack({shapes}, dim={dim})")


def test_stack_errors():
    with pytest.raises(ValueError):
        kiln.stack([])
    with pytest.raises(kiln.ShapeError):
        kiln.stack([kiln.ones(3), kiln.ones(4)])
    with pytest.raises(kiln.ShapeError):
        kiln.stack([kiln.ones(3), kiln.ones(1, 3)])
    with pytest.raises(IndexError):
        kiln.stack([kiln.ones(3), kiln.ones(3)], 2)
    with pytest.raises(IndexError):
        kiln.stack([kiln.ones(3)], -3)


SPLIT_CASES = [((10, 3), 3, 0), ((10, 3), 5, 0), ((10, 3), 20, 0), ((4, 7), 2, 1), ((4, 7), 2, -1),
               ((10, 3), [2, 3, 5], 0), ((4, 7), [0, 7], 1), ((4, 7), (3, 4), -1), ((0, 3), 2, 0), ((6,), 1, 0)]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=str)
def test_split(case, rng):
    shape, size, dim = case
    x, v = make_input(rng, shape, "float32", "transposed")
    expected = torch.from_numpy(v).split(size, dim)
    for got in (x.split(size, dim), kiln.split(x, size, dim=dim)):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert_close(g, e.numpy(), "float32")
    if x.numel() == 0:
        return
    # the pieces are views of x
    pieces = x.split(size, dim)
    before = [p.numpy().copy() for p in pieces]
    x.add_(1)
    for p, b in zip(pieces, before):
        np.testing.assert_array_equal(p.numpy(), b + 1)


@pytest.mark.parametrize("case", [((10,), 3, 0), ((10,), 4, 0), ((10,), 10, 0), ((10,), 20, 0), ((3, 8), 3, 1),
                                  ((3, 8), 2, -1), ((0, 4), 2, 0), ((5, 6), 1, 0), ((13, 2), 6, 0)], ids=str)
def test_chunk(case, rng):
    shape, chunks, dim = case
    x, v = make_input(rng, shape, "int32", "sliced")
    expected = torch.from_numpy(v).chunk(chunks, dim)
    got = x.chunk(chunks, dim)
    assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
    for g, e in zip(got, expected):
        assert_close(g, e.numpy(), "int32")
    got = kiln.chunk(x, chunks, dim=dim)
    assert len(got) == len(expected)


def test_split_chunk_errors():
    x = kiln.ones(4, 6)
    with pytest.raises(kiln.ShapeError):
        x.split([2, 3], 0)
    with pytest.raises(ValueError):
        x.split(-1)
    with pytest.raises(ValueError):
        x.split([5, -1])
    with pytest.raises(ValueError):
        x.chunk(0)
    with pytest.raises(IndexError):
        x.split(2, 2)
    with pytest.raises(IndexError):
        x.chunk(2, -3)
    with pytest.raises(kiln.ShapeError):
        kiln.tensor(1.0).split(1)
