"""kiln.jit(f, compile=True) for the ops lowered beyond elementwise: reductions, softmax,
log_softmax, layer_norm, layout ops, integer arithmetic, the losses; compiled vs eager (f
called without jit) on random shapes with sizes 1 and odd sizes, broadcasting, float32
and float64, and each variant checked to be compiled (cache_report).

Tolerances: float reductions combine with fastmath `reassoc`, so LLVM vectorizes them and
sums in another order than eager (which sums float32 in double in places); float32 exp,
log, tanh use MLIR's polynomial approximations. float32: rtol = atol = 1e-5 for rows of a
few hundred elements (2e-5 through layer_norm); float64: 1e-12. Integer results are exact.
"""
import numpy as np
import pytest

import kiln
import kiln.nn.functional as F

TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def compiled(f, *args):
    """Runs f compiled and eager; checks the variant was compiled; returns both results."""
    jf = kiln.jit(f, compile=True)
    got = jf(*args)
    report = jf.cache_report()
    assert "compiled" in report and "not compiled" not in report, report
    return got, f(*args)


def assert_close(got, want, tol):
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and tuple(g.shape) == tuple(w.shape), (g.dtype, w.dtype, g.shape, w.shape)
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=tol, atol=tol)


def rand(rng, shape, dtype, scale=1.0):
    return kiln.from_numpy((rng.standard_normal(shape) * scale).astype(dtype))


def random_shape(rng, rank=None):
    rank = int(rng.integers(1, 5)) if rank is None else rank
    return tuple(int(rng.choice([1, 2, 3, 5, 7, 17, 64])) for _ in range(rank))


def random_dims(rng, rank):
    k = int(rng.integers(1, rank + 1))
    return tuple(sorted(int(d) for d in rng.choice(rank, k, replace=False)))


# ---- reductions ----

REDUCTIONS = {
    "sum": lambda x, d, k: x.sum(dim=d, keepdim=k),
    "mean": lambda x, d, k: x.mean(dim=d, keepdim=k),
    "amax": lambda x, d, k: x.amax(dim=d, keepdim=k),
    "amin": lambda x, d, k: x.amin(dim=d, keepdim=k),
    "amax_negative": lambda x, d, k: (x - 10).amax(dim=d, keepdim=k),  # the identity is -inf, not 0
    "amin_positive": lambda x, d, k: (x + 10).amin(dim=d, keepdim=k),
    "prod": lambda x, d, k: (x.tanh() * 0.5 + 1).prod(dim=d, keepdim=k),
    "var": lambda x, d, k: x.var(dim=d, keepdim=k),
    "std": lambda x, d, k: x.std(dim=d, keepdim=k),
    "logsumexp": lambda x, d, k: x.logsumexp(dim=d, keepdim=k),
    "any": lambda x, d, k: (x > 1).any(dim=d, keepdim=k),
    "all": lambda x, d, k: (x > -1).all(dim=d, keepdim=k),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(6))
