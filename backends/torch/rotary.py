"""Rotary position embeddings and the fused query/key/value projection, for any attention node that has them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core import nodes as n

_PARTS = ("query", "key", "value")


def project_part(
    node: n.Attention, part: str, path: str, x: Tensor, ctx: Any, project: Callable[..., Tensor]
) -> Tensor:
    """The ``part`` (query, key or value) of the attention at ``path`` applied to ``x``, (B, S, H): its own
    projection (run by ``project``), or rows ``[i * H, (i + 1) * H)`` of the fused ``qkv`` (HF's
    ``view(..., 3, heads, head_dim)``)."""
    proj = getattr(node, part)
    if proj is not None:
        return project(proj, n.join(path, proj.path), x, ctx)
    params, fused = ctx.params, node.qkv
    width = node.num_heads * node.head_dim
    rows = slice(_PARTS.index(part) * width, (_PARTS.index(part) + 1) * width)
    weight = params[n.join(path, fused.path, "weight")][rows]
    bias = params[n.join(path, fused.path, "bias")][rows] if fused.bias else None
    return F.linear(x, weight, bias)


def rotate(node: n.Attention, part: str, x: Tensor, positions: Tensor | None) -> Tensor:
    """Queries and keys (B, h, S, d) rotated by their positions (B, S) when the node has rotary embeddings,
    as HF PyTorch: float32 ``inv_freq = 1 / theta ** (arange(0, d, 2) / d)``, ``x cos + rotate_half(x) sin``."""
    if node.rotary is None or part == "value":
        return x
    d = node.head_dim
    inv_freq = 1.0 / (node.rotary.theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float) / d))
    freqs = positions.to(torch.float)[..., None] * inv_freq.to(x.device)  # (B, S, d/2): one rounding, as HF's
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, S, d)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    half = torch.cat((-x[..., d // 2 :], x[..., : d // 2]), dim=-1)
    return x * cos + half * sin
