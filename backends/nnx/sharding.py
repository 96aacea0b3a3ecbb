"""An NNX module on a device mesh: its ``nnx.Param`` values are the sharded arrays of
:mod:`tandem.backends.flax.sharding` (loading, call placement and saving are the linen backend's)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from ...core.config import FamilyConfig
from ...core.nodes import ModelGraph
from ...core.outputs import ModelOutput
from ...core.sharding import Rules
from ..flax.sharding import MeshLayout, mesh_layout, shard_weights, split_arrays
from .model import NnxModel


class ShardedNnxModel(NnxModel):
    """An :class:`NnxModel` whose ``nnx.Param``s hold arrays sharded on ``sharding.mesh`` (``.sharding``: its
    :class:`~tandem.backends.flax.sharding.MeshLayout`). Every call runs on the mesh
    (:meth:`MeshLayout.call`): batch-split inputs, parameters held to their shardings, so ``nnx.grad``
    gives gradients sharded like them and an ``nnx.Optimizer``'s state (made ``zeros_like`` the params)
    follows. On a mesh of ``Explicit`` axes a training-mode call (dropout) is not supported: the call is
    traced once for its output shapes, and drawing a dropout key there would advance ``rngs``.
    """

    def __init__(
        self,
        graph: ModelGraph,
        config: FamilyConfig,
        params: Mapping[str, Any],
        dtype: Any,
        rngs: nnx.Rngs,
        layout: MeshLayout,
    ) -> None:
        super().__init__(graph, config, params, dtype, rngs)
        self.sharding = layout
        self._call_params = None

    @property
    def params(self) -> dict[str, Any]:
        """The ``nnx.Param`` values as an HF Flax tree; during a call, the values the mesh wrapper passes
        (constrained, or on an explicit mesh retyped to its Auto axes)."""
        return super().params if self._call_params is None else self._call_params

    def __call__(self, **inputs: Any) -> ModelOutput:
        """The keywords of :meth:`NnxModel.__call__`, run on the mesh."""
        arrays, static = split_arrays(inputs)

        def call(params: dict[str, Any], arrays: dict[str, Any]) -> ModelOutput:
            # a plain attribute write: the values live only for this call (nnx would check trace levels)
            object.__setattr__(self, "_call_params", params)
            try:
                return NnxModel.__call__(self, **arrays, **static)
            finally:
                object.__setattr__(self, "_call_params", None)

        return self.sharding.call(call, super().params, arrays)


def create(
    graph: ModelGraph,
    config: FamilyConfig,
    weights: Mapping[str, Any],
    dtype: Any,
    mesh: Mesh,
    rules: str | Rules | None,
    seed: int = 0,
) -> ShardedNnxModel:
    """A :class:`ShardedNnxModel` in eval mode, its params (in ``dtype``) sharded on ``mesh`` under ``rules``,
    each device's block read on its own; its dropout stream is ``nnx.Rngs(dropout=seed)``."""
    layout = mesh_layout(graph, mesh, rules)
    params = shard_weights(graph, weights, layout, dtype)
    return ShardedNnxModel(graph, config, params, dtype, nnx.Rngs(dropout=seed), layout)


__all__ = ["ShardedNnxModel", "create"]
