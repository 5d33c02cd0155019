"""The eager demo: tensors, views, broadcasting, reductions and NumPy interop."""
import numpy as np

import kiln

kiln.manual_seed(0)
x = kiln.randn(4, 3)
w = kiln.tensor([[1., 2.], [3., 4.], [5., 6.]])
y = (x @ w).relu() + 1.0
print("y = (x @ w).relu() + 1.0")
print(y)
print("row sums:", y.sum(dim=1, keepdim=True).numpy().ravel())

z = kiln.from_numpy(np.arange(6.0).reshape(2, 3))  # shares the NumPy array's memory
z[:, 1:] *= 2                                       # in place, through a view
print("z after z[:, 1:] *= 2:")
print(z)

logits = kiln.randn(2, 5)
print("softmax rows sum to", logits.softmax(dim=-1).sum(dim=-1))

try:
    kiln.ones(2, 3) + kiln.ones(4)
except kiln.ShapeError as e:
    print("a clear error:", e)
