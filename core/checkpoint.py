"""HF checkpoint directories: reading, matching weights to a graph, converting and writing (numpy only).

A checkpoint's tensors are named in one of two layouts: HF PyTorch keys (``bert.encoder.layer.0.
attention.self.query.weight``, torch shapes) or HF Flax param paths (``bert/encoder/layer/0/attention/
self/query/kernel``, flax shapes). Both are matched to the graph through :func:`param_entries`, which
gives every parameter its key, its flax path and its declared layout rule; nothing is guessed from names.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .config import FamilyConfig
from .families import FAMILIES, Family, build_graph, family_of
from .io import (
    Checkpoint,
    CheckpointError,
    Deferred,
    Format,
    Layout,
    is_floating,
    read_checkpoint,
    write_checkpoint,
)
from .nodes import ModelGraph
from .params import ParamEntry, init_params, param_entries, torch_aliases, walk

# Torch buffers that old checkpoints may carry; they are not parameters.
_BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
# TF-era LayerNorm names.
_LEGACY_NAMES = {"gamma": "weight", "beta": "bias"}
_SEPARATOR = {"torch": ".", "flax": "/"}

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "LoadReport",
    "Match",
    "atomic_write",
    "match_weights",
    "plan_conversion",
    "read_weights",
    "save_checkpoint",
    "task_for_checkpoint",
]


def read_weights(directory: str | Path, format: Format | None = None) -> Checkpoint:
    """The weights of an HF checkpoint directory, memory-mapped (any format; ``format`` picks one).

    A mapping of tensor name -> read-only numpy array, in the layout its format uses (``.layout``).
    """
    return read_checkpoint(directory, format)


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


def _layout(weights: Mapping[str, np.ndarray]) -> Layout:
    return weights.layout if isinstance(weights, Checkpoint) else "torch"


def _strip(name: str, prefix: str, sep: str) -> str:
    return name[len(prefix) + 1 :] if prefix and name.startswith(prefix + sep) else name


def _entry_name(entry: ParamEntry, layout: Layout) -> str:
    return entry.key if layout == "torch" else "/".join(entry.flax_path)


def _entry_shape(entry: ParamEntry, layout: Layout) -> tuple[int, ...]:
    return entry.spec.shape if layout == "torch" else entry.flax_shape


def _graph_names(graph: ModelGraph, layout: Layout) -> dict[str, ParamEntry]:
    """The graph's parameters by checkpoint name with the base-model prefix removed ("neutral" names)."""
    prefix, sep = graph.backbone.path, _SEPARATOR[layout]
    return {_strip(_entry_name(e, layout), prefix, sep): e for e in param_entries(graph)}


def _alias_names(graph: ModelGraph) -> dict[str, str]:
    prefix = graph.backbone.path
    return {_strip(a, prefix, "."): _strip(c, prefix, ".") for a, c in torch_aliases(graph).items()}


def _checkpoint_names(weights: Mapping[str, np.ndarray], family: Family, layout: Layout) -> tuple[dict[str, str], bool]:
    """Neutral name -> checkpoint name (buffers dropped, TF-era names renamed), and whether it is prefixed."""
    sep = _SEPARATOR[layout]
    names = [k for k in weights if not (layout == "torch" and k.endswith(_BUFFER_SUFFIXES))]
    prefixed = any(k.startswith(family.base_prefix + sep) for k in names)
    out = {}
    for name in names:
        neutral = _strip(name, family.base_prefix if prefixed else "", sep)
        if layout == "torch":
            head, _, last = neutral.rpartition(".")
            neutral = f"{head}.{_LEGACY_NAMES[last]}" if last in _LEGACY_NAMES else neutral
        out[neutral] = name
    return out, prefixed


@dataclass
class Match:
    """How a checkpoint's tensors line up with a graph's parameters (names in the checkpoint's layout)."""

    graph: ModelGraph
    layout: Layout
    prefixed: bool  # whether the checkpoint nests the base model under the family prefix
    found: dict[str, str] = field(default_factory=dict)  # graph key -> checkpoint name
    missing: list[ParamEntry] = field(default_factory=list)
    pooler_absent: list[ParamEntry] = field(default_factory=list)  # flax only: see _match
    mismatched: list[tuple[ParamEntry, str, tuple[int, ...]]] = field(default_factory=list)  # entry, name, shape
    left: dict[str, str] = field(default_factory=dict)  # neutral name -> checkpoint name, matched by nothing

    @property
    def clean(self) -> bool:
        return not (self.missing or self.mismatched or self.left)

    def mismatch_lines(self) -> list[str]:
        return [
            f"{name}: expected {_entry_shape(entry, self.layout)}, checkpoint has {shape}"
            for entry, name, shape in self.mismatched
        ]


