"""DeBERTa (v1, HF ``model_type="deberta"``): its config and its builder (config -> layer graph).

The same spec as DeBERTa-v2 (``deberta_v2.py``; shared pieces in ``deberta_shared.py``) with v1's attention:
one fused ``in_proj`` (no bias) whose rows hold, per head, its query, key and value rows, separate ``q_bias`` and
``v_bias``, position projections ``pos_proj`` (no bias, c2p) and ``pos_q_proj`` (p2c), queries scaled before
the products, optional talking heads, and a plain clamped relative distance (no log buckets, no convolution, no
LayerNorm on the relative table). HF has no multiple-choice head for v1.
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import model_validator

from ..nodes import (
    Attention,
    AttentionBlock,
    Backbone,
    DisentangledAttention,
    LayerNorm,
    LMDecoder,
    LMHead,
    ModelGraph,
    RelativeEncoder,
    join,
)
from .common import QKV_AXES, add_norm, config_layer, linear
from .deberta_shared import (
    DisentangledConfig,
    embeddings,
    legacy_lm_head,
    per_token_tasks,
    relative_table,
    sequence_classification,
)
from .tasks import Task, base_heads, build_task_graph, masked_lm_heads

_HEADS_AXES = ("attention_heads", "attention_heads")


class DebertaConfig(DisentangledConfig):
    """HF ``DebertaConfig``: same field names, same defaults (``talking_head``, which HF reads with ``getattr``,
    defaults to False as there). The fields shared with DeBERTa-v2 are in
    :class:`~tandem.core.families.deberta_shared.DisentangledConfig`."""

    model_type: ClassVar[str] = "deberta"

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    talking_head: bool = False

    @model_validator(mode="after")
    def _check_deberta_v1(self) -> DebertaConfig:
        if not self.legacy and self.tie_word_embeddings:
            raise ValueError(
                "legacy=False with tie_word_embeddings=True is not supported: HF 4.57 then ties the non-legacy head's "
                "dense layer (lm_predictions.lm_head.dense) to the word embeddings and cannot run; set "
                "tie_word_embeddings=False (the head still multiplies by the word embeddings) or legacy=True"
            )
        if not self.legacy and self.embedding_size not in (None, self.hidden_size):
            raise ValueError(
                f"legacy=False needs embedding_size ({self.embedding_size}) == hidden_size ({self.hidden_size}): the "
                "non-legacy head multiplies hidden_size-wide states by the word embeddings (HF fails otherwise)"
            )
        return self


def _attention_block(config: DebertaConfig) -> AttentionBlock:
    h, std, heads = config.hidden_size, config.initializer_range, config.num_attention_heads
    terms = config.position_terms
    relative = config.relative_attention
    variant = DisentangledAttention(
        relative=relative,
        c2p="c2p" in terms,
        p2c="p2c" in terms,
        span=config.relative_distance,  # HF slices the table to min(length, span): the same rows are read
        buckets=-1,
        max_distance=config.relative_distance,
        share_keys=False,
        scale="queries",
    )
    talking = None
    if config.talking_head:
        talking = tuple(
            linear(name, heads, heads, std, bias=False, axes=_HEADS_AXES)
            for name in ("head_logits_proj", "head_weights_proj")
        )
    return AttentionBlock(
        path="attention",
        attention=Attention(
            path="self",
            qkv=linear("in_proj", h, 3 * h, std, bias=False, axes=QKV_AXES),
            qkv_layout="per_head",  # HF: view(B, S, heads, 3 * head_dim), then chunk(3)
            part_biases=("query", "value"),
            pos_key=linear("pos_proj", h, h, std, bias=False, axes=QKV_AXES) if relative and variant.c2p else None,
            pos_query=linear("pos_q_proj", h, h, std, axes=QKV_AXES) if relative and variant.p2c else None,
            head_logits=talking[0] if talking else None,
            head_weights=talking[1] if talking else None,
            num_heads=heads,
            head_dim=config.head_dim,
            # HF: sqrt(head_dim * (1 + len(pos_att_type))) in float32, whether relative attention is on or not.
            score_divisor=math.sqrt(config.head_dim * (1 + len(terms))),
            dropout=config.attention_probs_dropout_prob,
            mask_fill="dtype_min",
            variant=variant,
            supports_head_mask=False,
        ),
        output=add_norm(
            "output", h, h, dropout=config.hidden_dropout_prob, eps=config.layer_norm_eps, std=std, in_axis="heads"
        ),
    )


def _backbone(config: DebertaConfig, prefix: str, pooled: bool) -> Backbone:
    """``embeddings`` and ``encoder`` (its ``rel_embeddings``: 2 * max_relative_positions rows, no norm) under
    ``prefix``; HF's DeBERTa model has no pooler of its own."""
    encoder = RelativeEncoder(
        path="encoder",
        layers=[config_layer(config, i, _attention_block(config)) for i in range(config.num_hidden_layers)],
        rel_embeddings=relative_table(config, 2 * config.relative_distance),
        dropout=config.hidden_dropout_prob,
    )
    return Backbone(path=prefix, embeddings=embeddings(config), encoder=encoder)


def _lm_head(config: DebertaConfig, prefix: str, output: str) -> LMHead:
    """``legacy=True``: ``cls.predictions`` (as DeBERTa-v2). ``legacy=False``: ``lm_predictions.lm_head``,
    ``LayerNorm(act(dense(x))) @ word_embeddings^T + bias``, with no decoder module (no aliased torch keys)."""
    if config.legacy:
        return legacy_lm_head(config, prefix, output)
    h, std = config.hidden_size, config.initializer_range
    return LMHead(
        path="lm_predictions.lm_head",
        transform=linear("dense", h, h, std),
        activation=config.hidden_act,
        norm=LayerNorm(path="LayerNorm", features=h, eps=config.layer_norm_eps),
        decoder=LMDecoder(
            path="decoder",
            in_features=h,
            vocab_size=config.vocab_size,
            tied_to=join(prefix, "embeddings.word_embeddings"),
            init_std=std,
            aliased=False,
        ),
        output=output,
    )


TASKS: dict[str, Task] = {
    "base": Task("DebertaModel", base_heads, pooled=False),
    "masked_lm": Task("DebertaForMaskedLM", masked_lm_heads(_lm_head), pooled=False),
    "sequence_classification": Task("DebertaForSequenceClassification", sequence_classification, pooled=False),
    **per_token_tasks("Deberta"),
}


def build_deberta(config: DebertaConfig, task: str) -> ModelGraph:
    """Compile a :class:`DebertaConfig` and a task name into the layer graph of HF's matching class."""
    return build_task_graph("deberta", TASKS, config, task, "deberta", _backbone)
