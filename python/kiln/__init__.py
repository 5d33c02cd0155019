"""kiln: a deep-learning engine with eager tensors and (soon) compiled functions.

The tensor type, the ops and the errors come from the C++ core (kiln._C);
this module adds the PyTorch-style Python surface: sizes given as varargs,
``tensor()`` from nested lists, dtype objects and ``device=`` arguments.
"""
import builtins as _builtins
import functools as _functools
import os as _os


def _openblas_coretype():
    """OpenBLAS (Debian's 0.3.21) does not recognize recent CPUs such as Sapphire Rapids and
    falls back to its generic 'Prescott' kernels, at a third of the GEMM speed. Name the
    kernels the CPU can run, unless the user did; it takes effect only if OpenBLAS is not
    loaded yet (import kiln before numpy, or export OPENBLAS_CORETYPE)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    if "avx512f" in flags and "avx512bw" in flags:
        return "SkylakeX"
    if "avx2" in flags and "fma" in flags:
        return "Haswell"
    return None


if "OPENBLAS_CORETYPE" not in _os.environ and _openblas_coretype():
    _os.environ["OPENBLAS_CORETYPE"] = _openblas_coretype()

import numpy as _np

from . import _C
from ._C import (  # noqa: F401  (re-exported API)
    Tensor, dtype, ShapeError, DTypeError, DeviceError, KilnError,
    manual_seed, from_numpy, promote_types, result_type,
    get_num_threads, set_num_threads,
    where, matmul, softmax, log_softmax, layer_norm, cat, stack, one_hot,
    broadcast_tensors, broadcast_to, gelu, logical_not, bitwise_not,
)

__version__ = "0.1.0"

bool = dtype.bool  # noqa: A001  (PyTorch's names shadow the builtins on purpose)
uint8 = dtype.uint8
int8 = dtype.int8
int32 = dtype.int32
int64 = dtype.int64
float16 = dtype.float16
bfloat16 = dtype.bfloat16
float32 = dtype.float32
float64 = dtype.float64
half, float, double, int, long = float16, float32, float64, int32, int64  # noqa: A001

_builtin_int = _builtins.int

# Elementwise and reduction functions: kiln.exp(x), kiln.add(a, b), kiln.sum(x, dim=1)...
for _name in dir(_C):
    if not _name.startswith("_") and _name not in globals():
        globals()[_name] = getattr(_C, _name)


def _method_function(name):
    def fn(input, *args, **kwargs):
        return getattr(input, name)(*args, **kwargs)
    fn.__name__ = name
    fn.__doc__ = f"kiln.{name}(input, ...) is input.{name}(...)."
    return fn


for _name in ("sum", "mean", "prod", "amax", "amin", "max", "min", "argmax", "argmin", "var",
              "std", "logsumexp", "any", "all", "reshape", "permute", "transpose", "squeeze",
              "unsqueeze", "flatten", "clamp", "index_select", "gather", "scatter_add",
              "masked_fill", "nonzero", "split", "chunk", "narrow", "select", "clone",
              "numel", "t"):
    globals()[_name] = _method_function(_name)
clip = clamp  # noqa: F821
concat = concatenate = cat
true_divide = divide = div  # noqa: F821
multiply, subtract, greater, less = mul, sub, gt, lt  # noqa: F821


# ---- creation ----

def _creation(fn):
    """Adds PyTorch's ``requires_grad=`` keyword to a creation function."""
    @_functools.wraps(fn)
    def wrapper(*args, requires_grad=False, **kwargs):
        out = fn(*args, **kwargs)
        return out.requires_grad_() if requires_grad else out
    return wrapper


def _size(size):
    if len(size) == 1 and not isinstance(size[0], (_builtin_int, _np.integer)):
        size = tuple(size[0])
    if None in size:
        raise TraceError(f"size {tuple(size)} has a dynamic dim (None) of a traced tensor: use the *_like "
                         "functions (zeros_like, full_like, rand_like, randn_like), which follow a tensor's shape on "
                         "every call, or -1 in reshape")
    return [_builtin_int(s) for s in size]


def _device(device, op):
    """The canonical name of a ``device=`` argument ("cpu", "cuda:0"), or None for the default (the cpu)."""
    return _C._check_device(device, op)


def _on(x, device):
    """x moved to ``device`` (a name from _device) unless it is the default."""
    return x if device is None else x.to(device)


@_creation
def zeros(*size, dtype=None, device=None):
    return _C._full(_size(size), 0, dtype or float32, _device(device, "zeros"))


@_creation
def ones(*size, dtype=None, device=None):
    return _C._full(_size(size), 1, dtype or float32, _device(device, "ones"))


