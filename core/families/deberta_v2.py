"""DeBERTa-v2/v3: its config and its builder (config -> layer graph).

What differs from BERT is in the encoder: disentangled attention (content scores plus content-to-position
and position-to-content scores over a shared, optionally log-bucketed table of relative-position
embeddings), an optional convolution beside the first layer, and embeddings multiplied by the mask. The
sequence-level heads pool the first token through a ``pooler`` of their own (HF's ``ContextPooler``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import model_validator

from ..config import FamilyConfig
from ..nodes import (
    ACTIVATIONS,
    Attention,
    AttentionBlock,
    Backbone,
    ClassificationHead,
    ClassificationLoss,
    Conv1d,
    ConvLayer,
    CrossEntropyLoss,
    DisentangledAttention,
    Embed,
    Embeddings,
    LayerNorm,
    LMHead,
    ModelGraph,
    RelativeEncoder,
    TransformerLayer,
    join,
)
from .common import CLASSES_AXES, QKV_AXES, add_norm, linear, lm_head, post_ln_layer
from .tasks import Task, TaskHeads, base_heads, build_task_graph, masked_lm_heads, shared_heads

_POSITION_TERMS = ("c2p", "p2c")


class DebertaV2Config(FamilyConfig):
    """HF ``DebertaV2Config``: same field names, same defaults (including the ones HF reads with
    ``getattr``: ``position_buckets``, ``share_att_key``, ``norm_rel_ebd``, ``conv_*``, ``embedding_size``,
    ``pooler_hidden_size``, ``cls_dropout``)."""

    model_type: ClassVar[str] = "deberta-v2"
    positive_fields: ClassVar[tuple[str, ...]] = tuple(
        name for name in FamilyConfig.positive_fields if name != "type_vocab_size"
    )
    dropout_fields: ClassVar[tuple[str, ...]] = (*FamilyConfig.dropout_fields, "pooler_dropout")

    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_buckets: int = -1
    position_biased_input: bool = True
    pos_att_type: list[str] | str | None = None
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    embedding_size: int | None = None
    pooler_hidden_size: int | None = None
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    cls_dropout: float | None = None
    legacy: bool = True

    @model_validator(mode="after")
    def _check_deberta(self) -> DebertaV2Config:
        unknown = [term for term in self.position_terms if term not in _POSITION_TERMS]
        if unknown:
            raise ValueError(f"pos_att_type={self.pos_att_type!r}: {unknown} not supported (use c2p and/or p2c)")
        norms = self.rel_norms
        if not set(norms) <= {"none", "layer_norm"}:
            raise ValueError(f"norm_rel_ebd={self.norm_rel_ebd!r} is not supported (use 'none' or 'layer_norm')")
        for name in ("conv_act", "pooler_hidden_act"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not supported; choose one of {', '.join(ACTIVATIONS)}"
                )
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
        if self.conv_kernel_size < 0 or self.conv_groups < 1:
            raise ValueError(
                f"conv_kernel_size must be >= 0 and conv_groups >= 1, got {self.conv_kernel_size}, {self.conv_groups}"
            )
        if self.embedding_size is not None and self.embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {self.embedding_size}")
        if self.pooler_hidden_size not in (None, self.hidden_size):
            raise ValueError(
                f"pooler_hidden_size={self.pooler_hidden_size} must equal hidden_size={self.hidden_size}: the "
                "context pooler reads the hidden states and feeds a hidden_size-wide classifier (HF fails otherwise)"
            )
        if self.cls_dropout is not None and not 0.0 <= self.cls_dropout < 1.0:
            raise ValueError(f"cls_dropout must be in [0, 1), got {self.cls_dropout}")
        head_size = getattr(self, "attention_head_size", None)
        if head_size is not None and head_size != self.head_dim:
            raise ValueError(
                f"attention_head_size={head_size} is not supported: it must be hidden_size // num_attention_heads "
                f"({self.head_dim}), which the attention output projection assumes"
            )
        if not self.legacy:
            raise ValueError(
                "legacy=False is not supported: HF 4.57's non-legacy masked-LM head ties its dense layer to the word "
                "embeddings and cannot run; checkpoints use the legacy head (cls.predictions)"
            )
        if (
            self.relative_attention
            and self.position_buckets > 0
            and self.relative_distance <= self.position_buckets // 2 + 1
        ):
            raise ValueError(
                f"position_buckets={self.position_buckets} needs max_relative_positions > position_buckets // 2 + 1 "
                f"(got {self.relative_distance}): the log buckets are undefined otherwise"
            )
        if self.relative_attention and 0 < self.position_buckets < 2:
            raise ValueError(f"position_buckets must be >= 2 or <= 0 (no buckets), got {self.position_buckets}")
        return self

    def to_hf_dict(self) -> dict[str, Any]:
        """HF reads ``embedding_size`` and ``pooler_hidden_size`` with a default only when they are absent:
        unset ones are left out rather than written as null."""
        data = super().to_hf_dict()
        for name in ("embedding_size", "pooler_hidden_size"):
            if data.get(name) is None:
                data.pop(name, None)
        return data

    @property
    def position_terms(self) -> tuple[str, ...]:
        """``pos_att_type`` as HF reads it: a list, or a ``|``-separated string."""
        if self.pos_att_type is None:
            return ()
        if isinstance(self.pos_att_type, str):
            return tuple(term.strip() for term in self.pos_att_type.lower().split("|"))
        return tuple(self.pos_att_type)

    @property
    def rel_norms(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.norm_rel_ebd.lower().split("|"))

    @property
    def relative_distance(self) -> int:
        """``max_relative_positions``, or ``max_position_embeddings`` when it is below 1 (as HF)."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def span(self) -> int:
        """Half the relative-embedding table: ``position_buckets`` when bucketed, else the distance limit."""
        return self.position_buckets if self.position_buckets > 0 else self.relative_distance


