"""The JAX building blocks every node kind uses: the per-call context, activations, dense and grouped
projections, LayerNorm, dropout and the row-chunked evaluation of position-wise blocks."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from ...core import nodes as n

Array = jax.Array
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_tanh(x: Array) -> Array:
    return 0.5 * x * (1.0 + jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * jnp.power(x, 3.0))))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


@dataclass
class Context:
    """Per-call state: the params tree, the compute dtype, the mode and the dropout key."""

    params: Mapping[str, Any]
    dtype: Any
    deterministic: bool
    output_attentions: bool
    output_hidden_states: bool
    dropout_rng: Array | None = None
    block_sparse: bool = False  # this call runs block-sparse layers (decided by the backbone's policy)
    block_sparse_seed: int = 0  # seeds the random-block plan in training
    cache_index: Array | None = None  # with a fixed-size cache: the slots filled before this call
    positions: Array | None = None  # the call's position ids (B, S), recorded by the embeddings (rotary)
    _draws: int = field(default=0)

    def get(self, path: str) -> Mapping[str, Array]:
        """The params of the node at dotted ``path`` (flax names: kernel, embedding, scale, bias)."""
        node = self.params
        for part in path.split("."):
            node = node[part]
        return node

    def next_key(self) -> Array:
        self._draws += 1
        return jax.random.fold_in(self.dropout_rng, self._draws)

    def cast(self, x: Array) -> Array:
        return x.astype(self.dtype)


def linear(node: n.Linear, path: str, x: Array, ctx: Context) -> Array:
    p = ctx.get(path)
    y = jnp.matmul(x, ctx.cast(p["kernel"]))
    return y + ctx.cast(p["bias"]) if node.bias else y


def conv1x1(node: n.GroupedConv1x1, path: str, x: Array, ctx: Context) -> Array:
    """Grouped 1x1 convolution on channels-last data: a block-diagonal matmul per position."""
    p = ctx.get(path)
    kernel = ctx.cast(p["kernel"][0])  # (in/groups, out)
    g = node.groups
    if g == 1:
        y = jnp.matmul(x, kernel)
    else:
        xg = x.reshape(*x.shape[:-1], g, node.in_features // g)  # (..., g, in/g)
        kg = kernel.reshape(node.in_features // g, g, node.out_features // g).transpose(1, 0, 2)  # (g, in/g, out/g)
        y = jnp.einsum("...gi,gio->...go", xg, kg).reshape(*x.shape[:-1], node.out_features)
    return y + ctx.cast(p["bias"]) if node.bias else y


# A position-wise block over many rows (the feed-forward) runs in chunks of about this many bytes of its
# widest activation, one chunk after another (evaluation only). XLA:CPU is faster on chunks that stay in
# cache than on one (4096, 3072) activation, and in a chunk it keeps the GELU's scalar constants inside the
# fused kernel instead of broadcasting them to full size in memory: 2 layers 768 wide at length 4096
# run 17% faster (12 MB chunks beat 3, 6 and 24 MB). Values equal the unchunked ones up to GEMM rounding.
ROW_CHUNK_BYTES = 12 << 20


def rowwise(fn: Callable[[Array], Array], x: Array, width: int, ctx: Context) -> Array:
    """``fn(x)`` for a position-wise ``fn`` (output row i depends on input row i only) on ``x`` (..., F);
    ``width``: the features of its widest activation. Training runs whole (one dropout draw covers all rows)."""
    lead = x.shape[:-1]
    rows = math.prod(lead)
    chunks = -(-rows * width * x.dtype.itemsize // ROW_CHUNK_BYTES)
    if chunks < 2 or not ctx.deterministic:
        return fn(x)
    size = -(-rows // chunks)
    flat = jnp.pad(x.reshape(rows, x.shape[-1]), ((0, chunks * size - rows), (0, 0)))
    out = jax.lax.map(fn, flat.reshape(chunks, size, x.shape[-1]))
    return out.reshape(chunks * size, out.shape[-1])[:rows].reshape(*lead, out.shape[-1])


def layer_norm(node: n.LayerNorm, path: str, x: Array, ctx: Context) -> Array:
    """Two-pass variance in float32 (HF PyTorch's), output in the compute dtype."""
    p = ctx.get(path)
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    centered = xf - mean
    var = jnp.mean(centered * centered, axis=-1, keepdims=True)
    y = centered * jax.lax.rsqrt(var + node.eps)
    return ctx.cast(y * p["scale"].astype(jnp.float32) + (p["bias"].astype(jnp.float32) if node.bias else 0.0))


def dropout(x: Array, p: float, ctx: Context) -> Array:
    if ctx.deterministic or p == 0.0:
        return x
    if ctx.dropout_rng is None:
        raise ValueError("train=True needs a dropout_rng (a jax.random key)")
    keep = jax.random.bernoulli(ctx.next_key(), 1.0 - p, x.shape)
    return jnp.where(keep, x / (1.0 - p), jnp.zeros_like(x))
