"""The Flax adapter: graph + weights -> a ``flax.linen`` module plus an HF Flax params tree."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ...core.config import FamilyConfig
from ...core.nodes import ModelGraph
from ...core.outputs import ModelOutput
from ...core.params import from_flax_tree
from ...core.sharding import Rules
from . import relative, sharding  # noqa: F401  (relative registers its node kinds in IMPLS)
from .generation import decoder_session, to_numpy
from .model import FlaxModel
from .module import GraphModule, create_params

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# A ModelOutput is a pytree of its fields, so jax.block_until_ready / tree_map / jit see the arrays in it.
jax.tree_util.register_pytree_with_keys(
    ModelOutput,
    lambda out: (tuple((jax.tree_util.DictKey(k), v) for k, v in out.items()), tuple(out)),
    lambda keys, values: ModelOutput(zip(keys, values, strict=True)),
    flatten_func=lambda out: (tuple(out.values()), tuple(out)),
)


def create(
    graph: ModelGraph,
    config: FamilyConfig,
    weights: Mapping[str, np.ndarray],
    dtype: str,
    mesh: Mesh | None = None,
    rules: str | Rules | None = None,
) -> FlaxModel:
    """A :class:`FlaxModel` with params in ``dtype`` computing in ``dtype`` (as torch's ``model.to(dtype)``;
    LayerNorm, softmax and losses upcast inside as torch's kernels do, ``docs/performance.md``); with ``mesh``,
    its params sharded on it by ``rules`` (:func:`tandem.backends.flax.sharding.create`)."""
    if mesh is not None:
        return sharding.create(graph, config, weights, dtype, mesh, rules)
    params = create_params(graph, weights, _DTYPES[dtype])
    return FlaxModel(GraphModule(graph=graph, dtype=_DTYPES[dtype]), params, config)


def export(model: FlaxModel) -> dict[str, np.ndarray]:
    """The canonical (HF PyTorch layout) weights of ``model`` as numpy arrays."""
    host = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float32), model.params)
    return from_flax_tree(model.graph, host)


save_sharded = sharding.save_sharded

__all__ = ["FlaxModel", "GraphModule", "create", "decoder_session", "export", "save_sharded", "to_numpy"]
