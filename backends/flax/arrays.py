"""The JAX side of the call plan: input specs and the array primitives of ``run_call``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ...core.call import ArraySpec, describe

Array = jax.Array


def spec(x: Any) -> ArraySpec | None:
    """An array's shape and dtype kind, for the call plan (works on tracers: no values are read)."""
    if x is None:
        return None
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.bool_):
        return describe(jnp.shape(x), "bool")
    if jnp.issubdtype(dtype, jnp.integer):
        return describe(jnp.shape(x), "int")
    return describe(jnp.shape(x), "complex" if jnp.issubdtype(dtype, jnp.complexfloating) else "float")


class JaxOps:
    """The array primitives of :func:`~tandem.core.call.run_call`; integers int32, floats in ``dtype``."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype

    def ones(self, shape: tuple[int, ...]) -> Array:
        return jnp.ones(shape, jnp.int32)

    def zeros(self, shape: tuple[int, ...]) -> Array:
        return jnp.zeros(shape, jnp.int32)

    def full(self, shape: tuple[int, ...], value: int) -> Array:
        return jnp.full(shape, value, jnp.int32)

    def arange(self, n: int) -> Array:
        return jnp.arange(n, dtype=jnp.int32)

    def to_int(self, x: Array) -> Array:
        return x.astype(jnp.int32)

    def compute(self, x: Array) -> Array:
        return x.astype(self.dtype)

    def pad(self, x: Array, n: int, value: int) -> Array:
        return jnp.pad(x, ((0, 0), (0, n)) + ((0, 0),) * (x.ndim - 2), constant_values=value)

    def concat(self, a: Array, b: Array) -> Array:
        return jnp.concatenate([a, b], axis=1)

    def first(self, ids: Array, value: int) -> Array:
        return jnp.argmax(ids == value, axis=-1)

    def broadcast(self, x: Array, shape: tuple[int, ...]) -> Array:
        return jnp.broadcast_to(x, shape)

    def cumsum(self, x: Array) -> Array:
        return jnp.cumsum(x, axis=1)

    def column(self, x: Array, index: int) -> Array:
        return x[..., index]


# Integer inputs, run as int32 (HF Flax's dtype).
INT_INPUTS = ("input_ids", "token_type_ids", "position_ids", "encoder_attention_mask", "question_lengths")


def as_array(value: Any) -> Any:
    """A jax array (or tracer) as given; anything else as a numpy array, so its shape and dtype can be read."""
    return value if value is None or isinstance(value, jax.Array) else np.asarray(value)


def host_range(value: Any) -> tuple[int, int] | None:
    """(min, max) of an integer array, computed on the host; None for a tracer (no values to read)."""
    if isinstance(value, jax.core.Tracer):
        return None
    array = np.asarray(value)
    return int(array.min()), int(array.max())


def ints(value: Any) -> Array | None:
    return None if value is None else jnp.asarray(value).astype(jnp.int32)
