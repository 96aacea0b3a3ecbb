"""JAX models on a device mesh: parameters as sharded ``jax.Array``s read shard by shard from the checkpoint.

:class:`MeshLayout` turns the framework-free rules of :mod:`tandem.core.sharding` into one ``NamedSharding``
per parameter of the HF Flax tree. Loading (:func:`shard_weights`) builds each parameter with
``jax.make_array_from_callback``: every device's block is sliced out of the canonical weights (memory-mapped
checkpoint arrays) and transposed to the flax layout on its own, so no device, and no host, holds a full copy
of a parameter it does not need. Calls (:meth:`MeshLayout.call`) place the batch over ``"data"``, constrain
the parameters to their shardings (so gradients come out sharded like them) and, on a mesh of ``Explicit``
axes (``jax.make_mesh``'s default), run the model with the axes ``Auto`` inside (``jax.sharding.auto_axes``):
the compiler places the intermediates, the parameters and outputs keep their explicit types. Saving
(:func:`export`) gathers one tensor at a time, when the writer asks for it. Both JAX backends use this module
(the NNX module in :mod:`tandem.backends.nnx.sharding`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ...core.checkpoint import save_checkpoint
from ...core.config import FamilyConfig
from ...core.io import Deferred, Format
from ...core.nodes import ModelGraph
from ...core.outputs import ModelOutput
from ...core.params import ParamEntry, param_entries
from ...core.sharding import DATA, Rules, resolve
from .model import FlaxModel
from .module import GraphModule

Array = jax.Array
Path = tuple[str, ...]


@dataclass(frozen=True)
class MeshLayout:
    """The mesh and each parameter's sharding (flax layout), keyed by its HF Flax path. Hashable, so an NNX
    module can hold it as static data."""

    mesh: Mesh
    shardings: tuple[tuple[Path, NamedSharding], ...]

    @property
    def explicit(self) -> bool:
        return any(kind == AxisType.Explicit for kind in self.mesh.axis_types)

    def tree(self) -> dict[str, Any]:
        """The shardings as a nested dict shaped like the params tree."""
        tree: dict[str, Any] = {}
        for path, sharding in self.shardings:
            node = tree
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = sharding
        return tree

    def batch_spec(self, shape: tuple[int, ...], rows: int | None) -> PartitionSpec:
        """``P("data")`` for an array whose leading axis is the batch and divides the data axis, else
        replicated (``head_mask``, a loss, a batch that does not divide)."""
        size = self.mesh.shape.get(DATA)
        if size is None or rows is None or not shape or shape[0] != rows or rows % size:
            return PartitionSpec()
        return PartitionSpec(DATA)

    def place(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """Inputs split over ``"data"`` by their batch rows: concrete arrays are put on the mesh, traced ones
        constrained (resharded on an explicit mesh)."""
        rows = _rows(arrays)
        out = {}
        for name, value in arrays.items():
            sharding = self._batch(np.shape(value), rows)
            if not isinstance(value, jax.core.Tracer):
                out[name] = jax.device_put(value, sharding)
            elif self.explicit:
                out[name] = jax.sharding.reshard(value, sharding)
            else:
                out[name] = jax.lax.with_sharding_constraint(value, sharding)
        return out

    def constrain(self, params: Mapping[str, Any]) -> Any:
        """The params held to their shardings; under ``jax.grad`` the constraint applies to the cotangents
        too, so gradients are sharded like the parameters. (A parameter the call does not read, such as a
        pooler under a masked-LM head, gets a zero gradient JAX makes without a use to constrain: inside a
        jit its placement is XLA's choice.)"""
        return jax.tree.map(jax.lax.with_sharding_constraint, params, self.tree())

    def call(self, fn: Callable[[Any, dict[str, Any]], Any], params: Any, arrays: Mapping[str, Any]) -> Any:
        """``fn(params, arrays)`` on the mesh, with ``arrays`` (the call's inputs and labels) batch-split and
        the outputs too where their leading axis is the batch."""
        rows = _rows(arrays)
        arrays = self.place(arrays)
        if not self.explicit:
            out = fn(self.constrain(params), arrays)
            return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, self._batch(x.shape, rows)), out)
        # Explicit axes type every array by its sharding, and most of the model's ops (a gather from a split
        # table, matmuls contracting split axes) have no unambiguous output type: run them on Auto axes, as
        # GSPMD would, and type the outputs batch-split.
        with self._context(params, arrays):
            whole = jax.sharding.auto_axes(fn, out_sharding=NamedSharding(self.mesh, PartitionSpec()))
            shapes = jax.eval_shape(whole, params, arrays)
            out_sharding = jax.tree.map(lambda s: self._batch(s.shape, rows), shapes)
            return jax.sharding.auto_axes(fn, out_sharding=out_sharding)(params, arrays)

    def _batch(self, shape: tuple[int, ...], rows: int | None) -> NamedSharding:
        return NamedSharding(self.mesh, self.batch_spec(shape, rows))

    def _context(self, *trees: Any) -> contextlib.AbstractContextManager[Any]:
        """The mesh context JAX needs for arrays of Explicit axes: ours when called eagerly; a trace
        (``jax.grad``, ``jax.jit``, ``nnx.grad``) must run inside ``with jax.set_mesh(mesh):`` itself, since a
        mesh cannot be set inside one."""
        if jax.sharding.get_abstract_mesh() == self.mesh.abstract_mesh:
            return contextlib.nullcontext()
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees)):
            raise ValueError(
                "this model's mesh has Explicit axes: trace it (jax.grad, jax.jit, nnx.grad...) inside "
                "`with jax.set_mesh(mesh):`, as JAX requires for arrays whose type carries their sharding"
            )
        return jax.set_mesh(self.mesh)


