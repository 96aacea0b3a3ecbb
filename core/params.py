"""The weight layout: every parameter of a graph, its names, shapes, logical axes, init and conversion.

This is the one place that knows how a parameter is laid out. Each node declares its parameters
(:meth:`~tandem.core.nodes.Node.param_specs`: HF PyTorch name, torch-layout shape, logical axes, init) and
its node kind declares one torch <-> flax rule (:class:`~tandem.core.nodes.FlaxRule`: the flax name and an
axis permutation). :func:`param_entries` joins them with the node paths into :class:`ParamEntry` records,
which loading, conversion, saving and both backend adapters read; nothing is guessed from names.

The canonical form of a model's weights is a flat ``{HF PyTorch key: numpy array}`` dict (what a
``model.safetensors`` holds). The flax form is the nested HF Flax params tree. Fresh weights come from
:func:`init_params` alone, whatever the backend or entry point.

Logical axes (the names :attr:`ParamSpec.axes` uses, in torch layout order; sharding rules map them to mesh
axes): ``vocab`` (token rows), ``positions``, ``token_types``, ``embed`` (the model width), ``embed_factor``
(a factorised embedding width, ALBERT's), ``heads`` (attention heads x head_dim, fused as the torch layout
keeps them), ``mlp`` (the feed-forward width), ``classes`` (a task head's outputs), ``group_in`` and
``conv_width`` (a grouped convolution's per-group input channels and its kernel width), ``attention_heads``
(the number of heads, as talking-heads maps mix them).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .nodes import LMHead, ModelGraph, Node, NormalInit, OnesInit, ParamSpec, SinusoidalInit, join

Layout = Literal["torch", "flax"]


@dataclass(frozen=True)
class ParamEntry:
    """A parameter of the graph: its torch key, its flax path and the node that declares it."""

    key: str
    flax_path: tuple[str, ...]
    spec: ParamSpec
    node: Node

    def permutation(self, to: Layout) -> tuple[int, ...]:
        """The axis order that takes this parameter to layout ``to`` from the other one (its node kind's
        declared rule; the identity when the layouts agree)."""
        rule = type(self.node).flax_rules.get(self.spec.name)
        if rule is None or rule.permutation is None:
            return tuple(range(len(self.spec.shape)))
        return rule.permutation if to == "flax" else tuple(int(i) for i in np.argsort(rule.permutation))

    def name(self, layout: Layout) -> str:
        """The checkpoint name in ``layout``: the HF PyTorch key or the '/'-joined HF Flax path."""
        return self.key if layout == "torch" else "/".join(self.flax_path)

    def shape(self, layout: Layout) -> tuple[int, ...]:
        return self.spec.shape if layout == "torch" else self.flax_shape

    def to_flax(self, value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(value, self.permutation("flax")))

    def from_flax(self, value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(value, self.permutation("torch")))

    @property
    def flax_shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape[i] for i in self.permutation("flax"))


def walk(node: Node, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """Yield ``(full path, node)`` for the node and all its descendants, depth first."""
    path = join(prefix, node.path)
    yield path, node
    for child in node.children():
        yield from walk(child, path)


def param_entries(graph: Node) -> list[ParamEntry]:
    """Every parameter of the graph once, in declaration order."""
    entries = []
    for path, node in walk(graph):
        for spec in node.param_specs():
            rule = type(node).flax_rules.get(spec.name)
            flax_name = rule.name if rule is not None else spec.name
            entries.append(
                ParamEntry(
                    key=join(path, spec.name),
                    flax_path=(*path.split("."), flax_name) if path else (flax_name,),
                    spec=spec,
                    node=node,
                )
            )
    return entries


def torch_aliases(graph: ModelGraph) -> dict[str, str]:
    """Extra torch state_dict keys that alias a canonical parameter (HF's tied decoder)."""
    aliases = {}
    for path, node in walk(graph):
        if isinstance(node, LMHead) and node.decoder.aliased:
            decoder = join(path, node.decoder.path)
            if node.decoder.tied_to is not None:
                aliases[join(decoder, "weight")] = join(node.decoder.tied_to, "weight")
            if node.bias:
                aliases[join(decoder, "bias")] = join(path, "bias")
    return aliases


def init_params(
    graph: Node, seed: int | Sequence[int] = 0, only: set[str] | None = None
) -> dict[str, np.ndarray]:
    """Fresh float32 weights following each parameter's declared init (HF's scheme), from one seed.

    Each parameter draws from its own generator (seeded by ``seed`` and its key), so a parameter's initial
    value does not depend on which others are initialised with it. ``seed``: a non-negative int, or a
    sequence of them (a JAX key's data).
    """
    seeds = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    out = {}
    for entry in param_entries(graph):
        if only is not None and entry.key not in only:
            continue
        spec = entry.spec
        rng = np.random.default_rng([*seeds, zlib.crc32(entry.key.encode())])
        if isinstance(spec.init, NormalInit):
            value = rng.standard_normal(spec.shape, dtype=np.float32) * np.float32(spec.init.std)
        elif isinstance(spec.init, OnesInit):
            value = np.ones(spec.shape, np.float32)
        elif isinstance(spec.init, SinusoidalInit):
            value = sinusoidal_table(*spec.shape)
        else:
            value = np.zeros(spec.shape, np.float32)
        if spec.zero_row is not None:
            value[spec.zero_row] = 0.0
        out[entry.key] = value
    return out


def sinusoidal_table(positions: int, features: int) -> np.ndarray:
    """HF's fixed position table (``create_sinusoidal_embeddings``): angles ``pos / 10000 ** (2 * (j // 2) /
    features)`` in float64, ``sin`` on even features and ``cos`` on odd ones, then float32."""
    pos = np.arange(positions, dtype=np.float64)[:, None]
    j = np.arange(features)[None, :]
    angles = pos / np.power(10000, 2 * (j // 2) / features)
    table = np.empty((positions, features), np.float32)
    table[:, 0::2] = np.sin(angles[:, 0::2])
    table[:, 1::2] = np.cos(angles[:, 1::2])
    return table


def to_flax_tree(
    graph: Node, state: Mapping[str, np.ndarray], entries: Sequence[ParamEntry] | None = None
) -> dict[str, Any]:
    """Canonical (torch-layout) weights -> the nested HF Flax params tree (of ``entries``, default all)."""
    tree: dict[str, Any] = {}
    for entry in param_entries(graph) if entries is None else entries:
        node = tree
        for part in entry.flax_path[:-1]:
            node = node.setdefault(part, {})
        node[entry.flax_path[-1]] = entry.to_flax(np.asarray(state[entry.key]))
    return tree


def from_flax_tree(graph: Node, tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The nested HF Flax params tree -> canonical (torch-layout) weights."""
    flat = flatten_tree(tree)
    return {entry.key: entry.from_flax(np.asarray(flat[entry.flax_path])) for entry in param_entries(graph)}


def flatten_tree(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten_tree(value, (*prefix, str(key))))
        else:
            out[(*prefix, str(key))] = value
    return out


def count_params(graph: Node) -> int:
    return sum(int(np.prod(e.spec.shape)) for e in param_entries(graph))


def check_unique_keys(graph: Node) -> None:
    """Raise if two parameters share a key (a builder bug), naming the key."""
    seen: set[str] = set()
    for entry in param_entries(graph):
        if entry.key in seen:
            raise ValueError(f"parameter {entry.key!r} is declared twice in the graph")
        seen.add(entry.key)
