"""The pure side of both JAX backends: a call's inputs prepared and planned, then the plan run on a params tree.

The linen model (:class:`~tandem.backends.flax.model.FlaxModel`) and the NNX module
(:class:`~tandem.backends.nnx.model.NnxModel`) differ only in where the parameters live. Both turn a call's
keyword arguments into a :class:`Prepared` call with :func:`prepare`, then run :func:`forward` (jitted once
per call plan and shapes) or :func:`run` (the same function, traced by the caller's ``jax.grad``/``nnx.jit``)
on an HF Flax params tree. The jitted programs are keyed by a :class:`ModelSpec` (graph and dtype), so a linen
and an NNX model of the same graph share their compiled programs. :class:`~tandem.backends.flax.module.
GraphModule` runs :func:`execute` on the params it declares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from ...core.call import (
    INPUTS,
    CallPlan,
    Runtime,
    check_input_names,
    input_rows,
    plan_call,
    resolve_use_cache,
    run_call,
)
from ...core.config import FamilyConfig
from ...core.nodes import ModelGraph
from ...core.validation import check_values, value_ranges
from . import nodes as kernels
from .arrays import INT_INPUTS, JaxOps, as_array, host_range, ints, spec
from .cache import FlaxCache, cache_window, check_cache, updated_cache

Array = jax.Array


class ModelSpec:
    """What a model computes, as static data: its graph, config and compute dtype.

    It is a static argument of the jitted programs, and an NNX module's attribute (part of its graph
    definition, which ``nnx.jit``/``nnx.split`` hash and compare); pydantic models are not hashable, so they
    travel in this wrapper. Equality and hash follow the content (the graph as JSON, the dtype, the config's
    fields), so two models built alike share compiled programs.
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


@dataclass(frozen=True)
class Prepared:
    """A checked call: its input arrays (absent ones None), labels, cache, plan and cache size."""

    arrays: dict[str, Array | None]
    labels: dict[str, Array]
    cache: FlaxCache | None
    plan: CallPlan
    cache_length: int


def prepare(
    graph: ModelGraph,
    inputs: Mapping[str, Any],
    labels: dict[str, Any],
    past_key_values: Any = None,
    use_cache: bool | None = None,
    cache_length: int | None = None,
    training: bool = False,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
) -> Prepared:
    """Check and plan one call. ``inputs``: the model's input keywords (``input_ids``... ``head_mask``,
    ``encoder_hidden_states``, ``encoder_attention_mask``); ``labels``: the other keywords, the task's labels
    and extra inputs. Shapes and dtypes are checked by the plan, values on the host where they are concrete
    (:func:`~tandem.core.validation.check_values`), with the same messages as the torch backend."""
    check_input_names(graph, labels)
    use_cache = resolve_use_cache(graph, use_cache, past_key_values is not None, bool(labels))
    cache = check_cache(graph.backbone.encoder, past_key_values)
    raw = {**inputs, **{k: labels.pop(k) for k in graph.extra_inputs() if k in labels}}
    raw = {k: as_array(v) for k, v in raw.items()}
    labels = {k: as_array(v) for k, v in labels.items()}
    rows = input_rows(*(None if x is None else x.shape for x in (raw["input_ids"], raw["inputs_embeds"])))
    raw["attention_mask"], size = cache_window(graph, raw["attention_mask"], rows, cache, use_cache, cache_length)
    past = None if cache is None else int(cache.length)
    call = plan(graph, raw, labels, cache, use_cache, training, output_attentions, output_hidden_states, past)
    check_values(graph, value_ranges({**raw, **labels}, host_range), call.num_choices)
    arrays = {k: ints(v) if k in INT_INPUTS else None if v is None else jnp.asarray(v) for k, v in raw.items()}
    return Prepared(arrays, {k: jnp.asarray(v) for k, v in labels.items()}, cache, call, size)


def execute(
    graph: ModelGraph,
    dtype: Any,
    params: Mapping[str, Any],
    inputs: Mapping[str, Array | None],
    call: CallPlan,
    labels: Mapping[str, Array],
    cache: FlaxCache | None,
    dropout_rng: Array | None,
    block_sparse_seed: int = 0,
) -> dict[str, Any]:
    """Run ``call`` on the params tree through the node-kind registry; a returned cache is the list of
    per-run entries (see :func:`run` for the fixed-size cache)."""
    ctx = kernels.Context(
        params=params,
        dtype=dtype,
        deterministic=not call.training,
        output_attentions=call.output_attentions,
        output_hidden_states=call.output_hidden_states,
        dropout_rng=dropout_rng,
        block_sparse=call.block_sparse,
        block_sparse_seed=block_sparse_seed,
        cache_index=None if cache is None else cache.length,
    )
    return run_call(
        graph,
        call,
        {k: inputs.get(k) for k in (*INPUTS, *graph.extra_inputs())},
        labels,
        Runtime("flax", kernels.IMPLS, JaxOps(dtype), ctx),
        head_mask=inputs.get("head_mask"),
        encoder_states=inputs.get("encoder_hidden_states"),
        encoder_mask=inputs.get("encoder_attention_mask"),
        past=None if cache is None else cache.layers,
        position_start=0 if cache is None else cache.length,
    )


def run(
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
    """Run ``plan`` on the params tree (differentiable). A returned cache is a :class:`FlaxCache` of
    ``cache_length`` slots (or the given one, updated)."""
    out = execute(model.graph, model.dtype, params, arrays, plan, labels, cache, dropout_rng, block_sparse_seed)
    if plan.use_cache:
        out["past_key_values"] = updated_cache(out["past_key_values"], cache, plan.full_length, cache_length)
    return out


# Called with concrete arrays it compiles once per plan and shapes; inside a caller's jit it is traced into it.
forward = jax.jit(run, static_argnames=("model", "plan", "block_sparse_seed", "cache_length"))


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
    out = run(params, arrays, {}, None, cache, model=model, plan=call, cache_length=cache_length)
    logits = jax.lax.dynamic_index_in_dim(out["logits"], column, axis=1, keepdims=False)
    return logits, out.get("past_key_values")
