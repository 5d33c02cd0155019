"""kiln.nn.functional: the neural-network ops (C++ core, kiln._C), PyTorch names.

Sizes (kernel_size, stride, padding, dilation, output_size) take an int or a
pair; losses take ``reduction=`` ("none" | "mean" | "sum") and PyTorch's
deprecated ``size_average``/``reduce`` flags. Every op is differentiable.
"""
import warnings as _warnings

from .. import _C
from .._C import Tensor as _Tensor

_F = _C.nn_functional

__all__ = [
    "linear", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "dropout", "batch_norm",
    "embedding", "mse_loss", "nll_loss", "cross_entropy", "binary_cross_entropy_with_logits",
    "scaled_dot_product_attention", "relu", "gelu", "silu", "tanh", "sigmoid", "softmax", "log_softmax",
    "layer_norm",
]


def _pair(value, name, allow_none=False):
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            value = (value[0], value[0])
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        if not allow_none and any(v is None for v in value):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return tuple(value)
    if value is None and not allow_none:
        raise ValueError(f"{name} must be an int or a pair of ints, got None")
    return (value, value)


def _reduction(size_average, reduce, reduction):
    """PyTorch's legacy size_average/reduce flags, mapped onto reduction."""
    if size_average is None and reduce is None:
        return reduction
    _warnings.warn("size_average and reduce are deprecated, use reduction= instead", stacklevel=3)
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


# ---- layers ----

def linear(input, weight, bias=None):
    """y = input @ weight.T + bias."""
    return _F.linear(input, weight, bias)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution over an (N, C, H, W) or (C, H, W) input; padding may be 'valid' or 'same'."""
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError("conv2d: padding='same' is not supported for strided convolutions")
            kh, kw = weight.shape[-2], weight.shape[-1]
            total = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
            if total[0] % 2 or total[1] % 2:
                # An odd total pads one more on the bottom/right, as PyTorch does.
                input = _pad_bottom_right(input, total[0] % 2, total[1] % 2)
            padding = (total[0] // 2, total[1] // 2)
        else:
            raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    return _F.conv2d(input, weight, bias, stride, _pair(padding, "padding"), dilation, groups)


def _pad_bottom_right(x, extra_h, extra_w):
    from .. import zeros, cat
    if extra_h:
        shape = list(x.shape)
        shape[-2] = extra_h
        x = cat([x, zeros(*shape, dtype=x.dtype, device=x.device)], dim=-2)
    if extra_w:
        shape = list(x.shape)
        shape[-1] = extra_w
        x = cat([x, zeros(*shape, dtype=x.dtype, device=x.device)], dim=-1)
    return x


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if return_indices:
        raise NotImplementedError("max_pool2d: return_indices=True is not supported yet")
    kernel_size = _pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None or stride == [] or stride == () else _pair(stride, "stride")
    return _F.max_pool2d(input, kernel_size, stride, _pair(padding, "padding"), _pair(dilation, "dilation"),
                         bool(ceil_mode))


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    if divisor_override is not None:
        raise NotImplementedError("avg_pool2d: divisor_override is not supported yet")
    kernel_size = _pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None or stride == [] or stride == () else _pair(stride, "stride")
    return _F.avg_pool2d(input, kernel_size, stride, _pair(padding, "padding"), bool(ceil_mode),
                         bool(count_include_pad))


def adaptive_avg_pool2d(input, output_size):
    """output_size: int or pair; None in the pair keeps that input size."""
    oh, ow = _pair(output_size, "output_size", allow_none=True)
    oh = input.shape[-2] if oh is None else oh
    ow = input.shape[-1] if ow is None else ow
    return _F.adaptive_avg_pool2d(input, (oh, ow))


def dropout(input, p=0.5, training=True, inplace=False):
    if inplace:
        raise NotImplementedError("dropout: inplace=True is not supported; use the returned tensor")
    return _F.dropout(input, float(p), bool(training))


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-05):
    return _F.batch_norm(input, running_mean, running_var, weight, bias, bool(training), float(momentum), float(eps))


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    if max_norm is not None or scale_grad_by_freq or sparse:
        raise NotImplementedError("embedding: max_norm, scale_grad_by_freq and sparse are not supported yet")
    return _F.embedding(input, weight, padding_idx)


# ---- losses ----

def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    if tuple(input.shape) != tuple(target.shape):
        _warnings.warn(f"mse_loss: target size {tuple(target.shape)} differs from input size "
                       f"{tuple(input.shape)}; they are broadcast, which is likely a bug", stacklevel=2)
    return _F.mse_loss(input, target, _reduction(size_average, reduce, reduction))


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    return _F.nll_loss(input, target, weight, ignore_index, _reduction(size_average, reduce, reduction))


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    return _F.cross_entropy(input, target, weight, ignore_index, _reduction(size_average, reduce, reduction),
                            float(label_smoothing))


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    return _F.binary_cross_entropy_with_logits(input, target, weight, pos_weight,
                                               _reduction(size_average, reduce, reduction))


# ---- attention ----

def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """softmax(query @ key.T * scale + mask) @ value; a bool mask is True where attending."""
    return _F.scaled_dot_product_attention(query, key, value, attn_mask, float(dropout_p), bool(is_causal), scale)


# ---- activations and normalizations (plain kiln ops) ----

def relu(input, inplace=False):
    return input.relu_() if inplace else _C.relu(input)


def gelu(input, approximate="none"):
    return _C.gelu(input, approximate)


def silu(input, inplace=False):
    return input.silu_() if inplace else _C.silu(input)


def tanh(input):
    return _C.tanh(input)


def sigmoid(input):
    return _C.sigmoid(input)


def _softmax_dim(input, dim, name):
    if dim is None:
        # PyTorch's legacy implicit choice: dim 0 for 0-, 1- and 3-D inputs, else 1.
        _warnings.warn(f"Implicit dimension choice for {name} has been deprecated. "
                       "Change the call to include dim=X as an argument.", stacklevel=3)
        dim = 0 if input.dim() in (0, 1, 3) else 1
    return dim


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dtype is not None:
        input = input.to(dtype)
    return _C.softmax(input, _softmax_dim(input, dim, "softmax"))


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dtype is not None:
        input = input.to(dtype)
    return _C.log_softmax(input, _softmax_dim(input, dim, "log_softmax"))


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-05):
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    return _C.layer_norm(input, tuple(normalized_shape), weight, bias, eps)
