"""``tandem convert``: an HF checkpoint directory in, one for the other framework (or format) out.

Conversion reads the source memory-mapped and writes the destination one tensor at a time, each renamed
and laid out by its node's declared rule (:func:`tandem.core.checkpoint.plan_conversion`). It builds the
layer graph from ``config.json`` but no model: no framework is imported and nothing is initialised, so a
round trip is bit-identical and memory stays near the size of one checkpoint.

Example:
    >>> convert("bert-pt/", "bert-flax/", to="flax")  # writes bert-flax/flax_model.msgpack + config.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..core.checkpoint import plan_conversion, read_weights
from ..core.families import config_from_hf
from ..core.hub import resolve
from ..core.io import FORMATS, Format, Layout, checkpoint_directory, float_dtype, nbytes, parse_size, write_checkpoint

# The formats each framework's HF classes load; the first is the default.
TARGETS: dict[Layout, tuple[Format, ...]] = {"torch": ("safetensors", "bin"), "flax": ("msgpack", "safetensors")}
# Files in a checkpoint directory that are never copied to the converted one: weights of any format (and
# TF's model.ckpt.*), training state such as training_args.bin or optimizer.pt.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".msgpack", ".h5", ".onnx", ".pt", ".pth", ".index.json")


@dataclass
class ConversionReport:
    """What one conversion did."""

    source: Path
    destination: Path
    source_format: Format
    format: Format
    to: Layout
    task: str  # the task whose graph the tensors were matched to
    files: list[str]
    tensors: int
    bytes: int
    seconds: float
    skipped: list[str] = field(default_factory=list)  # with strict=False: tensors that were not converted
    missing: list[str] = field(default_factory=list)  # with strict=False: parameters the source lacks

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (paths as strings)."""
        return {**dataclasses.asdict(self), "source": str(self.source), "destination": str(self.destination)}

    def summary(self) -> str:
        return (
            f"converted {self.source} ({self.source_format}) -> {self.destination} ({self.format}, {self.to}): "
            f"{self.tensors} tensors, {self.bytes / 1e6:.1f} MB in {self.seconds:.2f} s"
        )


def convert(
    source: str | Path,
    destination: str | Path,
    to: Layout,
    *,
    format: Format | None = None,
    source_format: Format | None = None,
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    strict: bool = True,
    progress: Callable[[int], Callable[[str, int], None]] | None = None,
) -> ConversionReport:
    """Convert the HF checkpoint in ``source`` for framework ``to`` into ``destination``.

    ``format`` defaults to ``safetensors`` for torch and ``msgpack`` for flax (``bin`` and HF Flax's
    ``safetensors`` are the alternatives); ``source_format`` picks among several formats in ``source``.
    ``dtype`` casts floating tensors (``float32``, ``float16``, ``bfloat16``); without it each tensor keeps
    its dtype. ``max_shard_size`` (e.g. ``"5GB"``) shards the output as HF does. ``config.json`` and every
    other file next to the weights (tokenizer, README) are copied, ``config.json`` with ``torch_dtype``
    updated when ``dtype`` is given. ``strict=False`` converts what fits the spec and reports the rest
    (a warning, and ``skipped`` / ``missing``) instead of raising :class:`~tandem.CheckpointError`.
    ``progress(total_bytes)`` returns a callback called with each tensor's name and size as it is written.
    """
    start = time.perf_counter()
    source = checkpoint_directory(resolve(source, argument="source"), "source")  # a Hub id: its cached snapshot
    if not isinstance(destination, (str, os.PathLike)):
        raise TypeError(
            f"destination must be a str or os.PathLike naming a directory, got {type(destination).__name__}"
        )
    destination = Path(destination)
    if not isinstance(to, str) or to not in TARGETS:
        raise ValueError(f"to must be 'torch' or 'flax', got {to!r}")
    format = format or TARGETS[to][0]
    if format not in TARGETS[to]:
        raise ValueError(f"{to} checkpoints are written as {' or '.join(TARGETS[to])}, not {format}")
    if dtype is not None:
        float_dtype(dtype)
    if max_shard_size is not None:
        parse_size(max_shard_size)
    config = config_from_hf(source)
    weights = read_weights(source, source_format)
    match, tensors = plan_conversion(config, weights, to, float_dtype(dtype) if dtype else None, strict)
    skipped = sorted(match.left.values()) + [name for _, name, _ in match.mismatched]
    missing = [entry.key for entry in match.missing]
    if skipped or missing:
        warnings.warn(
            f"converting {source}: not converted (no {match.graph.family} {match.graph.task} parameter fits): "
            f"{', '.join(skipped) or 'none'}; missing from the checkpoint: {', '.join(missing) or 'none'}",
            stacklevel=2,
        )
    files = _companion_files(source, dtype)
    total = sum(nbytes(t) for t in tensors.values())
    on_tensor = progress(total) if progress is not None else None
    written = write_checkpoint(
        destination, tensors, format, to, max_shard_size=max_shard_size, files=files, on_tensor=on_tensor
    )
    return ConversionReport(
        source=source,
        destination=destination,
        source_format=weights.format,
        format=format,
        to=to,
        task=match.graph.task,
        files=written,
        tensors=len(tensors),
        bytes=total,
        seconds=time.perf_counter() - start,
        skipped=skipped,
        missing=missing,
    )


