"""The flax backend's KV cache: fixed-size, so that a decode step compiles once and is reused."""

from __future__ import annotations

import flax.struct
import jax

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
