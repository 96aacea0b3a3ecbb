"""Damaged and hostile weight files, made by hand: every header field is checked before a view is made.

Each file is written byte by byte (``struct``, ``json``, ``zipfile``, pickle opcodes) so that it can lie in
ways no library would write: negative dims and strides, byte ranges that run backwards or overlap, views
that reach outside their storage, allowed pickle globals called wrongly, msgpack nested past any params tree.
Each must fail with a :class:`CheckpointError` naming the file and, where the header names one, the tensor;
a well-formed file made by the same helpers must still read, as views of the file.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tandem.core.io import CheckpointError, read_checkpoint

VALUES = np.arange(6, dtype=np.float32)  # the bytes behind every hand-made tensor


def _read(directory: Path, message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as info:
        read_checkpoint(directory)
    assert str(directory) in str(info.value)  # the message names the file by its full path


def _is_view(array: np.ndarray) -> bool:
    return not array.flags.owndata and not array.flags.writeable


# ------------------------------------------------------------------------------------------- safetensors
def _safetensors(directory: Path, header: dict[str, Any], data: bytes = VALUES.tobytes()) -> Path:
    raw = json.dumps(header).encode()
    directory.mkdir(exist_ok=True)
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return directory


def _entry(dtype: str = "F32", shape: Any = (2, 3), offsets: Any = (0, 24)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_a_well_formed_safetensors_file_reads_as_views(tmp_path: Path) -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "a": _entry(shape=(2,), offsets=(0, 8)),
        "b": _entry("I8", (0,), (8, 8)),
    }
    header["c"] = _entry(shape=(4,), offsets=(8, 24))
    tensors = read_checkpoint(_safetensors(tmp_path, header))
    np.testing.assert_array_equal(tensors["a"], VALUES[:2])
    np.testing.assert_array_equal(tensors["c"], VALUES[2:])
    assert tensors["b"].shape == (0,) and _is_view(tensors["c"])


SAFETENSORS_LIES = {
    "negative-dim": ({"w": _entry(shape=(-2, 3))}, r"tensor w has shape \[-2, 3\]"),
    "float-dim": ({"w": _entry(shape=(2.0, 3))}, r"tensor w has shape"),
    "bool-dim": ({"w": _entry(shape=(True, 6))}, r"tensor w has shape"),
    "reversed-offsets": (
        {"w": _entry(shape=(0,), offsets=(24, 0))},
        r"tensor w has data_offsets \[24, 0\].*end before",
    ),
    "negative-offset": ({"w": _entry(offsets=(-24, 0))}, r"tensor w has data_offsets \[-24, 0\]"),
    "three-offsets": ({"w": _entry(offsets=(0, 12, 24))}, r"tensor w has data_offsets"),
    "string-offsets": ({"w": _entry(offsets=("0", "24"))}, r"tensor w has data_offsets"),
    "size-mismatch": ({"w": _entry(shape=(2, 2))}, r"tensor w has a byte range of 24 bytes .*\(16 bytes\)"),
    "past-the-data": ({"w": _entry(shape=(3, 3), offsets=(0, 36))}, r"is truncated: tensor w ends at byte"),
    "unknown-dtype": ({"w": _entry("F7")}, r"tensor w has dtype F7"),
    "dtype-not-a-string": ({"w": _entry(["F32"])}, r"tensor w has dtype \['F32'\]"),
    "no-shape": ({"w": {"dtype": "F32", "data_offsets": [0, 24]}}, r"tensor w has a corrupt header entry"),
    "overlap": (
        {"a": _entry(shape=(4,), offsets=(0, 16)), "b": _entry(shape=(4,), offsets=(8, 24))},
        r"tensors a and b overlap",
    ),
    "out-of-order-overlap": (
        {"b": _entry(shape=(3,), offsets=(12, 24)), "a": _entry(shape=(4,), offsets=(0, 16))},
        r"tensors a and b overlap",
    ),
    "metadata-not-strings": ({"__metadata__": {"format": 1}, "w": _entry()}, r"__metadata__ must map strings"),
    "not-an-object": ([1, 2], r"corrupt safetensors header: a list"),
    # Passes tandem's own checks; the safetensors library refuses a gap before the data ends.
    "gap": ({"w": _entry(shape=(2,), offsets=(16, 24))}, r"not a valid safetensors file"),
}


@pytest.mark.parametrize("kind", SAFETENSORS_LIES)
def test_safetensors_header_lies_are_named(kind: str, tmp_path: Path) -> None:
    header, message = SAFETENSORS_LIES[kind]
    _read(_safetensors(tmp_path, header), rf"model\.safetensors.*{message}")


def test_a_safetensors_header_naming_a_tensor_twice_is_refused(tmp_path: Path) -> None:
    raw = b'{"w": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}, "w": ' + json.dumps(_entry()).encode() + b"}"
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + VALUES.tobytes())
    _read(tmp_path, r"model\.safetensors: the safetensors header names w more than once")


# --------------------------------------------------------------------------------------------- torch .bin
# Pickle opcodes (protocol 2), enough to spell a state dict with any offset, shape and stride.
def _int(n: int) -> bytes:
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


def _tuple(items: Sequence[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _storage(numel: int, legacy: bool = False) -> bytes:
    """A persistent id for storage ``0`` of float32 (torch < 1.6 adds a view field, None)."""
    fields = [_str("storage"), _global("torch", "FloatStorage"), _str("0"), _str("cpu"), _int(numel)]
    return _tuple(fields + ([b"N"] if legacy else [])) + b"Q"


def _tensor(offset: int, shape: Sequence[int], stride: Sequence[int], numel: int = 6, legacy: bool = False) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())``."""
    hooks = _global("collections", "OrderedDict") + b")R"
    args = [_storage(numel, legacy), _int(offset), _tuple([_int(d) for d in shape]), _tuple([_int(s) for s in stride])]
    return _global("torch._utils", "_rebuild_tensor_v2") + _tuple([*args, b"\x89", hooks]) + b"R"


