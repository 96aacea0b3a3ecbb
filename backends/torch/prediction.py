"""The transform-and-classify head (``PredictionHead``): pooling, dense, activation, norm, classifier."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...core import nodes as n
from ...core.call import HeadInputs


def pool(pooling: str, x: Tensor, mask: Tensor | None) -> Tensor:
    """(B, S, H) -> (B, H) as the node says (``none``: x as it is); ``mask`` (B, S), None for all ones."""
    if pooling == "none":
        return x
    if pooling == "first" or (pooling == "first_unmasked" and mask is None):
        return x[:, 0]
    if pooling == "first_unmasked":
        first = mask.argmax(dim=-1)  # the first kept position, 0 when none (HF's argmax)
        return x[torch.arange(x.shape[0], device=x.device), first]
    m = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device) if mask is None else mask.to(x.dtype)
    return (x * m[..., None]).sum(dim=1) / m.sum(dim=1, keepdim=True)


def prediction_head(node: n.PredictionHead, path: str, inputs: HeadInputs, ctx: Any) -> Tensor:
    from . import nodes  # the registry that lists this function: imported at call time

    y = pool(node.pooling, inputs.sequence, inputs.mask)
    y = nodes.ACTIVATIONS[node.activation](nodes.linear(node.dense, n.join(path, node.dense.path), y, ctx))
    y = nodes.dropout(nodes.layer_norm(node.norm, n.join(path, node.norm.path), y, ctx), node.dropout, ctx)
    return nodes.linear(node.classifier, n.join(path, node.classifier.path), y, ctx)
