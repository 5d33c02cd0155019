"""kiln.nn modules against torch.nn (PyTorch 1.13): the same weights (state
dicts copied both ways), then forward outputs, input gradients and parameter
gradients; the Module API (registration, traversal, modes, dtype, state
dicts, save/load, repr); nn.init; and the errors for wrong inputs."""
import collections
import math

import numpy as np
import pytest
import torch

import kiln
import kiln.nn as nn
from conftest import to_numpy

RTOL, ATOL = 2e-4, 2e-5


# ---- helpers ----

def kiln_to_torch(kmod, tmod):
    """Copies kiln's state dict into the torch module (strict: same keys)."""
    tmod.load_state_dict({k: torch.from_numpy(to_numpy(v)) for k, v in kmod.state_dict().items()})


def torch_to_kiln(tmod, kmod):
    """Copies torch's state dict into the kiln module (torch tensors read through NumPy)."""
    kmod.load_state_dict({k: v.detach() for k, v in tmod.state_dict().items()})


def assert_close(k, t, msg="", rtol=RTOL, atol=ATOL):
    assert k is not None and t is not None, msg
    t = t.detach().numpy()
    assert tuple(k.shape) == t.shape, f"{msg}: shape {tuple(k.shape)} vs {t.shape}"
    np.testing.assert_allclose(to_numpy(k).astype(np.float64), t.astype(np.float64), rtol=rtol, atol=atol,
                               err_msg=msg)


def check_against_torch(kmod, tmod, inputs, rng, kwargs=None, direction="t2k", rtol=RTOL, atol=ATOL, out=None):
    """Same weights, same inputs: outputs, input gradients and parameter gradients agree.

    inputs: NumPy arrays; floating ones require grad. kwargs: extra keyword
    arguments as (kiln value, torch value) pairs. out: index of the output
    to differentiate when forward returns a tuple.
    """
    if direction == "t2k":
        torch_to_kiln(tmod, kmod)
    else:
        kiln_to_torch(kmod, tmod)
    kin, tin = [], []
    for a in inputs:
        floating = a.dtype.kind == "f"
        kt = kiln.tensor(a)
        tt = torch.tensor(a)
        if floating:
            kt.requires_grad_()
            tt.requires_grad_()
        kin.append(kt)
        tin.append(tt)
    kw_k = {k: v[0] for k, v in (kwargs or {}).items()}
    kw_t = {k: v[1] for k, v in (kwargs or {}).items()}
    ky, ty = kmod(*kin, **kw_k), tmod(*tin, **kw_t)
    if isinstance(ty, tuple):
        for i, (a, b) in enumerate(zip(ky, ty)):
            assert (a is None) == (b is None), f"output {i}"
            if a is not None:
                assert_close(a, b, f"output {i}", rtol, atol)
        ky, ty = ky[out or 0], ty[out or 0]
    else:
        assert_close(ky, ty, "output", rtol, atol)
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    (ky * kiln.tensor(g)).sum().backward()
    (ty * torch.tensor(g)).sum().backward()
    for i, (a, b) in enumerate(zip(kin, tin)):
        if b.requires_grad:
            assert_close(a.grad, b.grad, f"grad of input {i}", rtol, atol)
    kparams = dict(kmod.named_parameters())
    tparams = dict(tmod.named_parameters())
    assert list(kparams) == list(tparams), "parameter names and order"
    for name, tp in tparams.items():
        if tp.grad is None:
            assert kparams[name].grad is None, name
        else:
            assert_close(kparams[name].grad, tp.grad, f"grad of {name}", rtol, atol)
    return ky, ty


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- layers against torch ----

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5), (5,)])
def test_linear(rng, bias, shape):
    k, t = nn.Linear(5, 3, bias=bias), torch.nn.Linear(5, 3, bias=bias)
    check_against_torch(k, t, [randn(rng, *shape)], rng, direction="k2t" if bias else "t2k")


@pytest.mark.parametrize("args,kwargs,shape", [
    ((3, 4, 3), {}, (2, 3, 8, 8)),
    ((3, 4, 3), {}, (3, 7, 6)),
    ((4, 6, (3, 2)), dict(stride=2, padding=1, dilation=(1, 2), groups=2, bias=False), (2, 4, 9, 10)),
    ((2, 3, 5), dict(padding="same"), (1, 2, 7, 7)),
    ((2, 3, 3), dict(padding="valid", stride=(2, 1)), (2, 2, 6, 6)),
])
def test_conv2d(rng, args, kwargs, shape):
    k, t = nn.Conv2d(*args, **kwargs), torch.nn.Conv2d(*args, **kwargs)
    check_against_torch(k, t, [randn(rng, *shape)], rng)


