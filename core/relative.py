"""Relative positions of disentangled attention, computed on the host: they depend on the length only.

``relative_positions`` reproduces HF PyTorch's ``build_relative_position`` (with
``make_log_bucket_position``) in float32 numpy; ``gather_indices`` turns the distances into the rows of the
``2 * span`` relative-embedding table that the content-to-position and position-to-content scores read.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .nodes import DisentangledAttention


def log_buckets(distance: np.ndarray, buckets: int, max_distance: int) -> np.ndarray:
    """Distances within ``buckets // 2`` kept, longer ones mapped logarithmically up to ``max_distance``
    (float32 throughout, as HF PyTorch's ``make_log_bucket_position`` computes them)."""
    sign = np.sign(distance)
    mid = buckets // 2
    near = (distance < mid) & (distance > -mid)
    absolute = np.where(near, mid - 1, np.abs(distance)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):  # the log of 0 (mid == 1) is never selected
        # Logs correctly rounded to float32 (through float64): numpy's and torch's float32 logs differ in the
        # last bit at different places. A distance whose bucket is an exact integer before the ceil can still
        # land one bucket off HF PyTorch's CPU kernel (docs/families/deberta_v2.md).
        ratio = _log32(absolute / np.float32(mid)) / _log32(np.float32((max_distance - 1) / mid))
        logged = np.ceil(ratio * np.float32(mid - 1)) + np.float32(mid)
    return np.where(absolute <= mid, distance.astype(np.float32), logged * sign).astype(np.int64)


def _log32(x: np.ndarray | np.float32) -> np.ndarray:
    return np.log(np.asarray(x, dtype=np.float64)).astype(np.float32)


def relative_positions(length: int, buckets: int, max_distance: int) -> np.ndarray:
    """(length, length) distances ``i - j`` from query ``i`` to key ``j``, log-bucketed when ``buckets > 0``."""
    ids = np.arange(length, dtype=np.int64)
    distance = ids[:, None] - ids[None, :]
    if buckets > 0 and max_distance > 0:
        return log_buckets(distance, buckets, max_distance)
    return distance


@lru_cache(maxsize=64)
def gather_indices(length: int, variant: DisentangledAttention) -> tuple[np.ndarray, np.ndarray]:
    """The table rows each (query, key) pair reads: ``c2p[i, j]`` for query ``i`` against the position key of
    distance ``i - j``, ``p2c[j, i]`` for key ``j`` against the position query of distance ``j - i``... as
    ``clamp(±distance + span, 0, 2 span - 1)``. Both (length, length) int64, read-only."""
    distance = relative_positions(length, variant.buckets, variant.max_distance)
    span = variant.span
    c2p = np.clip(distance + span, 0, 2 * span - 1)
    p2c = np.clip(-distance + span, 0, 2 * span - 1)
    c2p.flags.writeable = False
    p2c.flags.writeable = False
    return c2p, p2c
