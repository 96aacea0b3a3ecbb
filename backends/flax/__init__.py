"""The Flax adapter: graph + weights -> a ``flax.linen`` module plus an HF Flax params tree."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ...core.config import FamilyConfig
from ...core.nodes import ModelGraph
from ...core.outputs import ModelOutput
from ...core.params import from_flax_tree
from .generation import decoder_session, to_numpy
from .model import FlaxModel
from .module import GraphModule, create_params

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# A ModelOutput is a pytree of its fields, so jax.block_until_ready / tree_map / jit see the arrays in it.
jax.tree_util.register_pytree_with_keys(
    ModelOutput,
    lambda out: (tuple((jax.tree_util.DictKey(k), v) for k, v in out.items()), tuple(out)),
    lambda keys, values: ModelOutput(zip(keys, values, strict=True)),
    flatten_func=lambda out: (tuple(out.values()), tuple(out)),
)


def create(graph: ModelGraph, config: FamilyConfig, weights: Mapping[str, np.ndarray], dtype: str) -> FlaxModel:
    """A :class:`FlaxModel` with float32 params (HF Flax's convention) computing in ``dtype``."""
    return FlaxModel(GraphModule(graph=graph, dtype=_DTYPES[dtype]), create_params(graph, weights), config)


def export(model: FlaxModel) -> dict[str, np.ndarray]:
    """The canonical (HF PyTorch layout) weights of ``model`` as numpy arrays."""
    host = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float32), model.params)
    return from_flax_tree(model.graph, host)


__all__ = ["FlaxModel", "GraphModule", "create", "decoder_session", "export", "to_numpy"]
