"""The on-disk compile cache: compiled kernels keyed by a content hash of
everything they depend on (the simplified IR, the host CPU and its features,
kiln's version, the compile options), so that a second process loads them in
milliseconds instead of compiling again.

The directory is ``$KILN_CACHE_DIR`` (default ``~/.cache/kiln``) and its size
is bounded by ``$KILN_CACHE_MAX_BYTES`` (default 1 GiB), least recently used
entries going first; both are read once, when the cache is first used. Any
number of processes may share the directory. A directory that cannot be
written disables the cache; ``KILN_LOG=cache`` says why.
"""
from . import _C

__all__ = ["dir", "clear", "stats", "explain_miss"]


def dir():  # noqa: A001  (kiln.cache.dir() reads better than dirname())
    """The cache directory, as a string."""
    return _C._cache_dir()


def clear():
    """Deletes every cache entry (and nothing else) in ``dir()``."""
    _C._cache_clear()


def stats():
    """This process's counts: ``hits``, ``misses``, ``stores``, ``evictions``
    and ``corrupt`` (bad entries found and deleted), plus ``enabled`` and
    ``max_bytes``."""
    return _C._cache_stats()


def explain_miss(f, *args, **kwargs):
    """Why calling the jit function ``f`` with these arguments would not find
    its compiled code in the cache: ``"hit"``, or which part of the key
    differs from the nearest entry ("ir differs from the nearest of 3
    entries: first difference at line 3: ...", "target differs ...")."""
    key = getattr(f, "_cache_key", None)
    if key is None:
        raise TypeError(f"kiln.cache.explain_miss: expected a kiln.jit function, got {f!r}")
    return _explain_key(key(*args, **kwargs))


def _explain_key(parts):
    """explain_miss for a key given as (name, value) pairs."""
    return _C._cache_explain_miss([(str(n), str(v)) for n, v in parts])
