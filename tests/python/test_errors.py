"""Bad inputs raise the right Python exception (ShapeError is a ValueError,
DTypeError a TypeError, out-of-range dims and indices IndexError) and never
crash the interpreter: the whole table also runs in a child process."""
import os
import subprocess
import sys
import textwrap

import pytest

import kiln

# (id, code, expected exception name). The code runs with `kiln`, `np` and
# x = kiln.ones(2, 3) in scope.
BAD_INPUTS = [
    # mismatched shapes -> ShapeError (a ValueError)
    ("add_broadcast", "kiln.ones(3) + kiln.ones(4)", "ShapeError"),
    ("mul_broadcast_2d", "kiln.ones(2, 3) * kiln.ones(3, 2)", "ShapeError"),
    ("function_broadcast", "kiln.maximum(kiln.ones(2, 3), kiln.ones(2))", "ShapeError"),
    ("compare_broadcast", "kiln.ones(5) < kiln.ones(2)", "ShapeError"),
    ("iadd_grow", "y = kiln.ones(3); y += kiln.ones(2, 3)", "ShapeError"),
    ("where_shapes", "kiln.where(kiln.ones(3, dtype=kiln.bool), kiln.ones(4), 0.0)", "ShapeError"),
    ("matmul_inner", "kiln.ones(2, 3) @ kiln.ones(2, 3)", "ShapeError"),
    ("matmul_batch", "kiln.ones(2, 3, 4) @ kiln.ones(3, 4, 5)", "ShapeError"),
    ("matmul_0d", "kiln.matmul(kiln.tensor(2.0), kiln.ones(2))", "ShapeError"),
    ("cat_shapes", "kiln.cat([kiln.ones(2, 3), kiln.ones(2, 4)])", "ShapeError"),
    ("cat_0d", "kiln.cat([kiln.tensor(1.0)])", "ShapeError"),
    ("stack_shapes", "kiln.stack([kiln.ones(2), kiln.ones(3)])", "ShapeError"),
    ("view_numel", "kiln.ones(6).view(4)", "ShapeError"),
    ("view_strides", "x.T.view(6)", "ShapeError"),
    ("reshape_numel", "x.reshape(4, -1)", "ShapeError"),
    ("expand_bad", "x.expand(4, 3)", "ShapeError"),
    ("broadcast_to_bad", "kiln.broadcast_to(x, (3,))", "ShapeError"),
    ("permute_len", "x.permute(0)", "ShapeError"),
    ("layer_norm_shape", "kiln.layer_norm(x, (2,))", "ShapeError"),
    ("layer_norm_weight", "kiln.layer_norm(x, (3,), kiln.ones(2))", "ShapeError"),
    ("masked_fill_shape", "x.masked_fill(kiln.ones(4, dtype=kiln.bool), 0)", "ShapeError"),
    ("gather_ndim", "x.gather(1, kiln.zeros(2, dtype=kiln.int64))", "ShapeError"),
    ("scatter_add_ndim", "x.scatter_add(0, kiln.zeros(2, dtype=kiln.int64), kiln.ones(2))", "ShapeError"),
    ("index_select_2d_index", "x.index_select(0, kiln.zeros(1, 1, dtype=kiln.int64))", "ShapeError"),
    ("setitem_shape", "y = kiln.zeros(2, 3); y[0] = kiln.ones(2)", "ShapeError"),
    ("index_put_shape", "y = kiln.zeros(3); y[kiln.tensor([0, 1])] = kiln.ones(3)", "ShapeError"),
    ("copy_shape", "kiln.zeros(2, 3).copy_(kiln.ones(4))", "ShapeError"),
    ("split_sizes", "x.split([1, 3], 1)", "ShapeError"),
    ("tensor_ragged", "kiln.tensor([[1, 2], [3]])", "ShapeError"),
    ("zeros_negative", "kiln.zeros(2, -1)", "ShapeError"),
    ("t_3d", "kiln.ones(2, 2, 2).t()", "ShapeError"),
    ("broadcast_tensors", "kiln.broadcast_tensors(kiln.ones(2), kiln.ones(3))", "ShapeError"),
    # wrong dtypes -> DTypeError (a TypeError)
    ("bitwise_float", "kiln.ones(2) & kiln.ones(2)", "DTypeError"),
    ("bitwise_not_float", "~kiln.ones(2)", "DTypeError"),
    ("xor_scalar_float", "kiln.arange(3) ^ 1.5", "DTypeError"),
    ("neg_bool", "-kiln.ones(2, dtype=kiln.bool)", "DTypeError"),
    ("floor_bool", "kiln.floor(kiln.ones(2, dtype=kiln.bool))", "DTypeError"),
    ("exp_inplace_int", "kiln.arange(3).exp_()", "DTypeError"),
    ("iadd_float_into_int", "y = kiln.arange(3); y += 0.5", "DTypeError"),
    ("idiv_int", "y = kiln.arange(3); y /= 2", "DTypeError"),
    ("iadd_into_bool", "y = kiln.ones(2, dtype=kiln.bool); y += 1", "DTypeError"),
    ("mean_int", "kiln.arange(3).mean()", "DTypeError"),
    ("var_int", "kiln.arange(3).var()", "DTypeError"),
    ("softmax_int", "kiln.softmax(kiln.arange(3), 0)", "DTypeError"),
    ("layer_norm_int", "kiln.layer_norm(kiln.arange(3), (3,))", "DTypeError"),
    ("matmul_bool", "kiln.ones(2, 2, dtype=kiln.bool) @ kiln.ones(2, 2, dtype=kiln.bool)", "DTypeError"),
    ("where_cond_float", "kiln.where(kiln.ones(2), x, x)", "DTypeError"),
    ("masked_fill_mask_int", "x.masked_fill(kiln.ones(3, dtype=kiln.int64), 0)", "DTypeError"),
    ("masked_fill_value", "x.masked_fill(kiln.ones(3, dtype=kiln.bool), 'a')", "DTypeError"),
    ("one_hot_float", "kiln.one_hot(kiln.ones(2), 3)", "DTypeError"),
    ("index_select_float_index", "x.index_select(0, kiln.zeros(1))", "DTypeError"),
    ("gather_float_index", "x.gather(0, kiln.zeros(1, 1))", "DTypeError"),
    ("scatter_add_src_dtype", "x.scatter_add(0, kiln.zeros(1, 1, dtype=kiln.int64), "
                              "kiln.ones(1, 1, dtype=kiln.float64))", "DTypeError"),
    ("rand_int", "kiln.rand(3, dtype=kiln.int32)", "DTypeError"),
    ("randn_bool", "kiln.randn(3, dtype=kiln.bool)", "DTypeError"),
    ("from_numpy_complex", "kiln.from_numpy(np.zeros(2, np.complex64))", "DTypeError"),
    ("from_numpy_int16", "kiln.from_numpy(np.zeros(2, np.int16))", "DTypeError"),
    ("numpy_bf16", "kiln.ones(2, dtype=kiln.bfloat16).numpy()", "DTypeError"),
    ("dtype_name", "kiln.ones(2, dtype='float8')", "DTypeError"),
    ("dtype_object", "kiln.ones(2, dtype=object())", "DTypeError"),
    ("to_bad_dtype", "x.to('complex64')", "DTypeError"),
    ("tensor_strings", "kiln.tensor(['a'])", "DTypeError"),
    ("full_string", "kiln.full((2,), 'a')", "DTypeError"),
    ("clamp_string", "x.clamp('a')", "DTypeError"),
    ("reshape_float", "x.reshape(1.5, 4)", "DTypeError"),
    ("sum_float_dim", "x.sum(dim=0.5)", "DTypeError"),
    ("add_string", "x + 'a'", "TypeError"),
    ("matmul_string", "x @ 'a'", "DTypeError"),
    ("index_as_float", "[1, 2][kiln.tensor(1.0)]", "DTypeError"),
    ("len_0d", "len(kiln.tensor(1.0))", "DTypeError"),
    # out-of-range dims and indices -> IndexError
    ("getitem_int", "x[2]", "IndexError"),
    ("getitem_neg", "x[-3]", "IndexError"),
    ("getitem_second_dim", "x[0, 3]", "IndexError"),
    ("getitem_too_many", "x[0, 0, 0]", "IndexError"),
    ("getitem_0d", "kiln.tensor(1.0)[0]", "IndexError"),
    ("getitem_tensor", "x[kiln.tensor([0, 2])]", "IndexError"),
    ("getitem_neg_tensor", "x[:, kiln.tensor([-4])]", "IndexError"),
    ("getitem_list", "x[[5]]", "IndexError"),
    ("getitem_float", "x[0.5]", "IndexError"),
    ("getitem_float_tensor", "x[kiln.tensor([0.0])]", "IndexError"),
    ("getitem_str", "x['a']", "IndexError"),
    ("getitem_two_ellipsis", "x[..., ...]", "IndexError"),
    ("getitem_mask_shape", "x[kiln.tensor([True, False, True])]", "IndexError"),
    ("getitem_arrays_broadcast", "x[kiln.tensor([0, 1]), kiln.tensor([0, 1, 2])]", "IndexError"),
    ("setitem_out_of_range", "y = kiln.zeros(3); y[3] = 1", "IndexError"),
    ("setitem_tensor_out_of_range", "y = kiln.zeros(3); y[kiln.tensor([7])] = 1", "IndexError"),
    ("sum_dim", "x.sum(dim=2)", "IndexError"),
    ("sum_dims", "x.sum(dim=(0, -3))", "IndexError"),
    ("mean_dim", "x.mean(-3)", "IndexError"),
    ("amax_dim", "x.amax(5)", "IndexError"),
    ("max_dim", "x.max(2)", "IndexError"),
    ("argmax_dim", "x.argmax(-3)", "IndexError"),
    ("var_dim", "x.var(4)", "IndexError"),
    ("logsumexp_dim", "x.logsumexp(2)", "IndexError"),
    ("any_dim", "x.any(3)", "IndexError"),
    ("softmax_dim", "kiln.softmax(x, 2)", "IndexError"),
    ("log_softmax_dim", "x.log_softmax(-3)", "IndexError"),
    ("cat_dim", "kiln.cat([x, x], 2)", "IndexError"),
    ("stack_dim", "kiln.stack([x, x], 4)", "IndexError"),
    ("transpose_dim", "x.transpose(0, 2)", "IndexError"),
    ("unsqueeze_dim", "x.unsqueeze(4)", "IndexError"),
    ("squeeze_dim", "x.squeeze(2)", "IndexError"),
    ("flatten_dim", "x.flatten(0, 2)", "IndexError"),
    ("size_dim", "x.size(2)", "IndexError"),
    ("stride_dim", "x.stride(-3)", "IndexError"),
    ("narrow_range", "x.narrow(1, 2, 2)", "IndexError"),
    ("select_range", "x.select(1, 3)", "IndexError"),
    ("select_dim", "x.select(2, 0)", "IndexError"),
    ("split_dim", "x.split(1, 2)", "IndexError"),
    ("chunk_dim", "x.chunk(2, -3)", "IndexError"),
    ("index_select_dim", "x.index_select(2, kiln.tensor([0]))", "IndexError"),
    ("index_select_index", "x.index_select(1, kiln.tensor([3]))", "IndexError"),
    ("gather_dim", "x.gather(2, kiln.zeros(1, 1, dtype=kiln.int64))", "IndexError"),
    ("gather_index", "x.gather(1, kiln.full((1, 1), 3))", "IndexError"),
    ("scatter_add_index", "x.scatter_add(0, kiln.full((1, 1), -1), kiln.ones(1, 1))", "IndexError"),
    ("one_hot_range", "kiln.one_hot(kiln.tensor([3]), 3)", "IndexError"),
    ("one_hot_negative", "kiln.one_hot(kiln.tensor([-1]))", "IndexError"),
    ("amax_empty", "kiln.zeros(0).amax()", "IndexError"),
    ("argmax_empty", "kiln.zeros(2, 0).argmax(1)", "IndexError"),
    ("max_empty_dim", "kiln.zeros(0, 3).max(0)", "IndexError"),
    ("permute_dim", "x.permute(0, 2)", "IndexError"),
    # other bad values -> ValueError
    ("bool_ambiguous", "bool(x)", "ValueError"),
    ("item_many", "x.item()", "ValueError"),
    ("arange_step", "kiln.arange(0, 3, 0)", "ValueError"),
    ("arange_direction", "kiln.arange(3, 0)", "ValueError"),
    ("linspace_steps", "kiln.linspace(0, 1, -2)", "ValueError"),
    ("randint_range", "kiln.randint(3, 3, (2,))", "ValueError"),
    ("normal_std", "kiln.normal(0.0, -1.0, (2,))", "ValueError"),
    ("chunk_zero", "x.chunk(0)", "ValueError"),
    ("split_negative", "x.split(-1)", "ValueError"),
    ("negative_step", "x[::-1]", "ValueError"),
    ("gelu_mode", "kiln.gelu(x, approximate='fast')", "ValueError"),
    ("clamp_none", "x.clamp()", "ValueError"),
    ("cat_empty", "kiln.cat([])", "ValueError"),
    ("repeated_dim", "x.sum(dim=(1, 1))", "ValueError"),
    ("one_hot_empty_infer", "kiln.one_hot(kiln.zeros(0, dtype=kiln.int64))", "ValueError"),
    ("flatten_order", "kiln.ones(2, 3, 4).flatten(2, 1)", "ValueError"),
    ("expanded_write", "kiln.ones(3, 1).expand(3, 4).add_(1)", "ValueError"),
    ("int_overflow", "x + 2**70", "ValueError"),
    # devices
    ("device_cuda", "kiln.zeros(2, device='cuda')", "DeviceError"),
    ("device_name", "kiln.ones(2, device='tpu')", "DeviceError"),
    ("to_cuda", "x.to('cuda')", "DeviceError"),
]

