"""HF checkpoint directories: reading, matching weights to a graph, converting and writing (numpy only).

A checkpoint's tensors are named in one of two layouts: HF PyTorch keys (``bert.encoder.layer.0.
attention.self.query.weight``, torch shapes) or HF Flax param paths (``bert/encoder/layer/0/attention/
self/query/kernel``, flax shapes). Both are matched to the graph through the layout
(:func:`~tandem.core.params.param_entries`), and everything else a checkpoint may hold is declared by the
graph too: older parameter names (``ParamSpec.legacy_names``), buffers that are not parameters
(``Node.buffers``), parameters HF Flax's class lacks (``ModelGraph.flax_absent``) and the base-model
prefix (``ModelGraph.base_prefix``). Nothing is guessed from a name.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .config import FamilyConfig
from .families import build_graph, family_of
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

_SEPARATOR = {"torch": ".", "flax": "/"}

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "LoadReport",
    "Match",
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
    resized: list[str] = field(default_factory=list)  # head keys re-initialised as their shape changed


def _layout(weights: Mapping[str, np.ndarray]) -> Layout:
    return weights.layout if isinstance(weights, Checkpoint) else "torch"


def _strip(name: str, prefix: str, sep: str) -> str:
    return name[len(prefix) + 1 :] if prefix and name.startswith(prefix + sep) else name


def _neutral(graph: ModelGraph, entry: ParamEntry, layout: Layout) -> str:
    """A parameter's checkpoint name in ``layout`` without the base-model prefix."""
    return _strip(entry.name(layout), graph.backbone.path, _SEPARATOR[layout])


def _graph_names(graph: ModelGraph, layout: Layout) -> dict[str, ParamEntry]:
    """The graph's parameters by neutral name (checkpoint name without the base-model prefix)."""
    return {_neutral(graph, e, layout): e for e in param_entries(graph)}


def _alias_names(graph: ModelGraph) -> dict[str, str]:
    prefix = graph.backbone.path
    return {_strip(a, prefix, "."): _strip(c, prefix, ".") for a, c in torch_aliases(graph).items()}


def _declared_names(graph: ModelGraph, layout: Layout) -> tuple[dict[str, str], set[str]]:
    """What else the graph declares a checkpoint may hold, as neutral names: older names of parameters
    (legacy name -> current name) and buffers that are not parameters (torch layout only)."""
    legacy: dict[str, str] = {}
    buffers: set[str] = set()
    if layout != "torch":
        return legacy, buffers
    prefix = graph.backbone.path
    for path, node in walk(graph):
        buffers.update(_strip(f"{path}.{b}" if path else b, prefix, ".") for b in node.buffers())
    for entry in param_entries(graph):
        head = entry.key[: -len(entry.spec.name)]
        for old in entry.spec.legacy_names:
            legacy[_strip(head + old, prefix, ".")] = _neutral(graph, entry, "torch")
    return legacy, buffers


def _checkpoint_names(
    weights: Mapping[str, np.ndarray], graph: ModelGraph, layout: Layout
) -> tuple[dict[str, str], bool]:
    """Neutral name -> checkpoint name (declared buffers dropped, legacy names renamed), and whether the
    checkpoint nests the base model under the graph's base-model prefix."""
    sep = _SEPARATOR[layout]
    legacy, buffers = _declared_names(graph, layout)
    prefixed = any(k.startswith(graph.base_prefix + sep) for k in weights)
    out = {}
    for name in weights:
        neutral = _strip(name, graph.base_prefix if prefixed else "", sep)
        if neutral not in buffers:
            out[legacy.get(neutral, neutral)] = name
    return out, prefixed


def _flax_absent(graph: ModelGraph) -> set[str]:
    """Keys of the parameters HF Flax's class for this graph's task lacks."""
    nodes = tuple(path + "." for path in graph.flax_absent)
    return {e.key for e in param_entries(graph) if e.key.startswith(nodes)}


@dataclass
class Match:
    """How a checkpoint's tensors line up with a graph's parameters (names in the checkpoint's layout)."""

    graph: ModelGraph
    layout: Layout
    prefixed: bool  # whether the checkpoint nests the base model under the base-model prefix
    found: dict[str, str] = field(default_factory=dict)  # graph key -> checkpoint name
    missing: list[ParamEntry] = field(default_factory=list)
    flax_absent: list[ParamEntry] = field(default_factory=list)  # missing, as HF Flax's class lacks them
    mismatched: list[tuple[ParamEntry, str, tuple[int, ...]]] = field(default_factory=list)  # entry, name, shape
    left: dict[str, str] = field(default_factory=dict)  # neutral name -> checkpoint name, matched by nothing

    @property
    def clean(self) -> bool:
        return not (self.missing or self.mismatched or self.left)

    def mismatch_lines(self) -> list[str]:
        return [
            f"{name}: expected {entry.shape(self.layout)}, checkpoint has {shape}"
            for entry, name, shape in self.mismatched
        ]


