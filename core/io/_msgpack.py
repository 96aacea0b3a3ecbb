"""``flax_model.msgpack``: ``flax.serialization.to_bytes`` of the params tree, read in place and written by hand.

A msgpack map of maps whose leaves are ext type 1 payloads, each itself msgpack of ``(shape, dtype name, raw
bytes)``; leaves over 2**30 bytes are split into a ``__msgpack_chunked_array__`` map. The reader parses the
subset flax writes, so that array leaves stay views of the memory-mapped file. It refuses nesting deeper than
``_MAX_DEPTH`` and an ext payload whose contents run past the length it declares.
"""

from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._tensors import DTYPES, CheckpointError, Layout, Piece, Region, Tensor, as_shape, fill, map_file, nbytes, view

# A params tree is a few levels deep (model / layer / index / module / param); far deeper is a damaged or
# hostile file, refused before Python's own recursion limit is reached.
_MAX_DEPTH = 64
_BIN = {0xC4: "B", 0xC5: ">H", 0xC6: ">I"}
_STR = {0xD9: "B", 0xDA: ">H", 0xDB: ">I"}
_EXT = {0xC7: "B", 0xC8: ">H", 0xC9: ">I"}
_NUMBERS = {0xCA: ">f", 0xCB: ">d", 0xCC: "B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q"}
_NUMBERS |= {0xD0: "b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
_SIMPLE = {0xC0: None, 0xC2: False, 0xC3: True}


class _Reader:
    """A msgpack parser over the mapping; ``keys`` is the path of map keys to the value being read."""

    def __init__(self, buffer: mmap.mmap) -> None:
        self.buffer, self.pos = buffer, 0
        self.end = len(buffer)  # where the value being read must end: the file's end, or its ext payload's
        self.keys: list[str] = []

    def _need(self, n: int) -> int:
        start = self.pos
        if start + n > self.end:
            if self.end < len(self.buffer):
                raise ValueError(f"a flax array's contents run past the end of its ext payload (byte {self.end})")
            raise EOFError
        self.pos += n
        return start

    def _take(self, fmt: str) -> Any:
        return struct.unpack_from(fmt, self.buffer, self._need(struct.calcsize(fmt)))[0]

    def _raw(self, n: int) -> bytes:
        start = self._need(n)
        return bytes(self.buffer[start : start + n])

    def value(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise ValueError(f"values nest more than {_MAX_DEPTH} levels deep")
        b = self._take("B")
        if b <= 0x7F or b >= 0xE0:
            return b if b <= 0x7F else b - 0x100
        if b in _SIMPLE:
            return _SIMPLE[b]
        if b in _NUMBERS:
            return self._take(_NUMBERS[b])
        if 0xA0 <= b <= 0xBF or b in _STR:
            n = b & 0x1F if b <= 0xBF else self._take(_STR[b])
            return self._raw(n).decode()
        if b in _BIN:
            return self._raw(self._take(_BIN[b]))
        if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
            return self._map(b & 0x0F if b <= 0x8F else self._take(">H" if b == 0xDE else ">I"), depth + 1)
        if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
            n = b & 0x0F if b <= 0x9F else self._take(">H" if b == 0xDC else ">I")
            return [self.value(depth + 1) for _ in range(n)]
        if 0xD4 <= b <= 0xD8 or b in _EXT:
            return self._ext(1 << (b - 0xD4) if b >= 0xD4 else self._take(_EXT[b]), depth + 1)
        raise ValueError(f"byte 0x{b:02x} at offset {self.pos - 1} is not msgpack")

    def _map(self, n: int, depth: int) -> Any:
        out = {}
        for _ in range(n):
            key = self.value(depth)
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise ValueError(f"a map key at offset {self.pos} is a {type(key).__name__}, not a name")
            key = str(key)
            if key in out:
                raise ValueError(f"a map names {key} twice")
            self.keys.append(key)
            out[key] = self.value(depth)
            self.keys.pop()  # left in place by an error, so that the message names the value
        if out.get("__msgpack_chunked_array__") is True:  # flax's split of a leaf over 2**30 bytes
            return _unchunk(out)
        return out

    def _ext(self, n: int, depth: int) -> np.ndarray:
        code = self._take("b")
        if code not in (1, 3):  # flax's ndarray and numpy-scalar ext types
            raise ValueError(f"msgpack ext type {code} at offset {self.pos - 1} is not a flax array")
        payload = self._need(n)  # the payload must fit in what holds it; its contents must fit in the payload
        outer, self.end, self.pos = self.end, payload + n, payload
        if self._take("B") != 0x93:
            raise ValueError(f"flax array at offset {self.pos - 1} is not a (shape, dtype, bytes) triple")
        dims, dtype_name = self.value(depth), self.value(depth)
        dtype_name = dtype_name.decode() if isinstance(dtype_name, bytes) else dtype_name
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            raise ValueError(f"array dtype {dtype_name!r} at offset {self.pos} is not one tandem reads")
        dtype = DTYPES[dtype_name]
        shape = as_shape(dims, dtype)
        if shape is None:
            raise ValueError(f"array shape {dims!r} is not a list of non-negative ints")
        marker = self._take("B")
        if marker not in _BIN:
            raise ValueError(f"flax array at offset {self.pos - 1} holds a 0x{marker:02x} value, not its bytes")
        size = self._take(_BIN[marker])
        start = self._need(size)
        if size != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"flax array at offset {start} has {size} bytes for shape {shape} {dtype_name}")
        if self.pos != self.end:
            raise ValueError(f"flax array at offset {start} leaves {self.end - self.pos} bytes of its ext payload")
        self.end = outer
        return view(self.buffer, dtype, shape, start)


def _unchunk(node: dict[str, Any]) -> np.ndarray:
    """A chunked leaf, joined (a copy: only flax's leaves over 2**30 bytes are chunked)."""
    dims, chunks = node.get("shape"), node.get("chunks")
    if not isinstance(dims, dict) or not isinstance(chunks, dict):
        raise ValueError("a chunked array has no shape and chunks maps")
    try:
        parts = [chunks[str(i)] for i in range(len(chunks))]
        shape = [dims[str(i)] for i in range(len(dims))]
    except KeyError as err:
        raise ValueError(f"a chunked array's maps are not numbered 0, 1, ...: no {err}") from None
    if not parts or not all(isinstance(p, np.ndarray) and p.ndim == 1 and p.dtype == parts[0].dtype for p in parts):
        raise ValueError("a chunked array's chunks are not flat arrays of one dtype")
    checked = as_shape(shape, parts[0].dtype)
    if checked is None or math.prod(checked) != sum(p.size for p in parts):
        raise ValueError(f"a chunked array of shape {shape} has {sum(p.size for p in parts)} elements")
    return np.concatenate(parts).reshape(checked)


def read_msgpack(path: Path) -> dict[str, np.ndarray]:
    """The leaves of one flax msgpack file, named by their ``/``-joined param paths, as views of its mapping."""
    reader = _Reader(map_file(path))
    try:
        tree = reader.value()
        if reader.pos != len(reader.buffer):
            raise ValueError(f"{len(reader.buffer) - reader.pos} bytes follow the params tree")
    except EOFError as err:
        where = "/".join(reader.keys) or "a value"
        raise CheckpointError(f"{path} is truncated (msgpack ends inside {where} at offset {reader.pos})") from err
    except ValueError as err:  # UnicodeDecodeError included
        where = f" (in {'/'.join(reader.keys)})" if reader.keys else ""
        raise CheckpointError(f"{path} is not a flax msgpack checkpoint: {err}{where}") from err
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path} is not a flax msgpack checkpoint: it holds a {type(tree).__name__}, not a map")
    out = {}
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            name = f"{prefix}/{key}" if prefix else key
            if isinstance(value, dict):
                stack.append((name, value))
            elif isinstance(value, np.ndarray):
                out[name] = value
            else:
                raise CheckpointError(f"{path}: {name} is a {type(value).__name__}, not an array")
    return out


