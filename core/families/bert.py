"""BERT: its config and its builder (config -> layer graph)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator

from ..config import FamilyConfig
from ..nodes import (
    AttentionBlock,
    Backbone,
    CrossEntropyLoss,
    DenseHead,
    FullAttention,
    LMHead,
    ModelGraph,
    Pooler,
    TransformerLayer,
    join,
)
from .common import (
    CLASSES_AXES,
    attention_block,
    check_absolute_positions,
    check_decoder_fields,
    config_layer,
    embeddings,
    layer_stack,
    linear,
    lm_head,
)
from .tasks import Task, TaskHeads, base_heads, build_task_graph, causal_lm_heads, masked_lm_heads, shared_heads


class BertConfig(FamilyConfig):
    """HF ``BertConfig``: same field names, same defaults."""

    model_type: ClassVar[str] = "bert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    position_embedding_type: Literal["absolute", "relative_key", "relative_key_query"] = "absolute"
    use_cache: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    classifier_dropout: float | None = None
    chunk_size_feed_forward: int = 0  # torch-only memory option; values are unchanged (up to GEMM ulps)

    @model_validator(mode="after")
    def _check_bert(self) -> BertConfig:
        check_absolute_positions(self)
        check_decoder_fields(self)
        return self


def _attention_block(config: BertConfig, path: str, source: Literal["self", "encoder"]) -> AttentionBlock:
    """``attention`` (self, causal in a decoder) or ``crossattention`` (keys/values from the encoder)."""
    return attention_block(
        path,
        features=config.hidden_size,
        num_heads=config.num_attention_heads,
        head_dim=config.head_dim,
        attention_dropout=config.attention_probs_dropout_prob,
        hidden_dropout=config.hidden_dropout_prob,
        eps=config.layer_norm_eps,
        std=config.initializer_range,
        variant=FullAttention(causal=config.is_decoder and source == "self"),
        source=source,
    )


def _layer(config: BertConfig, index: int) -> TransformerLayer:
    cross = _attention_block(config, "crossattention", "encoder") if config.add_cross_attention else None
    return config_layer(config, index, _attention_block(config, "attention", "self"), cross)


def _backbone(config: BertConfig, prefix: str, pooled: bool) -> Backbone:
    """``embeddings``, ``encoder`` and (``pooled``) ``pooler`` under ``prefix``."""
    h, std = config.hidden_size, config.initializer_range
    return Backbone(
        path=prefix,
        embeddings=embeddings(
            vocab_size=config.vocab_size,
            max_positions=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            features=h,
            pad_token_id=config.pad_token_id,
            eps=config.layer_norm_eps,
            dropout=config.hidden_dropout_prob,
            std=std,
        ),
        encoder=layer_stack([_layer(config, i) for i in range(config.num_hidden_layers)]),
        pooler=Pooler(path="pooler", dense=linear("dense", h, h, std), activation="tanh") if pooled else None,
    )


def _lm_head(config: BertConfig, prefix: str, output: str) -> LMHead:
    return lm_head(
        path="cls.predictions",
        transform_path="transform.dense",
        norm_path="transform.LayerNorm",
        hidden=config.hidden_size,
        features=config.hidden_size,
        vocab_size=config.vocab_size,
        activation=config.hidden_act,
        eps=config.layer_norm_eps,
        std=config.initializer_range,
        tied_to=join(prefix, "embeddings.word_embeddings") if config.tie_word_embeddings else None,
        output=output,
    )


def _pretraining(config: BertConfig, prefix: str) -> TaskHeads:
    nsp = linear("cls.seq_relationship", config.hidden_size, 2, config.initializer_range, axes=CLASSES_AXES)
    return TaskHeads(
        [
            _lm_head(config, prefix, "prediction_logits"),
            DenseHead(source="pooled", dropout=0.0, dense=nsp, output="seq_relationship_logits"),
        ],
        [
            CrossEntropyLoss(logits="prediction_logits", labels="labels"),
            CrossEntropyLoss(logits="seq_relationship_logits", labels="next_sentence_label"),
        ],
    )


def _next_sentence(config: BertConfig, prefix: str) -> TaskHeads:
    nsp = linear("cls.seq_relationship", config.hidden_size, 2, config.initializer_range, axes=CLASSES_AXES)
    return TaskHeads(
        [DenseHead(source="pooled", dropout=0.0, dense=nsp, output="logits")],
        [CrossEntropyLoss(logits="logits", labels="labels")],
    )


def _classifier_dropout(config: BertConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


# Heads that read the pooled output keep the pooler; the others do not have one (as in HF).
TASKS: dict[str, Task] = {
    "base": Task("BertModel", base_heads),
    "pretraining": Task("BertForPreTraining", _pretraining),
    "masked_lm": Task("BertForMaskedLM", masked_lm_heads(_lm_head), pooled=False),
    "next_sentence_prediction": Task("BertForNextSentencePrediction", _next_sentence),
    "sequence_classification": Task(
        "BertForSequenceClassification", shared_heads("sequence_classification", _classifier_dropout)
    ),
    "multiple_choice": Task("BertForMultipleChoice", shared_heads("multiple_choice", _classifier_dropout)),
    "token_classification": Task(
        "BertForTokenClassification", shared_heads("token_classification", _classifier_dropout), pooled=False
    ),
    "question_answering": Task(
        "BertForQuestionAnswering", shared_heads("question_answering", lambda config: 0.0), pooled=False
    ),
    "causal_lm": Task("BertLMHeadModel", causal_lm_heads(_lm_head), pooled=False, flax_class="FlaxBertForCausalLM"),
}


def build_bert(config: BertConfig, task: str) -> ModelGraph:
    """Compile a :class:`BertConfig` and a task name into the layer graph of HF's matching class."""
    return build_task_graph(
        "bert", TASKS, config, task, "bert", _backbone, use_cache=config.use_cache and config.is_decoder
    )