def _match(graph: ModelGraph, weights: Mapping[str, np.ndarray]) -> Match:
    layout = _layout(weights)
    ckpt, prefixed = _checkpoint_names(weights, graph, layout)
    if layout == "torch":
        for alias, canonical in _alias_names(graph).items():  # a tied alias may stand in for its canonical key
            if alias in ckpt and canonical not in ckpt:
                ckpt[canonical] = ckpt[alias]
            ckpt.pop(alias, None)
    match = Match(graph, layout, prefixed)
    absent = _flax_absent(graph) if layout == "flax" else set()
    for neutral, entry in _graph_names(graph, layout).items():
        name = ckpt.pop(neutral, None)
        if name is None:
            (match.flax_absent if entry.key in absent else match.missing).append(entry)
        elif tuple(weights[name].shape) != entry.shape(layout):
            match.mismatched.append((entry, name, tuple(weights[name].shape)))
        else:
            match.found[entry.key] = name
    match.left = ckpt
    _check_family(graph, weights, match)
    return match


def _check_family(graph: ModelGraph, weights: Mapping[str, np.ndarray], match: Match) -> None:
    """Raise when most of the graph's parameters are not in the checkpoint and most of its tensors are
    unknown: the config's ``model_type`` does not describe these weights."""
    expected = len(match.found) + len(match.missing) + len(match.mismatched)
    if len(match.found) * 2 >= expected or len(match.left) * 2 <= len(weights):
        return
    raise CheckpointError(
        f"the config's model_type is {graph.family!r}, but {len(match.left)} of the checkpoint's {len(weights)} "
        f"tensors are not {graph.family} parameters and only {len(match.found)} of the model's {expected} "
        f"parameters were found (e.g. {next(iter(match.left.values()))!r}). Check config.json's model_type."
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
    reinitialise_mismatched_heads: bool = False,
) -> tuple[dict[str, np.ndarray], LoadReport]:
    """Map checkpoint ``weights`` onto ``graph``'s parameters, as float32 arrays in torch layout.

    ``weights`` is a :class:`Checkpoint` (either layout) or a plain ``{HF PyTorch key: array}`` mapping.
    The base-model prefix is added or stripped as needed. Parameters that belong to a head the checkpoint's
    own task does not have are freshly initialised; weights that belong to the checkpoint's task but not to
    ours, or to another task of the family, are unused (both listed in one warning, as HF does). Anything
    else missing or unexpected, and any shape mismatch, raises :class:`CheckpointError` naming the keys,
    unless ``strict=False``. Weights stored in float16 or bfloat16 load as float32 (HF's default); the
    backend then applies the model's dtype.

    ``reinitialise_mismatched_heads``: head parameters (outside the base model) whose shape differs from the
    checkpoint's are freshly initialised and named in the warning instead (HF's ``ignore_mismatched_sizes``,
    for a config whose head size was overridden, e.g. a new ``num_labels``).
    """
    match = _match(graph, weights)
    layout = match.layout
    resized = []
    if reinitialise_mismatched_heads and graph.backbone.path:
        base = graph.backbone.path + "."
        resized = [m for m in match.mismatched if not m[0].key.startswith(base)]
        match.mismatched = [m for m in match.mismatched if m not in resized]
    if checkpoint_task is None:
        checkpoint_task = "base" if (graph.backbone.path and not match.prefixed) else graph.task
    theirs = set(_graph_names(graph, layout))
    if checkpoint_task != graph.task:
        other = build_graph(config, checkpoint_task)
        absent = _flax_absent(other) if layout == "flax" else set()
        theirs = {n for n, e in _graph_names(other, layout).items() if e.key not in absent}
        theirs |= set(_alias_names(other)) if layout == "torch" else set()

    report = LoadReport(
        initialised=[e.key for e in match.flax_absent],
        mismatched=match.mismatch_lines(),
        resized=[entry.key for entry, _, _ in resized],
    )
    missing = []
    for entry in match.missing:
        (missing if _neutral(graph, entry, layout) in theirs else report.initialised).append(entry.key)
    # Weights of another task of the family (bert-base-uncased declares BertForMaskedLM and holds the
    # pretraining heads) are unused, as HF has it; names no task of the family declares are unexpected.
    known = set(theirs) | (set(family_parameters(config, layout)) if match.left else set())
    unexpected = []
    for neutral, name in match.left.items():
        (report.unused if neutral in known else unexpected).append(name)

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
    fresh = set(report.initialised) | set(report.resized)
    if fresh:
        out.update(init_params(graph, seed, only=fresh))
    messages = []
    if resized:
        lines = [f"{entry.key} (checkpoint {shape}, model {entry.shape(layout)})" for entry, _, shape in resized]
        messages.append("re-initialised, as their shape no longer fits the checkpoint's: " + ", ".join(lines))
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


