"""Block-sparse attention (ITC: global, sliding and random blocks) in JAX, HF PyTorch's algorithm step for step.

Same pattern and order of operations as the torch backend (see ``backends/torch/block_sparse.py``); the
random plan is a host-side numpy constant, so every index here is static under ``jax.jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _t(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


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
    """Context (B, h, S, d) and, if asked, HF's dense (B, h, S, S) float32 reconstruction of the probs."""
    b, h, s, d = q.shape
    bs = block_size
    nb = s // bs
    r = plan.shape[-1]
    heads = np.arange(h)[:, None, None]

    m = mask.astype(q.dtype)
    to_mask = m[:, None, None, :]
    from_mask = m[:, None, :, None]
    bm = m.reshape(b, nb, bs)
    band_keys = jnp.concatenate([bm[:, 1:-3], bm[:, 2:-2], bm[:, 3:-1]], axis=2)
    band_mask = jnp.einsum("blq,blk->blqk", bm[:, 2:-2], band_keys)[:, None]
    rand_keys = bm[:, plan].reshape(b, h, nb - 2, r * bs)
    rand_mask = jnp.einsum("blq,bhlk->bhlqk", bm[:, 1:-1], rand_keys)

    bq, bk, bv = (x.reshape(b, h, nb, bs, d) for x in (q, k, v))
    gk = bk[:, heads, plan].reshape(b, h, nb - 2, r * bs, d)
    gv = bv[:, heads, plan].reshape(b, h, nb - 2, r * bs, d)

    def global_rows(query: Array) -> tuple[Array, Array]:
        scores = jnp.matmul(query, _t(k)) * scale + (1.0 - to_mask) * penalty
        weights = jax.nn.softmax(scores, axis=-1)
        return weights, jnp.matmul(weights, v)

    def edge_rows(query: Array, keys: list[int], seq_pad: Array, rand_row: int) -> tuple[Array, Array]:
        key_mat = jnp.concatenate([bk[:, :, i] for i in keys] + [gk[:, :, rand_row]], axis=2)
        value_mat = jnp.concatenate([bv[:, :, i] for i in keys] + [gv[:, :, rand_row]], axis=2)
        rand_pad = jnp.concatenate([jnp.ones((b, h, bs, 4 * bs), m.dtype), rand_mask[:, :, rand_row]], axis=3)
        scores = jnp.matmul(query, _t(key_mat)) * scale
        scores = scores + (1.0 - jnp.minimum(seq_pad, rand_pad)) * penalty
        weights = jax.nn.softmax(scores, axis=-1)
        return weights, jnp.matmul(weights, value_mat)

    ones_rand = jnp.ones((b, 1, 1, r * bs), m.dtype)
    w_first, c_first = global_rows(bq[:, :, 0])
    w_second, c_second = edge_rows(
        bq[:, :, 1],
        [0, 1, 2, nb - 1],
        jnp.concatenate([to_mask[..., : 3 * bs], to_mask[..., -bs:], ones_rand], axis=3),
        0,
    )

    band_k = jnp.concatenate([bk[:, :, 1:-3], bk[:, :, 2:-2], bk[:, :, 3:-1]], axis=3)
    band_v = jnp.concatenate([bv[:, :, 1:-3], bv[:, :, 2:-2], bv[:, :, 3:-1]], axis=3)
    mq = bq[:, :, 2:-2]
    inner = jnp.matmul(mq, _t(band_k)) * scale
    rand_band = jnp.matmul(mq, _t(gk[:, :, 1:-1])) * scale
    first_band = jnp.einsum("bhlqd,bhkd->bhlqk", mq, bk[:, :, 0]) * scale
    last_band = jnp.einsum("bhlqd,bhkd->bhlqk", mq, bk[:, :, -1]) * scale
    inner = inner + (1.0 - band_mask) * penalty
    first_band = first_band + (1.0 - to_mask[..., :bs][:, :, :, None]) * penalty
    last_band = last_band + (1.0 - to_mask[..., -bs:][:, :, :, None]) * penalty
    rand_band = rand_band + (1.0 - rand_mask[:, :, 1:-1]) * penalty
    w_mid = jax.nn.softmax(jnp.concatenate([first_band, inner, rand_band, last_band], axis=-1), axis=-1)
    c_mid = jnp.matmul(w_mid[..., bs : 4 * bs], band_v)
    c_mid = c_mid + jnp.matmul(w_mid[..., 4 * bs : -bs], gv[:, :, 1:-1])
    c_mid = c_mid + jnp.einsum("bhlqk,bhkd->bhlqd", w_mid[..., :bs], bv[:, :, 0])
    c_mid = c_mid + jnp.einsum("bhlqk,bhkd->bhlqd", w_mid[..., -bs:], bv[:, :, -1])

    w_second_last, c_second_last = edge_rows(
        bq[:, :, -2],
        [0, nb - 3, nb - 2, nb - 1],
        jnp.concatenate([to_mask[..., :bs], to_mask[..., -3 * bs :], ones_rand], axis=3),
        nb - 3,
    )
    w_last, c_last = global_rows(bq[:, :, -1])

    context = jnp.concatenate(
        [c_first[:, :, None], c_second[:, :, None], c_mid, c_second_last[:, :, None], c_last[:, :, None]], axis=2
    )
    context = context.reshape(b, h, s, d) * from_mask
    if not output_attentions:
        return context, None
    probs = _dense_probs(plan, (b, h, nb, bs), w_first, w_second, w_mid, w_second_last, w_last)
    return context, probs