EXCEPTIONS = {"ShapeError": kiln.ShapeError, "DTypeError": kiln.DTypeError, "DeviceError": kiln.DeviceError,
              "IndexError": IndexError, "ValueError": ValueError, "TypeError": TypeError}


def run_bad_input(code):
    import numpy as np
    x = kiln.ones(2, 3)
    exec(code, {"kiln": kiln, "np": np, "x": x})


def test_exception_hierarchy():
    assert issubclass(kiln.ShapeError, ValueError)
    assert issubclass(kiln.DTypeError, TypeError)
    assert issubclass(kiln.DeviceError, RuntimeError)
    assert issubclass(kiln.KilnError, RuntimeError)


@pytest.mark.parametrize("name,code,expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises(name, code, expected):
    with pytest.raises(EXCEPTIONS[expected]):
        run_bad_input(code)


def test_bad_inputs_do_not_crash_the_interpreter():
    """The whole table in a child process: a crash (segfault, abort) shows here
    as a non-zero exit status instead of killing the test run."""
    script = textwrap.dedent("""
        import sys, traceback
        import numpy as np
        import kiln
        cases = %r
        for name, code, expected in cases:
            x = kiln.ones(2, 3)
            print(name, flush=True)
            try:
                exec(code, {"kiln": kiln, "np": np, "x": x})
                print("  no exception", flush=True)
            except BaseException as e:
                print("  raised", type(e).__name__, flush=True)
        print("DONE", flush=True)
    """) % (BAD_INPUTS,)
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.path.join(here, "..", "..", "python") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    last = proc.stdout.strip().splitlines()[-2:] if proc.stdout.strip() else []
    assert proc.returncode == 0, f"interpreter died (status {proc.returncode}) after: {last}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip().endswith("DONE")
    assert "no exception" not in proc.stdout


def test_error_messages_name_the_op_and_shapes():
    with pytest.raises(kiln.ShapeError) as e:
        kiln.ones(3) + kiln.ones(4)
    assert "add" in str(e.value) and "(3)" in str(e.value).replace(",", "") and "(4)" in str(e.value).replace(",", "")
    with pytest.raises(kiln.ShapeError) as e:
        kiln.ones(2, 3) @ kiln.ones(2, 5)
    assert "matmul" in str(e.value) and "(2, 3)" in str(e.value) and "(2, 5)" in str(e.value)
    with pytest.raises(IndexError) as e:
        kiln.ones(2, 3).sum(dim=4)
    assert "sum" in str(e.value) and "4" in str(e.value)
    with pytest.raises(IndexError) as e:
        kiln.ones(2, 3)[0, 5]
    assert "5" in str(e.value) and "3" in str(e.value)
    with pytest.raises(kiln.DTypeError) as e:
        kiln.ones(2) & kiln.ones(2)
    assert "bitwise_and" in str(e.value) and "float32" in str(e.value)


def test_state_is_intact_after_errors():
    x = kiln.arange(6, dtype=kiln.float32).reshape(2, 3)
    for _, code, _ in BAD_INPUTS:
        try:
            exec(code, {"kiln": kiln, "x": x, "np": __import__("numpy")})
        except Exception:
            pass
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert (x + 1).sum().item() == 21


# ---- sizes whose element or byte count overflows int64 ----
# Each runs in its own child process (several of them crash today). The
# expected behaviour is an exception (out of memory, or a size error), not a
# crash and not a silently empty or zero result.

OVERFLOW_BUG = ("kiln bug (eager/tensor.cpp Tensor::empty / runtime numel): the element count or byte size "
                "of a huge shape overflows int64 unchecked (2**40 * 2**40 wraps to 0), so a 0-byte buffer is "
                "allocated for a huge tensor: ")
HUGE_SIZES = [
    ("empty_too_big", "kiln.empty(1 << 50)", None),
    ("ones_too_big", "kiln.ones(2**61)", None),
    ("one_hot_too_big", "kiln.one_hot(kiln.tensor([2**40]))", None),
    ("zeros_numel_overflow_index", "kiln.zeros(2**40, 2**40)[5, 5].item()", None),
    ("zeros_numel_overflow", "kiln.zeros(2**40, 2**40)", None),
    ("sum_numel_overflow", "kiln.ones(2**32, 2**32).sum().item()", None),
    ("arange_bytes_overflow", "kiln.arange(2**62)", None),
    ("linspace_bytes_overflow", "kiln.linspace(0, 1, 2**62)", None),
    ("eye_numel_overflow", "kiln.eye(2**40)", None),
    ("clone_expanded_overflow", "kiln.ones(1).expand(2**62).clone()", None),
    ("sum_expanded_overflow", "kiln.ones(1, 1).expand(2**40, 2**40).sum().item()", None),
    ("arange_length_overflow", "kiln.arange(0, 1e300, 1e-300)", None),
]


@pytest.mark.parametrize("name,code", [
    pytest.param(n, c, marks=[pytest.mark.xfail(reason=OVERFLOW_BUG + b, strict=True)] if b else [])
    for n, c, b in HUGE_SIZES], ids=[h[0] for h in HUGE_SIZES])
def test_huge_sizes_raise_instead_of_crashing(name, code):
    script = textwrap.dedent("""
        import kiln
        try:
            r = %s
        except Exception as e:
            print("raised", type(e).__name__)
        else:
            print("returned", r.shape if isinstance(r, kiln.Tensor) else r)
    """) % code
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.path.join(here, "..", "..", "python") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, f"{code}: the interpreter died with status {proc.returncode}"
    assert proc.stdout.startswith("raised"), f"{code}: {proc.stdout.strip()}"
