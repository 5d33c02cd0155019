"""kiln.cuda: the CUDA driver as kiln sees it. Without a GPU or driver (the
development and CI machines) kiln must say why and refuse device="cuda"
with that reason; where there is a GPU, it must see it.

With a GPU (or the CUDA emulator, tests/cuda_emulator), the Python API on
CUDA tensors is checked the way a PyTorch user would use it: every result
computed on the GPU against the same computation on the CPU (same seed, same
inputs), on the device and with the dtype the CPU's has."""
import copy
import gc
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import kiln
import kiln.nn as nn
import kiln.nn.functional as F
from conftest import TOLERANCES, to_numpy

PYTHON = os.path.join(os.path.dirname(__file__), "..", "..", "python")
HAS_GPU = kiln.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason=f"no CUDA GPU: {kiln.cuda.unavailable_reason()}")


def test_cuda_is_there_where_expected():
    # set where these tests run under the CUDA emulator (tests/cuda_emulator)
    if os.environ.get("KILN_EXPECT_CUDA"):
        assert HAS_GPU, kiln.cuda.unavailable_reason()


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: the refusals are not what runs here")
def test_without_a_gpu_cuda_is_refused_with_the_reason():
    reason = kiln.cuda.unavailable_reason()
    assert reason and kiln.cuda.device_count() == 0
    x = kiln.ones(3)
    for make in (lambda: kiln.ones(3, device="cuda"), lambda: kiln.zeros(2, 2, device="cuda:1"),
                 lambda: kiln.randn(4, device="cuda"), lambda: kiln.arange(3, device="cuda"),
                 lambda: kiln.tensor([1.0], device="cuda"), lambda: kiln.zeros_like(x, device="cuda"),
                 lambda: x.to("cuda"), lambda: x.cuda(), lambda: x.to("cuda", kiln.float16),
                 lambda: kiln.cuda.synchronize(), lambda: kiln.cuda.get_device_name(),
                 lambda: kiln.cuda.memory_stats(), lambda: kiln.cuda.empty_cache(), lambda: x.pin_memory(),
                 lambda: kiln.cuda.Stream(), lambda: kiln.cuda.Event()):
        with pytest.raises(RuntimeError, match="CUDA is not available") as e:
            make()
        assert reason in str(e.value)


def test_cpu_moves_are_free_and_tf32_is_a_setting():
    x = kiln.ones(3)
    assert x.cpu() is not None and x.cpu().device == "cpu" and not x.is_pinned()
    assert (x.to("cpu") == x).all().item() and x.to(device="cpu", dtype=kiln.float64).dtype == kiln.float64
    assert kiln.cuda.matmul.allow_tf32 is False
    kiln.cuda.matmul.allow_tf32 = True
    try:
        assert kiln.cuda.matmul.allow_tf32 is True
    finally:
        kiln.cuda.matmul.allow_tf32 = False


def test_device_names_are_checked_before_the_driver():
    with pytest.raises(RuntimeError, match="unknown device 'gpu'"):
        kiln.ones(2, device="gpu")
    with pytest.raises(ValueError, match="expected a CUDA device"):
        kiln.cuda.get_device_properties("cpu")


def test_the_toolkit_stub_is_not_taken_for_a_driver(tmp_path):
    stub = "/usr/local/cuda/lib64/stubs/libcuda.so"
    if not os.path.exists(stub):
        pytest.skip(f"no CUDA toolkit stub at {stub}")
    (tmp_path / "libcuda.so.1").symlink_to(stub)
    env = dict(os.environ, PYTHONPATH=PYTHON, LD_LIBRARY_PATH=str(tmp_path))
    code = "import kiln; print(kiln.cuda.is_available()); print(kiln.cuda.unavailable_reason())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    available, reason = out.stdout.strip().splitlines()
    assert available == "False" and "stub" in reason


@needs_gpu
def test_with_a_gpu_the_driver_sees_it():
    assert kiln.cuda.device_count() >= 1 and kiln.cuda.driver_version() >= 12000
    p = kiln.cuda.get_device_properties(0)
    assert p["name"] and p["total_memory"] > 1 << 30 and p["major"] >= 5
    kiln.cuda.synchronize()
    with pytest.raises(RuntimeError, match="no CUDA device"):
        kiln.ones(3, device=f"cuda:{kiln.cuda.device_count()}")


@needs_gpu
def test_with_a_gpu_the_issue_example_runs_and_matches_the_cpu():
    import numpy as np
    kiln.manual_seed(0)
    x = kiln.randn(256, 256, device="cuda")
    kiln.manual_seed(0)
    assert np.array_equal(x.cpu().numpy(), kiln.randn(256, 256).numpy())  # same seed, same numbers
    y = (x @ x.T).softmax(dim=-1)
    assert y.device == "cuda:0" and x.to("cuda").device == "cuda:0"
    kiln.cuda.synchronize()
    xc = x.cpu()
    expected = (xc @ xc.T).softmax(dim=-1).numpy()
    np.testing.assert_allclose(y.cpu().numpy(), expected, rtol=1e-4, atol=1e-6)
    assert kiln.cuda.memory_allocated() > 0 and kiln.cuda.memory_stats()["num_allocs"] > 0
    side, start, end = kiln.cuda.Stream(), kiln.cuda.Event(), kiln.cuda.Event()
    with kiln.cuda.stream(side):
        start.record()
        z = x * 2
        end.record()
    side.synchronize()
    assert start.elapsed_time(end) >= 0 and (z.cpu().numpy() == xc.numpy() * 2).all()
    with pytest.raises(RuntimeError, match="same device"):
        x + kiln.ones(256)
    with pytest.raises(kiln.TraceError, match="cpu only"):
        kiln.jit(lambda t: t * 2)(x)


@needs_gpu
def test_with_a_gpu_training_a_model_matches_the_cpu():
    import numpy as np
    kiln.manual_seed(1)
    cpu = kiln.nn.Sequential(kiln.nn.Linear(8, 16), kiln.nn.ReLU(), kiln.nn.Linear(16, 1))
    gpu = kiln.nn.Sequential(kiln.nn.Linear(8, 16), kiln.nn.ReLU(), kiln.nn.Linear(16, 1))
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    x, t = kiln.randn(32, 8), kiln.randn(32, 1)
    for model, (xs, ts) in ((cpu, (x, t)), (gpu, (x.cuda(), t.cuda()))):
        opt = kiln.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            loss = ((model(xs) - ts) ** 2).mean()
            loss.backward()
            opt.step()
    for a, b in zip(cpu.parameters(), gpu.parameters()):
        np.testing.assert_allclose(b.cpu().numpy(), a.numpy(), rtol=1e-4, atol=1e-5)


# ---- the Python API on CUDA tensors, against the CPU ----

def check_gpu(gpu, cpu, rtol=None, atol=None, device="cuda:0"):
    """``gpu`` (a result computed on the GPU) against ``cpu`` (the same computed on the CPU):
    on ``device``, with the CPU's dtype and shape, and equal within the dtype's tolerance
    (conftest.TOLERANCES; integers and bools exactly). NaNs must be where the CPU's are."""
    assert isinstance(gpu, kiln.Tensor) and gpu.device == device, getattr(gpu, "device", type(gpu))
    assert gpu.dtype == cpu.dtype and tuple(gpu.shape) == tuple(cpu.shape), (gpu.dtype, gpu.shape, cpu.dtype, cpu.shape)
    r, a = TOLERANCES.get(str(cpu.dtype).replace("kiln.", ""), (0.0, 0.0))
    np.testing.assert_allclose(to_numpy(gpu.cpu()), to_numpy(cpu), rtol=r if rtol is None else rtol,
                               atol=a if atol is None else atol, equal_nan=True)


def randn(*shape, seed=0):
    return kiln.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@needs_gpu
