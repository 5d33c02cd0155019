"""kiln.nn's Module, Parameter and layers: pure Python over kiln.nn.functional.

Modules follow torch.nn (1.13): parameters, buffers and submodules are
registered by attribute assignment, and names, registration order, default
initialization and forward semantics are PyTorch's, so state dicts
interchange with torch's (``kiln.tensor(t.numpy())`` per entry).
"""
import collections
import copy
import itertools
import math
import operator

import numpy as _np

import kiln
from kiln import _C
from . import functional as F
from . import init

__all__ = [
    "Parameter", "Module", "Sequential", "ModuleList", "ModuleDict",
    "Identity", "Linear", "Conv2d", "LayerNorm", "BatchNorm1d", "BatchNorm2d", "Embedding",
    "Dropout", "ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "Flatten",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
    "MultiheadAttention", "TransformerEncoderLayer",
    "MSELoss", "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss",
]


class Parameter(_C._Parameter):
    """A tensor that is a module parameter: a leaf that requires grad.

    ``Parameter(t)`` shares t's storage (without its history), like
    torch.nn.Parameter. Assigning one to a module attribute registers it.
    """

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            data = kiln.empty(0)
        elif not isinstance(data, kiln.Tensor):
            data = kiln.tensor(data)
        super().__init__(data, requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo):
        if id(self) not in memo:
            memo[id(self)] = Parameter(self.detach().clone(), self.requires_grad)
        return memo[id(self)]


_IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _addindent(s, spaces):
    lines = s.split("\n")
    if len(lines) == 1:
        return s
    return lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


def _as_kiln(value, key):
    if isinstance(value, kiln.Tensor):
        return value
    try:
        # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
        return kiln.from_numpy(_np.array(value, copy=True, order="C"))
    except Exception as e:  # noqa: BLE001  (re-raised with the key named)
        raise TypeError(f"load_state_dict: the value of {key!r} is a {type(value).__name__}, "
                        f"not a tensor or array: {e}") from None


