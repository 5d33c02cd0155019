"""kiln.jit: tracing, the signature cache and retrace policies, captured state,
pytrees, errors, and differential checks against eager (the graph executor
runs the same kernels, so results are bitwise equal)."""
import threading
import warnings

import numpy as np
import pytest

import kiln

# Tracing is tested against the graph executor (bitwise equal to eager).
pytestmark = pytest.mark.usefixtures("graph_executor_jit")

rng = np.random.default_rng(0)


def t(*shape, dtype=np.float32):
    return kiln.from_numpy(rng.standard_normal(shape).astype(dtype))


UNARY = ["neg", "abs", "exp", "log1p", "sin", "cos", "tanh", "sigmoid", "relu", "gelu", "silu", "erf",
         "floor", "ceil", "round", "sign", "reciprocal", "sqrt", "rsqrt", "log", "expm1"]


@pytest.mark.parametrize("name", UNARY)
def test_unary_ops_traced_equal_eager_bitwise(name):
    x = t(3, 5).abs() + 0.1 if name in ("sqrt", "rsqrt", "log") else t(3, 5)
    f = getattr(kiln, name)
    np.testing.assert_array_equal(kiln.jit(f)(x).numpy(), f(x).numpy())


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "atan2", "remainder",
                                  "floor_divide", "eq", "lt", "ge", "logical_and"])
@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((4, 1, 3), (5, 1)), ((3,), ())])
def test_binary_ops_and_scalars_traced_equal_eager_bitwise(name, shapes):
    a, b = t(*shapes[0]).abs() + 0.5, t(*shapes[1]).abs() + 0.5
    f = getattr(kiln, name)
    for fn in (lambda x, y: f(x, y), lambda x, y: f(x, 1.5), lambda x, y: f(2, y)):
        np.testing.assert_array_equal(kiln.jit(fn)(a, b).numpy(), fn(a, b).numpy())


def test_dtypes_and_where_clamp_full():
    a16 = t(4, 3).to(kiln.float16)
    i32 = kiln.arange(12, dtype=kiln.int32).reshape(4, 3) if hasattr(kiln, "arange") else None

    def f(x, i):
        y = kiln.where(x > 0, x * 0.1, -x) + i
        return y.clamp(-0.5, 0.5), kiln.zeros_like(x) + 3, (i // 2) * 3
    got, want = kiln.jit(f)(a16, i32), f(a16, i32)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g.numpy(), w.numpy())


def test_cache_hits_and_retrace_reasons(capsys, monkeypatch):
    calls = []

    @kiln.jit
    def f(x, scale):
        calls.append(1)
        return x * scale
    x = t(3, 4)
    f(x, 2.0)
    f(x, 2.0)
    f(t(3, 4), 2.0)  # same signature, other values
    assert len(calls) == 1 and f.num_traces == 1
    monkeypatch.setenv("KILN_LOG", "retrace")
    f(x, 3.0)  # a static argument changed
    assert "argument scale: static value 2.0 → 3.0" in capsys.readouterr().err
    f(x.to(kiln.float64), 3.0)
    assert "argument x: dtype kiln.float32 → kiln.float64" in capsys.readouterr().err
    assert f.num_traces == 3
    report = f.cache_report()
    assert "3 variant(s)" in report and "first call" in report


def test_generalize_makes_the_changing_dim_dynamic():
    @kiln.jit
    def f(x):
        return (x * 2).relu()
    for n in (3, 5, 7, 9):
        x = t(n, 4)
        np.testing.assert_array_equal(f(x).numpy(), (x * 2).relu().numpy())
    assert f.num_traces == 2  # the first call, then (?, 4) for every other batch size
    assert "(?, 4)" in f.cache_report()


def test_dynamic_argument_dims_up_front_and_shape_none():
    seen = []

    @kiln.jit(dynamic={"x": 0})
    def f(x):
        seen.append(x.shape)
        return x + 1
    f(t(2, 3))
    f(t(6, 3))
    assert f.num_traces == 1 and seen == [(None, 3)]


def test_policies_warn_and_error():
    f = kiln.jit(lambda x, k: x * k, max_traces=2, policy="warn")
    x = t(2)
    f(x, 1.0)
    f(x, 2.0)
    with pytest.warns(UserWarning, match="budget 2"):
        f(x, 3.0)
    g = kiln.jit(lambda x, k: x * k, max_traces=1, policy="error")
    g(x, 1.0)
    with pytest.raises(kiln.TraceError, match="static value 1.0 → 2.0"):
        g(x, 2.0)
    with pytest.raises(ValueError):
        kiln.jit(lambda x: x, policy="sometimes")


def test_captured_state_is_read_each_call_and_written_back():
    w = kiln.ones(3)
    bias = kiln.zeros(3)

    @kiln.jit
    def step(x):
        w.mul_(2.0)        # in-place update of captured state: written back
        return x * w + bias  # bias read by reference
    x = kiln.ones(3)
    np.testing.assert_array_equal(step(x).numpy(), [2, 2, 2])
    np.testing.assert_array_equal(w.numpy(), [2, 2, 2])
    bias.fill_(10.0)       # changed outside: the next call sees it
    np.testing.assert_array_equal(step(x).numpy(), [14, 14, 14])
    np.testing.assert_array_equal(w.numpy(), [4, 4, 4])
    assert step.num_traces == 1


