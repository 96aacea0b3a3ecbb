"""The flax side of ``tandem.generate``: ids in, next-token logits out, a fixed-size cache in between."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .cache import FlaxCache
from .program import ModelSpec, decode_step


def to_numpy(value: Any) -> np.ndarray:
    return np.asarray(value)


class DecoderSession:
    """One generation run over a window of ``max_length`` positions (prompt + new tokens).

    With ``use_cache`` the prompt fills a :class:`FlaxCache` of ``max_length`` slots and every later step
    feeds one token with a ``(B, max_length)`` mask: one compiled program serves all steps, and the cache is
    donated to it (updated in place). Without a cache every call runs the whole window (padded with masked
    positions, so it also compiles once).
    """

    def __init__(
        self, model: Any, max_length: int, use_cache: bool, encoder_states: Any = None, encoder_mask: Any = None
    ) -> None:
        # A linen model or an NNX module: both have a ``spec`` and an HF Flax ``params`` tree (the NNX module's
        # is gathered from its Params, once, here).
        self.spec: ModelSpec = model.spec
        self.params = model.params
        self.max_length = max_length
        self.use_cache = use_cache
        self.encoder_states = None if encoder_states is None else jnp.asarray(encoder_states)
        self.encoder_mask = None if encoder_mask is None else jnp.asarray(encoder_mask).astype(jnp.int32)
        self.cache: FlaxCache | None = None

    def _arrays(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, with_states: bool) -> dict[str, Any]:
        return {
            "input_ids": jnp.asarray(ids, jnp.int32),
            "attention_mask": jnp.asarray(mask, jnp.int32),
            "token_type_ids": None,
            "position_ids": jnp.asarray(positions, jnp.int32),
            "inputs_embeds": None,
            "head_mask": None,
            "encoder_hidden_states": self.encoder_states if with_states else None,
            "encoder_attention_mask": self.encoder_mask,
        }

    def _step(
        self, arrays: dict[str, Any], cache: FlaxCache | None, column: int, use_cache: bool, cache_length: int
    ) -> tuple[jax.Array, FlaxCache | None]:
        return decode_step(
            self.params,
            arrays,
            cache,
            np.int32(column),
            model=self.spec,
            use_cache=use_cache,
            cache_length=cache_length,
        )

    def _window(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The whole sequence, padded to the window with masked positions: logits at its last column."""
        pad = ((0, 0), (0, self.max_length - ids.shape[1]))
        arrays = self._arrays(np.pad(ids, pad), np.pad(mask, pad), np.pad(positions, pad), with_states=True)
        logits, _ = self._step(arrays, None, ids.shape[1] - 1, use_cache=False, cache_length=0)
        return np.asarray(logits)

    def prefill(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Next-token logits (B, V) after the prompt."""
        if not self.use_cache:
            return self._window(ids, mask, positions)
        arrays = self._arrays(ids, mask, positions, with_states=True)
        logits, self.cache = self._step(arrays, None, ids.shape[1] - 1, use_cache=True, cache_length=self.max_length)
        return np.asarray(logits)

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Next-token logits (B, V) after the sequence so far (whose last column is new)."""
        if not self.use_cache:
            return self._window(ids, mask, positions)
        window = np.pad(mask, ((0, 0), (0, self.max_length - mask.shape[1])))
        # Cached cross-attention keys/values replace the encoder states after the first call.
        arrays = self._arrays(ids[:, -1:], window, positions[:, -1:], with_states=False)
        logits, self.cache = self._step(arrays, self.cache, 0, use_cache=True, cache_length=0)
        return np.asarray(logits)

    def to_native(self, ids: np.ndarray) -> jax.Array:
        return jnp.asarray(ids, jnp.int32)


def decoder_session(
    model: Any, max_length: int, use_cache: bool, encoder_states: Any = None, encoder_mask: Any = None
) -> DecoderSession:
    return DecoderSession(model, max_length, use_cache, encoder_states, encoder_mask)
