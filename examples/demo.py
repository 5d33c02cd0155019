"""The demo: tensors, views, broadcasting, reductions, NumPy interop, and a compiled training step."""
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

# kiln.jit traces a function once per signature and compiles it (MLIR -> LLVM):
# here a whole training step, with the matmuls calling BLAS between fused kernels.
import kiln.nn as nn  # noqa: E402
import kiln.nn.functional as F  # noqa: E402

model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))
opt = kiln.optim.SGD(model.parameters(), lr=0.1)


@kiln.jit
def step(x, target):
    loss = F.cross_entropy(model(x), target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


data = kiln.randn(64, 3)
target = (data[:, 0] + data[:, 1] > 0).long()  # a rule the model can learn
losses = [step(data, target).item() for _ in range(50)]
print(f"jit training step: loss {losses[0]:.3f} -> {losses[-1]:.3f};", step.stats()[0]["note"])
