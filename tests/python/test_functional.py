"""kiln.nn.functional against torch.nn.functional (PyTorch 1.13): forward values
and gradients from the same inputs, weights and upstream gradient, over random
odd shapes and every option; plus finite-difference gradchecks in float64 for
the hand-written backward rules, and the error messages."""
import math

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as KF

TF = torch.nn.functional

TOL = {"float64": (1e-9, 1e-11), "float32": (2e-5, 2e-5)}


def _np_dtype(name):
    return {"float32": np.float32, "float64": np.float64}[name]


def _c(a):
    return np.array(a, copy=True, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)


def kt(a, grad=False):
    t = kiln.from_numpy(_c(a))
    return t.requires_grad_(True) if grad else t


def tt(a, grad=False):
    return torch.from_numpy(_c(a)).requires_grad_(grad)


def close(got, expected, dtype="float64", msg="", rtol=None, atol=None):
    r, a = TOL[dtype]
    r, a = rtol or r, atol or a
    g = got.detach().numpy() if isinstance(got, torch.Tensor) else got.numpy()
    e = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert g.shape == e.shape, f"{msg}: shape {g.shape} vs {e.shape}"
    np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), rtol=r, atol=a, equal_nan=True,
                               err_msg=msg)


def compare(kfn, tfn, arrays, grads, dtype="float64", rtol=None, atol=None, seed=0):
    """Runs kfn on kiln tensors and tfn on torch tensors made from `arrays`
    (None passes through; integer arrays never require grad); compares the
    outputs, then backpropagates one random upstream gradient through both and
    compares the gradients of the inputs at positions `grads`."""
    ka = [None if a is None else kt(a, i in grads) for i, a in enumerate(arrays)]
    ta = [None if a is None else tt(a, i in grads) for i, a in enumerate(arrays)]
    ko, to = kfn(*ka), tfn(*ta)
    assert tuple(ko.shape) == tuple(to.shape), f"shape {tuple(ko.shape)} vs {tuple(to.shape)}"
    assert str(ko.dtype).replace("kiln.", "") == str(to.dtype).replace("torch.", "")
    close(ko, to, dtype, "forward", rtol, atol)
    if not grads:
        return ko, to
    up = np.random.default_rng(seed).standard_normal(tuple(to.shape)).astype(to.detach().numpy().dtype)
    ko.backward(kiln.from_numpy(_c(up)))
    to.backward(torch.from_numpy(up))
    for i in grads:
        assert ka[i].grad is not None, f"no gradient for input {i}"
        close(ka[i].grad, ta[i].grad, dtype, f"grad of input {i}", rtol, atol)
    return ko, to


def gradcheck(fn, arrays, grads, eps=1e-6, rtol=1e-5, atol=1e-7, seed=1):
    """Analytic gradients of sum(fn(*inputs) * up) against central differences (float64)."""
    ka = [None if a is None else kt(a, i in grads) for i, a in enumerate(arrays)]
    out = fn(*ka)
    up = np.random.default_rng(seed).standard_normal(tuple(out.shape))
    out.backward(kiln.from_numpy(_c(up)))

    def value(vals):
        with kiln.no_grad():
            o = fn(*[None if v is None else kt(v) for v in vals]).numpy()
        return float((o * up).sum())

    for i in grads:
        base = [None if a is None else np.array(a, copy=True) for a in arrays]
        num = np.zeros_like(base[i])
        flat = base[i].reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            hi = value(base)
            flat[j] = old - eps
            lo = value(base)
            flat[j] = old
            num.reshape(-1)[j] = (hi - lo) / (2 * eps)
        np.testing.assert_allclose(ka[i].grad.numpy(), num, rtol=rtol, atol=atol, err_msg=f"gradcheck input {i}")


@pytest.fixture
def rng(request):
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# ---------------------------------------------------------------- linear

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("xshape,out,bias", [
    ((7, 5), 3, True), ((7, 5), 3, False), ((5,), 4, True), ((2, 3, 9), 6, True), ((1, 8), 1, True),
    ((4, 1), 7, False), ((0, 5), 3, True), ((3, 0), 2, True), ((4, 3), 0, True), ((33, 65), 17, True),
    ((6, 5), 1, True), ((256, 784), 512, True),
])
def test_linear(rng, dtype, xshape, out, bias):
    d = _np_dtype(dtype)
    x = rng.standard_normal(xshape).astype(d)
    w = rng.standard_normal((out, xshape[-1])).astype(d)
    b = rng.standard_normal(out).astype(d) if bias else None
    rtol, atol = (1e-4, 1e-4) if dtype == "float32" else (None, None)
    compare(KF.linear, TF.linear, [x, w, b], [0, 1, 2] if bias else [0, 1], dtype, rtol, atol)