@pytest.mark.parametrize("normalized_shape,affine,shape", [
    (6, True, (4, 6)), ((3, 4), False, (2, 3, 4)), ((5,), True, (2, 3, 5)),
])
def test_layer_norm(rng, normalized_shape, affine, shape):
    k = nn.LayerNorm(normalized_shape, elementwise_affine=affine)
    t = torch.nn.LayerNorm(normalized_shape, elementwise_affine=affine)
    if affine:  # non-trivial affine parameters
        with torch.no_grad():
            t.weight.normal_()
            t.bias.normal_()
    check_against_torch(k, t, [randn(rng, *shape)], rng)


@pytest.mark.parametrize("cls,shape", [("BatchNorm1d", (8, 4)), ("BatchNorm1d", (6, 4, 5)),
                                       ("BatchNorm2d", (4, 4, 3, 5))])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_train_then_eval(rng, cls, shape, momentum):
    k, t = getattr(nn, cls)(4, momentum=momentum), getattr(torch.nn, cls)(4, momentum=momentum)
    with torch.no_grad():
        t.weight.normal_()
        t.bias.normal_()
    torch_to_kiln(t, k)
    for step in range(3):
        x = randn(rng, *shape) * 2 + 1
        check_against_torch(k, t, [x], rng)
        for name in ("running_mean", "running_var"):
            assert_close(getattr(k, name), getattr(t, name), f"{name} after step {step}")
        assert k.num_batches_tracked.item() == t.num_batches_tracked.item() == step + 1
        assert k.num_batches_tracked.dtype == kiln.int64
    k.eval()
    t.eval()
    x = randn(rng, *shape)
    check_against_torch(k, t, [x], rng)
    assert k.num_batches_tracked.item() == 3, "eval does not count batches"


@pytest.mark.parametrize("affine,track", [(False, True), (True, False), (False, False)])
def test_batch_norm_options(rng, affine, track):
    k = nn.BatchNorm2d(3, affine=affine, track_running_stats=track)
    t = torch.nn.BatchNorm2d(3, affine=affine, track_running_stats=track)
    assert list(k.state_dict()) == list(t.state_dict())
    check_against_torch(k, t, [randn(rng, 2, 3, 4, 4)], rng)
    k.eval()
    t.eval()
    check_against_torch(k, t, [randn(rng, 2, 3, 4, 4)], rng)


@pytest.mark.parametrize("padding_idx", [None, 0, -1])
def test_embedding(rng, padding_idx):
    k = nn.Embedding(10, 4, padding_idx=padding_idx)
    t = torch.nn.Embedding(10, 4, padding_idx=padding_idx)
    if padding_idx is not None:
        row = padding_idx % 10
        np.testing.assert_array_equal(k.weight.numpy()[row], np.zeros(4, np.float32))
    idx = rng.integers(0, 10, size=(3, 5)).astype(np.int64)
    idx[0, :2] = 0
    idx[1, :2] = 9
    check_against_torch(k, t, [idx], rng, direction="k2t")
    if padding_idx is not None:
        np.testing.assert_array_equal(k.weight.grad.numpy()[padding_idx % 10], np.zeros(4, np.float32))


def test_embedding_from_pretrained():
    w = kiln.randn(5, 3)
    e = nn.Embedding.from_pretrained(w)
    assert not e.weight.requires_grad
    np.testing.assert_array_equal(e(kiln.tensor([4, 0])).numpy(), w.numpy()[[4, 0]])


