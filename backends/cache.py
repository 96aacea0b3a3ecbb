"""Converting a decoder's KV cache between the torch and flax backends."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np


def convert_cache(cache: Any, to: Literal["torch", "flax"], max_length: int | None = None) -> Any:
    """The same KV cache in the other backend's structure, so decoding can continue there.

    - torch: a tuple with one ``(key, value[, cross_key, cross_value])`` tuple per layer run, each
      (batch, heads, length, head_dim) (HF PyTorch's legacy ``past_key_values``);
    - flax: a :class:`~tandem.backends.flax.cache.FlaxCache`, the same tuples with self-attention entries
      of a fixed ``max_length`` and the filled ``length``.

    ``max_length`` (to flax): the slots of the new cache, at least the cached length (default: exactly
    the cached length, which leaves no room for new tokens). Torch tensors come back on the CPU.

    Example:
        >>> out = torch_model(input_ids=prompt, use_cache=True)
        >>> cache = tandem.convert_cache(out.past_key_values, to="flax", max_length=64)
        >>> flax_model(input_ids=next_ids, past_key_values=cache)
    """
    if to == "flax":
        return _to_flax(cache, max_length)
    if to == "torch":
        if max_length is not None:
            raise ValueError("max_length only applies when converting to flax (the torch cache grows)")
        return _to_torch(cache)
    raise ValueError(f"to must be 'torch' or 'flax', got {to!r}")


def _host(value: Any) -> tuple[np.ndarray, str]:
    """A float32 host copy and the original dtype's name (numpy has no bfloat16 of its own)."""
    if hasattr(value, "detach"):  # a torch.Tensor
        return value.detach().float().cpu().numpy(), str(value.dtype).removeprefix("torch.")
    return np.array(value, dtype=np.float32), str(value.dtype)


def _to_flax(cache: Any, max_length: int | None) -> Any:
    import jax.numpy as jnp

    from .flax.cache import FlaxCache

    if isinstance(cache, FlaxCache):
        raise TypeError("the cache is already a flax cache")
    if not isinstance(cache, (tuple, list)) or not cache or any(len(e) not in (2, 4) for e in cache):
        raise TypeError(
            "expected a torch cache: a tuple of (key, value[, cross_key, cross_value]) tuples per layer run"
        )
    length = int(cache[0][0].shape[2])
    max_length = length if max_length is None else max_length
    if max_length < length:
        raise ValueError(f"max_length={max_length} cannot hold the {length} cached positions")
    pad = ((0, 0), (0, 0), (0, max_length - length), (0, 0))

    def convert(tensor: Any, self_attention: bool) -> Any:
        value, dtype = _host(tensor)
        return jnp.asarray(np.pad(value, pad) if self_attention else value, dtype=dtype)

    layers = tuple(tuple(convert(t, i < 2) for i, t in enumerate(entry)) for entry in cache)
    return FlaxCache(layers=layers, length=jnp.asarray(length, jnp.int32))


def _to_torch(cache: Any) -> tuple[tuple[Any, ...], ...]:
    import torch

    from .flax.cache import FlaxCache

    if not isinstance(cache, FlaxCache):
        raise TypeError(f"expected a FlaxCache, got {type(cache).__name__}")
    length = int(cache.length)

    def convert(array: Any, self_attention: bool) -> Any:
        value, dtype = _host(array)
        value = value[:, :, :length] if self_attention else value
        return torch.from_numpy(np.ascontiguousarray(value)).to(getattr(torch, dtype))

    return tuple(tuple(convert(a, i < 2) for i, a in enumerate(entry)) for entry in cache.layers)
