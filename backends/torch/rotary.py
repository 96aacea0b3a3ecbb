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
    projection (run by ``project``), or its rows of the fused ``qkv`` (:attr:`~tandem.core.nodes.Attention.
    qkv_layout`); plus the attention's own bias for the part when it has one."""
    proj = getattr(node, part)
    y = _fused_part(node, part, path, x, ctx.params) if proj is None else project(proj, n.join(path, proj.path), x, ctx)
    if part in node.part_biases:
        y = y + ctx.params[n.join(path, n.PART_BIAS_NAMES[part])]
    return y


def _fused_part(node: n.Attention, part: str, path: str, x: Tensor, params: Any) -> Tensor:
    """Rows ``[i * H, (i + 1) * H)`` of the fused ``qkv`` (``"blocks"``: HF's ``view(..., 3, heads, head_dim)``)
    or, per head, its ``i``-th ``head_dim`` rows of ``3 * head_dim`` (``"per_head"``)."""
    fused, index = node.qkv, _PARTS.index(part)
    h, d = node.num_heads, node.head_dim
    weight = params[n.join(path, fused.path, "weight")]
    bias = params[n.join(path, fused.path, "bias")] if fused.bias else None
    if node.qkv_layout == "per_head":
        weight = weight.view(h, 3, d, -1)[:, index].reshape(h * d, -1)
        bias = None if bias is None else bias.view(h, 3, d)[:, index].reshape(h * d)
    else:
        rows = slice(index * h * d, (index + 1) * h * d)
        weight, bias = weight[rows], None if bias is None else bias[rows]
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
