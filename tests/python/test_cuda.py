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


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: the refusals are not what runs here")
def test_without_a_gpu_cuda_is_refused_with_the_reason():
    reason = kiln.cuda.unavailable_reason()
    assert reason and kiln.cuda.device_count() == 0
    for make in (lambda: kiln.ones(3, device="cuda"), lambda: kiln.zeros(2, 2, device="cuda:1"),
                 lambda: kiln.cuda.synchronize(), lambda: kiln.cuda.get_device_name()):
        with pytest.raises(RuntimeError, match="CUDA is not available") as e:
            make()
        assert reason in str(e.value)


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
    with pytest.raises(RuntimeError, match="cannot hold tensors on cuda:0 yet"):
        kiln.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        kiln.ones(3, device=f"cuda:{kiln.cuda.device_count()}")
