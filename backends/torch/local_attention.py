"""Sliding-window attention: the window mask of the full computation, and the banded kernel that computes
only the band (linear in the length) with the same numbers."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core import nodes as n


def window_bias(node: n.Attention, bias: Tensor, query_len: int) -> Tensor:
    """The (B, 1, Sq, Sk) bias of a sliding-window node: ``bias`` with every key farther than the half width
    from its query set to the fill value (HF PyTorch's ``masked_fill``); other variants' bias as it is."""
    if not isinstance(node.variant, n.SlidingWindowAttention):
        return bias
    key_len = bias.shape[-1]
    rows = torch.arange(query_len, device=bias.device)[:, None] + (key_len - query_len)
    far = (rows - torch.arange(key_len, device=bias.device)[None, :]).abs() > node.variant.half_width
    return bias.expand(-1, -1, query_len, -1).masked_fill(far, torch.finfo(bias.dtype).min)


def banded_attention(
    node: n.Attention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, p_drop: float, output_attentions: bool
) -> Tensor | None:
    """Sliding-window attention over the band only, (B, S, h * d); None when the full computation runs instead
    (shorter than ``band_min_length``, attention maps asked for, or keys that are not the queries' own).

    Blocks of ``w = half_width`` positions: block ``i``'s queries read blocks ``i - 1 .. i + 1`` (3w keys,
    enough for ``|i - j| <= w``), with HF's additive mask on keys in the window and the fill value on the
    others, so each row's softmax is the full one's restricted to the keys it weighs. Rows whose window holds
    no unmasked key get the mean of all values: the full computation's uniform weights over all keys.
    """
    variant = node.variant
    b, h, s, d = q.shape
    if output_attentions or s < variant.band_min_length or k.shape[2] != s:
        return None
    w = max(variant.half_width, 1)
    blocks = -(-s // w)
    pad = blocks * w - s
    fill = torch.finfo(q.dtype).min
    qb = F.pad(q, (0, 0, 0, pad)).view(b, h, blocks, w, d)
    kb = F.pad(k, (0, 0, w, pad + w)).unfold(2, 3 * w, w)  # (B, h, blocks, d, 3w)
    vb = F.pad(v, (0, 0, w, pad + w)).unfold(2, 3 * w, w)
    keep = F.pad(mask.to(q.dtype), (w, pad + w)).unfold(1, 3 * w, w)  # (B, blocks, 3w): keys' mask values
    query_pos = torch.arange(blocks * w, device=q.device).view(blocks, w, 1)
    key_pos = torch.arange(-w, (blocks + 1) * w, device=q.device).unfold(0, 3 * w, w)[:, None, :]  # (blocks, 1, 3w)
    window = ((query_pos - key_pos).abs() <= variant.half_width) & (key_pos >= 0) & (key_pos < s)  # (blocks, w, 3w)
    bias = torch.where(window, ((1.0 - keep) * fill)[:, :, None, :], fill)  # (B, blocks, w, 3w)
    scores = torch.matmul(qb, kb) / node.score_divisor + bias[:, None]  # (B, h, blocks, w, 3w)
    probs = torch.softmax(scores, dim=-1)
    probs = F.dropout(probs, p_drop, training=True) if p_drop > 0 else probs
    context = torch.matmul(probs, vb.transpose(-1, -2)).view(b, h, blocks * w, d)[:, :, :s]
    alive = (window & (keep[:, :, None, :] != 0)).any(-1).view(b, 1, blocks * w, 1)[:, :, :s]
    uniform = v.mean(dim=2, keepdim=True)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        uniform = uniform + _uniform_weights_grad(q, k, v, node.score_divisor)
    context = torch.where(alive, context, uniform)
    return context.transpose(1, 2).reshape(b, s, h * d)


def _uniform_weights_grad(q: Tensor, k: Tensor, v: Tensor, divisor: float) -> Tensor:
    """Zero (B, h, S, d), whose gradient is the full computation's for q and k in a row with uniform weights
    over all S keys (every score at the fill value): softmax's derivative there, ``(1/S) sum_j ds_j (v_j -
    mean v)`` with ``ds_j = q . dk_j + dq . k_j``, over a (d, d) moment, so linear in S. The values' gradient
    comes from the mean itself."""
    centred = (v - v.mean(dim=2, keepdim=True)).detach()
    moment = torch.matmul(k.transpose(-1, -2), centred) / (k.shape[2] * divisor)  # (B, h, d, d)
    return _ZeroWithGradient.apply(torch.matmul(q, moment))


class _ZeroWithGradient(torch.autograd.Function):
    """Exact zeros (even where the input overflows) that pass the incoming gradient to the input unchanged."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad
