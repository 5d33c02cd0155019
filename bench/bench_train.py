#!/usr/bin/python3
"""Training-step benchmark: kiln eager vs PyTorch eager (CPU), one table.

    bench/run.sh --train            (builds, sets the thread environment, runs this)

Workloads (the same weights in both frameworks, checked to give the same loss
before timing):
- MLP 784-512-512-10, ReLU, batch 256, cross-entropy, AdamW (lr 1e-3)
- small CNN on 1x28x28 images, batch 64: Conv2d(1,16,3,p=1)-ReLU-MaxPool2d(2)
  -Conv2d(16,32,3,p=1)-ReLU-MaxPool2d(2)-Flatten-Linear(1568,10), cross-entropy, AdamW

A step is forward + loss + zero_grad + backward + optimizer step. Both
frameworks get 2 threads (DESIGN.md "Benchmarking facts"); steps alternate
between them (order rotating) after a warm-up; we report the median step
time with the interquartile range, and steps per second.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_eager as be  # noqa: E402  (sets the thread environment first)

import datetime  # noqa: E402
import socket  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kiln  # noqa: E402
import kiln.nn as knn  # noqa: E402
import kiln.nn.functional as KF  # noqa: E402


def copy_weights(kmodel, tmodel):
    """Gives the kiln model the torch model's initial weights (same parameter names)."""
    state = {k: kiln.tensor(v.detach().numpy()) for k, v in tmodel.state_dict().items()}
    kmodel.load_state_dict(state)


def mlp(lib):
    nn = knn if lib is kiln else torch.nn
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def cnn(lib):
    nn = knn if lib is kiln else torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def make_step(lib, model, x, y):
    F = KF if lib is kiln else torch.nn.functional
    opt = (kiln if lib is kiln else torch).optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return step


def workload(name, build, x_shape, batch, reps):
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((batch,) + x_shape).astype(np.float32)
    ys = rng.integers(0, 10, batch)
    torch.manual_seed(0)
    tmodel = build(torch)
    kmodel = build(kiln)
    copy_weights(kmodel, tmodel)
    ksteps = make_step(kiln, kmodel, kiln.from_numpy(xs), kiln.from_numpy(ys))
    tsteps = make_step(torch, tmodel, torch.from_numpy(xs), torch.from_numpy(ys))
    # Same weights, same data: the first losses agree (AdamW then moves both the same way).
    kl, tl = ksteps().item(), tsteps().item()
    be.check(f"{name} first loss", np.array(kl), np.array(tl), rtol=1e-4, atol=1e-5)
    kl, tl = ksteps().item(), tsteps().item()
    be.check(f"{name} second loss", np.array(kl), np.array(tl), rtol=1e-3, atol=1e-4)
    be.log(f"{name} ...")
    return be.run_interleaved({"kiln": ksteps, "torch": tsteps}, reps=reps, warmup=5)


def main():
    quick = "--quick" in sys.argv
    torch.set_num_threads(be.THREADS)
    kiln.set_num_threads(be.THREADS)
    busy0, own0 = be.cpu_busy_seconds()
    load0 = os.getloadavg()[0]
    t0 = datetime.datetime.now()
    rows = [
        ("MLP 784-512-512-10, batch 256, AdamW", workload("mlp", mlp, (784,), 256, 15 if quick else 60), 1.3),
        ("CNN 2×conv3x3 + linear, 1×28×28, batch 64, AdamW",
         workload("cnn", cnn, (1, 28, 28), 64, 10 if quick else 40), None),
    ]
    busy1, own1 = be.cpu_busy_seconds()
    elapsed = (datetime.datetime.now() - t0).total_seconds()
    other = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(elapsed * be.THREADS, 1e-9)

    lines = [f"# kiln training-step benchmark — {t0:%Y-%m-%d %H:%M} on `{socket.gethostname()}`", "",
             f"- CPU: {be.cpu_model()}, {os.cpu_count()} logical CPUs; load average {load0:.2f} at start, "
             f"{os.getloadavg()[0]:.2f} at end; run took {elapsed:.0f} s; other processes used "
             f"{100 * other:.0f}% of the CPU time meanwhile.",
             f"- kiln {kiln.__version__} (git {be.git_rev()}), PyTorch {torch.__version__} (Debian, CPU), "
             f"NumPy {np.__version__}; 2 threads each (OpenBLAS, OpenMP, kiln).",
             "",
             "| Training step | kiln eager [ms] | PyTorch eager [ms] | kiln steps/s | torch steps/s | kiln/torch | Target | Result |",
             "|---|---|---|---|---|---|---|---|"]
    for name, stats, target in rows:
        k, t = stats["kiln"], stats["torch"]
        ratio = k.med / t.med
        lo, hi = k.p25 / t.p75, k.p75 / t.p25
        if target is None:
            verdict = "—"
        elif ratio <= target:
            verdict = "PASS"
        elif lo <= target:
            verdict = "within noise"
        else:
            verdict = "FAIL"
        lines.append(f"| {name} | {be.fmt_time(k, 'ms')} | {be.fmt_time(t, 'ms')} | {1 / k.med:.0f} | "
                     f"{1 / t.med:.0f} | {ratio:.2f} ({lo:.2f}–{hi:.2f}) | "
                     f"{'≤ %.1f× PyTorch' % target if target else '—'} | {verdict} |")
    lines += ["",
              "Cells: median (interquartile range) of the step time; the ratio's range pairs kiln's quartiles "
              "with torch's opposite ones. A step: forward, cross-entropy, zero_grad, backward, AdamW step. "
              "Both models start from the same weights and the first two losses are checked to agree.",
              "Target (issue 3): the MLP step no slower than 1.3× PyTorch eager."]
    be.print_and_save("\n".join(lines) + "\n", t0, "train")


if __name__ == "__main__":
    main()
