"""kiln.save_file / kiln.load_file against an independent reader and writer of
the safetensors format (a few lines of struct + json + NumPy below), and the
malformed files the reader must reject with a ValueError naming the file."""
import json
import os
import struct

import numpy as np
import pytest

import kiln
import kiln.nn as nn
from conftest import kiln_from_values, random_values, to_numpy

CODES = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "int32": "I32", "int64": "I64", "float16": "F16",
         "bfloat16": "BF16", "float32": "F32", "float64": "F64"}
NP_OF_CODE = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I32": np.int32, "I64": np.int64,
              "F16": np.float16, "BF16": np.uint16, "F32": np.float32, "F64": np.float64}


# ---- the independent reader and writer ----

def read_safetensors(path):
    """{name: ndarray} (BF16 as float32), metadata, raw header text and its length."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header_text = data[8:8 + n].decode("utf-8")
    header = json.loads(header_text)
    meta = header.pop("__metadata__", {})
    body = data[8 + n:]
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        a = np.frombuffer(body[b:end], dtype=np.dtype(NP_OF_CODE[e["dtype"]]).newbyteorder("<"))
        if e["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.reshape(e["shape"])
    return out, meta, header_text, n


def bf16_bits(values):
    """float32 values (already bfloat16-representable) as bfloat16 bit patterns."""
    return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def write_safetensors(path, entries, metadata=None, order=None, align=True, header_override=None, tail=b""):
    """entries: {name: (code, shape, bytes)}. Writes them in `order` (file order
    of both header and data, default sorted), optionally without padding."""
    names = order or sorted(entries)
    header, body, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name in names:
        code, shape, raw = entries[name]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        body += raw
        off += len(raw)
    text = header_override if header_override is not None else json.dumps(header)
    text = text.encode("utf-8") if isinstance(text, str) else text
    if align:
        text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + body + tail)


# ---- kiln writes, the independent reader reads ----

@pytest.mark.parametrize("dtype", list(CODES))
def test_kiln_file_read_by_independent_reader(tmp_path, rng, dtype):
    shapes = {"b.scalar": (), "a.matrix": (3, 4), "c.empty": (0, 5), "d.cube": (2, 3, 2)}
    values = {k: random_values(rng, s, dtype) for k, s in shapes.items()}
    tensors = {k: kiln_from_values(v, dtype) for k, v in values.items()}
    path = tmp_path / "x.safetensors"
    kiln.save_file(tensors, str(path), metadata={"format": "pt", "note": 'quote " and \\ and \n'})
    got, meta, header_text, n = read_safetensors(path)
    assert n % 8 == 0, "header padded to a multiple of 8"
    assert meta == {"format": "pt", "note": 'quote " and \\ and \n'}
    header = json.loads(header_text)
    names = [k for k in header if k != "__metadata__"]
    assert names == sorted(shapes), "names sorted"
    # Offsets are contiguous, in name order, from 0.
    off = 0
    for name in names:
        assert header[name]["data_offsets"][0] == off
        off = header[name]["data_offsets"][1]
        assert header[name]["dtype"] == CODES[dtype]
        assert header[name]["shape"] == list(shapes[name])
    assert os.path.getsize(path) == 8 + n + off
    for k, v in values.items():
        np.testing.assert_array_equal(got[k].astype(np.float64) if dtype != "bool" else got[k],
                                      np.asarray(v).astype(np.float64) if dtype != "bool" else v, err_msg=k)


def test_noncontiguous_and_grad_tensors_are_saved_by_value(tmp_path):
    base = kiln.arange(24, dtype=kiln.float32).reshape(4, 6)
    view = base.T[1:, ::2]
    p = nn.Parameter(kiln.ones(3))
    path = tmp_path / "v.safetensors"
    kiln.save_file({"view": view, "param": p}, path)  # a PathLike works too
    got, _, _, _ = read_safetensors(path)
    np.testing.assert_array_equal(got["view"], base.numpy().T[1:, ::2])
    np.testing.assert_array_equal(got["param"], np.ones(3, np.float32))


def test_roundtrip_all_dtypes(tmp_path, rng):
    values = {d: random_values(rng, (2, 3), d) for d in CODES}
    tensors = {d: kiln_from_values(v, d) for d, v in values.items()}
    path = str(tmp_path / "all.safetensors")
    kiln.save_file(tensors, path)
    back = kiln.load_file(path)
    assert list(back) == sorted(CODES)
    for d, t in back.items():
        assert t.dtype == getattr(kiln, d)
        np.testing.assert_array_equal(to_numpy(t), to_numpy(tensors[d]), err_msg=d)
    assert kiln._C._safetensors_metadata(path) == {}


def test_empty_dict_and_metadata_only(tmp_path):
    path = str(tmp_path / "e.safetensors")
    kiln.save_file({}, path, metadata={"k": "v"})
    assert kiln.load_file(path) == {}
    assert kiln._C._safetensors_metadata(path) == {"k": "v"}
    _, meta, _, _ = read_safetensors(path)
    assert meta == {"k": "v"}


# ---- the independent writer writes, kiln reads ----

def test_independent_file_read_by_kiln(tmp_path, rng):
    a = rng.standard_normal((3, 2)).astype(np.float32)
    b = rng.integers(-5, 5, size=(4,)).astype(np.int64)
    c = np.array([True, False, True])
    h = rng.standard_normal((2, 2)).astype(np.float16)
    bf = np.array([1.5, -2.0, 0.0078125], dtype=np.float32)
    entries = {
        "z.last": ("F32", a.shape, a.tobytes()),
        "a.first": ("I64", b.shape, b.tobytes()),
        "mask": ("BOOL", c.shape, c.tobytes()),
        "half": ("F16", h.shape, h.tobytes()),
        "bf": ("BF16", bf.shape, bf16_bits(bf).tobytes()),
        "scalar": ("F64", (), np.float64(2.5).tobytes()),
    }
    path = tmp_path / "ind.safetensors"
    # File order unsorted, header not padded: both are legal.
    write_safetensors(path, entries, metadata={"source": "test"},
                      order=["z.last", "mask", "a.first", "half", "bf", "scalar"], align=False)
    got = kiln.load_file(str(path))
    assert list(got) == sorted(entries)
    np.testing.assert_array_equal(got["z.last"].numpy(), a)
    np.testing.assert_array_equal(got["a.first"].numpy(), b)
    np.testing.assert_array_equal(got["mask"].numpy(), c)
    np.testing.assert_array_equal(got["half"].numpy(), h)
    np.testing.assert_array_equal(got["bf"].to(kiln.float32).numpy(), bf)
    assert got["scalar"].shape == () and got["scalar"].item() == 2.5
    assert got["bf"].dtype == kiln.bfloat16 and got["scalar"].dtype == kiln.float64
    assert kiln._C._safetensors_metadata(str(path)) == {"source": "test"}


def test_json_escapes_and_whitespace_in_header(tmp_path):
    a = np.arange(3, dtype=np.int32)
    name = "caf\u00e9/\U0001f600 \"q\""
    header = ('\n{ "__metadata__" : { "k\\u00e9y" : "v\\n" } ,\t"caf\\u00e9\\/\\ud83d\\ude00 \\"q\\"" : '
              '{ "shape" : [ 3 ] , "dtype" : "I32" , "data_offsets" : [ 0 , 12 ] } }  ')
    path = tmp_path / "esc.safetensors"
    write_safetensors(path, {name: ("I32", (3,), a.tobytes())}, header_override=header)
    got = kiln.load_file(str(path))
    assert list(got) == [name]
    np.testing.assert_array_equal(got[name].numpy(), a)
    assert kiln._C._safetensors_metadata(str(path)) == {"k\u00e9y": "v\n"}


def test_non_bool_bytes_read_as_true(tmp_path):
    path = tmp_path / "b.safetensors"
    write_safetensors(path, {"m": ("BOOL", (3,), bytes([0, 1, 7]))})
    np.testing.assert_array_equal(kiln.load_file(str(path))["m"].numpy(), [False, True, True])


# ---- malformed files ----

def good_entries():
    return {"w": ("F32", (2, 2), np.ones((2, 2), np.float32).tobytes()),
            "b": ("F32", (2,), np.zeros(2, np.float32).tobytes())}


def raw_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def header_file(path, header, body=b""):
    text = header.encode() if isinstance(header, str) else header
    raw_file(path, struct.pack("<Q", len(text)) + text + body)


BODY16 = bytes(16)

CORRUPT = {
    "empty file": (lambda p: raw_file(p, b""), "too short"),
    "4-byte file": (lambda p: raw_file(p, b"\x01\x02\x03\x04"), "too short"),
    "header length past the end": (lambda p: raw_file(p, struct.pack("<Q", 1000) + b"{}"), "exceeds"),
    "huge header length": (lambda p: raw_file(p, struct.pack("<Q", 2**63) + b"{}"), "exceeds"),
    "not JSON": (lambda p: header_file(p, "hello world"), "not valid JSON"),
    "truncated JSON": (lambda p: header_file(p, '{"w": {"dtype": "F32", "sha'), "not valid JSON"),
    "trailing garbage": (lambda p: header_file(p, '{} x'), "not valid JSON"),
    "trailing comma": (lambda p: header_file(p, '{"a": 1,}'), "not valid JSON"),
    "bad escape": (lambda p: header_file(p, '{"a\\q": 1}'), "not valid JSON"),
    "lone surrogate": (lambda p: header_file(p, '{"\\ud800": {}}'), "not valid JSON"),
    "raw control char": (lambda p: header_file(p, '{"a\x01": {}}'), "not valid JSON"),
    "deep nesting": (lambda p: header_file(p, '{"a":' + "[" * 10000 + "]" * 10000 + "}"), "too deep"),
    "duplicate key": (lambda p: header_file(
        p, '{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
           '"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', BODY16), "duplicate"),
    "header is an array": (lambda p: header_file(p, "[1, 2]"), "must be a JSON object"),
    "entry not an object": (lambda p: header_file(p, '{"w": 3}'), "must be an object"),
    "missing dtype": (lambda p: header_file(p, '{"w": {"shape": [2], "data_offsets": [0, 8]}}', BODY16),
                      "lacks \"dtype\""),
    "missing offsets": (lambda p: header_file(p, '{"w": {"dtype": "F32", "shape": [2]}}', BODY16),
                        "lacks \"data_offsets\""),
    "unknown dtype": (lambda p: header_file(
        p, '{"w": {"dtype": "I16", "shape": [2], "data_offsets": [0, 4]}}', BODY16), "I16"),
    "fp8 dtype": (lambda p: header_file(
        p, '{"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}', BODY16), "F8_E4M3"),
    "dtype not a string": (lambda p: header_file(
        p, '{"w": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}}', BODY16), "dtype must be a string"),
    "negative dim": (lambda p: header_file(
        p, '{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}', BODY16), "non-negative"),
    "fractional dim": (lambda p: header_file(
        p, '{"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}', BODY16), "non-negative"),
    "shape overflow": (lambda p: header_file(
        p, '{"w": {"dtype": "F64", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]}}', BODY16),
        "too large"),
    "offsets reversed": (lambda p: header_file(
        p, '{"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}', BODY16), "end before"),
    "offsets out of range": (lambda p: header_file(
        p, '{"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}', BODY16), "past the end"),
    "offsets not a pair": (lambda p: header_file(
        p, '{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}', BODY16), "[begin, end]"),
    "size disagrees with shape": (lambda p: header_file(
        p, '{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', BODY16), "needs 12"),
    "overlapping offsets": (lambda p: header_file(
        p, '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
           '"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', BODY16), "overlap"),
    "metadata not strings": (lambda p: header_file(p, '{"__metadata__": {"a": 1}}'), "must be a string"),
    "truncated data": (lambda p: write_safetensors(p, good_entries()) or
                       raw_file(p, open(p, "rb").read()[:-3]), "past the end"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_files_raise_value_error(tmp_path, case):
    make, fragment = CORRUPT[case]
    path = str(tmp_path / "bad.safetensors")
    make(path)
    with pytest.raises(ValueError) as info:
        kiln.load_file(path)
    msg = str(info.value)
    assert path in msg, f"the error names the file: {msg}"
    assert fragment in msg, f"{case}: {msg}"
    # The metadata reader applies the same checks.
    with pytest.raises(ValueError):
        kiln._C._safetensors_metadata(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        kiln.load_file(str(tmp_path / "nope.safetensors"))


# ---- saving: argument errors and atomicity ----

def test_save_rejects_bad_names_and_values(tmp_path):
    path = str(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="__metadata__"):
        kiln.save_file({"__metadata__": kiln.ones(1)}, path)
    with pytest.raises(ValueError, match="strings"):
        kiln.save_file({3: kiln.ones(1)}, path)
    with pytest.raises(ValueError, match="str to str"):
        kiln.save_file({"a": kiln.ones(1)}, path, metadata={"a": 1})
    assert not os.listdir(tmp_path), "nothing written"


def test_save_is_atomic(tmp_path):
    path = str(tmp_path / "keep.safetensors")
    kiln.save_file({"a": kiln.ones(2)}, path)
    before = open(path, "rb").read()
    with pytest.raises((TypeError, ValueError)):
        kiln.save_file({"a": kiln.zeros(2), "b": object()}, path)
    assert open(path, "rb").read() == before, "a failed save leaves the old file alone"
    with pytest.raises(RuntimeError, match="cannot create"):
        kiln.save_file({"a": kiln.ones(2)}, str(tmp_path / "no" / "such" / "dir.safetensors"))
    kiln.save_file({"a": kiln.zeros(3)}, path)
    assert os.listdir(tmp_path) == ["keep.safetensors"], "no temporary files left behind"
    np.testing.assert_array_equal(kiln.load_file(path)["a"].numpy(), np.zeros(3, np.float32))


def test_numpy_values_are_accepted(tmp_path):
    path = str(tmp_path / "np.safetensors")
    kiln.save_file({"a": np.arange(4, dtype=np.int32)}, path)
    got, _, _, _ = read_safetensors(path)
    np.testing.assert_array_equal(got["a"], np.arange(4, dtype=np.int32))