@pytest.mark.parametrize("kmod,tmod,shape", [
    (lambda: nn.ReLU(), lambda: torch.nn.ReLU(), (3, 4)),
    (lambda: nn.GELU(), lambda: torch.nn.GELU(), (3, 4)),
    (lambda: nn.GELU("tanh"), lambda: torch.nn.GELU("tanh"), (3, 4)),
    (lambda: nn.SiLU(), lambda: torch.nn.SiLU(), (3, 4)),
    (lambda: nn.Tanh(), lambda: torch.nn.Tanh(), (3, 4)),
    (lambda: nn.Sigmoid(), lambda: torch.nn.Sigmoid(), (3, 4)),
    (lambda: nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1), (3, 4, 2)),
    (lambda: nn.LogSoftmax(dim=-1), lambda: torch.nn.LogSoftmax(dim=-1), (3, 4)),
    (lambda: nn.Flatten(), lambda: torch.nn.Flatten(), (2, 3, 4, 5)),
    (lambda: nn.Flatten(0, 1), lambda: torch.nn.Flatten(0, 1), (2, 3, 4)),
    (lambda: nn.Identity(), lambda: torch.nn.Identity(), (2, 3)),
    (lambda: nn.MaxPool2d(2), lambda: torch.nn.MaxPool2d(2), (2, 3, 6, 6)),
    (lambda: nn.MaxPool2d(3, 2, 1), lambda: torch.nn.MaxPool2d(3, 2, 1), (2, 3, 7, 7)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1), lambda: torch.nn.AvgPool2d(3, stride=2, padding=1),
     (2, 3, 7, 8)),
    (lambda: nn.AdaptiveAvgPool2d((2, 3)), lambda: torch.nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 7, 8)),
    (lambda: nn.Dropout(0.0), lambda: torch.nn.Dropout(0.0), (3, 4)),
])
def test_parameterless_layers(rng, kmod, tmod, shape):
    check_against_torch(kmod(), tmod(), [randn(rng, *shape)], rng)


def test_dropout_train_and_eval():
    kiln.manual_seed(0)
    d = nn.Dropout(0.5)
    x = kiln.ones(10000)
    y = d(x).numpy()
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert 0.45 < (y == 0).mean() < 0.55
    d.eval()
    np.testing.assert_array_equal(d(x).numpy(), x.numpy())
    with pytest.raises(ValueError):
        nn.Dropout(1.5)


def test_sequential_mlp(rng):
    k = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3), nn.LogSoftmax(-1))
    t = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                            torch.nn.Linear(8, 3), torch.nn.LogSoftmax(-1))
    check_against_torch(k, t, [randn(rng, 5, 6)], rng, direction="k2t")


def test_small_cnn(rng):
    def build(m):
        return m.Sequential(m.Conv2d(1, 4, 3, padding=1), m.BatchNorm2d(4), m.ReLU(), m.MaxPool2d(2),
                            m.Conv2d(4, 8, 3), m.ReLU(), m.AdaptiveAvgPool2d(1), m.Flatten(), m.Linear(8, 10))
    k, t = build(nn), build(torch.nn)
    check_against_torch(k, t, [randn(rng, 3, 1, 8, 8)], rng)
    assert_close(k[1].running_var, t[1].running_var, "running_var")


MHA_CASES = {
    "seq-first": (dict(), dict(), "LNE"),
    "batch-first": (dict(batch_first=True), dict(), "NLE"),
    "unbatched": (dict(), dict(), "LE"),
    "no-bias": (dict(bias=False, batch_first=True), dict(), "NLE"),
    "kdim-vdim": (dict(kdim=3, vdim=5, batch_first=True), dict(), "NLE"),
    "per-head-weights": (dict(batch_first=True), dict(average_attn_weights=False), "NLE"),
    "no-weights": (dict(), dict(need_weights=False), "LNE"),
}


@pytest.mark.parametrize("case", list(MHA_CASES))
@pytest.mark.parametrize("masks", ["none", "bool", "float"])
def test_multihead_attention(rng, case, masks):
    opts, call, layout = MHA_CASES[case]
    E, H, N, L, S = 8, 2, 3, 4, 5
    k, t = nn.MultiheadAttention(E, H, **opts), torch.nn.MultiheadAttention(E, H, **opts)
    kd, vd = opts.get("kdim", E), opts.get("vdim", E)

    def shaped(length, dim):
        return {"LNE": (length, N, dim), "NLE": (N, length, dim), "LE": (length, dim)}[layout]

    q, key, v = randn(rng, *shaped(L, E)), randn(rng, *shaped(S, kd)), randn(rng, *shaped(S, vd))
    kwargs = {k_: (v_, v_) for k_, v_ in call.items()}
    if masks == "bool":
        am = np.triu(np.ones((L, S), bool), 1)
        kpm = np.zeros((N, S) if layout != "LE" else (S,), bool)
        kpm[..., -1] = True
        kwargs["attn_mask"] = (kiln.tensor(am), torch.tensor(am))
        kwargs["key_padding_mask"] = (kiln.tensor(kpm), torch.tensor(kpm))
    elif masks == "float":
        shape = (N * H, L, S) if layout != "LE" else (L, S)
        am = randn(rng, *shape)
        kwargs["attn_mask"] = (kiln.tensor(am), torch.tensor(am))
    assert list(k.state_dict()) == list(t.state_dict())
    check_against_torch(k, t, [q, key, v], rng, kwargs=kwargs, direction="k2t" if masks == "none" else "t2k")


