"""Sharding rules: each parameter's logical axes -> the mesh axes that split it, for every backend.

The spec declares every parameter's logical axes (:attr:`~tandem.core.nodes.ParamSpec.axes`, in torch layout
order; the names are listed in :mod:`tandem.core.params`). A *rule set* maps logical axes to mesh axes, and
:func:`resolve` turns it into one partition spec per parameter: a tuple with, per dimension, the mesh axis
that splits it or ``None`` (replicated), in the torch layout and in the flax layout. Nothing here imports a
framework; the JAX backends turn a spec into a ``NamedSharding`` and the torch backend into DTensor
placements / parallel styles.

Rules are a sequence of ``(logical axis, mesh axis or None)`` pairs, or the name of a preset:

- ``"fsdp"``: parameters split over the ``"data"`` axis (the batch axis too): each parameter on its first
  dimension (torch layout) whose size divides the axis, as FSDP's ``Shard(0)`` with a fallback.
- ``"tp"``: Megatron-style tensor parallelism over ``"model"``: ``heads`` and ``mlp`` split, so q/k/v and the
  intermediate projection are column-parallel (their output features, torch dim 0, carry ``heads``/``mlp``)
  and the attention output and FFN output projections are row-parallel (their input features, torch dim 1,
  carry them); ``vocab`` split, so word embeddings, an untied decoder and the LM bias are vocabulary-parallel
  where the size divides.
- ``"fsdp_tp"``: both on a 2-D mesh ``("data", "model")``: the ``tp`` split first, then the remaining
  dimensions as ``fsdp``.

How a parameter is resolved (as flax's ``logical_to_mesh_axes``, plus divisibility): its dimensions are taken
in torch layout order; a dimension takes the first rule of its logical axis whose mesh axis is present on the
mesh, not yet used by an earlier dimension of the same parameter, and whose size divides the dimension (a rule
``(axis, None)`` stops the search: replicated). A mesh axis some rule asked for but that no dimension of the
parameter could take (a size that does not divide) falls back to replication for that parameter, and
:func:`resolve` lists those parameters in one :class:`ShardingWarning` per call.

How the torch side consumes it (``ParamSharding.torch``, indexed like ``state_dict()`` shapes):

- ``fsdp``: FSDP2 ``fully_shard`` shards dim 0 of every parameter; specs with ``"data"`` elsewhere (a dim 0
  that does not divide) can be placed with ``Shard(dim)`` via ``fully_shard(..., shard_placement_fn=...)``.
- ``tp``: a ``Linear`` whose weight spec is ``("model", None)`` is ``ColwiseParallel`` (its bias spec is
  ``("model",)``), ``(None, "model")`` is ``RowwiseParallel``; an ``Embedding`` with ``("model", None)`` is
  vocabulary-parallel (``RowwiseParallel`` on an embedding); :func:`parallel_style` says which, per key.
- the mesh axis names are the ``DeviceMesh``'s ``mesh_dim_names``.

Example:
    >>> specs = resolve(param_entries(graph), {"data": 2, "model": 4}, "fsdp_tp")
    >>> specs["bert.encoder.layer.0.attention.self.query.weight"].torch
    ('model', 'data')
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .params import Layout, ParamEntry

MeshAxis = str | None
Rules = Sequence[tuple[str, MeshAxis]]
Preset = Literal["fsdp", "tp", "fsdp_tp"]
PartitionSpec = tuple[MeshAxis, ...]

DATA: str = "data"  # the mesh axis the batch is split over, and FSDP's
MODEL: str = "model"  # the tensor-parallel mesh axis

# Every logical axis a ParamSpec may carry (tandem.core.params lists what each means).
LOGICAL_AXES: tuple[str, ...] = (
    "vocab",
    "positions",
    "token_types",
    "embed",
    "embed_factor",
    "heads",
    "mlp",
    "classes",
    "group_in",
    "conv_width",
    "attention_heads",
)

_TP: tuple[tuple[str, MeshAxis], ...] = (("heads", MODEL), ("mlp", MODEL), ("vocab", MODEL))
_FSDP: tuple[tuple[str, MeshAxis], ...] = tuple((axis, DATA) for axis in LOGICAL_AXES)
PRESETS: dict[str, tuple[tuple[str, MeshAxis], ...]] = {"fsdp": _FSDP, "tp": _TP, "fsdp_tp": _TP + _FSDP}


class ShardingWarning(UserWarning):
    """Some parameters are replicated over a mesh axis the rules asked for (a size does not divide)."""


@dataclass(frozen=True)
class ParamSharding:
    """One parameter's partition spec: per dimension, the mesh axis splitting it or None, in both layouts."""

    key: str
    torch: PartitionSpec
    flax: PartitionSpec

    def spec(self, layout: Layout) -> PartitionSpec:
        return self.torch if layout == "torch" else self.flax