def _attention_block(config: DebertaV2Config) -> AttentionBlock:
    h, std = config.hidden_size, config.initializer_range
    terms = config.position_terms
    variant = DisentangledAttention(
        relative=config.relative_attention,
        c2p="c2p" in terms,
        p2c="p2c" in terms,
        span=config.span,
        buckets=config.position_buckets,
        max_distance=config.relative_distance,
        share_keys=config.share_att_key,
    )
    own = config.relative_attention and not config.share_att_key
    scale_factor = 1 + sum(term in terms for term in _POSITION_TERMS)
    return AttentionBlock(
        path="attention",
        attention=Attention(
            path="self",
            query=linear("query_proj", h, h, std, axes=QKV_AXES),
            key=linear("key_proj", h, h, std, axes=QKV_AXES),
            value=linear("value_proj", h, h, std, axes=QKV_AXES),
            pos_key=linear("pos_key_proj", h, h, std, axes=QKV_AXES) if own and variant.c2p else None,
            pos_query=linear("pos_query_proj", h, h, std, axes=QKV_AXES) if own and variant.p2c else None,
            num_heads=config.num_attention_heads,
            head_dim=config.head_dim,
            # HF: sqrt(head_dim * (1 + number of position terms)), in float32 (exact either way).
            score_divisor=math.sqrt(config.head_dim * scale_factor),
            dropout=config.attention_probs_dropout_prob,
            mask_fill="dtype_min",
            variant=variant,
            supports_head_mask=False,
        ),
        output=add_norm(
            "output", h, h, dropout=config.hidden_dropout_prob, eps=config.layer_norm_eps, std=std, in_axis="heads"
        ),
    )


def _layer(config: DebertaV2Config, index: int) -> TransformerLayer:
    return post_ln_layer(
        index,
        attention=_attention_block(config),
        crossattention=None,
        features=config.hidden_size,
        intermediate=config.intermediate_size,
        activation=config.hidden_act,
        dropout=config.hidden_dropout_prob,
        eps=config.layer_norm_eps,
        std=config.initializer_range,
    )


def _embeddings(config: DebertaV2Config) -> Embeddings:
    h, std = config.hidden_size, config.initializer_range
    width = config.embedding_size or h
    axis = "embed" if width == h else "embed_factor"
    position = token_type = None
    if config.position_biased_input:
        position = Embed(
            path="position_embeddings",
            num_embeddings=config.max_position_embeddings,
            features=width,
            init_std=std,
            axes=("positions", axis),
        )
    if config.type_vocab_size > 0:
        token_type = Embed(
            path="token_type_embeddings",
            num_embeddings=config.type_vocab_size,
            features=width,
            init_std=std,
            axes=("token_types", axis),
        )
    order = ("word",) + (("position",) if position else ()) + (("token_type",) if token_type else ())
    return Embeddings(
        path="embeddings",
        word=Embed(
            path="word_embeddings",
            num_embeddings=config.vocab_size,
            features=width,
            init_std=std,
            padding_idx=config.pad_token_id,
            axes=("vocab", axis),
        ),
        position=position,
        token_type=token_type,
        projection=linear("embed_proj", width, h, std, bias=False, axes=(axis, "embed")) if width != h else None,
        norm=LayerNorm(path="LayerNorm", features=h, eps=config.layer_norm_eps),
        dropout=config.hidden_dropout_prob,
        sum_order=order,
    )


