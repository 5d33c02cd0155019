"""kiln.optim against torch.optim (PyTorch 1.13): several steps on the same
parameters and gradients, state_dicts, schedulers and clip_grad_norm_."""
import math

import numpy as np
import pytest

import kiln
from kiln.optim import lr_scheduler

torch = pytest.importorskip("torch")

SHAPES = [(6, 5), (5,), (3, 4, 2)]


def make_params(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    kp = [kiln.from_numpy(a.copy()).requires_grad_(True) for a in arrays]
    tp = [torch.from_numpy(a.copy()).requires_grad_(True) for a in arrays]
    return kp, tp


def set_grads(kp, tp, step, seed=100, skip=()):
    rng = np.random.default_rng(seed + step)
    for i, (k, t) in enumerate(zip(kp, tp)):
        if i in skip:
            k.grad, t.grad = None, None
            continue
        g = rng.standard_normal(tuple(t.shape)).astype(t.detach().numpy().dtype)
        k.grad = kiln.from_numpy(g.copy())
        t.grad = torch.from_numpy(g.copy())


def assert_params_close(kp, tp, rtol, atol):
    for k, t in zip(kp, tp):
        np.testing.assert_allclose(k.detach().numpy(), t.detach().numpy(), rtol=rtol, atol=atol)


def run_both(kiln_cls, torch_cls, kwargs, steps=6, dtype=np.float32, fused=None, kiln_only=None):
    kp, tp = make_params(dtype)
    kopt = kiln_cls(kp, **kwargs, **({} if fused is None else {"fused": fused}))
    topt = torch_cls(tp, **kwargs)
    for s in range(steps):
        set_grads(kp, tp, s, skip=(1,) if s == 2 else ())  # a parameter without a gradient is skipped
        kopt.step()
        topt.step()
    return kp, tp, kopt, topt


def tol(dtype):
    return (2e-5, 2e-6) if dtype == np.float32 else (1e-11, 1e-12)


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.5),
    dict(lr=0.05, momentum=0.9, weight_decay=0.1),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
    dict(lr=0.02, momentum=0.5, maximize=True),
]

ADAM_CASES = [
    dict(lr=1e-2),
    dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=3e-3, weight_decay=0.1),
    dict(lr=1e-2, amsgrad=True),
    dict(lr=1e-2, amsgrad=True, weight_decay=0.05, maximize=True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("kwargs", SGD_CASES, ids=str)
def test_sgd_matches_torch(kwargs, fused, dtype):
    kp, tp, kopt, topt = run_both(kiln.optim.SGD, torch.optim.SGD, kwargs, dtype=dtype, fused=fused)
    assert_params_close(kp, tp, *tol(dtype))
    if kwargs.get("momentum"):
        for k, t in zip(kp, tp):
            np.testing.assert_allclose(kopt.state[k]["momentum_buffer"].numpy(),
                                       topt.state[t]["momentum_buffer"].numpy(), *tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=str)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_matches_torch(name, kwargs, fused, dtype):
    kp, tp, kopt, topt = run_both(getattr(kiln.optim, name), getattr(torch.optim, name), kwargs,
                                  dtype=dtype, fused=fused)
    assert_params_close(kp, tp, *tol(dtype))
    for k, t in zip(kp, tp):
        ks, ts = kopt.state[k], topt.state[t]
        assert set(ks) == {key for key in ts if key != "step"} | {"step"}
        assert float(ks["step"].item()) == float(ts["step"].item())
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in ts:
                np.testing.assert_allclose(ks[key].numpy(), ts[key].numpy(), *tol(dtype))


def test_adamw_default_weight_decay_matches_torch():
    kp, tp, *_ = run_both(kiln.optim.AdamW, torch.optim.AdamW, dict(lr=0.1))
    assert_params_close(kp, tp, 2e-5, 2e-6)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_param_groups_match_torch(name):
    kp, tp = make_params()
    extra = dict(momentum=0.9) if name == "SGD" else dict(betas=(0.5, 0.9))

    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.3, **extra}]

    kopt = getattr(kiln.optim, name)(groups(kp), lr=0.01)
    topt = getattr(torch.optim, name)(groups(tp), lr=0.01)
    assert len(kopt.param_groups) == 2
    assert kopt.param_groups[1]["lr"] == 0.3 and kopt.param_groups[0]["lr"] == 0.01
    for s in range(4):
        set_grads(kp, tp, s)
        kopt.step()
        topt.step()
        # editing a group's lr, as a user or a scheduler does
        kopt.param_groups[0]["lr"] *= 0.5
        topt.param_groups[0]["lr"] *= 0.5
    assert_params_close(kp, tp, 2e-5, 2e-6)


