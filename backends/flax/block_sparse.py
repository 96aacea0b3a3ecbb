"""Block-sparse attention (ITC: global, sliding and random blocks) in JAX, HF PyTorch's algorithm step for step.

Same pattern and order of operations as the torch backend (see ``backends/torch/block_sparse.py``), one
(batch row, head) pair at a time; the random plan is a host-side numpy constant, computed before tracing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _pair(
    q: Array, k: Array, v: Array, plan: Array, m: Array, bs: int, scale: float, penalty: float
) -> tuple[Array, tuple[Array, ...]]:
    """One (batch row, head): ``q, k, v`` (S, d), the head's plan (nb-2, r) and the row's mask (S,) ->
    context (S, d) and the weights of the five query groups."""
    s, d = q.shape
    nb = s // bs
    r = plan.shape[-1]
    bm = m.reshape(nb, bs)
    window_mask = jnp.concatenate([bm[1:-3], bm[2:-2], bm[3:-1]], axis=1)  # (nb-4, 3bs)
    band_mask = bm[2:-2, :, None] * window_mask[:, None, :]
    rand_mask = bm[1:-1, :, None] * bm[plan].reshape(nb - 2, 1, r * bs)  # (nb-2, bs, r*bs)

    bq, bk, bv = (x.reshape(nb, bs, d) for x in (q, k, v))
    gk = bk[plan].reshape(nb - 2, r * bs, d)  # random key blocks of query blocks 1..nb-2
    gv = bv[plan].reshape(nb - 2, r * bs, d)

    def global_rows(query: Array) -> tuple[Array, Array]:  # a block attending every key
        scores = jnp.matmul(query, k.T) * scale + (1.0 - m) * penalty
        weights = jax.nn.softmax(scores, axis=-1)
        return weights, jnp.matmul(weights, v)

    def edge_rows(query: Array, keys: list[int], seq_keys: Array, rand_row: int) -> tuple[Array, Array]:
        key_mat = jnp.concatenate([bk[i] for i in keys] + [gk[rand_row]])
        value_mat = jnp.concatenate([bv[i] for i in keys] + [gv[rand_row]])
        seq_pad = jnp.concatenate([seq_keys, jnp.ones(r * bs, m.dtype)])
        rand_pad = jnp.concatenate([jnp.ones((bs, 4 * bs), m.dtype), rand_mask[rand_row]], axis=1)
        scores = jnp.matmul(query, key_mat.T) * scale
        scores = scores + (1.0 - jnp.minimum(seq_pad, rand_pad)) * penalty
        weights = jax.nn.softmax(scores, axis=-1)
        return weights, jnp.matmul(weights, value_mat)

    w_first, c_first = global_rows(bq[0])
    w_second, c_second = edge_rows(bq[1], [0, 1, 2, nb - 1], jnp.concatenate([m[: 3 * bs], m[-bs:]]), 0)

    # Middle blocks 2..nb-3: [first global | sliding q-1, q, q+1 | random | last global].
    band_k = jnp.concatenate([bk[1:-3], bk[2:-2], bk[3:-1]], axis=1)  # (nb-4, 3bs, d)
    band_v = jnp.concatenate([bv[1:-3], bv[2:-2], bv[3:-1]], axis=1)
    mq = bq[2:-2]
    inner = jnp.einsum("lqd,lkd->lqk", mq, band_k) * scale + (1.0 - band_mask) * penalty
    rand = jnp.einsum("lqd,lkd->lqk", mq, gk[1:-1]) * scale + (1.0 - rand_mask[1:-1]) * penalty
    first = jnp.einsum("lqd,kd->lqk", mq, bk[0]) * scale + (1.0 - m[:bs]) * penalty
    last = jnp.einsum("lqd,kd->lqk", mq, bk[-1]) * scale + (1.0 - m[-bs:]) * penalty
    w_mid = jax.nn.softmax(jnp.concatenate([first, inner, rand, last], axis=-1), axis=-1)
    c_mid = jnp.einsum("lqk,lkd->lqd", w_mid[..., bs : 4 * bs], band_v)
    c_mid = c_mid + jnp.einsum("lqk,lkd->lqd", w_mid[..., 4 * bs : -bs], gv[1:-1])
    c_mid = c_mid + jnp.einsum("lqk,kd->lqd", w_mid[..., :bs], bv[0])
    c_mid = c_mid + jnp.einsum("lqk,kd->lqd", w_mid[..., -bs:], bv[-1])

    w_second_last, c_second_last = edge_rows(
        bq[-2], [0, nb - 3, nb - 2, nb - 1], jnp.concatenate([m[:bs], m[-3 * bs :]]), -1
    )
    w_last, c_last = global_rows(bq[-1])

    context = jnp.concatenate([c_first, c_second, c_mid.reshape(-1, d), c_second_last, c_last])
    return context * m[:, None], (w_first, w_second, w_mid, w_second_last, w_last)  # padded rows: zero context


def block_sparse_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array,
    plan: np.ndarray,
    block_size: int,
    scale: float,
    penalty: float,
    output_attentions: bool,
) -> tuple[Array, Array | None]:
    """Context (B, h, S, d) and, if asked, HF's dense (B, h, S, S) float32 reconstruction of the probs.

    One (batch row, head) pair per step of a ``lax.map`` on the CPU: XLA:CPU runs a dot batched over
    (B, h, blocks) several times slower than the same dots batched over blocks alone, one pair after
    another. On an accelerator, which wants the large batched dots, all pairs form one vmapped step.
    """
    b, h, s, d = q.shape
    nb = s // block_size
    pairs = b * h
    m = mask.astype(q.dtype)
    per_pair = (
        q.reshape(pairs, s, d),
        k.reshape(pairs, s, d),
        v.reshape(pairs, s, d),
        jnp.asarray(np.broadcast_to(plan, (b, *plan.shape)).reshape(pairs, *plan.shape[1:])),
        jnp.repeat(m, h, axis=0),
    )
    step = None if jax.default_backend() == "cpu" else pairs
    if not output_attentions:
        context = jax.lax.map(lambda a: _pair(*a, block_size, scale, penalty)[0], per_pair, batch_size=step)
        return context.reshape(b, h, s, d), None
    context, weights = jax.lax.map(lambda a: _pair(*a, block_size, scale, penalty), per_pair, batch_size=step)
    context = context.reshape(b, h, s, d)
    weights = [w.reshape(b, h, *w.shape[1:]) for w in weights]
    return context, _dense_probs(plan, (b, h, nb, block_size), *weights)


def _tile_sources(plan: np.ndarray, nb: int) -> np.ndarray:
    """For each (head, query block, key block) of the dense map, the tile of :func:`_dense_probs`'s tile
    list that HF PyTorch's reconstruction leaves there (its writes replayed in its order: later writes win,
    so random blocks overwrite what they coincide with), or the zero tile ``n_tiles``. Host-side numpy."""
    h, _, r = plan.shape
    edge, mid = 4 + r, 5 + r  # tiles per row of the edge and middle query blocks
    first, second = 0, nb
    middle = second + edge
    second_last = middle + (nb - 4) * mid
    last = second_last + edge
    n_tiles = last + nb
    src = np.full((h, nb, nb), n_tiles, np.int64)
    src[:, 0] = first + np.arange(nb)
    src[:, -1] = last + np.arange(nb)
    for head in range(h):
        src[head, 1, [0, 1, 2, nb - 1]] = second + np.arange(4)
        src[head, nb - 2, [0, nb - 3, nb - 2, nb - 1]] = second_last + np.arange(4)
        for slot in range(r):  # later slots win where random blocks repeat (all block 0 in eval)
            src[head, 1, plan[head, 0, slot]] = second + 4 + slot
            src[head, nb - 2, plan[head, -1, slot]] = second_last + 4 + slot
    rows = np.arange(nb - 4)
    for j in range(3):  # sliding window, then the global columns, then the random blocks
        src[:, rows + 2, rows + 1 + j] = middle + rows * mid + 1 + j
    src[:, 2:-2, 0] = middle + rows * mid
    src[:, 2:-2, -1] = middle + rows * mid + mid - 1
    for head in range(h):
        for slot in range(r):
            src[head, rows + 2, plan[head, rows + 1, slot]] = middle + rows * mid + 4 + slot
    return src


def _dense_probs(
    plan: np.ndarray,
    shape: tuple[int, int, int, int],
    w_first: Array,
    w_second: Array,
    w_mid: Array,
    w_second_last: Array,
    w_last: Array,
) -> Array:
    """HF PyTorch's dense float32 view of the probabilities (lossy where random blocks coincide with others,
    exactly as HF's), as one gather of (bs, bs) tiles: the tile list holds every group's weights, and
    :func:`_tile_sources` says which tile lands on each block of the map."""
    b, h, nb, bs = shape

    def tiles(w: Array) -> Array:  # (B, h, ..., bs, n*bs) -> (B, h, ... * n, bs, bs)
        t = w.astype(jnp.float32).reshape(*w.shape[:-1], -1, bs)
        return jnp.moveaxis(t, -2, -3).reshape(b, h, -1, bs, bs)

    zero = jnp.zeros((b, h, 1, bs, bs), jnp.float32)
    parts = [tiles(w) for w in (w_first, w_second, w_mid, w_second_last, w_last)]
    grid = jnp.concatenate([*parts, zero], axis=2)[:, np.arange(h)[:, None, None], _tile_sources(plan, nb)]
    return grid.transpose(0, 1, 2, 4, 3, 5).reshape(b, h, nb * bs, nb * bs)
