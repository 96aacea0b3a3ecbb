"""The whole-model node: backbone, heads, losses and what a call returns."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from pydantic import Field, model_validator

from .base import Node
from .heads import Head, Loss, QuestionMask, loss_labels
from .layers import Backbone


# ------------------------------------------------------------------------------------------- model
class ModelGraph(Node):
    """A whole model: backbone, task heads, losses and the output fields it returns.

    ``expose`` lists the backbone outputs returned to the user (``last_hidden_state``,
    ``pooler_output``); the loss is the sum of ``losses`` and is computed only when every label they read
    is given.

    A graph whose self-attention is causal is a decoder (:attr:`is_decoder`): calls can return a KV cache
    (``past_key_values``) and continue from one. ``use_cache`` is whether they do when a call does not say
    (HF's ``config.use_cache``, which HF PyTorch applies to decoders only).
    """

    kind: Literal["model"] = "model"
    family: str
    task: str
    base_prefix: str  # where head models nest the base model (``bert``); ``backbone.path`` is '' for base
    backbone: Backbone
    heads: list[Head] = Field(default_factory=list)
    losses: list[Loss] = Field(default_factory=list)
    expose: tuple[str, ...] = ()
    multiple_choice: bool = False
    use_cache: bool = False
    # Node paths whose parameters HF Flax's class for this task lacks although HF PyTorch's has them
    # (BigBird's masked LM has no pooler in HF Flax): absent from a flax checkpoint, they are initialised.
    flax_absent: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _cache_needs_decoder(self) -> ModelGraph:
        if self.use_cache and not self.is_decoder:
            raise ValueError("use_cache=True needs a decoder: this graph's self-attention is not causal")
        return self

    @property
    def is_decoder(self) -> bool:
        """Whether self-attention is causal, so that the model can decode incrementally with a KV cache."""
        return any(layer.attention.attention.causal for layer in self.backbone.encoder.layers)

    @property
    def has_cross_attention(self) -> bool:
        """Whether layers can attend to the states of a separate encoder (``encoder_hidden_states``)."""
        return any(layer.crossattention is not None for layer in self.backbone.encoder.layers)

    def label_names(self) -> tuple[str, ...]:
        """Every label keyword argument the task's losses read."""
        names: list[str] = []
        for loss in self.losses:
            names.extend(n for n in loss_labels(loss) if n not in names)
        return tuple(names)

    def extra_inputs(self) -> tuple[str, ...]:
        """Task-specific keyword inputs besides the labels, as the heads declare them."""
        names: list[str] = []
        for head in self.heads:
            names.extend(n for n in head.extra_inputs() if n not in names)
        return tuple(names)

    def outputs(self) -> dict[str, tuple[bool, int]]:
        """Every head output's name -> (whether it has one row per token, its last-axis size)."""
        return {name: size for head in self.heads for name, size in head.outputs().items()}

    def question_mask(self) -> QuestionMask | None:
        """The question mask of a span head that has one (question tokens cannot be answers)."""
        return next((q for h in self.heads if (q := getattr(h, "question_mask", None)) is not None), None)

    def loss_terms(self, given: Collection[str]) -> list[Loss]:
        """The loss terms to sum for a call given these labels: none unless every required label is given;
        optional terms only when their own labels are given too."""
        required = [t for t in self.losses if not getattr(t, "optional", False)]
        if not required or not all(n in given for t in required for n in loss_labels(t)):
            return []
        return [t for t in self.losses if all(n in given for n in loss_labels(t))]
