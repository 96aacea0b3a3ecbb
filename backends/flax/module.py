"""The linen module of a graph: HF Flax's params tree, the call plan run through the node-kind registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...core import nodes as n
from ...core.call import CallPlan, plan_call
from ...core.params import ParamEntry, init_params, param_entries, to_flax_tree
from .arrays import spec
from .cache import FlaxCache
from .program import execute

Array = jax.Array


def _init_subtree(key: Array, graph: n.ModelGraph, entries: list[ParamEntry]) -> dict[str, Any]:
    """Fresh params for ``entries`` (one top-level name): :func:`~tandem.core.params.init_params`, the one
    initialisation of every backend, run on the host and seeded by the key's data."""
    top = entries[0].flax_path[0]
    shapes: dict[str, Any] = {}
    for entry in entries:
        node = shapes
        for part in entry.flax_path[1:-1]:
            node = node.setdefault(part, {})
        node[entry.flax_path[-1]] = jax.ShapeDtypeStruct(entry.flax_shape, jnp.float32)

    def host(key_data: np.ndarray) -> dict[str, Any]:
        weights = init_params(graph, np.asarray(key_data).ravel().tolist(), only={e.key for e in entries})
        return to_flax_tree(graph, weights, entries)[top]

    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    return jax.pure_callback(host, shapes, jax.random.key_data(key) if typed else key)


class GraphModule(nn.Module):
    """A linen module computing a graph. Its params are declared per top-level HF name, each a nested
    dict, so ``init`` returns exactly HF Flax's tree (``<prefix>/encoder/layer/0/attention/self/query/kernel``).
    Dropout draws from the ``dropout`` RNG stream when ``deterministic=False``.
    """

    graph: n.ModelGraph
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        inputs: Mapping[str, Array | None],
        plan: CallPlan | None = None,
        labels: Mapping[str, Array] | None = None,
        cache: FlaxCache | None = None,
        block_sparse_seed: int = 0,
    ) -> dict[str, Any]:
        """Run the call ``plan`` (default: planned from the inputs' shapes, evaluation mode) on ``inputs``
        (:data:`~tandem.core.call.INPUTS`, ``head_mask``, ``encoder_hidden_states``,
        ``encoder_attention_mask`` and the task's extra inputs; absent ones are None). A returned cache is the
        list of per-run entries (see :class:`FlaxModel` for the fixed-size cache)."""
        labels = labels or {}
        if plan is None:
            specs = {k: spec(v) for k, v in inputs.items()}
            plan = plan_call(self.graph, specs, {k: spec(v) for k, v in labels.items()})
        groups: dict[str, list[ParamEntry]] = {}
        for entry in param_entries(self.graph):
            groups.setdefault(entry.flax_path[0], []).append(entry)
        params = {top: self.param(top, _init_subtree, self.graph, entries) for top, entries in groups.items()}
        rng = self.make_rng("dropout") if plan.training else None
        return execute(self.graph, self.dtype, params, inputs, plan, labels, cache, rng, block_sparse_seed)


def create_params(graph: n.ModelGraph, weights: Mapping[str, np.ndarray], dtype: Any = jnp.float32) -> dict[str, Any]:
    """Canonical weights -> the HF Flax params tree of jax arrays in ``dtype``."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), to_flax_tree(graph, weights))


__all__ = ["GraphModule", "create_params"]
