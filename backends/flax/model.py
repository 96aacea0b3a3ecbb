"""Compile a layer graph into a ``flax.linen`` module whose params tree is HF Flax's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...core import nodes as n
from ...core.config import FamilyConfig
from ...core.outputs import ModelOutput
from ...core.params import ParamEntry, param_entries, to_flax_tree
from . import nodes as ops

Array = jax.Array


def _init_value(entry: ParamEntry, key: Array) -> Array:
    spec = entry.spec
    if isinstance(spec.init, n.NormalInit):
        value = jax.random.normal(key, spec.shape, jnp.float32) * spec.init.std
        if spec.zero_row is not None:
            value = value.at[spec.zero_row].set(0.0)
    elif isinstance(spec.init, n.OnesInit):
        value = jnp.ones(spec.shape, jnp.float32)
    else:
        value = jnp.zeros(spec.shape, jnp.float32)
    return jnp.transpose(value, perm) if (perm := _permutation(entry)) is not None else value


def _permutation(entry: ParamEntry) -> tuple[int, ...] | None:
    rule = type(entry.node).flax_rules.get(entry.spec.name)
    return rule.permutation if rule is not None else None


def _init_subtree(key: Array, entries: list[ParamEntry]) -> dict[str, Any]:
    """A fresh params subtree for ``entries`` (all under one top-level name), HF's init scheme."""
    tree: dict[str, Any] = {}
    for i, entry in enumerate(entries):
        node = tree
        for part in entry.flax_path[1:-1]:
            node = node.setdefault(part, {})
        node[entry.flax_path[-1]] = _init_value(entry, jax.random.fold_in(key, i))
    return tree


def run_graph(
    graph: n.ModelGraph,
    ctx: ops.Context,
    inputs: Mapping[str, Array | None],
    head_mask: Array | None,
    question_lengths: Array | None = None,
) -> dict[str, Any]:
    """The forward pass of a whole graph: backbone, heads, exposed outputs (no loss)."""
    backbone = graph.backbone
    ids, embeds = inputs["input_ids"], inputs["inputs_embeds"]
    batch, length = ids.shape if ids is not None else embeds.shape[:2]
    mask = inputs["attention_mask"]
    if mask is None:
        mask = jnp.ones((batch, length), jnp.int32)
    token_type_ids = inputs["token_type_ids"]
    position_ids = inputs["position_ids"]
    logits_mask = _question_mask(graph, ids, question_lengths, length)
    if token_type_ids is None:
        # A masked span head makes everything after the question segment 1 (HF's BigBird QA).
        token_type_ids = jnp.zeros((batch, length), jnp.int32) if logits_mask is None else 1 - logits_mask
    if logits_mask is not None:
        logits_mask = logits_mask.at[:, 0].set(0)
    path = backbone.path
    emb = backbone.embeddings
    emb_path = n.join(path, emb.path)
    policy = backbone.block_sparse
    ctx.block_sparse = policy is not None and length > policy.min_length
    if ctx.block_sparse:
        pad = (-length) % policy.block_size
        if pad:
            mask = jnp.pad(mask, ((0, 0), (0, pad)))
            token_type_ids = jnp.pad(token_type_ids, ((0, 0), (0, pad)))
            if position_ids is not None:
                position_ids = jnp.pad(position_ids, ((0, 0), (0, pad)), constant_values=policy.pad_token_id)
            if ids is not None:
                ids = jnp.pad(ids, ((0, 0), (0, pad)), constant_values=policy.pad_token_id)
            else:
                # HF PyTorch pads given embeddings with the embedding-module output of pad tokens.
                pad_ids = jnp.full((batch, pad), policy.pad_token_id, jnp.int32)
                positions = jnp.broadcast_to(jnp.arange(pad, dtype=jnp.int32)[None], (batch, pad))
                pad_rows = ops.embeddings(emb, emb_path, pad_ids, jnp.zeros_like(pad_ids), positions, None, ctx)
                embeds = jnp.concatenate([ctx.cast(embeds), pad_rows], axis=1)
    full_length = mask.shape[1]
    if position_ids is None:
        position_ids = jnp.broadcast_to(jnp.arange(full_length, dtype=jnp.int32)[None], (batch, full_length))
    x = ops.embeddings(emb, emb_path, ids, token_type_ids, position_ids, embeds, ctx)
    enc = backbone.encoder
    x, hidden_states, attentions = ops.encoder(enc, n.join(path, enc.path), x, mask, head_mask, ctx)
    pooled = None
    if backbone.pooler is not None:
        pooled = ops.pooler(backbone.pooler, n.join(path, backbone.pooler.path), x, ctx)
    x = x[:, :length]  # cut block-sparse padding; hidden states and attentions keep it, as in HF
    out: dict[str, Any] = {}
    for head in graph.heads:
        if isinstance(head, n.LMHead):
            out[head.output] = ops.lm_head(head, head.path, x, ctx)
            continue
        if isinstance(head, n.ClassificationHead):
            out[head.output] = ops.classification_head(head, head.path, x, ctx)
            continue
        if isinstance(head, n.SpanHead):
            logits = ops.span_head(head, head.path, x, ctx)
            if logits_mask is not None:
                logits = logits - logits_mask[:, :, None].astype(logits.dtype) * head.question_mask.penalty
        else:
            logits = ops.dense_head(head, head.path, pooled if head.source == "pooled" else x, ctx)
        if head.split is None:
            out[head.output] = logits
        else:
            for name, part in zip(head.split, jnp.split(logits, len(head.split), axis=-1), strict=True):
                out[name] = jnp.squeeze(part, -1)
    if "last_hidden_state" in graph.expose:
        out["last_hidden_state"] = x
    if "pooler_output" in graph.expose and pooled is not None:
        out["pooler_output"] = pooled
    if ctx.output_hidden_states:
        out["hidden_states"] = tuple(hidden_states)
    if ctx.output_attentions:
        out["attentions"] = tuple(attentions)
    return out


