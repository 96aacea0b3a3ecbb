"""Dense self-attention over long inputs in query chunks: the same rows, a fraction of the memory.

XLA on the CPU materialises the (B, h, S, S) scores of a dense attention: 3.2 GB at 12 heads and 8192
positions, and as much again for the softmax. In chunks the scores stay small, which is also faster: a
forward 768 wide with 12 heads at 2048 positions took 1.27 s instead of 1.38 s, 529 MB above the model
instead of 1197 (``tandem.tools.bench_local``). Each query row's scores, softmax and weighted values depend
on that row alone, so the rows can run in chunks of :data:`QUERY_CHUNK` queries, one after another
(``jax.lax.map``), with the same numbers up to GEMM rounding. It runs in evaluation, for calls of at least
:data:`MIN_LENGTH` positions that ask for no attention maps, no head mask and no cache.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ...core import nodes as n

Array = jax.Array
MIN_LENGTH = 1024
QUERY_CHUNK = 512


def chunked_attention(
    node: n.Attention,
    q: Array,
    k: Array,
    v: Array,
    mask: Array,
    head_mask: Array | None,
    offset: Array | None,
    ctx: Any,
) -> Array | None:
    """Non-causal full self-attention of a long call, (B, S, h * d), in query chunks; None when the call is
    not one (another variant, training, attention maps, a head mask, a cache, a short input)."""
    b, h, s, d = q.shape
    variant = node.variant
    if not isinstance(variant, n.FullAttention) or variant.causal or head_mask is not None or offset is not None:
        return None
    if not ctx.deterministic or ctx.output_attentions or s < MIN_LENGTH or k.shape[2] != s:
        return None
    from .nodes import mask_bias  # the module that dispatches here: imported at call time

    bias = mask_bias(node, mask, 1, ctx.dtype)  # (B, 1, 1, S): the keys' additive mask
    chunks = -(-s // QUERY_CHUNK)
    qc = jnp.pad(q, ((0, 0), (0, 0), (0, chunks * QUERY_CHUNK - s), (0, 0)))
    qc = qc.reshape(b, h, chunks, QUERY_CHUNK, d).transpose(2, 0, 1, 3, 4)  # (chunks, B, h, c, d)
    divisor = jnp.asarray(node.score_divisor, ctx.dtype)

    def rows(qi: Array) -> Array:
        scores = jnp.matmul(qi, k.transpose(0, 1, 3, 2)) / divisor + bias
        return jnp.matmul(jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(scores.dtype), v)

    context = jax.lax.map(rows, qc).transpose(1, 2, 0, 3, 4).reshape(b, h, chunks * QUERY_CHUNK, d)[:, :, :s]
    return context.transpose(0, 2, 1, 3).reshape(b, s, h * d)
