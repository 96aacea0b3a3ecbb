"""BERT: its config and its builder (config -> layer graph)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator

from ..config import FamilyConfig
from ..nodes import (
    AddNorm,
    Attention,
    AttentionBlock,
    Backbone,
    ClassificationLoss,
    CrossEntropyLoss,
    DenseHead,
    Embed,
    Embeddings,
    Encoder,
    FullAttention,
    Head,
    LayerNorm,
    Linear,
    LMDecoder,
    LMHead,
    Loss,
    ModelGraph,
    Pooler,
    SpanLoss,
    TransformerLayer,
    join,
    score_divisor,
)


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
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported: tandem implements "
                "absolute position embeddings only (HF Flax has no relative ones either)"
            )
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        if self.add_cross_attention:
            raise ValueError(
                "add_cross_attention=True is not supported yet: cross-attention layers are not implemented"
            )
        return self


ARCHITECTURES = {
    "base": "BertModel",
    "pretraining": "BertForPreTraining",
    "masked_lm": "BertForMaskedLM",
    "next_sentence_prediction": "BertForNextSentencePrediction",
    "sequence_classification": "BertForSequenceClassification",
    "multiple_choice": "BertForMultipleChoice",
    "token_classification": "BertForTokenClassification",
    "question_answering": "BertForQuestionAnswering",
}

# Heads that read the pooled output build the pooler; the others do not have one (as in HF).
_POOLED_TASKS = {"base", "pretraining", "next_sentence_prediction", "sequence_classification", "multiple_choice"}


def _linear(config: BertConfig, path: str, n_in: int, n_out: int) -> Linear:
    return Linear(path=path, in_features=n_in, out_features=n_out, init_std=config.initializer_range)


def _layer_norm(config: BertConfig, path: str) -> LayerNorm:
    return LayerNorm(path=path, features=config.hidden_size, eps=config.layer_norm_eps)


def _layer(config: BertConfig, index: int) -> TransformerLayer:
    h, i = config.hidden_size, config.intermediate_size
    attention = Attention(
        path="self",
        query=_linear(config, "query", h, h),
        key=_linear(config, "key", h, h),
        value=_linear(config, "value", h, h),
        num_heads=config.num_attention_heads,
        head_dim=config.head_dim,
        score_divisor=score_divisor(config.head_dim),
        dropout=config.attention_probs_dropout_prob,
        mask_fill="dtype_min",
        variant=FullAttention(causal=config.is_decoder),
    )
    return TransformerLayer(
        path=f"layer.{index}",
        attention=AttentionBlock(
            path="attention",
            attention=attention,
            output=AddNorm(
                path="output",
                dense=_linear(config, "dense", h, h),
                dropout=config.hidden_dropout_prob,
                norm=_layer_norm(config, "LayerNorm"),
            ),
        ),
        intermediate=_linear(config, "intermediate.dense", h, i),
        activation=config.hidden_act,
        output=AddNorm(
            path="output",
            dense=_linear(config, "dense", i, h),
            dropout=config.hidden_dropout_prob,
            norm=_layer_norm(config, "LayerNorm"),
        ),
    )


def _backbone(config: BertConfig, prefix: str, pooled: bool) -> Backbone:
    h = config.hidden_size
    std = config.initializer_range
    layers = config.num_hidden_layers
    return Backbone(
        path=prefix,
        embeddings=Embeddings(
            path="embeddings",
            word=Embed(
                path="word_embeddings",
                num_embeddings=config.vocab_size,
                features=h,
                init_std=std,
                padding_idx=config.pad_token_id,
            ),
            position=Embed(
                path="position_embeddings", num_embeddings=config.max_position_embeddings, features=h, init_std=std
            ),
            token_type=Embed(
                path="token_type_embeddings", num_embeddings=config.type_vocab_size, features=h, init_std=std
            ),
            norm=_layer_norm(config, "LayerNorm"),
            dropout=config.hidden_dropout_prob,
            sum_order=("word", "token_type", "position"),
        ),
        encoder=Encoder(
            path="encoder",
            layers=[_layer(config, i) for i in range(layers)],
            schedule=[(i,) for i in range(layers)],
            head_mask_index=[(i,) for i in range(layers)],
            num_head_mask_rows=layers,
        ),
        pooler=Pooler(path="pooler", dense=_linear(config, "dense", h, h), activation="tanh") if pooled else None,
    )


def _lm_head(config: BertConfig, prefix: str, output: str) -> LMHead:
    h = config.hidden_size
    tied = join(prefix, "embeddings.word_embeddings") if config.tie_word_embeddings else None
    return LMHead(
        path="cls.predictions",
        transform=_linear(config, "transform.dense", h, h),
        activation=config.hidden_act,
        norm=_layer_norm(config, "transform.LayerNorm"),
        decoder=LMDecoder(
            path="decoder",
            in_features=h,
            vocab_size=config.vocab_size,
            tied_to=tied,
            init_std=config.initializer_range,
        ),
        output=output,
    )


def build_bert(config: BertConfig, task: str) -> ModelGraph:
    """Compile a :class:`BertConfig` and a task name into the layer graph of HF's matching class."""
    if task not in ARCHITECTURES:
        raise ValueError(f"unknown task {task!r} for bert; choose one of {', '.join(ARCHITECTURES)}")
    prefix = "" if task == "base" else "bert"
    h = config.hidden_size
    classifier_dropout = (
        config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    )
    heads: list[Head] = []
    losses: list[Loss] = []
    expose: tuple[str, ...] = ()
    if task == "base":
        expose = ("last_hidden_state", "pooler_output")
    elif task == "pretraining":
        heads = [
            _lm_head(config, prefix, "prediction_logits"),
            DenseHead(
                source="pooled",
                dropout=0.0,
                dense=_linear(config, "cls.seq_relationship", h, 2),
                output="seq_relationship_logits",
            ),
        ]
        losses = [
            CrossEntropyLoss(logits="prediction_logits", labels="labels"),
            CrossEntropyLoss(logits="seq_relationship_logits", labels="next_sentence_label"),
        ]
    elif task == "masked_lm":
        heads = [_lm_head(config, prefix, "logits")]
        losses = [CrossEntropyLoss(logits="logits", labels="labels")]
    elif task == "next_sentence_prediction":
        heads = [
            DenseHead(
                source="pooled", dropout=0.0, dense=_linear(config, "cls.seq_relationship", h, 2), output="logits"
            )
        ]
        losses = [CrossEntropyLoss(logits="logits", labels="labels")]
    elif task == "sequence_classification":
        heads = [
            DenseHead(
                source="pooled",
                dropout=classifier_dropout,
                dense=_linear(config, "classifier", h, config.num_labels),
                output="logits",
            )
        ]
        losses = [
            ClassificationLoss(
                logits="logits", labels="labels", num_labels=config.num_labels, problem_type=config.problem_type
            )
        ]
    elif task == "multiple_choice":
        heads = [
            DenseHead(
                source="pooled", dropout=classifier_dropout, dense=_linear(config, "classifier", h, 1), output="logits"
            )
        ]
        losses = [CrossEntropyLoss(logits="logits", labels="labels")]
    elif task == "token_classification":
        heads = [
            DenseHead(
                source="sequence",
                dropout=classifier_dropout,
                dense=_linear(config, "classifier", h, config.num_labels),
                output="logits",
            )
        ]
        losses = [CrossEntropyLoss(logits="logits", labels="labels")]
    else:  # question_answering
        if config.num_labels != 2:
            raise ValueError(
                f"question_answering needs num_labels == 2 (start and end logits), got num_labels={config.num_labels}"
            )
        heads = [
            DenseHead(
                source="sequence",
                dropout=0.0,
                dense=_linear(config, "qa_outputs", h, 2),
                output="logits",
                split=("start_logits", "end_logits"),
            )
        ]
        losses = [SpanLoss()]
    return ModelGraph(
        family="bert",
        task=task,
        backbone=_backbone(config, prefix, pooled=task in _POOLED_TASKS),
        heads=heads,
        losses=losses,
        expose=expose,
        multiple_choice=task == "multiple_choice",
    )
