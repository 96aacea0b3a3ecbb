"""ALBERT: factorised embeddings and layer groups shared across the depth, as one spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import model_validator

from ..config import FamilyConfig
from ..nodes import (
    AddNorm,
    Attention,
    AttentionBlock,
    Backbone,
    CrossEntropyLoss,
    DenseHead,
    Encoder,
    FullAttention,
    LayerNorm,
    LMHead,
    ModelGraph,
    Pooler,
    TransformerLayer,
    join,
    score_divisor,
)
from .common import CLASSES_AXES, MLP_IN_AXES, QKV_AXES, check_absolute_positions, embeddings, linear, lm_head
from .tasks import Task, TaskHeads, base_heads, build_task_graph, masked_lm_heads, shared_heads


class AlbertConfig(FamilyConfig):
    """HF ``AlbertConfig``: same field names, same defaults (which are albert-xxlarge's)."""

    model_type: ClassVar[str] = "albert"
    positive_fields: ClassVar[tuple[str, ...]] = (
        *FamilyConfig.positive_fields,
        "embedding_size",
        "num_hidden_groups",
        "inner_group_num",
    )
    dropout_fields: ClassVar[tuple[str, ...]] = (*FamilyConfig.dropout_fields, "classifier_dropout_prob")

    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 512
    classifier_dropout_prob: float | None = 0.1
    position_embedding_type: Literal["absolute", "relative_key", "relative_key_query"] = "absolute"
    bos_token_id: int | None = 2
    eos_token_id: int | None = 3

    @model_validator(mode="after")
    def _check_albert(self) -> AlbertConfig:
        check_absolute_positions(self)
        if self.num_hidden_groups > self.num_hidden_layers:
            raise ValueError(
                f"num_hidden_groups ({self.num_hidden_groups}) must not exceed num_hidden_layers "
                f"({self.num_hidden_layers}): some groups would never run"
            )
        return self


def group_of_layer(layer: int, num_layers: int, num_groups: int) -> int:
    """HF's group index: float division, then truncation (exact for layers not divisible by groups)."""
    return int(layer / (num_layers / num_groups))


def _albert_layer(config: AlbertConfig, group: int, inner: int) -> TransformerLayer:
    h, i, std, eps = config.hidden_size, config.intermediate_size, config.initializer_range, config.layer_norm_eps
    return TransformerLayer(
        path=f"albert_layer_groups.{group}.albert_layers.{inner}",
        attention=AttentionBlock(
            path="attention",
            attention=Attention(
                path="",
                query=linear("query", h, h, std, axes=QKV_AXES),
                key=linear("key", h, h, std, axes=QKV_AXES),
                value=linear("value", h, h, std, axes=QKV_AXES),
                num_heads=config.num_attention_heads,
                head_dim=config.head_dim,
                score_divisor=score_divisor(config.head_dim),
                dropout=config.attention_probs_dropout_prob,
                mask_fill="dtype_min",
                variant=FullAttention(),
            ),
            output=AddNorm(
                path="",
                dense=linear("dense", h, h, std, axes=("heads", "embed")),
                dropout=config.hidden_dropout_prob,
                norm=LayerNorm(path="LayerNorm", features=h, eps=eps),
            ),
        ),
        intermediate=linear("ffn", h, i, std, axes=MLP_IN_AXES),
        activation=config.hidden_act,
        # HF PyTorch applies no dropout to the FFN output (HF Flax does: TRAP-1); we follow PyTorch.
        output=AddNorm(
            path="",
            dense=linear("ffn_output", i, h, std, axes=("mlp", "embed")),
            dropout=0.0,
            norm=LayerNorm(path="full_layer_layer_norm", features=h, eps=eps),
        ),
    )


def _encoder(config: AlbertConfig) -> Encoder:
    layers_total, groups, inner = config.num_hidden_layers, config.num_hidden_groups, config.inner_group_num
    # Each group's layers appear once; the schedule references them at every step that runs the group.
    layers = [_albert_layer(config, g, j) for g in range(groups) for j in range(inner)]
    per_group = int(layers_total / groups)  # HF's head-mask slice width
    schedule, head_rows = [], []
    for step in range(layers_total):
        g = group_of_layer(step, layers_total, groups)
        schedule.append(tuple(g * inner + j for j in range(inner)))
        # HF slices head_mask[g*per_group:(g+1)*per_group] and gives inner layer j row j of the slice.
        head_rows.append(tuple(g * per_group + j if j < per_group else None for j in range(inner)))
    return Encoder(
        path="encoder",
        input_projection=linear(
            "embedding_hidden_mapping_in",
            config.embedding_size,
            config.hidden_size,
            config.initializer_range,
            axes=("embed_factor", "embed"),
        ),
        layers=layers,
        schedule=schedule,
        head_mask_index=head_rows,
        num_head_mask_rows=layers_total,
    )


def _lm_head(config: AlbertConfig, prefix: str, output: str) -> LMHead:
    return lm_head(
        path="predictions",
        transform_path="dense",
        norm_path="LayerNorm",
        hidden=config.hidden_size,
        features=config.embedding_size,
        vocab_size=config.vocab_size,
        activation=config.hidden_act,
        eps=config.layer_norm_eps,
        std=config.initializer_range,
        tied_to=join(prefix, "embeddings.word_embeddings") if config.tie_word_embeddings else None,
        output=output,
        axis="embed_factor",
    )


def _pretraining(config: AlbertConfig, prefix: str) -> TaskHeads:
    h, std = config.hidden_size, config.initializer_range
    sop = linear("sop_classifier.classifier", h, config.num_labels, std, axes=CLASSES_AXES)
    return TaskHeads(
        [
            _lm_head(config, prefix, "prediction_logits"),
            DenseHead(
                source="pooled",
                dropout=_required(config.classifier_dropout_prob, "pretraining"),
                dense=sop,
                output="sop_logits",
            ),
        ],
        [
            CrossEntropyLoss(logits="prediction_logits", labels="labels"),
            CrossEntropyLoss(logits="sop_logits", labels="sentence_order_label"),
        ],
    )


def _required_dropout(task: str) -> Callable[[AlbertConfig], float]:
    """HF PyTorch uses classifier_dropout_prob with no fallback for sequence classification and multiple choice."""
    return lambda config: _required(config.classifier_dropout_prob, task)


def _token_dropout(config: AlbertConfig) -> float:
    dropout = config.classifier_dropout_prob
    return dropout if dropout is not None else config.hidden_dropout_prob


TASKS: dict[str, Task] = {
    "base": Task("AlbertModel", base_heads),
    "pretraining": Task("AlbertForPreTraining", _pretraining),
    "masked_lm": Task("AlbertForMaskedLM", masked_lm_heads(_lm_head), pooled=False),
    "sequence_classification": Task(
        "AlbertForSequenceClassification",
        shared_heads("sequence_classification", _required_dropout("sequence_classification")),
    ),
    "multiple_choice": Task(
        "AlbertForMultipleChoice", shared_heads("multiple_choice", _required_dropout("multiple_choice"))
    ),
    "token_classification": Task(
        "AlbertForTokenClassification", shared_heads("token_classification", _token_dropout), pooled=False
    ),
    "question_answering": Task(
        "AlbertForQuestionAnswering", shared_heads("question_answering", lambda config: 0.0), pooled=False
    ),
}


def _backbone(config: AlbertConfig, prefix: str, pooled: bool) -> Backbone:
    h, std = config.hidden_size, config.initializer_range
    return Backbone(
        path=prefix,
        embeddings=embeddings(
            vocab_size=config.vocab_size,
            max_positions=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            features=config.embedding_size,
            pad_token_id=config.pad_token_id,
            eps=config.layer_norm_eps,
            dropout=config.hidden_dropout_prob,
            std=std,
            axis="embed_factor",
        ),
        encoder=_encoder(config),
        # ALBERT's pooler is a bare Linear at `albert.pooler` (no `.dense`).
        pooler=Pooler(path="pooler", dense=linear("", h, h, std)) if pooled else None,
    )


def build_albert(config: AlbertConfig, task: str) -> ModelGraph:
    """Compile an :class:`AlbertConfig` and a task name into the layer graph of HF's matching class."""
    return build_task_graph("albert", TASKS, config, task, "albert", _backbone)


def _required(dropout: float | None, task: str) -> float:
    if dropout is None:
        raise ValueError(f"albert {task} needs classifier_dropout_prob (HF PyTorch has no fallback for it)")
    return dropout
