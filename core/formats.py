"""HF checkpoint files, read and written without a framework: safetensors, pytorch_model.bin, flax msgpack.

Every format is read by memory-mapping the file and handing out numpy views of it, so opening a checkpoint
reads only its headers and a tensor's bytes are paged in when it is used. Writers write one tensor at a
time (a :class:`Deferred` tensor, e.g. a transposed view of the source, is made only then; an untouched
one is written straight from the source's mapping), so converting a checkpoint never holds two copies of
it. A checkpoint
directory is written into a temporary folder and its files are moved into place only once all of them are
complete.

The formats, as HF writes them:

- ``model.safetensors``: an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte
  range; ``__metadata__``), then the raw bytes. HF PyTorch writes metadata ``format: pt`` and torch keys;
  HF Flax writes ``format: flax`` and its param paths joined with ``.``.
- ``pytorch_model.bin``: ``torch.save`` of the state dict, a zip holding ``data.pkl`` (a pickle whose
  tensors refer to storages by key) and one ``data/<key>`` record of raw bytes per storage. Torch < 1.6
  wrote the legacy layout instead: consecutive pickles followed by the storages' bytes. The pickle is read
  by a restricted unpickler that knows the few torch globals a state dict uses and refuses anything else,
  so reading a ``.bin`` never runs code from the file.
- ``flax_model.msgpack``: ``flax.serialization.to_bytes`` of the params tree, a msgpack map of maps whose
  leaves are ext type 1 payloads, each itself msgpack of ``(shape, dtype name, raw bytes)``. Leaves over
  2**30 bytes are split into a ``__msgpack_chunked_array__`` map.
- Sharded: ``<name>.index.json`` with ``weight_map`` (tensor name -> shard file) and shards named
  ``model-00001-of-00003.safetensors``, ``pytorch_model-00001-of-00003.bin``,
  ``flax_model-00001-of-00003.msgpack``; msgpack index names are param paths joined with ``/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import mmap
import os
import pickle
import re
import shutil
import signal
import struct
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ml_dtypes
import numpy as np

Format = Literal["safetensors", "bin", "msgpack"]
Layout = Literal["torch", "flax"]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file or the keys."""


@dataclass(frozen=True)
class FormatFiles:
    """The file names of one format: single file, index of a sharded checkpoint, shard pattern."""

    single: str
    index: str
    stem: str
    suffix: str

    def shard(self, i: int, n: int) -> str:
        return f"{self.stem}-{i:05d}-of-{n:05d}{self.suffix}"

    def owns(self, name: str) -> bool:
        """Whether ``name`` is one of this format's weight files (single, index or a shard)."""
        shard = re.fullmatch(rf"{re.escape(self.stem)}-\d{{5}}-of-\d{{5}}{re.escape(self.suffix)}", name)
        return name in (self.single, self.index) or shard is not None


# In HF's order of preference when a directory holds several.
FORMATS: dict[Format, FormatFiles] = {
    "safetensors": FormatFiles("model.safetensors", "model.safetensors.index.json", "model", ".safetensors"),
    "bin": FormatFiles("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model", ".bin"),
    "msgpack": FormatFiles("flax_model.msgpack", "flax_model.msgpack.index.json", "flax_model", ".msgpack"),
}
# Weight files of formats tandem does not read, named in the error when a directory holds only those.
_OTHER_WEIGHTS = ("tf_model.h5", "tf_model.h5.index.json", "model.ckpt.index", "model.onnx")

