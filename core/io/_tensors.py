"""What every format shares: dtypes, the error type, deferred tensors, memory-mapped views, streamed writes."""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ml_dtypes
import numpy as np

Format = Literal["safetensors", "bin", "msgpack"]
Layout = Literal["torch", "flax"]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file or the keys."""


FLOAT_DTYPES = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
DTYPES = {
    **FLOAT_DTYPES,
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    **{name: np.dtype(name) for name in ("int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8")},
    "bool": np.dtype(np.bool_),
}


def is_floating(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a floating type, ml_dtypes' bfloat16 and float8 included (numpy kind 'V')."""
    return dtype.kind == "f" or dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def float_dtype(name: str) -> np.dtype:
    """The numpy dtype of ``float32``, ``float16``, ``bfloat16`` or ``float64``; ValueError otherwise."""
    if name not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {name!r}")
    return FLOAT_DTYPES[name]


def is_count(value: Any) -> bool:
    """Whether a header field is a non-negative int (``bool`` is not one, though Python says so)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# numpy 1.x's limit on dimensions (numpy 2 allows 64); no checkpoint tensor comes near it.
_MAX_DIMS = 32


def as_shape(value: Any, dtype: np.dtype) -> tuple[int, ...] | None:
    """``value`` as the shape of a ``dtype`` array: a list of non-negative ints numpy can hold; else None."""
    if not isinstance(value, (list, tuple)) or len(value) > _MAX_DIMS or not all(is_count(d) for d in value):
        return None
    if math.prod(d for d in value if d) * dtype.itemsize >= 2**63:  # numpy refuses even an empty one
        return None
    return tuple(value)


# ------------------------------------------------------------------------------------------------ tensors
@dataclass(frozen=True)
class Deferred:
    """A tensor made only when it is written: its shape, the dtype it is written in, and its source.

    ``source()`` returns the values in any strides and dtype (typically a transposed view of a memory-mapped
    checkpoint); the writer copies them into the output, casting to ``dtype`` on the way.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    source: Callable[[], np.ndarray]


Tensor = np.ndarray | Deferred


def nbytes(tensor: Tensor) -> int:
    """The bytes ``tensor`` takes in a file: its element count times its dtype's size."""
    return math.prod(tensor.shape) * tensor.dtype.itemsize


# Tiles of this many rows and columns keep a transposed read within the CPU caches; numpy's own copy of a
# transposed view walks one axis with a large stride and is several times slower.
_TILE = 128


def _copy_into(out: np.ndarray, view: np.ndarray) -> None:
    """``out[...] = view`` (casting to ``out``'s dtype), tile by tile when ``view`` is not C-contiguous."""
    if view.ndim < 2 or view.flags.c_contiguous:
        out[...] = view
        return
    for i in range(0, view.shape[0], _TILE):
        for j in range(0, view.shape[-1], _TILE):
            out[i : i + _TILE, ..., j : j + _TILE] = view[i : i + _TILE, ..., j : j + _TILE]


def materialise(name: str, tensor: Tensor) -> np.ndarray:
    """``tensor`` as a C-contiguous array of its declared dtype (the source itself when it is one)."""
    value = np.asarray(tensor.source() if isinstance(tensor, Deferred) else tensor)
    if value.shape != tuple(tensor.shape):
        raise AssertionError(f"{name}: declared shape {tensor.shape}, made {value.shape}")
    if value.flags.c_contiguous and value.dtype == tensor.dtype:
        return value
    out = np.empty(value.shape, tensor.dtype)
    _copy_into(out, value)
    return out


def flat(name: str, tensor: Tensor) -> np.ndarray:
    """``tensor``'s elements in C order in one dimension: every writer makes its tensors here, one at a time."""
    return materialise(name, tensor).reshape(-1)


# ------------------------------------------------------------------------------------------------ reading
def map_file(path: Path) -> mmap.mmap:
    """``path`` memory-mapped read-only; CheckpointError when it is empty or unreadable."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise CheckpointError(f"{path} is empty")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err


def view(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """A read-only array over ``buffer[offset:]``; the caller has checked that the bytes are there."""
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(buffer, dtype, count, offset).reshape(shape)


# ------------------------------------------------------------------------------------------------ writing
@dataclass(frozen=True)
class Region:
    """Elements ``[start, start + count)`` of a tensor in C order (``count=None``: all of it)."""

    name: str
    tensor: Tensor
    start: int = 0
    count: int | None = None

    @property
    def ends_tensor(self) -> bool:
        return self.count is None or self.start + self.count == math.prod(self.tensor.shape)


Piece = bytes | Region


def fill(path: Path, pieces: Sequence[Piece], done: Callable[[str, int], None]) -> None:
    """Write ``pieces`` back to back into a new file, making each tensor only when its turn comes."""
    whole: tuple[str, np.ndarray] | None = None  # the tensor whose chunks are being written
    with open(path, "wb") as f:
        for piece in pieces:
            if isinstance(piece, bytes):
                f.write(piece)
                continue
            if whole is None or whole[0] != piece.name:
                whole = (piece.name, flat(piece.name, piece.tensor))
            count = whole[1].size if piece.count is None else piece.count
            if count:
                f.write(whole[1][piece.start : piece.start + count].view(np.uint8).data)
            if piece.ends_tensor:
                whole = None
                done(piece.name, nbytes(piece.tensor))
