"""kiln.jit(f, compile=True): traced elementwise functions compiled to native CPU code
(kiln -> linalg -> fused -> bufferized -> llvm -> ORC JIT), checked against eager.

Differential tests on random elementwise chains over random broadcastable static shapes
(1-sized and odd dims included), in float32 and float64. Tolerances: the compiled code is
not bitwise equal to eager: float32 exp, log, tanh, erf, sin, cos, log1p, expm1 use MLIR's
polynomial approximations (a few ulp, so that loops vectorize; erf a rational one), and LLVM may reorder
nothing else (no fast-math). Over chains of up to 10 ops that gives rtol = atol = 2e-5 for
float32; float64 calls libm (or LLVM intrinsics) and agrees to 1e-12.

Ops the compiler does not lower run on the eager kernels between the compiled kernels, and
KILN_LOG=compile says which and why; check=True compares every call with eager.
"""
import sys

import numpy as np
import pytest

import kiln

TOL = {np.float32: 2e-5, np.float64: 1e-12}


def note(f):
    (entry,) = f._entries.values()
    return entry.compile_note


def pos(v):
    return v.abs() + 0.5


UNARY = {
    "neg": lambda v: -v,
    "abs": lambda v: v.abs(),
    "exp": lambda v: kiln.exp(v.clamp(-4, 4)),
    "log": lambda v: kiln.log(pos(v)),
    "sqrt": lambda v: kiln.sqrt(pos(v)),
    "rsqrt": lambda v: kiln.rsqrt(pos(v)),
    "sin": kiln.sin,
    "cos": kiln.cos,
    "tanh": kiln.tanh,
    "sigmoid": kiln.sigmoid,
    "relu": kiln.relu,
    "silu": kiln.silu,
    "gelu": kiln.gelu,
    "erf": kiln.erf,
    "log1p": lambda v: kiln.log1p(v.abs()),
    "expm1": lambda v: kiln.expm1(v.clamp(-3, 3)),
    "floor": kiln.floor,
    "sign": kiln.sign,
    "clamp": lambda v: v.clamp(-0.5, 0.75),
    "scale": lambda v: v * 0.5 + 1.0,
}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / pos(b),
    "maximum": kiln.maximum,
    "minimum": kiln.minimum,
    "where": lambda a, b: kiln.where(a > b, a, b),
    "where_scalar": lambda a, b: kiln.where(a <= b, a, 0.25),
    "pow": lambda a, b: kiln.pow(pos(a), b.clamp(-2, 2)),
}


def random_shapes(rng, n):
    rank = int(rng.integers(0, 5))
    base = [int(rng.choice([1, 2, 3, 5, 7, 17])) for _ in range(rank)]
    shapes = []
    for _ in range(n):
        r = int(rng.integers(0, rank + 1))
        s = base[rank - r:]
        shapes.append(tuple(1 if rng.random() < 0.3 else d for d in s))
    shapes[0] = tuple(base)  # the result has the full shape
    return shapes


def make_chain(rng, n_inputs, length):
    steps = []
    for _ in range(length):
        if rng.random() < 0.5:
            steps.append(("u", str(rng.choice(list(UNARY)))))
        else:
            steps.append(("b", str(rng.choice(list(BINARY))), int(rng.integers(0, n_inputs))))

    def chain(*xs):
        v = xs[0]
        for step in steps:
            if step[0] == "u":
                v = UNARY[step[1]](v)
            else:
                v = BINARY[step[1]](v, xs[step[2]])
            v = kiln.tanh(v) * 3 if abs(hash(step)) % 3 == 0 else v  # keep values in range
        return v

    return chain, steps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(40))