def _question_mask(graph: n.ModelGraph, ids: Array | None, question_lengths: Array | None, length: int) -> Array | None:
    """1 on question positions (before and at the first separator) for a masked span head, else None."""
    spec = next((h.question_mask for h in graph.heads if isinstance(h, n.SpanHead) and h.question_mask), None)
    if spec is None:
        return None
    if question_lengths is None:
        if ids is None:
            return None
        question_lengths = (jnp.argmax(ids == spec.sep_token_id, axis=-1) + 1)[:, None]
    positions = jnp.arange(length)[None, :]
    return (positions < question_lengths.reshape(-1, 1)).astype(jnp.int32)


class GraphModule(nn.Module):
    """A linen module computing a graph. Its params are declared per top-level HF name, each a nested
    dict, so ``init`` returns exactly HF Flax's tree (``bert/encoder/layer/0/attention/self/query/kernel``).
    Dropout draws from the ``dropout`` RNG stream when ``deterministic=False``.
    """

    graph: n.ModelGraph
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        inputs: Mapping[str, Array | None],
        head_mask: Array | None = None,
        deterministic: bool = True,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        question_lengths: Array | None = None,
        block_sparse_seed: int = 0,
    ) -> dict[str, Any]:
        groups: dict[str, list[ParamEntry]] = {}
        for entry in param_entries(self.graph):
            groups.setdefault(entry.flax_path[0], []).append(entry)
        params = {top: self.param(top, _init_subtree, entries) for top, entries in groups.items()}
        ctx = ops.Context(
            params=params,
            dtype=self.dtype,
            deterministic=deterministic,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            dropout_rng=None if deterministic else self.make_rng("dropout"),
            block_sparse_seed=block_sparse_seed,
        )
        return run_graph(self.graph, ctx, inputs, head_mask, question_lengths)


