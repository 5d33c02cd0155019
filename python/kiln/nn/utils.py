"""kiln.nn.utils: gradient clipping (PyTorch's torch.nn.utils names)."""
from ..utils import clip_grad_norm_, clip_grad_value_  # noqa: F401