def test_fused_and_op_paths_agree_on_noncontiguous_params():
    base = np.random.default_rng(3).standard_normal((8, 6)).astype(np.float32)
    k = kiln.from_numpy(base.copy()).t().requires_grad_(True)  # a transposed (non-contiguous) leaf
    t = torch.from_numpy(base.copy()).t().requires_grad_(True)
    kopt, topt = kiln.optim.AdamW([k], lr=0.05, amsgrad=True), torch.optim.AdamW([t], lr=0.05, amsgrad=True)
    for s in range(4):
        set_grads([k], [t], s)
        kopt.step()
        topt.step()
    assert_params_close([k], [t], 2e-5, 2e-6)
    with pytest.raises(ValueError, match="fused=True"):
        strict = kiln.optim.Adam([k], fused=True)
        k.grad = kiln.ones(6, 8)
        strict.step()


def test_zero_grad():
    kp, tp = make_params()
    opt = kiln.optim.SGD(kp, lr=0.1)
    set_grads(kp, tp, 0)
    opt.zero_grad(set_to_none=False)
    assert all(float(p.grad.abs().sum().item()) == 0 for p in kp)
    opt.zero_grad()
    assert all(p.grad is None for p in kp)


def test_state_dict_layout_and_round_trip():
    kp, tp, kopt, topt = run_both(kiln.optim.Adam, torch.optim.Adam, dict(lr=1e-2, amsgrad=True), steps=3)
    ksd, tsd = kopt.state_dict(), topt.state_dict()
    assert set(ksd) == {"state", "param_groups"}
    assert sorted(ksd["state"]) == sorted(tsd["state"])
    assert [g["params"] for g in ksd["param_groups"]] == [g["params"] for g in tsd["param_groups"]]
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
        assert ksd["param_groups"][0][key] == tsd["param_groups"][0][key]
    for i in tsd["state"]:
        for key, value in tsd["state"][i].items():
            np.testing.assert_allclose(ksd["state"][i][key].numpy(), value.numpy(), 2e-5, 2e-6)

    # A fresh optimizer over copies of the parameters continues identically.
    copies = [kiln.from_numpy(p.detach().numpy().copy()).requires_grad_(True) for p in kp]
    other = kiln.optim.Adam(copies, lr=0.5)
    other.load_state_dict(ksd)
    assert other.param_groups[0]["lr"] == 1e-2
    for s in range(3, 6):
        set_grads(kp, tp, s)
        set_grads(copies, tp, s)
        kopt.step()
        other.step()
    for a, b in zip(kp, copies):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def test_load_torch_state_dict_then_match_torch():
    kp, tp = make_params()
    topt = torch.optim.SGD(tp, lr=0.1, momentum=0.9)
    for s in range(2):
        set_grads(kp, tp, s)
        topt.step()
    for k, t in zip(kp, tp):  # bring kiln's parameters to torch's values
        k.detach().copy_(kiln.from_numpy(t.detach().numpy().copy()))
    kopt = kiln.optim.SGD(kp, lr=0.1, momentum=0.9)
    kopt.load_state_dict(topt.state_dict())
    for s in range(2, 5):
        set_grads(kp, tp, s)
        kopt.step()
        topt.step()
    assert_params_close(kp, tp, 2e-5, 2e-6)


