"""BERT: its config and its builder (config -> layer graph)."""

from __future__ import annotations

import warnings
from typing import ClassVar, Literal

from pydantic import model_validator

from ..config import FamilyConfig
from ..nodes import (
    AttentionBlock,
    Backbone,
    CrossEntropyLoss,
    DenseHead,
    FullAttention,
    Head,
    LMHead,
    Loss,
    ModelGraph,
    Pooler,
    TransformerLayer,
    join,
)
from .common import attention_block, embeddings, layer_stack, linear, lm_head, post_ln_layer, shared_task_head


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
        if self.add_cross_attention and not self.is_decoder:
            raise ValueError(
                "add_cross_attention=True needs is_decoder=True: cross-attention layers belong to a decoder "
                "(HF PyTorch raises the same error; HF Flax would build them anyway)"
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
    "causal_lm": "BertLMHeadModel",
}
# HF class names that are not "Flax" + the PyTorch name.
OTHER_ARCHITECTURES = {"FlaxBertForCausalLM": "causal_lm"}

# Heads that read the pooled output build the pooler; the others do not have one (as in HF).
_POOLED_TASKS = {"base", "pretraining", "next_sentence_prediction", "sequence_classification", "multiple_choice"}


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
    return post_ln_layer(
        index,
        attention=_attention_block(config, "attention", "self"),
        crossattention=_attention_block(config, "crossattention", "encoder") if config.add_cross_attention else None,
        features=config.hidden_size,
        intermediate=config.intermediate_size,
        activation=config.hidden_act,
        dropout=config.hidden_dropout_prob,
        eps=config.layer_norm_eps,
        std=config.initializer_range,
    )


def _backbone(config: BertConfig, prefix: str, pooled: bool) -> Backbone:
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


def build_bert(config: BertConfig, task: str) -> ModelGraph:
    """Compile a :class:`BertConfig` and a task name into the layer graph of HF's matching class."""
    if task not in ARCHITECTURES:
        raise ValueError(f"unknown task {task!r} for bert; choose one of {', '.join(ARCHITECTURES)}")
    prefix = "" if task == "base" else "bert"
    h, std = config.hidden_size, config.initializer_range
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
                dense=linear("cls.seq_relationship", h, 2, std),
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
    elif task == "causal_lm":
        if not config.is_decoder:
            warnings.warn(
                "causal_lm with is_decoder=False attends in both directions and cannot use a KV cache; "
                "set is_decoder=True for a left-to-right language model (HF warns the same)",
                stacklevel=3,
            )
        heads = [_lm_head(config, prefix, "logits")]
        losses = [CrossEntropyLoss(logits="logits", labels="labels", shift=True)]
    elif task == "next_sentence_prediction":
        heads = [
            DenseHead(source="pooled", dropout=0.0, dense=linear("cls.seq_relationship", h, 2, std), output="logits")
        ]
        losses = [CrossEntropyLoss(logits="logits", labels="labels")]
    else:
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        heads, losses = shared_task_head(
            task,
            hidden=h,
            num_labels=config.num_labels,
            problem_type=config.problem_type,
            std=std,
            dropout=dropout,
        )
    return ModelGraph(
        family="bert",
        task=task,
        backbone=_backbone(config, prefix, pooled=task in _POOLED_TASKS),
        heads=heads,
        losses=losses,
        expose=expose,
        multiple_choice=task == "multiple_choice",
        use_cache=config.use_cache and config.is_decoder,
    )
