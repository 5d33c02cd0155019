"""kiln.cuda: the CUDA driver as kiln sees it. Without a GPU or driver (the
development and CI machines) kiln must say why and refuse device="cuda"
with that reason; where there is a GPU, it must see it."""
import os
import subprocess
import sys

import pytest

import kiln

PYTHON = os.path.join(os.path.dirname(__file__), "..", "..", "python")
HAS_GPU = kiln.cuda.is_available()


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


@pytest.mark.skipif(not HAS_GPU, reason=f"no CUDA GPU: {kiln.cuda.unavailable_reason()}")
def test_with_a_gpu_the_driver_sees_it():
    assert kiln.cuda.device_count() >= 1 and kiln.cuda.driver_version() >= 12000
    p = kiln.cuda.get_device_properties(0)
    assert p["name"] and p["total_memory"] > 1 << 30 and p["major"] >= 5
    kiln.cuda.synchronize()
    with pytest.raises(RuntimeError, match="no CUDA device"):
        kiln.ones(3, device=f"cuda:{kiln.cuda.device_count()}")


@pytest.mark.skipif(not HAS_GPU, reason=f"no CUDA GPU: {kiln.cuda.unavailable_reason()}")
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


@pytest.mark.skipif(not HAS_GPU, reason=f"no CUDA GPU: {kiln.cuda.unavailable_reason()}")
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
