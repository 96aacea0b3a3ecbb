"""Scale-out on a ``torch.distributed`` DeviceMesh: the sharding rules (``core/sharding.py``) as DTensor
placements, FSDP2 per transformer layer and at the root, each rank reading only its slices, and a save
that gathers one tensor at a time.

How a sharded model computes (the node kernels are the single-device ones):

- ``fsdp`` (FSDP2 ``fully_shard`` over ``"data"``): every layer's module is one FSDP unit and the model
  is the root unit; the encoder runs each layer through its module (``Context.run_layer``), so FSDP
  gathers the layer's parameters before it and frees them after, and reduce-scatters its gradients.
- parameters the rules split over the other mesh axes (``tp``: ``"model"``) are DTensors. A projection
  whose weight is split runs as a DTensor matmul (column- or row-parallel as the placement says) and
  returns its full output (all-gather or all-reduce); any other use of a split parameter (an embedding
  table, a tied decoder) reads it gathered. Attention, norms and the heads run replicated on every rank
  of the model axis, so the numbers are the single-device ones up to the order of a sum.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_tensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from ...core import nodes as n
from ...core.call import LayerOutput
from ...core.checkpoint import save_checkpoint
from ...core.config import FamilyConfig
from ...core.io import Deferred
from ...core.params import param_entries, torch_aliases, walk
from ...core.sharding import DATA, MODEL, ParamSharding, Rules, resolve
from . import nodes as ops
from .model import TorchModel


@dataclass
class Sharding:
    """How a sharded :class:`TorchModel` lives on its mesh: the rules, each parameter's spec, whether FSDP
    wraps it, and where each parameter is registered (FSDP swaps the registered tensors in and out)."""

    mesh: DeviceMesh
    rules: str | Rules
    specs: dict[str, ParamSharding]
    fsdp: bool
    slots: dict[str, tuple[nn.Module, str]]  # key (tied aliases too) -> (module, attribute)
    layers: dict[str, nn.Module]  # FSDP units: layer path -> its module

    def prepare(self, ctx: ops.Context) -> None:
        """Point a call's context at the parameters as registered when used, the layers' modules and the
        tensor-parallel projection."""
        ctx.params = _Params(self.slots, self.fsdp)  # type: ignore[assignment]
        ctx.run_layer = self.run_layer
        ctx.impls = _IMPLS

    def run_layer(self, fn: Callable[..., LayerOutput], node: n.TransformerLayer, path: str, *args: Any) -> Any:
        module = self.layers.get(path)
        if module is None:
            return fn(node, path, *args)
        # FSDP registers its backward hooks on the tensors a module returns: a tuple, not a dataclass.
        hidden, attention, cross, cache = module(partial(_layer_tuple, fn), node, path, *args)
        return LayerOutput(hidden=hidden, attention=attention, cross_attention=cross, cache=cache)


def _layer_tuple(fn: Callable[..., LayerOutput], *args: Any) -> tuple[Any, ...]:
    out = fn(*args)
    return out.hidden, out.attention, out.cross_attention, out.cache


class _Params(Mapping[str, Tensor]):
    """The parameters as a kernel reads them, looked up when used: a DTensor is gathered (a replicated one
    is its local tensor), a plain tensor (one FSDP has gathered) is itself."""

    def __init__(self, slots: dict[str, tuple[nn.Module, str]], fsdp: bool) -> None:
        self.slots = slots
        self.fsdp = fsdp

    def raw(self, key: str) -> Tensor:
        module, name = self.slots[key]
        value = module._parameters[name]
        if self.fsdp and isinstance(value, DTensor) and DATA in (value.device_mesh.mesh_dim_names or (DATA,)):
            # Still split over "data": its FSDP unit did not gather it, so its gradient would not be reduced.
            raise RuntimeError(
                f"{key} is read outside its layer's FSDP unit: the kernel that runs its layer must call it "
                "through Context.run_layer"
            )
        return value

    def __getitem__(self, key: str) -> Tensor:
        value = self.raw(key)
        if not isinstance(value, DTensor):
            return value
        if all(p.is_replicate() for p in value.placements):
            return value.to_local()
        return value.full_tensor()

    def __iter__(self) -> Iterator[str]:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)


def parallel_linear(node: n.Linear, path: str, x: Tensor, ctx: ops.Context) -> Tensor:
    """A projection whose weight is split: the matmul of each rank's slice as a DTensor op (column-parallel:
    output features split; row-parallel: input features split, partial sums), the full output returned."""
    params: _Params = ctx.params  # type: ignore[assignment]
    weight = params.raw(n.join(path, "weight"))
    if not isinstance(weight, DTensor) or all(p.is_replicate() for p in weight.placements):
        return ops.linear(node, path, x, ctx)
    mesh = weight.device_mesh
    bias = params.raw(n.join(path, "bias")) if node.bias else None
    x = DTensor.from_local(x, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return F.linear(x, weight, bias).full_tensor()


_IMPLS = ChainMap({n.Linear: parallel_linear}, ops.IMPLS)  # a live view: kinds registered later are found


def _check_mesh(mesh: Any, rules: str | Rules) -> tuple[str, ...]:
    """The mesh's axis names (a 1-D mesh without names is ``"data"`` under ``fsdp``, ``"model"`` under
    ``tp``), checked against what the torch backend can run."""
    if not isinstance(mesh, DeviceMesh):
        raise TypeError(f"mesh must be a torch.distributed DeviceMesh for the torch backend, got {type(mesh).__name__}")
    if mesh.size() != dist.get_world_size():
        raise ValueError(f"mesh must span every process ({dist.get_world_size()}); it has {mesh.size()}")
    names = mesh.mesh_dim_names
    if names is None and mesh.ndim == 1 and rules in ("fsdp", "tp"):
        names = (DATA,) if rules == "fsdp" else (MODEL,)
    if not names:
        raise ValueError(f"mesh must name its axes, e.g. init_device_mesh(..., mesh_dim_names=('{DATA}', '{MODEL}'))")
    if rules == "tp" and DATA in names:
        # Parameters replicated over "data" would get each rank's own gradients, never reduced.
        raise ValueError(
            f"rules='tp' on a mesh with a '{DATA}' axis ({names}): use 'fsdp_tp' to also split the batch over "
            f"'{DATA}', or a ('{MODEL}',) mesh"
        )
    return names


def _placements(spec: tuple[str | None, ...], axes: tuple[str, ...]) -> list[Placement]:
    return [Shard(spec.index(axis)) if axis in spec else Replicate() for axis in axes]


def _device(mesh: DeviceMesh) -> torch.device:
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, getattr(torch, mesh.device_type).current_device())


def create(
    graph: n.ModelGraph,
    config: FamilyConfig,
    weights: Mapping[str, np.ndarray],
    dtype: torch.dtype,
    mesh: DeviceMesh,
    rules: str | Rules,
) -> TorchModel:
    """A :class:`TorchModel` sharded on ``mesh`` by ``rules``, in eval mode. Each rank copies in only its
    slice of every parameter from ``weights`` (memory-mapped checkpoint views, or per-parameter fresh
    weights), so no rank holds the whole model."""
    names = _check_mesh(mesh, rules)
    entries = param_entries(graph)
    specs = resolve(entries, dict(zip(names, mesh.shape, strict=True)), rules)
    fsdp = rules in ("fsdp", "fsdp_tp") and DATA in names
    model = TorchModel(graph, config, None).to(dtype)  # on the meta device: nothing allocated yet
    placed = tuple(axis for axis in names if not (fsdp and axis == DATA))  # DTensor axes (FSDP owns "data")
    if placed:
        sub = mesh if placed == names else mesh[placed]
        for entry in entries:
            module, name = _slot(model, entry.key)
            value = distribute_tensor(module._parameters[name].data, sub, _placements(specs[entry.key].torch, placed))
            module.register_parameter(name, nn.Parameter(value))
    slots = {entry.key: _slot(model, entry.key) for entry in entries}
    for alias, canonical in torch_aliases(graph).items():
        module, name = _slot(model, alias)
        module.register_parameter(name, model.get_parameter(canonical))
        slots[alias] = slots[canonical]
    layers: dict[str, nn.Module] = {}
    if fsdp:
        data = mesh if len(names) == 1 else mesh[DATA]  # (a 1-D mesh may have no names)
        for path, node in walk(graph):
            if isinstance(node, n.TransformerLayer) and path not in layers:  # a shared layer is one unit
                layers[path] = model.get_submodule(path)
                fully_shard(layers[path], mesh=data)
        # The root too frees its gathered parameters after the forward (FSDP2 keeps them by default), so
        # that model.parameters() are the sharded ones between calls: an optimiser made after a forward
        # would otherwise hold gathered copies that never receive the reduced gradients.
        fully_shard(model, mesh=data, reshard_after_forward=True)
    model.to_empty(device=_device(mesh))
    with torch.no_grad():
        for entry in entries:
            _fill(model.get_parameter(entry.key), weights[entry.key])
    model.sharding = Sharding(mesh, rules, specs, fsdp, slots, layers)
    return model.eval()


def _slot(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    scope, _, name = key.rpartition(".")
    return model.get_submodule(scope), name


def _fill(param: Tensor, source: np.ndarray) -> None:
    """Copy this rank's slice of ``source`` (a full parameter, typically memory-mapped) into ``param``."""
    if not isinstance(param, DTensor):
        param.copy_(torch.from_numpy(np.array(source)))
        return
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    region = tuple(slice(start, start + size) for start, size in zip(offset, shape, strict=True))
    param.to_local().copy_(torch.from_numpy(np.array(source[region])))  # a copy: the view is read-only


