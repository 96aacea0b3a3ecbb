"""Compile a layer graph into a ``flax.linen`` module whose params tree is HF Flax's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from ...core import nodes as n
from ...core.config import FamilyConfig
from ...core.outputs import ModelOutput, finish
from ..methods import PretrainedMethods
from .cache import FlaxCache
from .module import GraphModule
from .program import ModelSpec, forward, prepare, run

Array = jax.Array


class FlaxModel(PretrainedMethods):
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
        self.spec = ModelSpec(module.graph, config, module.dtype)

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
        return_dict: bool = True,
        _jit: bool = False,
        **labels: Any,
    ) -> ModelOutput | tuple[Any, ...]:
        """The forward pass on explicit ``params`` (differentiable; traced, not jitted, unless called
        through ``__call__``). ``train=True`` enables dropout and needs ``dropout_rng``;
        ``block_sparse_seed`` seeds block-sparse random blocks in training (same blocks as torch). Label
        keyword arguments are the task's (``labels``, ``start_positions``...), plus its extra inputs;
        ``return_dict=False`` returns the output's ``to_tuple()``, as HF's models do.

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
        if train and dropout_rng is None:
            raise ValueError("train=True needs dropout_rng=jax.random.key(...)")
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
            "head_mask": head_mask,
            "encoder_hidden_states": encoder_hidden_states,
            "encoder_attention_mask": encoder_attention_mask,
        }
        flags = (train, output_attentions, output_hidden_states)
        call = prepare(self.graph, inputs, labels, past_key_values, use_cache, cache_length, *flags)
        out = (forward if _jit else run)(
            params,
            call.arrays,
            call.labels,
            dropout_rng,
            call.cache,
            model=self.spec,
            plan=call.plan,
            block_sparse_seed=block_sparse_seed,
            cache_length=call.cache_length,
        )
        return finish(out, return_dict)
