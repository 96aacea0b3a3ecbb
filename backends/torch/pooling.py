"""Sentence pooling over the sequence output, as sentence-transformers' ``Pooling`` and ``Normalize`` compute it."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core import nodes as n
from ...core.call import HeadInputs


def _pool(mode: str, h: Tensor, mask: Tensor) -> Tensor:
    """One mode's (B, H) vector from the sequence ``h`` (B, S, H) and the attention mask ``mask`` (B, S)."""
    weights = mask.to(h.dtype)[:, :, None]  # (B, S, 1)
    rows = torch.arange(h.shape[0], device=h.device)
    if mode == "cls":  # the first kept position (left padding included)
        return h[rows, mask.to(torch.int).argmax(dim=1)]
    if mode == "lasttoken":  # the last kept position; a row that keeps none reads position 0, zeroed
        found, back = mask.flip(1).max(dim=1)
        back = torch.where(found == 0, h.shape[1] - 1, back)
        return (h * weights)[rows, h.shape[1] - back - 1]
    if mode == "max":
        return h.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    if mode == "weightedmean":  # positions weighted 1..S
        weights = weights * torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)[None, :, None]
    total = (h * weights).sum(dim=1)  # (B, H)
    count = torch.clamp(weights.sum(dim=1), min=1e-9)  # (B, 1)
    return total / torch.sqrt(count) if mode == "mean_sqrt_len_tokens" else total / count


def sentence_pooling(node: n.SentencePooling, path: str, inputs: HeadInputs, ctx: Any) -> Tensor:
    """The modes' vectors concatenated, (B, H * modes), then unit length when ``node.normalize``."""
    out = torch.cat([_pool(mode, inputs.sequence, inputs.mask) for mode in node.modes], dim=-1)
    return F.normalize(out, p=2.0, dim=1, eps=1e-12) if node.normalize else out