# ------------------------------------------------------------------------------------------------ writing
def _pack_header(n: int, small: tuple[int, int] | None, codes: tuple[int, int, int]) -> bytes:
    """A msgpack length header: the fix form when ``n`` fits ``small`` (base, limit), else 8/16/32-bit."""
    if small is not None and n < small[1]:
        return bytes([small[0] | n])
    for code, fmt, limit in zip(codes, ("B", ">H", ">I"), (2**8, 2**16, 2**32), strict=True):
        if code and n < limit:
            return bytes([code]) + struct.pack(fmt, n)
    raise ValueError(f"msgpack cannot hold a length of {n}")


def _pack_map(n: int) -> bytes:
    return _pack_header(n, (0x80, 16), (0, 0xDE, 0xDF))


def _pack_str(s: str) -> bytes:
    raw = s.encode()
    return _pack_header(len(raw), (0xA0, 32), (0xD9, 0xDA, 0xDB)) + raw


def _pack_uint(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    return _pack_header(n, None, (0xCC, 0xCD, 0xCE)) if n < 2**32 else b"\xcf" + struct.pack(">Q", n)


def _array_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """What precedes an array's raw bytes in flax's msgpack: ext type 1 over ``(shape, dtype name, bytes)``."""
    size = math.prod(shape) * dtype.itemsize
    dims = _pack_header(len(shape), (0x90, 16), (0, 0xDC, 0xDD)) + b"".join(_pack_uint(d) for d in shape)
    inner = b"\x93" + dims + _pack_str(dtype.name) + _pack_header(size, None, (0xC4, 0xC5, 0xC6))
    length = len(inner) + size
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}  # msgpack's fixext forms, as msgpack itself writes
    header = bytes([fixed[length]]) if length in fixed else _pack_header(length, None, (0xC7, 0xC8, 0xC9))
    return header + b"\x01" + inner