def _state_dict(value: bytes, name: str = "w") -> bytes:
    return b"\x80\x02}(" + _str(name) + value + b"u."


def _bin(directory: Path, pickled: bytes, data: bytes = VALUES.tobytes()) -> Path:
    directory.mkdir(exist_ok=True)
    with zipfile.ZipFile(directory / "pytorch_model.bin", "w") as archive:  # stored, as torch writes it
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", data)
        archive.writestr("archive/version", "3\n")
    return directory


def _legacy(directory: Path, pickled: bytes, numel: int = 6, data: bytes = VALUES.tobytes()) -> Path:
    """torch < 1.6: magic number, protocol version, sys info, the state dict, its storage keys, the bytes."""
    head = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}]
    parts = [*(pickle.dumps(obj, protocol=2) for obj in head), pickled, pickle.dumps(["0"], protocol=2)]
    directory.mkdir(exist_ok=True)
    (directory / "pytorch_model.bin").write_bytes(b"".join(parts) + struct.pack("<q", numel) + data)
    return directory


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_well_formed_bin_files_read_as_views(layout: str, tmp_path: Path) -> None:
    views = {  # name: (offset, shape, stride) -> what torch makes of them
        "dense": ((0, (2, 3), (3, 1)), VALUES.reshape(2, 3)),
        "transposed": ((0, (3, 2), (1, 3)), VALUES.reshape(2, 3).T),
        "strided": ((0, (2, 2), (3, 2)), VALUES.reshape(2, 3)[:, ::2]),
        "size-one-dim-with-a-huge-stride": ((2, (1, 3), (2**40, 1)), VALUES[2:5].reshape(1, 3)),
    }
    legacy = layout == "legacy"
    pickled = b"".join(_str(name) + _tensor(*args, legacy=legacy) for name, (args, _) in views.items())
    directory = (_legacy if legacy else _bin)(tmp_path, b"\x80\x02}(" + pickled + b"u.")
    tensors = read_checkpoint(directory)
    reference = torch.load(directory / "pytorch_model.bin", weights_only=True)
    for name, (_, expected) in views.items():
        np.testing.assert_array_equal(tensors[name], expected)
        np.testing.assert_array_equal(tensors[name], reference[name].numpy())
        assert _is_view(tensors[name])


