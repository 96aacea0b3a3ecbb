"""Loss terms in JAX, one function per loss kind: HF PyTorch's formulas in HF's dtypes (computed in float32,
as torch's kernels accumulate; cross-entropy returned in the logits' dtype as torch's, regression and BCE in
float32, as torch promotes the logits to the float32 labels)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ...core import nodes as n

Array = jax.Array


def _cross_entropy(logits: Array, labels: Array, ignore_index: int) -> Array:
    """Mean cross-entropy over labels != ignore_index (NaN when all are ignored, as torch)."""
    dtype = logits.dtype
    logits = logits.reshape(-1, logits.shape[-1]).astype(jnp.float32)
    labels = labels.reshape(-1)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
    return (jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)).astype(dtype)


def cross_entropy_loss(term: n.CrossEntropyLoss, path: str, outputs: Mapping, labels: Mapping, ctx: Any) -> Array:
    logits, target = outputs[term.logits], labels[term.labels]
    if term.shift:  # position t predicts token t + 1
        logits, target = logits[:, :-1], target[:, 1:]
    return _cross_entropy(logits, target, term.ignore_index)


def classification_loss(term: n.ClassificationLoss, path: str, outputs: Mapping, labels: Mapping, ctx: Any) -> Array:
    """HF's sequence-classification loss for the problem type the call plan resolved."""
    logits, target = outputs[term.logits], labels[term.labels]
    if term.problem_type == "single_label_classification":
        return _cross_entropy(logits, target.astype(jnp.int32), -100)
    if term.problem_type == "soft_label_classification":
        return -(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1) * target.astype(jnp.float32)).sum(-1).mean()
    logits = logits.astype(jnp.float32)
    if term.problem_type == "regression":
        target = target.astype(jnp.float32)
        if term.num_labels == 1:
            return jnp.mean((logits.reshape(-1) - target.reshape(-1)) ** 2)
        return jnp.mean((logits - target) ** 2)
    return jnp.mean(_binary_cross_entropy(logits, target.astype(jnp.float32)))


def _binary_cross_entropy(logits: Array, target: Array) -> Array:
    """Per-entry BCE-with-logits in the stable form torch uses: max(x, 0) - x*y + log(1 + exp(-|x|))."""
    return jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def binary_cross_entropy_loss(
    term: n.BinaryCrossEntropyLoss, path: str, outputs: Mapping, labels: Mapping, ctx: Any
) -> Array:
    """Over the positions whose attention mask is 1 (NaN when there are none, as torch), else over all."""
    logits = outputs[term.logits].astype(jnp.float32)
    losses = _binary_cross_entropy(logits, labels[term.labels].reshape(logits.shape).astype(jnp.float32))
    mask = labels.get(n.ATTENTION_MASK)
    if mask is None:
        return jnp.mean(losses)
    active = mask[:, -logits.shape[1] :] == 1  # the positions of this call
    return jnp.sum(jnp.where(active, losses, 0.0)) / jnp.sum(active)


def span_loss(term: n.SpanLoss, path: str, outputs: Mapping, labels: Mapping, ctx: Any) -> Array:
    start, end = outputs[term.start_logits], outputs[term.end_logits]
    ignored = start.shape[1]
    total = []
    for logits, key in ((start, term.start_positions), (end, term.end_positions)):
        positions = labels[key]
        if positions.ndim > 1:
            positions = positions.reshape(-1)
        total.append(_cross_entropy(logits, jnp.clip(positions, 0, ignored), ignored))
    return (total[0] + total[1]) / 2


LOSSES: dict[type, Callable[..., Any]] = {
    n.CrossEntropyLoss: cross_entropy_loss,
    n.ClassificationLoss: classification_loss,
    n.SpanLoss: span_loss,
    n.BinaryCrossEntropyLoss: binary_cross_entropy_loss,
}