def _match(graph: ModelGraph, family: Family, weights: Mapping[str, np.ndarray]) -> Match:
    layout = _layout(weights)
    ckpt, prefixed = _checkpoint_names(weights, family, layout)
    if layout == "torch":
        for alias, canonical in _alias_names(graph).items():  # a tied alias may stand in for its canonical key
            if alias in ckpt and canonical not in ckpt:
                ckpt[canonical] = ckpt[alias]
            ckpt.pop(alias, None)
    match = Match(graph, layout, prefixed)
    # HF Flax builds some heads without the pooler HF PyTorch gives them (BigBird's masked LM): a flax
    # checkpoint may lack it. Those weights are then initialised on load and not written on conversion.
    pooler = _pooler_keys(graph) if layout == "flax" else set()
    for neutral, entry in _graph_names(graph, layout).items():
        name = ckpt.pop(neutral, None)
        if name is None:
            (match.pooler_absent if entry.key in pooler else match.missing).append(entry)
        elif tuple(weights[name].shape) != _entry_shape(entry, layout):
            match.mismatched.append((entry, name, tuple(weights[name].shape)))
        else:
            match.found[entry.key] = name
    match.left = ckpt
    _check_family(family, weights, match)
    return match


def _pooler_keys(graph: ModelGraph) -> set[str]:
    pooler = graph.backbone.pooler
    if pooler is None:
        return set()
    nodes = [node for _, node in walk(pooler)]
    return {e.key for e in param_entries(graph) if any(e.node is node for node in nodes)}


def _shape_free(name: str) -> str:
    """A name with its layer indices replaced, so that names compare across depths."""
    return re.sub(r"(?<=[./])\d+(?=[./]|$)", "#", name)


def _check_family(family: Family, weights: Mapping[str, np.ndarray], match: Match) -> None:
    """Raise when the weights plainly belong to another family than the config's (too few names fit)."""
    if len(match.found) * 2 >= len(match.found) + len(match.missing) + len(match.mismatched):
        return
    layout = match.layout
    scores = {}
    for other in FAMILIES.values():
        known = {_shape_free(n) for n in _graph_names(build_graph(other.config_class(), "base"), layout)}
        ckpt, _ = _checkpoint_names(weights, other, layout)
        scores[other.name] = sum(_shape_free(n) in known for n in ckpt)
    best = max(scores, key=lambda name: scores[name])
    if scores[best] > scores[family.name] and scores[best] * 2 > len(weights):
        raise CheckpointError(
            f"the config's model_type is {family.name!r}, but the checkpoint holds {best} weights: "
            f"{scores[best]} of its {len(weights)} tensors have {best} names, {scores[family.name]} have "
            f"{family.name} names. Check config.json's model_type."
        )


def _problems(match: Match, unexpected: list[str], missing: list[str], what: str) -> list[str]:
    problems = []
    if match.mismatched:
        problems.append("shape mismatch:\n  " + "\n  ".join(match.mismatch_lines()))
    if missing:
        problems.append("missing from the checkpoint:\n  " + "\n  ".join(missing))
    if unexpected:
        problems.append(f"unexpected in the checkpoint (not part of {what}):\n  " + "\n  ".join(unexpected))
    return problems


def match_weights(
    graph: ModelGraph,
    config: FamilyConfig,
    weights: Mapping[str, np.ndarray],
    checkpoint_task: str | None,
    strict: bool = True,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], LoadReport]:
    """Map checkpoint ``weights`` onto ``graph``'s parameters, as float32 arrays in torch layout.

    ``weights`` is a :class:`Checkpoint` (either layout) or a plain ``{HF PyTorch key: array}`` mapping.
    The base-model prefix is added or stripped as needed. Parameters that belong to a head the checkpoint's
    own task does not have are freshly initialised; weights that belong to the checkpoint's task but not to
    ours are unused (both listed in one warning, as HF does). Anything else missing or unexpected, and any
    shape mismatch, raises :class:`CheckpointError` naming the keys, unless ``strict=False``. Weights stored
    in float16 or bfloat16 load as float32 (HF's default); the backend then applies the model's dtype.
    """
    family = family_of(config)
    match = _match(graph, family, weights)
    layout = match.layout
    if checkpoint_task is None:
        checkpoint_task = "base" if (graph.backbone.path and not match.prefixed) else graph.task
    theirs = set(_graph_names(graph, layout))
    if checkpoint_task != graph.task:
        other = build_graph(config, checkpoint_task)
        theirs = set(_graph_names(other, layout)) | (set(_alias_names(other)) if layout == "torch" else set())
    prefix, sep = graph.backbone.path, _SEPARATOR[layout]

    report = LoadReport(initialised=[e.key for e in match.pooler_absent], mismatched=match.mismatch_lines())
    missing = []
    for entry in match.missing:
        (missing if _strip(_entry_name(entry, layout), prefix, sep) in theirs else report.initialised).append(entry.key)
    unexpected = []
    for neutral, name in match.left.items():
        (report.unused if neutral in theirs else unexpected).append(name)

    problems = _problems(match, unexpected, missing, f"{graph.family} {graph.task}")
    if problems and strict:
        raise CheckpointError("checkpoint does not fit the model: " + "\n".join(problems))
    report.initialised += missing + [entry.key for entry, _, _ in match.mismatched]
    report.unused += unexpected

    entries = {e.key: e for e in param_entries(graph)}
    out: dict[str, np.ndarray] = {}
    for key, name in match.found.items():
        value = weights[name] if layout == "torch" else entries[key].from_flax(weights[name])
        out[key] = value.astype(np.float32) if is_floating(value.dtype) and value.dtype != np.float32 else value
    if report.initialised:
        out.update(init_params(graph, seed, only=set(report.initialised)))
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