def test_load_state_dict_errors():
    kp, _ = make_params()
    opt = kiln.optim.SGD(kp, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    sd = {"state": {0: {"momentum_buffer": kiln.zeros(2)}},
          "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}]}
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(sd)


def test_constructor_errors():
    p = kiln.zeros(2).requires_grad_(True)
    with pytest.raises(ValueError, match="empty parameter list"):
        kiln.optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        kiln.optim.Adam([p], lr=-1)
    with pytest.raises(ValueError, match="beta"):
        kiln.optim.AdamW([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="Nesterov"):
        kiln.optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="more than one"):
        kiln.optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(TypeError, match="iterable"):
        kiln.optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="floating-point"):
        kiln.optim.SGD([kiln.zeros(2, dtype=kiln.int64)], lr=0.1)


def test_generator_of_parameters_and_repr():
    p = kiln.zeros(2).requires_grad_(True)
    opt = kiln.optim.AdamW((q for q in [p]), lr=0.1)
    assert opt.param_groups[0]["params"][0] is p
    assert "AdamW (" in repr(opt) and "lr: 0.1" in repr(opt)


# ---- schedulers ----

def lr_sequences(make_kiln, make_torch, epochs=25, lrs=(0.1, 0.02)):
    kp = [kiln.zeros(1).requires_grad_(True) for _ in lrs]
    tp = [torch.zeros(1, requires_grad=True) for _ in lrs]
    kopt = kiln.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(kp, lrs)], lr=1.0)
    topt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(tp, lrs)], lr=1.0)
    ks, ts = make_kiln(kopt), make_torch(topt)
    got, want = [], []
    for _ in range(epochs):
        got.append([g["lr"] for g in kopt.param_groups])
        want.append([g["lr"] for g in topt.param_groups])
        assert ks.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12, abs=1e-15)
        kopt.step()
        topt.step()
        ks.step()
        ts.step()
    return got, want


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name,kwargs", [
    ("StepLR", dict(step_size=3)),
    ("StepLR", dict(step_size=2, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 9], gamma=0.3)),
    ("CosineAnnealingLR", dict(T_max=10)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    ("LambdaLR", dict(lr_lambda=lambda e: 0.95 ** e)),
])
def test_schedulers_match_torch(name, kwargs):
    got, want = lr_sequences(lambda o: getattr(lr_scheduler, name)(o, **kwargs),
                             lambda o: getattr(torch.optim.lr_scheduler, name)(o, **kwargs))
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-12, atol=1e-15)


def test_scheduler_state_dict_resume():
    p = kiln.zeros(1).requires_grad_(True)
    opt = kiln.optim.SGD([p], lr=1.0)
    s = lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(4):
        s.step()
    sd = s.state_dict()
    assert sd["last_epoch"] == 4 and "optimizer" not in sd
    opt2 = kiln.optim.SGD([kiln.zeros(1).requires_grad_(True)], lr=1.0)
    s2 = lr_scheduler.CosineAnnealingLR(opt2, T_max=10)
    s2.load_state_dict(sd)
    s.step()
    s2.step()
    assert s2.get_last_lr() == s.get_last_lr()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))


# ---- clip_grad_norm_ ----

@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    kp, tp = make_params()
    set_grads(kp, tp, 0, skip=(1,))
    ktotal = kiln.optim.clip_grad_norm_(kp, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tp, max_norm, norm_type=norm_type)
    assert float(ktotal.item()) == pytest.approx(float(ttotal), rel=1e-5)
    for k, t in zip(kp, tp):
        if t.grad is None:
            assert k.grad is None
        else:
            np.testing.assert_allclose(k.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_clip_grad_norm_single_tensor_and_nonfinite():
    p = kiln.zeros(2).requires_grad_(True)
    p.grad = kiln.tensor([3.0, 4.0])
    assert float(kiln.utils.clip_grad_norm_(p, 1.0).item()) == pytest.approx(5.0)
    np.testing.assert_allclose(p.grad.numpy(), [0.6, 0.8], rtol=1e-5)
    p.grad = kiln.tensor([float("nan"), 1.0])
    with pytest.raises(ValueError, match="non-finite"):
        kiln.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


def test_clip_grad_value_matches_torch():
    kp, tp = make_params()
    set_grads(kp, tp, 0)
    kiln.optim.clip_grad_value_(kp, 0.5)
    torch.nn.utils.clip_grad_value_(tp, 0.5)
    for k, t in zip(kp, tp):
        np.testing.assert_allclose(k.grad.numpy(), t.grad.numpy())


# ---- an end-to-end fit with autograd ----

def test_linear_regression_converges():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 3)).astype(np.float32)
    y = x @ np.array([[1.5], [-2.0], [0.5]], dtype=np.float32) + 0.3
    X, Y = kiln.from_numpy(x), kiln.from_numpy(y)
    w = kiln.zeros(3, 1).requires_grad_(True)
    b = kiln.zeros(1).requires_grad_(True)
    opt = kiln.optim.Adam([w, b], lr=0.1)
    sched = lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    for _ in range(300):
        loss = ((X.matmul(w) + b - Y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert float(loss.item()) < 1e-4
    np.testing.assert_allclose(w.detach().numpy().ravel(), [1.5, -2.0, 0.5], atol=1e-2)
