"""Sliding-window attention: the window mask of the full computation, and the banded kernel that computes
only the band (linear in the length) with the same numbers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ...core import nodes as n

Array = jax.Array


def window_bias(node: n.Attention, bias: Array, query_len: int) -> Array:
    """The (B, 1, Sq, Sk) bias of a sliding-window node: ``bias`` with every key farther than the half width
    from its query set to the fill value (HF PyTorch's ``masked_fill``); other variants' bias as it is."""
    if not isinstance(node.variant, n.SlidingWindowAttention):
        return bias
    key_len = bias.shape[-1]
    rows = jnp.arange(query_len)[:, None] + (key_len - query_len)
    far = jnp.abs(rows - jnp.arange(key_len)[None, :]) > node.variant.half_width
    return jnp.where(far, jnp.finfo(bias.dtype).min, bias)  # broadcast to (B, 1, Sq, Sk)


def _blocks(x: Array, w: int, pad: int) -> Array:
    """(B, h, S, d) -> each block's 3w keys (B, h, blocks, 3w, d): blocks ``i - 1 .. i + 1`` of ``w``."""
    b, h, _, d = x.shape
    xb = jnp.pad(x, ((0, 0), (0, 0), (w, pad + w), (0, 0))).reshape(b, h, -1, w, d)
    return jnp.concatenate((xb[:, :, :-2], xb[:, :, 1:-1], xb[:, :, 2:]), axis=3)


def banded_attention(
    node: n.Attention,
    q: Array,
    k: Array,
    v: Array,
    mask: Array,
    head_mask: Array | None,
    offset: Array | None,
    ctx: Any,
) -> Array | None:
    """Sliding-window attention over the band only, (B, S, h * d); None when the full computation runs instead
    (another variant, shorter than ``band_min_length``, attention maps or a head mask asked for, or keys that
    are not the queries' own: a cache). ``ctx``: the flax backend's call context (dtype, dropout).

    Blocks of ``w = half_width`` positions: block ``i``'s queries read blocks ``i - 1 .. i + 1`` (3w keys,
    enough for ``|i - j| <= w``), with HF's additive mask on keys in the window and the fill value on the
    others, so each row's softmax is the full one's restricted to the keys it weighs. Rows whose window holds
    no unmasked key get the mean of all values: the full computation's uniform weights over all keys.
    """
    from .nodes import dropout  # the module that dispatches here: imported at call time

    variant, dtype = node.variant, ctx.dtype
    b, h, s, d = q.shape
    if not isinstance(variant, n.SlidingWindowAttention) or head_mask is not None or offset is not None:
        return None
    if ctx.output_attentions or s < variant.band_min_length or k.shape[2] != s:
        return None
    w = max(variant.half_width, 1)
    blocks = -(-s // w)
    pad = blocks * w - s
    fill = jnp.finfo(dtype).min
    qb = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, h, blocks, w, d)
    keep = jnp.pad(mask.astype(dtype), ((0, 0), (w, pad + w))).reshape(b, blocks + 2, w)
    keep = jnp.concatenate((keep[:, :-2], keep[:, 1:-1], keep[:, 2:]), axis=2)  # (B, blocks, 3w)
    query_pos = jnp.arange(blocks * w).reshape(blocks, w, 1)
    key_pos = (jnp.arange(blocks)[:, None] * w + jnp.arange(-w, 2 * w)[None, :])[:, None, :]  # (blocks, 1, 3w)
    window = (jnp.abs(query_pos - key_pos) <= variant.half_width) & (key_pos >= 0) & (key_pos < s)
    bias = jnp.where(window, ((1.0 - keep) * fill)[:, :, None, :], fill)  # (B, blocks, w, 3w)
    scores = jnp.einsum("bhnqd,bhnkd->bhnqk", qb, _blocks(k, w, pad)) / jnp.asarray(node.score_divisor, dtype)
    probs = dropout(jax.nn.softmax(scores + bias[:, None], axis=-1), node.dropout, ctx)
    context = jnp.einsum("bhnqk,bhnkd->bhnqd", probs, _blocks(v, w, pad)).reshape(b, h, blocks * w, d)[:, :, :s]
    alive = jnp.any(window & (keep[:, :, None, :] != 0), axis=-1).reshape(b, 1, blocks * w, 1)[:, :, :s]
    uniform = jnp.mean(v, axis=2, keepdims=True) + _uniform_weights_grad(q, k, v, node.score_divisor)
    context = jnp.where(alive, context, uniform)
    return context.transpose(0, 2, 1, 3).reshape(b, s, h * d)


@jax.custom_vjp
def _zero_with_grad(linear: Array) -> Array:
    return jnp.zeros_like(linear)


def _zero_fwd(linear: Array) -> tuple[Array, None]:
    return jnp.zeros_like(linear), None


def _zero_bwd(_: None, g: Array) -> tuple[Array]:
    return (g,)


_zero_with_grad.defvjp(_zero_fwd, _zero_bwd)


def _uniform_weights_grad(q: Array, k: Array, v: Array, divisor: float) -> Array:
    """Zero (B, h, S, d), whose gradient is the full computation's for q and k in a row with uniform weights
    over all S keys (every score at the fill value): softmax's derivative there, ``(1/S) sum_j ds_j (v_j -
    mean v)`` with ``ds_j = q . dk_j + dq . k_j``, over a (d, d) moment, so linear in S. The values' gradient
    comes from the mean itself. Its forward is zeros (XLA drops the products when nothing differentiates)."""
    centred = jax.lax.stop_gradient(v - jnp.mean(v, axis=2, keepdims=True))
    moment = jnp.einsum("bhkd,bhke->bhde", k, centred) / jnp.asarray(k.shape[2] * divisor, q.dtype)
    return _zero_with_grad(jnp.einsum("bhqd,bhde->bhqe", q, moment))