@_creation
def empty(*size, dtype=None, device=None):
    return _C._empty(_size(size), dtype, _device(device, "empty"))


@_creation
def full(size, fill_value, dtype=None, device=None):
    return _C._full(_size((size,)), fill_value, dtype, _device(device, "full"))


@_creation
def zeros_like(x, dtype=None, device=None):
    return _full_like(x, 0, dtype, device, "zeros_like")


@_creation
def ones_like(x, dtype=None, device=None):
    return _full_like(x, 1, dtype, device, "ones_like")


@_creation
def empty_like(x, dtype=None, device=None):
    if _C._is_tracing():  # traced values have no memory to leave uninitialized
        return zeros_like(x, dtype=dtype, device=device)
    return empty(x.shape, dtype=dtype or x.dtype, device=device or x.device)


@_creation
def full_like(x, fill_value, dtype=None, device=None):
    return _full_like(x, fill_value, dtype, device, "full_like")


def _full_like(x, fill_value, dtype, device, op):
    device = _device(device, op)
    if device is None or device == x.device:  # (traced with x, whose shape may be dynamic)
        return _C._full_like(x, fill_value, dtype)
    return _C._full(list(x.shape), fill_value, dtype or x.dtype, device)


@_creation
def arange(start, end=None, step=1, dtype=None, device=None):
    device = _device(device, "arange")
    if end is None:
        start, end = 0, start
    return _on(_C._arange(start, end, step, dtype), device)


@_creation
def linspace(start, end, steps, dtype=None, device=None):
    return _on(_C._linspace(start, end, steps, dtype), _device(device, "linspace"))


@_creation
def eye(n, m=None, dtype=None, device=None):
    return _on(_C._eye(n, m, dtype), _device(device, "eye"))


@_creation
def rand(*size, dtype=None, device=None):
    return _C._rand(_size(size), dtype, _device(device, "rand"))


@_creation
def randn(*size, dtype=None, device=None):
    return _C._randn(_size(size), dtype, _device(device, "randn"))


def randint(low, high=None, size=None, dtype=None, device=None):
    device = _device(device, "randint")
    if high is None:
        low, high = 0, low
    if size is None:
        raise TypeError("randint() missing required argument 'size'")
    return _C._randint(low, high, _size((size,)), dtype, device)


@_creation
def normal(mean, std, size, dtype=None, device=None):
    return _C._normal(mean, std, _size((size,)), dtype, _device(device, "normal"))


@_creation
def rand_like(x, dtype=None, device=None):
    device = _device(device, "rand_like")
    if device is None or device == x.device:  # (traced with x, whose shape may be dynamic)
        return _C._rand_like(x, dtype)
    return _C._rand(list(x.shape), dtype or x.dtype, device)


@_creation
def randn_like(x, dtype=None, device=None):
    device = _device(device, "randn_like")
    if device is None or device == x.device:
        return _C._randn_like(x, dtype)
    return _C._randn(list(x.shape), dtype or x.dtype, device)


_NUMPY_OF = {bool: _np.bool_, uint8: _np.uint8, int8: _np.int8, int32: _np.int32,
             int64: _np.int64, float16: _np.float16, float32: _np.float32, float64: _np.float64}


@_creation
def tensor(data, dtype=None, device=None):
    """A new tensor holding a copy of ``data`` (nested lists, a number, an array or a tensor).

    Like torch.tensor: Python floats become float32, ints int64, bools bool;
    NumPy arrays keep their dtype.
    """
    return _on(_host_tensor(data, dtype), _device(device, "tensor"))


def _host_tensor(data, dtype):
    dtype = _C._to_dtype(dtype)
    if isinstance(data, Tensor):
        out = data.detach().clone()
        return out if dtype is None else out.to(dtype)
    if isinstance(data, _np.ndarray):
        array = data
    else:
        try:
            array = _np.array(data)
        except ValueError as e:
            raise ShapeError(f"tensor(): the nested sequence is ragged or malformed: {e}") from None
        if array.dtype == _np.float64 and dtype is None:
            # Python floats default to float32 (torch.tensor's rule); with an
            # explicit dtype, convert from the exact float64 values instead.
            array = array.astype(_np.float32)
        elif array.dtype.kind == "O" or array.dtype.kind in "US":
            raise DTypeError(f"tensor(): could not infer a dtype from {type(data).__name__} data; "
                             "pass numbers, nested lists of numbers or arrays")
    # dtype objects are pybind11 enum values: compare with ==, not `is`.
    if dtype == bfloat16:
        # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
        return from_numpy(_np.array(array, dtype=_np.float32, copy=True, order="C")).to(bfloat16)
    if dtype is not None:
        with _np.errstate(over="ignore"):  # out-of-range floats become inf, silently as in torch
            array = array.astype(_NUMPY_OF[dtype])
    return from_numpy(_np.array(array, copy=True, order="C"))


