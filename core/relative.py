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
    """Distances within ``mid = buckets // 2`` kept, longer ones mapped logarithmically up to ``max_distance``:
    ``sign * (ceil(log(|d| / mid) / log((max_distance - 1) / mid) * (mid - 1)) + mid)``, in float32 as HF
    PyTorch's ``make_log_bucket_position`` computes it, with correctly rounded float32 logs.

    HF's two logs are torch's CPU ``log``, which is MKL's (``vmsLn``, high accuracy) and not correctly rounded
    the same way on every CPU: its AVX-512 kernel (Intel) gives the correctly rounded logs' buckets everywhere
    measured; its generic kernel (AMD CPUs) and its AVX2 kernel round some logs the other way, which moves a
    distance whose bucket is an integer in exact arithmetic (``|d| / mid`` a power of ``(max_distance - 1) /
    mid``) one bucket, and from ``buckets`` 48 on that bucket can be a table row (docs/families/deberta_v2.md
    gives the measurements).
    """
    mid = buckets // 2
    out = np.asarray(distance, dtype=np.int64).copy()
    far = np.abs(out) > mid
    ratio = _log32(np.abs(out[far]).astype(np.float32) / np.float32(mid)) / _log32(np.float32((max_distance - 1) / mid))
    logged = np.ceil(ratio * np.float32(mid - 1)) + np.float32(mid)
    out[far] = logged.astype(np.int64) * np.sign(out[far])
    return out


def _log32(x: np.ndarray | np.float32) -> np.ndarray:
    """float32 logs correctly rounded (through float64, whose log is accurate well past float32's rounding)."""
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
