"""The NNX side of ``tandem.generate``: the linen backend's decoder session on the module's parameters.

The session (a fixed-size cache filled by the prompt, then one compiled one-token step, the cache donated)
needs only a params tree and a jitted step; here they are the module's current ``nnx.Param`` values and
:func:`~tandem.backends.nnx.program.decode_step`, so both JAX backends decode with the same program.
"""

from __future__ import annotations

from typing import Any

import jax

from ..flax.cache import FlaxCache
from ..flax.generation import DecoderSession, to_numpy
from .model import NnxModel
from .program import ModelSpec, decode_step


class _Decoder:
    """What :class:`~tandem.backends.flax.generation.DecoderSession` drives: ``params`` and ``_jitted_step``
    (the linen model's names), here a snapshot of the module's parameters and the NNX backend's step."""

    def __init__(self, model: NnxModel) -> None:
        self.params = model.params
        self.spec: ModelSpec = model.spec

    def _jitted_step(
        self,
        params: Any,
        arrays: dict[str, Any],
        cache: FlaxCache | None,
        column: Any,
        use_cache: bool,
        cache_length: int,
    ) -> tuple[jax.Array, FlaxCache | None]:
        return decode_step(
            params, arrays, cache, column, model=self.spec, use_cache=use_cache, cache_length=cache_length
        )


def decoder_session(
    model: NnxModel, max_length: int, use_cache: bool, encoder_states: Any = None, encoder_mask: Any = None
) -> DecoderSession:
    return DecoderSession(_Decoder(model), max_length, use_cache, encoder_states, encoder_mask)


__all__ = ["decoder_session", "to_numpy"]
