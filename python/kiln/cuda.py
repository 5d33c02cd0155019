"""NVIDIA GPUs, as the CUDA driver sees them.

The driver is loaded when first asked (``libcuda.so.1``); kiln itself needs
neither a GPU nor a driver. Where there is none, ``is_available()`` is False
and ``unavailable_reason()`` says why; asking for ``device="cuda"`` then
raises a ``RuntimeError`` with that reason.

With a GPU, ``device="cuda"`` on creation functions, ``x.to("cuda")``,
``x.cuda()`` and ``x.cpu()`` move tensors; elementwise ops, reductions,
softmax, layer_norm and matmul (cuBLAS) run there, and any other op raises
a ``RuntimeError`` naming it. ``kiln.cuda.matmul.allow_tf32`` lets float32
matmuls use TF32 tensor cores.
"""
import contextlib

from . import _C

__all__ = ["is_available", "unavailable_reason", "device_count", "driver_version", "current_device",
           "get_device_name", "get_device_properties", "synchronize", "manual_seed", "manual_seed_all",
           "memory_stats", "memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved",
           "reset_peak_memory_stats", "empty_cache", "mem_get_info", "matmul", "Stream", "stream", "Event"]


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


def current_device():
    """The GPU that ``"cuda"`` means: 0 (kiln has no ``set_device``; name
    others ``"cuda:1"``)."""
    return 0


def manual_seed(seed):
    """Seeds random numbers on every device: kiln has one generator (the same
    Philox stream on the cpu and GPUs), so this is ``kiln.manual_seed``."""
    from . import manual_seed as seed_all
    seed_all(seed)


manual_seed_all = manual_seed


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


def memory_stats(device=None):
    """The caching allocator's counters for a GPU, as a dict: bytes in
    tensors (``allocated_bytes``, ``peak_allocated_bytes``), bytes taken from
    the driver (``reserved_bytes``, ``peak_reserved_bytes``), ``num_allocs``,
    ``num_cache_hits`` (served without asking the driver), ``num_segments``
    and ``num_oom_retries``."""
    return _C._cuda_memory_stats(_index(device))


def memory_allocated(device=None):
    """Bytes held by live tensors on the GPU."""
    return memory_stats(device)["allocated_bytes"]


def memory_reserved(device=None):
    """Bytes the caching allocator holds from the driver (in use or cached)."""
    return memory_stats(device)["reserved_bytes"]


def max_memory_allocated(device=None):
    """The peak of ``memory_allocated``."""
    return memory_stats(device)["peak_allocated_bytes"]


def max_memory_reserved(device=None):
    """The peak of ``memory_reserved``."""
    return memory_stats(device)["peak_reserved_bytes"]


def reset_peak_memory_stats(device=None):
    """Starts the peaks (``max_memory_allocated``, ``max_memory_reserved``)
    again from the current values."""
    _C._cuda_reset_peak_memory_stats(_index(device))


def empty_cache(device=None):
    """Returns the allocator's unused cached memory to the driver."""
    _C._cuda_empty_cache(_index(device))


def mem_get_info(device=None):
    """(free, total) bytes of GPU memory, as the driver sees them."""
    return _C._cuda_mem_get_info(_index(device))


class _Matmul:
    @property
    def allow_tf32(self):
        """Whether float32 matmuls on the GPU may use TF32 tensor cores (10-bit mantissa inputs), as
        ``torch.backends.cuda.matmul.allow_tf32``; False by default."""
        return _C._cuda_allow_tf32()

    @allow_tf32.setter
    def allow_tf32(self, value):
        _C._cuda_set_allow_tf32(bool(value))


matmul = _Matmul()


class Stream:
    """A queue of GPU work of its own (it waits for the default stream, as
    PyTorch's streams do). Work goes to it inside ``with kiln.cuda.stream(s):``."""

    def __init__(self, device=None):
        self._stream = _C._CudaStream(_index(device))

    @property
    def device(self):
        return f"cuda:{self._stream.device}"

    def synchronize(self):
        """Waits for the work queued on this stream."""
        self._stream.synchronize()

    def query(self):
        """True when the work queued on this stream has finished."""
        return self._stream.query()

    def wait_event(self, event):
        """Work queued on this stream from now on waits for ``event`` (on the
        GPU: the host does not wait)."""
        self._stream.wait_event(event._event)

    def wait_stream(self, other):
        """Work queued on this stream from now on waits for the work queued on
        ``other`` so far."""
        event = Event(device=other.device)
        event.record(other)
        self.wait_event(event)


@contextlib.contextmanager
def stream(s):
    """Queues the GPU work of the block on stream ``s`` (this thread only)."""
    guard = _C._CudaStreamGuard(s._stream)
    try:
        yield s
    finally:
        del guard


class Event:
    """A point in a stream's work, for timing GPU code:
    ``start.record(); ...; end.record(); end.synchronize(); start.elapsed_time(end)``."""

    def __init__(self, enable_timing=True, device=None):
        self._event = _C._CudaEvent(_index(device))

    def record(self, stream=None):
        """Records the event on ``stream`` (default: the current stream)."""
        if stream is None:
            self._event.record()
        else:
            with globals()["stream"](stream):
                self._event.record()

    def synchronize(self):
        """Waits (the host) for the work before the event."""
        self._event.synchronize()

    def query(self):
        """True when the work before the event has finished."""
        return self._event.query()

    def wait(self, stream=None):
        """Work queued on ``stream`` (default: the current stream) from now on
        waits for the event."""
        if stream is None:
            self._event.wait()
        else:
            stream.wait_event(self)

    def elapsed_time(self, end):
        """Milliseconds between this event and ``end`` (both recorded and finished)."""
        return self._event.elapsed_ms(end._event)
