"""Sharded checkpoints: each format's file names, the ``.index.json`` that maps tensors to shards, HF's split."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._tensors import CheckpointError, Format, Layout, Tensor, nbytes


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


def parse_size(size: int | str) -> int:
    """Bytes in ``max_shard_size``: a positive int or HF's notation (``"500MB"``, ``"5GB"``, ``"2GiB"``)."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"max_shard_size must be an int (bytes) or a str such as '500MB', got {type(size).__name__}")
    if isinstance(size, int):
        value = size
    else:
        units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?I?B)?\s*", size.upper())
        if match is None or (match.group(2) or "B") not in units:
            raise ValueError(f"max_shard_size: cannot read a size from {size!r}; write e.g. 500MB, 5GB or 2GiB")
        value = int(float(match.group(1)) * units[match.group(2) or "B"])
    if value < 1:
        raise ValueError(f"max_shard_size must be at least 1 byte, got {size!r}")
    return value


def plan_shards(tensors: Mapping[str, Tensor], max_shard_size: int | None) -> list[list[str]]:
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


def index_json(
    tensors: Mapping[str, Tensor], shards: Sequence[Sequence[str]], files: Sequence[str], key: Callable[[str], str]
) -> str:
    """The ``.index.json`` of ``shards`` written as ``files``; ``key`` gives a tensor's name in the index."""
    weight_map = {key(name): file for file, shard in zip(files, shards, strict=True) for name in shard}
    index = {"metadata": {"total_size": sum(nbytes(t) for t in tensors.values())}, "weight_map": weight_map}
    return json.dumps(index, indent=2, sort_keys=True) + "\n"


def _read_index(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to shard file names")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not a valid checkpoint index ({type(err).__name__}: {err})") from err
    return weight_map


def shard_paths(index: Path) -> list[Path]:
    """The shard files ``index`` lists, each checked to be a file beside it."""
    paths = []
    for name in sorted(set(_read_index(index).values())):
        path = index.parent / name
        if Path(name).name != name or not path.is_file():
            raise CheckpointError(f"{index} lists the shard {name}, which is missing from {index.parent}")
        paths.append(path)
    return paths


def check_index(index: Path, tensors: Mapping[str, Any], layout: Layout) -> None:
    """CheckpointError when ``index`` lists a tensor that none of its shards holds."""
    weight_map = _read_index(index)
    if layout == "flax" and index.name != FORMATS["msgpack"].index:  # HF Flax's safetensors index uses "."
        weight_map = {name.replace(".", "/"): shard for name, shard in weight_map.items()}
    absent = [f"{name} (in {shard})" for name, shard in weight_map.items() if name not in tensors]
    if absent:
        raise CheckpointError(f"{index} lists tensors its shards do not hold: {_listing(absent)}")


def _listing(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")
