"""Sentence pooling over the sequence output, as sentence-transformers' ``Pooling`` and ``Normalize`` compute it
(its torch formulas, written with jax.numpy)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ...core import nodes as n
from ...core.call import HeadInputs

Array = Any


def _pool(mode: str, h: Array, mask: Array) -> Array:
    """One mode's (B, H) vector from the sequence ``h`` (B, S, H) and the attention mask ``mask`` (B, S)."""
    weights = mask.astype(h.dtype)[:, :, None]  # (B, S, 1)
    rows = jnp.arange(h.shape[0])
    if mode == "cls":  # the first kept position (left padding included)
        return h[rows, jnp.argmax(mask.astype(jnp.int32), axis=1)]
    if mode == "lasttoken":  # the last kept position; a row that keeps none reads position 0, zeroed
        flipped = mask[:, ::-1]
        back = jnp.where(flipped.max(axis=1) == 0, h.shape[1] - 1, jnp.argmax(flipped, axis=1))
        return (h * weights)[rows, h.shape[1] - back - 1]
    if mode == "max":
        return jnp.where(weights == 0, -jnp.inf, h).max(axis=1)
    if mode == "weightedmean":  # positions weighted 1..S
        weights = weights * jnp.arange(1, h.shape[1] + 1, dtype=h.dtype)[None, :, None]
    total = (h * weights).sum(axis=1)  # (B, H)
    count = jnp.maximum(weights.sum(axis=1), 1e-9)  # (B, 1)
    return total / jnp.sqrt(count) if mode == "mean_sqrt_len_tokens" else total / count


def sentence_pooling(node: n.SentencePooling, path: str, inputs: HeadInputs, ctx: Any) -> Array:
    """The modes' vectors concatenated, (B, H * modes), then unit length when ``node.normalize`` (torch's
    ``F.normalize``: divided by the L2 norm clamped to at least 1e-12)."""
    out = jnp.concatenate([_pool(mode, inputs.sequence, inputs.mask) for mode in node.modes], axis=-1)
    if not node.normalize:
        return out
    return out / jnp.maximum(jnp.linalg.norm(out, axis=1, keepdims=True), 1e-12)
