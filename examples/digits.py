"""Trains an MLP and a small CNN on the scikit-learn digits (8x8 images of 0-9).

    PYTHONPATH=python /usr/bin/python3 examples/digits.py [--epochs N] [--out DIR] [--device cuda]

kiln.nn layers, kiln.optim.AdamW with a cosine learning-rate schedule and
kiln.data.DataLoader; a progress bar and the loss and accuracy of every
epoch; the trained models are saved as safetensors files in --out (a
temporary directory by default). examples/digits.cpp trains the same MLP
from C++ on the same split.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

import kiln
import kiln.nn as nn
import kiln.nn.functional as F
from kiln.data import DataLoader, TensorDataset
from kiln.optim.lr_scheduler import CosineAnnealingLR


def load_digits_split():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("digits.py needs scikit-learn: install python3-sklearn (scripts/install-deps.sh does)")
    digits = load_digits()
    x = kiln.from_numpy((digits.data / 16.0).astype(np.float32))
    y = kiln.from_numpy(digits.target.astype(np.int64))
    # The first 20% of a seeded permutation is the test set, as in digits.cpp.
    n = x.shape[0]
    order = kiln.data.randperm(n, 0)
    test, train = order[: n // 5], order[n // 5:]
    return (x.index_select(0, train), y.index_select(0, train)), (x.index_select(0, test), y.index_select(0, test))


def mlp():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 x 4 x 4
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 2 x 2
        nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))


def bar(done, total, width=30):
    filled = done * width // total if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def accuracy(logits, y):
    return float((logits.argmax(1) == y).float().mean().item())


def train(name, model, data, epochs, lr, image_shape, out_dir, device):
    (x_train, y_train), (x_test, y_test) = data
    x_train = x_train.reshape(-1, *image_shape)
    x_test, y_test = x_test.reshape(-1, *image_shape).to(device), y_test.to(device)
    model.to(device)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True, seed=0)
    opt = kiln.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = CosineAnnealingLR(opt, T_max=epochs)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n{name}: {n_params} parameters, {epochs} epochs")
    live = sys.stdout.isatty()
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for i, (xb, yb) in enumerate(loader, 1):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            b = yb.shape[0]
            loss_sum += float(loss.item()) * b
            correct += int((logits.argmax(1) == yb).sum().item())
            seen += b
            if live:
                print(f"\repoch {epoch:2d}/{epochs} {bar(i, len(loader))} loss {loss_sum / seen:.4f}",
                      end="", flush=True)
        schedule.step()
        model.eval()
        with kiln.no_grad():
            test_acc = accuracy(model(x_test), y_test)
        print(f"\repoch {epoch:2d}/{epochs} {bar(epoch, epochs)} loss {loss_sum / seen:.4f}  "
              f"train {100 * correct / seen:5.1f}%  test {100 * test_acc:5.1f}%  "
              f"{time.perf_counter() - start:.1f}s", flush=True)
    path = os.path.join(out_dir, f"digits_{name.lower()}.safetensors")
    model.save(path)
    print(f"{name}: test accuracy {100 * test_acc:.1f}% in {time.perf_counter() - start:.1f}s; saved {path}")
    return test_acc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs per model (default 20)")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "kiln-digits"),
                        help="directory for the saved models")
    parser.add_argument("--model", choices=["mlp", "cnn", "both"], default="both")
    parser.add_argument("--device", default="cpu", help="where to train: cpu (default), cuda, cuda:N")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    kiln.manual_seed(0)
    data = load_digits_split()
    print(f"digits: {data[0][0].shape[0]} train, {data[1][0].shape[0]} test images of 8x8 pixels")
    start = time.perf_counter()
    results = {}
    if args.model in ("mlp", "both"):
        results["MLP"] = train("MLP", mlp(), data, args.epochs, 3e-3, (64,), args.out, args.device)
    if args.model in ("cnn", "both"):
        results["CNN"] = train("CNN", cnn(), data, args.epochs, 3e-3, (1, 8, 8), args.out, args.device)
    summary = ", ".join(f"{k} {100 * v:.1f}%" for k, v in results.items())
    print(f"\ntest accuracy: {summary}; total {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
