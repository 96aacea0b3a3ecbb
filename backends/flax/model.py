"""Compile a layer graph into a ``flax.linen`` module whose params tree is HF Flax's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...core import nodes as n
from ...core.config import FamilyConfig
from ...core.decoding import check_encoder_inputs, resolve_use_cache
from ...core.outputs import ModelOutput
from ...core.params import ParamEntry, param_entries, to_flax_tree
from . import nodes as ops
from .cache import FlaxCache

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


@dataclass
class Decoding:
    """A decoder call's extra inputs: encoder states for cross-attention, the fixed-size cache to continue
    from, and whether to return a cache (a fresh one has ``cache_length`` slots)."""

    encoder_states: Array | None = None
    encoder_mask: Array | None = None
    cache: FlaxCache | None = None
    use_cache: bool = False
    cache_length: int = 0


def run_graph(
    graph: n.ModelGraph,
    ctx: ops.Context,
    inputs: Mapping[str, Array | None],
    head_mask: Array | None,
    question_lengths: Array | None = None,
    decoding: Decoding | None = None,
) -> dict[str, Any]:
    """The forward pass of a whole graph: backbone, heads, exposed outputs (no loss).

    With ``decoding.cache`` the attention mask covers the cache's ``max_length`` slots and default positions
    continue from the cached length (HF PyTorch's rule)."""
    decoding = decoding or Decoding()
    cache = decoding.cache
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
        # A masked span head makes everything after the question segment 1 (as HF does for question answering).
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
    full_length = (ids if ids is not None else embeds).shape[1]
    if position_ids is None:
        start = 0 if cache is None else cache.length
        position_ids = jnp.broadcast_to(jnp.arange(full_length, dtype=jnp.int32)[None] + start, (batch, full_length))
    x = ops.embeddings(emb, emb_path, ids, token_type_ids, position_ids, embeds, ctx)
    enc = backbone.encoder
    encoded = ops.encoder(
        enc,
        n.join(path, enc.path),
        x,
        mask,
        head_mask,
        ctx,
        _cross_inputs(decoding),
        None if cache is None else cache.layers,
        None if cache is None else cache.length,
    )
    x = encoded.hidden
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
                out[name] = part[..., 0]
    if "last_hidden_state" in graph.expose:
        out["last_hidden_state"] = x
    if "pooler_output" in graph.expose and pooled is not None:
        out["pooler_output"] = pooled
    if decoding.use_cache:
        out["past_key_values"] = _updated_cache(encoded.cache, cache, full_length, decoding.cache_length)
    if ctx.output_hidden_states:
        out["hidden_states"] = tuple(encoded.hidden_states)
    if ctx.output_attentions:
        out["attentions"] = tuple(encoded.attentions)
        if encoded.cross_attentions:
            out["cross_attentions"] = tuple(encoded.cross_attentions)
    return out


def _cross_inputs(decoding: Decoding) -> ops.CrossInputs | None:
    """The encoder inputs of a call; with cross keys/values in the cache, the states are not needed."""
    cache = decoding.cache
    cached = cache is not None and len(cache.layers[0]) == 4
    states = decoding.encoder_states
    if states is None and not cached:
        return None
    mask = decoding.encoder_mask
    if mask is None:
        reference = states if states is not None else cache.layers[0][2]
        mask = jnp.ones((reference.shape[0], reference.shape[-2]), jnp.int32)
    return ops.CrossInputs(states=None if cached else states, mask=mask)


def _updated_cache(entries: list[ops.CacheEntry], cache: FlaxCache | None, length: int, cache_length: int) -> FlaxCache:
    """The cache after this call: the written entries, or a fresh ``cache_length``-slot cache holding them."""
    if cache is not None:
        return FlaxCache(layers=tuple(entries), length=cache.length + length)
    pad = ((0, 0), (0, 0), (0, cache_length - length), (0, 0))
    layers = tuple((jnp.pad(e[0], pad), jnp.pad(e[1], pad), *e[2:]) for e in entries)
    return FlaxCache(layers=layers, length=jnp.asarray(length, jnp.int32))


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
    dict, so ``init`` returns exactly HF Flax's tree (``<prefix>/encoder/layer/0/attention/self/query/kernel``).
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
        decoding: Decoding | None = None,
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
        return run_graph(self.graph, ctx, inputs, head_mask, question_lengths, decoding)


class FlaxModel:
    """A compiled graph in flax: ``.module`` (linen), ``.params`` (HF Flax tree), ``.config``, ``.graph``.

    Calling it runs a ``jax.jit``-compiled forward (compiled once per input shape and flag set) on
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
        self._jitted = jax.jit(
            self._apply_arrays,
            static_argnames=(
                "train",
                "output_attentions",
                "output_hidden_states",
                "block_sparse_seed",
                "use_cache",
                "cache_length",
            ),
        )
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
        train: bool = False,
        dropout_rng: Array | None = None,
        block_sparse_seed: int = 0,
        **labels: Any,
    ) -> ModelOutput:
        """Run the jitted model. ``train=True`` enables dropout and needs ``dropout_rng``;
        ``block_sparse_seed`` seeds block-sparse random blocks in training (same blocks as torch). The
        decoder arguments are described in :meth:`apply`."""
        return self.apply(
            self.params,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            cache_length=cache_length,
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
        through ``__call__``).

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
        use_cache = resolve_use_cache(graph, use_cache, past_key_values is not None, bool(labels))
        cache = _check_cache(graph.backbone.encoder, past_key_values)
        check_encoder_inputs(
            graph,
            encoder_hidden_states is not None,
            encoder_attention_mask is not None,
            cached=cache is not None and len(cache.layers[0]) == 4,
        )
        reference = input_ids if input_ids is not None else inputs_embeds
        batch, length = np.shape(reference)[0], np.shape(reference)[1]
        if cache is not None:
            attention_mask = _cache_window_mask(attention_mask, batch, int(cache.length), length, cache.max_length)
            cache_length = 0
        elif use_cache:
            cache_length = cache_length or graph.backbone.embeddings.position.num_embeddings
            if length > cache_length:
                raise ValueError(f"cache_length={cache_length} cannot hold the {length} positions of this call")
        else:
            cache_length = 0
        arrays = {
            "input_ids": _ints(input_ids),
            "attention_mask": None if attention_mask is None else jnp.asarray(attention_mask),
            "token_type_ids": _ints(token_type_ids),
            "position_ids": _ints(position_ids),
            "inputs_embeds": None if inputs_embeds is None else jnp.asarray(inputs_embeds),
            "head_mask": None if head_mask is None else jnp.asarray(head_mask),
            "encoder_hidden_states": None if encoder_hidden_states is None else jnp.asarray(encoder_hidden_states),
            "encoder_attention_mask": _ints(encoder_attention_mask),
            **extras,
        }
        label_arrays = {k: jnp.asarray(v) for k, v in labels.items()}
        fn = self._jitted if _jit else self._apply_arrays
        out = fn(
            params,
            arrays,
            label_arrays,
            dropout_rng,
            cache,
            train=train,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            block_sparse_seed=block_sparse_seed,
            use_cache=use_cache,
            cache_length=cache_length,
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
        cache: FlaxCache | None,
        train: bool,
        output_attentions: bool,
        output_hidden_states: bool,
        block_sparse_seed: int,
        use_cache: bool = False,
        cache_length: int = 0,
    ) -> dict[str, Any]:
        graph = self.graph
        inputs = dict(arrays)
        head_mask = inputs.pop("head_mask")
        question_lengths = inputs.pop("question_lengths", None)
        decoding = Decoding(
            encoder_states=inputs.pop("encoder_hidden_states", None),
            encoder_mask=inputs.pop("encoder_attention_mask", None),
            cache=cache,
            use_cache=use_cache,
            cache_length=cache_length,
        )
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
            decoding=decoding,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        )
        if num_choices is not None:
            out["logits"] = out["logits"].reshape(-1, num_choices)
        terms = graph.loss_terms(labels)
        if terms:
            out["loss"] = sum(ops.loss(term, out, labels) for term in terms)
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
        out = self._apply_arrays(
            params,
            arrays,
            {},
            None,
            cache,
            train=False,
            output_attentions=False,
            output_hidden_states=False,
            block_sparse_seed=0,
            use_cache=use_cache,
            cache_length=cache_length,
        )
        logits = jax.lax.dynamic_index_in_dim(out["logits"], column, axis=1, keepdims=False)
        return logits, out.get("past_key_values")


def _check_cache(encoder: n.Encoder, cache: Any) -> FlaxCache | None:
    """``cache`` when it fits the model, else a clear error."""
    if cache is None:
        return None
    runs = len(encoder.runs)
    if not isinstance(cache, FlaxCache) or len(cache.layers) != runs:
        got = f"a FlaxCache of {len(cache.layers)} entries" if isinstance(cache, FlaxCache) else type(cache).__name__
        raise ValueError(
            f"past_key_values must be a FlaxCache with {runs} entries (one per layer run), as returned by a call "
            f"with use_cache=True; got {got} (convert a torch cache with tandem.convert_cache)"
        )
    return cache


def _cache_window_mask(mask: Any, batch: int, filled: int, length: int, max_length: int) -> Array:
    """The (B, max_length) mask of a cached call: given for the ``filled + length`` positions (as torch
    takes it; padded with zeros) or for the whole window; default ones on those positions."""
    if filled + length > max_length:
        raise ValueError(
            f"the flax KV cache holds max_length={max_length} positions: {filled} are filled and {length} more "
            "do not fit; start the cache with a larger cache_length (or generate with fewer new tokens)"
        )
    if mask is None:
        row = (np.arange(max_length) < filled + length).astype(np.int32)
        return jnp.asarray(np.broadcast_to(row, (batch, max_length)))
    mask = jnp.asarray(mask).astype(jnp.int32)
    if mask.shape[-1] == filled + length:
        return jnp.pad(mask, ((0, 0), (0, max_length - filled - length)))
    if mask.shape[-1] != max_length:
        raise ValueError(
            f"attention_mask must cover the {filled} cached and {length} new positions (length {filled + length}) "
            f"or the cache's {max_length} slots, got shape {tuple(mask.shape)}"
        )
    return mask


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
