"""NVIDIA GPUs, as the CUDA driver sees them.

The driver is loaded when first asked (``libcuda.so.1``); kiln itself needs
neither a GPU nor a driver. Where there is none, ``is_available()`` is False
and ``unavailable_reason()`` says why; asking for ``device="cuda"`` then
raises a ``RuntimeError`` with that reason. Tensors on CUDA are not built
yet: with a GPU present, creating one raises an error saying so.
"""
from . import _C

__all__ = ["is_available", "unavailable_reason", "device_count", "driver_version", "get_device_name",
           "get_device_properties", "synchronize"]


def is_available():
    """True when the CUDA driver loaded and sees at least one GPU."""
    return _C._cuda_is_available()


def unavailable_reason():
    """Why ``is_available()`` is False (a sentence), or ``""``."""
    return _C._cuda_unavailable_reason()


def device_count():
    """The number of GPUs the driver sees (0 without a driver)."""
    return _C._cuda_device_count()


def driver_version():
    """The driver's CUDA version as an int (13000 for 13.0), 0 without a driver."""
    return _C._cuda_driver_version()


def _index(device):
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    name = str(device)
    if name == "cuda":
        return 0
    if name.startswith("cuda:") and name[5:].isdigit():
        return int(name[5:])
    raise ValueError(f"expected a CUDA device (an int, 'cuda' or 'cuda:N'), got {device!r}")


def get_device_properties(device=None):
    """``name``, ``total_memory`` (bytes), ``major``/``minor`` (compute
    capability) and ``multi_processor_count`` of a GPU, as a dict."""
    return _C._cuda_device_properties(_index(device))


def get_device_name(device=None):
    """The GPU's name, e.g. ``'NVIDIA H200'``."""
    return get_device_properties(device)["name"]


def synchronize(device=None):
    """Waits until all work queued on the GPU has finished."""
    _C._cuda_synchronize(_index(device))