_FLOAT_DTYPES = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
_DTYPES = {
    **_FLOAT_DTYPES,
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    **{name: np.dtype(name) for name in ("int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8")},
    "bool": np.dtype(np.bool_),
}
# In safetensors' own dtype order: its writer puts higher dtypes first, then sorts by name; so do we, which
# makes our files byte-identical to the ones the safetensors library writes for the same tensors.
_SAFETENSORS_CODES = {
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
_SAFETENSORS_RANK = {name: rank for rank, name in enumerate(_SAFETENSORS_CODES.values())}
_SAFETENSORS_NAMES = {name: code for code, name in _SAFETENSORS_CODES.items()}
# torch's legacy typed storage classes, as a state-dict pickle names them.
_TORCH_STORAGES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
_STORAGE_OF = {name: storage for storage, name in _TORCH_STORAGES.items()}


def is_floating(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a floating type, ml_dtypes' bfloat16 and float8 included (numpy kind 'V')."""
    return dtype.kind == "f" or dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def float_dtype(name: str) -> np.dtype:
    """The numpy dtype of ``float32``, ``float16``, ``bfloat16`` or ``float64``; ValueError otherwise."""
    if name not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_FLOAT_DTYPES)}, got {name!r}")
    return _FLOAT_DTYPES[name]


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int or HF's notation (``"500MB"``, ``"5GB"``, ``"2GiB"``)."""
    if isinstance(size, int):
        return size
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?I?B)?\s*", size.upper())
    if match is None or (match.group(2) or "B") not in units:
        raise ValueError(f"cannot read a size from {size!r}; write e.g. 500MB, 5GB or 2GiB")
    return int(float(match.group(1)) * units[match.group(2) or "B"])


# ----------------------------------------------------------------------------------------------- tensors
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
    return math.prod(tensor.shape) * tensor.dtype.itemsize


def _source(name: str, tensor: Tensor) -> np.ndarray:
    value = np.asarray(tensor.source() if isinstance(tensor, Deferred) else tensor)
    if value.shape != tuple(tensor.shape):
        raise AssertionError(f"{name}: declared shape {tensor.shape}, made {value.shape}")
    return value


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


def _materialise(name: str, tensor: Tensor) -> np.ndarray:
    """``tensor`` as a C-contiguous array of its declared dtype (the source itself when it is one)."""
    value = _source(name, tensor)
    if value.flags.c_contiguous and value.dtype == tensor.dtype:
        return value
    out = np.empty(value.shape, tensor.dtype)
    _copy_into(out, value)
    return out