def check_rules(
    rules: str | Rules | None, mesh_axes: Mapping[str, int], where: str = "rules"
) -> tuple[tuple[str, MeshAxis], ...]:
    """``rules`` (a preset name or ``(logical axis, mesh axis or None)`` pairs) as pairs over ``mesh_axes``.

    A preset's pairs naming a mesh axis the mesh lacks are dropped (``fsdp_tp`` on a ``("data",)`` mesh is
    ``fsdp``), but a preset none of whose axes the mesh has is an error; user pairs must name logical axes of
    :data:`LOGICAL_AXES` and mesh axes of the mesh. Errors name ``where`` and the offending entry.
    """
    if rules is None:
        raise ValueError("rules is required with mesh: 'fsdp', 'tp', 'fsdp_tp' or (logical axis, mesh axis) pairs")
    names = tuple(mesh_axes)
    for axis, size in mesh_axes.items():
        if not isinstance(axis, str) or not isinstance(size, int) or size < 1:
            raise ValueError(f"mesh axes must be names with positive sizes, got {axis!r}: {size!r}")
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise ValueError(
                f"{where} must be one of {sorted(PRESETS)} or (logical axis, mesh axis) pairs, got {rules!r}"
            )
        kept = tuple((logical, mesh) for logical, mesh in PRESETS[rules] if mesh in names)
        if not kept:
            wanted = sorted({mesh for _, mesh in PRESETS[rules] if mesh is not None})
            raise ValueError(f"{where}={rules!r} shards over mesh axes {wanted}; the mesh has axes {names}")
        return kept
    if not isinstance(rules, Sequence):
        raise TypeError(f"{where} must be a preset name or a sequence of pairs, got {type(rules).__name__}")
    pairs = []
    for i, pair in enumerate(rules):
        if not (isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2):
            raise ValueError(f"{where}[{i}] must be a (logical axis, mesh axis or None) pair, got {pair!r}")
        logical, mesh = pair
        if logical not in LOGICAL_AXES:
            raise ValueError(f"{where}[{i}]: unknown logical axis {logical!r}; known: {', '.join(LOGICAL_AXES)}")
        if mesh is not None and mesh not in names:
            raise ValueError(f"{where}[{i}]: mesh axis {mesh!r} is not an axis of the mesh {names}")
        pairs.append((logical, mesh))
    return tuple(pairs)


def _resolve_one(
    shape: Sequence[int], axes: Sequence[str], pairs: Sequence[tuple[str, MeshAxis]], mesh_axes: Mapping[str, int]
) -> tuple[PartitionSpec, set[str]]:
    """The torch-layout spec of one parameter and the mesh axes it wanted but could not take."""
    used: list[str] = []
    wanted: set[str] = set()
    spec: list[MeshAxis] = []
    for size, logical in zip(shape, axes, strict=True):
        choice: MeshAxis = None
        for rule_axis, mesh in pairs:
            if rule_axis != logical:
                continue
            if mesh is None:
                break
            if mesh in used:
                continue
            wanted.add(mesh)
            if size % mesh_axes[mesh] == 0:
                choice = mesh
                used.append(mesh)
                break
        spec.append(choice)
    return tuple(spec), wanted - set(used)


def resolve(
    entries: Sequence[ParamEntry], mesh_axes: Mapping[str, int], rules: str | Rules | None
) -> dict[str, ParamSharding]:
    """Per parameter key, its partition spec under ``rules`` on a mesh of ``mesh_axes`` (name -> size).

    Parameters whose size does not divide a mesh axis the rules give them are replicated over that axis and
    listed in one :class:`ShardingWarning`.
    """
    pairs = check_rules(rules, mesh_axes)
    out: dict[str, ParamSharding] = {}
    fallbacks: list[str] = []
    for entry in entries:
        torch_spec, missed = _resolve_one(entry.spec.shape, entry.spec.axes, pairs, mesh_axes)
        if missed:
            fallbacks.append(f"{entry.key} {entry.spec.shape} over {', '.join(sorted(missed))}")
        flax_spec = tuple(torch_spec[i] for i in entry.permutation("flax"))
        out[entry.key] = ParamSharding(entry.key, torch_spec, flax_spec)
    if fallbacks:
        sizes = ", ".join(f"{k}={v}" for k, v in mesh_axes.items())
        warnings.warn(
            f"{len(fallbacks)} parameters are replicated where their size does not divide the mesh ({sizes}): "
            + "; ".join(fallbacks),
            ShardingWarning,
            stacklevel=2,
        )
    return out


def shard_shape(shape: Sequence[int], spec: PartitionSpec, mesh_axes: Mapping[str, int]) -> tuple[int, ...]:
    """The shape of one device's shard of an array of ``shape`` split by ``spec``."""
    return tuple(size // (1 if axis is None else mesh_axes[axis]) for size, axis in zip(shape, spec, strict=True))


def bytes_per_device(
    entries: Sequence[ParamEntry],
    shardings: Mapping[str, ParamSharding],
    mesh_axes: Mapping[str, int],
    itemsize: int = 4,
) -> int:
    """The parameter bytes each device holds (every shard is the same size: specs split only what divides);
    computed from the rules alone, so it estimates a mesh this machine does not have."""
    return sum(math.prod(shard_shape(e.spec.shape, shardings[e.key].torch, mesh_axes)) * itemsize for e in entries)


def parallel_style(
    entry: ParamEntry, sharding: ParamSharding, axis: str = MODEL
) -> Literal["colwise", "rowwise"] | None:
    """The torch tensor-parallel style of a 2-D weight split over ``axis``, in torch's naming: a projection
    (``nn.Linear`` weight (out, in)) is ``"colwise"`` when dim 0 is split, ``"rowwise"`` when dim 1 is; an
    embedding table (``nn.Embedding`` (num, features)) is ``"rowwise"`` (vocabulary-parallel) when dim 0 is.
    ``None`` when ``axis`` does not split it."""
    if entry.spec.name != "weight" or len(sharding.torch) != 2 or axis not in sharding.torch:
        return None
    first = sharding.torch[0] == axis
    if entry.node.kind == "embed":
        return "rowwise" if first else "colwise"
    return "colwise" if first else "rowwise"


__all__ = [
    "DATA",
    "LOGICAL_AXES",
    "MODEL",
    "PRESETS",
    "ParamSharding",
    "PartitionSpec",
    "Rules",
    "ShardingWarning",
    "bytes_per_device",
    "check_rules",
    "parallel_style",
    "resolve",
    "shard_shape",
]