BIN_LIES = {
    "negative-stride": (_tensor(5, (2, 3), (-3, 1)), r"tensor w has strides \(-3, 1\)"),
    "zero-stride": (_tensor(0, (4,), (0,)), r"tensor w has strides \(0,\) that make shape \(4,\) overlap itself"),
    "overlapping-strides": (_tensor(0, (2, 3), (1, 1)), r"tensor w has strides \(1, 1\) that make .* overlap itself"),
    "negative-offset": (_tensor(-1, (2, 3), (3, 1)), r"tensor w has storage offset -1"),
    "negative-dim": (_tensor(0, (-2, 3), (3, 1)), r"tensor w has shape \(-2, 3\)"),
    "stride-rank": (_tensor(0, (2, 3), (1,)), r"tensor w has strides \(1,\) for shape \(2, 3\)"),
    "past-the-storage": (_tensor(1, (2, 3), (3, 1)), r"tensor w reaches element 6 of storage 0, which has 6"),
    "huge-stride": (_tensor(0, (2, 3), (2**40, 1)), r"tensor w reaches element 1099511627778 of storage 0"),
    "huge-dim": (_tensor(0, (2**62, 0), (1, 1)), r"tensor w has shape"),
    "negative-numel": (_tensor(0, (0,), (1,), numel=-1), r"storage '0' has -1 elements"),
    "storage-bigger-than-its-record": (_tensor(0, (2, 3), (3, 1), numel=8), r"record archive/data/0 has 24 bytes"),
    "not-a-tensor": (_int(7), r"does not hold a state dict of tensors: w is a int"),
}


@pytest.mark.parametrize("kind", BIN_LIES)
def test_bin_geometry_lies_are_named(kind: str, tmp_path: Path) -> None:
    value, message = BIN_LIES[kind]
    _read(_bin(tmp_path, _state_dict(value)), rf"pytorch_model\.bin.*{message}")


LEGACY_LIES = {
    "negative-stride": (_state_dict(_tensor(5, (2, 3), (-3, 1), legacy=True)), 6, r"tensor w has strides \(-3, 1\)"),
    "count-differs-from-the-pickle": (_state_dict(_tensor(0, (2, 3), (3, 1), legacy=True)), 5, r"corrupt at storage 0"),
    "count-past-the-end": (_state_dict(_tensor(0, (2, 3), (3, 1), numel=7, legacy=True)), 7, r"corrupt at storage 0"),
    "storage-the-pickle-lacks": (_state_dict(_int(7)), 6, r"holds storage 0, which its pickle lacks"),
}


@pytest.mark.parametrize("kind", LEGACY_LIES)
def test_legacy_bin_lies_are_named(kind: str, tmp_path: Path) -> None:
    pickled, numel, message = LEGACY_LIES[kind]
    _read(_legacy(tmp_path, pickled, numel), rf"pytorch_model\.bin.*{message}")


# Allowed globals, misused: each would raise a bare TypeError or AttributeError inside pickle.
MISUSED_GLOBALS = {
    "rebuild-with-one-argument": _global("torch._utils", "_rebuild_tensor_v2") + _tuple([_storage(6)]) + b"R",
    "storage-type-called": _global("torch", "FloatStorage") + _tuple([_int(6)]) + b"R",
    "ordered-dict-of-an-int": _global("collections", "OrderedDict") + _tuple([_int(6)]) + b"R",
    "rebuild-from-a-non-callable": _global("torch._tensor", "_rebuild_from_type_v2")
    + _tuple([_global("torch", "FloatStorage"), _global("torch", "Tensor"), b")", b"}"])
    + b"R",
    "state-set-on-a-tensor": _tensor(0, (2, 3), (3, 1)) + b"}" + _str("offset") + _int(-1) + b"sb",
    "parameter-without-data": _global("torch._utils", "_rebuild_parameter") + b")R",
}


@pytest.mark.parametrize("kind", MISUSED_GLOBALS)
def test_misused_pickle_globals_are_named(kind: str, tmp_path: Path) -> None:
    _read(
        _bin(tmp_path, _state_dict(MISUSED_GLOBALS[kind])),
        r"pytorch_model\.bin is truncated or corrupt \((Type|Attribute)Error",
    )


