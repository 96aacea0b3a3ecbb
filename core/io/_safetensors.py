"""``model.safetensors``: an 8-byte header length, a JSON header (name -> dtype, shape, byte range), the bytes.

Read as views of the memory-mapped file, after every header field is checked: a tensor's view never reaches
outside its own byte range. The safetensors library then validates the header once more, so that a file
tandem reads is one HF can read too.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from ._tensors import DTYPES, CheckpointError, Layout, Region, Tensor, as_shape, fill, is_count, map_file, nbytes, view

# In safetensors' own dtype order: its writer puts higher dtypes first, then sorts by name; so do we, which
# makes our files byte-identical to the ones the safetensors library writes for the same tensors.
_CODES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "U64": "uint64",
}
_RANK = {name: rank for rank, name in enumerate(_CODES.values())}
_CODE_OF = {name: code for code, name in _CODES.items()}


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors of one safetensors file as views of its mapping, and its ``__metadata__``."""
    buffer = map_file(path)
    size = len(buffer)
    length = struct.unpack_from("<Q", buffer, 0)[0] if size >= 8 else size
    if 8 + length > size:
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({size} bytes)")
    header = _parse_header(path, bytes(buffer[8 : 8 + length]))
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path} has a corrupt safetensors header: __metadata__ must map strings to strings")
    start = 8 + length  # the data section: bytes [start, size)
    entries = {name: _entry(path, name, info, start, size) for name, info in header.items()}
    previous: tuple[str, int] | None = None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if previous is not None and begin < previous[1]:
            raise CheckpointError(f"{path}: tensors {previous[0]} and {name} overlap in the file's data section")
        previous = (name, end)
    try:
        with safe_open(str(path), framework="numpy"):  # what it refuses, HF's loaders refuse too
            pass
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a valid safetensors file: {err}") from err
    out = {name: view(buffer, dtype, shape, start + begin) for name, (dtype, shape, begin, _) in entries.items()}
    return out, metadata


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) < len(pairs):
            names = [name for name, _ in pairs]
            twice = sorted({name for name in names if names.count(name) > 1})
            raise CheckpointError(f"{path}: the safetensors header names {', '.join(twice)} more than once")
        return out

    try:
        header = json.loads(raw, object_pairs_hook=unique)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} has a corrupt safetensors header ({type(err).__name__}: {err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header: a {type(header).__name__}, not an object")
    return header


def _entry(path: Path, name: str, info: Any, start: int, size: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """A header entry's dtype, shape and byte range ``[begin, end)`` within the data section, all checked."""
    where = f"{path}: tensor {name}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointError(f"{where} has a corrupt header entry (expected dtype, shape and data_offsets)")
    code = info["dtype"]
    if not isinstance(code, str) or code not in _CODES:
        raise CheckpointError(f"{where} has dtype {code}, which tandem does not read")
    dtype = DTYPES[_CODES[code]]
    shape = as_shape(info["shape"], dtype)
    if shape is None:
        raise CheckpointError(f"{where} has shape {info['shape']!r}; a shape is a list of non-negative ints")
    offsets = info["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_count(x) for x in offsets)):
        raise CheckpointError(f"{where} has data_offsets {offsets!r}; they are two non-negative ints")
    begin, end = offsets
    if begin > end:
        raise CheckpointError(f"{where} has data_offsets [{begin}, {end}], which end before they begin")
    needed = math.prod(shape) * dtype.itemsize
    if end - begin != needed:
        raise CheckpointError(
            f"{where} has a byte range of {end - begin} bytes that does not fit its shape {shape} ({needed} bytes)"
        )
    if start + end > size:
        raise CheckpointError(f"{path} is truncated: tensor {name} ends at byte {start + end}, the file has {size}")
    return dtype, shape, begin, end


def write_safetensors(
    path: Path, tensors: Mapping[str, Tensor], layout: Layout, done: Callable[[str, int], None]
) -> None:
    """Write ``tensors`` into one safetensors file, as the safetensors library would (flax: ``.``-joined)."""
    order = sorted(tensors, key=lambda name: (-_RANK[tensors[name].dtype.name], name))
    header: dict[str, Any] = {"__metadata__": {"format": "pt" if layout == "torch" else "flax"}}
    offset = 0
    for name in order:
        size = nbytes(tensors[name])
        code = _CODE_OF[tensors[name].dtype.name]
        key = name if layout == "torch" else name.replace("/", ".")
        header[key] = {"dtype": code, "shape": list(tensors[name].shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    fill(path, [struct.pack("<Q", len(raw)) + raw, *(Region(name, tensors[name]) for name in order)], done)