def test_gpu_creation_functions_match_the_cpu():
    check_gpu(kiln.zeros(2, 3, device="cuda"), kiln.zeros(2, 3))
    check_gpu(kiln.ones((2, 3), dtype=kiln.int32, device="cuda:0"), kiln.ones(2, 3, dtype=kiln.int32))
    check_gpu(kiln.full((2, 2), 7.5, device="cuda"), kiln.full((2, 2), 7.5))
    check_gpu(kiln.full((3,), 7, device="cuda"), kiln.full((3,), 7))  # an int fill: int64, as on the cpu
    e = kiln.empty(4, 5, dtype=kiln.float16, device="cuda")
    assert e.device == "cuda:0" and e.shape == (4, 5) and e.dtype == kiln.float16
    check_gpu(kiln.arange(5, device="cuda"), kiln.arange(5))
    check_gpu(kiln.arange(1, 2, 0.25, device="cuda"), kiln.arange(1, 2, 0.25))
    check_gpu(kiln.linspace(-1, 1, 7, device="cuda"), kiln.linspace(-1, 1, 7))
    check_gpu(kiln.eye(3, 4, device="cuda"), kiln.eye(3, 4))
    check_gpu(kiln.tensor([[1, 2], [3, 4]], device="cuda"), kiln.tensor([[1, 2], [3, 4]]))
    check_gpu(kiln.tensor([1.5, -2.0], dtype=kiln.bfloat16, device="cuda"),
              kiln.tensor([1.5, -2.0], dtype=kiln.bfloat16))
    check_gpu(kiln.tensor(np.arange(6.0).reshape(2, 3), device="cuda"), kiln.tensor(np.arange(6.0).reshape(2, 3)))
    g = kiln.tensor([1.0, 2.0], device="cuda")
    check_gpu(kiln.tensor(g), kiln.tensor([1.0, 2.0]))  # a copy of a GPU tensor stays there, as in torch
    assert kiln.tensor(g, device="cpu").device == "cpu"
    # *_like: the input's device unless device= says otherwise
    c = kiln.ones(2, 3, dtype=kiln.float64)
    check_gpu(kiln.zeros_like(c, device="cuda"), kiln.zeros_like(c))
    check_gpu(kiln.ones_like(c.cuda()), kiln.ones_like(c))
    check_gpu(kiln.full_like(c.cuda(), 3, dtype=kiln.int8), kiln.full_like(c, 3, dtype=kiln.int8))
    assert kiln.empty_like(c.cuda()).device == "cuda:0" and kiln.zeros_like(c.cuda(), device="cpu").device == "cpu"
    # new_*: the tensor's dtype and device, as in torch
    h = kiln.ones(1, dtype=kiln.float16, device="cuda")
    check_gpu(h.new_zeros(2, 2), kiln.zeros(2, 2, dtype=kiln.float16))
    check_gpu(h.new_ones(3), kiln.ones(3, dtype=kiln.float16))
    check_gpu(h.new_full((2,), 4), kiln.full((2,), 4, dtype=kiln.float16))
    check_gpu(h.new_tensor([1, 2]), kiln.tensor([1, 2], dtype=kiln.float16))
    assert h.new_zeros(2, device="cpu").device == "cpu"


@needs_gpu
def test_gpu_random_numbers_match_the_cpu_for_the_same_seed():
    # kiln's generator is counter based: the same seed draws the same numbers on every device
    def both(make_gpu, make_cpu, rtol=0.0):
        kiln.manual_seed(7)
        g = make_gpu()
        kiln.manual_seed(7)
        check_gpu(g, make_cpu(), rtol=rtol, atol=0)
    both(lambda: kiln.rand(3, 50, device="cuda"), lambda: kiln.rand(3, 50))
    both(lambda: kiln.randn(3, 50, device="cuda"), lambda: kiln.randn(3, 50))
    # (Box-Muller in double: the GPU's log and cos may differ from the cpu's libm in the last bits)
    both(lambda: kiln.randn(3, 50, dtype=kiln.float64, device="cuda"), lambda: kiln.randn(3, 50, dtype=kiln.float64),
         rtol=1e-13)
    both(lambda: kiln.randint(-5, 5, (40,), device="cuda"), lambda: kiln.randint(-5, 5, (40,)))
    both(lambda: kiln.normal(1.0, 2.0, (40,), device="cuda"), lambda: kiln.normal(1.0, 2.0, (40,)))
    c = kiln.zeros(4, 6)
    both(lambda: kiln.rand_like(c.cuda()), lambda: kiln.rand_like(c))
    both(lambda: kiln.randn_like(c, device="cuda"), lambda: kiln.randn_like(c))
    both(lambda: F.dropout(kiln.ones(500, device="cuda"), 0.3), lambda: F.dropout(kiln.ones(500), 0.3))


@needs_gpu
def test_gpu_device_strings_and_moves():
    c = randn(3, 4)
    g = c.to("cuda")
    assert g.device == "cuda:0" and g.is_cuda and not c.is_cuda and c.device == "cpu"
    check_gpu(g, c)
    check_gpu(c.to("cuda", kiln.float16), c.to(kiln.float16))
    check_gpu(c.to(device="cuda:0", dtype=kiln.float64), c.double())
    check_gpu(c.cuda(), c)
    check_gpu(c.cuda(0), c)
    check_gpu(c.cuda("cuda:0"), c)
    check_gpu(c.to(0), c)  # an int is a GPU's index, as in torch
    check_gpu(c.cuda(non_blocking=True), c)  # (accepted; kiln's copies complete before returning)
    check_gpu(c.to("cuda", non_blocking=True), c)
    # to(other) and type_as(other): other's dtype and device, as in torch
    check_gpu(c.to(kiln.ones(1, dtype=kiln.float16, device="cuda")), c.half())
    check_gpu(c.type_as(kiln.ones(1, dtype=kiln.float64, device="cuda")), c.double())
    assert g.to(kiln.ones(1, dtype=kiln.int32)).device == "cpu"
    # back: cpu() copies a GPU tensor; moving within a device shares the storage
    back = g.cpu()
    assert back.device == "cpu" and not back.is_cuda
    np.testing.assert_array_equal(back.numpy(), c.numpy())
    np.testing.assert_array_equal(g.to("cpu", non_blocking=True).numpy(), c.numpy())
    same = g.to("cuda")
    same.add_(1)
    check_gpu(g, c + 1)
    copied = g.to("cuda", copy=True)
    copied.zero_()
    check_gpu(g, c + 1)
    back.zero_()  # the cpu copy is its own
    check_gpu(g, c + 1)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        c.cuda(kiln.cuda.device_count())
    with pytest.raises(RuntimeError, match="unknown device 'cuda:x'"):
        c.to("cuda:x")


