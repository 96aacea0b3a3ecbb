"""The pure side of the NNX backend: a call plan run on an HF Flax params tree, jitted once per plan.

The NNX module (:mod:`.model`) only holds the parameters; each call gathers them into the nested HF Flax
tree and hands it to :func:`forward`, which runs :func:`~tandem.core.call.run_call` through the linen
backend's node-kind registry (:data:`tandem.backends.flax.nodes.IMPLS`): both JAX backends execute the same
kernels on the same tree, so they agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from ...core.call import INPUTS, CallPlan, Runtime, plan_call, run_call
from ...core.config import FamilyConfig
from ...core.nodes import ModelGraph
from ..flax import nodes as kernels
from ..flax.arrays import JaxOps, spec
from ..flax.cache import FlaxCache, updated_cache

Array = jax.Array


class ModelSpec:
    """What a model computes, as static data: its graph, config and compute dtype.

    An ``nnx.Module``'s attributes that are not Variables are part of its graph definition, which
    ``nnx.jit`` and ``nnx.split`` hash and compare; pydantic models are not hashable, so they travel in this
    wrapper. Equality and hash follow the content (the graph as JSON, the dtype, the config's fields), so two
    models built alike share compiled programs.
    """

    def __init__(self, graph: ModelGraph, config: FamilyConfig, dtype: Any) -> None:
        self.graph = graph
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self._key = (graph.model_dump_json(), self.dtype.name)
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return isinstance(other, ModelSpec) and self._key == other._key and self.config == other.config

    def __repr__(self) -> str:
        return f"ModelSpec({self.graph.family} {self.graph.task}, dtype={self.dtype.name})"


def plan(
    graph: ModelGraph,
    arrays: Mapping[str, Array | None],
    labels: Mapping[str, Array],
    cache: FlaxCache | None,
    use_cache: bool,
    training: bool = False,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
    past_length: int | None = None,
) -> CallPlan:
    """The call plan of ``arrays`` (shapes only, so tracers do); a fixed-size cache sets the key length."""
    return plan_call(
        graph,
        {k: spec(v) for k, v in arrays.items()},
        {k: spec(v) for k, v in labels.items()},
        past_length=past_length,
        cache_slots=None if cache is None else cache.max_length,
        cached_cross=cache is not None and len(cache.layers[0]) == 4,
        use_cache=use_cache,
        output_attentions=output_attentions,
        output_hidden_states=output_hidden_states,
        training=training,
    )


@partial(jax.jit, static_argnames=("model", "plan", "block_sparse_seed", "cache_length"))
def forward(
    params: Mapping[str, Any],
    arrays: Mapping[str, Array | None],
    labels: Mapping[str, Array],
    dropout_rng: Array | None,
    cache: FlaxCache | None,
    *,
    model: ModelSpec,
    plan: CallPlan,
    block_sparse_seed: int = 0,
    cache_length: int = 0,
) -> dict[str, Any]:
    """Run ``plan`` on the params tree. Jitted: called with concrete arrays it compiles once per plan and
    shapes; called inside ``nnx.jit``/``nnx.grad`` it is traced into the caller's program.

    A returned cache is a :class:`FlaxCache` of ``cache_length`` slots (or the given one, updated).
    """
    graph = model.graph
    ctx = kernels.Context(
        params=params,
        dtype=model.dtype,
        deterministic=not plan.training,
        output_attentions=plan.output_attentions,
        output_hidden_states=plan.output_hidden_states,
        dropout_rng=dropout_rng,
        block_sparse=plan.block_sparse,
        block_sparse_seed=block_sparse_seed,
        cache_index=None if cache is None else cache.length,
    )
    out = run_call(
        graph,
        plan,
        {k: arrays.get(k) for k in (*INPUTS, *graph.extra_inputs())},
        labels,
        Runtime("nnx", kernels.IMPLS, JaxOps(model.dtype), ctx),
        head_mask=arrays.get("head_mask"),
        encoder_states=arrays.get("encoder_hidden_states"),
        encoder_mask=arrays.get("encoder_attention_mask"),
        past=None if cache is None else cache.layers,
        position_start=0 if cache is None else cache.length,
    )
    if plan.use_cache:
        out["past_key_values"] = updated_cache(out["past_key_values"], cache, plan.full_length, cache_length)
    return out


@partial(jax.jit, static_argnames=("model", "use_cache", "cache_length"), donate_argnames=("cache",))
def decode_step(
    params: Mapping[str, Any],
    arrays: Mapping[str, Array | None],
    cache: FlaxCache | None,
    column: Array,
    *,
    model: ModelSpec,
    use_cache: bool,
    cache_length: int,
) -> tuple[Array, FlaxCache | None]:
    """One generation call: the logits at ``column`` (B, V) and the updated cache, which is donated (so a
    step updates it in place)."""
    call = plan(model.graph, arrays, {}, cache, use_cache)
    out = forward(params, arrays, {}, None, cache, model=model, plan=call, cache_length=cache_length)
    logits = jax.lax.dynamic_index_in_dim(out["logits"], column, axis=1, keepdims=False)
    return logits, out.get("past_key_values")
