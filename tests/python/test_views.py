"""Views (reshape, permute, slicing, expand, ...) against NumPy values and torch's
strides; storage sharing, in-place writes through views and version counters."""
import numpy as np
import pytest
import torch

import kiln
from conftest import assert_close, make_input


def same_view(k, t, msg=""):
    """kiln view `k` has torch view `t`'s shape, values, storage offset and
    strides (strides of size-1 dims are irrelevant and not compared)."""
    assert tuple(k.shape) == tuple(t.shape), msg
    np.testing.assert_array_equal(k.numpy(), t.numpy(), err_msg=msg)
    if k.numel() > 0:
        assert k.storage_offset() == t.storage_offset(), msg
        ks = [s for s, n in zip(k.stride(), k.shape) if n != 1]
        ts = [s for s, n in zip(t.stride(), t.shape) if n != 1]
        assert ks == ts, f"{msg}: strides {k.stride()} vs torch {t.stride()}"
    assert k.is_contiguous() == t.is_contiguous(), msg


VIEW_CHAINS = {
    "reshape": lambda x: x.reshape(6, 10),
    "reshape_infer": lambda x: x.reshape(-1, 5),
    "reshape_tuple": lambda x: x.reshape((2, 3, 2, 5)),
    "view": lambda x: x.view(4, 15),
    "view_0d_numel1": lambda x: x[1, 2, 3].reshape(()),
    "flatten": lambda x: x.flatten(),
    "flatten_partial": lambda x: x.flatten(1),
    "flatten_range": lambda x: x.flatten(0, 1),
    "permute": lambda x: x.permute(2, 0, 1),
    "permute_neg": lambda x: x.permute(-1, -3, -2),
    "transpose": lambda x: x.transpose(0, 2),
    "transpose_neg": lambda x: x.transpose(-1, 1),
    "swapaxes": lambda x: x.swapaxes(0, 1),
    "T_2d": lambda x: x[0].T,
    "mT": lambda x: x.mT,
    "t": lambda x: x[1].t(),
    "slice_step": lambda x: x[1:, ::2, 1::3],
    "slice_negative": lambda x: x[-3:-1, :-2, -4:],
    "slice_out_of_range": lambda x: x[2:100, -100:3],
    "slice_empty": lambda x: x[3:1],
    "select": lambda x: x[2],
    "select_neg": lambda x: x[:, -1],
    "select_method": lambda x: x.select(2, 3),
    "narrow": lambda x: x.narrow(1, 1, 2),
    "narrow_neg_start": lambda x: x.narrow(-1, -3, 2),
    "unsqueeze": lambda x: x.unsqueeze(1),
    "unsqueeze_end": lambda x: x.unsqueeze(-1),
    "unsqueeze_front": lambda x: x.unsqueeze(0),
    "squeeze_all": lambda x: x[:, :1, 2:3].squeeze(),
    "squeeze_dim": lambda x: x[:, :1].squeeze(1),
    "squeeze_noop": lambda x: x.squeeze(0),
    "expand": lambda x: x[:, :1].expand(4, 3, 5),
    "expand_new_dims": lambda x: x[0].expand(2, 3, 5),
    "expand_keep": lambda x: x[:, :1].expand(-1, 4, -1),
    "transpose_then_slice": lambda x: x.transpose(0, 1)[::2, 1:, 1:4],
    "slice_then_permute": lambda x: x[1::2, :, ::2].permute(1, 2, 0),
    "permute_reshape_copy": lambda x: x.permute(2, 1, 0).reshape(-1),
    "slice_reshape_viewable": lambda x: x[1:3].reshape(2, 15),
    "expand_select": lambda x: x[:, :1].expand(4, 3, 5)[:, 2],
    "diag_like": lambda x: x.flatten()[::6],
    "none_ellipsis": lambda x: x[None, ..., None, 1],
}


@pytest.mark.parametrize("chain", list(VIEW_CHAINS))
def test_view_matches_torch(chain):
    base = np.arange(60, dtype=np.float32).reshape(4, 3, 5)
    k = kiln.from_numpy(base.copy())
    t = torch.from_numpy(base.copy())
    kv, tv = VIEW_CHAINS[chain](k), VIEW_CHAINS[chain](t)
    same_view(kv, tv, chain)


@pytest.mark.parametrize("chain", [c for c in VIEW_CHAINS if c not in ("permute_reshape_copy",)])
def test_views_share_storage(chain):
    """Writing through the base shows in the view (basic indexing and view ops never copy)."""
    k = kiln.from_numpy(np.arange(60, dtype=np.float32).reshape(4, 3, 5))
    v = VIEW_CHAINS[chain](k)
    before = v.numpy().copy()
    k.add_(1000)
    np.testing.assert_array_equal(v.numpy(), before + 1000)


