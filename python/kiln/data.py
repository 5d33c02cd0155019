"""kiln.data: datasets and a DataLoader over tensors.

    ds = kiln.data.TensorDataset(x, y)
    for xb, yb in kiln.data.DataLoader(ds, batch_size=64, shuffle=True, seed=0):
        ...

Over tensors, a batch is gathered with one ``index_select`` per tensor
(shuffled) or is a view of consecutive rows (not shuffled): no per-sample
Python loop. Shuffling is reproducible: epoch ``e`` of a loader with seed
``s`` uses ``randperm(n, epoch_seed(s, e))``, the same permutation as the C++
``kiln::data::DataLoader`` with that seed.
"""
import numpy as _np

from . import _C
from ._C import Tensor

__all__ = ["Dataset", "TensorDataset", "DataLoader", "randperm", "default_collate"]


def randperm(n, seed):
    """A permutation of range(n) (int64) that depends only on seed."""
    return _C._randperm(int(n), int(seed) & (2**64 - 1))


def _as_tensor(x):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, _np.ndarray):
        return _C.from_numpy(_np.ascontiguousarray(x))
    raise TypeError(f"expected a kiln Tensor or a NumPy array, got {type(x).__name__}")


class Dataset:
    """A map-style dataset: ``ds[i]`` is sample i and ``len(ds)`` the number of samples."""

    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError


class TensorDataset(Dataset):
    """Samples are the rows (dim 0) of tensors of the same length: ``ds[i]`` is
    ``(t0[i], t1[i], ...)``."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset needs at least one tensor")
        tensors = tuple(_as_tensor(t) for t in tensors)
        for i, t in enumerate(tensors):
            if t.dim() == 0:
                raise ValueError(f"TensorDataset: tensor {i} is 0-d; samples are the rows of dim 0")
            if t.shape[0] != tensors[0].shape[0]:
                raise ValueError(f"TensorDataset: size mismatch between tensors: tensor {i} has "
                                 f"{t.shape[0]} rows, tensor 0 has {tensors[0].shape[0]}")
        self.tensors = tensors

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self):
        return self.tensors[0].shape[0]


def default_collate(samples):
    """Stacks a list of samples: tensors into one tensor, tuples/lists/dicts
    field by field, numbers into a tensor."""
    first = samples[0]
    if isinstance(first, Tensor):
        return _C.stack(samples, 0)
    if isinstance(first, _np.ndarray):
        return _C.from_numpy(_np.ascontiguousarray(_np.stack(samples)))
    if isinstance(first, dict):
        return {k: default_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(default_collate(list(field)) for field in zip(*samples))
    if isinstance(first, (bool, int, float, _np.number)):
        from . import tensor
        return tensor(samples)
    return samples


def _pinned(batch):
    """``batch`` with its cpu tensors in page-locked memory (tuples, lists and
    dicts walked)."""
    if isinstance(batch, Tensor):
        return batch.pin_memory() if batch.device == "cpu" else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_pinned(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _pinned(v) for k, v in batch.items()}
    return batch


class DataLoader:
    """Minibatches of a dataset.

    dataset: a TensorDataset, a tensor (batches are tensors), a tuple/list of
    tensors (batches are tuples), or any map-style dataset (samples fetched
    one by one and combined by collate_fn).
    shuffle: a new permutation each epoch, from ``seed``; without a seed,
    from ``generator`` (a numpy.random.Generator), else from kiln's global
    generator (so ``kiln.manual_seed`` makes it reproducible).
    drop_last: drop the last batch when it is smaller than batch_size.
    pin_memory: batches of cpu tensors come in page-locked memory, which
    copies to a GPU faster (``x.to("cuda", non_blocking=True)``); without a
    GPU it is ignored, as in PyTorch.
    Unshuffled batches of tensors are views of the dataset's rows.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None, generator=None,
                 collate_fn=None, num_workers=0, pin_memory=False, **_ignored):
        # num_workers and PyTorch's other loader options are accepted and
        # ignored: batches are in-memory gathers, workers would not help.
        if batch_size is None or int(batch_size) <= 0:
            raise ValueError(f"batch_size should be a positive integer, got {batch_size}")
        self._single = isinstance(dataset, (Tensor, _np.ndarray))
        if self._single:
            dataset = TensorDataset(dataset)
        elif isinstance(dataset, (tuple, list)) and dataset and all(
                isinstance(t, (Tensor, _np.ndarray)) for t in dataset):
            dataset = TensorDataset(*dataset)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.generator = generator
        self.collate_fn = collate_fn or default_collate
        from . import cuda
        self.pin_memory = bool(pin_memory) and cuda.is_available()
        if seed is None and generator is None and self.shuffle:
            from . import randint
            seed = int(randint(0, 2**62, (1,)).item())
        self.seed = seed
        self._epoch = 0

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, n):
        if self.seed is not None:
            seed = _C._epoch_seed(int(self.seed) & (2**64 - 1), self._epoch)
        else:
            seed = int(self.generator.integers(0, 2**63))
        return randperm(n, seed)

    def __iter__(self):
        return (_pinned(batch) for batch in self._batches()) if self.pin_memory else self._batches()

    def _batches(self):
        n = len(self.dataset)
        order = self._order(n) if self.shuffle else None
        self._epoch += 1
        tensors = self.dataset.tensors if isinstance(self.dataset, TensorDataset) else None
        for b in range(len(self)):
            start = b * self.batch_size
            stop = min(start + self.batch_size, n)
            if tensors is not None:
                if order is None:
                    batch = tuple(t[start:stop] for t in tensors)
                else:
                    index = order[start:stop]
                    # (the permutation is made on the cpu; a dataset on a GPU is gathered there)
                    batch = tuple(t.index_select(0, index if t.device == "cpu" else index.to(t.device))
                                  for t in tensors)
                yield batch[0] if self._single else batch
            else:
                indices = order[start:stop].tolist() if order is not None else range(start, stop)
                yield self.collate_fn([self.dataset[i] for i in indices])
