"""Loss terms in torch, one function per loss kind: HF PyTorch's formulas in HF's dtypes (cross-entropy in the
logits' dtype; regression and BCE in float32, as torch promotes the logits to the float32 labels)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core import nodes as n


def _cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index)


def cross_entropy_loss(term: n.CrossEntropyLoss, path: str, outputs: Mapping, labels: Mapping, ctx: Any) -> Tensor:
    logits, target = outputs[term.logits], labels[term.labels]
    if term.shift:  # position t predicts token t + 1
        logits, target = logits[:, :-1], target[:, 1:]
    return _cross_entropy(logits, target, term.ignore_index)


def classification_loss(term: n.ClassificationLoss, path: str, outputs: Mapping, labels: Mapping, ctx: Any) -> Tensor:
    """HF's sequence-classification loss for the problem type the call plan resolved."""
    logits, target = outputs[term.logits], labels[term.labels]
    if term.problem_type == "regression":
        if term.num_labels == 1:
            return F.mse_loss(logits.reshape(-1).float(), target.reshape(-1).to(torch.float32))
        return F.mse_loss(logits.float(), target.to(torch.float32))
    if term.problem_type == "single_label_classification":
        return _cross_entropy(logits, target.long(), -100)
    if term.problem_type == "soft_label_classification":
        return -(F.log_softmax(logits.float(), dim=-1) * target.to(torch.float32)).sum(-1).mean()
    return F.binary_cross_entropy_with_logits(logits.float(), target.to(torch.float32))


def span_loss(term: n.SpanLoss, path: str, outputs: Mapping, labels: Mapping, ctx: Any) -> Tensor:
    start, end = outputs[term.start_logits], outputs[term.end_logits]
    ignored = start.shape[1]
    total = []
    for logits, key in ((start, term.start_positions), (end, term.end_positions)):
        positions = labels[key]
        if positions.dim() > 1:
            positions = positions.reshape(-1)
        total.append(_cross_entropy(logits, positions.clamp(0, ignored), ignored))
    return (total[0] + total[1]) / 2


def binary_cross_entropy_loss(
    term: n.BinaryCrossEntropyLoss, path: str, outputs: Mapping, labels: Mapping, ctx: Any
) -> Tensor:
    """Over the positions whose attention mask is 1 (HF selects them, then averages), else over all."""
    logits = outputs[term.logits].float()
    target = labels[term.labels].reshape(logits.shape).to(torch.float32)
    mask = labels.get(n.ATTENTION_MASK)
    if mask is None:
        return F.binary_cross_entropy_with_logits(logits, target)
    active = mask[:, -logits.shape[1] :] == 1  # the positions of this call
    return F.binary_cross_entropy_with_logits(logits[active], target[active])


LOSSES: dict[type, Callable[..., Any]] = {
    n.CrossEntropyLoss: cross_entropy_loss,
    n.ClassificationLoss: classification_loss,
    n.SpanLoss: span_loss,
    n.BinaryCrossEntropyLoss: binary_cross_entropy_loss,
}