def test_multihead_attention_causal_matches_explicit_mask(rng):
    m = nn.MultiheadAttention(8, 2, batch_first=True)
    x = kiln.tensor(randn(rng, 2, 5, 8))
    causal = kiln.tensor(np.triu(np.ones((5, 5), bool), 1))
    a, wa = m(x, x, x, is_causal=True)
    b, wb = m(x, x, x, attn_mask=causal)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(wa.numpy(), wb.numpy(), rtol=1e-6, atol=1e-6)
    c, none = m(x, x, x, attn_mask=causal, need_weights=False)
    assert none is None
    np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_transformer_encoder_layer(rng, activation, norm_first, batch_first):
    args = dict(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, activation=activation,
                batch_first=batch_first, norm_first=norm_first)
    k, t = nn.TransformerEncoderLayer(**args), torch.nn.TransformerEncoderLayer(**args)
    assert list(k.state_dict()) == list(t.state_dict())
    x = randn(rng, 3, 5, 8)
    # (N, S): x is (N=3, S=5, E) batch first, else (S=3, N=5, E).
    kpm = np.zeros((3, 5) if batch_first else (5, 3), bool)
    kpm[:, -1] = True
    kwargs = {"src_key_padding_mask": (kiln.tensor(kpm), torch.tensor(kpm))}
    check_against_torch(k, t, [x], rng, kwargs=kwargs, direction="k2t")


def test_transformer_encoder_layer_eval_with_mask(rng):
    k = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    t = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    k.eval()
    t.eval()
    mask = np.triu(np.full((4, 4), -np.inf, np.float32), 1)
    kwargs = {"src_mask": (kiln.tensor(mask), torch.tensor(mask))}
    check_against_torch(k, t, [randn(rng, 2, 4, 8)], rng, kwargs=kwargs)


# ---- losses ----

def test_losses(rng):
    x = randn(rng, 6, 4)
    target = rng.integers(0, 4, size=6).astype(np.int64)
    target[1] = 2
    w = np.array([1.0, 2.0, 0.5, 1.5], np.float32)
    cases = [
        (nn.MSELoss(), torch.nn.MSELoss(), randn(rng, 6, 4)),
        (nn.MSELoss(reduction="sum"), torch.nn.MSELoss(reduction="sum"), randn(rng, 6, 4)),
        (nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), target),
        (nn.CrossEntropyLoss(weight=kiln.tensor(w), label_smoothing=0.1),
         torch.nn.CrossEntropyLoss(weight=torch.tensor(w), label_smoothing=0.1), target),
        (nn.CrossEntropyLoss(ignore_index=2, reduction="none"),
         torch.nn.CrossEntropyLoss(ignore_index=2, reduction="none"), target),
        (nn.NLLLoss(), torch.nn.NLLLoss(), target),
        (nn.BCEWithLogitsLoss(pos_weight=kiln.tensor(w)), torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w)),
         (rng.random((6, 4)) < 0.5).astype(np.float32)),
    ]
    for k, t, tgt in cases:
        kx, tx = kiln.tensor(x).requires_grad_(), torch.tensor(x, requires_grad=True)
        if isinstance(k, nn.NLLLoss):
            kl, tl = k(kx.log_softmax(-1), kiln.tensor(tgt)), t(tx.log_softmax(-1), torch.tensor(tgt))
        else:
            kl, tl = k(kx, kiln.tensor(tgt)), t(tx, torch.tensor(tgt))
        assert_close(kl, tl, repr(k))
        kl.sum().backward()
        tl.sum().backward()
        assert_close(kx.grad, tx.grad, f"grad {k!r}")
    assert "weight" in dict(nn.CrossEntropyLoss(weight=kiln.ones(3)).named_buffers())
    with pytest.raises(ValueError):
        nn.MSELoss(reduction="avg")


# ---- the Module API ----

class KNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(kiln.ones(3))
        self.register_buffer("steps", kiln.zeros(1))
        self.register_buffer("scratch", kiln.zeros(2), persistent=False)
        self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
        self.heads = nn.ModuleList([nn.Linear(3, 2), nn.Linear(3, 1)])
        self.norm = nn.BatchNorm1d(3)
        self.plain = kiln.zeros(1)  # a plain tensor attribute is not registered

    def forward(self, x):
        h = self.norm(self.body(x) * self.scale)
        return kiln.cat([head(h) for head in self.heads], dim=-1)


class TNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))
        self.register_buffer("steps", torch.zeros(1))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
        self.heads = torch.nn.ModuleList([torch.nn.Linear(3, 2), torch.nn.Linear(3, 1)])
        self.norm = torch.nn.BatchNorm1d(3)
        self.plain = torch.zeros(1)

    def forward(self, x):
        h = self.norm(self.body(x) * self.scale)
        return torch.cat([head(h) for head in self.heads], dim=-1)


def test_subclass_registration_and_traversal_match_torch(rng):
    k, t = KNet(), TNet()
    assert [n for n, _ in k.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert [n for n, _ in k.named_buffers()] == [n for n, _ in t.named_buffers()]
    assert list(k.state_dict()) == list(t.state_dict())
    assert [n for n, _ in k.named_modules()] == [n for n, _ in t.named_modules()]
    assert [n for n, _ in k.named_children()] == [n for n, _ in t.named_children()]
    assert len(list(k.parameters())) == len(list(t.parameters()))
    assert len(list(k.parameters(recurse=False))) == 1
    assert len(list(k.modules())) == len(list(t.modules()))
    assert "plain" not in k.state_dict() and "scratch" not in k.state_dict()
    assert isinstance(k.scale, nn.Parameter) and isinstance(k.scale, kiln.Tensor)
    assert k.get_submodule("body.2") is k.body[2]
    assert k.get_parameter("heads.1.bias") is k.heads[1].bias
    # BatchNorm cancels any per-channel shift, so the true gradient of
    # body.2.bias is zero and both sides hold float32 rounding noise (~1e-5):
    # compare it with an absolute tolerance above that noise.
    check_against_torch(k, t, [randn(rng, 5, 3)], rng, atol=1e-4)


def test_tied_parameters_listed_once():
    a = nn.Linear(3, 3)
    b = nn.Linear(3, 3)
    b.weight = a.weight
    m = nn.Sequential(a, b)
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "1.bias"]
    assert list(m.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_attribute_rules():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="nn.Parameter or None"):
        m.weight = kiln.ones(2, 2)
    m.bias = None
    assert m.bias is None and "bias" not in m.state_dict()
    m.extra = nn.Parameter(kiln.zeros(1))
    assert "extra" in dict(m.named_parameters())
    del m.extra
    assert "extra" not in dict(m.named_parameters())
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m.nope  # noqa: B018

    class NoInit(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(kiln.ones(1))

    with pytest.raises(AttributeError, match="__init__"):
        NoInit()
    with pytest.raises(NotImplementedError, match="forward"):
        nn.Module()(kiln.ones(1))
    with pytest.raises(KeyError):
        m.register_buffer("a.b", kiln.ones(1))


def test_parameter():
    t = kiln.arange(4, dtype=kiln.float32)
    p = nn.Parameter(t)
    assert p.requires_grad and p.is_leaf and isinstance(p, kiln.Tensor)
    t[0] = 7.0
    assert p[0].item() == 7.0, "shares storage with its source"
    assert repr(p).startswith("Parameter containing:\ntensor(")
    assert not nn.Parameter(kiln.ones(1), requires_grad=False).requires_grad
    y = (p * 2).sum()
    y.backward()
    np.testing.assert_array_equal(p.grad.numpy(), [2, 2, 2, 2])


def test_train_eval_zero_grad_requires_grad():
    m = KNet()
    assert m.training and m.body[0].training
    assert m.eval() is m
    assert not m.training and not m.body[0].training and not m.heads[1].training
    m.train()
    assert m.norm.training
    m.body(kiln.ones(2, 3)).sum().backward()
    assert m.body[0].weight.grad is not None
    m.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(m.body[0].weight.grad.numpy(), np.zeros((4, 3), np.float32))
    m.zero_grad()
    assert m.body[0].weight.grad is None
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())


def test_to_dtype_keeps_parameter_objects(rng):
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    w = m[0].weight
    before = to_numpy(w)
    m(kiln.tensor(randn(rng, 5, 3))).sum().backward()
    assert m.double() is m
    assert m[0].weight is w and w.dtype == kiln.float64 and w.requires_grad
    assert w.grad.dtype == kiln.float64
    np.testing.assert_array_equal(to_numpy(w), before.astype(np.float64))
    assert m[1].running_mean.dtype == kiln.float64
    assert m[1].num_batches_tracked.dtype == kiln.int64, "integer buffers keep their dtype"
    y = m(kiln.tensor(rng.standard_normal((5, 3))))
    assert y.dtype == kiln.float64
    with pytest.raises(TypeError, match="floating"):
        m.to(kiln.int32)
    m.to("cpu")