# flax splits leaves above this size (msgpack's 2**31 - 1 limit per object, with a margin).
_CHUNK = 2**30


def write_msgpack(path: Path, tensors: Mapping[str, Tensor], _layout: Layout, done: Callable[[str, int], None]) -> None:
    """Write ``tensors`` (``/``-joined flax paths) as flax's msgpack, each leaf streamed from its source."""
    tree: dict[str, Any] = {}
    for name in tensors:
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = name
    pieces: list[Piece] = []
    pending = bytearray()

    def region(piece: Region) -> None:
        pieces.extend([bytes(pending), piece])
        pending.clear()

    def leaf(name: str) -> None:
        tensor = tensors[name]
        if nbytes(tensor) <= _CHUNK:
            pending.extend(_array_header(tuple(tensor.shape), tensor.dtype))
            region(Region(name, tensor))
            return
        numel, step = math.prod(tensor.shape), max(1, _CHUNK // tensor.dtype.itemsize)
        starts = range(0, numel, step)
        pending.extend(_pack_map(3) + _pack_str("__msgpack_chunked_array__") + b"\xc3")
        pending.extend(_pack_str("shape") + _pack_map(len(tensor.shape)))
        for i, d in enumerate(tensor.shape):
            pending.extend(_pack_str(str(i)) + _pack_uint(d))
        pending.extend(_pack_str("chunks") + _pack_map(len(starts)))
        for i, start in enumerate(starts):
            count = min(step, numel - start)
            pending.extend(_pack_str(str(i)) + _array_header((count,), tensor.dtype))
            region(Region(name, tensor, start, count))

    def node(children: dict[str, Any]) -> None:
        pending.extend(_pack_map(len(children)))
        for key, child in sorted(children.items()):  # jax's pytree order, as HF Flax's files have it
            pending.extend(_pack_str(key))
            if isinstance(child, dict):
                node(child)
            else:
                leaf(child)

    node(tree)
    fill(path, [*pieces, bytes(pending)], done)