def _encoder(config: DebertaV2Config) -> RelativeEncoder:
    h, std, eps = config.hidden_size, config.initializer_range, config.layer_norm_eps
    conv = None
    if config.conv_kernel_size > 0:
        conv = ConvLayer(
            path="conv",
            conv=Conv1d(
                path="conv", features=h, kernel_size=config.conv_kernel_size, groups=config.conv_groups, init_std=std
            ),
            activation=config.conv_act,
            norm=LayerNorm(path="LayerNorm", features=h, eps=eps),
            dropout=config.hidden_dropout_prob,
        )
    table = None
    if config.relative_attention:
        table = Embed(
            path="rel_embeddings", num_embeddings=2 * config.span, features=h, init_std=std, axes=("positions", "embed")
        )
    return RelativeEncoder(
        path="encoder",
        layers=[_layer(config, i) for i in range(config.num_hidden_layers)],
        rel_embeddings=table,
        norm=LayerNorm(path="LayerNorm", features=h, eps=eps) if "layer_norm" in config.rel_norms else None,
        dropout=config.hidden_dropout_prob,
        conv=conv,
    )


def _backbone(config: DebertaV2Config, prefix: str, pooled: bool) -> Backbone:
    """``embeddings`` and ``encoder`` under ``prefix``; HF's DeBERTa model has no pooler of its own."""
    return Backbone(path=prefix, embeddings=_embeddings(config), encoder=_encoder(config))


def _lm_head(config: DebertaV2Config, prefix: str, output: str) -> LMHead:
    width = config.embedding_size or config.hidden_size
    return lm_head(
        path="cls.predictions",
        transform_path="transform.dense",
        norm_path="transform.LayerNorm",
        hidden=config.hidden_size,
        features=width,
        vocab_size=config.vocab_size,
        activation=config.hidden_act,
        eps=config.layer_norm_eps,
        std=config.initializer_range,
        tied_to=join(prefix, "embeddings.word_embeddings") if config.tie_word_embeddings else None,
        output=output,
        axis="embed" if width == config.hidden_size else "embed_factor",
    )


def _cls_dropout(config: DebertaV2Config) -> float:
    return config.cls_dropout if config.cls_dropout is not None else config.hidden_dropout_prob


def _pooled_head(config: DebertaV2Config, classes: int) -> ClassificationHead:
    """HF's ``ContextPooler`` (``pooler.dense`` on the first token, after ``pooler_dropout``) and
    ``classifier`` (after ``cls_dropout``)."""
    h, std = config.hidden_size, config.initializer_range
    return ClassificationHead(
        input_dropout=config.pooler_dropout,
        dropout=_cls_dropout(config),
        dense=linear("pooler.dense", h, h, std),
        activation=config.pooler_hidden_act,
        out_proj=linear("classifier", h, classes, std, axes=CLASSES_AXES),
        output="logits",
    )


def _sequence_classification(config: DebertaV2Config, prefix: str) -> TaskHeads:
    loss = ClassificationLoss(
        logits="logits",
        labels="labels",
        num_labels=config.num_labels,
        problem_type=config.problem_type,
        soft_labels=True,
    )
    return TaskHeads([_pooled_head(config, config.num_labels)], [loss])


def _multiple_choice(config: DebertaV2Config, prefix: str) -> TaskHeads:
    return TaskHeads([_pooled_head(config, 1)], [CrossEntropyLoss(logits="logits", labels="labels")])


TASKS: dict[str, Task] = {
    "base": Task("DebertaV2Model", base_heads, pooled=False),
    "masked_lm": Task("DebertaV2ForMaskedLM", masked_lm_heads(_lm_head), pooled=False),
    "sequence_classification": Task("DebertaV2ForSequenceClassification", _sequence_classification, pooled=False),
    "multiple_choice": Task("DebertaV2ForMultipleChoice", _multiple_choice, pooled=False),
    "token_classification": Task(
        "DebertaV2ForTokenClassification",
        shared_heads("token_classification", lambda config: config.hidden_dropout_prob),
        pooled=False,
    ),
    "question_answering": Task(
        "DebertaV2ForQuestionAnswering", shared_heads("question_answering", lambda config: 0.0), pooled=False
    ),
}


def build_deberta_v2(config: DebertaV2Config, task: str) -> ModelGraph:
    """Compile a :class:`DebertaV2Config` and a task name into the layer graph of HF's matching class."""
    return build_task_graph("deberta-v2", TASKS, config, task, "deberta", _backbone)