def test_state_dict_roundtrip(rng):
    a, b = KNet(), KNet()
    a.body(kiln.ones(2, 3))
    x = kiln.tensor(randn(rng, 4, 3))
    a.norm(a.body(x))  # running stats move
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for (n1, t1), (n2, t2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert n1 == n2
        np.testing.assert_array_equal(to_numpy(t1), to_numpy(t2), err_msg=n1)
    a.eval()
    b.eval()
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    # state_dict values are detached views of the live tensors.
    sd = a.state_dict()
    assert not sd["scale"].requires_grad
    np.testing.assert_array_equal(sd["scale"].numpy(), a.scale.numpy())


def test_load_state_dict_errors():
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    good = m.state_dict()
    before = to_numpy(m[0].weight)

    bad = collections.OrderedDict(good)
    bad["0.weight"] = kiln.zeros(4, 3)
    bad["1.weight"] = kiln.zeros(5, 4)  # wrong shape: nothing may be written
    with pytest.raises(ValueError, match=r"size mismatch for 1\.weight.*\(5, 4\).*\(2, 4\)"):
        m.load_state_dict(bad)
    np.testing.assert_array_equal(to_numpy(m[0].weight), before)

    missing = {k: v for k, v in good.items() if k != "1.bias"}
    with pytest.raises(ValueError, match=r'Missing key\(s\) in state_dict: "1\.bias"'):
        m.load_state_dict(missing)
    extra = dict(good, **{"2.weight": kiln.zeros(1)})
    with pytest.raises(ValueError, match=r'Unexpected key\(s\) in state_dict: "2\.weight"'):
        m.load_state_dict(extra)
    r = m.load_state_dict({"0.bias": kiln.ones(4), "junk": kiln.ones(1)}, strict=False)
    assert r.unexpected_keys == ["junk"] and "0.weight" in r.missing_keys
    np.testing.assert_array_equal(m[0].bias.numpy(), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="size mismatch"):
        m.load_state_dict({"0.bias": kiln.ones(5)}, strict=False)


def test_save_load_file(tmp_path, rng):
    a, b = KNet(), KNet()
    x = kiln.tensor(randn(rng, 4, 3))
    a(x)
    path = tmp_path / "net.safetensors"
    a.save(path, metadata={"epoch": "3"})
    assert kiln._C._safetensors_metadata(str(path)) == {"epoch": "3"}
    assert sorted(kiln.load_file(str(path))) == sorted(a.state_dict())
    b.load(path)
    a.eval()
    b.eval()
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    with pytest.raises(ValueError, match="Missing"):
        nn.Linear(3, 3).load(path)


def test_torch_state_dict_loads_into_kiln_and_back(rng):
    t = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    k = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    k.load_state_dict(t.state_dict())  # torch tensors are read through NumPy
    t2 = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    kiln_to_torch(k, t2)
    for (n1, v1), (n2, v2) in zip(t.state_dict().items(), t2.state_dict().items()):
        assert n1 == n2
        assert torch.equal(v1, v2), n1


@pytest.mark.parametrize("kmod,tmod", [
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2, bias=False)),
     lambda: torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                 torch.nn.Linear(8, 2, bias=False))),
    (lambda: nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1, bias=False),
     lambda: torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1, bias=False)),
    (lambda: nn.LayerNorm(16), lambda: torch.nn.LayerNorm(16)),
    (lambda: nn.BatchNorm2d(8, momentum=None), lambda: torch.nn.BatchNorm2d(8, momentum=None)),
    (lambda: nn.Embedding(10, 3, padding_idx=0), lambda: torch.nn.Embedding(10, 3, padding_idx=0)),
    (lambda: nn.ModuleList([nn.Tanh(), nn.GELU("tanh"), nn.Softmax(dim=1)]),
     lambda: torch.nn.ModuleList([torch.nn.Tanh(), torch.nn.GELU("tanh"), torch.nn.Softmax(dim=1)])),
    (lambda: nn.MaxPool2d(2), lambda: torch.nn.MaxPool2d(2)),
    (lambda: nn.Flatten(), lambda: torch.nn.Flatten()),
])
def test_repr_matches_torch(kmod, tmod):
    assert repr(kmod()) == repr(tmod())