def _target(graph: ModelGraph, entry: ParamEntry, to: Layout, prefixed: bool) -> str:
    """The name ``entry`` is written under in layout ``to``: base-model parameters nested under the
    base-model prefix exactly when the source checkpoint nests them."""
    name, sep, path = entry.name(to), _SEPARATOR[to], graph.backbone.path
    if path and not name.startswith(path + sep):
        return name  # a head's parameter
    neutral = _strip(name, path, sep)
    return graph.base_prefix + sep + neutral if prefixed else neutral


def family_parameters(config: FamilyConfig, layout: Layout) -> dict[str, tuple[ModelGraph, ParamEntry]]:
    """Every parameter any task of the config's family declares, by neutral name in ``layout`` (the first
    task that declares a name gives its entry): the layout rules of heads a checkpoint holds beyond its class."""
    table: dict[str, tuple[ModelGraph, ParamEntry]] = {}
    family = family_of(config)
    with warnings.catch_warnings():  # a builder's advice about a task built only for its parameter table
        warnings.simplefilter("ignore")
        graphs = [build_graph(config, task) for task in family.tasks]
    for graph in graphs:
        for neutral, entry in _graph_names(graph, layout).items():
            table.setdefault(neutral, (graph, entry))
    return table


def plan_conversion(
    config: FamilyConfig,
    weights: Mapping[str, np.ndarray],
    to: Layout,
    dtype: np.dtype | None = None,
    strict: bool = True,
) -> tuple[Match, dict[str, Deferred]]:
    """Every tensor of a checkpoint, renamed and laid out for ``to``, made only when written.

    The graph is the one of the task ``architectures`` names (else ``base``). Tensors of heads the
    checkpoint holds beyond its class (bert-base-uncased declares ``BertForMaskedLM`` and holds the
    pretraining heads) are converted by the rules of the family task that declares them
    (:func:`family_parameters`). Each parameter keeps whether the checkpoint nests it under the base-model
    prefix; tied aliases (``cls.predictions.decoder.weight``) and declared buffers are not written, as HF
    does not write them. Floating tensors are cast to ``dtype`` when given. With ``strict=False`` what fits
    is converted and the returned match lists the rest; otherwise anything missing, unexpected or
    mis-shaped raises :class:`CheckpointError`.
    """
    family = family_of(config)
    declared = task_for_checkpoint(config) or "base"
    match = _match(build_graph(config, declared), weights)
    source = match.layout
    planned: list[tuple[ModelGraph, ParamEntry, str]] = [
        (match.graph, entry, match.found[entry.key]) for entry in param_entries(match.graph) if entry.key in match.found
    ]
    if match.left:
        table = family_parameters(config, source)
        for neutral, name in list(match.left.items()):
            graph, entry = table.get(neutral, (None, None))
            if entry is not None and tuple(weights[name].shape) == entry.shape(source):
                planned.append((graph, entry, name))
                del match.left[neutral]
    if not match.clean and strict:
        missing = [e.name(source) for e in match.missing]
        problems = _problems(match, list(match.left.values()), missing, f"any {family.name} task")
        raise CheckpointError(f"checkpoint does not fit {family.name} {declared}: " + "\n".join(problems))
    tensors = {}
    for graph, entry, name in planned:
        target = _target(graph, entry, to, match.prefixed)
        value = weights[name]
        out_dtype = np.dtype(dtype if dtype is not None and is_floating(value.dtype) else value.dtype)
        view = value if source == to else np.transpose(value, entry.permutation(to))
        tensors[target] = Deferred(entry.shape(to), out_dtype, partial(np.asarray, view))
    return match, tensors


def save_checkpoint(
    directory: str | Path,
    config: FamilyConfig,
    task: str,
    weights: Mapping[str, np.ndarray | Deferred],
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
        value = weights[entry.key]  # an array, or a Deferred made when written (a sharded model's gather)
        if layout == "torch":
            tensors[entry.key] = value if isinstance(value, Deferred) else np.asarray(value)
        elif isinstance(value, Deferred):
            made = partial(_transposed, value.source, entry.permutation("flax"))
            tensors[entry.name("flax")] = Deferred(entry.flax_shape, value.dtype, made)
        else:
            view = np.transpose(np.asarray(value), entry.permutation("flax"))
            tensors[entry.name("flax")] = Deferred(entry.flax_shape, view.dtype, partial(np.asarray, view))
    return write_checkpoint(directory, tensors, format, layout, max_shard_size=max_shard_size, files=files)


def _transposed(source: Callable[[], np.ndarray], permutation: tuple[int, ...]) -> np.ndarray:
    return np.transpose(source(), permutation)