def test_random_elementwise_chain_compiled_equals_eager(dtype, seed):
    rng = np.random.default_rng(seed)
    n_inputs = int(rng.integers(1, 4))
    shapes = random_shapes(rng, n_inputs)
    xs = [kiln.from_numpy(rng.standard_normal(s).astype(dtype)) for s in shapes]
    chain, steps = make_chain(rng, n_inputs, int(rng.integers(1, 11)))
    f = kiln.jit(chain, compile=True)
    got = f(*xs)
    assert note(f).startswith("compiled"), (steps, note(f))
    want = chain(*xs)
    assert got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=TOL[dtype], atol=TOL[dtype], err_msg=str(steps))
    # a second call reuses the compiled code
    np.testing.assert_allclose(f(*xs).numpy(), want.numpy(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_unary_op(name, dtype):
    x = kiln.from_numpy(np.linspace(-3, 3, 67).astype(dtype).reshape(1, 67))
    f = kiln.jit(UNARY[name], compile=True)
    got = f(x)
    assert note(f).startswith("compiled"), note(f)
    np.testing.assert_allclose(got.numpy(), UNARY[name](x).numpy(), rtol=TOL[dtype], atol=TOL[dtype])


def test_comparisons_bool_results_and_mixed_dtypes():
    rng = np.random.default_rng(1)
    a = kiln.from_numpy(rng.standard_normal((4, 1, 3)).astype(np.float32))
    b = kiln.from_numpy(rng.standard_normal((5, 1)).astype(np.float64))
    c = kiln.from_numpy(np.array([1, -2, 3], dtype=np.int32))

    def g(a, b, c):
        return (a < b), (a == a), kiln.logical_and(a > 0, b > 0), a * b + c, (a + c).exp()

    f = kiln.jit(g, compile=True)
    got, want = f(a, b, c), g(a, b, c)
    assert note(f).startswith("compiled"), note(f)
    for x, y in zip(got, want):
        assert x.dtype == y.dtype and tuple(x.shape) == tuple(y.shape)
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=2e-5, atol=2e-5)


def test_constants_full_and_returned_argument():
    def g(x):
        return x, kiln.full((2, 3), 1.5) * 2, kiln.full_like(x, 3.0) - x

    x = kiln.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    f = kiln.jit(g, compile=True)
    got, want = f(x), g(x)
    assert note(f).startswith("compiled"), note(f)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_non_contiguous_input():
    x = kiln.from_numpy(np.random.default_rng(2).standard_normal((5, 7)).astype(np.float32)).t()
    f = kiln.jit(lambda v: kiln.tanh(v) + 1, compile=True)
    np.testing.assert_allclose(f(x).numpy(), (kiln.tanh(x) + 1).numpy(), rtol=2e-5, atol=2e-5)


def test_fused_stage_is_one_kernel():
    def g(x, y):
        h = x * y + 1.0
        return kiln.tanh(h) * kiln.exp(-h) + h  # h has three uses: fused anyway

    x, y = kiln.ones(4, 8), kiln.ones(8)
    f = kiln.jit(g, compile=True)
    lowered = f.lower(x, y)
    assert lowered.ir("linalg").count("linalg.generic") > 1
    assert lowered.ir("fused").count("linalg.generic") == 1
    assert "memref" in lowered.ir("bufferized")
    assert "llvm.func" in lowered.ir("llvm")


def test_ops_that_do_not_lower_run_eagerly_between_kernels(monkeypatch, capfd):
    monkeypatch.setenv("KILN_LOG", "compile")

    w = kiln.from_numpy(np.arange(8, dtype=np.float32).reshape(4, 2))

    def g(x):
        return (x * 2) @ w + 1  # matmul stays an eager op (BLAS)

    x = kiln.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
    f = kiln.jit(g, compile=True)
    np.testing.assert_array_equal(f(x).numpy(), g(x).numpy())
    assert note(f).startswith("compiled") and "2 kernel(s), 1 op(s) on the eager kernels" in note(f)
    err = capfd.readouterr().err
    assert "eager: kiln.matmul at" in err and "test_jit_compile.py" in err
    [stats] = f.stats()
    assert stats["compiled"] and stats["kernels_per_call"] == 2 and stats["eager_ops_per_call"] == 1
    assert stats["peak_intermediate_bytes"] >= 12 * 4
    fused = f.lower(x).ir("fused")
    assert "kiln.matmul" in fused and fused.count("call @k") == 2


def test_captures_and_other_dtypes_compile():
    w = kiln.ones(3)
    f = kiln.jit(lambda x: x * w, compile=True)
    x = kiln.ones(3)
    np.testing.assert_array_equal(f(x).numpy(), (x * w).numpy())
    assert note(f).startswith("compiled")
    w.mul_(2)  # captured by reference: the compiled code reads its current value
    np.testing.assert_array_equal(f(x).numpy(), (x * w).numpy())
    h = kiln.jit(lambda x: x + 1, compile=True)
    xi = kiln.from_numpy(np.arange(3, dtype=np.int64))
    np.testing.assert_array_equal(h(xi).numpy(), (xi + 1).numpy())
    assert note(h).startswith("compiled")


def test_requires_grad_arguments_run_the_graph():
    x = kiln.ones(3).requires_grad_()
    f = kiln.jit(lambda v: (v * 2).exp(), compile=True)
    y = f(x)
    assert "requires grad" in note(f)
    y.sum().backward()
    assert x.grad is not None


def test_compile_is_the_default_and_can_be_turned_off():
    f = kiln.jit(lambda v: v + 1)
    f(kiln.ones(2))
    assert note(f).startswith("compiled")
    g = kiln.jit(lambda v: v + 1, compile=False)
    g(kiln.ones(2))
    assert note(g) is None  # the graph executor
    before = kiln.config.compile_by_default
    kiln.config.compile_by_default = False
    try:
        h = kiln.jit(lambda v: v + 1)
        h(kiln.ones(2))
        assert note(h) is None
    finally:
        kiln.config.compile_by_default = before


def test_deep_shared_subexpressions_fuse_without_blowup():
    """h feeds two operands of the next op at every level: fusing multi-use producers naively
    would copy the producer per operand (2**depth ops); the merged operands keep it linear."""
    def g(x):
        h = x
        for _ in range(40):
            h = kiln.tanh(h * h + h)
        return h

    x = kiln.from_numpy(np.linspace(-1, 1, 9).astype(np.float32))
    f = kiln.jit(g, compile=True)
    assert f.lower(x).ir("fused").count("linalg.generic") == 1
    np.testing.assert_allclose(f(x).numpy(), g(x).numpy(), rtol=1e-4, atol=1e-5)
    assert note(f).startswith("compiled")


def test_check_mode_passes_within_tolerance_and_names_the_first_diverging_op():
    x = kiln.from_numpy(np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32))

    def g(x):
        y = x * 2.0
        z = y.exp()  # compiled: a polynomial approximation; eager: libm
        return z + 1.0

    ok = kiln.jit(g, check=True)
    np.testing.assert_allclose(ok(x).numpy(), g(x).numpy(), rtol=1e-5)
    assert note(ok).startswith("compiled")
    strict = kiln.jit(g, check={"rtol": 0.0, "atol": 0.0})
    with pytest.raises(kiln.CheckError, match=r"first at kiln\.exp \(.*test_jit_compile\.py:\d+\)"):
        strict(x)