def test_sequential_and_module_list_containers():
    s = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(s) == 3 and isinstance(s[-1], nn.Linear)
    sub = s[:2]
    assert isinstance(sub, nn.Sequential) and len(sub) == 2 and sub[0] is s[0]
    s.append(nn.Sigmoid())
    assert len(s) == 4 and list(s)[-1].__class__ is nn.Sigmoid
    with pytest.raises(IndexError):
        s[7]
    named = nn.Sequential(collections.OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.ReLU())]))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]
    ml = nn.ModuleList([nn.Linear(1, 1)])
    ml.append(nn.Linear(1, 2))
    ml.insert(0, nn.ReLU())
    assert [type(m).__name__ for m in ml] == ["ReLU", "Linear", "Linear"]
    assert list(ml.state_dict()) == ["1.weight", "1.bias", "2.weight", "2.bias"]
    md = nn.ModuleDict({"a": nn.Linear(1, 1)})
    md["b"] = nn.ReLU()
    assert list(md) == ["a", "b"] and "a" in md


# ---- init ----

def test_default_init_distributions():
    kiln.manual_seed(1)
    lin = nn.Linear(400, 300)
    w = lin.weight.numpy()
    bound = 1 / math.sqrt(400)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound
    assert np.abs(lin.bias.numpy()).max() <= bound
    conv = nn.Conv2d(8, 16, 3)
    assert np.abs(conv.weight.numpy()).max() <= 1 / math.sqrt(8 * 9)
    mha = nn.MultiheadAttention(16, 4)
    xb = math.sqrt(6 / (16 + 48))
    assert np.abs(mha.in_proj_weight.numpy()).max() <= xb
    np.testing.assert_array_equal(mha.in_proj_bias.numpy(), np.zeros(48, np.float32))
    np.testing.assert_array_equal(mha.out_proj.bias.numpy(), np.zeros(16, np.float32))
    emb = nn.Embedding(1000, 20).weight.numpy()
    assert abs(emb.mean()) < 0.05 and abs(emb.std() - 1) < 0.05


def test_init_functions():
    kiln.manual_seed(3)
    t = nn.Parameter(kiln.empty(200, 300))
    nn.init.uniform_(t, -2, 3)
    a = t.numpy()
    assert a.min() >= -2 and a.max() < 3 and abs(a.mean() - 0.5) < 0.05
    assert t.is_leaf and t.grad_fn is None, "initializers record no history"
    assert nn.init.normal_(t, 1.0, 0.5) is t
    assert abs(t.numpy().mean() - 1.0) < 0.01 and abs(t.numpy().std() - 0.5) < 0.01
    nn.init.constant_(t, 0.25)
    assert (t.numpy() == 0.25).all()
    nn.init.zeros_(t)
    assert (t.numpy() == 0).all()
    nn.init.ones_(t)
    assert (t.numpy() == 1).all()
    nn.init.xavier_uniform_(t, gain=2.0)
    bound = 2.0 * math.sqrt(6 / 500)
    assert np.abs(t.numpy()).max() <= bound and np.abs(t.numpy()).max() > 0.98 * bound
    nn.init.xavier_normal_(t)
    assert abs(t.numpy().std() - math.sqrt(2 / 500)) < 0.03 * math.sqrt(2 / 500)
    nn.init.kaiming_uniform_(t, nonlinearity="relu")
    bound = math.sqrt(2) * math.sqrt(3 / 300)
    assert np.abs(t.numpy()).max() <= bound and np.abs(t.numpy()).max() > 0.98 * bound
    nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu")
    assert abs(t.numpy().std() - math.sqrt(2 / 200)) < 0.03 * math.sqrt(2 / 200)
    conv_w = kiln.empty(8, 4, 3, 3)
    assert nn.init._calculate_fan_in_and_fan_out(conv_w) == (36, 72)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        nn.init.xavier_uniform_(kiln.empty(5))
    with pytest.raises(ValueError, match="mode"):
        nn.init.kaiming_uniform_(t, mode="fan_avg")
    with pytest.raises(TypeError):
        nn.init.normal_(kiln.zeros(3, dtype=kiln.int64))
    # float64 and float16 tensors are filled in their own dtype.
    d = nn.init.uniform_(kiln.empty(10, dtype=kiln.float64))
    assert d.dtype == kiln.float64


def test_init_is_reproducible():
    kiln.manual_seed(7)
    a = nn.Linear(5, 5).weight.numpy().copy()
    kiln.manual_seed(7)
    b = nn.Linear(5, 5).weight.numpy().copy()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("nonlinearity,param", [("linear", None), ("conv2d", None), ("sigmoid", None),
                                                ("tanh", None), ("relu", None), ("leaky_relu", None),
                                                ("leaky_relu", 0.2), ("selu", None)])
