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
    projection (run by ``project``), or its kernel columns of the fused ``qkv`` (:attr:`~tandem.core.nodes.
    Attention.qkv_layout`); plus the attention's own bias for the part when it has one."""
    proj = getattr(node, part)
    y = _fused_part(node, part, path, x, ctx) if proj is None else project(proj, n.join(path, proj.path), x, ctx)
    if part in node.part_biases:
        y = y + ctx.cast(ctx.get(path)[n.PART_BIAS_NAMES[part]])
    return y


def _fused_part(node: n.Attention, part: str, path: str, x: Array, ctx: Any) -> Array:
    """Columns ``[i * H, (i + 1) * H)`` of the fused kernel (``"blocks"``: HF's ``view(..., 3, heads,
    head_dim)``) or, per head, its ``i``-th ``head_dim`` columns of ``3 * head_dim`` (``"per_head"``)."""
    params = ctx.get(n.join(path, node.qkv.path))
    index, h, d = _PARTS.index(part), node.num_heads, node.head_dim
    kernel, bias = params["kernel"], params["bias"] if node.qkv.bias else None
    if node.qkv_layout == "per_head":
        kernel = kernel.reshape(kernel.shape[0], h, 3, d)[:, :, index].reshape(kernel.shape[0], h * d)
        bias = None if bias is None else bias.reshape(h, 3, d)[:, index].reshape(h * d)
    else:
        cols = slice(index * h * d, (index + 1) * h * d)
        kernel, bias = kernel[:, cols], None if bias is None else bias[cols]
    y = jnp.matmul(x, ctx.cast(kernel))
    return y if bias is None else y + ctx.cast(bias)


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