def _rows(arrays: Mapping[str, Any]) -> int | None:
    """The batch size: the leading axis of ``input_ids`` or ``inputs_embeds``."""
    for name in ("input_ids", "inputs_embeds"):
        if arrays.get(name) is not None:
            return int(np.shape(arrays[name])[0])
    return None


def split_arrays(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A call's keywords as (arrays to place on the mesh, everything else: flags, keys, caches)."""
    arrays, static = {}, {}
    for name, value in inputs.items():
        is_key = isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)
        if isinstance(value, (np.ndarray, jax.Array, list)) and not is_key:
            arrays[name] = np.asarray(value) if isinstance(value, list) else value
        else:
            static[name] = value
    return arrays, static


def mesh_layout(graph: ModelGraph, mesh: Mesh, rules: str | Rules | None) -> MeshLayout:
    """Each parameter's ``NamedSharding`` on ``mesh`` under ``rules`` (a preset or pairs, see
    :mod:`tandem.core.sharding`)."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (jax.make_mesh(...)), got {type(mesh).__name__}")
    entries = param_entries(graph)
    specs = resolve(entries, dict(mesh.shape), rules)
    return MeshLayout(
        mesh, tuple((e.flax_path, NamedSharding(mesh, PartitionSpec(*specs[e.key].flax))) for e in entries)
    )


def _read_shard(entry: ParamEntry, weight: np.ndarray, dtype: Any, index: tuple[slice, ...]) -> np.ndarray:
    """The block ``index`` (flax layout) of a torch-layout weight: sliced first, so a memory-mapped
    checkpoint reads only that block, then transposed and cast to ``dtype``."""
    torch_index = tuple(index[axis] for axis in entry.permutation("torch"))
    block = np.transpose(weight[torch_index], entry.permutation("flax"))
    return np.ascontiguousarray(block, dtype=dtype)


def shard_weights(
    graph: ModelGraph, weights: Mapping[str, np.ndarray], layout: MeshLayout, dtype: Any = np.float32
) -> dict[str, Any]:
    """Canonical weights -> the HF Flax params tree of sharded ``jax.Array``s of ``dtype``, each device's
    block read on its own (``jax.make_array_from_callback``)."""
    shardings = dict(layout.shardings)
    tree: dict[str, Any] = {}
    for entry in param_entries(graph):
        node = tree
        for part in entry.flax_path[:-1]:
            node = node.setdefault(part, {})
        read = partial(_read_shard, entry, weights[entry.key], dtype)
        node[entry.flax_path[-1]] = jax.make_array_from_callback(entry.flax_shape, shardings[entry.flax_path], read)
    return tree


def _gather(value: Array) -> np.ndarray:
    """One full parameter on the host: from this process's devices, or from every process (multi-host)."""
    if value.is_fully_addressable:
        return np.asarray(jax.device_get(value), dtype=np.float32)
    return np.asarray(multihost_utils.process_allgather(value, tiled=True), dtype=np.float32)


