"""Block-sparse attention (ITC: global, sliding and random blocks) in torch, HF PyTorch's algorithm step by step.

Queries are split into ``nb`` blocks: blocks 0 and nb-1 attend every key; block 1 and nb-2 attend four
fixed blocks plus their random blocks; middle blocks attend a three-block sliding window, the two global
blocks and their random blocks. Each group of scores is scaled and masked with ``(1 - m) * penalty``
separately, then one softmax runs over the concatenation, in HF's order (the order changes the rounding).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` over any leading dims as one ``bmm`` (no copy of a transposed operand)."""
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.view(*a.shape[:-1], b.shape[-1])


def _bmm_t(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b^T`` over any leading dims as one ``bmm`` on a transposed view."""
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]).transpose(1, 2))
    return out.view(*a.shape[:-1], b.shape[-2])


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    plan: np.ndarray,
    block_size: int,
    scale: float,
    penalty: float,
    output_attentions: bool,
) -> tuple[Tensor, Tensor | None]:
    """Context (B, h, S, d) and, if asked, HF's dense (B, h, S, S) float32 reconstruction of the probs.

    ``q, k, v``: (B, h, S, d) with S a multiple of ``block_size``; ``mask``: (B, S) 0/1; ``plan``: the random
    key blocks (h, nb-2, r) from :func:`tandem.core.block_sparse.random_blocks`.
    """
    b, h, s, d = q.shape
    bs = block_size
    nb = s // bs
    r = plan.shape[-1]
    ra = torch.as_tensor(plan, device=q.device)  # (h, nb-2, r)
    heads = torch.arange(h, device=q.device)[:, None, None]

    m = mask.to(q.dtype)
    to_mask = m[:, None, None, :]  # (B, 1, 1, S)
    from_mask = m[:, None, :, None]  # (B, 1, S, 1)
    bm = m.view(b, nb, bs)
    band_keys = torch.cat([bm[:, 1:-3], bm[:, 2:-2], bm[:, 3:-1]], dim=2)  # (B, nb-4, 3bs)
    band_mask = torch.einsum("blq,blk->blqk", bm[:, 2:-2], band_keys)[:, None]  # (B, 1, nb-4, bs, 3bs)
    rand_keys = bm[:, ra].reshape(b, h, nb - 2, r * bs)  # (B, h, nb-2, r*bs)
    rand_mask = torch.einsum("blq,bhlk->bhlqk", bm[:, 1:-1], rand_keys)  # (B, h, nb-2, bs, r*bs)

    bq, bk, bv = (x.view(b, h, nb, bs, d) for x in (q, k, v))
    gk = bk[:, heads, ra].reshape(b, h, nb - 2, r * bs, d)  # random key blocks per query block 1..nb-2
    gv = bv[:, heads, ra].reshape(b, h, nb - 2, r * bs, d)

    def global_rows(query: Tensor) -> tuple[Tensor, Tensor]:  # a block attending every key
        scores = _bmm_t(query, k) * scale + (1.0 - to_mask) * penalty
        weights = torch.softmax(scores, dim=-1)
        return weights, _bmm(weights, v)

    def edge_rows(query: Tensor, keys: list[int], seq_pad: Tensor, rand_row: int) -> tuple[Tensor, Tensor]:
        key_mat = torch.cat([bk[:, :, i] for i in keys] + [gk[:, :, rand_row]], dim=2)
        value_mat = torch.cat([bv[:, :, i] for i in keys] + [gv[:, :, rand_row]], dim=2)
        rand_pad = torch.cat([rand_mask.new_ones(b, h, bs, 4 * bs), rand_mask[:, :, rand_row]], dim=3)
        scores = _bmm_t(query, key_mat) * scale
        scores = scores + (1.0 - torch.minimum(seq_pad, rand_pad)) * penalty
        weights = torch.softmax(scores, dim=-1)
        return weights, _bmm(weights, value_mat)

    ones_rand = to_mask.new_ones(b, 1, 1, r * bs)
    w_first, c_first = global_rows(bq[:, :, 0])
    w_second, c_second = edge_rows(
        bq[:, :, 1],
        [0, 1, 2, nb - 1],
        torch.cat([to_mask[..., : 3 * bs], to_mask[..., -bs:], ones_rand], dim=3),
        0,
    )

    # Middle blocks 2..nb-3: [first global | sliding q-1, q, q+1 | random | last global].
    band_k = torch.cat([bk[:, :, 1:-3], bk[:, :, 2:-2], bk[:, :, 3:-1]], dim=3)  # (B, h, nb-4, 3bs, d)
    band_v = torch.cat([bv[:, :, 1:-3], bv[:, :, 2:-2], bv[:, :, 3:-1]], dim=3)
    mq = bq[:, :, 2:-2]
    inner = _bmm_t(mq, band_k) * scale
    rand_band = _bmm_t(mq, gk[:, :, 1:-1]) * scale
    first_band = torch.einsum("bhlqd,bhkd->bhlqk", mq, bk[:, :, 0]) * scale
    last_band = torch.einsum("bhlqd,bhkd->bhlqk", mq, bk[:, :, -1]) * scale
    inner = inner + (1.0 - band_mask) * penalty
    first_band = first_band + (1.0 - to_mask[..., :bs][:, :, :, None]) * penalty
    last_band = last_band + (1.0 - to_mask[..., -bs:][:, :, :, None]) * penalty
    rand_band = rand_band + (1.0 - rand_mask[:, :, 1:-1]) * penalty
    w_mid = torch.softmax(torch.cat([first_band, inner, rand_band, last_band], dim=-1), dim=-1)
    c_mid = _bmm(w_mid[..., bs : 4 * bs], band_v)
    c_mid = c_mid + _bmm(w_mid[..., 4 * bs : -bs], gv[:, :, 1:-1])
    c_mid = c_mid + torch.einsum("bhlqk,bhkd->bhlqd", w_mid[..., :bs], bv[:, :, 0])
    c_mid = c_mid + torch.einsum("bhlqk,bhkd->bhlqd", w_mid[..., -bs:], bv[:, :, -1])

    w_second_last, c_second_last = edge_rows(
        bq[:, :, -2],
        [0, nb - 3, nb - 2, nb - 1],
        torch.cat([to_mask[..., :bs], to_mask[..., -3 * bs :], ones_rand], dim=3),
        nb - 3,
    )
    w_last, c_last = global_rows(bq[:, :, -1])

    context = torch.cat(
        [c_first[:, :, None], c_second[:, :, None], c_mid, c_second_last[:, :, None], c_last[:, :, None]], dim=2
    )
    context = context.view(b, h, s, d) * from_mask  # padded query rows get zero context
    if not output_attentions:
        return context, None
    probs = _dense_probs(plan, (b, h, nb, bs), w_first, w_second, w_mid, w_second_last, w_last)
    return context, probs


def _dense_probs(
    plan: np.ndarray,
    shape: tuple[int, int, int, int],
    w_first: Tensor,
    w_second: Tensor,
    w_mid: Tensor,
    w_second_last: Tensor,
    w_last: Tensor,
) -> Tensor:
    """HF's dense float32 view of the probabilities, written in HF's order (later writes win where the
    random blocks overlap the global ones, so the map is lossy exactly as HF's is)."""
    b, h, nb, bs = shape
    s = nb * bs
    r = plan.shape[-1]
    probs = w_first.new_zeros(b, h, s, s, dtype=torch.float32)
    grid = probs.view(b, h, nb, bs, nb, bs)
    probs[:, :, :bs, :] = w_first
    probs[:, :, bs : 2 * bs, : 3 * bs] = w_second[..., : 3 * bs]
    probs[:, :, bs : 2 * bs, -bs:] = w_second[..., 3 * bs : 4 * bs]
    for head in range(h):
        grid[:, head, 1][:, :, torch.as_tensor(plan[head, 0])] = w_second[:, head, :, 4 * bs :].reshape(b, bs, r, bs)
    for row in range(nb - 4):
        grid[:, :, row + 2, :, row + 1 : row + 4, :] = w_mid[:, :, row, :, bs : 4 * bs].reshape(b, h, bs, 3, bs)
    probs[:, :, 2 * bs : -2 * bs, :bs] = w_mid[..., :bs].reshape(b, h, -1, bs)
    probs[:, :, 2 * bs : -2 * bs, -bs:] = w_mid[..., -bs:].reshape(b, h, -1, bs)
    for head in range(h):
        for row in range(1, nb - 3):
            values = w_mid[:, head, row - 1, :, 4 * bs : -bs].reshape(b, bs, r, bs)
            grid[:, head, row + 1][:, :, torch.as_tensor(plan[head, row])] = values
    probs[:, :, -2 * bs : -bs, :bs] = w_second_last[..., :bs]
    probs[:, :, -2 * bs : -bs, -3 * bs :] = w_second_last[..., bs : 4 * bs]
    for head in range(h):
        grid[:, head, nb - 2][:, :, torch.as_tensor(plan[head, -1])] = w_second_last[:, head, :, 4 * bs :].reshape(
            b, bs, r, bs
        )
    probs[:, :, -bs:, :] = w_last
    return probs
