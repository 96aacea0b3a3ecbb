"""One JAX implementation per node kind, as functions over the nested HF Flax params tree.

Numerics follow HF PyTorch: scores are divided after the Q.K product, LayerNorm uses a two-pass variance,
masks are additive ``(1 - m) * fill``. Nothing here knows a model family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp

from ...core import nodes as n
from ...core.block_sparse import random_blocks
from ...core.call import CrossInputs, EncoderOutput, HeadInputs, LayerOutput, lookup
from .basics import ACTIVATIONS, Context, conv1x1, dropout, layer_norm, linear, rowwise
from .block_sparse import block_sparse_attention
from .glu import glu
from .local_attention import banded_attention, window_bias
from .long_attention import chunked_attention
from .losses import LOSSES
from .pooling import sentence_pooling
from .prediction import prediction_head
from .rotary import project_part, rotate

Array = jax.Array


def project(node: n.Projection, path: str, x: Array, ctx: Context) -> Array:
    """A position-wise projection of any registered kind (dense, grouped 1x1 convolution)."""
    return lookup(IMPLS, "flax", node, path)(node, path, x, ctx)


def embeddings(
    node: n.Embeddings,
    path: str,
    input_ids: Array | None,
    token_type_ids: Array,
    position_ids: Array,
    inputs_embeds: Array | None,
    ctx: Context,
) -> Array:
    def lookup(table: n.Embed, ids: Array) -> Array:
        weights = ctx.get(n.join(path, table.path))["embedding"]  # a sinusoidal one is fixed: HF's requires_grad=False
        fixed = jax.lax.stop_gradient(weights) if table.table == "sinusoidal" else weights
        out = ctx.cast(jnp.take(fixed, ids, axis=0))
        if table.padding_idx is None:
            return out
        # The padding row gets no gradient from lookups, as HF PyTorch's nn.Embedding(padding_idx).
        return jnp.where((ids == table.padding_idx)[..., None], jax.lax.stop_gradient(out), out)

    word = ctx.cast(inputs_embeds) if inputs_embeds is not None else lookup(node.word, input_ids)
    ctx.positions = position_ids  # read by rotary attention
    if node.word_scale is not None:
        word = word * node.word_scale
    terms = {
        "word": lambda: word,
        "token_type": lambda: lookup(node.token_type, token_type_ids),
        "position": lambda: lookup(node.position, position_ids),
    }
    out = terms[node.sum_order[0]]()
    for name in node.sum_order[1:]:
        out = out + terms[name]()
    if node.projection is not None:  # to the model width, before the norm
        out = project(node.projection, n.join(path, node.projection.path), out, ctx)
    norm_path = n.join(path, node.norm.path)
    if node.dropout_before_norm:
        return layer_norm(node.norm, norm_path, dropout(out, node.dropout, ctx), ctx)
    return dropout(layer_norm(node.norm, norm_path, out, ctx), node.dropout, ctx)


def mask_bias(node: n.Attention, mask: Array, query_len: int, dtype: Any, offset: Array | None = None) -> Array:
    """Additive bias (B, 1, 1|Sq, Sk) from a (B, Sk) mask: ``(1 - m) * fill``, as HF PyTorch.

    ``offset`` (a fixed-size cache of ``Sk`` slots): the queries sit at positions ``offset .. offset + Sq - 1``.
    Slots from ``offset + Sq`` on hold nothing yet and get ``-inf`` (probability exactly 0), so every row
    sees the keys HF PyTorch's growing cache holds, with the same ``(1 - m) * fill`` rule on them.
    """
    m = mask[:, None, None, :].astype(dtype)
    key_len = mask.shape[-1]
    start = key_len - query_len if offset is None else offset
    if node.causal:
        rows = jnp.arange(query_len)[:, None] + start
        m = m * (jnp.arange(key_len)[None, :] <= rows).astype(dtype)[None, None]
    fill = jnp.finfo(dtype).min if node.mask_fill == "dtype_min" else node.mask_fill
    bias = window_bias(node, (1.0 - m) * jnp.asarray(fill, dtype), query_len)
    if offset is None:
        return bias
    filled = jnp.arange(key_len) < offset + query_len
    return jnp.where(filled[None, None, None, :], bias, jnp.asarray(-jnp.inf, dtype))


def _heads(node: n.Attention, part: str, path: str, x: Array, ctx: Context) -> Array:
    """(B, S, H) -> the projection ``part`` (query, key, value), split into heads (B, h, S, d), rotated."""
    y = project_part(node, part, path, x, ctx, project)
    y = y.reshape(x.shape[0], x.shape[1], node.num_heads, node.head_dim).transpose(0, 2, 1, 3)
    return rotate(node, part, y, ctx.positions)


def keys_values(node: n.Attention, path: str, states: Array, ctx: Context) -> tuple[Array, Array]:
    """The keys and values (B, h, S, d) that ``states`` (B, S, H) give."""
    return _heads(node, "key", path, states, ctx), _heads(node, "value", path, states, ctx)


def attention(
    node: n.Attention,
    path: str,
    x: Array,
    mask: Array,
    head_mask: Array | None,
    ctx: Context,
    kv: tuple[Array, Array] | None = None,
    offset: Array | None = None,
) -> tuple[Array, Array | None]:
    """Queries from ``x`` attend to ``kv`` (default: the keys and values of ``x``); ``mask`` (B, Sk) covers
    the keys. ``offset``: ``kv`` is a fixed-size cache whose first ``offset`` slots were filled before
    this call (see :func:`mask_bias`)."""
    b, s, _ = x.shape
    h, d = node.num_heads, node.head_dim
    q = _heads(node, "query", path, x, ctx)
    k, v = kv if kv is not None else keys_values(node, path, x, ctx)
    variant = node.variant
    for fast_path in (banded_attention, chunked_attention):  # long inputs: the same rows, less memory
        if (fast := fast_path(node, q, k, v, mask, head_mask, offset, ctx)) is not None:
            return fast, None
    if isinstance(variant, n.BlockSparseAttention) and ctx.block_sparse:
        plan = random_blocks(
            s // variant.block_size,
            h,
            variant.num_random_blocks,
            not ctx.deterministic,
            ctx.block_sparse_seed,
            variant.layer,
        )
        context, probs = block_sparse_attention(
            q, k, v, mask, plan, variant.block_size, 1.0 / node.score_divisor, variant.penalty, ctx.output_attentions
        )
        return context.transpose(0, 2, 1, 3).reshape(b, s, h * d), probs
    scores = jnp.matmul(q, k.transpose(0, 1, 3, 2)) / jnp.asarray(node.score_divisor, ctx.dtype)
    scores = scores + mask_bias(node, mask, s, ctx.dtype, offset)  # (B, h, S, Sk)
    # In float32 and rounded once, as torch's softmax kernel computes a bfloat16/float16 input (HF: no upcast).
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(scores.dtype)
    probs = dropout(probs, node.dropout, ctx)
    if head_mask is not None:
        probs = probs * head_mask
    context = jnp.matmul(probs, v).transpose(0, 2, 1, 3).reshape(b, s, h * d)
    if not ctx.output_attentions:
        return context, None
    return context, scores if node.returns == "scores" else probs


def add_norm(node: n.AddNorm, path: str, x: Array, residual: Array, ctx: Context) -> Array:
    y = dropout(project(node.dense, n.join(path, node.dense.path), x, ctx), node.dropout, ctx) + residual
    return y if node.norm is None else layer_norm(node.norm, n.join(path, node.norm.path), y, ctx)


def pre_norm(node: n.LayerNorm | None, path: str, x: Array, ctx: Context) -> Array:
    """A pre-LN sublayer's input: ``x`` normalised by the norm at ``path``'s child, or as is without one."""
    return x if node is None else layer_norm(node, n.join(path, node.path), x, ctx)


# One layer run's KV cache entry: its self-attention (key, value), then its cross-attention (key, value)
# when it ran one. Self-attention entries of a fixed-size cache are (B, heads, max_length, head_dim).
CacheEntry = tuple[Array, ...]


def transformer_layer(
    node: n.TransformerLayer,
    path: str,
    x: Array,
    mask: Array,
    head_mask: Array | None,
    ctx: Context,
    cross: CrossInputs | None = None,
    past: CacheEntry | None = None,
    index: Array | None = None,
) -> LayerOutput:
    """``past``: this run's fixed-size cache entry, whose first ``index`` slots are filled; the new
    self-attention keys/values are written from slot ``index`` on, and cached cross-attention keys/values
    are reused as they are (computed once per sequence)."""
    block = node.attention
    block_path = n.join(path, block.path)
    attn_path = n.join(block_path, block.attention.path)
    normed = pre_norm(block.norm, block_path, x, ctx)
    k, v = keys_values(block.attention, attn_path, normed, ctx)
    if past is not None:
        k = jax.lax.dynamic_update_slice(past[0], k.astype(past[0].dtype), (0, 0, index, 0))
        v = jax.lax.dynamic_update_slice(past[1], v.astype(past[1].dtype), (0, 0, index, 0))
    offset = None if past is None else index
    context, probs = attention(block.attention, attn_path, normed, mask, head_mask, ctx, kv=(k, v), offset=offset)
    x = add_norm(block.output, n.join(block_path, block.output.path), context, x, ctx)
    cache: CacheEntry = (k, v)
    cross_probs = None
    cached_cross = past[2:] if past is not None and len(past) == 4 else None
    block = node.crossattention
    if block is not None and cross is not None and (cached_cross or cross.states is not None):
        block_path = n.join(path, block.path)
        attn_path = n.join(block_path, block.attention.path)
        ck, cv = cached_cross or keys_values(block.attention, attn_path, cross.states, ctx)
        normed = pre_norm(block.norm, block_path, x, ctx)
        context, cross_probs = attention(block.attention, attn_path, normed, cross.mask, head_mask, ctx, kv=(ck, cv))
        x = add_norm(block.output, n.join(block_path, block.output.path), context, x, ctx)
        cache = (k, v, ck, cv)

    def feed_forward(x: Array) -> Array:
        normed = pre_norm(node.ffn_norm, path, x, ctx)
        inner = project(node.intermediate, n.join(path, node.intermediate.path), normed, ctx)
        inner = dropout(glu(node.gated, ACTIVATIONS[node.activation], inner), node.inner_dropout, ctx)
        return add_norm(node.output, n.join(path, node.output.path), inner, x, ctx)

    x = rowwise(feed_forward, x, node.intermediate.out_features, ctx)
    return LayerOutput(hidden=x, attention=probs, cross_attention=cross_probs, cache=cache)


def encoder(
    node: n.Encoder,
    path: str,
    x: Array,
    mask: Array,
    head_mask: Array | None,
    cross: CrossInputs | None,
    past: tuple[CacheEntry, ...] | None,
    ctx: Context,
) -> EncoderOutput:
    """Run the schedule. Consecutive steps that run the same layers (shared parameters) are one
    ``jax.lax.scan``, so compile time does not grow with the number of repeats; decoders (which keep a
    cache entry per run) run every step unrolled. ``past``: a fixed-size cache, one entry per layer run,
    whose first ``ctx.cache_index`` slots are filled."""
    if node.input_projection is not None:
        x = linear(node.input_projection, n.join(path, node.input_projection.path), x, ctx)
    out = EncoderOutput(hidden=x, hidden_states=[x] if ctx.output_hidden_states else [])
    scan = cross is None and past is None and not any(layer.attention.attention.causal for layer in node.layers)
    steps = list(zip(node.schedule, node.head_mask_index, strict=True))
    start = 0
    while start < len(steps):
        stop = start + 1
        while scan and stop < len(steps) and steps[stop][0] == steps[start][0]:
            stop += 1
        if stop - start == 1:
            layers, rows = steps[start]
            step_past = None if past is None else past[len(out.cache) : len(out.cache) + len(layers)]
            x, runs = _step(
                node,
                path,
                layers,
                x,
                mask,
                None if head_mask is None else head_mask[jnp.asarray(rows)],
                ctx,
                cross,
                step_past,
                ctx.cache_index,
            )
            out.cache.extend(run.cache for run in runs)
            states = [x]
            probs = [[run.attention for run in runs]]
            out.cross_attentions.extend(run.cross_attention for run in runs if run.cross_attention is not None)
        else:
            x, states, probs = _scan_steps(node, path, steps[start:stop], x, mask, head_mask, ctx)
        if ctx.output_hidden_states:
            out.hidden_states.extend(states)
        if ctx.output_attentions:
            out.attentions.extend(p for step_probs in probs for p in step_probs)
        start = stop
    out.hidden = x
    return out


def _step(
    node: n.Encoder,
    path: str,
    layers: tuple[int, ...],
    x: Array,
    mask: Array,
    head_mask_rows: Array | None,
    ctx: Context,
    cross: CrossInputs | None = None,
    past: tuple[CacheEntry, ...] | None = None,
    index: Array | None = None,
) -> tuple[Array, list[LayerOutput]]:
    runs = []
    for k, layer_index in enumerate(layers):
        layer = node.layers[layer_index]
        row = None if head_mask_rows is None else head_mask_rows[k]
        run = transformer_layer(
            layer, n.join(path, layer.path), x, mask, row, ctx, cross, None if past is None else past[k], index
        )
        x = run.hidden
        runs.append(run)
    return x, runs


def _scan_steps(
    node: n.Encoder,
    path: str,
    steps: list[tuple[tuple[int, ...], tuple[int, ...]]],
    x: Array,
    mask: Array,
    head_mask: Array | None,
    ctx: Context,
) -> tuple[Array, list[Array], list[list[Array]]]:
    layers = steps[0][0]
    rows = None if head_mask is None else head_mask[jnp.asarray([r for _, r in steps])]  # (n, inner, 1, h, 1, 1)
    run_key = None if ctx.deterministic else ctx.next_key()

    def body(carry: Array, xs: tuple[Array, Array | None]) -> tuple[Array, tuple[Array | None, tuple | None]]:
        index, step_rows = xs
        key = None if run_key is None else jax.random.fold_in(run_key, index)
        sub = replace(ctx, dropout_rng=key, _draws=0)
        out, runs = _step(node, path, layers, carry, mask, step_rows, sub)
        probs = tuple(run.attention for run in runs)
        return out, (out if ctx.output_hidden_states else None, probs if ctx.output_attentions else None)

    x, (states, probs) = jax.lax.scan(body, x, (jnp.arange(len(steps)), rows))
    n_steps = len(steps)
    state_list = [states[i] for i in range(n_steps)] if states is not None else []
    prob_lists = [[p[i] for p in probs] for i in range(n_steps)] if probs is not None else []
    return x, state_list, prob_lists


def pooler(node: n.Pooler, path: str, x: Array, ctx: Context) -> Array:
    return ACTIVATIONS[node.activation](linear(node.dense, n.join(path, node.dense.path), x[:, 0], ctx))


def lm_head(node: n.LMHead, path: str, inputs: HeadInputs, ctx: Context) -> Array:
    x = ACTIVATIONS[node.activation](linear(node.transform, n.join(path, node.transform.path), inputs.sequence, ctx))
    x = layer_norm(node.norm, n.join(path, node.norm.path), x, ctx)
    decoder = node.decoder
    bias = 0.0 if node.bias_path is None else ctx.cast(ctx.get(n.join(path, node.bias_path))["bias"])
    if decoder.tied_to is None:
        return jnp.matmul(x, ctx.cast(ctx.get(n.join(path, decoder.path))["kernel"])) + bias
    # Tied: contract with the (V, H) embedding directly; a transposed view would make XLA copy the table.
    embedding = ctx.cast(ctx.get(decoder.tied_to)["embedding"])
    return jnp.einsum("...h,vh->...v", x, embedding) + bias


def dense_head(node: n.DenseHead, path: str, inputs: HeadInputs, ctx: Context) -> Array:
    x = inputs.pooled if node.source == "pooled" else inputs.sequence
    return linear(node.dense, n.join(path, node.dense.path), dropout(x, node.dropout, ctx), ctx)


_POOL = {"first": lambda x: x[:, 0], "last": lambda x: x[:, -1], "mean": lambda x: jnp.mean(x, 1), "none": lambda x: x}


def classification_head(node: n.ClassificationHead, path: str, inputs: HeadInputs, ctx: Context) -> Array:
    first = node.dropout if node.input_dropout is None else node.input_dropout
    y = dropout(_POOL[node.pool](inputs.sequence), first, ctx)
    y = ACTIVATIONS[node.activation](linear(node.dense, n.join(path, node.dense.path), y, ctx))
    return linear(node.out_proj, n.join(path, node.out_proj.path), dropout(y, node.dropout, ctx), ctx)


def span_head(node: n.SpanHead, path: str, inputs: HeadInputs, ctx: Context) -> Array:
    x = inputs.sequence
    y = dropout(x, node.dropout, ctx)
    y = ACTIVATIONS[node.activation](linear(node.intermediate, n.join(path, node.intermediate.path), y, ctx))
    y = add_norm(node.output, n.join(path, node.output.path), y, x, ctx)
    logits = linear(node.qa_outputs, n.join(path, node.qa_outputs.path), y, ctx)
    if node.question_mask is None or inputs.question_mask is None:
        return logits
    return logits - inputs.question_mask[:, :, None].astype(logits.dtype) * node.question_mask.penalty


# The registry: node kind -> implementation, for every kind that is dispatched by its type (see core.call):
# what run_call calls, projections of either kind and loss terms. A composite's own parts (its LayerNorm,
# attention, layers) are called by its function directly.
IMPLS: dict[type, Callable[..., Any]] = {
    n.Linear: linear,
    n.GroupedConv1x1: conv1x1,
    n.Embeddings: embeddings,
    n.Encoder: encoder,
    n.LayerNorm: layer_norm,  # a backbone's final norm
    n.Pooler: pooler,
    n.LMHead: lm_head,
    n.DenseHead: dense_head,
    n.ClassificationHead: classification_head,
    n.SpanHead: span_head,
    n.SentencePooling: sentence_pooling,
    n.PredictionHead: prediction_head,
    **LOSSES,
}