def test_linear_transposed_weight(rng):
    x = rng.standard_normal((6, 4))
    wt = rng.standard_normal((4, 3))  # weight given as a transposed view
    got = KF.linear(kt(x), kt(wt).T)
    close(got, x @ wt)


def test_linear_gradcheck(rng):
    gradcheck(KF.linear, [rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal(2)],
              [0, 1, 2])


def test_linear_float16():
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    w = np.ones((2, 4), np.float32)
    got = KF.linear(kt(x).to(kiln.float16), kt(w).to(kiln.float16))
    assert got.dtype == kiln.float16
    close(got.to(kiln.float32), x @ w.T, "float32", rtol=1e-3, atol=1e-3)


def test_linear_errors():
    with pytest.raises(ValueError, match=r"linear: expected input of shape \(\.\.\., 4\) \(weight \(3, 4\)\), got \(2, 5\)"):
        KF.linear(kiln.zeros(2, 5), kiln.zeros(3, 4))
    with pytest.raises(ValueError, match="linear: expected weight of shape"):
        KF.linear(kiln.zeros(2, 4), kiln.zeros(4))
    with pytest.raises(ValueError, match=r"linear: expected bias of shape \(3\)"):
        KF.linear(kiln.zeros(2, 4), kiln.zeros(3, 4), kiln.zeros(4))
    with pytest.raises(TypeError, match="linear: expected weight of dtype float32"):
        KF.linear(kiln.zeros(2, 4), kiln.zeros(3, 4, dtype=kiln.float64))


# ---------------------------------------------------------------- conv2d

