"""kiln.optim: optimizers (SGD, Adam, AdamW) and learning-rate schedules.

The classes follow torch.optim: ``params`` is an iterable of tensors or of
param groups (dicts with their own ``lr`` etc.), ``param_groups`` and
``state`` are plain dicts that schedulers and users may edit, and
``state_dict()`` has PyTorch's layout. The update math is not written here:
``step()`` hands each group to the C++ update (kiln::optim::sgd_update /
adam_update), one call per group.
"""
from .. import _C
from .._C import Tensor
from ..utils import clip_grad_norm_, clip_grad_value_  # noqa: F401  (also nn.utils)
from . import lr_scheduler  # noqa: F401

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler", "clip_grad_norm_", "clip_grad_value_"]


class _RequiredParameter:
    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


def _as_kiln(value):
    """A state value from another framework's state_dict (a torch tensor) as a kiln tensor."""
    if isinstance(value, Tensor):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        return _C.from_numpy(value.detach().cpu().numpy().copy())
    return value


class Optimizer:
    """Base class: parameter groups, state, zero_grad and state_dict.

    Subclasses set ``defaults`` (a dict of hyperparameters) and implement
    ``_step_group(group)``.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}  # parameter -> {"step": ..., "exp_avg": ...}
        self.param_groups = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors "
                            "or dicts, but got a Tensor")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)

    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError(f"param group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        if params is None:
            raise ValueError("param group has no 'params'")
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the "
                            "ordering of tensors in sets will change between runs; use a list instead")
        params = list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is "
                                f"{type(p).__name__}")
            if not p.dtype.is_floating_point:
                raise TypeError(f"optimizer can only optimize floating-point tensors, got {p.dtype}")
        group["params"] = params
        for key, value in self.defaults.items():
            if value is required and key not in group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {key}")
            group.setdefault(key, value)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        """Drops the gradients (set_to_none) or zeroes them in place."""
        for group in self.param_groups:
            _C._zero_grad(group["params"], set_to_none)

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns closure() if given."""
        loss = None
        if closure is not None:
            from .. import enable_grad
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group):
        raise NotImplementedError

    def state_dict(self):
        """{'state': {index: {...}}, 'param_groups': [{..., 'params': [indices]}]}, as in PyTorch.

        Parameters are numbered across the groups in order. The state
        tensors are shared, not copied.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Loads a state_dict of the same kind of optimizer (kiln's or PyTorch's) over
        parameters of the same shapes; the state tensors are copied."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(groups)} parameter groups, this optimizer "
                             f"has {len(self.param_groups)}")
        for mine, theirs in zip(self.param_groups, groups):
            if len(mine["params"]) != len(theirs["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the "
                                 "size of optimizer's group")
        param_of = {}
        for mine, theirs in zip(self.param_groups, groups):
            for p, i in zip(mine["params"], theirs["params"]):
                param_of[i] = p
        state = {}
        for i, entries in state_dict["state"].items():
            if i not in param_of:
                raise ValueError(f"loaded state dict has state for parameter {i}, which no group lists")
            p = param_of[i]
            state[p] = {}
            for key, value in entries.items():
                value = _as_kiln(value)
                if key == "step":
                    value = (value.clone() if isinstance(value, Tensor) else _C._full([], value, None))
                    value = value.to(_C.dtype.float32)
                elif isinstance(value, Tensor):
                    if tuple(value.shape) != tuple(p.shape):
                        raise ValueError(f"loaded state '{key}' of parameter {i} has shape "
                                         f"{tuple(value.shape)}, the parameter {tuple(p.shape)}")
                    # on the parameter's device, as in PyTorch (a checkpoint saved from the cpu)
                    value = value.to(device=p.device, dtype=p.dtype, copy=True)
                state[p][key] = value
        for mine, theirs in zip(self.param_groups, groups):
            for key, value in theirs.items():
                if key != "params":
                    mine[key] = value
        self.state = state


def _fused(group):
    return group.get("fused")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (Nesterov), dampening
    and weight decay, as torch.optim.SGD."""

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, fused=None):
        if lr is not required and lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                                      fused=fused))

    def _step_group(self, g):
        _C._sgd_step(g["params"], self.state, g["lr"], g["momentum"], g["dampening"], g["weight_decay"],
                     g["nesterov"], g["maximize"], _fused(g))


class Adam(Optimizer):
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient and
    optional AMSGrad, as torch.optim.Adam."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, fused=None):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize, fused=fused))

    def _step_group(self, g):
        beta1, beta2 = g["betas"]
        _C._adam_step(g["params"], self.state, g["lr"], beta1, beta2, g["eps"], g["weight_decay"],
                      g["amsgrad"], g["maximize"], self._decoupled, _fused(g))


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): each step
    multiplies the parameters by 1 - lr * weight_decay, as torch.optim.AdamW."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, fused=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, fused=fused)
