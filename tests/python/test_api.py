"""The rest of the Python surface: function aliases and function forms of
methods, every in-place binary method, kiln.index, threads."""
import numpy as np
import pytest
import torch

import kiln
from conftest import assert_close, make_input


def test_aliases(rng):
    a, va = make_input(rng, (3, 4), "float32")
    b, vb = make_input(rng, (4,), "float32", kind="nonzero")
    for alias, op in [("divide", "div"), ("true_divide", "div"), ("multiply", "mul"), ("subtract", "sub"),
                      ("greater", "gt"), ("less", "lt")]:
        assert getattr(kiln, alias)(a, b).tolist() == getattr(kiln, op)(a, b).tolist(), alias
    assert kiln.concatenate([a, a]).tolist() == kiln.cat([a, a]).tolist()
    assert kiln.clip(a, -1, 1).tolist() == a.clamp(-1, 1).tolist() == a.clip(-1, 1).tolist()
    assert a.clone().clip_(-1, 1).tolist() == a.clamp(-1, 1).tolist()


def test_function_forms_of_methods(rng):
    x, v = make_input(rng, (2, 3, 4), "float64", "transposed")
    assert_close(kiln.reshape(x, (6, 4)), v.reshape(6, 4), "float64")
    assert_close(kiln.permute(x, (2, 0, 1)), v.transpose(2, 0, 1), "float64")
    assert_close(kiln.transpose(x, 0, 2), v.swapaxes(0, 2), "float64")
    assert_close(kiln.squeeze(kiln.unsqueeze(x, 1), 1), v, "float64")
    assert_close(kiln.flatten(x, 1), v.reshape(2, 12), "float64")
    assert_close(kiln.narrow(x, 2, 1, 2), v[:, :, 1:3], "float64")
    assert_close(kiln.select(x, 1, -1), v[:, -1], "float64")
    assert_close(kiln.clone(x), v, "float64")
    assert_close(kiln.t(x[0]), v[0].T, "float64")
    assert kiln.numel(x) == 24
    assert_close(kiln.var(x, dim=1), v.var(1, ddof=1), "float64")
    assert_close(kiln.std(x, dim=(0, 2), keepdim=True), v.std((0, 2), ddof=1, keepdims=True), "float64")
    assert_close(kiln.argmin(x, dim=2), v.argmin(2), "int64")
    assert_close(x.reshape_as(kiln.zeros(4, 6)), v.reshape(4, 6), "float64")
    c = x.contiguous()
    assert_close(c.view_as(kiln.zeros(24)), v.reshape(24), "float64")
    assert x.cpu() is x and not x.is_cuda


def _torch_inplace(name, t, other):
    if not isinstance(other, torch.Tensor):
        other = torch.tensor(other)
    if name in ("maximum", "minimum"):  # torch has no maximum_ / minimum_
        return t.copy_(getattr(torch, name)(t, other))
    return getattr(t, name + "_")(other)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "floor_divide", "remainder", "pow", "maximum",
                                "minimum", "atan2", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
                                "logical_or", "logical_xor"])
def test_inplace_binary_float_matches_torch(op, rng):
    vx = rng.integers(-3, 4, size=(3, 4)).astype(np.float32)
    vy = rng.integers(1, 4, size=(4,)).astype(np.float32)
    if op == "pow":
        vx = np.abs(vx)
    x = kiln.from_numpy(vx.copy())
    t = torch.from_numpy(vx.copy())
    v0 = x._version
    r = getattr(x, op + "_")(kiln.from_numpy(vy.copy()))
    _torch_inplace(op, t, torch.from_numpy(vy.copy()))
    assert r is x and x._version > v0 and x.dtype == kiln.float32
    assert_close(x, t.numpy().astype(np.float64), "float32", msg=op)


@pytest.mark.parametrize("op", ["bitwise_and", "bitwise_or", "bitwise_xor", "add", "mul", "floor_divide",
                                "remainder", "eq", "logical_or"])