class FlaxModel:
    """A compiled graph in flax: ``.module`` (linen), ``.params`` (HF Flax tree), ``.config``, ``.graph``.

    Calling it runs a ``jax.jit``-compiled forward (compiled once per input shape and flag set) on
    ``self.params``; :meth:`apply` is the same computation on explicit params, for ``jax.grad``.

    Example:
        >>> model = tandem.build(tandem.BertConfig(num_hidden_layers=2), task="masked_lm", backend="flax")
        >>> model(input_ids=np.array([[101, 2023, 102]])).logits.shape
        (1, 3, 30522)
    """

    backend = "flax"

    def __init__(self, module: GraphModule, params: dict[str, Any], config: FamilyConfig) -> None:
        self.module = module
        self.params = params
        self.config = config
        self._jitted = jax.jit(
            self._apply_arrays,
            static_argnames=("train", "output_attentions", "output_hidden_states", "block_sparse_seed"),
        )

    @property
    def graph(self) -> n.ModelGraph:
        return self.module.graph

    @property
    def task(self) -> str:
        return self.graph.task

    def __call__(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        position_ids: Any = None,
        head_mask: Any = None,
        inputs_embeds: Any = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        train: bool = False,
        dropout_rng: Array | None = None,
        block_sparse_seed: int = 0,
        **labels: Any,
    ) -> ModelOutput:
        """Run the jitted model. ``train=True`` enables dropout and needs ``dropout_rng``;
        ``block_sparse_seed`` seeds block-sparse random blocks in training (same blocks as torch)."""
        return self.apply(
            self.params,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            train=train,
            dropout_rng=dropout_rng,
            block_sparse_seed=block_sparse_seed,
            _jit=True,
            **labels,
        )

    def apply(
        self,
        params: Mapping[str, Any],
        input_ids: Any = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        position_ids: Any = None,
        head_mask: Any = None,
        inputs_embeds: Any = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        train: bool = False,
        dropout_rng: Array | None = None,
        block_sparse_seed: int = 0,
        _jit: bool = False,
        **labels: Any,
    ) -> ModelOutput:
        """The forward pass on explicit ``params`` (differentiable; traced, not jitted, unless called
        through ``__call__``)."""
        graph = self.graph
        accepted = graph.label_names() + graph.extra_inputs()
        unknown = sorted(set(labels) - set(accepted))
        if unknown:
            raise TypeError(
                f"{graph.family} {graph.task} got unexpected keyword argument(s) {unknown}; it accepts {list(accepted)}"
            )
        extras = {k: _ints(labels.pop(k)) for k in graph.extra_inputs() if k in labels}
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if train and dropout_rng is None:
            raise ValueError("train=True needs dropout_rng=jax.random.key(...)")
        arrays = {
            "input_ids": _ints(input_ids),
            "attention_mask": None if attention_mask is None else jnp.asarray(attention_mask),
            "token_type_ids": _ints(token_type_ids),
            "position_ids": _ints(position_ids),
            "inputs_embeds": None if inputs_embeds is None else jnp.asarray(inputs_embeds),
            "head_mask": None if head_mask is None else jnp.asarray(head_mask),
            **extras,
        }
        label_arrays = {k: jnp.asarray(v) for k, v in labels.items()}
        fn = self._jitted if _jit else self._apply_arrays
        out = fn(
            params,
            arrays,
            label_arrays,
            dropout_rng,
            train=train,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            block_sparse_seed=block_sparse_seed,
        )
        result = ModelOutput()
        if "loss" in out:
            result["loss"] = out.pop("loss")
        result.update(out)
        return result

    def _apply_arrays(
        self,
        params: Mapping[str, Any],
        arrays: dict[str, Array | None],
        labels: dict[str, Array],
        dropout_rng: Array | None,
        train: bool,
        output_attentions: bool,
        output_hidden_states: bool,
        block_sparse_seed: int,
    ) -> dict[str, Any]:
        graph = self.graph
        inputs = dict(arrays)
        head_mask = inputs.pop("head_mask")
        question_lengths = inputs.pop("question_lengths", None)
        num_choices = None
        if graph.multiple_choice:
            reference = inputs["input_ids"] if inputs["input_ids"] is not None else inputs["inputs_embeds"][..., 0]
            if reference.ndim != 3:
                raise ValueError(f"multiple_choice inputs must be (batch, choices, length), got {reference.shape}")
            num_choices = reference.shape[1]
            inputs = {k: None if v is None else v.reshape(-1, *v.shape[2:]) for k, v in inputs.items()}
        out = self.module.apply(
            {"params": params},
            inputs,
            _head_mask(head_mask, graph.backbone.encoder, self.module.dtype),
            deterministic=not train,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            question_lengths=question_lengths,
            block_sparse_seed=block_sparse_seed,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        )
        if num_choices is not None:
            out["logits"] = out["logits"].reshape(-1, num_choices)
        terms = graph.loss_terms(labels)
        if terms:
            out["loss"] = sum(ops.loss(term, out, labels) for term in terms)
        return out


def _ints(value: Any) -> Array | None:
    return None if value is None else jnp.asarray(value).astype(jnp.int32)


def _head_mask(head_mask: Array | None, encoder: n.Encoder, dtype: Any) -> Array | None:
    """HF PyTorch's ``get_head_mask``: (heads,) or (rows, heads) -> (rows, 1, heads, 1, 1), float."""
    if head_mask is None:
        return None
    unsupported = [layer.path for layer in encoder.layers if not layer.attention.attention.supports_head_mask]
    if unsupported:
        raise ValueError(f"head_mask is not supported by this model (layers {', '.join(unsupported)}); pass None")
    if any(row is None for rows in encoder.head_mask_index for row in rows):
        raise ValueError("head_mask is not supported for this configuration: some layer runs have no head-mask row")
    heads = encoder.layers[0].attention.attention.num_heads
    rows = encoder.num_head_mask_rows
    if head_mask.ndim == 1:
        head_mask = jnp.broadcast_to(head_mask[None], (rows, head_mask.shape[0]))
    if head_mask.ndim != 2 or head_mask.shape != (rows, heads):
        raise ValueError(f"head_mask must be ({heads},) or ({rows}, {heads}), got {tuple(head_mask.shape)}")
    return head_mask[:, None, :, None, None].astype(dtype)


def create_params(graph: n.ModelGraph, weights: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Canonical weights -> the HF Flax params tree of jax arrays."""
    return jax.tree_util.tree_map(jnp.asarray, to_flax_tree(graph, weights))


__all__ = ["FlaxModel", "GraphModule", "create_params"]
