"""``pytorch_model.bin``: ``torch.save`` of a state dict, as a zip archive or in the legacy (torch < 1.6) layout.

The zip holds ``data.pkl`` (a pickle whose tensors refer to storages by key) and one ``data/<key>`` record of
raw bytes per storage; the legacy layout is consecutive pickles followed by the storages' bytes. Both are
read as views of the memory-mapped file; records are written 64-aligned, as torch writes them.
"""

from __future__ import annotations

import io
import mmap
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ._tensors import CheckpointError, Layout, Tensor, flat, map_file, nbytes, view
from ._torch_pickle import STORAGE_OF, StateDictUnpickler, Storage, state_dict, state_dict_pickle

# torch.save's legacy (pre-zip) layout starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# What a damaged archive makes zipfile raise (beyond the pickle's own errors, which the unpickler names).
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, struct.error, ValueError, NotImplementedError, zlib.error)


def read_bin(path: Path) -> dict[str, np.ndarray]:
    """The tensors of one ``.bin`` file, as views of its mapping (a compressed record is read into memory)."""
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        raise CheckpointError(f"{path} is truncated or corrupt (a zip archive without its central directory)")
    if head.startswith(b"\x80\x02\x8a\x0a") and int.from_bytes(head[4:14], "little") == _LEGACY_MAGIC:
        return _read_legacy(path)
    raise CheckpointError(f"{path} is not a torch.save file (neither a zip archive nor the legacy format)")


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip archive but not a torch.save file (no single data.pkl)")
        root = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        if f"{root}byteorder" in names and archive.read(f"{root}byteorder") != b"little":
            raise CheckpointError(f"{path} was saved on a big-endian machine, which tandem does not read")
        unpickler = StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), path)
        obj = unpickler.load()
        buffer = map_file(path)
        data = {}
        for key, storage in unpickler.storages.items():
            record = f"{root}data/{key}"
            if record not in names:
                raise CheckpointError(f"{path} has no record {record} for a storage its pickle uses")
            data[key] = _storage_view(archive, archive.getinfo(record), buffer, storage, path)
    except _ZIP_ERRORS as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path} is truncated or corrupt ({type(err).__name__}: {err})") from err
    return state_dict(path, obj, data)


def _storage_view(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, buffer: mmap.mmap, storage: Storage, path: Path
) -> np.ndarray:
    size = storage.numel * storage.dtype.itemsize
    if info.file_size < size:
        raise CheckpointError(f"{path}: record {info.filename} has {info.file_size} bytes, its tensors need {size}")
    if info.compress_type != zipfile.ZIP_STORED:
        return np.frombuffer(archive.read(info), storage.dtype, storage.numel)
    # torch stores records uncompressed: read the local header for where the bytes start, and map them.
    offset = info.header_offset
    if offset + 30 > len(buffer) or bytes(buffer[offset : offset + 4]) != b"PK\x03\x04":
        raise CheckpointError(f"{path}: record {info.filename} has a corrupt zip header")
    name_length, extra_length = struct.unpack_from("<HH", buffer, offset + 26)
    start = offset + 30 + name_length + extra_length
    if start + size > len(buffer):
        raise CheckpointError(f"{path} is truncated: record {info.filename} ends past the end of the file")
    return view(buffer, storage.dtype, (storage.numel,), start)


def _read_legacy(path: Path) -> dict[str, np.ndarray]:
    buffer = map_file(path)
    with open(path, "rb") as stream:  # consecutive pickles, then each storage's element count and bytes
        for _ in range(3):  # magic number, protocol version, sys info
            StateDictUnpickler(stream, path).load()
        unpickler = StateDictUnpickler(stream, path)
        obj = unpickler.load()
        keys = StateDictUnpickler(stream, path).load()
        offset = stream.tell()
    if not isinstance(keys, list) or not all(isinstance(key, (str, int)) for key in keys):
        raise CheckpointError(f"{path} is truncated or corrupt: its storage list is a {type(keys).__name__}")
    data = {}
    for key in map(str, keys):
        storage = unpickler.storages.get(key)
        if storage is None:
            raise CheckpointError(f"{path} is truncated or corrupt: it holds storage {key}, which its pickle lacks")
        end = offset + 8 + storage.numel * storage.dtype.itemsize
        if end > len(buffer) or struct.unpack_from("<q", buffer, offset)[0] != storage.numel:
            raise CheckpointError(f"{path} is truncated or corrupt at storage {key}")
        data[key] = view(buffer, storage.dtype, (storage.numel,), offset + 8)
        offset = end
    return state_dict(path, obj, data)


# torch aligns each storage record's bytes to 64 so that they can be memory-mapped.
_TORCH_ALIGNMENT = 64


def write_bin(path: Path, tensors: Mapping[str, Tensor], _layout: Layout, done: Callable[[str, int], None]) -> None:
    """Write ``tensors`` (torch keys) as torch.save's zip archive, one storage record per tensor."""
    for name, tensor in tensors.items():
        if tensor.dtype.name not in STORAGE_OF:
            raise ValueError(f"{name}: torch has no storage type for {tensor.dtype}")
    records: list[tuple[str, bytes | tuple[str, Tensor]]] = [
        ("data.pkl", state_dict_pickle(tensors)),
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
                    value = flat(*content)
                    if value.size:
                        out.write(value.view(np.uint8).data)
                    done(content[0], size)