def test_inplace_binary_int_matches_torch(op, rng):
    vx = rng.integers(-50, 50, size=(3, 4)).astype(np.int32)
    vy = rng.integers(1, 50, size=(3, 1)).astype(np.int32)
    x, t = kiln.from_numpy(vx.copy()), torch.from_numpy(vx.copy())
    getattr(x, op + "_")(kiln.from_numpy(vy.copy()))
    _torch_inplace(op, t, torch.from_numpy(vy.copy()))
    assert_close(x, t.numpy(), "int32", msg=op)
    x2 = kiln.from_numpy(vx.copy())
    getattr(x2, op + "_")(3)  # a Python scalar operand
    t2 = torch.from_numpy(vx.copy())
    _torch_inplace(op, t2, 3)
    assert_close(x2, t2.numpy(), "int32", msg=op + " scalar")


def test_index_function(rng):
    x, v = make_input(rng, (4, 5, 6), "float32", "transposed")
    i0 = np.array([0, 3, 1])
    i2 = np.array([5, 0, 2])
    got = kiln.index(x, [kiln.from_numpy(i0), None, kiln.from_numpy(i2)])
    assert_close(got, v[i0, :, i2], "float32")
    got = kiln.index(x, [None, kiln.from_numpy(np.array([[1], [4]]))])
    assert_close(got, v[:, np.array([[1], [4]])], "float32")
    mask = rng.random((4, 5)) < 0.5
    assert_close(kiln.index(x, [kiln.from_numpy(mask)]), v[mask], "float32")


def test_threads_do_not_change_results(rng):
    old = kiln.get_num_threads()
    try:
        x, _ = make_input(rng, (300, 257), "float32", "transposed")
        results = []
        for n in (1, 2):
            kiln.set_num_threads(n)
            assert kiln.get_num_threads() == n
            results.append([(x * 2 + 1).exp().numpy().copy(), x.sum(0).numpy().copy(), x.amax(1).numpy().copy(),
                            kiln.softmax(x, 1).numpy().copy(), (x @ x.T).numpy().copy(),
                            x.argmax(0).numpy().copy(), x[x[:, 0] > 0].numpy().copy()])
        for a, b in zip(*results):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    finally:
        kiln.set_num_threads(old)
    assert kiln.get_num_threads() == old


def test_allocator_stats_are_sane():
    stats = kiln._C._allocator_stats()
    assert stats["allocated_bytes"] >= 0 and stats["peak_allocated_bytes"] >= stats["allocated_bytes"]
    x = kiln.ones(1 << 16)
    assert kiln._C._allocator_stats()["allocated_bytes"] >= x.numel() * 4
    del x
    kiln._C._empty_cache()


def test_zero_dim_edge_cases_match_torch():
    s, ts = kiln.tensor(5.0), torch.tensor(5.0)
    pairs = [
        (s.softmax(0), ts.softmax(0)), (s.logsumexp(0), ts.logsumexp(0)), (s.argmax(0), ts.argmax(0)),
        (s.max(0).values, ts.max(0).values), (s.max(0).indices, ts.max(0).indices), (s.sum(0), ts.sum(0)),
        (s.unsqueeze(0), ts.unsqueeze(0)), (s.flatten(), ts.flatten()), (s.reshape(1, 1), ts.reshape(1, 1)),
        (s.expand(3), ts.expand(3)), (kiln.stack([s, s]), torch.stack([ts, ts])), (s.T, ts.T), (s * s, ts * ts),
        (kiln.one_hot(kiln.tensor(3), 5), torch.nn.functional.one_hot(torch.tensor(3), 5)),
        (kiln.tensor([1, 2, 3]).masked_fill(kiln.tensor([True, False, True]), 2.5),
         torch.tensor([1, 2, 3]).masked_fill(torch.tensor([True, False, True]), 2.5)),
    ]
    for k, t in pairs:
        assert tuple(k.shape) == tuple(t.shape)
        assert str(k.dtype).replace("kiln.", "") == str(t.dtype).replace("torch.", "")
        assert k.tolist() == t.tolist()
    assert np.isnan(s.var().item()) and np.isnan(ts.var().item())