@needs_gpu
def test_gpu_arithmetic_with_broadcasting_and_python_scalars():
    a, b = randn(4, 5), randn(5, seed=1)
    ag, bg = a.cuda(), b.cuda()
    check_gpu(ag + bg, a + b)
    check_gpu(ag - bg[None, :], a - b[None, :])
    check_gpu(ag * bg.reshape(1, 5), a * b.reshape(1, 5))
    check_gpu(ag / (bg.abs() + 1), a / (b.abs() + 1))
    check_gpu(ag[:, :1] * bg, a[:, :1] * b)  # (4, 1) with (5,)
    check_gpu(2.5 * ag - 1, 2.5 * a - 1)
    check_gpu(1 / (ag.abs() + 1) - 3, 1 / (a.abs() + 1) - 3)
    check_gpu(ag ** 2 + 2 ** ag, a ** 2 + 2 ** a)
    check_gpu(ag // 0.3, a // 0.3)
    check_gpu(ag % 0.3, a % 0.3, atol=1e-6)
    check_gpu(-ag, -a)
    check_gpu(abs(ag), abs(a))
    for name in ("exp", "sin", "cos", "tanh", "sigmoid", "relu", "sign", "floor", "ceil", "round", "trunc", "erf",
                 "silu", "gelu"):
        check_gpu(getattr(ag, name)(), getattr(a, name)())
    for name in ("sqrt", "log", "log1p", "rsqrt", "reciprocal"):
        check_gpu(getattr(ag.abs(), name)(), getattr(a.abs(), name)())
    check_gpu(kiln.maximum(ag, bg), kiln.maximum(a, b))
    check_gpu(kiln.minimum(ag, bg), kiln.minimum(a, b))
    check_gpu(kiln.atan2(ag, bg), kiln.atan2(a, b))
    i, j = kiln.tensor([-7, 7, 5, 9]), kiln.tensor([2, -2, 3, 4])
    check_gpu(i.cuda() // j.cuda(), i // j)  # floor division, Python's sign rules
    check_gpu(i.cuda() % j.cuda(), i % j)
    check_gpu(i.cuda() ** 3, i ** 3)
    check_gpu(i.cuda() & 6 | (j.cuda() ^ 1), i & 6 | (j ^ 1))
    u = kiln.tensor([250, 3], dtype=kiln.uint8)
    check_gpu(u.cuda() + 10, u + 10)  # wraps around
    # a 0-d cpu tensor mixes with GPU tensors, as in torch
    check_gpu(ag * kiln.tensor(2.0), a * 2.0)


@needs_gpu
def test_gpu_inplace_ops_and_comparisons():
    a, b = randn(4, 5), randn(5, seed=1)
    x, y = a.cuda(), a.clone()
    for name in ("add_", "sub_", "mul_", "div_", "maximum_", "minimum_"):
        assert getattr(x, name)(b.cuda()) is x
        getattr(y, name)(b)
    x.add_(1.5).mul_(2).clamp_(-3, 3).sub_(0.25)
    y.add_(1.5).mul_(2).clamp_(-3, 3).sub_(0.25)
    x += b.cuda()
    y += b
    x *= 3
    y *= 3
    x.exp_().neg_()
    y.exp_().neg_()
    check_gpu(x, y)
    ident = x
    x /= 2
    assert x is ident  # in place keeps the object, as on the cpu
    y /= 2
    check_gpu(x, y)
    x.zero_()
    check_gpu(x, kiln.zeros(4, 5))
    x.fill_(2.5)
    check_gpu(x, kiln.full((4, 5), 2.5))
    x.fill_(kiln.tensor(1.0, device="cuda"))
    check_gpu(x, kiln.ones(4, 5))
    x.copy_(a)  # from the cpu
    check_gpu(x, a)
    d = kiln.zeros(4, 5, dtype=kiln.float64)
    d.copy_(x)  # to the cpu, cast
    np.testing.assert_array_equal(d.numpy(), a.numpy().astype(np.float64))
    with pytest.raises(kiln.DTypeError, match="can't be cast"):  # as on the cpu
        kiln.ones(2, dtype=kiln.int32, device="cuda").add_(1.5)
    ag, bg = a.cuda(), b.cuda()
    for op in ("eq", "ne", "lt", "le", "gt", "ge"):
        check_gpu(getattr(ag, op)(bg), getattr(a, op)(b))
        check_gpu(getattr(ag, op)(0.5), getattr(a, op)(0.5))
    check_gpu(ag > bg, a > b)
    check_gpu((ag > 0) & (bg < 0), (a > 0) & (b < 0))
    check_gpu(~(ag > 0) | (bg > 1), ~(a > 0) | (b > 1))
    check_gpu((ag > 0).logical_xor(bg > 0), (a > 0).logical_xor(b > 0))
    check_gpu(ag.clone().gt_(bg), a.clone().gt_(b))


@needs_gpu
def test_gpu_where_clamp_and_dtype_promotion():
    a, b = randn(4, 5), randn(5, seed=1)
    ag, bg = a.cuda(), b.cuda()
    check_gpu(kiln.where(ag > 0, ag, bg), kiln.where(a > 0, a, b))
    check_gpu(kiln.where(ag > 0, ag, 0.0), kiln.where(a > 0, a, 0.0))
    check_gpu(kiln.where(ag > 0, 1, -1), kiln.where(a > 0, 1, -1))
    check_gpu(ag.where(ag < 1, bg), a.where(a < 1, b))
    check_gpu(ag.clamp(-0.5, 0.5), a.clamp(-0.5, 0.5))
    check_gpu(ag.clamp(min=0), a.clamp(min=0))
    check_gpu(ag.clip(max=0.1), a.clip(max=0.1))
    check_gpu(kiln.clamp(ag, -1, 1), kiln.clamp(a, -1, 1))
    nan = kiln.tensor([float("nan"), -2.0, 2.0])
    check_gpu(nan.cuda().clamp(-1, 1), nan.clamp(-1, 1))  # NaN stays NaN
    i32 = kiln.arange(5, dtype=kiln.int32)
    cases = [
        (lambda i, f: i + f, "int32 + float32"),
        (lambda i, f: i * 2.5, "int32 * python float"),
        (lambda i, f: i / 2, "int true division"),
        (lambda i, f: i.long() + i, "int64 + int32"),
        (lambda i, f: f.half() + f, "float16 + float32"),
        (lambda i, f: f.half() * 2.5, "float16 * python float"),
        (lambda i, f: f.bfloat16() + f.half(), "bfloat16 + float16"),
        (lambda i, f: (f > 0) + i, "bool + int32"),
        (lambda i, f: i + kiln.tensor(1.5).to(f.device), "int32 + 0-d float32"),
        (lambda i, f: f.half() * kiln.tensor(1.5, dtype=kiln.float64).to(f.device), "float16 * 0-d float64"),
        (lambda i, f: kiln.where(f > 0, f.half(), 0), "where float16 and an int"),
    ]
    for fn, what in cases:
        g, c = fn(i32.cuda(), b.cuda()), fn(i32, b)
        assert g.dtype == c.dtype, what
        check_gpu(g, c)
    assert kiln.result_type(bg.half(), 2.0) == kiln.float16


@needs_gpu
@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "int32", "int64", "float16", "bfloat16", "float64"])
def test_gpu_casts_match_the_cpu(dtype):
    values = kiln.tensor([-2.7, -0.5, 0.0, 0.4, 1.5, 2.5, 100.3, 70000.0, 1e-8, float("inf"), -float("inf")])
    if dtype in ("uint8", "int8", "int32", "int64"):
        values = values[1:7]  # (out-of-range float to int casts are undefined behaviour in C++ and CUDA)
    to = getattr(kiln, dtype)
    g = values.cuda().to(to)
    check_gpu(g, values.to(to), rtol=0, atol=0)
    check_gpu(g.float(), values.to(to).float(), rtol=0, atol=0)  # and back
    check_gpu(values.double().cuda().to(to), values.double().to(to), rtol=0, atol=0)
    if dtype in ("float16", "bfloat16"):
        # arithmetic in the low precision, as the cpu does it
        a, b = randn(8, 8), randn(8, seed=1)
        check_gpu(a.cuda().to(to) * b.cuda().to(to) + 1, a.to(to) * b.to(to) + 1)
        check_gpu(a.cuda().to(to) * 40000, a.to(to) * 40000)  # float16 overflows to inf


@needs_gpu
def test_gpu_reductions_with_dim_and_keepdim():
    x = randn(3, 4, 5)
    x[1, 2, 3] = float("nan")
    xg = x.cuda()
    clean = randn(3, 4, 5, seed=2)
    cleang = clean.cuda()
    for name in ("sum", "mean", "amax", "amin", "prod", "var", "std"):
        for dim, keepdim in ((None, False), (1, False), (-1, True), ((0, 2), False), ((0, 1, 2), True)):
            check_gpu(getattr(cleang, name)(dim=dim, keepdim=keepdim), getattr(clean, name)(dim=dim, keepdim=keepdim))
            check_gpu(getattr(xg, name)(dim=dim, keepdim=keepdim), getattr(x, name)(dim=dim, keepdim=keepdim))
    check_gpu(cleang.logsumexp(dim=1), clean.logsumexp(dim=1))
    check_gpu(cleang.var(dim=1, unbiased=False), clean.var(dim=1, unbiased=False))
    check_gpu(cleang.std(correction=0), clean.std(correction=0))
    check_gpu(cleang.sum(dim=0, dtype=kiln.float64), clean.sum(dim=0, dtype=kiln.float64))
    check_gpu(cleang.half().mean(dim=-1), clean.half().mean(dim=-1))
    check_gpu(cleang.bfloat16().sum(dim=-1), clean.bfloat16().sum(dim=-1))
    check_gpu(kiln.sum(cleang, dim=2), kiln.sum(clean, dim=2))
    # max/min: the maximum and its index (the first of ties, a NaN if any), as on the cpu
    t = kiln.tensor([[1.0, 5.0, 5.0, 2.0], [3.0, 3.0, 1.0, 3.0], [float("nan"), 1.0, 2.0, 0.0]])
    tg = t.cuda()
    for name in ("max", "min"):
        check_gpu(getattr(tg, name)(), getattr(t, name)())
        for dim, keepdim in ((1, False), (0, True), (-1, True)):
            g, c = getattr(tg, name)(dim=dim, keepdim=keepdim), getattr(t, name)(dim=dim, keepdim=keepdim)
            check_gpu(g.values, c.values)
            check_gpu(g.indices, c.indices)
    for name in ("argmax", "argmin"):
        check_gpu(getattr(tg, name)(), getattr(t, name)())
        check_gpu(getattr(tg, name)(dim=1), getattr(t, name)(dim=1))
        check_gpu(getattr(tg[:2], name)(dim=0, keepdim=True), getattr(t[:2], name)(dim=0, keepdim=True))
    # integer and bool reductions
    check_gpu((xg > 0).sum(), (x > 0).sum())
    check_gpu((xg > 0).int().sum(dim=1), (x > 0).int().sum(dim=1))
    check_gpu((xg > 0).any(dim=1), (x > 0).any(dim=1))
    check_gpu((cleang > -5).all(), (clean > -5).all())
    n = kiln.tensor([[1, 2, 3], [4, 5, 6]])
    check_gpu(n.cuda().prod(dim=1), n.prod(dim=1))
    check_gpu(n.cuda().amax(dim=0), n.amax(dim=0))
    big = kiln.arange(70000.0).reshape(7, 10000)
    check_gpu(big.cuda().mean(dim=1), big.mean(dim=1))  # rows longer than a block
    check_gpu(kiln.ones(100000, device="cuda").sum(), kiln.ones(100000).sum())
    check_gpu(kiln.zeros(0, 3, device="cuda").sum(dim=0), kiln.zeros(0, 3).sum(dim=0))


