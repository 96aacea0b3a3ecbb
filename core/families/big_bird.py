"""BigBird: BERT's layout under the ``bert`` prefix, with block-sparse attention and its own heads."""

from __future__ import annotations

import warnings
from typing import ClassVar, Literal

from pydantic import model_validator

from ..block_sparse import min_sparse_length
from ..config import FamilyConfig
from ..nodes import (
    AttentionBlock,
    Backbone,
    BlockSparseAttention,
    BlockSparsePolicy,
    ClassificationHead,
    ClassificationLoss,
    CrossEntropyLoss,
    DenseHead,
    FullAttention,
    LMHead,
    ModelGraph,
    Pooler,
    QuestionMask,
    SpanHead,
    SpanLoss,
    TransformerLayer,
    join,
)
from .common import (
    CLASSES_AXES,
    MLP_IN_AXES,
    add_norm,
    attention_block,
    check_decoder_fields,
    config_layer,
    embeddings,
    layer_stack,
    linear,
    lm_head,
)
from .tasks import Task, TaskHeads, base_heads, build_task_graph, causal_lm_heads, masked_lm_heads, shared_heads


class BigBirdConfig(FamilyConfig):
    """HF ``BigBirdConfig``: same field names, same defaults."""

    model_type: ClassVar[str] = "big_bird"
    positive_fields: ClassVar[tuple[str, ...]] = (*FamilyConfig.positive_fields, "block_size")

    vocab_size: int = 50358
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 4096
    use_cache: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    sep_token_id: int = 66
    attention_type: Literal["block_sparse", "original_full"] = "block_sparse"
    use_bias: bool = True
    rescale_embeddings: bool = False
    block_size: int = 64
    num_random_blocks: int = 3
    classifier_dropout: float | None = None

    @model_validator(mode="after")
    def _check_big_bird(self) -> BigBirdConfig:
        if self.num_random_blocks < 0:
            raise ValueError(f"num_random_blocks must be >= 0, got {self.num_random_blocks}")
        check_decoder_fields(self)
        return self

    @property
    def runs_block_sparse(self) -> bool:
        """Block-sparse unless full attention is asked for or forced (decoders run full attention, as in
        HF PyTorch, which cannot run block-sparse attention causally)."""
        return self.attention_type == "block_sparse" and not self.is_decoder


def _attention_block(
    config: BigBirdConfig,
    path: str,
    variant: FullAttention | BlockSparseAttention,
    source: Literal["self", "encoder"] = "self",
) -> AttentionBlock:
    """``attention`` or, in decoders with an encoder, ``crossattention`` (always full attention)."""
    return attention_block(
        path,
        features=config.hidden_size,
        num_heads=config.num_attention_heads,
        head_dim=config.head_dim,
        attention_dropout=config.attention_probs_dropout_prob,
        hidden_dropout=config.hidden_dropout_prob,
        eps=config.layer_norm_eps,
        std=config.initializer_range,
        variant=variant,
        source=source,
        bias=config.use_bias,
    )


def _layer(config: BigBirdConfig, index: int) -> TransformerLayer:
    if config.runs_block_sparse:
        variant: FullAttention | BlockSparseAttention = BlockSparseAttention(
            block_size=config.block_size, num_random_blocks=config.num_random_blocks, layer=index
        )
    else:
        variant = FullAttention(causal=config.is_decoder)
    cross = (
        _attention_block(config, "crossattention", FullAttention(), "encoder") if config.add_cross_attention else None
    )
    return config_layer(config, index, _attention_block(config, "attention", variant), cross)


def _backbone(config: BigBirdConfig, prefix: str, pooled: bool) -> Backbone:
    h, std = config.hidden_size, config.initializer_range
    emb = embeddings(
        vocab_size=config.vocab_size,
        max_positions=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        features=h,
        pad_token_id=config.pad_token_id,
        eps=config.layer_norm_eps,
        dropout=config.hidden_dropout_prob,
        std=std,
    )
    # BigBird applies dropout before the LayerNorm, and optionally scales word embeddings by sqrt(H).
    emb = emb.model_copy(
        update={"dropout_before_norm": True, "word_scale": h**0.5 if config.rescale_embeddings else None}
    )
    policy = None
    if config.runs_block_sparse:
        policy = BlockSparsePolicy(
            block_size=config.block_size,
            min_length=min_sparse_length(config.block_size, config.num_random_blocks),
            pad_token_id=config.pad_token_id or 0,
        )
    return Backbone(
        path=prefix,
        embeddings=emb,
        encoder=layer_stack([_layer(config, i) for i in range(config.num_hidden_layers)]),
        # BigBird's pooler is a bare Linear at `bert.pooler` followed by tanh.
        pooler=Pooler(path="pooler", dense=linear("", h, h, std), activation="tanh") if pooled else None,
        block_sparse=policy,
    )


