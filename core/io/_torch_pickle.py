"""The pickle inside a ``pytorch_model.bin``: read by a restricted unpickler, written by hand.

The unpickler knows the few torch globals a state dict uses and refuses anything else, so reading a ``.bin``
never runs code from the file. It builds references (storage, offset, shape, stride); each is checked, with
the tensor's name, before it becomes a view of its storage: a view never reaches outside that storage, and
never overlaps itself.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._tensors import DTYPES, CheckpointError, Tensor, as_shape, is_count

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
STORAGE_OF = {name: storage for storage, name in _TORCH_STORAGES.items()}


@dataclass(frozen=True)
class Storage:
    """A storage a pickle refers to: its record key, element dtype and element count."""

    key: str
    dtype: np.dtype
    numel: int


class _TensorRef(NamedTuple):  # immutable, no __dict__: pickle's BUILD cannot rewrite one once it is made
    """``_rebuild_tensor_v2``'s arguments as the pickle gave them; :func:`_resolve` checks them."""

    storage: Any
    offset: Any
    shape: Any
    stride: Any


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> _TensorRef:
    return _TensorRef(storage, offset, shape, stride)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _rebuild_from_type(func: Callable[..., Any], _type: Any, args: Sequence[Any], _state: Any) -> Any:
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
    **{("torch", storage): DTYPES[name] for storage, name in _TORCH_STORAGES.items()},
}

# What a hostile or damaged pickle can make the unpickler raise: an allowed global called with the wrong
# arguments or not callable at all, a BUILD on an object that has no state, a bad memo or opcode, etc.
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    OverflowError,
    RecursionError,
    MemoryError,
    struct.error,
)


class StateDictUnpickler(pickle.Unpickler):
    """Loads one pickle of a ``.bin``; ``storages`` collects the storages its tensors refer to."""

    def __init__(self, file: io.IOBase, path: Path) -> None:
        super().__init__(file)
        self.path = path
        self.storages: dict[str, Storage] = {}

    def load(self) -> Any:
        """The next pickle in the file; CheckpointError, naming the file, for anything but a state dict's parts."""
        try:
            return super().load()
        except _PICKLE_ERRORS as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"{self.path} is truncated or corrupt ({type(err).__name__}: {err})") from err

    def find_class(self, module: str, name: str) -> Any:
        found = _TORCH_GLOBALS.get((module, name))
        if found is None:
            raise CheckpointError(
                f"{self.path} refers to {module}.{name}, which is not part of a state dict of tensors; "
                "tandem does not unpickle it (only tensors, storages and OrderedDict are allowed)"
            )
        return found

    def persistent_load(self, pid: Any) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], np.dtype)):
            raise CheckpointError(f"{self.path} refers to a persistent object {pid!r} that is not a storage")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError(f"{self.path} uses storage views (torch < 0.4), which tandem does not read")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(key, (str, int)) or not is_count(numel):
            raise CheckpointError(f"{self.path}: storage {key!r} has {numel!r} elements; expected a key and a count")
        storage = self.storages.setdefault(str(key), Storage(str(key), dtype, numel))
        if storage != Storage(str(key), dtype, numel):
            raise CheckpointError(
                f"{self.path}: storage {key} is read as both {storage.numel} x {storage.dtype} and {numel} x {dtype}"
            )
        return storage


def state_dict(path: Path, obj: Any, storage_data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors of the unpickled ``obj`` as views of ``storage_data`` (storage key -> its elements)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (it holds a {type(obj).__name__})")
    out = {}
    for name, ref in obj.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{path} does not hold a state dict of tensors: it has a key {name!r}")
        out[name] = _resolve(path, name, ref, storage_data)
    return out


def _resolve(path: Path, name: str, ref: Any, storage_data: Mapping[str, np.ndarray]) -> np.ndarray:
    where = f"{path}: tensor {name}"
    if not isinstance(ref, _TensorRef) or not isinstance(ref.storage, Storage):
        raise CheckpointError(f"{path} does not hold a state dict of tensors: {name} is a {type(ref).__name__}")
    data = storage_data.get(ref.storage.key)
    if data is None:
        raise CheckpointError(f"{where} uses storage {ref.storage.key}, which the file does not hold")
    shape, stride, offset = as_shape(ref.shape, data.dtype), ref.stride, ref.offset
    if shape is None:
        raise CheckpointError(f"{where} has shape {ref.shape!r}; a shape is a tuple of non-negative ints")
    if not (isinstance(stride, (list, tuple)) and len(stride) == len(shape) and all(is_count(s) for s in stride)):
        raise CheckpointError(f"{where} has strides {stride!r} for shape {shape}; expected non-negative ints")
    if not is_count(offset):
        raise CheckpointError(f"{where} has storage offset {offset!r}; expected a non-negative int")
    if math.prod(shape) == 0:
        return np.empty(shape, data.dtype)
    reach = 0  # the last element the view touches, past its first; each axis must step over all smaller ones
    for step, size in sorted((s, d) for d, s in zip(shape, stride, strict=True) if d > 1):
        if step <= reach:
            raise CheckpointError(f"{where} has strides {stride} that make shape {shape} overlap itself")
        reach += step * (size - 1)
    if offset + reach >= data.size:
        raise CheckpointError(
            f"{where} reaches element {offset + reach} of storage {ref.storage.key}, which has {data.size}"
        )
    dense = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    if all(s == c for d, s, c in zip(shape, stride, dense, strict=True) if d > 1):
        return data[offset : offset + math.prod(shape)].reshape(shape)
    strides = tuple(s * data.dtype.itemsize if d > 1 else 0 for d, s in zip(shape, stride, strict=True))
    return np.lib.stride_tricks.as_strided(data[offset:], shape, strides, writeable=False)


# ------------------------------------------------------------------------------------------------ writing
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


def state_dict_pickle(tensors: Mapping[str, Tensor]) -> bytes:
    """The ``data.pkl`` torch.save writes for a state dict whose tensor ``i`` owns storage ``data/i``."""
    ordered_dict = b"ccollections\nOrderedDict\n)R"
    out = [b"\x80\x02", ordered_dict, b"("]
    for key, (name, tensor) in enumerate(tensors.items()):
        shape = tuple(tensor.shape)
        stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        storage = f"ctorch\n{STORAGE_OF[tensor.dtype.name]}\n".encode()
        pid = b"(" + _pickle_str("storage") + storage + _pickle_str(str(key)) + _pickle_str("cpu")
        pid += _pickle_int(math.prod(shape)) + b"tQ"
        args = pid + _pickle_int(0) + _pickle_tuple(shape) + _pickle_tuple(stride) + b"\x89" + ordered_dict
        out.append(_pickle_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR")
    out.append(b"u.")
    return b"".join(out)