# What a saved tensor is written as: bfloat16 as float32 (as the unsharded export), the rest as they are.
_NUMPY = {torch.float32: np.dtype("float32"), torch.bfloat16: np.dtype("float32"), torch.float16: np.dtype("float16")}


def save(model: TorchModel, path: str | Path, task: str, format: str, max_shard_size: int | str | None) -> None:
    """Write the full HF checkpoint of a sharded model; every rank calls it, rank 0 writes.

    Rank 0's writer asks for the tensors one at a time in its file order and tells the other ranks which
    one it needs next; all gather it (``DTensor.full_tensor()``) and only rank 0 keeps it, until it is
    written. So each process holds at most one full tensor at a time. The write is atomic (staging folder,
    moved into place); a failure on rank 0 is reported on every rank. Ends with a barrier.
    """
    sharding: Sharding = model.sharding
    entries = param_entries(model.graph)
    device = _device(sharding.mesh)

    def gather(index: int) -> np.ndarray:
        with torch.no_grad():
            value = model.get_parameter(entries[index].key).detach()
            value = value.full_tensor() if isinstance(value, DTensor) else value
            return value.to(torch.float32 if value.dtype == torch.bfloat16 else value.dtype).cpu().numpy()

    def announce(index: int) -> int:
        signal = torch.tensor([index], dtype=torch.int64, device=device)
        dist.broadcast(signal, src=0)
        return int(signal.item())

    if dist.get_rank() == 0:

        def source(index: int) -> np.ndarray:
            announce(index)
            return gather(index)

        weights = {
            entry.key: Deferred(entry.spec.shape, _NUMPY[model.get_parameter(entry.key).dtype], partial(source, i))
            for i, entry in enumerate(entries)
        }
        status = -2
        try:
            save_checkpoint(path, model.config, task, weights, format=format, max_shard_size=max_shard_size)
            status = -1
        finally:
            announce(status)
    else:
        while (status := announce(0)) >= 0:
            gather(status)
        if status == -2:
            raise RuntimeError(f"rank 0 failed to write the checkpoint to {path} (its error says why)")
    dist.barrier()