@dataclass(frozen=True, eq=False)
class Checkpoint(Mapping[str, np.ndarray]):
    """The tensors of an HF checkpoint directory as read-only numpy views of the memory-mapped files.

    Names are HF PyTorch keys for ``layout="torch"`` (safetensors and ``.bin`` written by PyTorch), and HF
    Flax param paths joined with ``/`` for ``layout="flax"`` (msgpack, safetensors written by HF Flax).
    """

    format: Format
    layout: Layout
    files: tuple[Path, ...]
    tensors: Mapping[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


# -------------------------------------------------------------------------------------------- reading
def _map_file(path: Path) -> mmap.mmap:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise CheckpointError(f"{path} is empty")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err


def _view(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(buffer, dtype, count, offset).reshape(shape)


def detect_format(directory: Path) -> Format:
    """The format of the weights in ``directory``, in HF's order of preference."""
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    for name, files in FORMATS.items():
        if (directory / files.single).is_file() or (directory / files.index).is_file():
            return name
    found = sorted(p.name for p in directory.iterdir())
    others = [name for name in found if name in _OTHER_WEIGHTS]
    if others:
        raise CheckpointError(
            f"{directory} holds weights in a format tandem does not read ({', '.join(others)}); "
            f"tandem reads {', '.join(f.single for f in FORMATS.values())} and their sharded forms"
        )
    expected = ", ".join(f"{f.single} or {f.index}" for f in FORMATS.values())
    raise FileNotFoundError(
        f"no model weights in {directory}: expected {expected} (found: {', '.join(found) or 'nothing'})"
    )


def read_checkpoint(directory: str | Path, format: Format | None = None) -> Checkpoint:
    """Open the checkpoint in ``directory`` (``format``: which one, when it holds several)."""
    directory = Path(directory)
    if format is None:
        format = detect_format(directory)
    elif format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose one of {', '.join(FORMATS)}")
    files = FORMATS[format]
    single, index = directory / files.single, directory / files.index
    if single.is_file():
        paths = [single]
    elif index.is_file():
        paths = _shards(index)
    else:
        raise FileNotFoundError(f"no {files.single} or {files.index} in {directory}")
    tensors: dict[str, np.ndarray] = {}
    layout: Layout = "flax" if format == "msgpack" else "torch"
    for path in paths:
        if format == "safetensors":
            part, metadata = _read_safetensors(path)
            if metadata.get("format") == "flax":  # HF Flax's safetensors: param paths joined with "."
                layout = "flax"
                part = {name.replace(".", "/"): value for name, value in part.items()}
        elif format == "bin":
            part = _read_bin(path)
        else:
            part = _read_msgpack(path)
        tensors.update(part)
    if index.is_file() and not single.is_file():
        _check_index(index, tensors, layout)
    return Checkpoint(format, layout, tuple(paths), tensors)


def _read_index(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to shard file names")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not a valid checkpoint index ({type(err).__name__}: {err})") from err
    return weight_map


def _shards(index: Path) -> list[Path]:
    paths = []
    for name in sorted(set(_read_index(index).values())):
        path = index.parent / name
        if Path(name).name != name or not path.is_file():
            raise CheckpointError(f"{index} lists the shard {name}, which is missing from {index.parent}")
        paths.append(path)
    return paths


def _check_index(index: Path, tensors: Mapping[str, np.ndarray], layout: Layout) -> None:
    weight_map = _read_index(index)
    if layout == "flax" and index.name != FORMATS["msgpack"].index:  # HF Flax's safetensors index uses "."
        weight_map = {name.replace(".", "/"): shard for name, shard in weight_map.items()}
    absent = [f"{name} (in {shard})" for name, shard in weight_map.items() if name not in tensors]
    if absent:
        raise CheckpointError(f"{index} lists tensors its shards do not hold: {_listing(absent)}")


def _listing(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    buffer = _map_file(path)
    size = len(buffer)
    length = struct.unpack_from("<Q", buffer, 0)[0] if size >= 8 else size
    if 8 + length > size:
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({size} bytes)")
    try:
        header = json.loads(bytes(buffer[8 : 8 + length]))
        metadata = dict(header.pop("__metadata__", None) or {})
        out = {}
        for name, info in header.items():
            code = info["dtype"]
            if code not in _SAFETENSORS_CODES:
                raise CheckpointError(f"{path}: tensor {name} has dtype {code}, which tandem does not read")
            dtype = _DTYPES[_SAFETENSORS_CODES[code]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
            if end - begin != math.prod(shape) * dtype.itemsize or begin < 0:
                raise CheckpointError(f"{path}: tensor {name} has a byte range that does not fit its shape {shape}")
            if 8 + length + end > size:
                raise CheckpointError(
                    f"{path} is truncated: tensor {name} ends at byte {8 + length + end}, the file has {size}"
                )
            out[name] = _view(buffer, dtype, shape, 8 + length + begin)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path} has a corrupt safetensors header ({type(err).__name__}: {err})") from err
    return out, metadata


# msgpack: the subset flax.serialization writes, parsed in place so that array leaves stay views of the map.
class _MsgpackReader:
    def __init__(self, path: Path, buffer: mmap.mmap) -> None:
        self.path, self.buffer, self.pos = path, buffer, 0

    def _take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def _bytes(self, n: int) -> tuple[int, int]:
        start, self.pos = self.pos, self.pos + n
        if self.pos > len(self.buffer):
            raise EOFError
        return start, n

    def value(self) -> Any:
        b = self._take("B")
        if b <= 0x7F or b >= 0xE0:
            return b if b <= 0x7F else b - 0x100
        if 0x80 <= b <= 0x8F:
            return self._map(b & 0x0F)
        if 0x90 <= b <= 0x9F:
            return [self.value() for _ in range(b & 0x0F)]
        if 0xA0 <= b <= 0xBF:
            return self._str(b & 0x1F)
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if b in simple:
            return simple[b]
        sized = {0xC4: "B", 0xC5: ">H", 0xC6: ">I", 0xD9: "B", 0xDA: ">H", 0xDB: ">I"}
        if b in sized:
            n = self._take(sized[b])
            if b >= 0xD9:
                return self._str(n)
            start, n = self._bytes(n)
            return bytes(self.buffer[start : start + n])
        if b in (0xC7, 0xC8, 0xC9):
            return self._ext(self._take({0xC7: "B", 0xC8: ">H", 0xC9: ">I"}[b]))
        if 0xD4 <= b <= 0xD8:
            return self._ext(1 << (b - 0xD4))
        numbers = {0xCA: ">f", 0xCB: ">d", 0xCC: "B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q"}
        numbers |= {0xD0: "b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
        if b in numbers:
            return self._take(numbers[b])
        if b in (0xDC, 0xDD):
            return [self.value() for _ in range(self._take(">H" if b == 0xDC else ">I"))]
        if b in (0xDE, 0xDF):
            return self._map(self._take(">H" if b == 0xDE else ">I"))
        raise ValueError(f"byte 0x{b:02x} at offset {self.pos - 1} is not msgpack")

    def _str(self, n: int) -> str:
        start, n = self._bytes(n)
        return bytes(self.buffer[start : start + n]).decode()

    def _map(self, n: int) -> Any:
        out = {}
        for _ in range(n):
            key = self.value()
            out[str(key)] = self.value()
        if out.get("__msgpack_chunked_array__") is True:  # flax's split of a leaf over 2**30 bytes
            shape = tuple(out["shape"][str(i)] for i in range(len(out["shape"])))
            chunks = [out["chunks"][str(i)] for i in range(len(out["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return out

    def _ext(self, n: int) -> np.ndarray:
        code = self._take("b")
        end = self.pos + n
        if code not in (1, 3):  # flax's ndarray and numpy-scalar ext types
            raise ValueError(f"msgpack ext type {code} at offset {self.pos - 1} is not a flax array")
        marker = self._take("B")
        if marker != 0x93:
            raise ValueError(f"flax array at offset {self.pos - 1} is not a (shape, dtype, bytes) triple")
        shape = tuple(self.value())
        dtype_name = self.value()
        dtype_name = dtype_name.decode() if isinstance(dtype_name, bytes) else dtype_name
        if dtype_name not in _DTYPES:
            raise ValueError(f"array dtype {dtype_name!r} at offset {self.pos} is not one tandem reads")
        size = self._take({0xC4: "B", 0xC5: ">H", 0xC6: ">I"}[self._take("B")])
        start, size = self._bytes(size)
        dtype = _DTYPES[dtype_name]
        if self.pos != end or size != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"flax array at offset {start} has {size} bytes for shape {shape} {dtype_name}")
        return _view(self.buffer, dtype, shape, start)


def _read_msgpack(path: Path) -> dict[str, np.ndarray]:
    reader = _MsgpackReader(path, _map_file(path))
    try:
        tree = reader.value()
        if reader.pos != len(reader.buffer):
            raise ValueError(f"{len(reader.buffer) - reader.pos} bytes follow the params tree")
    except (EOFError, struct.error) as err:
        raise CheckpointError(f"{path} is truncated (msgpack ends inside a value at offset {reader.pos})") from err
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not a flax msgpack checkpoint: {err}") from err
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


# pytorch_model.bin: a restricted unpickler that builds tensor references, resolved against the storages.
@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> Any:
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data


def _rebuild_from_type(func: Callable[..., Any], _type: Any, args: tuple[Any, ...], _state: Any) -> Any:
    return func(*args)


class _TensorType:
    """Stands in for ``torch.Tensor`` / ``torch.nn.Parameter`` where a pickle names the type it rebuilds."""


# The torch globals a state-dict pickle refers to. Anything else is refused: a weights file has no reason
# to load other code.
_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    **{("torch", storage): _DTYPES[name] for storage, name in _TORCH_STORAGES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _TORCH_GLOBALS.get((module, name))
        if found is None:
            raise CheckpointError(
                f"{self.path} refers to {module}.{name}, which is not part of a state dict of tensors; "
                "tandem does not unpickle it (only tensors, storages and OrderedDict are allowed)"
            )
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], np.dtype)):
            raise CheckpointError(f"{self.path} refers to a persistent object {pid!r} that is not a storage")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError(f"{self.path} uses storage views (torch < 0.4), which tandem does not read")
        _, dtype, key, _location, numel = pid[:5]
        storage = self.storages.setdefault(str(key), _Storage(str(key), dtype, int(numel)))
        if storage.dtype != dtype:
            raise CheckpointError(f"{self.path}: storage {key} is read as both {storage.dtype} and {dtype}")
        return storage


def _resolve(ref: _TensorRef, data: np.ndarray, path: Path, name: str) -> np.ndarray:
    shape, stride = ref.shape, ref.stride
    numel = math.prod(shape)
    if numel == 0:
        return np.empty(shape, data.dtype)
    end = ref.offset + 1 + sum((d - 1) * s for d, s in zip(shape, stride, strict=True))
    if ref.offset < 0 or end > data.size:
        raise CheckpointError(f"{path}: tensor {name} reaches past the end of its storage ({data.size} elements)")
    if stride == tuple(math.prod(shape[i + 1 :]) for i in range(len(shape))):
        return data[ref.offset : ref.offset + numel].reshape(shape)
    itemsize = data.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        data[ref.offset :], shape, tuple(s * itemsize for s in stride), writeable=False
    )


def _state_dict(path: Path, obj: Any, storage_data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict) or not all(isinstance(v, _TensorRef) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {name: _resolve(ref, storage_data[ref.storage.key], path, name) for name, ref in obj.items()}


# torch.save's legacy (pre-zip) layout starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _read_bin(path: Path) -> dict[str, np.ndarray]:
    if zipfile.is_zipfile(path):
        return _read_torch_zip(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        raise CheckpointError(f"{path} is truncated or corrupt (a zip archive without its central directory)")
    if head.startswith(b"\x80\x02\x8a\x0a") and int.from_bytes(head[4:14], "little") == _LEGACY_MAGIC:
        return _read_torch_legacy(path)
    raise CheckpointError(f"{path} is not a torch.save file (neither a zip archive nor the legacy format)")


def _read_torch_zip(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip archive but not a torch.save file (no single data.pkl)")
        root = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        if f"{root}byteorder" in names and archive.read(f"{root}byteorder") != b"little":
            raise CheckpointError(f"{path} was saved on a big-endian machine, which tandem does not read")
        unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), path)
        obj = unpickler.load()
        buffer = _map_file(path)
        data = {}
        for key, storage in unpickler.storages.items():
            record = f"{root}data/{key}"
            if record not in names:
                raise CheckpointError(f"{path} has no record {record} for a storage its pickle uses")
            data[key] = _storage_view(archive, archive.getinfo(record), buffer, storage, path)
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, struct.error, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path} is truncated or corrupt ({type(err).__name__}: {err})") from err
    return _state_dict(path, obj, data)


def _storage_view(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, buffer: mmap.mmap, storage: _Storage, path: Path
) -> np.ndarray:
    size = storage.numel * storage.dtype.itemsize
    if info.file_size < size:
        raise CheckpointError(f"{path}: record {info.filename} has {info.file_size} bytes, its tensors need {size}")
    if info.compress_type != zipfile.ZIP_STORED:
        return np.frombuffer(archive.read(info), storage.dtype, storage.numel)
    # torch stores records uncompressed: read the local header for where the bytes start, and map them.
    offset = info.header_offset
    if bytes(buffer[offset : offset + 4]) != b"PK\x03\x04":
        raise CheckpointError(f"{path}: record {info.filename} has a corrupt zip header")
    name_length, extra_length = struct.unpack_from("<HH", buffer, offset + 26)
    start = offset + 30 + name_length + extra_length
    if start + size > len(buffer):
        raise CheckpointError(f"{path} is truncated: record {info.filename} ends past the end of the file")
    return _view(buffer, storage.dtype, (storage.numel,), start)


def _read_torch_legacy(path: Path) -> dict[str, np.ndarray]:
    buffer = _map_file(path)
    try:
        with open(path, "rb") as stream:  # consecutive pickles, then each storage's element count and bytes
            for _ in range(3):  # magic number, protocol version, sys info
                _StateDictUnpickler(stream, path).load()
            unpickler = _StateDictUnpickler(stream, path)
            obj = unpickler.load()
            keys = _StateDictUnpickler(stream, path).load()
            offset, data = stream.tell(), {}
        for key in keys:
            storage = unpickler.storages[str(key)]
            (numel,) = struct.unpack_from("<q", buffer, offset)
            if numel != storage.numel or offset + 8 + numel * storage.dtype.itemsize > len(buffer):
                raise CheckpointError(f"{path} is truncated or corrupt at storage {key}")
            data[str(key)] = _view(buffer, storage.dtype, (numel,), offset + 8)
            offset += 8 + numel * storage.dtype.itemsize
    except (EOFError, pickle.UnpicklingError, struct.error, KeyError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path} is truncated or corrupt ({type(err).__name__}: {err})") from err
    return _state_dict(path, obj, data)


# -------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class _Region:
    """Elements ``[start, start + count)`` of a tensor in C order (``count=None``: all of it)."""

    name: str
    tensor: Tensor
    start: int = 0
    count: int | None = None

    @property
    def nbytes(self) -> int:
        return nbytes(self.tensor) if self.count is None else self.count * self.tensor.dtype.itemsize

    @property
    def ends_tensor(self) -> bool:
        return self.count is None or self.start + self.count == math.prod(self.tensor.shape)


Piece = bytes | _Region


def _fill(path: Path, pieces: Sequence[Piece], done: Callable[[str, int], None]) -> None:
    """Write ``pieces`` back to back into a new file, making each tensor only when its turn comes."""
    whole: tuple[str, np.ndarray] | None = None  # the tensor whose chunks are being written
    with open(path, "wb") as f:
        for piece in pieces:
            if isinstance(piece, bytes):
                f.write(piece)
                continue
            if whole is None or whole[0] != piece.name:
                whole = (piece.name, _materialise(piece.name, piece.tensor).reshape(-1))
            count = whole[1].size if piece.count is None else piece.count
            if count:
                f.write(whole[1][piece.start : piece.start + count].view(np.uint8).data)
            if piece.ends_tensor:
                whole = None
                done(piece.name, nbytes(piece.tensor))


def _write_safetensors(
    path: Path, tensors: Mapping[str, Tensor], layout: Layout, done: Callable[[str, int], None]
) -> None:
    order = sorted(tensors, key=lambda name: (-_SAFETENSORS_RANK[tensors[name].dtype.name], name))
    header: dict[str, Any] = {"__metadata__": {"format": "pt" if layout == "torch" else "flax"}}
    offset = 0
    for name in order:
        size = nbytes(tensors[name])
        code = _SAFETENSORS_NAMES[tensors[name].dtype.name]
        key = name if layout == "torch" else name.replace("/", ".")
        header[key] = {"dtype": code, "shape": list(tensors[name].shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    _fill(path, [struct.pack("<Q", len(raw)) + raw, *(_Region(name, tensors[name]) for name in order)], done)


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


def _flax_array_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """What precedes an array's raw bytes in flax's msgpack: ext type 1 over ``(shape, dtype name, bytes)``."""
    size = math.prod(shape) * dtype.itemsize
    dims = _pack_header(len(shape), (0x90, 16), (0, 0xDC, 0xDD)) + b"".join(_pack_uint(d) for d in shape)
    inner = b"\x93" + dims + _pack_str(dtype.name) + _pack_header(size, None, (0xC4, 0xC5, 0xC6))
    length = len(inner) + size
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}  # msgpack's fixext forms, as msgpack itself writes
    header = bytes([fixed[length]]) if length in fixed else _pack_header(length, None, (0xC7, 0xC8, 0xC9))
    return header + b"\x01" + inner


# flax splits leaves above this size (msgpack's 2**31 - 1 limit per object, with a margin).
_MSGPACK_CHUNK = 2**30


def _write_msgpack(
    path: Path, tensors: Mapping[str, Tensor], _layout: Layout, done: Callable[[str, int], None]
) -> None:
    tree: dict[str, Any] = {}
    for name in tensors:
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = name
    pieces: list[Piece] = []
    pending = bytearray()

    def region(piece: _Region) -> None:
        pieces.extend([bytes(pending), piece])
        pending.clear()

    def leaf(name: str) -> None:
        tensor = tensors[name]
        if nbytes(tensor) <= _MSGPACK_CHUNK:
            pending.extend(_flax_array_header(tuple(tensor.shape), tensor.dtype))
            region(_Region(name, tensor))
            return
        numel, step = math.prod(tensor.shape), max(1, _MSGPACK_CHUNK // tensor.dtype.itemsize)
        starts = range(0, numel, step)
        pending.extend(_pack_map(3) + _pack_str("__msgpack_chunked_array__") + b"\xc3")
        pending.extend(_pack_str("shape") + _pack_map(len(tensor.shape)))
        for i, d in enumerate(tensor.shape):
            pending.extend(_pack_str(str(i)) + _pack_uint(d))
        pending.extend(_pack_str("chunks") + _pack_map(len(starts)))
        for i, start in enumerate(starts):
            count = min(step, numel - start)
            pending.extend(_pack_str(str(i)) + _flax_array_header((count,), tensor.dtype))
            region(_Region(name, tensor, start, count))

    def node(children: dict[str, Any]) -> None:
        pending.extend(_pack_map(len(children)))
        for key, child in sorted(children.items()):  # jax's pytree order, as HF Flax's files have it
            pending.extend(_pack_str(key))
            if isinstance(child, dict):
                node(child)
            else:
                leaf(child)

    node(tree)
    _fill(path, [*pieces, bytes(pending)], done)


def _pickle_int(n: int) -> bytes:
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _pickle_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _pickle_tuple(items: Sequence[int]) -> bytes:
    return b"(" + b"".join(_pickle_int(i) for i in items) + b"t"


def _state_dict_pickle(tensors: Mapping[str, Tensor]) -> bytes:
    """The ``data.pkl`` torch.save writes for a state dict whose tensor ``i`` owns storage ``data/i``."""
    ordered_dict = b"ccollections\nOrderedDict\n)R"
    out = [b"\x80\x02", ordered_dict, b"("]
    for key, (name, tensor) in enumerate(tensors.items()):
        shape = tuple(tensor.shape)
        stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        storage = f"ctorch\n{_STORAGE_OF[tensor.dtype.name]}\n".encode()
        pid = b"(" + _pickle_str("storage") + storage + _pickle_str(str(key)) + _pickle_str("cpu")
        pid += _pickle_int(math.prod(shape)) + b"tQ"
        args = pid + _pickle_int(0) + _pickle_tuple(shape) + _pickle_tuple(stride) + b"\x89" + ordered_dict
        out.append(_pickle_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR")
    out.append(b"u.")
    return b"".join(out)


# torch aligns each storage record's bytes to 64 so that they can be memory-mapped.
_TORCH_ALIGNMENT = 64


def _write_bin(path: Path, tensors: Mapping[str, Tensor], _layout: Layout, done: Callable[[str, int], None]) -> None:
    for name, tensor in tensors.items():
        if tensor.dtype.name not in _STORAGE_OF:
            raise ValueError(f"{name}: torch has no storage type for {tensor.dtype}")
    records: list[tuple[str, bytes | tuple[str, Tensor]]] = [
        ("data.pkl", _state_dict_pickle(tensors)),
        ("byteorder", b"little"),
        *((f"data/{i}", (name, t)) for i, (name, t) in enumerate(tensors.items())),
        ("version", b"3\n"),
        (".format_version", b"1"),
        (".storage_alignment", str(_TORCH_ALIGNMENT).encode()),
    ]
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
        for record, content in records:
            size = len(content) if isinstance(content, bytes) else nbytes(content[1])
            info = zipfile.ZipInfo(f"archive/{record}", date_time=(1980, 1, 1, 0, 0, 0))
            info.file_size = size
            # Pad the local header with an extra field so that the record's bytes start 64-aligned.
            zip64 = 20 if size * 1.05 > zipfile.ZIP64_LIMIT else 0
            start = f.tell() + 30 + len(info.filename.encode()) + 4 + zip64
            padding = -start % _TORCH_ALIGNMENT
            info.extra = struct.pack("<HH", 0x4246, padding) + bytes(padding)
            with archive.open(info, "w") as out:
                if isinstance(content, bytes):
                    out.write(content)
                else:
                    value = _materialise(*content)
                    if value.size:
                        out.write(value.reshape(-1).view(np.uint8).data)
                    done(content[0], size)


_WRITERS = {"safetensors": _write_safetensors, "msgpack": _write_msgpack, "bin": _write_bin}


def _plan_shards(tensors: Mapping[str, Tensor], max_shard_size: int | None) -> list[list[str]]:
    """HF's sharding: tensors in order, a new shard whenever the next one would pass the limit."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        if max_shard_size is not None and shards[-1] and size + nbytes(tensor) > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes(tensor)
    return shards


def write_checkpoint(
    directory: str | Path,
    tensors: Mapping[str, Tensor],
    format: Format,
    layout: Layout,
    *,
    max_shard_size: int | str | None = None,
    files: Mapping[str, bytes] | None = None,
    on_tensor: Callable[[str, int], None] | None = None,
) -> list[str]:
    """Write ``tensors`` (and extra ``files``, e.g. ``config.json``) as an HF checkpoint into ``directory``.

    Names are torch keys (``layout="torch"``) or ``/``-joined flax paths (``layout="flax"``). Everything is
    written into a temporary folder inside ``directory`` and moved into place only when complete, with
    interrupts held back while the files move; weight files of the same format that the new checkpoint does
    not have (an older checkpoint's shards) are then removed. A failure or an interrupt before that leaves
    ``directory`` as it was. ``on_tensor(name, nbytes)`` is called after each tensor is written. Returns the
    names of the files written.
    """
    if (format == "bin" and layout != "torch") or (format == "msgpack" and layout != "flax"):
        raise ValueError(f"{format} holds {'torch' if format == 'bin' else 'flax'}-layout weights, not {layout}")
    names = FORMATS[format]
    limit = None if max_shard_size is None else parse_size(max_shard_size)
    shards = _plan_shards(tensors, limit)
    done = on_tensor or (lambda _name, _size: None)
    with _staging(Path(directory)) as (stage, commit):
        written = []
        for i, shard in enumerate(shards, start=1):
            file = names.single if len(shards) == 1 else names.shard(i, len(shards))
            _WRITERS[format](stage / file, {name: tensors[name] for name in shard}, layout, done)
            written.append(file)
        if len(shards) > 1:
            weight_map = {
                (name.replace("/", ".") if layout == "flax" and format == "safetensors" else name): file
                for file, shard in zip(written, shards, strict=True)
                for name in shard
            }
            index = {"metadata": {"total_size": sum(nbytes(t) for t in tensors.values())}, "weight_map": weight_map}
            (stage / names.index).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            written.append(names.index)
        for name, content in (files or {}).items():
            (stage / name).write_bytes(content)
            written.append(name)
        commit(written, names.owns)
    return written


@contextlib.contextmanager
def _staging(
    directory: Path,
) -> Iterator[tuple[Path, Callable[[list[str], Callable[[str], bool]], None]]]:
    """A temporary folder inside ``directory`` and ``commit(names, stale)`` that moves its files into place."""
    created = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".tandem-", dir=directory))

    def commit(names: list[str], stale: Callable[[str], bool]) -> None:
        with _interrupts_held():
            for name in names:
                os.replace(stage / name, directory / name)
            for old in directory.iterdir():
                if old.is_file() and stale(old.name) and old.name not in names:
                    old.unlink()

    try:
        yield stage, commit
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in created:  # folders made for a checkpoint that was not written
            if any(folder.iterdir()):
                break
            folder.rmdir()


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (delivered on exit) where the platform allows it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
