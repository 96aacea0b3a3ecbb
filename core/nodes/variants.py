"""Attention options that are not the attention's shape: rotary positions and the sliding window."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import _Frozen


class SlidingWindowAttention(_Frozen):
    """Local attention: query ``i`` sees the keys ``j`` with ``|i - j| <= half_width``. Keys outside the window
    get exactly the fill value (HF PyTorch's ``masked_fill`` of its sliding-window mask), keys inside it the
    usual ``(1 - m) * fill``.

    From ``band_min_length`` positions on (and when no attention maps are asked for) only the band is
    computed: the sequence is cut into blocks of ``half_width`` positions, each block's queries attend to
    their block and its two neighbours, masked to the exact window, so time and memory grow linearly with
    the length. A row whose window holds no unmasked key has every score at the fill value in the full
    computation, i.e. uniform weights over all keys; the banded kernel gives it the mean of all values, the
    same numbers.
    """

    kind: Literal["sliding_window"] = "sliding_window"
    half_width: int = Field(ge=0)
    band_min_length: int = Field(gt=0)
    causal: Literal[False] = False


class Rotary(_Frozen):
    """Rotary position embeddings on queries and keys (HF's ``rotate_half`` form, non-interleaved): with
    ``inv_freq[i] = 1 / theta ** (2i / head_dim)`` in float32, angles ``position * inv_freq`` repeated over
    both halves of the head, ``x * cos + rotate_half(x) * sin``. Positions are the call's ``position_ids``."""

    theta: float = Field(gt=0)