as_tensor = tensor


def is_tensor(x):
    return isinstance(x, Tensor)


# ---- Tensor methods written in Python ----

def _to(self, *args, dtype=None, device=None, copy=False, non_blocking=False):
    # non_blocking is accepted for PyTorch code; kiln's copies between devices complete before returning.
    for a in args:
        if isinstance(a, str) and (a == "cpu" or a.startswith("cuda")):
            device = a
        elif isinstance(a, _builtin_int) and not isinstance(a, _builtins.bool):  # x.to(0): a GPU's index
            device = f"cuda:{a}"
        elif isinstance(a, Tensor):  # x.to(other): other's dtype and device, as in PyTorch
            dtype, device = a.dtype, a.device
        else:
            dtype = a
    return self._to(dtype, device, copy)


def _iter(self):
    if self.dim() == 0:
        raise TypeError("iteration over a 0-d tensor")
    for i in range(self.shape[0]):
        yield self[i]


def _tolist(self):
    x = self.cpu()  # as in PyTorch, tolist() (like item()) copies a GPU tensor back; numpy() refuses
    return x.numpy().tolist() if x.dtype != bfloat16 else x.to(float32).numpy().tolist()


Tensor.to = _to
Tensor.__iter__ = _iter
Tensor.tolist = _tolist
Tensor.float = lambda self: self.to(float32)
Tensor.double = lambda self: self.to(float64)
Tensor.half = lambda self: self.to(float16)
Tensor.bfloat16 = lambda self: self.to(bfloat16)
Tensor.get_device = lambda self: -1 if self.device == "cpu" else _builtin_int(self.device.split(":")[1])  # as in PyTorch
Tensor.int = lambda self: self.to(int32)
Tensor.long = lambda self: self.to(int64)
Tensor.bool = lambda self: self.to(bool)
Tensor.type_as = lambda self, other: self.to(other)  # PyTorch's type includes the device (torch.cuda.FloatTensor)
Tensor.view_as = lambda self, other: self.view(other.shape)
Tensor.reshape_as = lambda self, other: self.reshape(other.shape)
Tensor.expand_as = lambda self, other: self.expand(other.shape)
Tensor.clip = Tensor.clamp
Tensor.clip_ = Tensor.clamp_
Tensor.__str__ = Tensor.__repr__
Tensor.__array_priority__ = 1000  # NumPy defers to kiln's reflected operators
Tensor.where = lambda self, condition, other: where(condition, self, other)
# new_*: self's dtype and device unless given, as in PyTorch
Tensor.new_zeros = lambda self, *size, dtype=None, device=None: zeros(
    *size, dtype=dtype or self.dtype, device=device or self.device)
Tensor.new_ones = lambda self, *size, dtype=None, device=None: ones(
    *size, dtype=dtype or self.dtype, device=device or self.device)
Tensor.new_full = lambda self, size, v, dtype=None, device=None: full(
    size, v, dtype=dtype or self.dtype, device=device or self.device)
Tensor.new_tensor = lambda self, data, dtype=None, device=None: tensor(
    data, dtype=dtype or self.dtype, device=device or self.device)


def _deepcopy(self, memo):
    """A copy with its own storage; a leaf that requires grad stays one (as in torch)."""
    if id(self) in memo:
        return memo[id(self)]
    out = self.detach().clone().requires_grad_(self.requires_grad) if self.is_leaf else self.clone()
    memo[id(self)] = out
    return out


Tensor.__deepcopy__ = _deepcopy
Tensor.__copy__ = lambda self: self.detach().requires_grad_(self.requires_grad) if self.is_leaf else self


dtype.__repr__ = lambda self: self._repr
dtype.__str__ = dtype.__repr__

from . import autograd  # noqa: E402
from .autograd import no_grad, enable_grad, set_grad_enabled, is_grad_enabled, value_and_grad  # noqa: E402,F401
from .autograd import grad_of as grad  # noqa: E402,F401  (JAX's kiln.grad(f); torch's is kiln.autograd.grad)
from . import nn, optim, data  # noqa: E402,F401
from .jit import jit, config, cond, while_loop, print, ir_parse  # noqa: E402,F401,A001
from . import cache  # noqa: E402,F401  (kiln.cache.clear(), .dir(), .stats())
from . import cuda  # noqa: E402,F401  (kiln.cuda.is_available(), .device_count())
TraceError = _C.TraceError
IrError = _C.IrError
CheckError = _C.CheckError
