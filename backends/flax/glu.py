"""The gated (GLU) feed-forward's inner state."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def glu(gated: bool, act: Callable[[jax.Array], jax.Array], y: jax.Array) -> jax.Array:
    """``act(y)``, or for a gated layer ``act(input) * gate`` of ``y``'s two halves (HF's ``chunk(2)``)."""
    if not gated:
        return act(y)
    value, gate = jnp.split(y, 2, axis=-1)
    return act(value) * gate