@needs_gpu
def test_gpu_softmax_log_softmax_and_layer_norm():
    x = randn(3, 4, 5)
    xg = x.cuda()
    for dim in (0, 1, -1):
        check_gpu(xg.softmax(dim=dim), x.softmax(dim=dim))
        check_gpu(F.softmax(xg, dim=dim), F.softmax(x, dim=dim))
        check_gpu(F.log_softmax(xg, dim=dim), F.log_softmax(x, dim=dim))
        check_gpu(kiln.log_softmax(xg, dim), kiln.log_softmax(x, dim))
    check_gpu(xg.half().softmax(dim=-1), x.half().softmax(dim=-1))
    check_gpu(F.softmax(xg.half(), dim=-1, dtype=kiln.float32), F.softmax(x.half(), dim=-1, dtype=kiln.float32))
    inf = kiln.tensor([[float("-inf"), 0.0, 1.0], [float("-inf")] * 3])
    check_gpu(inf.cuda().softmax(-1), inf.softmax(-1))  # an all -inf row is NaN, as on the cpu
    w, b = randn(5, seed=1), randn(5, seed=2)
    check_gpu(F.layer_norm(xg, (5,), w.cuda(), b.cuda()), F.layer_norm(x, (5,), w, b), atol=1e-5)
    check_gpu(F.layer_norm(xg, 5, eps=1e-3), F.layer_norm(x, 5, eps=1e-3), atol=1e-5)
    check_gpu(F.layer_norm(xg, (4, 5)), F.layer_norm(x, (4, 5)), atol=1e-5)
    check_gpu(kiln.layer_norm(xg.half(), (5,)), kiln.layer_norm(x.half(), (5,)))
    check_gpu(F.gelu(xg, approximate="tanh"), F.gelu(x, approximate="tanh"))


@needs_gpu
def test_gpu_matmul_batched_and_linear():
    m1, m2 = randn(33, 64), randn(64, 17, seed=1)
    tol = dict(rtol=1e-4, atol=1e-4)  # sums of 64 products, in another order
    check_gpu(m1.cuda() @ m2.cuda(), m1 @ m2, **tol)
    check_gpu(m2.cuda().T @ m1.cuda().T, m2.T @ m1.T, **tol)  # transposed operands
    check_gpu(m1.cuda()[::2, 1:] @ m2.cuda()[:-1], m1[::2, 1:] @ m2[:-1], **tol)  # strided views
    check_gpu(m1.cuda() @ m2.cuda()[:, 0], m1 @ m2[:, 0], **tol)  # matrix @ vector
    check_gpu(m2.cuda()[:, 0] @ m1.cuda().T, m2[:, 0] @ m1.T, **tol)  # vector @ matrix
    check_gpu(m1.cuda()[0] @ m1.cuda()[1], m1[0] @ m1[1], **tol)  # dot
    check_gpu(kiln.matmul(m1.cuda(), m2.cuda()), kiln.matmul(m1, m2), **tol)
    check_gpu(m1.cuda().matmul(m2.cuda()), m1.matmul(m2), **tol)
    b1, b2 = randn(3, 8, 16, seed=2), randn(3, 16, 4, seed=3)
    check_gpu(b1.cuda() @ b2.cuda(), b1 @ b2, **tol)
    check_gpu(b1.cuda() @ b2.cuda()[0], b1 @ b2[0], **tol)  # broadcast batch
    check_gpu(b1.cuda()[0] @ b2.cuda(), b1[0] @ b2, **tol)
    check_gpu(b1.cuda()[:, None] @ b2.cuda()[None, :2], b1[:, None] @ b2[None, :2], **tol)  # (3,1)x(1,2) batches
    check_gpu(m1.double().cuda() @ m2.double().cuda(), m1.double() @ m2.double())
    check_gpu(m1.half().cuda() @ m2.half().cuda(), m1.half() @ m2.half(), rtol=1e-2, atol=5e-2)
    check_gpu(m1.bfloat16().cuda() @ m2.bfloat16().cuda(), m1.bfloat16() @ m2.bfloat16(), rtol=2e-2, atol=2e-1)
    check_gpu(kiln.zeros(2, 0, device="cuda") @ kiln.zeros(0, 3, device="cuda"), kiln.zeros(2, 3))
    with pytest.raises(kiln.DTypeError, match="int64 is not supported"):  # cuBLAS has no integer GEMM (nor torch)
        kiln.arange(4, device="cuda").reshape(2, 2) @ kiln.arange(4, device="cuda").reshape(2, 2)
    w, b = randn(7, 64, seed=4), randn(7, seed=5)
    check_gpu(F.linear(m1.cuda(), w.cuda(), b.cuda()), F.linear(m1, w, b), **tol)
    check_gpu(F.linear(m1.cuda().reshape(3, 11, 64), w.cuda()), F.linear(m1.reshape(3, 11, 64), w), **tol)


@needs_gpu
def test_gpu_tf32_matmul_stays_close_to_the_cpu():
    a, b = randn(64, 64), randn(64, 64, seed=1)
    kiln.cuda.matmul.allow_tf32 = True
    try:
        # TF32 rounds the inputs to 10-bit mantissas: ~1e-3 relative per product
        check_gpu(a.cuda() @ b.cuda(), a @ b, rtol=1e-2, atol=5e-2)
        check_gpu(F.linear(a.cuda(), b.cuda()), F.linear(a, b), rtol=1e-2, atol=5e-2)
        x, w = randn(2, 8, 6, 6, seed=2), randn(4, 8, 3, 3, seed=3)  # and cuDNN's convolutions
        check_gpu(F.conv2d(x.cuda(), w.cuda()), F.conv2d(x, w), rtol=1e-2, atol=5e-2)
    finally:
        kiln.cuda.matmul.allow_tf32 = False
    check_gpu(a.cuda() @ b.cuda(), a @ b, rtol=1e-4, atol=1e-4)  # and off again


@needs_gpu
def test_gpu_indexing_reads_match_the_cpu():
    x = randn(4, 5, 6)
    xg = x.cuda()
    idx = kiln.tensor([2, 0, 3, 3])
    check_gpu(xg[1], x[1])
    check_gpu(xg[1, 2], x[1, 2])
    check_gpu(xg[1, -2, 3], x[1, -2, 3])
    check_gpu(xg[1:3, ::2, -1], x[1:3, ::2, -1])
    check_gpu(xg[None, ..., 1], x[None, ..., 1])
    check_gpu(xg[idx.cuda()], x[idx])
    check_gpu(xg[:, kiln.tensor([4, 1], device="cuda"), ::2], x[:, kiln.tensor([4, 1]), ::2])
    check_gpu(xg[kiln.tensor([0, 3], device="cuda"), kiln.tensor([1, 2], device="cuda")],
              x[kiln.tensor([0, 3]), kiln.tensor([1, 2])])
    check_gpu(xg[kiln.tensor(2, device="cuda")], x[2])
    check_gpu(xg[xg > 0], x[x > 0])
    check_gpu(xg[xg.sum(dim=(1, 2)) > 0], x[x.sum(dim=(1, 2)) > 0])
    check_gpu(xg.index_select(1, idx[:2].cuda()), x.index_select(1, idx[:2]))
    check_gpu(kiln.index_select(xg, 2, idx.cuda()), kiln.index_select(x, 2, idx))
    y, i2 = randn(2, 5), kiln.tensor([[0, 1, 4], [2, 2, 0]])
    check_gpu(y.cuda().gather(1, i2.cuda()), y.gather(1, i2))
    check_gpu(kiln.gather(y.cuda(), 0, i2.cuda() % 2), kiln.gather(y, 0, i2 % 2))
    ones = kiln.ones(2, 3)
    check_gpu(kiln.zeros(2, 5, device="cuda").scatter_add(1, i2.cuda(), ones.cuda()),
              kiln.zeros(2, 5).scatter_add(1, i2, ones))  # the repeated index 2 adds twice
    check_gpu(xg.masked_fill(xg > 0, -1.0), x.masked_fill(x > 0, -1.0))
    check_gpu((xg > 1).nonzero(), (x > 1).nonzero())
    check_gpu(kiln.one_hot(idx.cuda(), 5), kiln.one_hot(idx, 5))
    check_gpu(kiln.cat([xg, xg * 2], dim=1), kiln.cat([x, x * 2], dim=1))
    check_gpu(kiln.stack([xg, xg * 2], dim=-1), kiln.stack([x, x * 2], dim=-1))
    for g, c in zip(xg.split(4, dim=2), x.split(4, dim=2)):
        check_gpu(g, c)
    for g, c in zip(xg.chunk(3, dim=1), x.chunk(3, dim=1)):
        check_gpu(g, c)
    for g, c in zip(xg, x):  # iteration yields the rows, on the GPU
        check_gpu(g, c)
    assert len(xg) == 4