def test_pytrees_in_and_out():
    @kiln.jit
    def f(batch, opts):
        x, (y, z) = batch["x"], batch["pair"]
        return {"sum": x + y, "none": None, "list": [z * opts["k"], "tag"]}
    b = {"x": t(2), "pair": (t(2), t(2))}
    out = f(b, {"k": 3.0})
    assert out["none"] is None and out["list"][1] == "tag"
    np.testing.assert_array_equal(out["sum"].numpy(), (b["x"] + b["pair"][0]).numpy())
    np.testing.assert_array_equal(out["list"][0].numpy(), (b["pair"][1] * 3.0).numpy())
    with pytest.raises(TypeError, match="hashable"):
        f(b, {"k": {1, 2}})


def test_trace_errors_name_the_line_and_the_fix():
    @kiln.jit
    def branch(x):
        if (x > 0).all() if hasattr(x, "all") else x[0] > 0:  # data-dependent Python control flow
            return x
        return -x
    with pytest.raises(kiln.TraceError, match=r"kiln.cond.*\n.*while tracing branch, at .*test_jit.py:\d+"):
        branch(t(3))

    @kiln.jit
    def item(x):
        return x * (x + 1).item()
    with pytest.raises(kiln.TraceError, match="item|value"):
        item(t(1))


def test_print_inside_a_trace_warns_with_the_line():
    @kiln.jit
    def f(x):
        print("tracing")
        return x + 1
    with pytest.warns(UserWarning, match=r"print\(\) at .*test_jit.py:\d+ runs once"):
        f(t(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(t(2))  # cached: the Python body (and its print) does not run


def test_run_functions_eagerly():
    calls = []

    @kiln.jit
    def f(x):
        calls.append(1)
        return x + 1
    kiln.config.run_functions_eagerly(True)
    try:
        f(t(2))
        f(t(2))
    finally:
        kiln.config.run_functions_eagerly(False)
    assert len(calls) == 2 and f.num_traces == 0


def test_gradients_through_a_jit_function_match_eager():
    a = rng.standard_normal((3, 4))

    def f(x, y):
        return (x * y).tanh() * y + x.exp()
    x, y = kiln.tensor(a, requires_grad=True), kiln.tensor(a[0] + 1, requires_grad=True)
    xe, ye = kiln.tensor(a, requires_grad=True), kiln.tensor(a[0] + 1, requires_grad=True)
    g = kiln.tensor(rng.standard_normal((3, 4)).astype(np.float32))
    kiln.jit(f)(x, y).backward(g)
    f(xe, ye).backward(g)
    np.testing.assert_array_equal(x.grad.numpy(), xe.grad.numpy())
    np.testing.assert_array_equal(y.grad.numpy(), ye.grad.numpy())


def test_backward_inside_a_trace_records_the_gradient_ops():
    w = kiln.tensor([1.0, 2.0, 3.0], requires_grad=True)

    @kiln.jit
    def step(x):
        loss = (w * x).exp()
        loss.backward(kiln.ones_like(loss))
        with kiln.no_grad():
            w.sub_(w.grad * 0.1)
        w.grad = None
        return loss

    we = kiln.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x = kiln.tensor([0.5, -0.5, 0.25])
    for _ in range(3):
        got = step(x)
        loss = (we * x).exp()
        loss.backward(kiln.ones_like(loss))
        with kiln.no_grad():
            we.sub_(we.grad * 0.1)
        we.grad = None
        np.testing.assert_array_equal(got.numpy(), loss.detach().numpy())
        np.testing.assert_array_equal(w.detach().numpy(), we.detach().numpy())
    assert w.grad is None and step.num_traces == 1


def test_two_threads_calling_one_function():
    @kiln.jit
    def f(x):
        return (x * 3).exp() - x

    xs = [t(64, 64) for _ in range(8)]
    want = [((x * 3).exp() - x).numpy() for x in xs]
    errors = []

    def worker(k):
        try:
            for _ in range(20):
                for i in range(k, len(xs), 2):
                    np.testing.assert_array_equal(f(xs[i]).numpy(), want[i])
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and f.num_traces == 1


def test_cond_and_while_loop_eager_and_traced():
    def f(x, k):
        y = kiln.cond(k > 0.5, lambda a: a * 2, lambda a: a - 100, x)
        i, v = kiln.while_loop(lambda i, v: i < 5, lambda i, v: (i + 1, v * 2 + y), (kiln.tensor(0), x))
        return y, v, i
    j = kiln.jit(f)
    x = t(3)
    for k in (kiln.tensor(1.0), kiln.tensor(0.0), kiln.tensor(0.7)):
        for got, want in zip(j(x, k), f(x, k)):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert j.num_traces == 1  # the predicate is data: one trace serves both branches


def test_cond_and_while_loop_errors():
    with pytest.raises(kiln.TraceError, match="same shapes and dtypes"):
        kiln.jit(lambda x: kiln.cond(x > 0, lambda a: a, lambda a: a + kiln.zeros(2, 1), x))(t(1))
    with pytest.raises(kiln.TraceError, match="unchanged shapes and dtypes"):
        kiln.jit(lambda x: kiln.while_loop(lambda v: v < 3, lambda v: v * 2.5, (x,)))(kiln.tensor(0))
    with pytest.raises(kiln.TraceError, match="one-element bool"):
        kiln.jit(lambda x: kiln.cond(x, lambda a: a, lambda a: a, x))(t(3))


def test_kiln_print_runs_on_every_call(capfd):
    @kiln.jit
    def f(x):
        return kiln.print(x * 2, "y =") + 1
    f(kiln.ones(2))
    f(kiln.ones(2))
    assert capfd.readouterr().out.count("y = tensor([2., 2.])") == 2
