"""ALBERT: factorised embeddings and layer groups shared across the depth, as one spec."""

from __future__ import annotations

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
    Head,
    LayerNorm,
    LMHead,
    Loss,
    ModelGraph,
    Pooler,
    TransformerLayer,
    join,
    score_divisor,
)
from .common import embeddings, linear, lm_head, shared_task_head


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
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported: tandem implements "
                "absolute position embeddings only (HF Flax has no relative ones either)"
            )
        if self.num_hidden_groups > self.num_hidden_layers:
            raise ValueError(
                f"num_hidden_groups ({self.num_hidden_groups}) must not exceed num_hidden_layers "
                f"({self.num_hidden_layers}): some groups would never run"
            )
        return self


ARCHITECTURES = {
    "base": "AlbertModel",
    "pretraining": "AlbertForPreTraining",
    "masked_lm": "AlbertForMaskedLM",
    "sequence_classification": "AlbertForSequenceClassification",
    "multiple_choice": "AlbertForMultipleChoice",
    "token_classification": "AlbertForTokenClassification",
    "question_answering": "AlbertForQuestionAnswering",
}

_POOLED_TASKS = {"base", "pretraining", "sequence_classification", "multiple_choice"}


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
                query=linear("query", h, h, std),
                key=linear("key", h, h, std),
                value=linear("value", h, h, std),
                num_heads=config.num_attention_heads,
                head_dim=config.head_dim,
                score_divisor=score_divisor(config.head_dim),
                dropout=config.attention_probs_dropout_prob,
                mask_fill="dtype_min",
                variant=FullAttention(),
            ),
            output=AddNorm(
                path="",
                dense=linear("dense", h, h, std),
                dropout=config.hidden_dropout_prob,
                norm=LayerNorm(path="LayerNorm", features=h, eps=eps),
            ),
        ),
        intermediate=linear("ffn", h, i, std),
        activation=config.hidden_act,
        # HF PyTorch applies no dropout to the FFN output (HF Flax does: TRAP-1); we follow PyTorch.
        output=AddNorm(
            path="",
            dense=linear("ffn_output", i, h, std),
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
            "embedding_hidden_mapping_in", config.embedding_size, config.hidden_size, config.initializer_range
        ),
        layers=layers,
        schedule=schedule,
        head_mask_index=head_rows,
        num_head_mask_rows=layers_total,
    )


def build_albert(config: AlbertConfig, task: str) -> ModelGraph:
    """Compile an :class:`AlbertConfig` and a task name into the layer graph of HF's matching class."""
    if task not in ARCHITECTURES:
        raise ValueError(f"unknown task {task!r} for albert; choose one of {', '.join(ARCHITECTURES)}")
    prefix = "" if task == "base" else "albert"
    h, std = config.hidden_size, config.initializer_range
    classifier_dropout = config.classifier_dropout_prob
    heads: list[Head] = []
    losses: list[Loss] = []
    expose: tuple[str, ...] = ()

    def mlm(output: str) -> LMHead:
        return lm_head(
            path="predictions",
            transform_path="dense",
            norm_path="LayerNorm",
            hidden=h,
            features=config.embedding_size,
            vocab_size=config.vocab_size,
            activation=config.hidden_act,
            eps=config.layer_norm_eps,
            std=std,
            tied_to=join(prefix, "embeddings.word_embeddings") if config.tie_word_embeddings else None,
            output=output,
        )

    if task == "base":
        expose = ("last_hidden_state", "pooler_output")
    elif task == "pretraining":
        heads = [
            mlm("prediction_logits"),
            DenseHead(
                source="pooled",
                dropout=_required(classifier_dropout, task),
                dense=linear("sop_classifier.classifier", h, config.num_labels, std),
                output="sop_logits",
            ),
        ]
        losses = [
            CrossEntropyLoss(logits="prediction_logits", labels="labels"),
            CrossEntropyLoss(logits="sop_logits", labels="sentence_order_label"),
        ]
    elif task == "masked_lm":
        heads = [mlm("logits")]
        losses = [CrossEntropyLoss(logits="logits", labels="labels")]
    else:
        if task == "token_classification":
            dropout = classifier_dropout if classifier_dropout is not None else config.hidden_dropout_prob
        elif task == "question_answering":
            dropout = 0.0
        else:  # HF PyTorch uses classifier_dropout_prob with no fallback for these two
            dropout = _required(classifier_dropout, task)
        heads, losses = shared_task_head(
            task, hidden=h, num_labels=config.num_labels, problem_type=config.problem_type, std=std, dropout=dropout
        )
    return ModelGraph(
        family="albert",
        task=task,
        backbone=Backbone(
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
            ),
            encoder=_encoder(config),
            # ALBERT's pooler is a bare Linear at `albert.pooler` (no `.dense`).
            pooler=Pooler(path="pooler", dense=linear("", h, h, std)) if task in _POOLED_TASKS else None,
        ),
        heads=heads,
        losses=losses,
        expose=expose,
        multiple_choice=task == "multiple_choice",
    )


def _required(dropout: float | None, task: str) -> float:
    if dropout is None:
        raise ValueError(f"albert {task} needs classifier_dropout_prob (HF PyTorch has no fallback for it)")
    return dropout