def _lm_head(config: BigBirdConfig, prefix: str, output: str) -> LMHead:
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


def _classifier_dropout(config: BigBirdConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def _pretraining(config: BigBirdConfig, prefix: str) -> TaskHeads:
    nsp = linear("cls.seq_relationship", config.hidden_size, 2, config.initializer_range, axes=CLASSES_AXES)
    return TaskHeads(
        [
            _lm_head(config, prefix, "prediction_logits"),
            DenseHead(source="pooled", dropout=0.0, dense=nsp, output="seq_relationship_logits"),
        ],
        # HF: MLM loss when labels are given, plus NSP when next_sentence_label is given too.
        [
            CrossEntropyLoss(logits="prediction_logits", labels="labels"),
            CrossEntropyLoss(logits="seq_relationship_logits", labels="next_sentence_label", optional=True),
        ],
    )


def _sequence_classification(config: BigBirdConfig, prefix: str) -> TaskHeads:
    h, std = config.hidden_size, config.initializer_range
    head = ClassificationHead(
        path="classifier",
        dropout=_classifier_dropout(config),
        dense=linear("dense", h, h, std),
        activation=config.hidden_act,
        out_proj=linear("out_proj", h, config.num_labels, std, axes=CLASSES_AXES),
        output="logits",
    )
    loss = ClassificationLoss(
        logits="logits", labels="labels", num_labels=config.num_labels, problem_type=config.problem_type
    )
    return TaskHeads([head], [loss])


def _question_answering(config: BigBirdConfig, prefix: str) -> TaskHeads:
    h, i, std = config.hidden_size, config.intermediate_size, config.initializer_range
    head = SpanHead(
        path="qa_classifier",
        dropout=config.hidden_dropout_prob,
        intermediate=linear("intermediate.dense", h, i, std, axes=MLP_IN_AXES),
        activation=config.hidden_act,
        output=add_norm(
            "output", i, h, dropout=config.hidden_dropout_prob, eps=config.layer_norm_eps, std=std, in_axis="mlp"
        ),
        qa_outputs=linear("qa_outputs", h, 2, std, axes=CLASSES_AXES),
        question_mask=QuestionMask(sep_token_id=config.sep_token_id),
    )
    return TaskHeads([head], [SpanLoss()])


# HF PyTorch's BigBird heads keep the pooler except question answering; HF Flax drops it in three more.
TASKS: dict[str, Task] = {
    "base": Task("BigBirdModel", base_heads),
    "pretraining": Task("BigBirdForPreTraining", _pretraining),
    "masked_lm": Task("BigBirdForMaskedLM", masked_lm_heads(_lm_head), flax_lacks=("pooler",)),
    "sequence_classification": Task("BigBirdForSequenceClassification", _sequence_classification),
    "multiple_choice": Task(
        "BigBirdForMultipleChoice", shared_heads("multiple_choice", lambda config: config.hidden_dropout_prob)
    ),
    "token_classification": Task(
        "BigBirdForTokenClassification",
        shared_heads("token_classification", _classifier_dropout),
        flax_lacks=("pooler",),
    ),
    "question_answering": Task("BigBirdForQuestionAnswering", _question_answering, pooled=False),
    "causal_lm": Task("BigBirdForCausalLM", causal_lm_heads(_lm_head), flax_lacks=("pooler",)),
}


def build_big_bird(config: BigBirdConfig, task: str) -> ModelGraph:
    """Compile a :class:`BigBirdConfig` and a task name into the layer graph of HF PyTorch's matching class."""
    if config.attention_type == "block_sparse" and config.is_decoder:
        warnings.warn(
            "big_bird with is_decoder=True runs full attention (block-sparse attention cannot be causal)",
            stacklevel=3,
        )
    return build_task_graph(
        "big_bird", TASKS, config, task, "bert", _backbone, use_cache=config.use_cache and config.is_decoder
    )
