"""RoBERTa: BERT's encoder with fairseq's position ids, no token types in practice, and its own heads.

The same graph serves XLM-RoBERTa and CamemBERT (HF copies the modules under other names and keeps the
``roberta`` prefix) and, with pre-LN layers, RoBERTa-PreLayerNorm: :func:`roberta_tasks` makes a task table
for a family's HF class-name prefix and :func:`roberta_backbone` its backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import model_validator

from ..nodes import (
    Backbone,
    ClassificationHead,
    ClassificationLoss,
    LayerNorm,
    LMHead,
    ModelGraph,
    Pooler,
    SkipPaddingPositions,
    TransformerLayer,
    join,
)
from . import bert
from .common import CLASSES_AXES, embeddings, layer_stack, linear, lm_head
from .tasks import Task, TaskHeads, base_heads, build_task_graph, causal_lm_heads, masked_lm_heads, shared_heads


class RobertaConfig(bert.BertConfig):
    """HF ``RobertaConfig``: BERT's fields; HF's defaults (``vocab_size`` 50265, ``pad_token_id`` 1).

    Released checkpoints set ``type_vocab_size=1``, ``max_position_embeddings=514`` and ``layer_norm_eps=1e-5``
    in their ``config.json``; the class defaults are HF's, which are BERT's.
    """

    model_type: ClassVar[str] = "roberta"

    vocab_size: int = 50265
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2

    @model_validator(mode="after")
    def _check_roberta(self) -> RobertaConfig:
        if self.pad_token_id is None:
            raise ValueError(
                "pad_token_id=None is not supported: RoBERTa counts position ids from pad_token_id + 1 "
                "(HF fails on it too)"
            )
        if self.pad_token_id >= self.max_position_embeddings:
            raise ValueError(
                f"pad_token_id={self.pad_token_id} must be a row of the position table "
                f"(max_position_embeddings={self.max_position_embeddings}): it is the padding row of both tables"
            )
        return self


# A layer of the family's encoder: (config, index) -> TransformerLayer.
LayerFactory = Callable[[Any, int], TransformerLayer]


def roberta_backbone(layer: LayerFactory = bert._layer, final_norm: bool = False) -> Callable[..., Backbone]:
    """The backbone builder ``(config, prefix, pooled) -> Backbone``: BERT's embeddings with fairseq's
    positions (pad row in both the word and the position table, default ids that skip padding), ``layer``'s
    encoder (BERT's post-LN layer by default), the encoder-level ``LayerNorm`` when ``final_norm``."""

    def build(config: RobertaConfig, prefix: str, pooled: bool) -> Backbone:
        h, std, eps = config.hidden_size, config.initializer_range, config.layer_norm_eps
        made = embeddings(
            vocab_size=config.vocab_size,
            max_positions=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            features=h,
            pad_token_id=config.pad_token_id,
            eps=eps,
            dropout=config.hidden_dropout_prob,
            std=std,
        )
        pad = config.pad_token_id
        made = made.model_copy(
            update={
                "position": made.position.model_copy(update={"padding_idx": pad}),
                "default_positions": SkipPaddingPositions(padding_idx=pad),
            }
        )
        return Backbone(
            path=prefix,
            embeddings=made,
            encoder=layer_stack([layer(config, i) for i in range(config.num_hidden_layers)]),
            final_norm=LayerNorm(path="LayerNorm", features=h, eps=eps) if final_norm else None,
            pooler=Pooler(path="pooler", dense=linear("dense", h, h, std), activation="tanh") if pooled else None,
        )

    return build


def _lm_head(config: RobertaConfig, prefix: str, output: str) -> LMHead:
    """HF's ``RobertaLMHead``: ``dense``, exact GELU whatever ``hidden_act`` says, ``layer_norm``, ``decoder``."""
    return lm_head(
        path="lm_head",
        transform_path="dense",
        norm_path="layer_norm",
        hidden=config.hidden_size,
        features=config.hidden_size,
        vocab_size=config.vocab_size,
        activation="gelu",
        eps=config.layer_norm_eps,
        std=config.initializer_range,
        tied_to=join(prefix, "embeddings.word_embeddings") if config.tie_word_embeddings else None,
        output=output,
    )


def _classifier_dropout(config: RobertaConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def _sequence_classification(config: RobertaConfig, prefix: str) -> TaskHeads:
    """HF's ``RobertaClassificationHead`` on the ``<s>`` token: dense, tanh, ``out_proj`` (no pooler)."""
    h, std = config.hidden_size, config.initializer_range
    head = ClassificationHead(
        path="classifier",
        dropout=_classifier_dropout(config),
        dense=linear("dense", h, h, std),
        activation="tanh",
        out_proj=linear("out_proj", h, config.num_labels, std, axes=CLASSES_AXES),
        output="logits",
    )
    loss = ClassificationLoss(
        logits="logits", labels="labels", num_labels=config.num_labels, problem_type=config.problem_type
    )
    return TaskHeads([head], [loss])


def roberta_tasks(name: str) -> dict[str, Task]:
    """The task table of a RoBERTa-graph family whose HF classes are ``{name}Model``, ``{name}ForMaskedLM``...
    Only multiple choice (and the bare model) keep the pooler, as in HF PyTorch and HF Flax."""
    return {
        "base": Task(f"{name}Model", base_heads),
        "masked_lm": Task(f"{name}ForMaskedLM", masked_lm_heads(_lm_head), pooled=False),
        "causal_lm": Task(f"{name}ForCausalLM", causal_lm_heads(_lm_head), pooled=False),
        "sequence_classification": Task(f"{name}ForSequenceClassification", _sequence_classification, pooled=False),
        # HF: dropout hidden_dropout_prob, not classifier_dropout, before the multiple-choice classifier
        "multiple_choice": Task(
            f"{name}ForMultipleChoice", shared_heads("multiple_choice", lambda config: config.hidden_dropout_prob)
        ),
        "token_classification": Task(
            f"{name}ForTokenClassification",
            shared_heads("token_classification", _classifier_dropout),
            pooled=False,
        ),
        "question_answering": Task(
            f"{name}ForQuestionAnswering", shared_heads("question_answering", lambda config: 0.0), pooled=False
        ),
    }


TASKS: dict[str, Task] = roberta_tasks("Roberta")


def build_roberta(config: RobertaConfig, task: str) -> ModelGraph:
    """Compile a :class:`RobertaConfig` and a task name into the layer graph of HF's matching class."""
    use_cache = config.use_cache and config.is_decoder
    return build_task_graph("roberta", TASKS, config, task, "roberta", roberta_backbone(), use_cache=use_cache)
