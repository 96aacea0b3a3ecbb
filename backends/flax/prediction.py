"""The transform-and-classify head (``PredictionHead``): pooling, dense, activation, norm, classifier."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ...core import nodes as n
from ...core.call import HeadInputs

Array = jax.Array


def pool(pooling: str, x: Array, mask: Array | None) -> Array:
    """(B, S, H) -> (B, H) as the node says (``none``: x as it is); ``mask`` (B, S), None for all ones."""
    if pooling == "none":
        return x
    if pooling == "first" or (pooling == "first_unmasked" and mask is None):
        return x[:, 0]
    if pooling == "first_unmasked":
        first = jnp.argmax(mask, axis=-1)  # the first kept position, 0 when none (HF's argmax)
        return jnp.take_along_axis(x, first[:, None, None], axis=1)[:, 0]
    m = jnp.ones(x.shape[:2], x.dtype) if mask is None else mask.astype(x.dtype)
    return jnp.sum(x * m[..., None], axis=1) / jnp.sum(m, axis=1, keepdims=True)


def prediction_head(node: n.PredictionHead, path: str, inputs: HeadInputs, ctx: Any) -> Array:
    from . import nodes  # the registry that lists this function: imported at call time

    y = pool(node.pooling, inputs.sequence, inputs.mask)
    y = nodes.ACTIVATIONS[node.activation](nodes.linear(node.dense, n.join(path, node.dense.path), y, ctx))
    y = nodes.dropout(nodes.layer_norm(node.norm, n.join(path, node.norm.path), y, ctx), node.dropout, ctx)
    return nodes.linear(node.classifier, n.join(path, node.classifier.path), y, ctx)