def _companion_files(source: Path, dtype: str | None) -> dict[str, bytes]:
    """``config.json`` and the other files beside the weights, as they go into the converted directory."""
    files = {}
    for path in sorted(source.iterdir()):
        weights = path.name.endswith(_WEIGHT_SUFFIXES) or path.name.startswith("model.ckpt")
        weights = weights or any(f.owns(path.name) for f in FORMATS.values())
        if path.is_file() and not weights and not path.name.startswith("."):
            files[path.name] = path.read_bytes()
    if dtype is not None:
        config: dict[str, Any] = json.loads(files["config.json"])
        config["torch_dtype"] = dtype
        files["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    return files


class ProgressBar:
    """A one-line progress bar on a terminal, redrawn at most ten times a second; ends its line when full."""

    def __init__(self, total: int, stream: TextIO, width: int = 30) -> None:
        self.total, self.stream, self.width = max(total, 1), stream, width
        self.done, self.last = 0, 0.0

    def __call__(self, _name: str, size: int) -> None:
        self.done += size
        now = time.monotonic()
        if now - self.last >= 0.1 or self.done >= self.total:
            self.last = now
            filled = self.width * self.done // self.total
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done / 1e6:8.1f} / {self.total / 1e6:.1f} MB"
            )
            self.stream.write("\n" if self.done >= self.total else "")
            self.stream.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="HF checkpoint directory (config.json + weights in any HF format)")
    parser.add_argument("destination", help="directory to write (created; an existing checkpoint is replaced)")
    parser.add_argument("--to", required=True, choices=sorted(TARGETS), help="framework the output is for")
    parser.add_argument(
        "--format",
        choices=sorted(FORMATS),
        help="output format (default: safetensors for torch, msgpack for flax; also bin for torch, "
        "safetensors for flax)",
    )
    parser.add_argument("--from-format", choices=sorted(FORMATS), help="source format, when SOURCE holds several")
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), help="cast floating tensors (default: keep each)"
    )
    parser.add_argument("--max-shard-size", help="shard the output, e.g. 5GB or 500MB (default: one file)")
    parser.add_argument(
        "--no-strict", action="store_true", help="convert what fits and warn about the rest instead of failing"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary line")


def run(args: argparse.Namespace) -> int:
    """``tandem convert`` with parsed ``args``; returns the exit code (errors propagate to the CLI)."""
    show = not args.quiet and sys.stderr.isatty()
    report = convert(
        args.source,
        args.destination,
        args.to,
        format=args.format,
        source_format=args.from_format,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        strict=not args.no_strict,
        progress=(lambda total: ProgressBar(total, sys.stderr)) if show else None,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        print(report.summary())
    return 0
