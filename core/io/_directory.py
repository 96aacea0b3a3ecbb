"""An HF checkpoint directory: which format it holds, all its tensors read at once, a new one written."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._msgpack import read_msgpack, write_msgpack
from ._safetensors import read_safetensors, write_safetensors
from ._sharding import FORMATS, check_index, index_json, parse_size, plan_shards, shard_paths
from ._staging import staging
from ._tensors import CheckpointError, Format, Layout, Tensor
from ._torch_bin import read_bin, write_bin

# Weight files of formats tandem does not read, named in the error when a directory holds only those.
_OTHER_WEIGHTS = ("tf_model.h5", "tf_model.h5.index.json", "model.ckpt.index", "model.onnx")
# Those again, TF's shards and checkpoint companions included: a write removes them with the other formats.
_FOREIGN_WEIGHTS = re.compile(r"tf_model(-\d{5}-of-\d{5})?\.h5|tf_model\.h5\.index\.json|model\.ckpt\..+|model\.onnx")
_WRITERS = {"safetensors": write_safetensors, "msgpack": write_msgpack, "bin": write_bin}


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


def detect_format(directory: Path) -> Format:
    """The format of the weights in ``directory``: the first of safetensors, bin, msgpack that it holds.

    This is HF PyTorch's order of preference (HF Flax looks for msgpack first); a single file wins over an
    index of the same format. A directory tandem wrote holds one format only (see :func:`write_checkpoint`).
    """
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


def checkpoint_directory(path: str | os.PathLike[str], argument: str) -> Path:
    """``path`` as a Path when it is an existing directory; otherwise an error that names ``argument``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a str or os.PathLike naming a directory, got {type(path).__name__}")
    directory = Path(path)
    if directory.is_file():
        raise ValueError(
            f"{argument}={str(path)!r} is a file; expected a checkpoint directory (config.json and the weights), "
            f"e.g. {str(directory.parent)!r}"
        )
    if not directory.is_dir():
        raise FileNotFoundError(f"no config.json at {directory}: {argument} names no directory")
    return directory


def read_checkpoint(directory: str | Path, format: Format | None = None) -> Checkpoint:
    """Open the checkpoint in ``directory`` (``format``: which one, when it holds several)."""
    directory = Path(directory)
    if format is None:
        format = detect_format(directory)
    else:
        _check_format(format)
    files = FORMATS[format]
    single, index = directory / files.single, directory / files.index
    if single.is_file():
        paths = [single]
    elif index.is_file():
        paths = shard_paths(index)
    else:
        raise FileNotFoundError(f"no {files.single} or {files.index} in {directory}")
    tensors: dict[str, np.ndarray] = {}
    layout: Layout = "flax" if format == "msgpack" else "torch"
    for path in paths:
        if format == "safetensors":
            part, metadata = read_safetensors(path)
            if metadata.get("format") == "flax":  # HF Flax's safetensors: param paths joined with "."
                layout = "flax"
                part = {name.replace(".", "/"): value for name, value in part.items()}
        elif format == "bin":
            part = read_bin(path)
        else:
            part = read_msgpack(path)
        tensors.update(part)
    if index.is_file() and not single.is_file():
        check_index(index, tensors, layout)
    return Checkpoint(format, layout, tuple(paths), tensors)


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
    written into a staging folder inside ``directory`` and moved into place only when complete, with
    interrupts held back while the files move (see ``_staging``). The move also removes every weights file
    the new checkpoint does not have: an older checkpoint's shards and index, weights of another format
    (``model.safetensors`` beside a new ``flax_model.msgpack``) and TF/ONNX weights, so the directory holds
    exactly one checkpoint and no loader can pair stale weights with the new ``config.json``. A failure or an
    interrupt before the move leaves ``directory`` as it was. ``on_tensor(name, nbytes)`` is called after each
    tensor is written. Returns the names of the files written.
    """
    _check_format(format)
    if layout not in ("torch", "flax"):
        raise ValueError(f"layout must be 'torch' or 'flax', got {layout!r}")
    if (format == "bin" and layout != "torch") or (format == "msgpack" and layout != "flax"):
        raise ValueError(f"{format} holds {'torch' if format == 'bin' else 'flax'}-layout weights, not {layout}")
    names = FORMATS[format]
    limit = None if max_shard_size is None else parse_size(max_shard_size)
    shards = plan_shards(tensors, limit)
    done = on_tensor or (lambda _name, _size: None)
    try:
        with staging(Path(directory)) as (stage, commit):
            written = []
            for i, shard in enumerate(shards, start=1):
                file = names.single if len(shards) == 1 else names.shard(i, len(shards))
                _WRITERS[format](stage / file, {name: tensors[name] for name in shard}, layout, done)
                written.append(file)
            if len(shards) > 1:
                dotted = layout == "flax" and format == "safetensors"  # HF Flax's safetensors index uses "."
                index = index_json(tensors, shards, written, lambda n: n.replace("/", ".") if dotted else n)
                (stage / names.index).write_text(index)
                written.append(names.index)
            for name, content in (files or {}).items():
                (stage / name).write_bytes(content)
                written.append(name)
            commit(written, _is_weights)
    except OSError as err:
        if err.filename is None:  # a failed write() (disk full) names no file: name the checkpoint
            err.filename = str(directory)
        raise
    return written


def _check_format(format: object) -> None:
    if not isinstance(format, str) or format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose one of {', '.join(FORMATS)}")


def _is_weights(name: str) -> bool:
    """Whether ``name`` is a weights file a write replaces: any HF format, single, index or shard."""
    return any(files.owns(name) for files in FORMATS.values()) or _FOREIGN_WEIGHTS.fullmatch(name) is not None