def test_reduction_over_random_dims(name, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = random_shape(rng)
    dims, keepdim = random_dims(rng, len(shape)), bool(seed % 2)
    x = rand(rng, shape, dtype)
    if name == "var" and all(shape[d] == 1 for d in dims):
        dims = tuple(range(len(shape)))  # one element: var with correction 1 is NaN, not a test of arithmetic
    got, want = compiled(lambda v: REDUCTIONS[name](v, dims, keepdim), x)
    assert_close(got, want, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_reduction_of_all_dims_and_of_a_broadcast_sum(dtype):
    rng = np.random.default_rng(7)
    a, b = rand(rng, (5, 1, 3), dtype), rand(rng, (4, 1), dtype)

    def f(a, b):
        h = (a + b) * 2  # (5, 4, 3)
        # the gradient of a broadcast add: summed back to each operand's shape
        return h.sum(), h.sum(dim=1, keepdim=True), h.sum(dim=(0, 2)).reshape(4, 1), h.mean(dim=(0, 1, 2))

    got, want = compiled(f, a, b)
    assert_close(got, want, TOL[dtype] * 10)


def test_long_float32_sum_tolerance():
    """10^5 float32 values: the reassociated sum agrees with eager's within rtol 1e-5."""
    x = kiln.from_numpy(np.random.default_rng(3).random(100_003).astype(np.float32))
    got, want = compiled(lambda v: v.sum(), x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5)


def test_integer_reductions_are_exact():
    x = kiln.from_numpy(np.random.default_rng(4).integers(-50, 50, (6, 7)).astype(np.int32))
    got, want = compiled(lambda v: (v.sum(dim=1), v.amax(dim=0), v.amin(dim=1, keepdim=True), (v > 0).sum()), x)
    assert_close(got, want, 0)


# ---- softmax, log_softmax, layer_norm ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(8))
def test_softmax_and_log_softmax(dtype, seed):
    rng = np.random.default_rng(seed)
    shape = random_shape(rng)
    dim = int(rng.integers(-len(shape), len(shape)))
    x = rand(rng, shape, dtype, scale=4.0)
    got, want = compiled(lambda v: (kiln.softmax(v, dim), kiln.log_softmax(v * 2 + 1, dim)), x)
    assert_close(got, want, TOL[dtype])


def test_masked_softmax_with_minus_infinity():
    x = np.random.default_rng(5).standard_normal((4, 9)).astype(np.float32)
    x[0, :3] = -np.inf
    x[2, :] = -np.inf  # a fully masked row is NaN, as eager
    got, want = compiled(lambda v: (kiln.softmax(v, -1), kiln.log_softmax(v, -1)), kiln.from_numpy(x))
    assert_close(got, want, 1e-5)
    assert np.isnan(got[0].numpy()[2]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(6))
def test_layer_norm(dtype, seed):
    rng = np.random.default_rng(seed)
    shape = random_shape(rng)
    k = int(rng.integers(1, len(shape) + 1))
    norm = shape[len(shape) - k:]
    x, w, b = rand(rng, shape, dtype, 3.0) + 2.0, rand(rng, norm, dtype), rand(rng, norm, dtype)
    # (not of tanh(x): rows of saturated tanh values have a tiny spread, which amplifies the
    # few-ulp difference of the float32 tanh approximations beyond any fixed tolerance)
    got, want = compiled(lambda x, w, b: (kiln.layer_norm(x, norm, w, b, 1e-5), kiln.layer_norm(x * 0.5 - 1, norm)),
                         x, w, b)
    assert_close(got, want, 2e-5 if dtype == np.float32 else 1e-10)


def test_softmax_and_layer_norm_are_three_generics_in_one_kernel():
    """Two one-result reductions (max and sum of exp; mean and mean squared deviation) and
    one elementwise generic, with elementwise producers fused into them; over the last dim
    they share one kernel (which starts each reduction with a fill generic of no inputs)."""
    x, w = kiln.ones(8, 33), kiln.ones(33)
    for f, kernels in ((lambda x, w: kiln.softmax(x * 2 + 1, -1), 1), (lambda x, w: kiln.log_softmax(x, 0), 3),
                       (lambda x, w: kiln.layer_norm(x.tanh(), (33,), w, w, 1e-5), 1)):
        fused = kiln.jit(f, compile=True).lower(x, w).ir("fused", locations=False)
        fills = fused.count('iterator_types = ["parallel"]} outs(')
        assert fused.count("linalg.generic") - fills == 3 and fused.count('"reduction"') == 2, fused
        assert fused.count("call @k") <= kernels, fused


def test_softmax_backward_formula_compiles():
    """softmax's and log_softmax's backward rules (mul, sum keepdim, sub, exp) as a trace records them."""
    rng = np.random.default_rng(6)
    x, g = rand(rng, (5, 11), np.float64), rand(rng, (5, 11), np.float64)

    def f(x, g):
        y = kiln.softmax(x, 1)
        dy = y * (g - (g * y).sum(dim=1, keepdim=True))
        lz = kiln.log_softmax(x, 1)
        dl = g - lz.exp() * g.sum(dim=1, keepdim=True)
        return dy, dl

    got, want = compiled(f, x, g)
    assert_close(got, want, 1e-12)


# ---- layout ----

LAYOUT = {
    "permute": lambda v: v.permute(2, 0, 1) * 1.5,
    "transpose": lambda v: v.transpose(0, 2),
    "t_of_matrix": lambda v: v.reshape(v.shape[0], -1).t() + 1,
    "reshape": lambda v: v.reshape(-1),
    "reshape_regroup": lambda v: v.reshape(v.shape[2], v.shape[0], v.shape[1]),
    "view": lambda v: v.contiguous().view(v.shape[0] * v.shape[1], v.shape[2]),
    "flatten": lambda v: v.flatten(1),
    "unsqueeze_squeeze": lambda v: v.unsqueeze(1).exp().squeeze(1),
    "narrow": lambda v: v.narrow(2, 1, v.shape[2] - 1),
    "select": lambda v: v.select(1, -1),
    "slice_step": lambda v: v[:, :, 1::2],
    "slice_prefix": lambda v: v[:, :, :-1] + v[:, :, 1:],
    "narrow_prefix": lambda v: v.narrow(1, 0, 1) * 3,
    "contiguous": lambda v: v.transpose(1, 2).contiguous(),
    "split": lambda v: v.split(1, dim=1),
    "chunk": lambda v: tuple(p * 2 for p in v.chunk(2, dim=-1)),
    "split_with_sizes": lambda v: v.split([1, v.shape[2] - 1], dim=2),
    "broadcast_tensors": lambda v: kiln.broadcast_tensors(v, v[:, :1, :], v[0, 0, :]),
    "masked_fill": lambda v: v.masked_fill(v[:, :1, :] > 0, -1.5),
}


@pytest.mark.parametrize("name", sorted(LAYOUT))
@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 7, 2), (3, 1, 4)])
def test_layout_ops(name, shape):
    x = rand(np.random.default_rng(8), shape, np.float32)
    got, want = compiled(LAYOUT[name], x)
    assert_close(got, want, 0 if name != "unsqueeze_squeeze" else 2e-5)


