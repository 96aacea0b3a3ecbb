"""Compile a layer graph into a ``flax.nnx`` module whose ``nnx.Param`` state is HF Flax's params tree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from ...core import nodes as n
from ...core.config import FamilyConfig
from ...core.outputs import ModelOutput, finish
from ..flax.cache import FlaxCache
from ..flax.program import ModelSpec, forward, prepare
from ..methods import PretrainedMethods


class Scope(nnx.Module):
    """A plain container: one segment of an HF module path (``encoder``, ``layer``, ``0``...)."""


def _gather(scope: nnx.Module) -> dict[str, Any]:
    """The values of the Params under ``scope`` as a nested dict (walking attributes directly: ``nnx.state``
    would take ~30 ms per call of a 110M-parameter model)."""
    tree: dict[str, Any] = {}
    for name, value in vars(scope).items():
        if isinstance(value, Scope):
            tree[name] = _gather(value)
        elif isinstance(value, nnx.Param):
            tree[name] = value.get_value()
    return tree


def _attach(scope: nnx.Module, tree: Mapping[str, Any]) -> None:
    """Create ``tree`` under ``scope``: a :class:`Scope` per nested dict, an ``nnx.Param`` per array."""
    for name, value in tree.items():
        if isinstance(value, Mapping):
            setattr(scope, name, Scope())
            _attach(getattr(scope, name), value)
        else:
            setattr(scope, name, nnx.Param(jnp.asarray(value)))


class NnxModel(nnx.Module, PretrainedMethods):
    """A compiled graph as an ``nnx.Module``. Call it with keyword arrays; it returns a :class:`ModelOutput`.

    Its submodules follow the graph's HF paths and hold ``nnx.Param``s (in the model's ``dtype``) with HF
    Flax's names and layouts, so ``nnx.state(model, nnx.Param)`` is an HF Flax params tree (the linen backend's
    ``params``). A parameter the graph shares (a layer group run by several steps of the encoder
    schedule) is declared once, so it is one ``Param`` and is counted once. The call runs the graph's call
    plan through the linen backend's program on those parameters (:func:`~tandem.backends.flax.program.
    forward`: compiled once per plan, and shared with a linen model of the same graph); inside
    ``nnx.jit``/``nnx.grad`` it is traced into the caller's program.

    Dropout follows NNX's convention: ``model.train()`` / ``model.eval()`` set ``deterministic``
    (:func:`tandem.build` and :func:`tandem.from_pretrained` return it in eval mode), and training calls draw
    their keys from the ``dropout`` stream of ``model.rngs``.

    Example:
        >>> model = tandem.build(config, task="masked_lm", backend="nnx", seed=0)
        >>> step = nnx.jit(lambda model, ids: model(input_ids=ids).logits)
        >>> step(model, jnp.array([[101, 2023, 102]])).shape
        (1, 3, 30522)
    """

    backend = "nnx"

    def __init__(
        self, graph: n.ModelGraph, config: FamilyConfig, params: Mapping[str, Any], dtype: Any, rngs: nnx.Rngs
    ) -> None:
        clashes = sorted(set(params) & set(dir(type(self))))
        if clashes:
            raise ValueError(f"top-level parameter scopes {clashes} clash with {type(self).__name__} attributes")
        self.spec = ModelSpec(graph, config, dtype)
        self.deterministic = True
        self.rngs = rngs
        _attach(self, params)

    @property
    def graph(self) -> n.ModelGraph:
        return self.spec.graph

    @property
    def config(self) -> FamilyConfig:
        return self.spec.config

    @property
    def task(self) -> str:
        return self.graph.task

    @property
    def params(self) -> dict[str, Any]:
        """The current ``nnx.Param`` values as a nested HF Flax params tree (the linen backend's ``params``;
        ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` holds the same)."""
        return _gather(self)

    def __call__(
        self,
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
        block_sparse_seed: int = 0,
        return_dict: bool = True,
        **labels: Any,
    ) -> ModelOutput | tuple[Any, ...]:
        """Run the model; the keywords are the linen backend's (:meth:`FlaxModel.apply
        <tandem.backends.flax.model.FlaxModel.apply>`) less ``train``/``dropout_rng``, which the module's
        mode and ``rngs`` replace. Label keyword arguments are the task's, plus its extra inputs;
        ``return_dict=False`` returns the output's ``to_tuple()``, as HF's models do.

        Decoders take ``encoder_hidden_states``/``encoder_attention_mask``, ``use_cache`` (returns a
        fixed-size :class:`FlaxCache` of ``cache_length`` slots) and ``past_key_values`` (continue from one;
        its filled length must be concrete, so call with a cache outside ``nnx.jit``).
        """
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
        training = not self.deterministic
        flags = (training, output_attentions, output_hidden_states)
        call = prepare(self.graph, inputs, labels, past_key_values, use_cache, cache_length, *flags)
        out = forward(
            self.params,
            call.arrays,
            call.labels,
            self.rngs.dropout() if training else None,
            call.cache,
            model=self.spec,
            plan=call.plan,
            block_sparse_seed=block_sparse_seed,
            cache_length=call.cache_length,
        )
        return finish(out, return_dict)