CONV_CASES = [
    # x shape, weight shape, stride, padding, dilation, groups
    ((2, 3, 7, 9), (4, 3, 3, 3), 1, 0, 1, 1),
    ((2, 3, 7, 9), (4, 3, 3, 3), 1, 1, 1, 1),
    ((3, 4, 11, 10), (6, 2, 3, 2), (2, 1), (1, 0), 1, 2),
    ((1, 2, 9, 9), (3, 2, 3, 3), 2, 2, 2, 1),
    ((2, 6, 8, 7), (6, 1, 3, 3), 1, 1, 1, 6),  # depthwise
    ((2, 5, 6, 6), (7, 5, 1, 1), 1, 0, 1, 1),  # 1x1: col is the input itself
    ((2, 4, 6, 5), (4, 2, 1, 1), 1, 0, 1, 2),  # grouped 1x1
    ((2, 3, 9, 8), (2, 3, 1, 1), 2, 0, 1, 1),  # strided 1x1
    ((5, 6, 8), (4, 5, 3, 3), 1, 1, 1, 1),     # unbatched CHW
    ((1, 1, 5, 5), (1, 1, 5, 5), 1, 0, 1, 1),  # kernel = input
    ((4, 3, 13, 13), (8, 3, 5, 5), 3, 2, 1, 1),
    ((8, 16, 16, 16), (32, 16, 3, 3), 1, 1, 1, 1),  # big enough for OpenBLAS threads
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d(rng, xs, ws, stride, padding, dilation, groups, bias):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if bias else None

    def kf(x, w, b):
        return KF.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    def tf(x, w, b):
        return TF.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    compare(kf, tf, [x, w, b], [0, 1, 2] if bias else [0, 1])


def test_conv2d_float32(rng):
    x = rng.standard_normal((4, 3, 10, 12)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    compare(lambda x, w, b: KF.conv2d(x, w, b, padding=1), lambda x, w, b: TF.conv2d(x, w, b, padding=1),
            [x, w, b], [0, 1, 2], "float32", 1e-4, 1e-4)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_string_padding(rng, padding):
    x, w = rng.standard_normal((2, 3, 7, 8)), rng.standard_normal((4, 3, 4, 3))
    compare(lambda x, w: KF.conv2d(x, w, padding=padding), lambda x, w: TF.conv2d(x, w, padding=padding),
            [x, w], [0, 1])


def test_conv2d_gradcheck(rng):
    gradcheck(lambda x, w, b: KF.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
              [rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((4, 2, 2, 3)), rng.standard_normal(4)],
              [0, 1, 2])


def test_conv2d_errors():
    with pytest.raises(ValueError, match=re_escape(
            "conv2d: expected input of shape (N, C, H, W) with C = 3 (weight (16, 3, 3, 3)), got (8, 4, 32, 32)")):
        KF.conv2d(kiln.zeros(8, 4, 32, 32), kiln.zeros(16, 3, 3, 3))
    with pytest.raises(ValueError, match="conv2d: expected a 4-D input"):
        KF.conv2d(kiln.zeros(4, 32), kiln.zeros(16, 3, 3, 3))
    with pytest.raises(ValueError, match="divisible by groups"):
        KF.conv2d(kiln.zeros(1, 4, 8, 8), kiln.zeros(3, 2, 3, 3), groups=2)
    with pytest.raises(ValueError, match="larger than the padded input"):
        KF.conv2d(kiln.zeros(1, 3, 2, 2), kiln.zeros(1, 3, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: expected bias of shape \(16\)"):
        KF.conv2d(kiln.zeros(1, 3, 8, 8), kiln.zeros(16, 3, 3, 3), kiln.zeros(3))
    with pytest.raises(ValueError, match="stride must be positive"):
        KF.conv2d(kiln.zeros(1, 3, 8, 8), kiln.zeros(16, 3, 3, 3), stride=0)
    with pytest.raises(TypeError, match="conv2d: expected a floating point input"):
        KF.conv2d(kiln.zeros(1, 3, 8, 8, dtype=kiln.int64), kiln.zeros(16, 3, 3, 3, dtype=kiln.int64))


def re_escape(s):
    import re
    return re.escape(s)


# ---------------------------------------------------------------- pooling

POOL_CASES = [
    # x shape, kernel, stride, padding, ceil_mode
    ((2, 3, 8, 9), 2, None, 0, False),
    ((2, 3, 9, 7), 3, 2, 1, False),
    ((2, 3, 9, 7), 3, 2, 1, True),
    ((1, 2, 10, 11), (3, 2), (2, 3), (1, 1), True),
    ((3, 7, 7), 2, 1, 0, False),  # unbatched
    ((2, 2, 5, 5), 4, 3, 2, True),
    ((1, 1, 6, 6), 3, 3, 0, True),
]


@pytest.mark.parametrize("xs,k,s,p,ceil", POOL_CASES)
@pytest.mark.parametrize("dilation", [1, 2])
def test_max_pool2d(rng, xs, k, s, p, ceil, dilation):
    # Distinct values: the argmax (and so the gradient) is unique.
    x = rng.permutation(np.prod(xs)).reshape(xs).astype(np.float64) / 7
    kk = k if isinstance(k, tuple) else (k, k)
    if (kk[0] - 1) * dilation + 1 > xs[-2] + 2 * (p if isinstance(p, int) else p[0]):
        pytest.skip("kernel larger than the input")
    compare(lambda x: KF.max_pool2d(x, k, s, p, dilation, ceil), lambda x: TF.max_pool2d(x, k, s, p, dilation, ceil),
            [x], [0])


def test_max_pool2d_overlapping_and_ties(rng):
    # Overlapping windows send several gradients to one input; ties pick the first.
    x = np.round(rng.standard_normal((2, 3, 7, 6)))
    compare(lambda x: KF.max_pool2d(x, 3, 1, 1), lambda x: TF.max_pool2d(x, 3, 1, 1), [x], [0])


def test_max_pool2d_nan():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    got = KF.max_pool2d(kt(x), 2).numpy()
    assert np.isnan(got[0, 0, 0, 0]) and got[0, 0, 1, 1] == 15


@pytest.mark.parametrize("xs,k,s,p,ceil", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d(rng, xs, k, s, p, ceil, count_include_pad):
    x = rng.standard_normal(xs)
    compare(lambda x: KF.avg_pool2d(x, k, s, p, ceil, count_include_pad),
            lambda x: TF.avg_pool2d(x, k, s, p, ceil, count_include_pad), [x], [0])


def test_avg_pool2d_float32(rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    compare(lambda x: KF.avg_pool2d(x, 3, 2, 1), lambda x: TF.avg_pool2d(x, 3, 2, 1), [x], [0], "float32")


@pytest.mark.parametrize("xs,out", [
    ((2, 3, 8, 9), (4, 3)), ((2, 3, 7, 5), (3, 4)), ((1, 2, 5, 5), 1), ((3, 6, 7), (7, 2)),
    ((2, 2, 4, 4), (6, 5)), ((2, 2, 9, 9), (None, 4)),
])
def test_adaptive_avg_pool2d(rng, xs, out):
    x = rng.standard_normal(xs)
    compare(lambda x: KF.adaptive_avg_pool2d(x, out), lambda x: TF.adaptive_avg_pool2d(x, out), [x], [0])


def test_pool_gradcheck(rng):
    x = rng.standard_normal((1, 2, 5, 6))
    gradcheck(lambda x: KF.avg_pool2d(x, 3, 2, 1, True, False), [x], [0])
    gradcheck(lambda x: KF.adaptive_avg_pool2d(x, (3, 4)), [x], [0])
    gradcheck(lambda x: KF.max_pool2d(x, 2, 1, 1, 2, True), [x], [0])


def test_pool_errors():
    with pytest.raises(ValueError, match="max_pool2d: expected a 4-D input"):
        KF.max_pool2d(kiln.zeros(4, 4), 2)
    with pytest.raises(ValueError, match="at most half of kernel_size"):
        KF.max_pool2d(kiln.zeros(1, 1, 4, 4), 2, padding=2)
    with pytest.raises(ValueError, match="avg_pool2d: the output would be empty"):
        KF.avg_pool2d(kiln.zeros(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        KF.avg_pool2d(kiln.zeros(1, 1, 4, 4), 0)


# ---------------------------------------------------------------- dropout

def test_dropout_statistics_and_grad():
    kiln.manual_seed(0)
    x = kt(np.ones((200, 500)), grad=True)
    y = KF.dropout(x, 0.3)
    v = y.numpy()
    kept = v != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(v[kept], 1 / 0.7)
    y.backward(kiln.ones(200, 500, dtype=kiln.float64))
    np.testing.assert_allclose(x.grad.numpy(), v)  # the same mask scales the gradient


def test_dropout_same_seed_same_mask():
    x = kiln.ones(50, 40)
    kiln.manual_seed(3)
    a = KF.dropout(x, 0.5).numpy()
    kiln.manual_seed(3)
    b = KF.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)


def test_dropout_edges():
    x = kt(np.arange(6.0).reshape(2, 3), grad=True)
    for y in (KF.dropout(x, 0.5, training=False), KF.dropout(x, 0.0)):  # the input itself
        assert y.grad_fn is None and y.requires_grad
        np.testing.assert_array_equal(y.numpy(), x.numpy())
    z = KF.dropout(x, 1.0)
    np.testing.assert_array_equal(z.numpy(), np.zeros((2, 3)))
    z.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((2, 3)))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout: probability has to be between 0 and 1, but got"):
            KF.dropout(x, p)


# ---------------------------------------------------------------- batch_norm

@pytest.mark.parametrize("xs", [(8, 5), (4, 3, 7), (3, 4, 5, 6), (2, 3, 1, 1), (5, 2, 2, 3, 2)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm(rng, xs, training, affine):
    C = xs[1]
    x = rng.standard_normal(xs) * 2 + 1
    w = rng.standard_normal(C) if affine else None
    b = rng.standard_normal(C) if affine else None
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    krm, krv, trm, trv = kt(rm), kt(rv), tt(rm), tt(rv)

    def kf(x, w, b):
        return KF.batch_norm(x, krm, krv, w, b, training=training, momentum=0.2, eps=1e-4)

    def tf(x, w, b):
        return TF.batch_norm(x, trm, trv, w, b, training=training, momentum=0.2, eps=1e-4)

    compare(kf, tf, [x, w, b], [0, 1, 2] if affine else [0])
    close(krm, trm, msg="running_mean")
    close(krv, trv, msg="running_var")


def test_batch_norm_no_running_stats(rng):
    x = rng.standard_normal((6, 3, 4))
    compare(lambda x: KF.batch_norm(x, None, None, training=True), lambda x: TF.batch_norm(x, None, None, training=True),
            [x], [0])


def test_batch_norm_float32_running_stats_unchanged_version(rng):
    x = rng.standard_normal((16, 4, 5, 5)).astype(np.float32)
    rm, rv = kiln.zeros(4), kiln.ones(4)
    trm, trv = torch.zeros(4), torch.ones(4)
    compare(lambda x: KF.batch_norm(x, rm, rv, training=True), lambda x: TF.batch_norm(x, trm, trv, training=True),
            [x], [0], "float32", 1e-4, 1e-5)
    close(rm, trm, "float32", "running_mean")
    close(rv, trv, "float32", "running_var")


def test_batch_norm_gradcheck(rng):
    args = [rng.standard_normal((4, 3, 2)), rng.standard_normal(3), rng.standard_normal(3)]
    gradcheck(lambda x, w, b: KF.batch_norm(x, None, None, w, b, training=True), args, [0, 1, 2])
    gradcheck(lambda x, w, b: KF.batch_norm(x, kt(np.ones(3) * 0.3), kt(np.ones(3) * 2), w, b, training=False),
              args, [0, 1, 2])


def test_batch_norm_errors():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        KF.batch_norm(kiln.zeros(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match=r"batch_norm: expected running_mean of shape \(3\)"):
        KF.batch_norm(kiln.zeros(4, 3), kiln.zeros(4), kiln.ones(3))
    with pytest.raises(ValueError, match="needed when training=False"):
        KF.batch_norm(kiln.zeros(4, 3), None, None)
    with pytest.raises(ValueError, match="batch_norm: expected an input of shape"):
        KF.batch_norm(kiln.zeros(4), None, None, training=True)


# ---------------------------------------------------------------- embedding

@pytest.mark.parametrize("idx_shape", [(5,), (3, 4), (2, 3, 2), ()])
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding(rng, idx_shape, padding_idx):
    idx = rng.integers(0, 6, idx_shape)
    if idx.size > 1:
        idx.reshape(-1)[:2] = 2  # repeated indices accumulate; one is the padding row
    w = rng.standard_normal((6, 5))
    compare(lambda i, w: KF.embedding(i, w, padding_idx), lambda i, w: TF.embedding(i, w, padding_idx),
            [idx, w], [1])


def test_embedding_int32_indices_and_errors(rng):
    w = rng.standard_normal((4, 3))
    got = KF.embedding(kt(np.array([3, 0], np.int32)), kt(w))
    close(got, w[[3, 0]])
    with pytest.raises(IndexError, match=r"embedding: index 4 is out of range for a weight with 4 rows"):
        KF.embedding(kt(np.array([1, 4])), kt(w))
    with pytest.raises(IndexError, match="index -1 is out of range"):
        KF.embedding(kt(np.array([-1])), kt(w))
    with pytest.raises(TypeError, match="embedding: expected indices of an integer dtype"):
        KF.embedding(kt(np.array([1.0])), kt(w))


# ---------------------------------------------------------------- losses

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), ()])
def test_mse_loss(rng, reduction, shape):
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    compare(lambda a, b: KF.mse_loss(a, b, reduction=reduction), lambda a, b: TF.mse_loss(a, b, reduction=reduction),
            [a, b], [0, 1])


def test_mse_loss_legacy_flags(rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    with pytest.warns(UserWarning):
        got = KF.mse_loss(kt(a), kt(b), size_average=False)
    close(got, ((a - b) ** 2).sum())


def _targets(rng, N_shape, C, ignore=None):
    t = rng.integers(0, C, N_shape)
    if ignore is not None and t.size > 1:
        t.reshape(-1)[1] = ignore
    return t


NLL_SHAPES = [((6, 5), (6,)), ((3, 4, 5), (3, 5)), ((2, 3, 4, 2), (2, 4, 2)), ((5,), ()), ((1, 7), (1,))]


@pytest.mark.parametrize("xs,ts", NLL_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_nll_loss(rng, xs, ts, reduction, weighted, ignore_index):
    C = xs[1] if len(xs) > 1 else xs[0]
    x = rng.standard_normal(xs)
    t = _targets(rng, ts, C, ignore_index if ignore_index >= 0 else None)
    w = rng.uniform(0.2, 2, C) if weighted else None

    def kf(x, t, w):
        return KF.nll_loss(x, t, w, ignore_index=ignore_index, reduction=reduction)

    def tf(x, t, w):
        return TF.nll_loss(x, t, w, ignore_index=ignore_index, reduction=reduction)

    compare(kf, tf, [x, t, w], [0])


@pytest.mark.parametrize("xs,ts", NLL_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_indices(rng, xs, ts, reduction, weighted, smoothing, ignore_index):
    C = xs[1] if len(xs) > 1 else xs[0]
    x = rng.standard_normal(xs) * 3
    t = _targets(rng, ts, C, ignore_index if ignore_index >= 0 else None)
    w = rng.uniform(0.2, 2, C) if weighted else None

    def kf(x, t, w):
        return KF.cross_entropy(x, t, w, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)

    def tf(x, t, w):
        return TF.cross_entropy(x, t, w, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)

    compare(kf, tf, [x, t, w], [0])


@pytest.mark.parametrize("xs", [(6, 5), (3, 4, 5), (2, 3, 2, 2), (5,)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_probabilities(rng, xs, reduction, weighted, smoothing):
    C = xs[1] if len(xs) > 1 else xs[0]
    x = rng.standard_normal(xs)
    cdim = 1 if len(xs) > 1 else 0
    p = np.exp(rng.standard_normal(xs))
    p /= p.sum(axis=cdim, keepdims=True)
    w = rng.uniform(0.2, 2, C) if weighted else None

    def kf(x, p, w):
        return KF.cross_entropy(x, p, w, reduction=reduction, label_smoothing=smoothing)

    def tf(x, p, w):
        return TF.cross_entropy(x, p, w, reduction=reduction, label_smoothing=smoothing)

    compare(kf, tf, [x, p, w], [0, 1])


def test_cross_entropy_float32_large_and_extreme(rng):
    x = (rng.standard_normal((64, 1000)) * 30).astype(np.float32)
    x[0, 0] = 1e4  # one dominant logit: no overflow
    t = rng.integers(0, 1000, 64)
    compare(lambda x, t: KF.cross_entropy(x, t), lambda x, t: TF.cross_entropy(x, t), [x, t], [0], "float32",
            1e-4, 1e-6)


def test_cross_entropy_all_ignored_is_nan():
    x = kt(np.zeros((2, 3)))
    assert math.isnan(KF.cross_entropy(x, kt(np.array([-100, -100]))).item())
    assert math.isnan(KF.nll_loss(x, kt(np.array([-100, -100]))).item())


def test_loss_gradchecks(rng):
    x = rng.standard_normal((3, 4, 2))
    t = rng.integers(0, 4, (3, 2))
    t[0, 0] = 1
    w = rng.uniform(0.5, 2, 4)
    gradcheck(lambda x: KF.cross_entropy(x, kt(t), kt(w), ignore_index=1, label_smoothing=0.1), [x], [0])
    gradcheck(lambda x: KF.nll_loss(x, kt(t), kt(w), reduction="sum"), [x], [0])
    p = np.exp(rng.standard_normal((3, 4)))
    p /= p.sum(1, keepdims=True)
    gradcheck(lambda x, p: KF.cross_entropy(x, p, kt(w), label_smoothing=0.3), [x[:, :, 0].copy(), p], [0, 1])
    tb = rng.uniform(0, 1, (3, 4))
    gradcheck(lambda x, t: KF.binary_cross_entropy_with_logits(x, t, kt(w), pos_weight=kt(w[::-1].copy())),
              [x[:, :, 0].copy(), tb], [0, 1])


def test_loss_errors():
    x = kiln.zeros(4, 3)
    with pytest.raises(IndexError, match="nll_loss: target 3 is out of bounds for 3 classes"):
        KF.nll_loss(x, kt(np.array([0, 1, 3, 0])))
    with pytest.raises(IndexError, match="cross_entropy: target -2 is out of bounds"):
        KF.cross_entropy(x, kt(np.array([0, 1, -2, 0])))
    with pytest.raises(ValueError, match=re_escape("cross_entropy: expected a target of shape (4,) for an input")):
        KF.cross_entropy(x, kt(np.array([0, 1])))
    with pytest.raises(ValueError, match="reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        KF.mse_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match=re_escape("weight of shape (3)")):
        KF.cross_entropy(x, kt(np.array([0, 1, 2, 0])), kiln.ones(4))
    with pytest.raises(ValueError, match="ignore_index .* not supported for a target of class probabilities"):
        KF.cross_entropy(x, kiln.zeros(4, 3), ignore_index=1)
    with pytest.raises(ValueError, match="binary_cross_entropy_with_logits: expected a target shaped like"):
        KF.binary_cross_entropy_with_logits(x, kiln.zeros(4))
    with pytest.raises(ValueError, match="label_smoothing must be between"):
        KF.cross_entropy(x, kt(np.array([0, 1, 2, 0])), label_smoothing=1.5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, "full", "row"])
@pytest.mark.parametrize("pos_weight", [False, True])
def test_binary_cross_entropy_with_logits(rng, reduction, weight, pos_weight):
    x = rng.standard_normal((5, 4)) * 10  # large logits: the stable form matters
    x[0, 0], x[0, 1] = 80.0, -80.0
    t = rng.uniform(0, 1, (5, 4))
    w = {None: None, "full": rng.uniform(0.5, 2, (5, 4)), "row": rng.uniform(0.5, 2, (4,))}[weight]
    pw = rng.uniform(0.5, 3, (4,)) if pos_weight else None

    def kf(x, t, w, pw):
        return KF.binary_cross_entropy_with_logits(x, t, w, reduction=reduction, pos_weight=pw)

    def tf(x, t, w, pw):
        return TF.binary_cross_entropy_with_logits(x, t, w, reduction=reduction, pos_weight=pw)

    compare(kf, tf, [x, t, w, pw], [0, 1])


# ---------------------------------------------------------------- attention

def torch_sdpa(q, k, v, mask=None, is_causal=False, scale=None):
    """PyTorch 2's math path (1.13 has no F.scaled_dot_product_attention)."""
    L, S = q.shape[-2], k.shape[-2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if is_causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), float("-inf"))
    elif mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("qs,ks,vs", [
    ((5, 4), (6, 4), (6, 3)), ((2, 5, 4), (2, 7, 4), (2, 7, 5)), ((2, 3, 6, 8), (2, 3, 6, 8), (2, 3, 6, 8)),
])
@pytest.mark.parametrize("mask", [None, "bool", "float", "causal"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_scaled_dot_product_attention(rng, qs, ks, vs, mask, scale):
    q, k, v = rng.standard_normal(qs), rng.standard_normal(ks), rng.standard_normal(vs)
    L, S = qs[-2], ks[-2]
    m = None
    if mask == "bool":
        m = rng.random((L, S)) < 0.7
        m[:, 0] = True  # no fully masked rows
    elif mask == "float":
        m = rng.standard_normal((L, S))
    causal = mask == "causal"

    def kf(q, k, v, m):
        return KF.scaled_dot_product_attention(q, k, v, m, is_causal=causal, scale=scale)

    def tf(q, k, v, m):
        return torch_sdpa(q, k, v, m, causal, scale)

    compare(kf, tf, [q, k, v, m], [0, 1, 2, 3] if mask == "float" else [0, 1, 2])


def test_scaled_dot_product_attention_dropout_and_errors(rng):
    q = kt(rng.standard_normal((2, 4, 3)), grad=True)
    kiln.manual_seed(0)
    out = KF.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    out.sum().backward()
    assert q.grad is not None and tuple(out.shape) == (2, 4, 3)
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        KF.scaled_dot_product_attention(q, q, q, kiln.ones(4, 4), is_causal=True)
    with pytest.raises(ValueError, match="scaled_dot_product_attention: expected query"):
        KF.scaled_dot_product_attention(q, kiln.zeros(2, 4, 5, dtype=kiln.float64), q)


# ---------------------------------------------------------------- re-exports, training step

def test_reexported_activations(rng):
    x = rng.standard_normal((3, 4))
    for name in ("relu", "silu", "tanh", "sigmoid"):
        close(getattr(KF, name)(kt(x)), getattr(TF, name)(tt(x)), msg=name)
    close(KF.gelu(kt(x), approximate="tanh"), TF.gelu(tt(x), approximate="tanh"), msg="gelu")
    close(KF.softmax(kt(x), dim=1), TF.softmax(tt(x), dim=1))
    close(KF.log_softmax(kt(x), 0), TF.log_softmax(tt(x), 0))
    close(KF.layer_norm(kt(x), 4), TF.layer_norm(tt(x), (4,)))


def test_mlp_training_step_matches_torch(rng):
    """linear -> relu -> linear -> cross_entropy, one backward: every gradient."""
    x = rng.standard_normal((32, 20)).astype(np.float32)
    t = rng.integers(0, 10, 32)
    w1, b1 = (rng.standard_normal((16, 20)) * 0.2).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    w2, b2 = (rng.standard_normal((10, 16)) * 0.2).astype(np.float32), rng.standard_normal(10).astype(np.float32)

    def kf(x, t, w1, b1, w2, b2):
        return KF.cross_entropy(KF.linear(KF.relu(KF.linear(x, w1, b1)), w2, b2), t)

    def tf(x, t, w1, b1, w2, b2):
        return TF.cross_entropy(TF.linear(TF.relu(TF.linear(x, w1, b1)), w2, b2), t)

    compare(kf, tf, [x, t, w1, b1, w2, b2], [2, 3, 4, 5], "float32", 1e-4, 1e-5)


# ---------------------------------------------------------------- dtypes and layouts

@pytest.mark.parametrize("dtype,tol", [("float16", 2e-2), ("bfloat16", 1e-1)])
def test_16bit_floats_compute_in_float32(rng, dtype, tol):
    """16-bit inputs give 16-bit outputs and gradients, computed in float32."""
    kd = getattr(kiln, dtype)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    lw = (rng.standard_normal((5, 6)) * 0.3).astype(np.float32)
    t = rng.integers(0, 5, 6)
    cases = [
        (lambda a: KF.conv2d(a, kt(w).to(kd), padding=1), lambda a: TF.conv2d(a, torch.from_numpy(w), padding=1)),
        (lambda a: KF.max_pool2d(a, 2), lambda a: TF.max_pool2d(a, 2)),
        (lambda a: KF.avg_pool2d(a, 3, 1, 1), lambda a: TF.avg_pool2d(a, 3, 1, 1)),
        (lambda a: KF.adaptive_avg_pool2d(a, 4), lambda a: TF.adaptive_avg_pool2d(a, 4)),
        (lambda a: KF.batch_norm(a, None, None, training=True), lambda a: TF.batch_norm(a, None, None, training=True)),
        (lambda a: KF.cross_entropy(KF.linear(a[0, 0], kt(lw).to(kd)), kt(t), label_smoothing=0.1),
         lambda a: TF.cross_entropy(TF.linear(a[0, 0], torch.from_numpy(lw)), torch.from_numpy(t), label_smoothing=0.1)),
    ]
    for kf, tf in cases:
        ka = kt(x).to(kd).requires_grad_(True)
        ref = torch.from_numpy(kt(x).to(kd).to(kiln.float32).numpy()).requires_grad_(True)
        out, tout = kf(ka), tf(ref)
        assert out.dtype == kd
        np.testing.assert_allclose(out.to(kiln.float32).numpy(), tout.detach().numpy(), rtol=tol, atol=tol)
        out.sum().backward()
        tout.sum().backward()
        assert ka.grad.dtype == kd
        np.testing.assert_allclose(ka.grad.to(kiln.float32).numpy(), ref.grad.numpy(), rtol=tol, atol=tol)


def test_noncontiguous_inputs(rng):
    """Permuted (NHWC-stored) and sliced inputs give the same values and gradients."""
    x = rng.standard_normal((2, 7, 6, 3))
    w = rng.standard_normal((4, 3, 3, 3))
    lw = rng.standard_normal((5, 6))
    cases = [
        (lambda a: KF.conv2d(a, kt(w), stride=2, padding=1), lambda a: TF.conv2d(a, tt(w), stride=2, padding=1)),
        (lambda a: KF.max_pool2d(a, 2, 1), lambda a: TF.max_pool2d(a, 2, 1)),
        (lambda a: KF.avg_pool2d(a, 2, 1), lambda a: TF.avg_pool2d(a, 2, 1)),
        (lambda a: KF.batch_norm(a, None, None, training=True), lambda a: TF.batch_norm(a, None, None, training=True)),
        (lambda a: KF.cross_entropy(a, kt(np.zeros((2, 7, 6), np.int64))),
         lambda a: TF.cross_entropy(a, tt(np.zeros((2, 7, 6), np.int64)))),
        (lambda a: KF.linear(a[:, :, ::2, :], kt(lw)), lambda a: TF.linear(a[:, :, ::2, :], tt(lw))),
    ]
    for i, (kf, tf) in enumerate(cases):
        ka, ta = kt(x, True), tt(x, True)
        ko, to = kf(ka.permute(0, 3, 1, 2)), tf(ta.permute(0, 3, 1, 2))
        close(ko, to, msg=f"case {i}")
        ko.sum().backward()
        to.sum().backward()
        close(ka.grad, ta.grad, msg=f"grad, case {i}")
