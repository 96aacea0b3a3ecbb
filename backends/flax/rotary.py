"""Rotary position embeddings and the fused query/key/value projection, for any attention node that has them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ...core import nodes as n

Array = jax.Array
_PARTS = ("query", "key", "value")


def project_part(node: n.Attention, part: str, path: str, x: Array, ctx: Any, project: Callable[..., Array]) -> Array:
    """The ``part`` (query, key or value) of the attention at ``path`` applied to ``x``, (B, S, H): its own
    projection (run by ``project``), or kernel columns ``[i * H, (i + 1) * H)`` of the fused ``qkv`` (HF's
    ``view(..., 3, heads, head_dim)``)."""
    proj = getattr(node, part)
    if proj is not None:
        return project(proj, n.join(path, proj.path), x, ctx)
    params = ctx.get(n.join(path, node.qkv.path))
    width = node.num_heads * node.head_dim
    cols = slice(_PARTS.index(part) * width, (_PARTS.index(part) + 1) * width)
    y = jnp.matmul(x, ctx.cast(params["kernel"][:, cols]))
    return y + ctx.cast(params["bias"][cols]) if node.qkv.bias else y


def inv_freq(theta: float, dim: int) -> np.ndarray:
    """``1 / theta ** (arange(0, dim, 2) / dim)`` in float32 on the host, as HF PyTorch computes it (numpy's
    float32 power agrees with torch's bit for bit at the usual thetas; XLA's differs by an ulp at some, which
    a position of several thousand would turn into a visible angle error)."""
    exponent = np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)


def rotate(node: n.Attention, part: str, x: Array, positions: Array | None) -> Array:
    """Queries and keys (B, h, S, d) rotated by their positions (B, S) when the node has rotary embeddings:
    angles ``position * inv_freq`` in float32, ``x cos + rotate_half(x) sin`` (HF PyTorch's formula)."""
    if node.rotary is None or part == "value":
        return x
    d = node.head_dim
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq(node.rotary.theta, d))  # (B, S, d/2)
    angles = jnp.concatenate((freqs, freqs), axis=-1)[:, None]  # (B, 1, S, d)
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = jnp.concatenate((-x[..., d // 2 :], x[..., : d // 2]), axis=-1)
    return x * cos + half * sin
