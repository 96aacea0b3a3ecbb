"""DeBERTa-v2/v3: its config and its builder (config -> layer graph).

What differs from BERT is in the encoder: disentangled attention (content scores plus content-to-position
and position-to-content scores over a shared, optionally log-bucketed table of relative-position
embeddings), an optional convolution beside the first layer, and embeddings multiplied by the mask. The
sequence-level heads pool the first token through a ``pooler`` of their own (HF's ``ContextPooler``).
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import model_validator

from ..nodes import (
    ACTIVATIONS,
    Attention,
    AttentionBlock,
    Backbone,
    Conv1d,
    ConvLayer,
    CrossEntropyLoss,
    DisentangledAttention,
    LayerNorm,
    ModelGraph,
    RelativeEncoder,
)
from .common import QKV_AXES, add_norm, config_layer, linear
from .deberta_shared import (
    POSITION_TERMS,
    DisentangledConfig,
    embeddings,
    legacy_lm_head,
    per_token_tasks,
    pooled_head,
    relative_table,
    sequence_classification,
)
from .tasks import Task, TaskHeads, base_heads, build_task_graph, masked_lm_heads


class DebertaV2Config(DisentangledConfig):
    """HF ``DebertaV2Config``: same field names, same defaults (including the ones HF reads with
    ``getattr``: ``position_buckets``, ``share_att_key``, ``norm_rel_ebd``, ``conv_*``, ``embedding_size``,
    ``pooler_hidden_size``, ``cls_dropout``). The fields DeBERTa v1 shares are in
    :class:`~tandem.core.families.deberta_shared.DisentangledConfig`."""

    model_type: ClassVar[str] = "deberta-v2"

    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
    position_buckets: int = -1
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"

    @model_validator(mode="after")
    def _check_deberta(self) -> DebertaV2Config:
        norms = self.rel_norms
        if not set(norms) <= {"none", "layer_norm"}:
            raise ValueError(f"norm_rel_ebd={self.norm_rel_ebd!r} is not supported (use 'none' or 'layer_norm')")
        if self.conv_act not in ACTIVATIONS:
            raise ValueError(f"conv_act={self.conv_act!r} is not supported; choose one of {', '.join(ACTIVATIONS)}")
        if self.conv_kernel_size < 0 or self.conv_groups < 1:
            raise ValueError(
                f"conv_kernel_size must be >= 0 and conv_groups >= 1, got {self.conv_kernel_size}, {self.conv_groups}"
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

    @property
    def rel_norms(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.norm_rel_ebd.lower().split("|"))

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
    scale_factor = 1 + sum(term in terms for term in POSITION_TERMS)
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
    return RelativeEncoder(
        path="encoder",
        layers=[config_layer(config, i, _attention_block(config)) for i in range(config.num_hidden_layers)],
        rel_embeddings=relative_table(config, 2 * config.span),
        norm=LayerNorm(path="LayerNorm", features=h, eps=eps) if "layer_norm" in config.rel_norms else None,
        dropout=config.hidden_dropout_prob,
        conv=conv,
    )


def _backbone(config: DebertaV2Config, prefix: str, pooled: bool) -> Backbone:
    """``embeddings`` and ``encoder`` under ``prefix``; HF's DeBERTa model has no pooler of its own."""
    return Backbone(path=prefix, embeddings=embeddings(config), encoder=_encoder(config))


def _multiple_choice(config: DebertaV2Config, prefix: str) -> TaskHeads:
    return TaskHeads([pooled_head(config, 1)], [CrossEntropyLoss(logits="logits", labels="labels")])


TASKS: dict[str, Task] = {
    "base": Task("DebertaV2Model", base_heads, pooled=False),
    "masked_lm": Task("DebertaV2ForMaskedLM", masked_lm_heads(legacy_lm_head), pooled=False),
    "sequence_classification": Task("DebertaV2ForSequenceClassification", sequence_classification, pooled=False),
    "multiple_choice": Task("DebertaV2ForMultipleChoice", _multiple_choice, pooled=False),
    **per_token_tasks("DebertaV2"),
}


def build_deberta_v2(config: DebertaV2Config, task: str) -> ModelGraph:
    """Compile a :class:`DebertaV2Config` and a task name into the layer graph of HF's matching class."""
    return build_task_graph("deberta-v2", TASKS, config, task, "deberta", _backbone)
