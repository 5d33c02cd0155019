"""repr/str against torch's (with 'torch.' replaced by 'kiln.') for simple cases."""
import math

import numpy as np
import pytest
import torch

import kiln

NAN, INF = math.nan, math.inf

CASES = {
    "ints": [1, 2, 3], "neg_ints": [[-1, 20], [300, 4]], "floats": [1.5, 2.25, -3.0],
    "integral_floats": [1.0, 2.0, -3.0], "sci_small": [1e-5, 1.0], "sci_big": [1e9, 1.0],
    "ratio_nonint": [0.5, 1000.5], "bools": [True, False], "zero_d_float": 3.5, "zero_d_int": 7,
    "zero_d_bool": True, "empty": [], "empty_2d": [[], []], "mixed_nonfinite": [NAN, INF, -INF, 1.5],
    "three_d": [[[1.5, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.25]]], "two_d": [[0.1, 0.25], [10.5, -3.125]],
    "zeros": [0.0, 0.0], "precision": [0.123456789, 1.0], "tiny": [1e-10, 2e-10], "large": [1e10, 2e10],
    "sci_2d": [[1e-5, 1.0], [2.0, 3.0]], "max_1e8": [1e8, 1.0], "one_elem": [[[2.5]]],
}
DTYPES = [None, "float64", "float16", "bfloat16", "int32", "int64", "uint8", "int8", "bool"]


def torch_repr(t):
    return repr(t).replace("torch.", "kiln.")


def _params():
    return [pytest.param(c, d, marks=[])
            for c in CASES for d in DTYPES]


@pytest.mark.parametrize("case,dtype", _params())
def test_repr_matches_torch(case, dtype):
    data = CASES[case]
    try:
        t = torch.tensor(data, dtype=getattr(torch, dtype) if dtype else None)
    except (RuntimeError, TypeError):
        pytest.skip("torch cannot make this")
    if dtype in ("float16", "bfloat16") and t.to(torch.float64).isinf().any() and not np.isinf(
            np.asarray(data, dtype=np.float64)).any():
        pytest.skip("overflows the dtype: see test_width_ignores_nonfinite")
    k = kiln.tensor(data, dtype=getattr(kiln, dtype) if dtype else None)
    assert repr(k) == torch_repr(t)
    assert str(k) == repr(k)


def test_repr_of_views_and_shapes():
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 4
    for fn in [lambda x: x.permute(2, 0, 1), lambda x: x[:, ::2, 1:3], lambda x: x.expand(2, 2, 3, 4),
               lambda x: x[1, 2], lambda x: x.reshape(6, 4)[::3]]:
        assert repr(fn(kiln.from_numpy(base.copy()))) == torch_repr(fn(torch.from_numpy(base.copy())))
    assert repr(kiln.zeros(2, 0, 3)) == torch_repr(torch.zeros(2, 0, 3))
    assert repr(kiln.zeros(0, dtype=kiln.int32)) == torch_repr(torch.zeros(0, dtype=torch.int32))
    assert repr(kiln.arange(10)) == torch_repr(torch.arange(10))


def test_repr_of_summarized_int_tensor_elements():
    # Beyond 1000 elements only the edges are shown; compare the numbers shown.
    k, t = repr(kiln.arange(5000)), torch_repr(torch.arange(5000))
    assert k.replace(" ", "") == t.replace(" ", "").replace("\n", "")


@pytest.mark.parametrize("data", [[NAN, 1.0], [-0.0, 1.0], [INF, 1.0]], ids=str)
def test_width_ignores_nonfinite(data):
    assert repr(kiln.tensor(data)) == torch_repr(torch.tensor(data))


def test_integral_floats_with_large_ratio_use_sci():
    assert repr(kiln.tensor([1.0, 2000.0])) == torch_repr(torch.tensor([1.0, 2000.0]))


def test_long_rows_wrap_like_torch():
    assert repr(kiln.arange(30)) == torch_repr(torch.arange(30))


def test_summarized_ellipsis_like_torch():
    assert repr(kiln.arange(2000).reshape(2, 1000)) == torch_repr(torch.arange(2000).reshape(2, 1000))


def test_dtype_and_device_repr():
    assert repr(kiln.float32) == "kiln.float32"
    assert repr(kiln.ones(1, dtype=kiln.bfloat16)) == "tensor([1.], dtype=kiln.bfloat16)"
    assert kiln.ones(1).device == "cpu"
