"""kiln.nn.init: torch.nn.init's in-place initializers (kiln::nn::init in C++).

Each fills the tensor without recording autograd history, draws from kiln's
counter-based generator (kiln.manual_seed makes it repeatable) and returns
the tensor it was given.
"""
from .. import _C

_init = _C._nn_init

__all__ = ["calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
           "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (torch.nn.init.calculate_gain)."""
    return _init.calculate_gain(nonlinearity, None if param is None else float(param))


def _calculate_fan_in_and_fan_out(tensor):
    return _init._calculate_fan_in_and_fan_out(tensor)


def uniform_(tensor, a=0.0, b=1.0):
    _init.uniform_(tensor, float(a), float(b))
    return tensor


def normal_(tensor, mean=0.0, std=1.0):
    _init.normal_(tensor, float(mean), float(std))
    return tensor


def constant_(tensor, val):
    _init.constant_(tensor, float(val))
    return tensor


def zeros_(tensor):
    _init.zeros_(tensor)
    return tensor


def ones_(tensor):
    _init.ones_(tensor)
    return tensor


def xavier_uniform_(tensor, gain=1.0):
    _init.xavier_uniform_(tensor, float(gain))
    return tensor


def xavier_normal_(tensor, gain=1.0):
    _init.xavier_normal_(tensor, float(gain))
    return tensor


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    _init.kaiming_uniform_(tensor, float(a), mode, nonlinearity)
    return tensor


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    _init.kaiming_normal_(tensor, float(a), mode, nonlinearity)
    return tensor