def test_reshape_of_non_viewable_copies_and_view_refuses():
    k = kiln.arange(12).reshape(3, 4)
    kt = k.T
    r = kt.reshape(12)
    assert r.tolist() == np.arange(12).reshape(3, 4).T.reshape(12).tolist()
    k.add_(100)
    assert r.tolist()[0] == 0  # a copy
    with pytest.raises(kiln.ShapeError):
        kt.view(12)
    with pytest.raises(kiln.ShapeError):
        k.view(5, 3)
    with pytest.raises(kiln.ShapeError):
        k.reshape(-1, -1)
    with pytest.raises(kiln.ShapeError):
        k.reshape(5, -1)


def test_zero_size_views():
    k = kiln.zeros(2, 0, 3)
    assert k.reshape(0, 6).shape == (0, 6)
    assert k.reshape(-1, 3).shape == (0, 3)
    assert k.permute(2, 0, 1).shape == (3, 2, 0)
    assert k[:, :, 1].shape == (2, 0)
    assert k.flatten().shape == (0,)
    assert k.expand(4, 2, 0, 3).shape == (4, 2, 0, 3)
    assert kiln.zeros(1, 3).expand(0, 3).shape == (0, 3)
    assert k.sum().item() == 0


@pytest.mark.parametrize("shape", [(3, 0), (2, 0, 4)])
def test_empty_tensors_are_contiguous(shape):
    assert kiln.zeros(*shape).is_contiguous()


def test_expand_and_broadcast(rng):
    x, v = make_input(rng, (3, 1), "float32")
    assert_close(x.expand(2, 3, 4), np.broadcast_to(v, (2, 3, 4)), "float32")
    assert_close(kiln.broadcast_to(x, (3, 5)), np.broadcast_to(v, (3, 5)), "float32")
    a, b = kiln.broadcast_tensors(x, kiln.ones(1, 4))
    assert a.shape == b.shape == (3, 4)
    assert a.stride()[1] == 0
    assert_close(x.expand_as(kiln.zeros(3, 6)), np.broadcast_to(v, (3, 6)), "float32")
    with pytest.raises(kiln.ShapeError):
        x.expand(3, 2, 2)[0].expand(4)
    with pytest.raises(kiln.ShapeError):
        x.expand(4, 4)
    with pytest.raises(kiln.ShapeError):
        x.expand(5)
    with pytest.raises(kiln.ShapeError):
        kiln.broadcast_tensors(kiln.ones(3), kiln.ones(4))


def test_contiguous_and_clone(rng):
    x, v = make_input(rng, (4, 6), "float64", "transposed")
    assert not x.is_contiguous()
    c = x.contiguous()
    assert c.is_contiguous() and c.stride() == (6, 1)
    assert_close(c, v, "float64")
    y = kiln.ones(3)
    assert y.contiguous().data_ptr() == y.data_ptr()
    cl = x.clone()
    x.mul_(0)
    assert_close(cl, v, "float64")


def test_size_helpers():
    x = kiln.zeros(2, 3, 4)
    assert x.size() == (2, 3, 4) and x.size(1) == 3 and x.size(-1) == 4
    assert x.dim() == x.ndim == 3 and x.numel() == 24 and len(x) == 2
    assert x.stride() == (12, 4, 1) and x.stride(-1) == 1
    assert kiln.numel(x) == 24
    with pytest.raises(IndexError):
        x.size(3)
    with pytest.raises(IndexError):
        x.stride(-4)
    with pytest.raises(TypeError):
        len(kiln.tensor(1.0))
    rows = [r.tolist() for r in kiln.arange(6).reshape(3, 2)]
    assert rows == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(TypeError):
        iter(kiln.tensor(1.0)).__next__()


# ---- in-place writes through views ----

def test_inplace_through_slice_view_modifies_base():
    z = kiln.ones(3, 4)
    v0 = z._version
    view = z[:, 1:]
    view *= 2
    assert z.tolist() == [[1, 2, 2, 2]] * 3
    assert z._version > v0
    assert view._version == z._version  # views share the version counter
    z[:, 1:] *= 2  # the __setitem__ form, as in PyTorch
    assert z.tolist() == [[1, 4, 4, 4]] * 3


def test_inplace_through_transposed_and_strided_views():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    z = kiln.from_numpy(base.copy())
    z.T[::2].add_(100)
    expected = base.copy()
    expected.T[::2] += 100
    np.testing.assert_array_equal(z.numpy(), expected)
    z[1:3, ::3][...] = -1
    expected[1:3, ::3] = -1
    np.testing.assert_array_equal(z.numpy(), expected)
    z.select(1, 2).zero_()
    expected[:, 2] = 0
    np.testing.assert_array_equal(z.numpy(), expected)
    z.narrow(0, 1, 2).tanh_()
    expected[1:3] = np.tanh(expected[1:3])
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-6)
    z[0].clamp_(min=3, max=4)
    expected[0] = np.clip(expected[0], 3, 4)
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-6)