def plan_conversion(
    config: FamilyConfig,
    weights: Mapping[str, np.ndarray],
    to: Layout,
    dtype: np.dtype | None = None,
    strict: bool = True,
) -> tuple[Match, dict[str, Deferred]]:
    """Every tensor of a checkpoint, renamed and laid out for ``to``, made only when written.

    The graph is the one of the task ``architectures`` names (else ``base``) when it fits the tensors
    exactly, else the first of the family's tasks that does (a checkpoint saved with more heads than its
    declared class, as bert-base-uncased is). Each parameter keeps whether the checkpoint nests it under
    the base-model prefix; tied aliases (``cls.predictions.decoder.weight``) and torch buffers are not
    written, as HF does not write them. Floating tensors are cast to ``dtype`` when given. With
    ``strict=False`` the declared task's graph converts what fits and the returned match lists the rest;
    otherwise anything missing, unexpected or mis-shaped raises :class:`CheckpointError`.
    """
    family = family_of(config)
    architectures = getattr(config, "architectures", None) or []
    declared = next((task for arch in architectures if (task := family.task_of(arch))), "base")
    first = match = _match(build_graph(config, declared), family, weights)
    for task in family.tasks if not first.clean else ():
        with warnings.catch_warnings():  # a builder's advice about a task we only try for its names
            warnings.simplefilter("ignore")
            candidate = _match(build_graph(config, task), family, weights)
        if candidate.clean:
            match = candidate
            break
    if not match.clean and strict:
        layout = first.layout
        missing = [_entry_name(e, layout) for e in first.missing]
        problems = _problems(first, list(first.left.values()), missing, f"any {family.name} task")
        raise CheckpointError(
            f"checkpoint does not fit {family.name} {declared} (nor any other {family.name} task): "
            + "\n".join(problems)
        )
    source = match.layout
    prefix, sep = match.graph.backbone.path, _SEPARATOR[to]
    tensors = {}
    for entry in param_entries(match.graph):
        name = match.found.get(entry.key)
        if name is None:
            continue
        target = _entry_name(entry, to)
        if prefix and not match.prefixed:
            target = _strip(target, prefix, sep)
        elif not prefix and match.prefixed:
            target = family.base_prefix + sep + target
        value = weights[name]
        out_dtype = np.dtype(dtype if dtype is not None and is_floating(value.dtype) else value.dtype)
        view = value if source == to else np.transpose(value, _permutation(entry, to))
        tensors[target] = Deferred(_entry_shape(entry, to), out_dtype, partial(np.asarray, view))
    return match, tensors


def _permutation(entry: ParamEntry, to: Layout) -> tuple[int, ...]:
    """The axis order that takes ``entry`` to layout ``to`` from the other one: its node's declared rule."""
    rule = type(entry.node).flax_rules.get(entry.spec.name)
    if rule is None or rule.permutation is None:
        return tuple(range(len(entry.spec.shape)))
    return rule.permutation if to == "flax" else tuple(int(i) for i in np.argsort(rule.permutation))


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


def save_checkpoint(
    directory: str | Path,
    config: FamilyConfig,
    task: str,
    weights: Mapping[str, np.ndarray],
    format: Format = "safetensors",
    max_shard_size: int | str | None = None,
) -> list[str]:
    """Write ``config.json`` (with ``architectures``) and the weights in ``format`` that HF loads.

    ``weights`` are canonical (torch keys and layout). ``format="msgpack"`` writes the HF Flax params
    tree. The checkpoint is written into a temporary folder and moved into place when complete; returns the
    names of the files written.
    """
    family = family_of(config)
    config_dict: dict[str, Any] = config.to_hf_dict()
    config_dict["architectures"] = [family.architectures[task]]
    files = {"config.json": (json.dumps(config_dict, indent=2, sort_keys=True) + "\n").encode()}
    graph = build_graph(config, task)
    layout: Layout = "flax" if format == "msgpack" else "torch"
    tensors: dict[str, np.ndarray | Deferred] = {}
    for entry in param_entries(graph):
        value = np.asarray(weights[entry.key])
        if layout == "torch":
            tensors[entry.key] = value
        else:
            view = np.transpose(value, _permutation(entry, "flax"))
            tensors["/".join(entry.flax_path)] = Deferred(entry.flax_shape, value.dtype, partial(np.asarray, view))
    return write_checkpoint(directory, tensors, format, layout, max_shard_size=max_shard_size, files=files)