@needs_gpu
def test_gpu_views_write_through_to_the_base():
    x = randn(4, 5, 6)
    g, c = x.cuda(), x.clone()
    v = g[1:3, ::2]
    assert v.device == "cuda:0" and not v.is_contiguous()
    v.mul_(10)
    c[1:3, ::2].mul_(10)
    g.transpose(0, 2)[1].add_(1)
    c.transpose(0, 2)[1].add_(1)
    g.view(-1)[:7].zero_()
    c.view(-1)[:7].zero_()
    g.select(2, 0).fill_(3.0)
    c.select(2, 0).fill_(3.0)
    g.narrow(1, 4, 1).neg_()
    c.narrow(1, 4, 1).neg_()
    check_gpu(g, c)
    check_gpu(g[0].T.contiguous(), c[0].T.contiguous())
    check_gpu(g.permute(2, 0, 1).reshape(6, -1), c.permute(2, 0, 1).reshape(6, -1))
    check_gpu(g[:, :1].expand(4, 3, 6) * 1, c[:, :1].expand(4, 3, 6) * 1)
    check_gpu(kiln.broadcast_to(g[0, 0], (2, 6)), kiln.broadcast_to(c[0, 0], (2, 6)))
    check_gpu(g.T.clone(), c.T.clone())
    check_gpu(g.unsqueeze(1).squeeze(1).flatten(1), c.unsqueeze(1).squeeze(1).flatten(1))


@needs_gpu
def test_gpu_setitem_matches_the_cpu():
    x = randn(4, 5, 6)
    g, c = x.cuda(), x.clone()

    def both(index, value, cpu_index=None, cpu_value=None):
        g[index] = value
        c[index if cpu_index is None else cpu_index] = value if cpu_value is None else cpu_value
        check_gpu(g, c)
    both((0, 1), kiln.ones(6, device="cuda"), cpu_value=kiln.ones(6))
    both((slice(None), slice(None), 2), -3)
    both((1, 1, 1), 9)
    both((0, 0, 0), kiln.tensor(4.0, device="cuda"), cpu_value=kiln.tensor(4.0))
    both(g > 1, 0.0, cpu_index=c > 1)
    both(g > 0.5, kiln.tensor(0.25, device="cuda"), cpu_index=c > 0.5, cpu_value=kiln.tensor(0.25))
    both((kiln.tensor([0, 0], device="cuda"), kiln.tensor([1, 2], device="cuda")), kiln.arange(6.0, device="cuda"),
         cpu_index=(kiln.tensor([0, 0]), kiln.tensor([1, 2])), cpu_value=kiln.arange(6.0))
    both(kiln.tensor([1, 3, 1], device="cuda"), kiln.zeros(3, 5, 6, device="cuda"),  # (a repeated index)
         cpu_index=kiln.tensor([1, 3, 1]), cpu_value=kiln.zeros(3, 5, 6))
    both(slice(0, 2), kiln.ones(5, 6))  # a cpu value copied into a GPU slice, as in torch
    both((0, 0), [1, 2, 3, 4, 5, 6])
    both((2, 0), np.arange(6.0))


@needs_gpu
def test_gpu_tensor_indexed_with_cpu_indices():
    x = randn(4, 5, 6)
    g = x.cuda()
    check_gpu(g[[1, 0]], x[[1, 0]])
    check_gpu(g[np.array([3, 1])], x[np.array([3, 1])])
    check_gpu(g[kiln.tensor([2, 0])], x[kiln.tensor([2, 0])])
    check_gpu(g[x > 0], x[x > 0])
    check_gpu(g[True], x[True])


@needs_gpu
def test_gpu_setitem_of_a_scalar_at_integer_indices():
    x = randn(4, 5)
    g, c = x.cuda(), x.clone()
    g[kiln.tensor([2, 0], device="cuda")] = 1.5
    c[kiln.tensor([2, 0])] = 1.5
    check_gpu(g, c)
    g[kiln.tensor([1], device="cuda"), kiln.tensor([3], device="cuda")] = kiln.tensor(2.0)
    c[kiln.tensor([1]), kiln.tensor([3])] = kiln.tensor(2.0)
    check_gpu(g, c)


@needs_gpu
def test_gpu_item_tolist_and_the_numpy_refusal():
    x = randn(3, 4)
    g = x.cuda()
    assert g[1, 2].item() == x[1, 2].item() and isinstance(g[1, 2].item(), float)
    assert kiln.tensor([7], device="cuda").item() == 7 and isinstance(kiln.tensor([7], device="cuda").item(), int)
    assert (g > 100).any().item() is False
    assert float(g.sum()) == pytest.approx(float(x.sum()), rel=1e-5)
    assert int(kiln.tensor(3, device="cuda")) == 3 and bool(kiln.tensor(True, device="cuda"))
    # tolist() copies back as item() does (torch's too); numpy() refuses
    assert g.tolist() == x.tolist() and g[0, 0].tolist() == x[0, 0].tolist()
    assert g.bfloat16().tolist() == x.bfloat16().tolist()
    assert kiln.zeros(0, device="cuda").tolist() == []
    with pytest.raises(RuntimeError, match=r"cuda:0.*call \.cpu\(\) first"):
        g.numpy()
    with pytest.raises(RuntimeError, match=r"call \.cpu\(\) first"):
        g.__array__()
    assert "device='cuda:0'" in repr(g) and "device='cuda:0'" in str(g.half()[:1])


def _run_python(code):
    """Runs ``code`` in a fresh interpreter (with this one's environment, the CUDA emulator's included)."""
    env = dict(os.environ, PYTHONPATH=PYTHON)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@needs_gpu
def test_numpy_asarray_of_a_gpu_tensor_raises_instead_of_aborting():
    # in a subprocess: the abort would take pytest down with it
    code = ("import kiln, numpy as np\n"
            "x = kiln.ones(2, 3, device='cuda')\n"
            "for f in (np.asarray, np.array, memoryview):\n"
            "    try:\n"
            "        f(x)\n"
            "    except Exception as e:\n"
            "        print(type(e).__name__, e)\n")
    out = _run_python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count(".cpu()") == 3, out.stdout


@needs_gpu
def test_gpu_out_of_range_index_fails_at_the_next_sync():
    # as in CUDA (and torch), a kernel's out-of-range index spoils the context: in a subprocess
    code = ("import kiln\n"
            "x = kiln.arange(4.0, device='cuda')\n"
            "try:\n"
            "    print(x[kiln.tensor([9], device='cuda')].cpu())\n"
            "except RuntimeError as e:\n"
            "    print('raised:', e)\n")
    out = _run_python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "raised:" in out.stdout, out.stdout
    # the kernel itself says which index (its printf output, on stdout or stderr)
    assert "index 9 is out of bounds" in out.stdout + out.stderr


# ---- autograd, nn and optim on the GPU ----

@needs_gpu
def test_gpu_autograd_through_ops_matches_the_cpu():
    a = randn(4, 5).requires_grad_()
    ag = a.detach().cuda().requires_grad_()
    assert ag.is_leaf and ag.requires_grad and ag.grad is None
    idx = kiln.tensor([0, 2, 2, 3])
    for t in (a, ag):
        d = t.device
        y = (t.exp() * t.sin()).sum(dim=1).softmax(0)
        z = ((y * kiln.arange(4.0, device=d)).sum() + t.max() + t.mean(dim=0).std() + t[t > 0].sum()
             + t.abs().amax(dim=1).sum() + (t @ t.T).tanh().mean() + F.layer_norm(t, (5,)).pow(2).mean()
             + t[idx.to(d)].sum() + t.index_select(1, idx.to(d)).sum()
             + t.gather(1, idx.to(d).reshape(4, 1)).sum() + kiln.where(t > 0, t, t * 0.1).sum()
             + t.clamp(-0.5, 0.5).sum() + t.half().float().sum() + t[1:, ::2].sum())
        z.backward()
    assert ag.grad.device == "cuda:0" and ag.grad.dtype == kiln.float32
    check_gpu(ag.grad, a.grad, rtol=1e-4, atol=1e-5)

    # retain_grad, kiln.autograd.grad and kiln.value_and_grad on GPU tensors
    h = ag @ ag.T
    h.retain_grad()
    (h ** 2).mean().backward()
    hc = a.detach() @ a.detach().T
    check_gpu(h.grad, 2 * hc / hc.numel(), rtol=1e-4, atol=1e-6)
    g, = kiln.autograd.grad((ag ** 3).sum(), [ag])
    check_gpu(g, 3 * a.detach() ** 2)
    value, grad = kiln.value_and_grad(lambda t: (t ** 2).sum())(ag.detach())
    assert value.device == "cuda:0"
    check_gpu(grad, 2 * a.detach())
    with kiln.no_grad():
        assert not (ag * 2).requires_grad

    # gradients flow back across devices and casts, onto each leaf's own device
    c = randn(3).requires_grad_()
    (c.cuda() * kiln.arange(3.0, device="cuda")).sum().backward()
    assert c.grad.device == "cpu" and c.grad.tolist() == [0.0, 1.0, 2.0]
    d = kiln.ones(3, device="cuda", requires_grad=True)
    (d.cpu().double() * 2).sum().backward()
    check_gpu(d.grad, kiln.full((3,), 2.0))
    d.grad = None
    (d * 2).backward(kiln.ones(3, device="cuda"))
    check_gpu(d.grad, kiln.full((3,), 2.0))


