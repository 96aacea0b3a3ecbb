"""The flax backend's KV cache: fixed-size, so that a decode step compiles once and is reused."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ...core import nodes as n

Array = jax.Array


@flax.struct.dataclass
class FlaxCache:
    """A decoder's KV cache in the flax backend: a pytree, so it passes through ``jax.jit``.

    ``layers`` holds one entry per layer run (the order of ``Encoder.runs``), each a tuple
    ``(key, value)`` or, for a run with cross-attention, ``(key, value, cross_key, cross_value)``:

    - ``key``/``value``: self-attention, (batch, heads, max_length, head_dim); slots ``>= length`` are
      unused (zeros until written), so every decode step has the same shapes;
    - ``cross_key``/``cross_value``: (batch, heads, encoder_length, head_dim), computed from the encoder
      states on the first call and reused by every later step.

    ``length`` (an int32 scalar array) counts the positions written so far. The torch backend's cache is
    the same tuple of tuples without the fixed size (HF PyTorch's legacy format);
    :func:`tandem.convert_cache` converts between the two.
    """

    layers: tuple[tuple[Array, ...], ...]
    length: Array

    @property
    def max_length(self) -> int:
        """How many positions the cache can hold (fixed when it is created)."""
        return int(self.layers[0][0].shape[2])


def updated_cache(
    entries: list[tuple[Array, ...]], cache: FlaxCache | None, length: int, cache_length: int
) -> FlaxCache:
    """The cache after this call: the written entries, or a fresh ``cache_length``-slot cache holding them."""
    if cache is not None:
        return FlaxCache(layers=tuple(entries), length=cache.length + length)
    pad = ((0, 0), (0, 0), (0, cache_length - length), (0, 0))
    layers = tuple((jnp.pad(e[0], pad), jnp.pad(e[1], pad), *e[2:]) for e in entries)
    return FlaxCache(layers=layers, length=jnp.asarray(length, jnp.int32))


def check_cache(encoder: n.Encoder, cache: Any) -> FlaxCache | None:
    """``cache`` when it fits the model, else a clear error."""
    if cache is None:
        return None
    runs = len(encoder.runs)
    if not isinstance(cache, FlaxCache) or len(cache.layers) != runs:
        got = f"a FlaxCache of {len(cache.layers)} entries" if isinstance(cache, FlaxCache) else type(cache).__name__
        raise ValueError(
            f"past_key_values must be a FlaxCache with {runs} entries (one per layer run), as returned by a call "
            f"with use_cache=True; got {got} (convert a torch cache with tandem.convert_cache)"
        )
    return cache


def cache_window(
    graph: n.ModelGraph, mask: Any, rows: tuple[int, ...], cache: FlaxCache | None, use_cache: bool, slots: int | None
) -> tuple[Any, int]:
    """A call's attention mask and the slots of the cache it starts (0: it starts none).

    Continuing a cache, the mask is widened to the cache's window (:func:`cache_window_mask`); starting one,
    it gets ``slots`` positions (default: the position table size, the longest sequence the model takes).
    """
    if cache is not None:
        return cache_window_mask(mask, rows[0], int(cache.length), rows[-1], cache.max_length), 0
    if not use_cache:
        return mask, 0
    slots = slots or graph.backbone.embeddings.position.num_embeddings
    if rows[-1] > slots:
        raise ValueError(f"cache_length={slots} cannot hold the {rows[-1]} positions of this call")
    return mask, slots


def cache_window_mask(mask: Any, batch: int, filled: int, length: int, max_length: int) -> Array:
    """The (B, max_length) mask of a cached call: given for the ``filled + length`` positions (as torch
    takes it; padded with zeros) or for the whole window; default ones on those positions."""
    if filled + length > max_length:
        raise ValueError(
            f"the flax KV cache holds max_length={max_length} positions: {filled} are filled and {length} more "
            "do not fit; start the cache with a larger cache_length (or generate with fewer new tokens)"
        )
    if mask is None:
        row = (np.arange(max_length) < filled + length).astype(np.int32)
        return jnp.asarray(np.broadcast_to(row, (batch, max_length)))
    mask = jnp.asarray(mask).astype(jnp.int32)
    if mask.shape[-1] == filled + length:
        return jnp.pad(mask, ((0, 0), (0, max_length - filled - length)))
    if mask.shape[-1] != max_length:
        raise ValueError(
            f"attention_mask must cover the {filled} cached and {length} new positions (length {filled + length}) "
            f"or the cache's {max_length} slots, got shape {tuple(mask.shape)}"
        )
    return mask
