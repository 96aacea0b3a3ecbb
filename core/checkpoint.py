"""HF checkpoint directories: reading, matching weights to a graph, and atomic writing (numpy only)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import FamilyConfig
from .families import Family, build_graph, family_of
from .nodes import ModelGraph
from .params import init_params, param_entries, torch_aliases

# Torch buffers that old checkpoints may carry; they are not parameters.
_BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
# TF-era LayerNorm names.
_LEGACY_NAMES = {"gamma": "weight", "beta": "bias"}


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message names every offending key."""


def read_weights(directory: Path) -> dict[str, np.ndarray]:
    """The weights of an HF checkpoint directory as ``{HF PyTorch key: array}``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = directory / "model.safetensors"
    if not path.is_file():
        found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        raise FileNotFoundError(f"no model.safetensors in {directory} (found: {', '.join(found) or 'nothing'})")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err


def task_for_checkpoint(config: FamilyConfig) -> str | None:
    """The task named by ``architectures`` in the config, None when absent; error when unsupported."""
    family = family_of(config)
    architectures = getattr(config, "architectures", None) or []
    for arch in architectures:
        task = family.task_of(arch)
        if task is not None:
            return task
    if architectures:
        raise CheckpointError(
            f"architectures={architectures} names no {family.name} task tandem supports; "
            f"supported: {', '.join(family.architectures.values())}. Pass task=... explicitly."
        )
    return None


@dataclass
class LoadReport:
    """What loading did besides matching keys one to one."""

    initialised: list[str] = field(default_factory=list)  # model keys absent from the checkpoint
    unused: list[str] = field(default_factory=list)  # checkpoint keys the model has no use for
    mismatched: list[str] = field(default_factory=list)


def _prefix_of(keys: list[str], family: Family) -> str:
    pre = family.base_prefix + "."
    return family.base_prefix if any(k.startswith(pre) for k in keys) else ""


def _neutral(key: str, prefix: str) -> str:
    """A key with the base-model prefix removed, so base and head checkpoints compare."""
    return key[len(prefix) + 1 :] if prefix and key.startswith(prefix + ".") else key


def _normalise(key: str) -> str:
    head, _, last = key.rpartition(".")
    return f"{head}.{_LEGACY_NAMES[last]}" if last in _LEGACY_NAMES else key


def match_weights(
    graph: ModelGraph,
    config: FamilyConfig,
    weights: Mapping[str, np.ndarray],
    checkpoint_task: str | None,
    strict: bool = True,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], LoadReport]:
    """Map checkpoint ``weights`` onto ``graph``'s parameters.

    The base-model prefix is added or stripped as needed. Parameters that belong to a head the checkpoint's
    own task does not have are freshly initialised; weights that belong to the checkpoint's task but not to
    ours are unused (both listed in one warning, as HF does). Anything else missing or unexpected, and any
    shape mismatch, raises :class:`CheckpointError` naming the keys, unless ``strict=False``.
    """
    family = family_of(config)
    our_prefix = graph.backbone.path
    ckpt_keys = [k for k in weights if not k.endswith(_BUFFER_SUFFIXES)]
    ckpt_prefix = _prefix_of(ckpt_keys, family)
    ckpt = {_normalise(_neutral(k, ckpt_prefix)): k for k in ckpt_keys}

    entries = {_neutral(e.key, our_prefix): e for e in param_entries(graph)}
    aliases = {_neutral(a, our_prefix): _neutral(c, our_prefix) for a, c in torch_aliases(graph).items()}
    for alias, canonical in aliases.items():  # a tied alias may stand in for its canonical key
        if alias in ckpt and canonical not in ckpt:
            ckpt[canonical] = ckpt[alias]
        ckpt.pop(alias, None)

    if checkpoint_task is None:
        checkpoint_task = "base" if (our_prefix and not ckpt_prefix) else graph.task
    if checkpoint_task == graph.task:
        theirs = set(entries)
    else:
        other = build_graph(config, checkpoint_task)
        theirs = {_neutral(e.key, other.backbone.path) for e in param_entries(other)}
        theirs |= {_neutral(a, other.backbone.path) for a in torch_aliases(other)}

    report = LoadReport()
    missing, unexpected = [], []
    out: dict[str, np.ndarray] = {}
    for neutral, entry in entries.items():
        if neutral not in ckpt:
            (missing if neutral in theirs else report.initialised).append(entry.key)
            continue
        value = np.asarray(weights[ckpt[neutral]])
        if tuple(value.shape) != entry.spec.shape:
            report.mismatched.append(f"{entry.key}: expected {entry.spec.shape}, checkpoint has {tuple(value.shape)}")
            continue
        out[entry.key] = value
    for neutral, key in ckpt.items():
        if neutral not in entries:
            (report.unused if neutral in theirs else unexpected).append(key)

    problems = []
    if report.mismatched:
        problems.append("shape mismatch:\n  " + "\n  ".join(report.mismatched))
    if missing:
        problems.append("missing from the checkpoint:\n  " + "\n  ".join(missing))
    if unexpected:
        problems.append(
            f"unexpected in the checkpoint (not part of {graph.family} {graph.task}):\n  " + "\n  ".join(unexpected)
        )
    if problems and strict:
        raise CheckpointError("checkpoint does not fit the model: " + "\n".join(problems))
    report.initialised += missing + [m.split(":")[0] for m in report.mismatched]
    report.unused += unexpected
    if report.initialised:
        fresh = init_params(graph, seed, only=set(report.initialised))
        out.update(fresh)
    messages = []
    if report.initialised:
        messages.append("newly initialised (not in the checkpoint): " + ", ".join(report.initialised))
    if report.unused:
        messages.append("not used from the checkpoint: " + ", ".join(report.unused))
    if messages:
        warnings.warn(
            f"loading a {checkpoint_task} checkpoint into {graph.family} {graph.task}: " + "; ".join(messages),
            stacklevel=3,
        )
    return out, report


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(directory: str | Path, config: FamilyConfig, task: str, weights: Mapping[str, np.ndarray]) -> None:
    """Write ``config.json`` (with ``architectures``) and ``model.safetensors`` atomically."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    family = family_of(config)
    config_dict: dict[str, Any] = config.to_hf_dict()
    config_dict["architectures"] = [family.architectures[task]]
    tensors = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    atomic_write(directory / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write(
        directory / "config.json", lambda p: p.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    )
