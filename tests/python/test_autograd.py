"""The autograd engine from Python: leaves and .grad, grad mode, errors,
functional transforms, and the elementwise rules against PyTorch and finite
differences (float64)."""
import numpy as np
import pytest

import kiln

torch = pytest.importorskip("torch")

rng = np.random.default_rng(0)


def leaf(*shape, lo=-1.0, hi=1.0):
    return kiln.tensor(rng.uniform(lo, hi, shape), dtype=kiln.float64, requires_grad=True)


def test_leaf_and_grad_basics():
    x = leaf(3)
    assert x.is_leaf and x.requires_grad and x.grad is None and x.grad_fn is None
    y = (x * x).sum()
    assert not y.is_leaf and y.grad_fn.name() == "SumBackward"
    assert repr(y.grad_fn) == "<SumBackward object>"
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.detach().numpy())
    (x * 3).sum().backward()  # accumulates
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.detach().numpy() + 3)
    x.grad = None
    assert x.grad is None


def test_creation_functions_take_requires_grad():
    for t in [kiln.zeros(2, requires_grad=True), kiln.ones(2, 3, requires_grad=True),
              kiln.randn(4, requires_grad=True), kiln.full((2,), 1.5, requires_grad=True),
              kiln.tensor([1.0, 2.0], requires_grad=True), kiln.arange(3.0, requires_grad=True),
              kiln.zeros_like(kiln.ones(2), requires_grad=True)]:
        assert t.requires_grad and t.is_leaf
    with pytest.raises(TypeError, match="floating"):
        kiln.zeros(2, dtype=kiln.int64, requires_grad=True)


def test_no_grad_enable_grad_set_grad_enabled():
    x = leaf(2)
    with kiln.no_grad():
        assert not kiln.is_grad_enabled()
        assert not (x * 2).requires_grad
        with kiln.enable_grad():
            assert (x * 2).requires_grad
    assert kiln.is_grad_enabled()

    @kiln.no_grad()
    def f(t):
        return t * 2
    assert not f(x).requires_grad
    with kiln.set_grad_enabled(False):
        assert not (x + 1).requires_grad
    assert (x + 1).requires_grad


def test_detach_and_requires_grad_flags():
    x = leaf(2)
    d = (x * 2).detach()
    assert not d.requires_grad and d.is_leaf
    d.requires_grad_()
    assert d.requires_grad
    y = x * 2
    with pytest.raises(kiln.KilnError, match="leaf"):
        y.requires_grad_(False)


def test_errors_name_the_problem():
    x = leaf(3)
    with pytest.raises(kiln.KilnError, match="one element"):
        (x * 2).backward()
    with pytest.raises(kiln.KilnError, match="does not require grad"):
        kiln.ones(2).sum().backward()
    with pytest.raises(kiln.KilnError, match="leaf tensor that requires grad"):
        x.add_(1)
    z = x * 2
    w = z.sin()  # saves z
    z.add_(1)
    with pytest.raises(kiln.KilnError, match="SinBackward.*modified by an in-place"):
        w.sum().backward()
    y = (x * 2).exp().sum()
    y.backward()
    with pytest.raises(kiln.KilnError, match="retain_graph=True"):
        y.backward()
    with pytest.raises(ValueError, match="create_graph"):
        (x * 2).sum().backward(create_graph=True)
    with pytest.raises(kiln.ShapeError):
        (x * 2).backward(kiln.ones(2, dtype=kiln.float64))


def test_in_place_writes_through_views_match_torch():
    a, b = rng.uniform(0.5, 2, (3, 4)), rng.uniform(0.5, 2, (3, 2))
    grads = {}
    for lib in (kiln, torch):
        x = lib.tensor(a, dtype=lib.float64, requires_grad=True)
        w = lib.tensor(b, dtype=lib.float64, requires_grad=True)
        h = x * 2
        h[0].mul_(x[1])          # an in-place op through a view, reading another view
        h[:, 2:] = w.exp()       # __setitem__ of a tracked value
        h[1:, 0].sin_()
        v = h.t()[1]             # a view taken after the writes
        (h.sum() + (v * v).sum()).backward()
        grads[lib] = (x.grad.numpy(), w.grad.numpy())
    np.testing.assert_allclose(grads[kiln][0], grads[torch][0], rtol=1e-12)
    np.testing.assert_allclose(grads[kiln][1], grads[torch][1], rtol=1e-12)


def test_writing_a_tracked_value_into_a_plain_buffer_tracks_the_buffer():
    x = leaf(2)
    buf = kiln.zeros(3, 2, dtype=kiln.float64)
    buf[1] = x * 3
    assert buf.requires_grad
    (buf * buf).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 18 * x.detach().numpy())


def test_in_place_through_a_view_of_a_leaf_is_refused():
    x = leaf(2, 3)
    with pytest.raises(kiln.KilnError, match="view of a leaf"):
        x[0].mul_(2)
    with kiln.no_grad():
        x[0].mul_(2)  # fine without recording


def test_retain_grad_and_autograd_grad():
    x = leaf(3)
    h = x * 2
    h.retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), 2 * h.detach().numpy())
    a, b = leaf(3), leaf(3)
    ga, gb = kiln.autograd.grad((a * b).sum(), (a, b))
    np.testing.assert_allclose(ga.numpy(), b.detach().numpy())
    np.testing.assert_allclose(gb.numpy(), a.detach().numpy())
    assert a.grad is None
    c = leaf(2)
    with pytest.raises(kiln.KilnError, match="not used"):
        kiln.autograd.grad((a * 2).sum(), (a, c))
    assert kiln.autograd.grad((a * 2).sum(), (a, c), allow_unused=True)[1] is None