@needs_gpu
def test_a_gradient_on_another_device_is_refused():
    a = kiln.randn(3, device="cuda", requires_grad=True)
    with pytest.raises(RuntimeError, match="cpu"):
        (a * 2).backward(kiln.ones(3))
    assert a.grad is None
    with pytest.raises(RuntimeError, match="cpu"):
        a.grad = kiln.ones(3)


def _mlp_and_data(seed):
    kiln.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 16), nn.Tanh(),
                          nn.Dropout(0.0), nn.Linear(16, 4))
    return model, kiln.randn(16, 8), kiln.randint(0, 4, (16,))


@needs_gpu
def test_gpu_mlp_backward_matches_the_cpu():
    cpu, x, t = _mlp_and_data(3)
    gpu = copy.deepcopy(cpu).cuda()
    loss_c = F.cross_entropy(cpu(x), t)
    loss_g = F.cross_entropy(gpu(x.cuda()), t.cuda())
    check_gpu(loss_g, loss_c)
    loss_c.backward()
    loss_g.backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert q.device == "cuda:0" and q.grad.device == "cuda:0", name
        check_gpu(q.grad, p.grad, rtol=1e-4, atol=1e-5)


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, stride=1, padding="same"), nn.ReLU(), nn.AvgPool2d(2, stride=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


@needs_gpu
def test_gpu_conv_net_backward_matches_the_cpu():
    kiln.manual_seed(0)
    cpu = _cnn()
    gpu = copy.deepcopy(cpu).cuda()
    x, t = kiln.randn(3, 1, 8, 8), kiln.tensor([1, 5, 9])
    loss_c = F.cross_entropy(cpu(x), t, label_smoothing=0.1)
    loss_g = F.cross_entropy(gpu(x.cuda()), t.cuda(), label_smoothing=0.1)
    check_gpu(loss_g, loss_c)
    loss_c.backward()
    loss_g.backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert q.grad.device == "cuda:0", name
        check_gpu(q.grad, p.grad, rtol=1e-4, atol=1e-5)
    for (name, b), bg in zip(cpu.named_buffers(), gpu.buffers()):  # the batch norm's running statistics
        check_gpu(bg, b)
    cpu.eval()
    gpu.eval()
    check_gpu(gpu(x.cuda()), cpu(x), rtol=1e-4, atol=1e-5)


@needs_gpu
def test_gpu_functional_nn_ops_match_the_cpu():
    x, w, b = randn(2, 3, 6, 6), randn(4, 3, 2, 2, seed=1), randn(4, seed=2)
    xg = x.cuda()
    tol = dict(rtol=1e-4, atol=1e-5)
    check_gpu(F.conv2d(xg, w.cuda(), b.cuda()), F.conv2d(x, w, b), **tol)
    check_gpu(F.conv2d(xg, w.cuda(), b.cuda(), padding="same"), F.conv2d(x, w, b, padding="same"), **tol)  # even kernel
    wg = randn(6, 1, 3, 3, seed=3)
    check_gpu(F.conv2d(xg, wg.cuda(), stride=2, padding=1, groups=3), F.conv2d(x, wg, stride=2, padding=1, groups=3),
              **tol)
    w2 = wg.reshape(2, 3, 3, 3)
    check_gpu(F.conv2d(xg, w2.cuda(), dilation=2), F.conv2d(x, w2, dilation=2), **tol)
    check_gpu(F.conv2d(xg[0], w.cuda()), F.conv2d(x[0], w), **tol)  # unbatched
    check_gpu(F.conv2d(xg.half(), w.cuda().half()), F.conv2d(x.half(), w.half()), rtol=1e-2, atol=1e-2)
    check_gpu(F.max_pool2d(xg, 3, 2, 1), F.max_pool2d(x, 3, 2, 1))
    check_gpu(F.max_pool2d(xg, 2, 2, ceil_mode=True), F.max_pool2d(x, 2, 2, ceil_mode=True))
    check_gpu(F.avg_pool2d(xg, 3, 2, 1, count_include_pad=False), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))
    check_gpu(F.adaptive_avg_pool2d(xg, (4, 3)), F.adaptive_avg_pool2d(x, (4, 3)))
    logits, target = randn(5, 4, seed=4), kiln.tensor([0, 3, 1, -100, 2])
    weight = kiln.tensor([1.0, 2.0, 0.5, 1.0])
    lg, tg, wt = logits.cuda(), target.cuda(), weight.cuda()
    check_gpu(F.cross_entropy(lg, tg, weight=wt, label_smoothing=0.1), F.cross_entropy(logits, target, weight=weight,
                                                                                        label_smoothing=0.1))
    check_gpu(F.cross_entropy(lg, tg, reduction="none"), F.cross_entropy(logits, target, reduction="none"))
    check_gpu(F.cross_entropy(lg, lg.softmax(-1)), F.cross_entropy(logits, logits.softmax(-1)))  # probabilities
    check_gpu(F.nll_loss(lg.log_softmax(-1), tg, reduction="sum"), F.nll_loss(logits.log_softmax(-1), target,
                                                                              reduction="sum"))
    check_gpu(F.mse_loss(lg, lg * 0.5), F.mse_loss(logits, logits * 0.5))
    check_gpu(F.binary_cross_entropy_with_logits(lg, (lg > 0).float(), pos_weight=wt),
              F.binary_cross_entropy_with_logits(logits, (logits > 0).float(), pos_weight=weight))
    ids = kiln.tensor([[0, 2], [1, 1]])
    check_gpu(F.embedding(ids.cuda(), lg, padding_idx=1), F.embedding(ids, logits, padding_idx=1))
    rm, rv = kiln.zeros(3), kiln.ones(3)
    rmg, rvg = rm.cuda(), rv.cuda()
    check_gpu(F.batch_norm(xg, rmg, rvg, training=True), F.batch_norm(x, rm, rv, training=True), **tol)
    check_gpu(rmg, rm)
    check_gpu(rvg, rv)
    q, k, v = randn(2, 2, 5, 4, seed=5), randn(2, 2, 6, 4, seed=6), randn(2, 2, 6, 4, seed=7)
    mask = randn(5, 6, seed=8) > 0
    check_gpu(F.scaled_dot_product_attention(q.cuda(), k.cuda(), v.cuda()), F.scaled_dot_product_attention(q, k, v),
              **tol)
    check_gpu(F.scaled_dot_product_attention(q.cuda(), k.cuda(), v.cuda(), attn_mask=mask.cuda()),
              F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **tol)
    for name in ("relu", "gelu", "silu", "tanh", "sigmoid"):
        check_gpu(getattr(F, name)(lg), getattr(F, name)(logits))
    r = lg.clone()
    F.relu(r, inplace=True)
    check_gpu(r, F.relu(logits))


@needs_gpu
def test_gpu_causal_scaled_dot_product_attention():
    q, k, v = randn(2, 2, 5, 4), randn(2, 2, 5, 4, seed=1), randn(2, 2, 5, 4, seed=2)
    check_gpu(F.scaled_dot_product_attention(q.cuda(), k.cuda(), v.cuda(), is_causal=True),
              F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-4, atol=1e-5)


@needs_gpu
def test_gpu_attention_modules_match_the_cpu():
    kiln.manual_seed(2)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    mha_g = copy.deepcopy(mha).cuda()
    s = kiln.randn(2, 5, 8)
    am = kiln.randn(5, 5) > 0.5
    out, weights = mha(s, s, s, attn_mask=am, is_causal=True)
    out_g, weights_g = mha_g(s.cuda(), s.cuda(), s.cuda(), attn_mask=am.cuda(), is_causal=True)
    check_gpu(out_g, out, rtol=1e-4, atol=1e-5)
    check_gpu(weights_g, weights, rtol=1e-4, atol=1e-5)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    layer_g = copy.deepcopy(layer).cuda()
    padding = kiln.tensor([[False] * 5, [False] * 3 + [True] * 2])
    check_gpu(layer_g(s.cuda(), src_key_padding_mask=padding.cuda()), layer(s, src_key_padding_mask=padding),
              rtol=1e-4, atol=1e-5)
    check_gpu(layer_g(s.cuda()), layer(s), rtol=1e-4, atol=1e-5)