def _dense_probs(
    plan: np.ndarray,
    shape: tuple[int, int, int, int],
    w_first: Array,
    w_second: Array,
    w_mid: Array,
    w_second_last: Array,
    w_last: Array,
) -> Array:
    """HF's dense float32 view of the probabilities, written in HF's order (random writes last)."""
    b, h, nb, bs = shape
    s = nb * bs
    r = plan.shape[-1]
    f32 = jnp.float32
    grid = jnp.zeros((b, h, nb, bs, nb, bs), f32)
    # Whole-row writes, expressed on the block grid: (B, h, bs, S) -> (B, h, 1, bs, nb, bs).
    grid = grid.at[:, :, 0].set(w_first.astype(f32).reshape(b, h, bs, nb, bs))
    grid = grid.at[:, :, 1, :, :3].set(w_second[..., : 3 * bs].astype(f32).reshape(b, h, bs, 3, bs))
    grid = grid.at[:, :, 1, :, -1].set(w_second[..., 3 * bs : 4 * bs].astype(f32))
    for head in range(h):
        values = w_second[:, head, :, 4 * bs :].astype(f32).reshape(b, bs, r, bs)
        grid = grid.at[:, head, 1, :, plan[head, 0]].set(jnp.moveaxis(values, 2, 0))
    for row in range(nb - 4):
        values = w_mid[:, :, row, :, bs : 4 * bs].astype(f32).reshape(b, h, bs, 3, bs)
        grid = grid.at[:, :, row + 2, :, row + 1 : row + 4].set(values)
    grid = grid.at[:, :, 2:-2, :, 0].set(w_mid[..., :bs].astype(f32))
    grid = grid.at[:, :, 2:-2, :, -1].set(w_mid[..., -bs:].astype(f32))
    for head in range(h):
        for row in range(1, nb - 3):
            values = w_mid[:, head, row - 1, :, 4 * bs : -bs].astype(f32).reshape(b, bs, r, bs)
            grid = grid.at[:, head, row + 1, :, plan[head, row]].set(jnp.moveaxis(values, 2, 0))
    grid = grid.at[:, :, nb - 2, :, 0].set(w_second_last[..., :bs].astype(f32))
    grid = grid.at[:, :, nb - 2, :, -3:].set(w_second_last[..., bs : 4 * bs].astype(f32).reshape(b, h, bs, 3, bs))
    for head in range(h):
        values = w_second_last[:, head, :, 4 * bs :].astype(f32).reshape(b, bs, r, bs)
        grid = grid.at[:, head, nb - 2, :, plan[head, -1]].set(jnp.moveaxis(values, 2, 0))
    grid = grid.at[:, :, nb - 1].set(w_last.astype(f32).reshape(b, h, bs, nb, bs))
    return grid.reshape(b, h, s, s)
