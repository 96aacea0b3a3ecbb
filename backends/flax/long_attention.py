"""Dense self-attention over long inputs, one head and one block of query rows at a time.

XLA on the CPU materialises the (B, h, S, S) scores of a dense attention: 3.2 GB at 12 heads and 8192
positions, and as much again for the softmax. Each query row's scores, softmax and weighted values depend on
that row alone, so the rows of one (batch row, head) pair can run in blocks of :data:`QUERY_CHUNK` queries,
one block after another (``jax.lax.map``): a block's scores, (QUERY_CHUNK, S) floats, stay in cache (8 MB at
8192 positions). The softmax is left unnormalised until after the weighted sum (its row sums divide the
(QUERY_CHUNK, d) context, not the (QUERY_CHUNK, S) weights), which saves a pass over the scores. The numbers
equal the dense computation's up to rounding (about 1e-7 in float32). One global layer, 12 heads of 64 at
8192 positions, on the 2-core development VM: 2.0 s, where query blocks of 512 rows over all heads at once
took 7.2 s and torch's fused SDPA kernel 2.5 s (``tandem.tools.bench_local`` measures the whole model).

On an accelerator, where one small step at a time would leave the device idle, ``b * h`` blocks run per
step (as the block-sparse kernel batches its pairs there); that layout has not been timed on a device.

It runs in evaluation, for calls of at least :data:`MIN_LENGTH` positions that ask for no attention maps,
no head mask and no cache.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ...core import nodes as n

Array = jax.Array
MIN_LENGTH = 1024
QUERY_CHUNK = 256


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
    """Non-causal full self-attention of a long call, (B, S, h * d), a head and a block of query rows at a
    time; None when the call is not one (another variant, training, attention maps, a head mask, a cache, a
    short input)."""
    b, h, s, d = q.shape
    variant = node.variant
    if not isinstance(variant, n.FullAttention) or variant.causal or head_mask is not None or offset is not None:
        return None
    if not ctx.deterministic or ctx.output_attentions or s < MIN_LENGTH or k.shape[2] != s:
        return None
    from .nodes import mask_bias  # the module that dispatches here: imported at call time

    bias = mask_bias(node, mask, 1, ctx.dtype)[:, 0, 0]  # (B, S): the keys' additive mask
    chunks = -(-s // QUERY_CHUNK)
    qc = jnp.pad(q / jnp.asarray(node.score_divisor, q.dtype), ((0, 0), (0, 0), (0, chunks * QUERY_CHUNK - s), (0, 0)))
    qc = qc.reshape(b * h * chunks, QUERY_CHUNK, d)
    keys, values = k.reshape(b * h, s, d), v.reshape(b * h, s, d)

    def rows(block: Array) -> Array:
        pair = block // chunks  # the (batch row, head) pair of this block of query rows
        scores = (jnp.matmul(qc[block], keys[pair].T) + bias[pair // h]).astype(jnp.float32)
        weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        context = jnp.matmul(weights.astype(q.dtype), values[pair])
        return (context / jnp.sum(weights, axis=-1, keepdims=True)).astype(q.dtype)

    step = None if jax.default_backend() == "cpu" else b * h  # an accelerator runs b * h blocks per step
    blocks = jax.lax.map(rows, jnp.arange(b * h * chunks), batch_size=step)
    context = blocks.reshape(b, h, chunks * QUERY_CHUNK, d)[:, :, :s]
    return context.transpose(0, 2, 1, 3).reshape(b, s, h * d)
