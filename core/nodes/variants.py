"""Attention variants (dense, block-sparse, disentangled relative, sliding window) and rotary positions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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


class FullAttention(_Frozen):
    """Dense softmax attention. ``causal`` adds a lower-triangular mask (decoders)."""

    kind: Literal["full"] = "full"
    causal: bool = False


class BlockSparseAttention(_Frozen):
    """BigBird's block-sparse pattern (global first/last blocks, a three-block sliding window and
    ``num_random_blocks`` random blocks per query block), scores masked with ``(1 - m) * penalty``.

    It runs only when the backbone's :class:`BlockSparsePolicy` says the call's length allows it; otherwise
    the node computes dense attention (with the node's ``mask_fill``, dropout and head mask). ``layer`` seeds
    this layer's random-block plan in training (see ``tandem.core.block_sparse``). In block-sparse mode there is
    no attention dropout and no head mask, as in HF PyTorch.
    """

    kind: Literal["block_sparse"] = "block_sparse"
    block_size: int
    num_random_blocks: int
    layer: int
    penalty: float = -10000.0
    causal: Literal[False] = False


class DisentangledAttention(_Frozen):
    """Disentangled relative attention: content-to-content scores plus content-to-position (``c2p``: queries
    against projected relative-position embeddings) and position-to-content (``p2c``: keys against them).

    Relative distances ``i - j`` are log-bucketed when ``buckets > 0`` (exact within ``buckets // 2``,
    logarithmic up to ``max_distance``), then clamped to ``[-span, span)`` as rows of the encoder's shared
    table of ``2 * span`` embeddings (see :class:`RelativeEncoder`). ``relative=False`` keeps only the
    content scores (the scale still counts the position terms, as HF PyTorch does). The position queries and
    keys are the attention's own ``query``/``key`` projections (``share_keys``) or its ``pos_query``/
    ``pos_key``. Masked pairs (either position padding) get ``mask_fill`` in place of their score.

    ``scale`` says where the attention's ``score_divisor`` divides: ``"keys"`` divides the keys before the
    content product and each gathered position term after its product (HF's DeBERTa-v2 order); ``"queries"``
    divides the queries before every product that reads them (content and c2p) and the position queries
    before the p2c product (HF's DeBERTa v1 order). The same numbers up to float rounding, which the order
    decides.
    """

    kind: Literal["disentangled"] = "disentangled"
    relative: bool
    c2p: bool
    p2c: bool
    span: int = Field(gt=0)
    buckets: int  # <= 0: no bucketing
    max_distance: int = Field(gt=0)
    share_keys: bool
    scale: Literal["keys", "queries"] = "keys"
    causal: Literal[False] = False

    @model_validator(mode="after")
    def _bucket_range(self) -> DisentangledAttention:
        if self.buckets > 0 and (self.buckets < 2 or self.max_distance <= self.buckets // 2 + 1):
            raise ValueError(
                f"position_buckets={self.buckets} needs position_buckets >= 2 and max_relative_positions > "
                f"position_buckets // 2 + 1 (got max_relative_positions={self.max_distance}); the log buckets are "
                "undefined otherwise"
            )
        return self