def export(graph: ModelGraph, params: Mapping[str, Any]) -> dict[str, Deferred]:
    """Canonical weights whose values are gathered only when the checkpoint writer reads them, one tensor at
    a time (each a transposed view of the gathered flax-layout array)."""
    flat = {path: value for path, value in _leaves(params)}
    out = {}
    for entry in param_entries(graph):
        value = flat[entry.flax_path]
        source = partial(lambda v, perm: np.transpose(_gather(v), perm), value, entry.permutation("torch"))
        out[entry.key] = Deferred(entry.spec.shape, np.dtype(np.float32), source)
    return out


def _leaves(tree: Mapping[str, Any], prefix: Path = ()) -> list[tuple[Path, Any]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.extend(_leaves(value, (*prefix, key)))
        else:
            out.append(((*prefix, key), value))
    return out


def save_sharded(model: Any, path: str | os.PathLike, task: str, format: Format, max_shard_size: Any) -> None:
    """Save a sharded model (``tandem.save_pretrained``; every process calls it): the tensors are gathered
    one at a time as the writer reads them and process 0 writes the checkpoint, atomically.

    With several processes, each gather is a collective: the other processes gather in the order the
    safetensors writer reads (by key, every parameter being float32), then all meet at a barrier.
    """
    weights = export(model.graph, model.params)
    if jax.process_index() == 0:
        save_checkpoint(path, model.config, task, weights, format=format, max_shard_size=max_shard_size)
    else:
        for key in sorted(weights):
            weights[key].source()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("tandem.save_pretrained")


class ShardedFlaxModel(FlaxModel):
    """A :class:`FlaxModel` whose params are sharded on ``sharding.mesh`` (``.sharding``: its
    :class:`MeshLayout`); every call runs on the mesh
    (:meth:`MeshLayout.call`), so ``model(...)``, ``model.apply(params, ...)`` under ``jax.grad`` and a jitted
    training step all see batch-split inputs and parameter-sharded gradients."""

    def __init__(self, module: GraphModule, params: dict[str, Any], config: FamilyConfig, layout: MeshLayout) -> None:
        super().__init__(module, params, config)
        self.sharding = layout

    def apply(self, params: Mapping[str, Any], _jit: bool = False, **inputs: Any) -> ModelOutput:
        arrays, static = split_arrays(inputs)

        def call(params: Mapping[str, Any], arrays: dict[str, Any]) -> ModelOutput:
            return FlaxModel.apply(self, params, _jit=_jit, **arrays, **static)

        return self.sharding.call(call, params, arrays)


def create(
    graph: ModelGraph,
    config: FamilyConfig,
    weights: Mapping[str, np.ndarray],
    dtype: str,
    mesh: Mesh,
    rules: str | Rules | None,
) -> ShardedFlaxModel:
    """A :class:`ShardedFlaxModel` of ``graph`` with ``weights`` sharded on ``mesh`` under ``rules``, its
    params in ``dtype`` as the unsharded model's."""
    from . import _DTYPES

    layout = mesh_layout(graph, mesh, rules)
    module = GraphModule(graph=graph, dtype=_DTYPES[dtype])
    return ShardedFlaxModel(module, shard_weights(graph, weights, layout, _DTYPES[dtype]), config, layout)


__all__ = ["MeshLayout", "ShardedFlaxModel", "create", "export", "mesh_layout", "save_sharded", "shard_weights"]