def test_check_mode_writes_nothing_back_when_results_differ():
    p = kiln.from_numpy(np.linspace(-3, 3, 1000, dtype=np.float32))
    before = p.numpy().copy()

    def step(g):
        with kiln.no_grad():
            p.sub_(g.exp())

    strict = kiln.jit(step, check={"rtol": 0.0, "atol": 0.0})
    g = kiln.from_numpy(np.linspace(-2, 2, 1000, dtype=np.float32))
    with pytest.raises(kiln.CheckError, match="kiln.exp"):
        strict(g)
    np.testing.assert_array_equal(p.numpy(), before)
    kiln.jit(step, check=True)(g)
    np.testing.assert_allclose(p.numpy(), before - np.exp(np.linspace(-2, 2, 1000, dtype=np.float32)), rtol=1e-5)


def test_dump_ir_writes_every_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_DUMP_IR", str(tmp_path))
    f = kiln.jit(lambda x: (x * 2).relu(), compile=True)
    f(kiln.ones(4))
    [folder] = list(tmp_path.iterdir())
    names = sorted(p.name for p in folder.iterdir())
    stages = sys.modules["kiln.jit"].Lowered.STAGES
    assert names == [f"{n}-{s}." + ("ll" if s == "optimized" else "mlir") for n, s in enumerate(stages)]
    assert "llvm.func" in (folder / f"{stages.index('llvm')}-llvm.mlir").read_text()
    assert "define void @k0" in (folder / f"{len(stages) - 1}-optimized.ll").read_text()