# ---- integers ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_argmax_and_max_with_indices(dtype):
    """Ties go to the first extreme, NaN beats every number (the first NaN wins)."""
    rng = np.random.default_rng(14)
    x = rng.integers(-3, 4, (5, 6, 7)).astype(dtype)  # many ties
    if dtype != np.int32:
        x[1, 2, 3] = x[3, 0, 0] = x[3, 4, 0] = np.nan
    x = kiln.from_numpy(x)

    def f(x):
        v, i = x.max(dim=1)
        w, j = x.min(dim=-1, keepdim=True)
        return v, i, w, j, x.argmax(), x.argmin(dim=0), x.argmax(dim=2, keepdim=True)

    got, want = compiled(f, x)
    assert_close(got, want, 0)


def test_bitwise_ops():
    rng = np.random.default_rng(15)
    a = kiln.from_numpy(rng.integers(-100, 100, (4, 5)))
    b = kiln.from_numpy(rng.integers(-100, 100, (5,)))
    got, want = compiled(lambda a, b: (a & b, a | b, a ^ b, (a > 0) & (b > 0), (a > 0) ^ (b < 0)), a, b)
    assert_close(got, want, 0)


def test_one_hot_and_gelu_tanh():
    rng = np.random.default_rng(13)
    t = kiln.from_numpy(rng.integers(0, 5, (3, 4)))
    got, want = compiled(lambda t: kiln.one_hot(t, 6) * 2, t)
    assert_close(got, want, 0)
    x = rand(rng, (7, 9), np.float32, 3.0)
    got, want = compiled(lambda x: F.gelu(x, approximate="tanh"), x)
    assert_close(got, want, 2e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_arithmetic(dtype):
    rng = np.random.default_rng(9)
    a = kiln.from_numpy(rng.integers(-100, 100, (4, 1, 3)).astype(dtype))
    b = kiln.from_numpy(rng.integers(-100, 100, (5, 1)).astype(dtype))

    def f(a, b):
        return (a + b, a - b * 3, -a, a.abs(), kiln.maximum(a, b), kiln.minimum(a, b), kiln.where(a > b, a, b),
                a * 2 + 1, (a.to(kiln.float64) * 0.37).to(a.dtype), a.to(kiln.bool), (a > 0).to(kiln.int32) + b)

    got, want = compiled(f, a, b)
    assert_close(got, want, 0)


# ---- a training step's pieces ----

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy(reduction, dtype):
    rng = np.random.default_rng(10)
    x = rand(rng, (9, 7), dtype, 3.0)
    t = rng.integers(0, 7, 9)
    t[4] = -100
    t = kiln.from_numpy(t)
    w = kiln.from_numpy((rng.random(7) + 0.5).astype(dtype))
    got, want = compiled(lambda x, t, w: (F.cross_entropy(x, t, reduction=reduction),
                                          F.cross_entropy(x, t, weight=w, reduction=reduction)), x, t, w)
    assert_close(got, want, TOL[dtype] * 10)
    logp = kiln.log_softmax(x, 1)
    got, want = compiled(lambda x, t, w: (F.nll_loss(x, t, reduction=reduction),
                                          F.nll_loss(x, t, weight=w, reduction=reduction)), logp, t, w)
    assert_close(got, want, TOL[dtype] * 10)


def test_mlp_forward_pieces():
    """Everything of an MLP step around the matmuls: bias add, relu, its backward, the loss,
    the bias gradient (a sum to shape)."""
    rng = np.random.default_rng(11)
    h, b, g = rand(rng, (16, 33), np.float32), rand(rng, (33,), np.float32), rand(rng, (16, 33), np.float32)

    def f(h, b, g):
        y = (h + b).relu()
        dh = kiln.where(y > 0, g, 0.0)
        return y, dh, dh.sum(dim=0), F.gelu(h) * kiln.softmax(h, -1)

    got, want = compiled(f, h, b, g)
    assert_close(got, want, 2e-5)


@pytest.mark.filterwarnings("ignore:mse_loss")  # broadcasting on purpose
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_loss_with_broadcasting(reduction, dtype):
    rng = np.random.default_rng(12)
    a, b = rand(rng, (5, 1, 3), dtype), rand(rng, (4, 1), dtype)
    got, want = compiled(lambda a, b: F.mse_loss(a, b, reduction=reduction), a, b)
    assert_close(got, want, TOL[dtype] * 10)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_with_logits(reduction, dtype):
    rng = np.random.default_rng(16)
    x, w, pw = rand(rng, (6, 5), dtype, 4.0), rand(rng, (5,), dtype).abs(), rand(rng, (5,), dtype).abs() + 0.5
    t = kiln.from_numpy(rng.random((6, 5)).astype(dtype))

    def f(x, t, w, pw):
        return (F.binary_cross_entropy_with_logits(x, t, reduction=reduction),
                F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw, reduction=reduction),
                F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction=reduction))

    got, want = compiled(f, x, t, w, pw)
    assert_close(got, want, 2e-5 if dtype == np.float32 else 1e-12)
