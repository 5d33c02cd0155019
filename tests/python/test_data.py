"""kiln.data: TensorDataset, DataLoader (shapes, drop_last, seeded shuffle) and randperm."""
import numpy as np
import pytest

import kiln
from kiln.data import DataLoader, TensorDataset, randperm


def dataset(n=10, features=3):
    x = kiln.arange(n * features, dtype=kiln.float32).reshape(n, features)
    y = kiln.arange(n)  # y[i] == x[i, 0] / features
    return x, y


def rows(batch_y):
    return batch_y.numpy().tolist()


def test_tensor_dataset():
    x, y = dataset()
    ds = TensorDataset(x, y)
    assert len(ds) == 10
    xi, yi = ds[3]
    assert xi.numpy().tolist() == [9.0, 10.0, 11.0] and int(yi.item()) == 3
    with pytest.raises(ValueError, match="size mismatch"):
        TensorDataset(x, kiln.arange(4))
    with pytest.raises(ValueError, match="at least one"):
        TensorDataset()
    assert len(TensorDataset(np.zeros((4, 2), np.float32))) == 4


@pytest.mark.parametrize("drop_last,sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_batches_in_order(drop_last, sizes):
    x, y = dataset()
    loader = DataLoader(TensorDataset(x, y), batch_size=4, drop_last=drop_last)
    assert len(loader) == len(sizes)
    batches = list(loader)
    assert [len(rows(yb)) for _, yb in batches] == sizes
    assert sum((rows(yb) for _, yb in batches), []) == list(range(sum(sizes)))
    for xb, yb in batches:
        assert isinstance(xb, kiln.Tensor) and xb.shape[1:] == (3,) and xb.dtype == kiln.float32
        assert yb.dtype == kiln.int64
        np.testing.assert_array_equal(xb.numpy()[:, 0], yb.numpy() * 3)


def test_shuffle_is_seeded_and_aligned():
    x, y = dataset(37)
    a = DataLoader((x, y), batch_size=8, shuffle=True, seed=123)
    b = DataLoader((x, y), batch_size=8, shuffle=True, seed=123)
    c = DataLoader((x, y), batch_size=8, shuffle=True, seed=124)
    epochs = []
    for _ in range(3):
        order_a = sum((rows(yb) for _, yb in a), [])
        order_b = sum((rows(yb) for _, yb in b), [])
        assert order_a == order_b
        assert sorted(order_a) == list(range(37))
        epochs.append(order_a)
    assert epochs[0] != epochs[1] != epochs[2]  # a new permutation each epoch
    assert sum((rows(yb) for _, yb in c), []) != epochs[0]
    for xb, yb in a:  # the tensors' rows stay together
        np.testing.assert_array_equal(xb.numpy()[:, 0], yb.numpy() * 3)


def test_shuffle_epoch_order_matches_randperm():
    # The documented contract, shared with the C++ DataLoader.
    x, y = dataset(20)
    loader = DataLoader((x, y), batch_size=20, shuffle=True, seed=5)
    for epoch in range(2):
        (_, yb), = list(loader)
        want = randperm(20, kiln._C._epoch_seed(5, epoch))
        assert rows(yb) == want.numpy().tolist()


def test_shuffle_without_seed_follows_manual_seed():
    x, y = dataset(50)
    kiln.manual_seed(7)
    first = [rows(yb) for _, yb in DataLoader((x, y), batch_size=50, shuffle=True)]
    kiln.manual_seed(7)
    again = [rows(yb) for _, yb in DataLoader((x, y), batch_size=50, shuffle=True)]
    assert first == again


def test_numpy_generator():
    x, y = dataset(30)
    a = DataLoader((x, y), batch_size=30, shuffle=True, generator=np.random.default_rng(1))
    b = DataLoader((x, y), batch_size=30, shuffle=True, generator=np.random.default_rng(1))
    assert [rows(yb) for _, yb in a] == [rows(yb) for _, yb in b]


def test_single_tensor_yields_tensors():
    x, _ = dataset(10)
    batches = list(DataLoader(x, batch_size=3))
    assert [tuple(b.shape) for b in batches] == [(3, 3), (3, 3), (3, 3), (1, 3)]
    shuffled = list(DataLoader(x, batch_size=5, shuffle=True, seed=0))
    assert all(isinstance(b, kiln.Tensor) for b in shuffled)


def test_generic_dataset_with_collate():
    class Squares(kiln.data.Dataset):
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return kiln.full((2,), float(i * i)), i

    batches = list(DataLoader(Squares(), batch_size=3))
    assert len(batches) == 3
    xb, yb = batches[0]
    assert tuple(xb.shape) == (3, 2) and rows(yb) == [0, 1, 2]
    xb, yb = list(DataLoader(Squares(), batch_size=7, shuffle=True, seed=0))[0]
    assert sorted(rows(yb)) == list(range(7))
    np.testing.assert_array_equal(xb.numpy()[:, 0], np.array(rows(yb)) ** 2)
    custom = list(DataLoader(Squares(), batch_size=4, collate_fn=lambda s: len(s)))
    assert custom == [4, 3]


def test_randperm():
    p = randperm(1000, 42)
    assert p.dtype == kiln.int64
    assert sorted(p.numpy().tolist()) == list(range(1000))
    assert p.numpy().tolist() == randperm(1000, 42).numpy().tolist()
    assert p.numpy().tolist() != randperm(1000, 43).numpy().tolist()
    assert randperm(0, 1).shape == (0,)


def test_errors():
    x, y = dataset()
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader((x, y), batch_size=0)


def test_digits_example_reaches_95_percent(tmp_path):
    """examples/digits.py end to end: DataLoader, nn, AdamW, a schedule, save."""
    import os
    import re
    import subprocess
    import sys
    pytest.importorskip("sklearn")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "python"))
    out = subprocess.run([sys.executable, os.path.join(root, "examples", "digits.py"), "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    accuracies = dict(re.findall(r"(MLP|CNN) ([\d.]+)%", out.stdout.splitlines()[-1]))
    assert set(accuracies) == {"MLP", "CNN"}, out.stdout
    assert all(float(a) >= 95.0 for a in accuracies.values()), out.stdout
    assert (tmp_path / "digits_mlp.safetensors").exists() and (tmp_path / "digits_cnn.safetensors").exists()