# ---------------------------------------------------------------------------------------------- msgpack
def _mp_str(s: str) -> bytes:
    return bytes([0xA0 | len(s)]) + s.encode()


def _mp_map(items: dict[str, bytes]) -> bytes:
    return bytes([0x80 | len(items)]) + b"".join(_mp_str(key) + value for key, value in items.items())


def _mp_array(shape: Sequence[int], raw: bytes, dtype: str = "float32", slack: int = 0) -> bytes:
    """flax's ext type 1 over ``(shape, dtype, bytes)``, claiming ``slack`` more payload bytes than it has."""
    dims = bytes([0x90 | len(shape)]) + b"".join(struct.pack("b", d) for d in shape)
    inner = b"\x93" + dims + _mp_str(dtype) + b"\xc4" + bytes([len(raw)]) + raw
    return b"\xc7" + bytes([len(inner) + slack]) + b"\x01" + inner


def _msgpack(directory: Path, content: bytes) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "flax_model.msgpack").write_bytes(content)
    return directory


def test_a_well_formed_msgpack_file_reads_as_views(tmp_path: Path) -> None:
    tree = _mp_map({"params": _mp_map({"dense": _mp_map({"kernel": _mp_array((2, 3), VALUES.tobytes())})})})
    tensors = read_checkpoint(_msgpack(tmp_path, tree))
    np.testing.assert_array_equal(tensors["params/dense/kernel"], VALUES.reshape(2, 3))
    assert _is_view(tensors["params/dense/kernel"])


def _nested(depth: int) -> bytes:
    return _mp_map({"a": b""}) * depth + _mp_array((6,), VALUES.tobytes())


MSGPACK_LIES = {
    "negative-dim": (_mp_map({"w": _mp_array((-2, 3), VALUES.tobytes())}), r"shape \[-2, 3\] is not .* \(in w\)"),
    "size-mismatch": (
        _mp_map({"w": _mp_array((2, 2), VALUES.tobytes())}),
        r"has 24 bytes for shape \(2, 2\).*\(in w\)",
    ),
    "ext-shorter-than-its-contents": (
        _mp_map({"w": _mp_array((6,), VALUES.tobytes(), slack=-18)}) + bytes(40),
        r"contents run past the end of its ext payload.*\(in w\)",
    ),
    "ext-longer-than-its-contents": (
        _mp_map({"w": _mp_array((6,), VALUES.tobytes(), slack=4) + bytes(4)}),
        r"leaves 4 bytes of its ext payload \(in w\)",
    ),
    "ext-past-the-end": (_mp_map({"w": _mp_array((6,), VALUES.tobytes(), slack=100)}), r"is truncated .* inside w"),
    "ext-type": (_mp_map({"w": b"\xd4\x05\x00"}), r"ext type 5 .* \(in w\)"),
    "unknown-dtype": (_mp_map({"w": _mp_array((6,), VALUES.tobytes(), "float7")}), r"dtype 'float7'.*\(in w\)"),
    "duplicate-key": (b"\x82" + (_mp_str("w") + _mp_array((6,), VALUES.tobytes())) * 2, r"a map names w twice"),
    "too-deep": (_nested(65), r"values nest more than 64 levels deep \(in a(/a){63}"),
    "far-too-deep": (_nested(100_000), r"values nest more than 64 levels deep"),
    "not-an-array": (_mp_map({"w": b"\x07"}), r"w is a int, not an array"),
}


@pytest.mark.parametrize("kind", MSGPACK_LIES)
def test_msgpack_lies_are_named(kind: str, tmp_path: Path) -> None:
    content, message = MSGPACK_LIES[kind]
    _read(_msgpack(tmp_path, content), rf"flax_model\.msgpack.*{message}")


def test_deep_but_plausible_msgpack_reads(tmp_path: Path) -> None:
    tensors = read_checkpoint(_msgpack(tmp_path, _nested(32)))
    np.testing.assert_array_equal(tensors["/".join(["a"] * 32)], VALUES)
