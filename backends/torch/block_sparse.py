"""Block-sparse attention (ITC: global, sliding and random blocks) in torch, HF PyTorch's algorithm step by step.

Queries are split into ``nb`` blocks: blocks 0 and nb-1 attend every key; block 1 and nb-2 attend four
fixed blocks plus their random blocks; middle blocks attend a three-block sliding window, the two global
blocks and their random blocks. Each group of scores is scaled and masked with ``(1 - m) * penalty``
separately, then one softmax runs over the concatenation, in HF's order (the order changes the rounding).

The work runs one (batch row, head) pair at a time: each product is the same GEMM HF runs for that pair, so
the numbers are HF's, while every temporary stays a few MB (reused by the allocator instead of page-faulted
in as HF's batched 100 MB score tensors are) and no operand is copied: the sliding window of each middle
block is an overlapping strided view of the keys, whose three blocks are adjacent in memory. Without
padding every mask term is ``-0.0`` and adding it is the identity, so unpadded rows skip the mask work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class _RowMask:
    """One batch row's additive mask terms, shared by its heads; ``None`` when the row has no padding."""

    blocks: Tensor  # (nb, bs) the 0/1 mask by block
    keys: Tensor  # (S,) (1 - m) * penalty: the global rows' term
    band: Tensor  # (nb-4, bs, 3bs) the sliding window's term


def _row_mask(m: Tensor, nb: int, bs: int, penalty: float) -> _RowMask | None:
    if bool((m == 1).all()):
        return None
    blocks = m.view(nb, bs)
    window = torch.cat([blocks[1:-3], blocks[2:-2], blocks[3:-1]], dim=1)  # (nb-4, 3bs)
    band = blocks[2:-2, :, None] * window[:, None, :]
    return _RowMask(blocks=blocks, keys=(1.0 - m) * penalty, band=(1.0 - band) * penalty)


def _window(x: Tensor, nb: int, bs: int) -> Tensor:
    """(S, d) -> (nb-4, 3bs, d): blocks q-1, q, q+1 for each middle block q = 2..nb-3, as a view."""
    rows, cols = x.stride()
    return x.as_strided((nb - 4, 3 * bs, x.shape[1]), (bs * rows, rows, cols), x.storage_offset() + bs * rows)


@dataclass
class _PairWeights:
    first: Tensor  # (bs, S)
    second: Tensor  # (bs, (4+r)bs)
    middle: Tensor  # (nb-4, bs, (5+r)bs)
    second_last: Tensor  # (bs, (4+r)bs)
    last: Tensor  # (bs, S)


