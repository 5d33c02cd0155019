"""kiln.cache: the on-disk compile cache, seen from Python.

The process's cache is configured once, from the environment, so each test
runs its checks in fresh interpreters with KILN_CACHE_DIR pointing at a
temporary directory (and never touches ~/.cache/kiln).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import kiln

PYTHON_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "python")

pytestmark = pytest.mark.skipif(not hasattr(kiln._C, "_cache_dir"), reason="built without MLIR")


def run(code, cache_dir, timeout=60, **env):
    """Runs `code` in a new interpreter using `cache_dir`; returns its stdout."""
    full_env = dict(os.environ, PYTHONPATH=PYTHON_DIR, KILN_CACHE_DIR=str(cache_dir), **env)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_dir_stats_clear(tmp_path):
    out = run("""
        import json, kiln
        from kiln import _C
        key = [("ir", "func @f"), ("target", "host"), ("kiln", "0.1.0")]
        assert _C._cache_load(key) is None
        _C._cache_store(key, b"object\\x00bytes")
        assert _C._cache_load(key) == b"object\\x00bytes"
        assert kiln.cache._explain_key(key) == "hit"
        before = kiln.cache.stats()
        kiln.cache.clear()
        assert _C._cache_load(key) is None
        print(json.dumps({"dir": kiln.cache.dir(), "before": before, "after": kiln.cache.stats()}))
    """, tmp_path / "c", KILN_CACHE_MAX_BYTES="123456").stdout
    result = json.loads(out)
    assert result["dir"] == str(tmp_path / "c")
    before = result["before"]
    assert (before["hits"], before["misses"], before["stores"], before["corrupt"]) == (1, 1, 1, 0)
    assert before["enabled"] and before["max_bytes"] == 123456
    assert result["after"]["misses"] == 2
    assert os.listdir(tmp_path / "c") == []


def test_entries_persist_across_processes(tmp_path):
    store = """
        from kiln import _C
        _C._cache_store([("ir", "a\\nb\\nc"), ("target", "t")], b"compiled")
    """
    run(store, tmp_path)
    out = run("""
        import kiln
        from kiln import _C
        print(_C._cache_load([("ir", "a\\nb\\nc"), ("target", "t")]))
        print(kiln.cache._explain_key([("ir", "a\\nB\\nc"), ("target", "t")]))
        print(kiln.cache.stats()["hits"])
    """, tmp_path).stdout.splitlines()
    assert out[0] == "b'compiled'"
    assert "ir differs" in out[1] and "line 2" in out[1]
    assert out[2] == "1"


def test_explain_miss_needs_a_jit_function():
    with pytest.raises(TypeError, match="expected a kiln.jit function"):
        kiln.cache.explain_miss(lambda x: x, 1)


def test_unwritable_directory_disables_the_cache(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    proc = run("""
        import kiln
        from kiln import _C
        _C._cache_store([("ir", "f")], b"x")
        assert _C._cache_load([("ir", "f")]) is None
        s = kiln.cache.stats()
        assert not s["enabled"] and s["stores"] == 0, s
        kiln.cache.clear()
        print(kiln.cache._explain_key([("ir", "f")]))
    """, tmp_path / "file" / "cache", KILN_LOG="cache")
    assert "disabled" in proc.stdout
    assert "kiln cache: disabled: cannot create" in proc.stderr


HAMMER = """
    import os, sys, kiln
    from kiln import _C
    worker = int(sys.argv[1])
    blob = bytes((i * 7 + 3) % 256 for i in range(50000))
    shared = [("ir", "shared"), ("target", "t")]
    bad = 0
    for i in range(200):
        _C._cache_store(shared, blob)
        got = _C._cache_load(shared)
        if got is not None and got != blob:
            bad += 1
        _C._cache_store([("ir", f"own-{worker}-{i % 4}"), ("target", "t")], blob)
    s = kiln.cache.stats()
    print(bad, s["corrupt"], s["stores"])
"""


def test_concurrent_processes_hammering_one_key(tmp_path):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR, KILN_CACHE_DIR=str(tmp_path),
               KILN_CACHE_MAX_BYTES=str(300_000))  # small: evictions race with loads
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(HAMMER), str(w)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        bad, corrupt, stores = map(int, out.split())
        assert bad == 0 and corrupt == 0
        assert stores == 400
    names = os.listdir(tmp_path)
    assert all(n.endswith(".kcache") for n in names), names  # no temporary files left
    assert sum(os.path.getsize(tmp_path / n) for n in names) <= 300_000