def test_algebraic_simplification():
    def g(x, y):
        a = (x * 1.0 + 0.0) - 0.0
        b = -(-a) / 1.0
        c = b.permute(1, 0).permute(1, 0)  # back to x's layout: gone
        d = y.permute(2, 0, 1).permute(2, 0, 1)  # composes to one permute (1, 2, 0)
        return c * 2.0, d.reshape(6, 4).reshape(2, 12)
    x = kiln.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    y = kiln.from_numpy(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    text = kiln.jit(g).lower(x, y).ir("simplified", locations=False)
    assert "kiln.neg" not in text and "kiln.div" not in text and "kiln.add" not in text and "kiln.sub" not in text
    assert text.count("kiln.mul") == 1 and text.count("kiln.permute") == 1 and "array<i64: 1, 2, 0>" in text
    assert text.count("kiln.reshape") == 1
    f = kiln.jit(g, compile=True)
    for got, want in zip(f(x, y), g(x, y)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_linear_is_decomposed_so_its_bias_fuses_with_the_activation():
    import kiln.nn as knn
    layer = knn.Linear(8, 5)
    g = lambda x: kiln.nn.functional.relu(layer(x))  # noqa: E731
    x = kiln.from_numpy(np.random.default_rng(3).standard_normal((6, 8)).astype(np.float32))
    lowered = kiln.jit(g).lower(x)
    assert "kiln.linear" in lowered.ir("simplified")
    decomposed = lowered.ir("decomposed")
    assert "bias" not in decomposed and "kiln.linear" in decomposed and "kiln.add" in decomposed
    f = kiln.jit(g, compile=True)
    with kiln.no_grad():
        np.testing.assert_allclose(f(x).numpy(), g(x).numpy(), rtol=1e-5, atol=1e-6)
    assert f.stats()[0]["kernels_per_call"] == 1  # bias add + relu


@pytest.mark.parametrize("threads", [1, 3])
def test_softmax_and_layer_norm_are_one_kernel_each_and_equal_eager(threads):
    import kiln.nn.functional as F
    rng = np.random.default_rng(7)
    x = kiln.from_numpy((rng.standard_normal((301, 257)) * 4).astype(np.float32))
    w = kiln.from_numpy(rng.standard_normal(257).astype(np.float32))
    b = kiln.from_numpy(rng.standard_normal(257).astype(np.float32))
    before = kiln.get_num_threads()
    kiln.set_num_threads(threads)
    try:
        for fn, args in [(lambda x: F.softmax(x * 0.5, dim=-1), (x,)),
                         (lambda x: F.log_softmax(x, dim=1), (x,)),
                         (lambda x, w, b: F.layer_norm(x, (257,), w, b), (x, w, b))]:
            f = kiln.jit(fn, compile=True)
            np.testing.assert_allclose(f(*args).numpy(), fn(*args).numpy(), rtol=1e-4, atol=1e-5)
            [s] = f.stats()
            assert s["kernels_per_call"] == 1 and s["eager_ops_per_call"] == 0, s
    finally:
        kiln.set_num_threads(before)


def test_equal_results_are_distinct_tensors():
    f = kiln.jit(lambda v: (v * 2, v * 2), compile=True)  # CSE makes them one value
    a, b = f(kiln.ones(3))
    a.add_(1)
    assert b.numpy().tolist() == [2.0, 2.0, 2.0]


def test_captured_state_is_updated_in_place_by_its_kernel():
    import kiln.nn as knn
    import kiln.nn.functional as F
    model = knn.Linear(6, 3)
    opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = kiln.from_numpy(np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6))
    y = kiln.from_numpy(np.array([0, 1, 2, 1]))

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    ref = knn.Linear(6, 3)
    ref.load_state_dict(model.state_dict())
    ref_opt = kiln.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    weight_view = model.weight[0]  # a view the user holds sees the in-place update
    f = kiln.jit(step)
    for _ in range(3):
        f(x, y)
        loss = F.cross_entropy(ref(x), y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
    np.testing.assert_allclose(model.weight.numpy(), ref.weight.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weight_view.numpy(), ref.weight.numpy()[0], rtol=1e-5, atol=1e-6)
    assert "kiln.in_place" in f.lower(x, y).ir("fused")


def test_loops_vectorize_to_the_host_simd_width():
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    width = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    f = kiln.jit(lambda x, y: (x * y + 1.0).exp().sum(dim=-1))
    text = f.lower(kiln.ones(64, 256), kiln.ones(256)).ir("optimized")
    assert f"<{width} x float>" in text, "the elementwise loop and the reduction did not vectorize"
    assert "reassoc" in text  # the sum's adds may reorder: that is what lets them vectorize


def test_dynamic_dims_compile_once_per_call_shape():
    import kiln.nn.functional as F
    w = kiln.from_numpy(np.linspace(-1, 1, 8, dtype=np.float32))

    def g(x):
        return F.softmax(x * w + 1.0, dim=-1).sum(dim=0)

    f = kiln.jit(g, dynamic={"x": 0})
    for rows in (3, 5, 3, 1):
        x = kiln.from_numpy(np.random.default_rng(rows).standard_normal((rows, 8)).astype(np.float32))
        np.testing.assert_allclose(f(x).numpy(), g(x).numpy(), rtol=1e-5, atol=1e-6)
    assert f.num_traces == 1
    [s] = f.stats()
    assert s["note"] == "compiled per call shape (dynamic dims)" and s["kernels_per_call"] >= 1
    assert s["eager_ops_per_call"] == 0
    with pytest.raises(kiln.ShapeError, match=r"mul: shapes \(2, 9\) and \(8,\) cannot be broadcast"):
        f(kiln.ones(2, 9))  # as eagerly: the error of the op, at the call's shapes


def test_a_sum_of_many_inputs_compiles_within_the_kernel_buffer_limit():
    xs = [kiln.from_numpy(np.full((3, 5), float(i), np.float32)) for i in range(150)]

    def g(*xs):
        total = xs[0] * 1.5
        for x in xs[1:]:
            total = total + x * 0.5
        return total

    f = kiln.jit(g)
    np.testing.assert_allclose(f(*xs).numpy(), g(*xs).numpy(), rtol=1e-5)
    assert f.stats()[0]["compiled"] and f.stats()[0]["eager_ops_per_call"] == 0


def test_large_outputs_are_written_with_aligned_streaming_stores():
    # 2048 x 2048 float32 = 16 MiB: at the streaming threshold (codegen/streaming_stores.h)
    x = kiln.from_numpy(np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32))
    f = kiln.jit(lambda x: x * 1.5 + 1.0)
    text = f.lower(x).ir("optimized")
    stores = [line for line in text.splitlines() if "!nontemporal" in line and line.lstrip().startswith("store")]
    assert stores and all("x float>" in s and "align 64" in s for s in stores), stores[:3]
    # (one fused multiply-add: within an ulp of eager's two roundings)
    np.testing.assert_allclose(f(x).numpy(), (x * 1.5 + 1.0).numpy(), rtol=2e-7, atol=5e-7)
    small = kiln.jit(lambda x: x * 1.5 + 1.0).lower(kiln.ones(64, 64)).ir("optimized")
    assert "!nontemporal" not in small  # the next kernel reads it from cache


@pytest.mark.parametrize("cols", [4096, 4099])
def test_softmax_stages_its_exponentials_and_streams_the_output(cols):
    # rows of 4099 floats are not 64-byte aligned: LLVM cannot prove the
    # vector stores aligned, and the non-temporal hint is dropped, not split
    rng = np.random.default_rng(cols)
    x = rng.standard_normal((1100, cols)).astype(np.float32) * 4
    x[3, 7] = np.nan
    x[5, :] = -np.inf
    f = kiln.jit(lambda x: kiln.nn.functional.softmax(x, dim=-1))
    assert "alloca" in f.lower(kiln.from_numpy(x)).ir("llvm")
    optimized = f.lower(kiln.from_numpy(x)).ir("optimized")
    assert all("align 64" in line for line in optimized.splitlines() if "!nontemporal" in line)
    for threads in (1, 2):
        kiln.set_num_threads(threads)
        try:
            got = f(kiln.from_numpy(x)).numpy()
        finally:
            kiln.set_num_threads(2)
        want = kiln.nn.functional.softmax(kiln.from_numpy(x), dim=-1).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, equal_nan=True)
        assert np.isnan(got[3]).all() and np.isnan(got[5]).all()


