"""Relative-position encoders in JAX: disentangled attention over a shared relative-embedding table, the
convolution beside the first layer, the input multiplied by the mask.

The table rows each (query, key) pair reads come from ``tandem.core.relative`` (numpy, per length: constants
of the compiled program), so every backend gathers the same rows. Registered in the backend's ``IMPLS`` on
import (the package imports it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ...core import nodes as n
from ...core.call import CrossInputs, EncoderOutput, LayerOutput
from ...core.relative import gather_indices
from .glu import glu
from .nodes import ACTIVATIONS, IMPLS, Context, add_norm, dropout, layer_norm, project, rowwise
from .rotary import project_part

Array = jax.Array


def _split(node: n.Attention, y: Array) -> Array:
    """(B, S, H) -> (B, h, S, d)."""
    return y.reshape(y.shape[0], y.shape[1], node.num_heads, node.head_dim).transpose(0, 2, 1, 3)


def _proj(node: n.Attention, proj: n.Projection, path: str, x: Array, ctx: Context) -> Array:
    return _split(node, project(proj, n.join(path, proj.path), x, ctx))


def _gather(scores: Array, index: Array) -> Array:
    """``scores`` (B, h, S, 2 span) read at ``index`` (S, S) along the last axis: (B, h, S, S)."""
    return jnp.take_along_axis(scores, jnp.broadcast_to(index, (*scores.shape[:2], *index.shape)), axis=-1)


def _mix_heads(proj: n.Linear, path: str, x: Array, ctx: Context) -> Array:
    """Talking heads: (B, h, S, S) mixed over the heads axis by the (h, h) kernel at ``path``."""
    kernel = ctx.cast(ctx.get(n.join(path, proj.path))["kernel"])
    return jnp.matmul(x.transpose(0, 2, 3, 1), kernel).transpose(0, 3, 1, 2)


def disentangled_attention(
    node: n.Attention, path: str, x: Array, pairs: Array, table: Array | None, table_dropout: float, ctx: Context
) -> tuple[Array, Array]:
    """Content scores plus the relative-position terms, masked per (query, key) pair by ``pairs``
    (B, 1, S, S) bool, softmax, dropout. ``table``: the (2 span, H) relative embeddings, dropped out per
    layer with ``table_dropout``. Scaled where the variant says (``DisentangledAttention.scale``)."""
    variant = node.variant
    b, s, _ = x.shape
    q, k, v = (_split(node, project_part(node, part, path, x, ctx, project)) for part in ("query", "key", "value"))
    scale = jnp.asarray(node.score_divisor, ctx.dtype)
    on_queries = variant.scale == "queries"
    if on_queries:
        q = q / scale
        scores = jnp.matmul(q, k.transpose(0, 1, 3, 2))  # (B, h, S, S)
    else:
        scores = jnp.matmul(q, k.transpose(0, 1, 3, 2) / scale)
    if variant.relative:
        rel = dropout(table, table_dropout, ctx)[None]  # (1, 2 span, H)
        c2p_index, p2c_index = gather_indices(s, variant)
        bias = 0
        if variant.c2p:
            pos_key = _proj(node, node.key if variant.share_keys else node.pos_key, path, rel, ctx)  # (1, h, 2span, d)
            c2p = jnp.matmul(q, pos_key.transpose(0, 1, 3, 2))  # (B, h, S, 2 span)
            term = _gather(c2p, c2p_index)
            bias = bias + (term if on_queries else term / scale)
        if variant.p2c:
            pos_query = _proj(node, node.query if variant.share_keys else node.pos_query, path, rel, ctx)
            if on_queries:
                pos_query = pos_query / scale
            p2c = jnp.matmul(k, pos_query.transpose(0, 1, 3, 2))  # (B, h, S, 2 span): key j, distance j - i
            term = _gather(p2c, p2c_index).transpose(0, 1, 3, 2)
            bias = bias + (term if on_queries else term / scale)
        scores = scores + bias
    if node.head_logits is not None:
        scores = _mix_heads(node.head_logits, path, scores, ctx)
    scores = jnp.where(pairs, scores, jnp.finfo(scores.dtype).min)
    probs = dropout(jax.nn.softmax(scores, axis=-1), node.dropout, ctx)
    if node.head_weights is not None:
        probs = _mix_heads(node.head_weights, path, probs, ctx)
    context = jnp.matmul(probs, v).transpose(0, 2, 1, 3).reshape(b, s, node.num_heads * node.head_dim)
    return context, probs


def relative_layer(
    node: n.TransformerLayer,
    path: str,
    x: Array,
    pairs: Array,
    table: Array | None,
    table_dropout: float,
    ctx: Context,
) -> LayerOutput:
    block = node.attention
    block_path = n.join(path, block.path)
    attn = block.attention
    context, probs = disentangled_attention(attn, n.join(block_path, attn.path), x, pairs, table, table_dropout, ctx)
    x = add_norm(block.output, n.join(block_path, block.output.path), context, x, ctx)

    def feed_forward(x: Array) -> Array:
        inner = project(node.intermediate, n.join(path, node.intermediate.path), x, ctx)
        inner = dropout(glu(node.gated, ACTIVATIONS[node.activation], inner), node.inner_dropout, ctx)
        return add_norm(node.output, n.join(path, node.output.path), inner, x, ctx)

    x = rowwise(feed_forward, x, node.intermediate.out_features, ctx)
    return LayerOutput(hidden=x, attention=probs, cross_attention=None, cache=())


def conv_layer(node: n.ConvLayer, path: str, x: Array, residual: Array, mask: Array, ctx: Context) -> Array:
    """``norm(residual + act(dropout(conv(x) * m))) * m`` with ``m`` the (B, S) mask."""
    conv = node.conv
    p = ctx.get(n.join(path, conv.path))
    pad = (conv.kernel_size - 1) // 2
    out = jax.lax.conv_general_dilated(
        x,
        ctx.cast(p["kernel"]),  # (k, in/groups, out)
        window_strides=(1,),
        padding=[(pad, pad)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=conv.groups,
    )
    out = out + ctx.cast(p["bias"])
    out = jnp.where((mask == 0)[:, :, None], jnp.zeros_like(out), out)
    out = ACTIVATIONS[node.activation](dropout(out, node.dropout, ctx))
    out = layer_norm(node.norm, n.join(path, node.norm.path), residual + out, ctx)
    return out * mask[:, :, None].astype(out.dtype)


def relative_encoder(
    node: n.RelativeEncoder,
    path: str,
    x: Array,
    mask: Array,
    head_mask: Array | None,
    cross: CrossInputs | None,
    past: tuple | None,
    ctx: Context,
) -> EncoderOutput:
    """Mask the input, normalise the relative table once, run the layers (the conv beside the first)."""
    if node.mask_input:
        x = x * mask[:, :, None].astype(x.dtype)
    out = EncoderOutput(hidden=x, hidden_states=[x] if ctx.output_hidden_states else [])
    table = None
    if node.rel_embeddings is not None:
        table = ctx.cast(ctx.get(n.join(path, node.rel_embeddings.path))["embedding"])
        if node.norm is not None:
            table = layer_norm(node.norm, n.join(path, node.norm.path), table, ctx)
    keep = mask != 0
    pairs = (keep[:, None, :] & keep[:, :, None])[:, None]  # (B, 1, S, S): query and key both kept
    first = x
    for i, layer in enumerate(node.layers):
        run = relative_layer(layer, n.join(path, layer.path), x, pairs, table, node.dropout, ctx)
        x = run.hidden
        if i == 0 and node.conv is not None:
            x = conv_layer(node.conv, n.join(path, node.conv.path), first, x, mask, ctx)
        if ctx.output_attentions:
            out.attentions.append(run.attention)
        if ctx.output_hidden_states:
            out.hidden_states.append(x)
    out.hidden = x
    return out


IMPLS[n.RelativeEncoder] = relative_encoder