class Module:
    """Base class of every layer; subclass it and define ``forward``.

    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         return self.fc(x).relu()
    """

    training: bool

    def __init__(self):
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = {}
        d["_buffers"] = {}
        d["_non_persistent_buffers_set"] = set()
        d["_modules"] = {}

    def __deepcopy__(self, memo):
        # Tensors are cloned (tied ones stay tied, through memo); everything
        # else in __dict__ is deep-copied as usual.
        for t in itertools.chain(self._parameters.values(), self._buffers.values()):
            if t is not None and id(t) not in memo:
                memo[id(t)] = copy.deepcopy(t, memo) if isinstance(t, Parameter) else t.detach().clone()
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function')

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- registration ----
    def _registry(self, name):
        reg = self.__dict__.get(name)
        if reg is None:
            raise AttributeError(f"cannot assign to {type(self).__name__} before Module.__init__() call "
                                 "(call super().__init__() first)")
        return reg

    @staticmethod
    def _check_name(name, what):
        if not isinstance(name, str):
            raise TypeError(f"{what} name should be a string, got {type(name).__name__}")
        if "." in name or name == "":
            raise KeyError(f"{what} name can't be empty or contain \".\", got {name!r}")

    def register_parameter(self, name, param):
        self._check_name(name, "parameter")
        params = self._registry("_parameters")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter '{name}' "
                            "(nn.Parameter or None required)")
        if hasattr(self, name) and name not in params:
            raise KeyError(f"attribute '{name}' already exists")
        params[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        self._check_name(name, "buffer")
        buffers = self._registry("_buffers")
        if tensor is not None and not isinstance(tensor, kiln.Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer '{name}' "
                            "(kiln.Tensor or None required)")
        if hasattr(self, name) and name not in buffers:
            raise KeyError(f"attribute '{name}' already exists")
        buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name, module):
        self._check_name(name, "module")
        modules = self._registry("_modules")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        if hasattr(self, name) and name not in modules:
            raise KeyError(f"attribute '{name}' already exists")
        modules[name] = module

    register_module = add_module

    def __setattr__(self, name, value):
        d = self.__dict__

        def remove_from(*registries):
            for reg in registries:
                if reg is not None and name in reg:
                    del reg[name]

        params = d.get("_parameters")
        if isinstance(value, Parameter):
            params = self._registry("_parameters")
            remove_from(d, d.get("_buffers"), d.get("_modules"))
            params[name] = value
            return
        if params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                                "(nn.Parameter or None expected)")
            params[name] = None
            return
        modules = d.get("_modules")
        if isinstance(value, Module):
            modules = self._registry("_modules")
            remove_from(d, params, d.get("_buffers"))
            modules[name] = value
            return
        if modules is not None and name in modules:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module '{name}' "
                                "(nn.Module or None expected)")
            modules[name] = None
            return
        buffers = d.get("_buffers")
        if buffers is not None and name in buffers:
            if value is not None and not isinstance(value, kiln.Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                                "(kiln.Tensor or None expected)")
            buffers[name] = value
            return
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only reached when normal lookup fails: registered entries live in
        # the registries, not in __dict__.
        d = self.__dict__
        for reg in ("_parameters", "_buffers", "_modules"):
            r = d.get(reg)
            if r is not None and name in r:
                return r[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        d = self.__dict__
        for reg in ("_parameters", "_buffers", "_modules"):
            r = d.get(reg)
            if r is not None and name in r:
                del r[name]
                d["_non_persistent_buffers_set"].discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        keys = set(super().__dir__())
        for reg in ("_parameters", "_buffers", "_modules"):
            keys.update(self.__dict__.get(reg, {}))
        return sorted(keys)

    def get_submodule(self, target):
        mod = self
        for item in target.split(".") if target else []:
            if not isinstance(mod._modules.get(item), Module):
                raise AttributeError(f"{type(mod).__name__} has no submodule `{item}` (looking up {target!r})")
            mod = mod._modules[item]
        return mod

    def get_parameter(self, target):
        module_path, _, name = target.rpartition(".")
        mod = self.get_submodule(module_path)
        if mod._parameters.get(name) is None:
            raise AttributeError(f"{type(mod).__name__} has no parameter `{name}`")
        return mod._parameters[name]

    # ---- traversal ----
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            yield from module.named_modules(memo, prefix + ("." if prefix else "") + name, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, registry, prefix, recurse, remove_duplicate=True):
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse \
            else [(prefix, self)]
        seen = set()
        for module_prefix, module in modules:
            for name, value in module.__dict__[registry].items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield module_prefix + ("." if module_prefix else "") + name, value

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ---- modes ----
    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.__dict__["training"] = mode
        for m in self.children():
            m.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            g = p.grad
            if g is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                g.zero_()

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ---- dtype and device ----
    def to(self, *args, dtype=None, device=None):
        """Moves parameters and buffers to ``device`` and casts the floating
        ones to ``dtype``, in place: the Parameter objects stay the same, so
        an optimizer made before keeps working (as in PyTorch)."""
        for a in args:
            if isinstance(a, str) or (isinstance(a, int) and not isinstance(a, bool)):
                device = a if isinstance(a, str) else f"cuda:{a}"
            elif isinstance(a, kiln.Tensor):  # module.to(tensor): its dtype and device, as in PyTorch
                dtype, device = a.dtype, a.device
            else:
                dtype = a
        device = _C._check_device(device, "Module.to")
        if dtype is not None:
            dtype = _C._to_dtype(dtype)
            if not dtype.is_floating_point:
                raise TypeError(f"nn.Module.to only accepts floating point dtypes, but got desired dtype={dtype}")

        def convert(t):
            if device is not None and t.device != device:
                t = t.to(device)
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            return t

        for t in itertools.chain(self.parameters(), self.buffers()):
            new = convert(t.detach())
            if new.device != t.device or new.dtype != t.dtype:
                g = t.grad if isinstance(t, Parameter) else None
                _C._nn_set_data(t, new)
                if g is not None:
                    t.grad = convert(g)
        return self

    def cuda(self, device=None):
        return self.to(device if device is not None else "cuda")

    def float(self):
        return self.to(kiln.float32)

    def double(self):
        return self.to(kiln.float64)

    def half(self):
        return self.to(kiln.float16)

    def bfloat16(self):
        return self.to(kiln.bfloat16)

    def cpu(self):
        return self.to("cpu")

    # ---- state ----
    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """Parameters and persistent buffers by dotted name, in PyTorch's order
        (each module's parameters, then its buffers, then its children)."""
        if destination is None:
            destination = collections.OrderedDict()
        for name, p in self._parameters.items():
            if p is not None:
                destination[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = b if keep_vars else b.detach()
        for name, m in self._modules.items():
            if m is not None:
                m.state_dict(destination, prefix + name + ".", keep_vars)
        return destination

    def load_state_dict(self, state_dict, strict=True):
        """Copies values into the parameters and buffers (converting dtype).

        Shape mismatches always raise; missing and unexpected keys raise when
        ``strict``. Nothing is written unless every check passes. Values may
        be kiln tensors or anything NumPy can read (NumPy arrays, CPU torch
        tensors).
        """
        targets = self.state_dict(keep_vars=True)
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        problems, pairs = [], []
        for key, dst in targets.items():
            if key not in state_dict:
                continue
            src = _as_kiln(state_dict[key], key)
            if tuple(src.shape) != tuple(dst.shape):
                problems.append(f"size mismatch for {key}: copying a param with shape {tuple(src.shape)} from "
                                f"checkpoint, the shape in current model is {tuple(dst.shape)}.")
            pairs.append((dst, src))
        if strict and missing:
            problems.insert(0, "Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
        if strict and unexpected:
            problems.insert(0, "Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
        if problems:
            raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(problems))
        for dst, src in pairs:
            _C._nn_copy_(dst, src)
        return _IncompatibleKeys(missing, unexpected)

    def save(self, path, metadata=None):
        """Writes state_dict() to a safetensors file (GPU tensors are copied to the cpu to be written)."""
        kiln.save_file({k: v.cpu() for k, v in self.state_dict().items()}, path, metadata)

    def load(self, path, strict=True):
        """Loads a safetensors file written by save() (or by any safetensors writer)."""
        return self.load_state_dict(kiln.load_file(path), strict)

    # ---- printing ----
    def extra_repr(self):
        return ""

    def _get_name(self):
        return type(self).__name__

    def __repr__(self):
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + _addindent(repr(m), 2) for name, m in self._modules.items()]
        lines = extra_lines + child_lines
        s = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                s += extra_lines[0]
            else:
                s += "\n  " + "\n  ".join(lines) + "\n"
        return s + ")"


# ---- containers ----

class Sequential(Module):
    """Calls its modules in order. ``Sequential(m0, m1, ...)`` names them
    "0", "1", ...; ``Sequential(OrderedDict(name=module, ...))`` keeps names."""

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], collections.OrderedDict):
            for name, m in args[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(args):
                self.add_module(str(i), m)

    def _index(self, idx):
        n = len(self._modules)
        idx = operator.index(idx)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for {type(self).__name__} of length {n}")
        return idx % n

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(collections.OrderedDict(list(self._modules.items())[idx]))
        return list(self._modules.values())[self._index(idx)]

    def __setitem__(self, idx, module):
        key = list(self._modules.keys())[self._index(idx)]
        setattr(self, key, module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def forward(self, input):
        for m in self._modules.values():
            input = m(input)
        return input


class ModuleList(Module):
    """A list of submodules, registered as "0", "1", ..."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _index(self, idx):
        n = len(self._modules)
        idx = operator.index(idx)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for ModuleList of length {n}")
        return idx % n

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return ModuleList(list(self._modules.values())[idx])
        return self._modules[str(self._index(idx))]

    def __setitem__(self, idx, module):
        self.add_module(str(self._index(idx)), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        mods = list(self._modules.values())
        mods.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(mods):
            self.add_module(str(i), m)


class ModuleDict(Module):
    """A dict of submodules, by name."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        del self._modules[key]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def update(self, modules):
        items = modules.items() if hasattr(modules, "items") else modules
        for k, m in items:
            self[k] = m


# ---- helpers ----

def _pair(v, name="argument"):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


def _check_dtype_device(layer, dtype, device):
    _C._check_device(device, layer)
    return dtype


def _place(module, device):
    """Moves a new layer's parameters and buffers to its ``device=`` argument. They are made
    (and drawn) on the cpu first, so a seed gives the same initial values on every device."""
    if device is not None:
        module.to(device)


# ---- layers ----

class Identity(Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input


class Linear(Module):
    """y = x W^T + b; weight (out_features, in_features), bias (out_features)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        dtype = _check_dtype_device("Linear", dtype, device)
        if in_features < 0 or out_features < 0:
            raise ValueError(f"Linear: in_features and out_features must be non-negative, "
                             f"got {in_features} and {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(kiln.empty(out_features, in_features, dtype=dtype))
        if bias:
            self.bias = Parameter(kiln.empty(out_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self):
        # kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        shape = input.shape
        if not shape or shape[-1] != self.in_features:
            raise kiln.ShapeError(f"Linear(in_features={self.in_features}, out_features={self.out_features}): "
                                  f"expected an input whose last dimension is {self.in_features}, "
                                  f"got shape {tuple(shape)}")
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-d convolution over (N, C, H, W) or (C, H, W) input.

    weight (out_channels, in_channels / groups, kh, kw), bias (out_channels).
    padding may be an int, a pair, "valid" or "same" (symmetric only).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        dtype = _check_dtype_device("Conv2d", dtype, device)
        if in_channels <= 0 or out_channels <= 0 or groups <= 0:
            raise ValueError("Conv2d: in_channels, out_channels and groups must be positive")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: padding_mode={padding_mode!r} is not supported (only 'zeros')")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same":
                if self.stride != (1, 1):
                    raise ValueError("Conv2d: padding='same' is not supported for strided convolutions")
                total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
                if any(t % 2 for t in total):
                    raise ValueError("Conv2d: padding='same' needs an odd effective kernel size here "
                                     "(asymmetric padding is not supported)")
                padding = (total[0] // 2, total[1] // 2)
            else:
                raise ValueError(f"Conv2d: invalid padding string {padding!r}; expected 'valid' or 'same'")
        self.padding = _pair(padding, "padding")
        kh, kw = self.kernel_size
        self.weight = Parameter(kiln.empty(out_channels, in_channels // groups, kh, kw, dtype=dtype))
        if bias:
            self.bias = Parameter(kiln.empty(out_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        _place(self, device)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        shape = input.shape
        if len(shape) not in (3, 4) or shape[-3] != self.in_channels:
            c = self.in_channels
            raise kiln.ShapeError(f"Conv2d({c}, {self.out_channels}): expected input (N, {c}, H, W) or "
                                  f"({c}, H, W), got shape {tuple(shape)}")
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class LayerNorm(Module):
    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, device=None, dtype=None):
        super().__init__()
        dtype = _check_dtype_device("LayerNorm", dtype, device)
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(int(s) for s in normalized_shape)
        if not self.normalized_shape:
            raise ValueError("LayerNorm: normalized_shape must not be empty")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(kiln.ones(self.normalized_shape, dtype=dtype))
            self.bias = Parameter(kiln.zeros(self.normalized_shape, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        _place(self, device)

    def reset_parameters(self):
        if self.elementwise_affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def forward(self, input):
        shape = tuple(input.shape)
        n = len(self.normalized_shape)
        if len(shape) < n or shape[len(shape) - n:] != self.normalized_shape:
            raise kiln.ShapeError(f"LayerNorm({self.normalized_shape}): expected an input whose trailing "
                                  f"dimensions are {self.normalized_shape}, got shape {shape}")
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class _BatchNorm(Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__()
        dtype = _check_dtype_device(type(self).__name__, dtype, device)
        if num_features <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be positive, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(kiln.ones(num_features, dtype=dtype))
            self.bias = Parameter(kiln.zeros(num_features, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", kiln.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", kiln.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", kiln.tensor(0, dtype=kiln.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        _place(self, device)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def _check_input(self, input):
        raise NotImplementedError

    def forward(self, input):
        self._check_input(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / self.num_batches_tracked.item()
        if self.training:
            shape = input.shape
            if input.numel() // shape[1] <= 1:
                raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel when "
                                 f"training, got input shape {tuple(shape)}")
        # Eval without running statistics normalizes with the batch's own.
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                            use_batch_stats, factor, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) input over all dims but C."""

    def _check_input(self, input):
        shape = input.shape
        if len(shape) not in (2, 3) or shape[1] != self.num_features:
            c = self.num_features
            raise kiln.ShapeError(f"BatchNorm1d({c}): expected input (N, {c}) or (N, {c}, L), "
                                  f"got shape {tuple(shape)}")


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) input over all dims but C."""

    def _check_input(self, input):
        shape = input.shape
        if len(shape) != 4 or shape[1] != self.num_features:
            c = self.num_features
            raise kiln.ShapeError(f"BatchNorm2d({c}): expected input (N, {c}, H, W), got shape {tuple(shape)}")


class Embedding(Module):
    """A lookup table: weight (num_embeddings, embedding_dim), drawn from N(0, 1);
    the padding_idx row is zero and gets no gradient."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, device=None, dtype=None):
        super().__init__()
        dtype = _check_dtype_device("Embedding", dtype, device)
        if max_norm is not None or scale_grad_by_freq or sparse:
            raise ValueError("Embedding: max_norm, scale_grad_by_freq and sparse are not supported")
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError("Embedding: num_embeddings and embedding_dim must be positive")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx ({padding_idx}) must be within num_embeddings "
                                 f"({num_embeddings})")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.max_norm, self.norm_type = max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        if _weight is None:
            # Drawn and zeroed before it becomes a parameter, so the writes
            # are plain tensor writes.
            w = init.normal_(kiln.empty(num_embeddings, embedding_dim, dtype=dtype))
            if padding_idx is not None:
                w[padding_idx] = 0
        else:
            if tuple(_weight.shape) != (num_embeddings, embedding_dim):
                raise kiln.ShapeError(f"Embedding: _weight has shape {tuple(_weight.shape)}, expected "
                                      f"{(num_embeddings, embedding_dim)}")
            w = _weight
        self.weight = Parameter(w)
        _place(self, device)

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None, **kwargs):
        if embeddings.dim() != 2:
            raise kiln.ShapeError(f"Embedding.from_pretrained: embeddings must be 2-d, got shape "
                                  f"{tuple(embeddings.shape)}")
        rows, cols = embeddings.shape
        m = cls(rows, cols, padding_idx=padding_idx, _weight=embeddings, **kwargs)
        m.weight.requires_grad_(not freeze)
        return m

    def reset_parameters(self):
        w = init.normal_(kiln.empty(self.num_embeddings, self.embedding_dim, dtype=self.weight.dtype))
        if self.padding_idx is not None:
            w[self.padding_idx] = 0
        _C._nn_copy_(self.weight, w)

    def forward(self, input):
        if input.dtype.is_floating_point or input.dtype == kiln.bool:
            raise kiln.DTypeError(f"Embedding({self.num_embeddings}, {self.embedding_dim}): expected integer "
                                  f"indices, got {input.dtype}")
        return F.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        return s


