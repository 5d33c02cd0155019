"""Gradient utilities; kiln.nn.utils re-exports them under PyTorch's names."""
from . import _C
from ._C import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _params(parameters):
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scales the gradients in place so that their joint norm is at most max_norm.

    The joint norm is the norm_type-norm of the per-parameter gradient norms
    (``float('inf')``: the largest absolute value); parameters without a
    gradient are skipped. Returns the norm before clipping (a 0-d tensor).
    """
    return _C._clip_grad_norm(_params(parameters), float(max_norm), float(norm_type), error_if_nonfinite)


def clip_grad_value_(parameters, clip_value):
    """Clamps every gradient to [-clip_value, clip_value], in place."""
    clip_value = float(clip_value)
    for p in _params(parameters):
        if p.grad is not None:
            p.grad.clamp_(-clip_value, clip_value)
