"""Compile a layer graph into a ``flax.linen`` module whose params tree is HF Flax's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ...core import nodes as n
from ...core.call import (
    CallPlan,
    check_input_names,
    input_rows,
    plan_call,
    resolve_use_cache,
)
from ...core.config import FamilyConfig
from ...core.outputs import ModelOutput
from ...core.validation import check_values, value_ranges
from .arrays import INT_INPUTS, as_array, host_range, ints, spec
from .cache import FlaxCache, cache_window, check_cache, updated_cache
from .module import GraphModule

Array = jax.Array


class FlaxModel:
    """A compiled graph in flax: ``.module`` (linen), ``.params`` (HF Flax tree), ``.config``, ``.graph``.

    Calling it runs a ``jax.jit``-compiled forward (compiled once per call plan: input shapes and flags) on
    ``self.params``; :meth:`apply` is the same computation on explicit params, for ``jax.grad``.

    Decoders keep a fixed-size :class:`FlaxCache`, so every one-token decode step has the same shapes and
    runs one compiled program (see :meth:`apply` for the cache arguments).

    Example:
        >>> model = tandem.build(config, task="masked_lm", backend="flax")
        >>> model(input_ids=np.array([[101, 2023, 102]])).logits.shape
        (1, 3, 30522)
    """

    backend = "flax"

    def __init__(self, module: GraphModule, params: dict[str, Any], config: FamilyConfig) -> None:
        self.module = module
        self.params = params
        self.config = config
        self._jitted = jax.jit(self._apply_arrays, static_argnames=("plan", "block_sparse_seed", "cache_length"))
        # Generation steps: the cache is donated, so each step updates it in place instead of copying it.
        self._jitted_step = jax.jit(
            self._step, static_argnames=("use_cache", "cache_length"), donate_argnames=("cache",)
        )

    @property
    def graph(self) -> n.ModelGraph:
        return self.module.graph

    @property
    def task(self) -> str:
        return self.graph.task

    def __call__(self, **inputs: Any) -> ModelOutput:
        """Run the jitted model on ``self.params``; the keywords are :meth:`apply`'s."""
        return self.apply(self.params, _jit=True, **inputs)

    def apply(
        self,
        params: Mapping[str, Any],
        input_ids: Any = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        position_ids: Any = None,
        head_mask: Any = None,
        inputs_embeds: Any = None,
        encoder_hidden_states: Any = None,
        encoder_attention_mask: Any = None,
        past_key_values: FlaxCache | None = None,
        use_cache: bool | None = None,
        cache_length: int | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        train: bool = False,
        dropout_rng: Array | None = None,
        block_sparse_seed: int = 0,
        _jit: bool = False,
        **labels: Any,
    ) -> ModelOutput:
        """The forward pass on explicit ``params`` (differentiable; traced, not jitted, unless called
        through ``__call__``). ``train=True`` enables dropout and needs ``dropout_rng``;
        ``block_sparse_seed`` seeds block-sparse random blocks in training (same blocks as torch). Label
        keyword arguments are the task's (``labels``, ``start_positions``...), plus its extra inputs.

        Decoders (causal self-attention) also take, as HF PyTorch's:

        - ``encoder_hidden_states`` (B, Se, H) and ``encoder_attention_mask`` (B, Se) for cross-attention;
        - ``use_cache``: return ``past_key_values``, a :class:`FlaxCache` (unset: the config's ``use_cache``,
          off when labels are given). A cache started by this call has ``cache_length`` slots (default: the
          position table size, the longest sequence the model can take); it is fixed, so later steps
          reuse one compiled program;
        - ``past_key_values``: continue from such a cache. ``attention_mask`` covers the cached and new
          positions, (B, cached + S) as in torch, or the whole cache (B, max_length); positions default to
          ``cached .. cached + S - 1``; cached cross-attention keys/values are reused. Attention maps then
          span the cache's ``max_length`` slots (unwritten ones have probability 0).
        """
        graph = self.graph
        check_input_names(graph, labels)
        if train and dropout_rng is None:
            raise ValueError("train=True needs dropout_rng=jax.random.key(...)")
        use_cache = resolve_use_cache(graph, use_cache, past_key_values is not None, bool(labels))
        cache = check_cache(graph.backbone.encoder, past_key_values)
        raw = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
            "head_mask": head_mask,
            "encoder_hidden_states": encoder_hidden_states,
            "encoder_attention_mask": encoder_attention_mask,
            **{k: labels.pop(k) for k in graph.extra_inputs() if k in labels},
        }
        raw = {k: as_array(v) for k, v in raw.items()}
        labels = {k: as_array(v) for k, v in labels.items()}
        rows = input_rows(*(None if x is None else x.shape for x in (raw["input_ids"], raw["inputs_embeds"])))
        raw["attention_mask"], cache_length = cache_window(
            graph, raw["attention_mask"], rows, cache, use_cache, cache_length
        )
        past = None if cache is None else int(cache.length)
        plan = self._plan(raw, labels, cache, use_cache, train, output_attentions, output_hidden_states, past)
        check_values(graph, value_ranges({**raw, **labels}, host_range), plan.num_choices)
        arrays = {k: ints(v) if k in INT_INPUTS else None if v is None else jnp.asarray(v) for k, v in raw.items()}
        fn = self._jitted if _jit else self._apply_arrays
        labels = {k: jnp.asarray(v) for k, v in labels.items()}
        return ModelOutput(fn(params, arrays, labels, dropout_rng, cache, plan, block_sparse_seed, cache_length))

    def _plan(
        self,
        arrays: Mapping[str, Array | None],
        labels: Mapping[str, Array],
        cache: FlaxCache | None,
        use_cache: bool,
        training: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        past_length: int | None = None,
    ) -> CallPlan:
        return plan_call(
            self.graph,
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

    def _apply_arrays(
        self,
        params: Mapping[str, Any],
        arrays: dict[str, Array | None],
        labels: dict[str, Array],
        dropout_rng: Array | None,
        cache: FlaxCache | None,
        plan: CallPlan,
        block_sparse_seed: int = 0,
        cache_length: int = 0,
    ) -> dict[str, Any]:
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        out = self.module.apply({"params": params}, arrays, plan, labels, cache, block_sparse_seed, rngs=rngs)
        if plan.use_cache:
            out["past_key_values"] = updated_cache(out["past_key_values"], cache, plan.full_length, cache_length)
        return out

    def _step(
        self,
        params: Mapping[str, Any],
        arrays: dict[str, Array | None],
        cache: FlaxCache | None,
        column: Array,
        use_cache: bool,
        cache_length: int,
    ) -> tuple[Array, FlaxCache | None]:
        """One generation call: the logits at ``column`` (B, V) and the updated cache (see ``generate``)."""
        plan = self._plan(arrays, {}, cache, use_cache)
        out = self._apply_arrays(params, arrays, {}, None, cache, plan, cache_length=cache_length)
        logits = jax.lax.dynamic_index_in_dim(out["logits"], column, axis=1, keepdims=False)
        return logits, out.get("past_key_values")