def test_calculate_gain_matches_torch(nonlinearity, param):
    assert nn.init.calculate_gain(nonlinearity, param) == pytest.approx(
        torch.nn.init.calculate_gain(nonlinearity, param))


# ---- errors for wrong inputs ----

@pytest.mark.parametrize("module,x,fragment", [
    (lambda: nn.Linear(5, 3), lambda: kiln.ones(4, 6), r"Linear\(in_features=5, out_features=3\).*\(4, 6\)"),
    (lambda: nn.Conv2d(3, 4, 3), lambda: kiln.ones(2, 5, 8, 8), r"Conv2d\(3, 4\).*\(2, 5, 8, 8\)"),
    (lambda: nn.Conv2d(3, 4, 3), lambda: kiln.ones(8, 8), r"\(N, 3, H, W\)"),
    (lambda: nn.BatchNorm1d(4), lambda: kiln.ones(8, 3), r"BatchNorm1d\(4\).*\(8, 3\)"),
    (lambda: nn.BatchNorm2d(4), lambda: kiln.ones(8, 4), r"BatchNorm2d\(4\).*\(N, 4, H, W\)"),
    (lambda: nn.BatchNorm1d(4), lambda: kiln.ones(1, 4), r"more than 1 value per channel"),
    (lambda: nn.LayerNorm(6), lambda: kiln.ones(4, 5), r"LayerNorm\(\(6,\)\).*\(4, 5\)"),
    (lambda: nn.MaxPool2d(2), lambda: kiln.ones(4, 5), r"MaxPool2d.*\(4, 5\)"),
])
def test_wrong_input_shapes(module, x, fragment):
    with pytest.raises(ValueError, match=fragment):
        module()(x())


def test_attention_input_errors():
    m = nn.MultiheadAttention(8, 2, batch_first=True)
    with pytest.raises(ValueError, match=r"last dimensions.*\(2, 3, 6\)"):
        m(kiln.ones(2, 3, 6), kiln.ones(2, 3, 8), kiln.ones(2, 3, 8))
    with pytest.raises(ValueError, match="batched"):
        m(kiln.ones(2, 3, 8), kiln.ones(3, 8), kiln.ones(3, 8))
    with pytest.raises(ValueError, match="disagree"):
        m(kiln.ones(2, 3, 8), kiln.ones(3, 4, 8), kiln.ones(3, 4, 8))
    with pytest.raises(ValueError, match="attn_mask"):
        m(kiln.ones(2, 3, 8), kiln.ones(2, 4, 8), kiln.ones(2, 4, 8), attn_mask=kiln.ones(3, 3))
    with pytest.raises(ValueError, match="key_padding_mask"):
        m(kiln.ones(2, 3, 8), kiln.ones(2, 4, 8), kiln.ones(2, 4, 8),
          key_padding_mask=kiln.zeros(2, 3, dtype=kiln.bool))
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="activation"):
        nn.TransformerEncoderLayer(8, 2, activation="swish")


def test_embedding_rejects_float_indices():
    with pytest.raises(TypeError, match="integer indices"):
        nn.Embedding(5, 2)(kiln.ones(3))


def test_training_a_small_model_reduces_the_loss():
    kiln.manual_seed(0)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((64, 4)).astype(np.float32)
    x = kiln.tensor(xs)
    y = kiln.tensor(np.tanh(xs @ rng.standard_normal((4, 1))).astype(np.float32))
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    loss_fn = nn.MSELoss()
    first = None
    for _ in range(100):
        loss = loss_fn(model(x), y)
        first = first if first is not None else loss.item()
        model.zero_grad()
        loss.backward()
        for p in model.parameters():
            kiln._C._nn_copy_(p, p - 0.05 * p.grad)
    assert loss.item() < 0.1 * first


def test_deepcopy_clones_tensors_and_keeps_ties():
    import copy
    shared = nn.Linear(2, 2)
    m = nn.Sequential(shared, nn.BatchNorm1d(2), shared)
    c = copy.deepcopy(m)
    assert c[0] is c[2] and c[0] is not shared
    assert isinstance(c[0].weight, nn.Parameter) and c[0].weight.requires_grad
    np.testing.assert_array_equal(c[0].weight.numpy(), shared.weight.numpy())
    assert c[0].weight.data_ptr() != shared.weight.data_ptr()
    assert c[1].running_mean.data_ptr() != m[1].running_mean.data_ptr()
    assert list(c.state_dict()) == list(m.state_dict())