def _pair(
    q: Tensor, k: Tensor, v: Tensor, plan: Tensor, row: _RowMask | None, bs: int, scale: float, penalty: float
) -> tuple[Tensor, _PairWeights]:
    """One (batch row, head): ``q, k, v`` (S, d) and the head's plan (nb-2, r) -> context (S, d)."""
    s, d = q.shape
    nb = s // bs
    r = plan.shape[-1]
    bq, bk, bv = (x.view(nb, bs, d) for x in (q, k, v))
    gk = bk[plan].reshape(nb - 2, r * bs, d)  # random key blocks of query blocks 1..nb-2
    gv = bv[plan].reshape(nb - 2, r * bs, d)
    rand_bias = None
    if row is not None:
        rand_mask = row.blocks[1:-1, :, None] * row.blocks[plan].reshape(nb - 2, 1, r * bs)  # (nb-2, bs, r*bs)
        rand_bias = (1.0 - rand_mask) * penalty

    def global_rows(query: Tensor) -> tuple[Tensor, Tensor]:  # a block attending every key
        scores = torch.mm(query, k.T).mul_(scale)
        if row is not None:
            scores.add_(row.keys)
        weights = torch.softmax(scores, dim=-1)
        return weights, torch.mm(weights, v)

    def edge_rows(query: Tensor, keys: list[int], seq_keys: Tensor | None, rand_row: int) -> tuple[Tensor, Tensor]:
        key_mat = torch.cat([bk[i] for i in keys] + [gk[rand_row]])
        value_mat = torch.cat([bv[i] for i in keys] + [gv[rand_row]])
        scores = torch.mm(query, key_mat.T).mul_(scale)
        if row is not None:
            seq_pad = torch.cat([seq_keys, seq_keys.new_ones(r * bs)])
            rand_pad = torch.cat([seq_keys.new_ones(bs, 4 * bs), rand_mask[rand_row]], dim=1)
            scores.add_((1.0 - torch.minimum(seq_pad, rand_pad)) * penalty)
        weights = torch.softmax(scores, dim=-1)
        return weights, torch.mm(weights, value_mat)

    masks = row.blocks.reshape(-1) if row is not None else None
    w_first, c_first = global_rows(bq[0])
    w_second, c_second = edge_rows(
        bq[1], [0, 1, 2, nb - 1], None if masks is None else torch.cat([masks[: 3 * bs], masks[-bs:]]), 0
    )

    # Middle blocks 2..nb-3: [first global | sliding q-1, q, q+1 | random | last global].
    mq = bq[2:-2]
    rows = mq.reshape(-1, d)
    first = torch.mm(rows, bk[0].T).mul_(scale).view(nb - 4, bs, bs)
    inner = torch.bmm(mq, _window(k, nb, bs).transpose(1, 2)).mul_(scale)
    rand = torch.bmm(mq, gk[1:-1].transpose(1, 2)).mul_(scale)
    last = torch.mm(rows, bk[-1].T).mul_(scale).view(nb - 4, bs, bs)
    if row is not None:
        first.add_(row.keys[:bs])
        inner.add_(row.band)
        rand.add_(rand_bias[1:-1])
        last.add_(row.keys[-bs:])
    w_mid = torch.softmax(torch.cat([first, inner, rand, last], dim=-1), dim=-1)
    c_mid = torch.bmm(w_mid[..., bs : 4 * bs], _window(v, nb, bs))
    c_mid.add_(torch.bmm(w_mid[..., 4 * bs : -bs], gv[1:-1]))
    c_mid.add_(torch.mm(w_mid[..., :bs].reshape(-1, bs), bv[0]).view(nb - 4, bs, d))
    c_mid.add_(torch.mm(w_mid[..., -bs:].reshape(-1, bs), bv[-1]).view(nb - 4, bs, d))

    w_second_last, c_second_last = edge_rows(
        bq[-2], [0, nb - 3, nb - 2, nb - 1], None if masks is None else torch.cat([masks[:bs], masks[-3 * bs :]]), -1
    )
    w_last, c_last = global_rows(bq[-1])

    context = torch.cat([c_first, c_second, c_mid.view(-1, d), c_second_last, c_last])
    weights = _PairWeights(w_first, w_second, w_mid, w_second_last, w_last)
    return context, weights


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

    ``q, k, v``: (B, h, S, d) with S a multiple of ``block_size`` (any strides, e.g. the head-split view of a
    (B, S, h*d) projection); ``mask``: (B, S) 0/1; ``plan``: the random key blocks (h, nb-2, r) from
    :func:`tandem.core.block_sparse.random_blocks`. The context is a (B, h, S, d) view of a (B, S, h, d)
    buffer, so merging the heads back is free.
    """
    b, h, s, _ = q.shape
    nb = s // block_size
    ra = torch.as_tensor(plan, device=q.device)  # (h, nb-2, r)
    m = mask.to(q.dtype)
    rows, pairs = [], []
    for i in range(b):
        row = _row_mask(m[i], nb, block_size, penalty)
        heads = [_pair(q[i, j], k[i, j], v[i, j], ra[j], row, block_size, scale, penalty) for j in range(h)]
        context = torch.stack([c for c, _ in heads], dim=1)  # (S, h, d)
        rows.append(context if row is None else context * m[i][:, None, None])  # padded query rows: zero context
        pairs.append([w for _, w in heads])
    context = torch.stack(rows).transpose(1, 2)
    if not output_attentions:
        return context, None
    stacked = {
        name: torch.stack([torch.stack([getattr(w, name) for w in heads]) for heads in pairs])
        for name in ("first", "second", "middle", "second_last", "last")
    }
    probs = _dense_probs(plan, (b, h, nb, block_size), **stacked)
    return context, probs


def _dense_probs(
    plan: np.ndarray,
    shape: tuple[int, int, int, int],
    first: Tensor,
    second: Tensor,
    middle: Tensor,
    second_last: Tensor,
    last: Tensor,
) -> Tensor:
    """HF's dense float32 view of the probabilities, written in HF's order (later writes win where the
    random blocks overlap the global ones, so the map is lossy exactly as HF's is)."""
    b, h, nb, bs = shape
    s = nb * bs
    r = plan.shape[-1]
    probs = first.new_zeros(b, h, s, s, dtype=torch.float32)
    grid = probs.view(b, h, nb, bs, nb, bs)
    probs[:, :, :bs, :] = first
    probs[:, :, bs : 2 * bs, : 3 * bs] = second[..., : 3 * bs]
    probs[:, :, bs : 2 * bs, -bs:] = second[..., 3 * bs : 4 * bs]
    for head in range(h):
        grid[:, head, 1][:, :, torch.as_tensor(plan[head, 0])] = second[:, head, :, 4 * bs :].reshape(b, bs, r, bs)
    for row in range(nb - 4):
        grid[:, :, row + 2, :, row + 1 : row + 4, :] = middle[:, :, row, :, bs : 4 * bs].reshape(b, h, bs, 3, bs)
    probs[:, :, 2 * bs : -2 * bs, :bs] = middle[..., :bs].reshape(b, h, -1, bs)
    probs[:, :, 2 * bs : -2 * bs, -bs:] = middle[..., -bs:].reshape(b, h, -1, bs)
    for head in range(h):
        for row in range(1, nb - 3):
            values = middle[:, head, row - 1, :, 4 * bs : -bs].reshape(b, bs, r, bs)
            grid[:, head, row + 1][:, :, torch.as_tensor(plan[head, row])] = values
    probs[:, :, -2 * bs : -bs, :bs] = second_last[..., :bs]
    probs[:, :, -2 * bs : -bs, -3 * bs :] = second_last[..., bs : 4 * bs]
    for head in range(h):
        grid[:, head, nb - 2][:, :, torch.as_tensor(plan[head, -1])] = second_last[:, head, :, 4 * bs :].reshape(
            b, bs, r, bs
        )
    probs[:, :, -bs:, :] = last
    return probs
