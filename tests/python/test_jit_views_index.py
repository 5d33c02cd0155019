"""kiln.jit on views, copies, joins and indexing: traced results equal eager
bitwise (also on non-contiguous inputs, 0- and 1-sized dims, negative dims),
gradients through a jit function equal eager ones, dynamic dims, in-place
writes through views, and meta errors of the same type as eager."""
import numpy as np
import pytest

import kiln

# Tracing is tested against the graph executor (bitwise equal to eager).
pytestmark = pytest.mark.usefixtures("graph_executor_jit")

rng = np.random.default_rng(1)


def t(*shape, dtype=np.float32):
    return kiln.from_numpy(rng.standard_normal(shape).astype(dtype))


def idx(*values):
    return kiln.tensor(list(values), dtype=kiln.int64)


def leaves(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def assert_same(got, want):
    got, want = leaves(got), leaves(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(g.numpy(), w.numpy())


def check(f, *args, **jit_kwargs):
    try:
        want = f(*args)
    except Exception as e:  # noqa: BLE001 -- an invalid case: tracing raises the same error
        with pytest.raises(type(e)):
            kiln.jit(f, **jit_kwargs)(*args)
        return
    jitted = kiln.jit(f, **jit_kwargs)
    assert_same(jitted(*args), want)
    # The trace prints as kiln-dialect IR that parses back to the same text.
    lowered = jitted.lower(*args)
    text = lowered.ir()
    assert kiln.ir_parse(text) == text
    assert kiln.ir_parse(lowered.bytecode()) == text


# Each case: a function of one float tensor of shape (3, 4, 5) or of the
# same dims permuted (non-contiguous); shape-agnostic where it can be.
CASES = {
    "view": lambda x: x.contiguous().view(-1, x.shape[-1]),
    "reshape": lambda x: x.reshape(-1, x.shape[-2] * x.shape[-1]) * 2,
    "reshape_0d": lambda x: x[0, 0, 0].reshape(1, 1),
    "permute": lambda x: x.permute(2, 0, 1) + 1,
    "permute_neg": lambda x: x.permute(-1, -3, -2),
    "transpose": lambda x: x.transpose(0, -1),
    "t_2d": lambda x: x[0].t(),
    "slice_step": lambda x: x[:, 1::2, ::3],
    "slice_neg": lambda x: x[-2:, :-1],
    "slice_empty": lambda x: x[:, 3:1],
    "select": lambda x: x[1, :, -1],
    "select_method": lambda x: x.select(-1, 0),
    "narrow": lambda x: x.narrow(1, 1, 2),
    "narrow_neg": lambda x: x.narrow(-1, -3, 2),
    "expand": lambda x: x[:, :1].expand(-1, 4, -1),
    "expand_new_dim": lambda x: x[0].expand(2, *x[0].shape),
    "broadcast_to": lambda x: kiln.broadcast_to(x[:1], x.shape),
    "broadcast_tensors": lambda x: kiln.broadcast_tensors(x[:, :1], x[:1]),
    "squeeze": lambda x: x[:, :1].squeeze(1),
    "squeeze_all": lambda x: x[:1, :1].squeeze(),
    "unsqueeze": lambda x: x.unsqueeze(-1).unsqueeze(0),
    "flatten": lambda x: x.flatten(1),
    "flatten_all": lambda x: x.flatten(),
    "contiguous": lambda x: x.transpose(0, 1).contiguous().view(-1),
    "clone": lambda x: x.clone() - x,
    "to": lambda x: x.to(kiln.float64) / 3,
    "to_int": lambda x: (x * 10).to(kiln.int32),
    "cat": lambda x: kiln.cat([x, x * 2, x[:, :1]], 1),
    "cat_neg": lambda x: kiln.cat([x, x], -1),
    "cat_empty_legacy": lambda x: kiln.cat([kiln.zeros(0), x], 0),
    "stack": lambda x: kiln.stack([x, -x], -2),
    "split": lambda x: x.split(2, 1),
    "split_sizes": lambda x: x.split([1, x.shape[-1] - 1], -1),
    "chunk": lambda x: x.chunk(3, 0),
    "index_select": lambda x: x.index_select(1, idx(3, 0, 0)),
    "gather": lambda x: x.gather(2, (x.abs() * 10).to(kiln.int64) % x.shape[2]),
    "scatter_add": lambda x: x.scatter_add(0, idx(0, 1)[:, None, None].expand(2, *x.shape[1:]), x[:2]),
    "masked_fill": lambda x: x.masked_fill(x > 0, -1.5),
    "masked_fill_bcast": lambda x: x[:, :1].masked_fill(x > 0, 7.0),
    "getitem_advanced": lambda x: x[idx(0, -1), :, idx(1, 2)],
    "getitem_mixed": lambda x: x[..., None, idx(2, 0)],
    "getitem_mask": lambda x: x[x > 0],
    "getitem_rows_mask": lambda x: x[x[:, 0, 0] > 0],
    "nonzero": lambda x: (x > 0).nonzero(),
    "one_hot": lambda x: kiln.one_hot((x.abs() * 3).to(kiln.int64).flatten() % 5, 5),
    "one_hot_inferred": lambda x: kiln.one_hot((x.abs() * 3).to(kiln.int64).flatten()),
}


def inputs():
    x = t(3, 4, 5)
    return {"contiguous": x, "non_contiguous": t(5, 3, 4).permute(1, 2, 0),
            "strided": t(6, 4, 10)[::2, :, ::2]}


@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous", "strided"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_traced_equals_eager_bitwise(name, layout):
    x = inputs()[layout]
    if name == "view" and layout != "contiguous":
        x = x.contiguous()
    check(CASES[name], x)


@pytest.mark.parametrize("shape", [(0, 4, 5), (3, 1, 5), (1, 1, 1), (3, 4, 0)])
@pytest.mark.parametrize("name", ["reshape", "permute", "transpose", "flatten", "unsqueeze", "cat", "stack", "clone",
                                  "to", "masked_fill", "getitem_mask", "nonzero", "contiguous", "slice_neg"])
def test_zero_and_one_sized_dims(name, shape):
    check(CASES[name], t(*shape))


def test_int_and_bool_dtypes():
    i = kiln.tensor(rng.integers(-5, 5, (4, 6)), dtype=kiln.int32)
    b = i > 0
    for f in (lambda a: a.t()[1:, ::2], lambda a: kiln.cat([a, a[:1]]), lambda a: a.reshape(-1)[3:],
              lambda a: a[idx(3, 1)], lambda a: a.unsqueeze(0).expand(2, -1, -1)):
        check(f, i)
        check(f, b)
    check(lambda a: a.to(kiln.float16).to(kiln.float32), t(3, 3) * 100)


# ---- gradients ----

GRAD_CASES = ["view", "reshape", "permute", "transpose", "slice_step", "slice_neg", "select", "narrow", "narrow_neg",
              "expand", "broadcast_to", "squeeze", "unsqueeze", "flatten", "contiguous", "clone", "to", "cat", "stack",
              "index_select", "scatter_add", "masked_fill", "getitem_advanced", "getitem_mask", "t_2d"]


@pytest.mark.parametrize("name", GRAD_CASES)
def test_gradients_through_jit_match_eager(name):
    a = rng.standard_normal((3, 4, 5)).astype(np.float32)
    f = CASES[name]
    x, xe = kiln.tensor(a, requires_grad=True), kiln.tensor(a, requires_grad=True)
    got, want = f(xe), kiln.jit(f)(x)
    g = kiln.from_numpy(rng.standard_normal(got.shape).astype(np.float32)).to(got.dtype)
    want.backward(g)
    got.backward(g)
    np.testing.assert_array_equal(x.grad.numpy(), xe.grad.numpy())


def test_gradients_of_multi_output_and_gather():
    a = rng.standard_normal((4, 6)).astype(np.float32)
    index = kiln.tensor(rng.integers(0, 6, (4, 3)), dtype=kiln.int64)

    def f(x):
        p, q = x.split([2, 4], 1)
        c = x.chunk(2, 0)
        u, v = kiln.broadcast_tensors(x[:, :1], x[:1])
        return p * 2 + q[:, :2] + kiln.cat([c[1], c[0]])[:, :2] + x.gather(1, index)[:, :2] + u[:, :2] * v[:, :2]
    for mode in ("eager", "jit"):
        x = kiln.tensor(a, requires_grad=True)
        (kiln.jit(f) if mode == "jit" else f)(x).backward(kiln.ones(4, 2))
        if mode == "eager":
            want = x.grad.numpy()
    np.testing.assert_array_equal(x.grad.numpy(), want)


# ---- dynamic dims ----

DYNAMIC_CASES = ["reshape", "permute", "transpose", "slice_step", "slice_neg", "select", "narrow", "narrow_neg",
                 "expand", "unsqueeze", "flatten", "flatten_all", "clone", "to", "cat", "cat_neg", "stack",
                 "split_sizes", "index_select", "gather", "masked_fill", "getitem_advanced", "getitem_mixed",
                 "getitem_mask", "broadcast_tensors", "contiguous"]


@pytest.mark.parametrize("name", DYNAMIC_CASES)
def test_dynamic_dims_give_correct_results_for_other_sizes(name):
    f = CASES[name]
    j = kiln.jit(f, dynamic={"x": 0})
    for n in (3, 7, 2):
        x = t(n, 4, 5)
        assert_same(j(x), f(x))
    assert j.num_traces == 1


def test_dynamic_inner_dims_and_view_with_minus_one():
    j = kiln.jit(lambda x: x.reshape(-1, 5).t()[1:].flatten(), dynamic={"x": (0, 1)})
    for shape in ((3, 4, 5), (2, 7, 5), (1, 1, 5)):
        x = t(*shape)
        assert_same(j(x), x.reshape(-1, 5).t()[1:].flatten())
    assert j.num_traces == 1


def test_split_or_squeeze_of_a_dynamic_dim_is_a_trace_error():
    with pytest.raises(kiln.TraceError, match="split.*dynamic"):
        kiln.jit(lambda x: x.split(2, 0), dynamic={"x": 0})(t(4, 3))
    with pytest.raises(kiln.TraceError, match="chunk.*dynamic"):
        kiln.jit(lambda x: x.chunk(2, 0), dynamic={"x": 0})(t(4, 3))
    with pytest.raises(kiln.TraceError, match="squeeze.*dynamic"):
        kiln.jit(lambda x: x.squeeze(), dynamic={"x": 0})(t(4, 3))
    # splitting a static dim of a tensor with a dynamic one is fine
    j = kiln.jit(lambda x: x.chunk(3, 1), dynamic={"x": 0})
    for n in (2, 5):
        x = t(n, 3)
        assert_same(j(x), x.chunk(3, 1))


# ---- in-place writes ----

def test_setitem_and_inplace_through_views_of_a_traced_value():
    def f(x):
        y = x.clone()
        y[:, 1:] *= 2               # through a slice view
        y[0] = 5.0                  # fill_ through select
        y[1, idx(0, 2)] = -y[2, :2]  # index_put_ through select
        y[y > 3] = 0.0              # mask put
        y.t()[0].add_(1)            # through a chain of views
        v = y.view(-1)
        v[::3] = 9                  # through view + strided slice
        y.narrow(0, 2, 1).copy_(x[:1] * 10)
        return y, x
    for layout in ("contiguous", "non_contiguous"):
        x = inputs()[layout][:, :, 0]
        check(f, x)


def test_inplace_on_argument_views_and_captures_is_written_back():
    w = kiln.zeros(3, 4)

    @kiln.jit
    def g(x):
        x[:, 0] = 1.0
        w[1:, ::2] += x[1:, ::2]
        w.narrow(1, 3, 1).fill_(7.0)
        return x * 2

    we = kiln.zeros(3, 4)
    for _ in range(2):
        a = t(3, 4)
        ae = a.clone()
        got = g(a)
        ae[:, 0] = 1.0
        we[1:, ::2] += ae[1:, ::2]
        we.narrow(1, 3, 1).fill_(7.0)
        np.testing.assert_array_equal(got.numpy(), (ae * 2).numpy())
        np.testing.assert_array_equal(w.numpy(), we.numpy())


def test_untraceable_writes_through_views_raise_trace_errors():
    with pytest.raises(kiln.TraceError, match="reshape"):
        kiln.jit(lambda x: x.reshape(-1).add_(1))(t(2, 3))
    with pytest.raises(kiln.TraceError, match="updated (in place )?after the view was taken"):
        def stale(x):
            y = x.clone()
            v = y[0]
            y.mul_(2)
            v.add_(1)
            return y
        kiln.jit(stale)(t(2, 3))


# ---- meta errors: the same exception types as eager ----

ERROR_CASES = [
    lambda x: x.view(7, -1),
    lambda x: x.reshape(-1, -1),
    lambda x: x.permute(0, 0, 1),
    lambda x: x.transpose(0, 5),
    lambda x: x[:, 9],
    lambda x: x.narrow(1, 3, 4),
    lambda x: x.expand(2, 2, 2),
    lambda x: x.squeeze(4),
    lambda x: x.unsqueeze(5),
    lambda x: x.flatten(2, 1),
    lambda x: kiln.cat([x, x[0]]),
    lambda x: kiln.cat([x, x[:, :, :2]], 0),
    lambda x: kiln.stack([x, x[1:]]),
    lambda x: x.split([1, 1], 0),
    lambda x: x.chunk(0),
    lambda x: x.index_select(0, kiln.zeros(2, 2, dtype=kiln.int64)),
    lambda x: x.index_select(0, kiln.zeros(2)),
    lambda x: x.gather(0, kiln.zeros(2, dtype=kiln.int64)),
    lambda x: x.scatter_add(0, kiln.zeros(1, 1, 1, dtype=kiln.int64), x.to(kiln.float64)),
    lambda x: x.masked_fill(x, 1.0),
    lambda x: x[idx(0), idx(0, 1, 2)[:2], idx(0, 1, 2)],
    lambda x: x[0, 0, 0, 0],
    lambda x: x[x[:2] > 0],
    lambda x: kiln.one_hot(x, 3),
    lambda x: kiln.broadcast_tensors(x, x[:, :2]),
]


@pytest.mark.parametrize("k", range(len(ERROR_CASES)))
def test_meta_errors_have_the_eager_exception_type(k):
    f = ERROR_CASES[k]
    x = t(3, 4, 5)
    with pytest.raises(Exception) as eager:
        f(x)
    with pytest.raises(type(eager.value)) as traced:
        kiln.jit(f)(x)
    assert str(eager.value).split("\n")[0] == str(traced.value).split("\n")[0]


def test_reading_a_view_taken_before_an_in_place_update_raises():
    def f(x):
        y = x * 1
        row = y[0]
        y.mul_(2)  # eager: row sees this; the graph's row would not
        return row + 1

    with pytest.raises(kiln.TraceError, match="updated in place after the view was taken"):
        kiln.jit(f)(t(2, 3))

    def g(x):
        y = x * 1
        y.mul_(2)
        return y[0] + 1  # a view taken after the update is fine

    x = t(2, 3)
    assert_same(kiln.jit(g)(x), g(x))