class Dropout(Module):
    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def forward(self, input):
        return F.dropout(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


# ---- activations ----

class ReLU(Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return _C.relu(input)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, input):
        return _C.gelu(input, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return _C.silu(input)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Tanh(Module):
    def forward(self, input):
        return _C.tanh(input)


class Sigmoid(Module):
    def forward(self, input):
        return _C.sigmoid(input)


def _legacy_softmax_dim(ndim):
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        dim = _legacy_softmax_dim(input.dim()) if self.dim is None else self.dim
        return _C.softmax(input, dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        dim = _legacy_softmax_dim(input.dim()) if self.dim is None else self.dim
        return _C.log_softmax(input, dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input):
        return input.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ---- pooling ----

def _check_pool_input(name, input):
    if input.dim() not in (3, 4):
        raise kiln.ShapeError(f"{name}: expected input (N, C, H, W) or (C, H, W), got shape {tuple(input.shape)}")


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        if return_indices:
            raise ValueError("MaxPool2d: return_indices=True is not supported")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, input):
        _check_pool_input("MaxPool2d", input)
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        if divisor_override is not None:
            raise ValueError("AvgPool2d: divisor_override is not supported")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.ceil_mode, self.count_include_pad = padding, ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, input):
        _check_pool_input("AvgPool2d", input)
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        _check_pool_input("AdaptiveAvgPool2d", input)
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


# ---- attention ----

def _additive_mask(mask, dtype, what):
    """A bool mask (True = masked out) or a float mask, as a float mask to add."""
    if mask.dtype == kiln.bool:
        return kiln.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not mask.dtype.is_floating_point:
        raise kiln.DTypeError(f"MultiheadAttention: {what} must be bool or floating, got {mask.dtype}")
    return mask.to(dtype)


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention: in_proj_weight (3E, E), in_proj_bias (3E),
    out_proj (Linear E -> E); q/k/v_proj_weight instead when kdim or vdim
    differ from embed_dim.

    Inputs (L, N, E), or (N, L, E) with batch_first, or unbatched (L, E).
    forward returns (output, weights): weights (N, L, S) averaged over heads
    (or (N, num_heads, L, S)) when need_weights, else None.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None):
        super().__init__()
        dtype = _check_dtype_device("MultiheadAttention", dtype, device)
        if add_bias_kv or add_zero_attn:
            raise ValueError("MultiheadAttention: add_bias_kv and add_zero_attn are not supported")
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) and num_heads ({num_heads}) "
                             "must be positive")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by "
                             f"num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(kiln.empty(3 * embed_dim, embed_dim, dtype=dtype))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = Parameter(kiln.empty(embed_dim, embed_dim, dtype=dtype))
            self.k_proj_weight = Parameter(kiln.empty(embed_dim, self.kdim, dtype=dtype))
            self.v_proj_weight = Parameter(kiln.empty(embed_dim, self.vdim, dtype=dtype))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter(kiln.empty(3 * embed_dim, dtype=dtype))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()
        _place(self, device)

    def _reset_parameters(self):
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        layout = "(N, L, E)" if self.batch_first else "(L, N, E)"
        qs, ks, vs = tuple(query.shape), tuple(key.shape), tuple(value.shape)
        if len(qs) not in (2, 3) or len(ks) != len(qs) or len(vs) != len(qs):
            raise kiln.ShapeError(f"MultiheadAttention: query, key and value must all be batched {layout} or all "
                                  f"unbatched (L, E); got shapes {qs}, {ks}, {vs}")
        E = self.embed_dim
        if qs[-1] != E or ks[-1] != self.kdim or vs[-1] != self.vdim:
            raise kiln.ShapeError(f"MultiheadAttention(embed_dim={E}, kdim={self.kdim}, vdim={self.vdim}): the last "
                                  f"dimensions of query, key and value must be {E}, {self.kdim}, {self.vdim}; "
                                  f"got shapes {qs}, {ks}, {vs}")
        batched = len(qs) == 3

        def to_nle(t):  # work batch first: (N, L, E)
            if not batched:
                return t.unsqueeze(0)
            return t if self.batch_first else t.transpose(0, 1)

        q, k, v = to_nle(query), to_nle(key), to_nle(value)
        N, L, S = q.shape[0], q.shape[1], k.shape[1]
        if k.shape[0] != N or v.shape[0] != N or v.shape[1] != S:
            raise kiln.ShapeError(f"MultiheadAttention: query, key and value disagree in batch size or key/value "
                                  f"length: shapes {qs}, {ks}, {vs} (layout {layout})")
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            wq, wk, wv = w.narrow(0, 0, E), w.narrow(0, E, E), w.narrow(0, 2 * E, E)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b.narrow(0, 0, E), b.narrow(0, E, E),
                                                            b.narrow(0, 2 * E, E))
        H, D = self.num_heads, self.head_dim
        qh = F.linear(q, wq, bq).reshape(N, L, H, D).transpose(1, 2)
        kh = F.linear(k, wk, bk).reshape(N, S, H, D).transpose(1, 2)
        vh = F.linear(v, wv, bv).reshape(N, S, H, D).transpose(1, 2)

        # Every mask becomes one additive float mask broadcastable to (N, H, L, S).
        dt = qh.dtype
        mask = None
        if attn_mask is not None:
            m = _additive_mask(attn_mask, dt, "attn_mask")
            if tuple(m.shape) == (L, S):
                m = m.reshape(1, 1, L, S)
            elif tuple(m.shape) == (N * H, L, S):
                m = m.reshape(N, H, L, S)
            else:
                raise kiln.ShapeError(f"MultiheadAttention: attn_mask of shape {tuple(m.shape)} should be "
                                      f"({L}, {S}) (L, S) or ({N * H}, {L}, {S}) (N * num_heads, L, S)")
            mask = m
        if key_padding_mask is not None:
            m = _additive_mask(key_padding_mask, dt, "key_padding_mask")
            expected = (N, S) if batched else (S,)
            if tuple(m.shape) != expected:
                raise kiln.ShapeError(f"MultiheadAttention: key_padding_mask of shape {tuple(m.shape)} should be "
                                      f"{expected}")
            m = m.reshape(N, 1, 1, S)
            mask = m if mask is None else mask + m
        if is_causal:
            dev = qh.device  # the mask is made where the scores are
            above = kiln.arange(S, device=dev).reshape(1, S) > kiln.arange(L, device=dev).reshape(L, 1)
            m = kiln.zeros(L, S, dtype=dt, device=dev).masked_fill(above, float("-inf")).reshape(1, 1, L, S)
            mask = m if mask is None else mask + m

        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = kiln.matmul(qh, kh.transpose(-2, -1)) * (1.0 / math.sqrt(D))
            if mask is not None:
                scores = scores + mask
            attn = _C.softmax(scores, -1)
            if p > 0.0:
                attn = F.dropout(attn, p, True)
            out = kiln.matmul(attn, vh)
            weights = attn.mean(1) if average_attn_weights else attn
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(qh, kh, vh, mask, p)
        out = self.out_proj(out.transpose(1, 2).reshape(N, L, E))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


class TransformerEncoderLayer(Module):
    """torch.nn.TransformerEncoderLayer: self-attention and a feed-forward
    block, each with a residual connection and LayerNorm (after, or before
    with norm_first). activation: "relu", "gelu" or a callable."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, device=None, dtype=None):
        super().__init__()
        dtype = _check_dtype_device("TransformerEncoderLayer", dtype, device)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=batch_first, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, dtype=dtype)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, dtype=dtype)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        if isinstance(activation, str):
            if activation == "relu":
                activation = _C.relu
            elif activation == "gelu":
                activation = _C.gelu
            else:
                raise ValueError(f"TransformerEncoderLayer: activation should be 'relu' or 'gelu', "
                                 f"not {activation!r}")
        self.activation = activation
        self.batch_first = batch_first
        _place(self, device)

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


# ---- losses ----

class _Loss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"{type(self).__name__}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction


class MSELoss(_Loss):
    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


class CrossEntropyLoss(_Loss):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(_Loss):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index

    def forward(self, input, target):
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, weight=self.weight, reduction=self.reduction,
                                                  pos_weight=self.pos_weight)
