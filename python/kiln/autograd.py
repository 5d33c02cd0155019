"""kiln.autograd: grad mode and gradients, with PyTorch's names.

Gradients are recorded while grad mode is on (the default) for every op
whose inputs require grad; ``loss.backward()`` accumulates into ``.grad``.
"""
import functools as _functools
import threading as _threading

from . import _C
from ._C import is_grad_enabled  # noqa: F401


class set_grad_enabled:
    """Sets grad mode: as a function call, for good; as a context manager or
    decorator, for the block (restoring the previous mode on exit)."""

    def __init__(self, mode):
        self._previous = _C._set_grad_enabled(bool(mode))
        self._mode = bool(mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _C._set_grad_enabled(self._previous)
        return False


class _GradMode:
    _mode = True

    def __enter__(self):
        self._previous = _C._set_grad_enabled(self._mode)
        return self

    def __exit__(self, *exc):
        _C._set_grad_enabled(self._previous)
        return False

    def __call__(self, fn):
        @_functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)
        return wrapper


class no_grad(_GradMode):
    """Context manager and decorator: no op records gradients inside."""
    _mode = False


class enable_grad(_GradMode):
    """Context manager and decorator: grad mode on inside (e.g. within no_grad)."""
    _mode = True


def _as_tuple(x):
    if isinstance(x, (tuple, list)):
        return tuple(x)
    return (x,)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """The gradients of ``outputs`` with respect to ``inputs``, as a tuple, without touching ``.grad``."""
    if create_graph:
        raise ValueError("grad: create_graph=True (higher-order gradients) is not supported; "
                         "kiln computes first-order gradients only")
    outputs, inputs = _as_tuple(outputs), _as_tuple(inputs)
    grad_outputs = list(_as_tuple(grad_outputs)) if grad_outputs is not None else [None] * len(outputs)
    return _C._autograd_grad(list(outputs), list(inputs), grad_outputs, bool(retain_graph), allow_unused)


def backward(tensors, grad_tensors=None, retain_graph=None):
    """Like calling ``t.backward(g)`` for each output, in one pass."""
    tensors = _as_tuple(tensors)
    grads = _as_tuple(grad_tensors) if grad_tensors is not None else (None,) * len(tensors)
    for i, (t, g) in enumerate(zip(tensors, grads)):
        t.backward(g, retain_graph=retain_graph or i + 1 < len(tensors))


_transforms = _threading.local()


def _value_and_grad(fn, argnums, has_aux):
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    @_functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_transforms, "depth", 0):
            # The inner transform would see detached copies and return gradients without history,
            # so the outer one would silently get zeros.
            raise ValueError("kiln.grad: nested gradient transforms (the gradient of a gradient) are not "
                             "supported; kiln computes first-order gradients only")
        _transforms.depth = 1
        try:
            return _run(args, kwargs)
        finally:
            _transforms.depth = 0

    def _run(args, kwargs):
        args = list(args)
        for i in nums:
            if i >= len(args):
                raise IndexError(f"grad: argnums contains {i} but the function got {len(args)} positional arguments")
            if not isinstance(args[i], _C.Tensor):
                raise TypeError(f"grad: argument {i} must be a kiln.Tensor to differentiate it, "
                                f"got {type(args[i]).__name__}")
            args[i] = args[i].detach().requires_grad_(True)
        with enable_grad():
            out = fn(*args, **kwargs)
        value, aux = (out if has_aux else (out, None))
        if not isinstance(value, _C.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, _C.Tensor) else type(value).__name__
            raise ValueError(f"grad: the function must return a one-element tensor"
                             f"{' (as the first element of its (value, aux) pair)' if has_aux else ''}, got {shape}")
        wrt = [args[i] for i in nums]
        if value.requires_grad:
            grads = _C._autograd_grad([value], wrt, [None], False, True)
        else:
            grads = (None,) * len(wrt)
        from . import zeros_like  # an input f does not depend on gets zeros, as in JAX
        grads = tuple(g if g is not None else zeros_like(w) for g, w in zip(grads, wrt))
        grads = grads[0] if single else grads
        value = value.detach()
        return ((value, aux), grads) if has_aux else (value, grads)

    return wrapper


def value_and_grad(fn, argnums=0, has_aux=False):
    """``value_and_grad(f)(*args)`` returns ``(f(*args), df/dargs[argnums])`` (JAX's transform)."""
    return _value_and_grad(fn, argnums, has_aux)


def grad_of(fn, argnums=0, has_aux=False):
    """``grad_of(f)(*args)`` returns the gradient of the one-element result of f with respect
    to ``args[argnums]`` (a tuple when argnums is a tuple). Exposed as ``kiln.grad``."""
    inner = _value_and_grad(fn, argnums, has_aux)

    @_functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out, grads = inner(*args, **kwargs)
        return (grads, out[1]) if has_aux else grads

    return wrapper
