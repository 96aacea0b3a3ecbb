"""The Flax NNX adapter: graph + weights -> an ``nnx.Module`` whose ``nnx.Param`` state is HF Flax's tree.

No node kind is implemented here: the module holds the parameters and runs the call plan through the linen
backend's program (:mod:`tandem.backends.flax.program`: the same input checks, kernels and compiled
programs), so the NNX and linen backends compute the same numbers from the same tree, and generate through
the same decoder session.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from ...core.config import FamilyConfig
from ...core.nodes import ModelGraph
from ...core.params import from_flax_tree, to_flax_tree
from ...core.sharding import Rules
from ..flax import _DTYPES, save_sharded
from ..flax.generation import decoder_session, to_numpy
from . import sharding
from .model import NnxModel


def create(
    graph: ModelGraph,
    config: FamilyConfig,
    weights: Mapping[str, np.ndarray],
    dtype: str,
    seed: int = 0,
    mesh: Mesh | None = None,
    rules: str | Rules | None = None,
) -> NnxModel:
    """An :class:`NnxModel` in eval mode with params in ``dtype`` computing in ``dtype`` (the linen backend's);
    its dropout stream is ``nnx.Rngs(dropout=seed)``. With ``mesh``, its params sharded on it by ``rules``
    (:func:`tandem.backends.nnx.sharding.create`)."""
    if mesh is not None:
        return sharding.create(graph, config, weights, _DTYPES[dtype], mesh, rules, seed)
    params = jax.tree_util.tree_map(lambda a: a.astype(_DTYPES[dtype]), to_flax_tree(graph, weights))
    return NnxModel(graph, config, params, _DTYPES[dtype], nnx.Rngs(dropout=seed))


def export(model: NnxModel) -> dict[str, np.ndarray]:
    """The canonical (HF PyTorch layout) weights of ``model`` as numpy arrays."""
    host = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float32), model.params)
    return from_flax_tree(model.graph, host)


__all__ = ["NnxModel", "create", "decoder_session", "export", "save_sharded", "to_numpy"]