@needs_gpu
@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.1, maximize=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=1e-2)),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.9))),
])
def test_gpu_optimizers_step_like_the_cpu(name, kwargs):
    cpu, x, t = _mlp_and_data(4)
    gpu = copy.deepcopy(cpu).cuda()
    for model, xs, ts in ((cpu, x, t), (gpu, x.cuda(), t.cuda())):
        opt = getattr(kiln.optim, name)(model.parameters(), **kwargs)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(xs), ts).backward()
            kiln.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    for (n, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert q.device == "cuda:0", n
        check_gpu(q, p, rtol=1e-4, atol=1e-5)


@needs_gpu
def test_gpu_optimizer_state_dict_round_trip():
    def step(model, opt):
        opt.zero_grad()
        device = model.weight.device
        F.mse_loss(model(kiln.ones(4, 3, device=device)), kiln.zeros(4, 2, device=device)).backward()
        opt.step()
    kiln.manual_seed(0)
    model = nn.Linear(3, 2, device="cuda")
    opt = kiln.optim.Adam(model.parameters(), lr=0.1)
    step(model, opt)
    state = opt.state_dict()
    assert {v.device for s in state["state"].values() for k, v in s.items() if k != "step"} == {"cuda:0"}
    again = kiln.optim.Adam(model.parameters(), lr=0.1)
    again.load_state_dict(state)
    step(model, again)
    # a checkpoint from the cpu: its state goes to the parameters' device, as in torch
    kiln.manual_seed(0)
    cpu = nn.Linear(3, 2)
    cpu_opt = kiln.optim.Adam(cpu.parameters(), lr=0.1)
    step(cpu, cpu_opt)
    gpu = copy.deepcopy(cpu).cuda()
    gpu_opt = kiln.optim.Adam(gpu.parameters(), lr=0.1)
    gpu_opt.load_state_dict(cpu_opt.state_dict())
    assert {v.device for s in gpu_opt.state.values() for k, v in s.items() if k != "step"} == {"cuda:0"}
    step(cpu, cpu_opt)
    step(gpu, gpu_opt)
    check_gpu(gpu.weight, cpu.weight, rtol=1e-5, atol=1e-6)


@needs_gpu
def test_module_moves_between_devices_and_its_state_dict(tmp_path):
    kiln.manual_seed(5)
    cpu = _cnn()
    model = copy.deepcopy(cpu)
    weight = model[0].weight
    assert model.to("cuda") is model and model[0].weight is weight  # moved in place, the Parameters kept
    assert {p.device for p in model.parameters()} | {b.device for b in model.buffers()} == {"cuda:0"}
    model.cpu()
    assert {p.device for p in model.parameters()} == {"cpu"} and model[0].weight is weight
    assert model.cuda() is model and model[0].weight.device == "cuda:0"
    assert model.cuda(0) is model and nn.Linear(2, 2).to(0).weight.device == "cuda:0"
    assert nn.Linear(2, 2).to(kiln.ones(1, dtype=kiln.float64, device="cuda")).weight.dtype == kiln.float64
    assert nn.Linear(2, 2).to(kiln.ones(1, device="cuda")).weight.device == "cuda:0"  # torch's to(tensor)
    half = copy.deepcopy(cpu).to("cuda", kiln.float16)
    assert half[0].weight.dtype == kiln.float16 and half[0].weight.device == "cuda:0"
    assert half[1].num_batches_tracked.dtype == kiln.int64  # (only floating tensors are cast)
    # a gradient moves with its parameter
    lin = nn.Linear(3, 2)
    lin(kiln.ones(1, 3)).sum().backward()
    lin.cuda()
    assert lin.weight.grad.device == "cuda:0"
    # layers made with device=: drawn as on the cpu (same seed, same values), then moved
    for make in (lambda d: nn.Linear(3, 2, device=d), lambda d: nn.Conv2d(2, 3, 3, device=d),
                 lambda d: nn.LayerNorm(4, device=d), lambda d: nn.BatchNorm2d(3, device=d),
                 lambda d: nn.Embedding(5, 2, padding_idx=1, device=d),
                 lambda d: nn.MultiheadAttention(4, 2, device=d),
                 lambda d: nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, device=d)):
        kiln.manual_seed(1)
        on_gpu = make("cuda")
        kiln.manual_seed(1)
        on_cpu = make(None)
        for (name, c), g in zip(on_cpu.state_dict().items(), on_gpu.state_dict().values()):
            check_gpu(g, c, rtol=0, atol=0)
    # state_dict: the GPU's tensors; it loads into a cpu model, and a cpu one into a GPU model
    state = model.state_dict()
    assert {v.device for v in state.values()} == {"cuda:0"}
    fresh = _cnn()
    fresh.load_state_dict(state)
    for (name, v), f in zip(state.items(), fresh.state_dict().values()):
        assert f.device == "cpu", name
        np.testing.assert_array_equal(to_numpy(f), to_numpy(v.cpu()))
    back = _cnn().cuda()
    back.load_state_dict(fresh.state_dict())
    assert {v.device for v in back.state_dict().values()} == {"cuda:0"}
    x = kiln.randn(2, 1, 8, 8)
    fresh.eval()
    back.eval()
    check_gpu(back(x.cuda()), fresh(x), rtol=1e-4, atol=1e-5)
    # save() of a GPU model writes its values (through the cpu); load() into a GPU model
    path = tmp_path / "gpu.safetensors"
    back.save(path)
    loaded = _cnn().cuda()
    loaded.load(path)
    loaded.eval()
    check_gpu(loaded(x.cuda()), fresh(x), rtol=1e-4, atol=1e-5)
    assert copy.deepcopy(loaded)[0].weight.device == "cuda:0"


@needs_gpu
def test_gpu_dataloader_batches_stay_on_the_gpu():
    x, y = kiln.arange(20.0).reshape(10, 2), kiln.arange(10)
    for shuffle in (False, True):
        gpu = list(kiln.data.DataLoader(kiln.data.TensorDataset(x.cuda(), y.cuda()), batch_size=4, shuffle=shuffle,
                                        seed=3))
        cpu = list(kiln.data.DataLoader(kiln.data.TensorDataset(x, y), batch_size=4, shuffle=shuffle, seed=3))
        assert len(gpu) == len(cpu) == 3
        for (gx, gy), (cx, cy) in zip(gpu, cpu):
            check_gpu(gx, cx)
            check_gpu(gy, cy)


@needs_gpu
def test_dataloader_pin_memory_pins_cpu_batches():
    x, y = kiln.arange(20.0).reshape(10, 2), kiln.arange(10)
    for data, collate in ((kiln.data.TensorDataset(x, y), None),
                          (list(range(10)), lambda idx: {"x": x[kiln.tensor(idx)], "i": idx})):
        pinned = list(kiln.data.DataLoader(data, batch_size=4, pin_memory=True, collate_fn=collate))
        plain = list(kiln.data.DataLoader(data, batch_size=4, collate_fn=collate))
        for p, q in zip(pinned, plain):
            a, b = (p, q) if collate is None else ((p["x"],), (q["x"],))
            for t, u in zip(a, b):
                assert t.is_pinned() and not u.is_pinned() and np.array_equal(t.numpy(), u.numpy())
                assert np.array_equal(t.to("cuda", non_blocking=True).cpu().numpy(), u.numpy())


# ---- kiln.cuda ----

@needs_gpu
def test_cuda_memory_stats_follow_allocations():
    stats = kiln.cuda.memory_stats()
    assert set(stats) == {"allocated_bytes", "peak_allocated_bytes", "reserved_bytes", "peak_reserved_bytes",
                          "num_allocs", "num_cache_hits", "num_segments", "num_oom_retries"}
    assert kiln.cuda.memory_stats(0) == kiln.cuda.memory_stats("cuda:0") == kiln.cuda.memory_stats("cuda")
    kiln.cuda.synchronize()
    gc.collect()
    before, allocs = kiln.cuda.memory_allocated(), stats["num_allocs"]
    x = kiln.empty(1 << 20, device="cuda")  # 4 MiB
    during = kiln.cuda.memory_allocated()
    assert during - before >= 4 << 20
    assert kiln.cuda.max_memory_allocated() >= during
    assert kiln.cuda.memory_reserved() >= during
    assert kiln.cuda.memory_stats()["num_allocs"] > allocs
    del x
    gc.collect()
    assert kiln.cuda.memory_allocated() == before  # back to the cache, not to the driver
    assert kiln.cuda.memory_reserved() >= 4 << 20
    reserved = kiln.cuda.memory_reserved()
    kiln.cuda.empty_cache()
    assert kiln.cuda.memory_allocated() == before and kiln.cuda.memory_reserved() < reserved
    assert kiln.cuda.max_memory_allocated() >= during  # the peak stays
    assert kiln.cuda.max_memory_reserved() >= reserved
    kiln.cuda.reset_peak_memory_stats()
    assert kiln.cuda.max_memory_allocated() == kiln.cuda.memory_allocated() < during
    assert kiln.cuda.max_memory_reserved() == kiln.cuda.memory_reserved()
    y = kiln.empty(1 << 18, device="cuda")
    assert kiln.cuda.max_memory_allocated() >= before + (1 << 20)
    del y
    free, total = kiln.cuda.mem_get_info()
    assert 0 < free <= total == kiln.cuda.get_device_properties(0)["total_memory"]
    assert kiln.cuda.mem_get_info(0)[1] == total


