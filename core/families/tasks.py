"""Task tables: each family lists its tasks once, as ``task -> Task`` (HF class names and a head factory).

A family builder is then ``build_task_graph(family, TASKS, config, task, backbone)``: the table says which
HF class a task is, whether the backbone keeps its pooler, and which heads and losses sit on top. Head
factories shared by several families live here; a family only writes the heads that are its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..nodes import Backbone, CrossEntropyLoss, Head, LMHead, Loss, ModelGraph, join
from .common import SHARED_TASKS, shared_task_head


@dataclass(frozen=True)
class TaskHeads:
    """What a task puts on the backbone: heads, the loss terms they feed, the backbone outputs returned."""

    heads: list[Head] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    expose: tuple[str, ...] = ()


# (config, base-model prefix) -> the task's heads; the prefix lets a tied decoder name the embedding.
HeadFactory = Callable[[Any, str], TaskHeads]


@dataclass(frozen=True)
class Task:
    """One task of a family: its HF PyTorch class, its head factory and whether it keeps the pooler.

    ``flax_class``: the HF Flax class name when it is not ``"Flax" + hf_class``; ``flax_lacks``: nodes
    (paths under the base model) that HF Flax's class does not have although HF PyTorch's does.
    """

    hf_class: str
    heads: HeadFactory
    pooled: bool = True
    flax_class: str | None = None
    flax_lacks: tuple[str, ...] = ()

    @property
    def hf_flax_class(self) -> str:
        return self.flax_class or "Flax" + self.hf_class


def base_heads(config: Any, prefix: str) -> TaskHeads:
    """The bare backbone: its sequence and pooled outputs."""
    return TaskHeads(expose=("last_hidden_state", "pooler_output"))


LMFactory = Callable[[Any, str, str], LMHead]  # (config, prefix, output name) -> the family's LM head


def masked_lm_heads(lm: LMFactory) -> HeadFactory:
    """Masked language modelling: the LM head and a cross-entropy over its logits."""
    return lambda config, prefix: TaskHeads(
        [lm(config, prefix, "logits")], [CrossEntropyLoss(logits="logits", labels="labels")]
    )


def causal_lm_heads(lm: LMFactory) -> HeadFactory:
    """Left-to-right language modelling: the LM head and a shifted cross-entropy (HF warns, and so do we,
    when the config is not a decoder)."""

    def heads(config: Any, prefix: str) -> TaskHeads:
        if not config.is_decoder:
            warnings.warn(
                "causal_lm with is_decoder=False attends in both directions and cannot use a KV cache; "
                "set is_decoder=True for a left-to-right language model (HF warns the same)",
                stacklevel=4,
            )
        loss = CrossEntropyLoss(logits="logits", labels="labels", shift=True)
        return TaskHeads([lm(config, prefix, "logits")], [loss])

    return heads


def shared_heads(task: str, dropout: Callable[[Any], float]) -> HeadFactory:
    """One of :data:`~tandem.core.families.common.SHARED_TASKS`; ``dropout(config)`` is the family's choice."""
    if task not in SHARED_TASKS:
        raise ValueError(f"{task!r} is not a shared task ({', '.join(SHARED_TASKS)})")

    def heads(config: Any, prefix: str) -> TaskHeads:
        built, losses = shared_task_head(
            task,
            hidden=config.hidden_size,
            num_labels=config.num_labels,
            problem_type=config.problem_type,
            std=config.initializer_range,
            dropout=dropout(config),
        )
        return TaskHeads(built, losses)

    return heads


def build_task_graph(
    family: str,
    tasks: dict[str, Task],
    config: Any,
    task: str,
    prefix: str,
    backbone: Callable[[Any, str, bool], Backbone],
    use_cache: bool = False,
) -> ModelGraph:
    """The graph of ``task``: the backbone (under ``prefix`` unless the task is ``base``) and the task's
    heads. ``backbone(config, path, pooled)`` builds the family's backbone; ``use_cache``: a decoder's
    default (HF's ``config.use_cache``)."""
    if task not in tasks:
        raise ValueError(f"unknown task {task!r} for {family}; choose one of {', '.join(tasks)}, sentence_embedding")
    spec = tasks[task]
    path = "" if task == "base" else prefix
    made = spec.heads(config, path)
    return ModelGraph(
        family=family,
        task=task,
        base_prefix=prefix,
        backbone=backbone(config, path, spec.pooled),
        heads=made.heads,
        losses=made.losses,
        expose=made.expose,
        multiple_choice=task == "multiple_choice",
        use_cache=use_cache,
        flax_absent=tuple(join(path, node) for node in spec.flax_lacks),
    )