def test_functional_grad_and_value_and_grad():
    def f(w, x, scale):
        return ((w * x).sum() * scale)

    w, x = kiln.tensor([1.0, 2.0]), kiln.tensor([3.0, 4.0])
    np.testing.assert_allclose(kiln.grad(f)(w, x, 2.0).numpy(), [6.0, 8.0])
    gw, gx = kiln.grad(f, argnums=(0, 1))(w, x, 1.0)
    np.testing.assert_allclose(gx.numpy(), [1.0, 2.0])
    value, g = kiln.value_and_grad(f)(w, x, 1.0)
    assert value.item() == 11.0 and not value.requires_grad
    (value, aux), g = kiln.value_and_grad(lambda w: ((w * w).sum(), "aux"), has_aux=True)(w)
    assert aux == "aux"
    assert not w.requires_grad  # the transform differentiates a copy
    np.testing.assert_allclose(kiln.grad(lambda w, v: (v * 2).sum(), argnums=0)(w, x).numpy(), [0.0, 0.0])
    with pytest.raises(ValueError, match="one-element"):
        kiln.grad(lambda w: w * 2)(w)


UNARY = ["neg", "abs", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid",
         "relu", "gelu", "silu", "erf", "reciprocal", "floor", "ceil", "round", "sign"]
POSITIVE = {"log", "log1p", "sqrt", "rsqrt", "reciprocal"}


@pytest.mark.parametrize("name", UNARY)
def test_unary_gradients_match_torch(name):
    lo = 0.3 if name in POSITIVE else -2.0
    a = rng.uniform(lo, 2.0, (3, 5))
    x = kiln.tensor(a, dtype=kiln.float64, requires_grad=True)
    xt = torch.tensor(a, requires_grad=True)
    g = rng.standard_normal((3, 5))
    getattr(kiln, name)(x).backward(kiln.tensor(g, dtype=kiln.float64))
    torch_fn = getattr(torch, name, None) or getattr(torch.nn.functional, name)
    torch_fn(xt).backward(torch.tensor(g))
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_gelu_tanh_gradient_matches_torch():
    a = rng.uniform(-3, 3, 20)
    x = kiln.tensor(a, dtype=kiln.float64, requires_grad=True)
    xt = torch.tensor(a, requires_grad=True)
    kiln.gelu(x, approximate="tanh").sum().backward()
    torch.nn.functional.gelu(xt, approximate="tanh").sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-10)


BINARY = ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "atan2", "remainder"]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 5)), ((1,), (2, 3))])
def test_binary_gradients_match_torch_with_broadcasting(name, shapes):
    sa, sb = shapes
    a, b = rng.uniform(0.5, 2.0, sa), rng.uniform(0.5, 2.0, sb)
    x, y = (kiln.tensor(v, dtype=kiln.float64, requires_grad=True) for v in (a, b))
    xt, yt = (torch.tensor(v, requires_grad=True) for v in (a, b))
    out = getattr(kiln, name)(x, y)
    out_t = getattr(torch, name)(xt, yt)
    g = rng.standard_normal(tuple(out_t.shape))
    out.backward(kiln.tensor(g, dtype=kiln.float64))
    out_t.backward(torch.tensor(g))
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(y.grad.numpy(), yt.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert x.grad.shape == x.shape and y.grad.shape == y.shape


def test_ties_and_scalar_operands_and_operators():
    x = kiln.tensor([1.0, 2.0, 3.0], dtype=kiln.float64, requires_grad=True)
    kiln.maximum(x, kiln.tensor([1.0, 0.0, 5.0], dtype=kiln.float64)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.5, 1.0, 0.0])
    x.grad = None
    (2.0 ** x + x ** 2 - 1 / x + x.clamp(1.5, 2.5) * 3).sum().backward()
    xv = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(x.grad.numpy(), np.log(2) * 2 ** xv + 2 * xv + 1 / xv ** 2 + [0, 3, 0])


def test_where_and_mixed_dtypes():
    a = kiln.tensor([1.0, -1.0, 2.0], dtype=kiln.float32, requires_grad=True)
    b = kiln.tensor([5.0, 6.0, 7.0], dtype=kiln.float64, requires_grad=True)
    out = kiln.where(a > 0, a, b)
    assert out.dtype == kiln.float64
    out.sum().backward()
    assert a.grad.dtype == kiln.float32 and b.grad.dtype == kiln.float64
    np.testing.assert_allclose(a.grad.numpy(), [1, 0, 1])
    np.testing.assert_allclose(b.grad.numpy(), [0, 1, 0])


def test_in_place_ops_on_non_leaves_match_torch():
    a = rng.uniform(0.5, 2, 6)
    x = kiln.tensor(a, dtype=kiln.float64, requires_grad=True)
    xt = torch.tensor(a, requires_grad=True)
    for lib, v in ((kiln, x), (torch, xt)):
        h = v * 2
        h += 1
        h.mul_(v)
        h.clamp_(0, 10)
        h.sin_()
        h.pow_(2)
        h.relu_()  # saves its output: a later in-place op would break it, in both libraries
        h.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-12)


def test_comparisons_and_integer_results_carry_no_grad():
    x = leaf(3)
    assert not (x > 0).requires_grad
    assert not x.floor().requires_grad or x.floor().dtype == kiln.float64


def test_nested_transforms_are_refused_not_silently_zero():
    f = lambda x: (x * x * x).sum()  # noqa: E731
    with pytest.raises(ValueError, match="nested gradient transforms"):
        kiln.grad(lambda x: kiln.grad(f)(x).sum())(kiln.tensor([1.0, 2.0]))
    np.testing.assert_allclose(kiln.grad(f)(kiln.tensor([1.0, 2.0])).numpy(), [3.0, 12.0])  # still usable after