@needs_gpu
def test_cuda_device_queries_and_synchronize():
    name = kiln.cuda.get_device_name()
    assert name and name == kiln.cuda.get_device_name(0) == kiln.cuda.get_device_name("cuda:0")
    assert kiln.cuda.get_device_properties("cuda")["name"] == name
    kiln.cuda.synchronize()
    kiln.cuda.synchronize(0)
    kiln.cuda.synchronize("cuda:0")
    with pytest.raises(ValueError, match="expected a CUDA device"):
        kiln.cuda.synchronize("cpu")
    assert kiln.cuda.current_device() == 0
    assert kiln.ones(2, device="cuda").get_device() == 0 and kiln.ones(2).get_device() == -1
    # one generator for every device: the GPU seeds are the cpu's
    kiln.cuda.manual_seed(5)
    a = kiln.randn(4, device="cuda")
    kiln.cuda.manual_seed_all(5)
    b = kiln.randn(4, device="cuda")
    kiln.manual_seed(5)
    assert np.array_equal(a.cpu().numpy(), b.cpu().numpy()) and np.array_equal(a.cpu().numpy(), kiln.randn(4).numpy())


@needs_gpu
def test_cuda_streams_and_events():
    x = randn(64, 64)
    xg = x.cuda()  # queued on the default stream: a new stream waits for it
    side = kiln.cuda.Stream()
    assert side.device == "cuda:0"
    start, end = kiln.cuda.Event(), kiln.cuda.Event(enable_timing=True)
    start.record(side)
    with kiln.cuda.stream(side) as s:
        assert s is side
        y = xg @ xg
        z = (y.softmax(dim=-1) * 2).sum(dim=0)
    end.record(side)
    end.synchronize()
    side.synchronize()
    assert start.elapsed_time(end) >= 0
    check_gpu(y, x @ x, rtol=1e-4, atol=1e-4)
    check_gpu(z, ((x @ x).softmax(dim=-1) * 2).sum(dim=0), rtol=1e-4, atol=1e-5)
    # the default (current) stream again outside the block
    a, b = kiln.cuda.Event(), kiln.cuda.Event()
    a.record()
    w = xg + 1
    b.record()
    kiln.cuda.synchronize()
    assert a.elapsed_time(b) >= 0
    check_gpu(w, x + 1)
    with pytest.raises(RuntimeError):  # never recorded: CUDA_ERROR_INVALID_HANDLE, as in CUDA
        kiln.cuda.Event().elapsed_time(kiln.cuda.Event())
    # ordering between streams without the host waiting: wait_stream / wait_event / Event.wait
    other = kiln.cuda.Stream()
    with kiln.cuda.stream(side):
        u = xg * 3
    other.wait_stream(side)
    done = kiln.cuda.Event()
    with kiln.cuda.stream(other):
        v = u + 1
        done.record()
    done.wait()  # the current (default) stream waits for `other`
    side.wait_event(done)
    done.wait(side)
    check_gpu(v, x * 3 + 1)
    kiln.cuda.synchronize()
    assert side.query() and other.query() and done.query() and kiln.cuda.Event().query()


@needs_gpu
def test_pinned_memory():
    x = randn(4, 5)
    p = x.pin_memory()
    assert p.is_pinned() and not x.is_pinned() and p.device == "cpu"
    np.testing.assert_array_equal(p.numpy(), x.numpy())
    g = p.to("cuda", non_blocking=True)
    check_gpu(g, x)
    back = g.to("cpu", non_blocking=True)
    assert not back.is_pinned()
    np.testing.assert_array_equal(back.numpy(), x.numpy())
    assert not g.is_pinned()
    with pytest.raises(RuntimeError, match="only cpu tensors can be pinned"):
        g.pin_memory()


def names_both_devices(message):
    """Whether an error names cuda:0 and cpu as the tensors' devices (advice such as "move it to
    the cpu with .cpu()" does not count)."""
    return "cuda:0" in message and re.search(r"(?<!the )(?<!\.)\bcpu\b", message) is not None


def _mixes():
    g = kiln.ones(2, 3, device="cuda")
    c = kiln.ones(2, 3)
    gi, ci = kiln.tensor([[0, 1, 2], [2, 1, 0]], device="cuda"), kiln.tensor([[0, 1, 2], [2, 1, 0]])
    return g, c, gi, ci


MIXES = {
    "add": lambda g, c, gi, ci: g + c,
    "add_ gpu": lambda g, c, gi, ci: g.add_(c),
    "add_ cpu": lambda g, c, gi, ci: c.add_(g),
    "eq": lambda g, c, gi, ci: g == c,
    "maximum": lambda g, c, gi, ci: kiln.maximum(g, c),
    "where": lambda g, c, gi, ci: kiln.where(c > 0, g, c),
    "matmul": lambda g, c, gi, ci: c @ g.T,
    "cat": lambda g, c, gi, ci: kiln.cat([g, c]),
    "stack": lambda g, c, gi, ci: kiln.stack([g, c]),
    "index_select": lambda g, c, gi, ci: g.index_select(0, ci[0, :2]),
    "gather gpu": lambda g, c, gi, ci: g.gather(1, ci),
    "scatter_add": lambda g, c, gi, ci: g.scatter_add(1, gi, c),
    "masked_fill gpu": lambda g, c, gi, ci: g.masked_fill(c > 0, 1.0),
    "linear weight": lambda g, c, gi, ci: F.linear(g, kiln.ones(4, 3)),
    "linear bias": lambda g, c, gi, ci: F.linear(g, kiln.ones(4, 3, device="cuda"), kiln.ones(4)),
    "a cpu model": lambda g, c, gi, ci: nn.Linear(3, 4)(g),
    "conv2d": lambda g, c, gi, ci: F.conv2d(g[None, None], kiln.ones(1, 1, 2, 2)),
    "layer_norm": lambda g, c, gi, ci: F.layer_norm(g, (3,), kiln.ones(3)),
    "batch_norm": lambda g, c, gi, ci: F.batch_norm(g, kiln.zeros(3), kiln.ones(3), training=True),
    "cross_entropy": lambda g, c, gi, ci: F.cross_entropy(g, ci[:, 0]),
    "nll_loss": lambda g, c, gi, ci: F.nll_loss(g, ci[:, 0]),
    "mse_loss": lambda g, c, gi, ci: F.mse_loss(g, c),
    "embedding": lambda g, c, gi, ci: F.embedding(ci, g),
    "attention": lambda g, c, gi, ci: F.scaled_dot_product_attention(g[None], c[None], c[None]),
    "attention mask": lambda g, c, gi, ci: F.scaled_dot_product_attention(g[None], g[None], g[None],
                                                                           attn_mask=kiln.ones(2, 2) > 0),
}


@needs_gpu
@pytest.mark.parametrize("op", list(MIXES))
def test_mixing_devices_raises_naming_both(op):
    with pytest.raises(RuntimeError) as e:
        MIXES[op](*_mixes())
    assert names_both_devices(str(e.value)), str(e.value)


@needs_gpu
@pytest.mark.parametrize("op", ["gather", "masked_fill"])
def test_mixing_devices_a_cpu_tensor_with_a_gpu_index_names_both(op):
    g, c, gi, ci = _mixes()
    with pytest.raises(RuntimeError) as e:
        c.gather(1, gi) if op == "gather" else c.masked_fill(g > 0, 1.0)
    assert names_both_devices(str(e.value)), str(e.value)


@needs_gpu
def test_jit_refuses_gpu_tensors_with_a_trace_error():
    double = kiln.jit(lambda t: t * 2)
    with pytest.raises(kiln.TraceError, match="cpu only"):
        double(kiln.ones(3, device="cuda"))
    with pytest.raises(kiln.TraceError, match="cpu only"):
        kiln.jit(nn.Linear(3, 2).cuda())(kiln.ones(2, 3, device="cuda"))
    assert double(kiln.ones(3)).tolist() == [2.0, 2.0, 2.0]  # the cpu still compiles