def test_exp_is_accurate_over_the_float32_range():
    x = np.concatenate([np.linspace(-86.9, 88.7, 400_001), [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    got = kiln.jit(lambda x: x.exp())(kiln.from_numpy(x)).numpy().astype(np.float64)
    want = np.exp(x.astype(np.float64))
    ulps = np.abs(got - want) / np.spacing(want.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.25, f"max error {ulps.max():.2f} ulp at x = {x[np.argmax(ulps)]}"
    special = np.float32([np.nan, np.inf, -np.inf, 89.0, -88.0, -1000.0])
    got = kiln.jit(lambda x: x.exp())(kiln.from_numpy(special)).numpy()
    np.testing.assert_array_equal(got, [np.nan, np.inf, 0.0, np.inf, 0.0, 0.0])  # below ~1.6e-38 flushes to 0


@pytest.mark.parametrize("scale", [1.0, 0.70710678, 3.0])
def test_erf_of_a_scaled_input_is_accurate(scale):
    import math
    x = np.linspace(-8, 8, 40_001).astype(np.float32)
    got = kiln.jit(lambda x: (x * scale).erf())(kiln.from_numpy(x)).numpy().astype(np.float64)
    scaled = (x * np.float32(scale)).astype(np.float32)
    want = np.array([math.erf(float(v)) for v in scaled])
    assert np.abs(got - want).max() < 5e-7


def test_softmax_prefetches_the_next_row_while_it_computes_exponentials():
    x = np.random.default_rng(7).standard_normal((1030, 4100)).astype(np.float32)
    f = kiln.jit(lambda x: kiln.nn.functional.log_softmax(x, dim=-1) * 2.0)
    assert "llvm.prefetch" in f.lower(kiln.from_numpy(x)).ir("optimized")
    np.testing.assert_allclose(f(kiln.from_numpy(x)).numpy(),
                               (kiln.nn.functional.log_softmax(kiln.from_numpy(x), dim=-1) * 2.0).numpy(),
                               rtol=1e-5, atol=1e-5)
    # small inputs stay in cache; layer_norm's passes are memory-bound: neither prefetches
    assert "llvm.prefetch" not in f.lower(kiln.ones(64, 4096)).ir("optimized")
    g = kiln.jit(lambda x: kiln.nn.functional.layer_norm(x, (4100,)))
    assert "llvm.prefetch" not in g.lower(kiln.from_numpy(x)).ir("optimized")


@pytest.mark.parametrize("threads", [1, 2])
def test_wide_column_reductions_split_their_columns_over_threads(threads):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((301, 4103)).astype(np.float32)
    x[5, 7] = np.nan
    fns = {"sum": (lambda t: t.sum(0), lambda a: a.sum(0)),
           "mean of 2x": (lambda t: (t * 2).mean(0), lambda a: (a * 2).mean(0)),
           "max": (lambda t: t.amax(0), lambda a: a.max(0)),
           "sum of squared deviations": (lambda t: ((t - t.mean(0)) ** 2).sum(0),
                                         lambda a: ((a - a.mean(0)) ** 2).sum(0))}
    kiln.set_num_threads(threads)
    try:
        for name, (f, ref) in fns.items():
            g = kiln.jit(f)
            got = g(kiln.from_numpy(x)).numpy()
            np.testing.assert_allclose(got, ref(x.astype(np.float64)), rtol=1e-4, atol=1e-3, equal_nan=True,
                                       err_msg=name)
            assert all(k["parallel_rows"] == 4103 for k in g.stats()[0]["kernels"]), name
    finally:
        kiln.set_num_threads(2)
    # rows of 1 KiB would be read in pieces too short to stream: the kernel runs whole
    narrow = kiln.jit(lambda t: t.sum(0))
    narrow(kiln.ones(64, 256))
    assert narrow.stats()[0]["kernels"][0]["parallel_rows"] == 0