def test_inplace_binary_with_broadcast_operand_through_view():
    z = kiln.zeros(3, 4)
    z[1:].add_(kiln.arange(4))
    assert z.tolist() == [[0, 0, 0, 0], [0, 1, 2, 3], [0, 1, 2, 3]]
    z.unsqueeze(0)[0, :, ::2] -= 1
    assert z.tolist() == [[-1, 0, -1, 0], [-1, 1, 1, 3], [-1, 1, 1, 3]]


def test_inplace_with_overlapping_operand():
    x = kiln.arange(9, dtype=kiln.float32).reshape(3, 3)
    x.add_(x.T)  # reads the operand before any write, like NumPy
    a = np.arange(9.0).reshape(3, 3)
    assert x.tolist() == (a + a.T).tolist()
    y = kiln.arange(6, dtype=kiln.float32)
    y[1:] += y[:-1]
    b = np.arange(6.0)
    b[1:] += b[:-1]
    assert y.tolist() == b.tolist()


def test_version_counter():
    x = kiln.zeros(4)
    versions = [x._version]
    x.add_(1)
    versions.append(x._version)
    x[0] = 5
    versions.append(x._version)
    x.copy_(kiln.ones(4))
    versions.append(x._version)
    x += 1
    versions.append(x._version)
    x.zero_()
    versions.append(x._version)
    assert all(b > a for a, b in zip(versions, versions[1:])), versions
    y = x + 1  # out-of-place ops leave it alone
    _ = x.sum()
    assert x._version == versions[-1]
    assert y._version >= 0


def test_copy_and_fill(rng):
    x = kiln.zeros(3, 4)
    x.copy_(kiln.arange(4))  # broadcast + int -> float
    assert x.tolist() == [[0, 1, 2, 3]] * 3
    x.copy_(np.full((3, 4), 7, dtype=np.int32))
    assert x.tolist() == [[7] * 4] * 3
    with pytest.raises(kiln.ShapeError):
        x.copy_(kiln.ones(5))
    i = kiln.zeros(3, dtype=kiln.int32)
    i[...] = 2.7
    assert i.tolist() == [2, 2, 2]  # truncated, as torch
    b = kiln.zeros(3, dtype=kiln.bool)
    b[:] = 1
    assert b.tolist() == [True] * 3


def test_fill_():
    x = kiln.zeros(2, 3)
    r = x.fill_(2)
    assert r is x and x.tolist() == [[2, 2, 2]] * 2
    i = kiln.zeros(3, dtype=kiln.int32)
    i.fill_(2.7)
    assert i.tolist() == [2, 2, 2]
    x.T[1].fill_(-1.5)
    assert x.tolist() == [[2, -1.5, 2]] * 2


def test_copy_between_overlapping_views():
    a = np.arange(10, dtype=np.float32)
    k = kiln.from_numpy(a.copy())
    k[1:] = k[:-1]
    a[1:] = a[:-1].copy()
    np.testing.assert_array_equal(k.numpy(), a)
    k = kiln.from_numpy(np.arange(10, dtype=np.float32))
    k[:-2].copy_(k[2:])
    np.testing.assert_array_equal(k.numpy(), np.r_[np.arange(2, 10), 8, 9].astype(np.float32))
    m = kiln.arange(9).reshape(3, 3)
    m.copy_(m.T.clone())
    assert m.tolist() == np.arange(9).reshape(3, 3).T.tolist()
    m = kiln.arange(9).reshape(3, 3)
    m.copy_(m.T)  # reads and writes overlap: must behave like a copy from a temporary
    assert m.tolist() == np.arange(9).reshape(3, 3).T.tolist()


def test_view_errors():
    x = kiln.zeros(2, 3, 4)
    with pytest.raises(IndexError):
        x.permute(0, 1, 3)
    with pytest.raises(kiln.ShapeError):
        x.permute(0, 1)
    with pytest.raises(kiln.ShapeError):
        x.permute(0, 0, 1)
    with pytest.raises(IndexError):
        x.transpose(0, 3)
    with pytest.raises(IndexError):
        x.unsqueeze(4)
    with pytest.raises(IndexError):
        x.squeeze(-4)
    with pytest.raises(IndexError):
        x.narrow(1, 2, 2)
    with pytest.raises(IndexError):
        x.select(2, 4)
    with pytest.raises(IndexError):
        x.flatten(0, 3)
    with pytest.raises(ValueError):
        x.flatten(2, 1)
    with pytest.raises(kiln.ShapeError):
        x.t()
    with pytest.raises(kiln.ShapeError):
        x.view(-1, -1)
    with pytest.raises((kiln.ShapeError, kiln.DTypeError)):
        x.view(kiln.float16)
    with pytest.raises(kiln.DTypeError):
        x.reshape(2.5, 2)
    with pytest.raises(kiln.ShapeError):
        x.reshape(-2, 12)
