"""SqueezeBERT: grouped 1x1 convolutions in place of the position-wise dense layers.

HF computes on channel-first (N, C, W) data; a transpose does not change values, so the graph keeps
channels last and each convolution is a :class:`~tandem.core.nodes.GroupedConv1x1`. The family's quirks are
written here, not in a backend: the encoder LayerNorms use a fixed eps of 1e-12 whatever the config says,
the embedding sum is (word + position) + token type, ``attentions`` are the pre-softmax masked scores,
and there is no head mask.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from ..config import FamilyConfig
from ..nodes import (
    AddNorm,
    Attention,
    AttentionBlock,
    Backbone,
    FullAttention,
    GroupedConv1x1,
    LayerNorm,
    LMHead,
    ModelGraph,
    Pooler,
    TransformerLayer,
    join,
    score_divisor,
)
from .common import MLP_IN_AXES, QKV_AXES, embeddings, layer_stack, linear, lm_head
from .tasks import Task, base_heads, build_task_graph, masked_lm_heads, shared_heads

# HF's SqueezeBertLayerNorm is constructed without the config's eps.
ENCODER_LAYER_NORM_EPS = 1e-12


class SqueezeBertConfig(FamilyConfig):
    """HF ``SqueezeBertConfig``: same field names, same defaults."""

    model_type: ClassVar[str] = "squeezebert"
    positive_fields: ClassVar[tuple[str, ...]] = (
        *FamilyConfig.positive_fields,
        "embedding_size",
        "q_groups",
        "k_groups",
        "v_groups",
        "post_attention_groups",
        "intermediate_groups",
        "output_groups",
    )

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    embedding_size: int = 768
    q_groups: int = 4
    k_groups: int = 4
    v_groups: int = 4
    post_attention_groups: int = 1
    intermediate_groups: int = 4
    output_groups: int = 4

    @model_validator(mode="after")
    def _check_squeezebert(self) -> SqueezeBertConfig:
        if self.embedding_size != self.hidden_size:
            raise ValueError(
                f"embedding_size ({self.embedding_size}) must equal hidden_size ({self.hidden_size}) in SqueezeBERT"
            )
        h, i = self.hidden_size, self.intermediate_size
        for field, channels in (
            ("q_groups", (h,)),
            ("k_groups", (h,)),
            ("v_groups", (h,)),
            ("post_attention_groups", (h,)),
            ("intermediate_groups", (h, i)),
            ("output_groups", (i, h)),
        ):
            groups = getattr(self, field)
            for c in channels:
                if c % groups:
                    raise ValueError(f"{field}={groups} does not divide the {c} channels it groups")
        return self


def _conv(
    path: str, n_in: int, n_out: int, groups: int, std: float, axes: tuple[str, str] = ("embed", "embed")
) -> GroupedConv1x1:
    return GroupedConv1x1(path=path, in_features=n_in, out_features=n_out, groups=groups, init_std=std, axes=axes)


def _layer(config: SqueezeBertConfig, index: int) -> TransformerLayer:
    h, i, std = config.hidden_size, config.intermediate_size, config.initializer_range
    return TransformerLayer(
        path=f"layers.{index}",
        attention=AttentionBlock(
            path="",
            attention=Attention(
                path="attention",
                query=_conv("query", h, h, config.q_groups, std, QKV_AXES),
                key=_conv("key", h, h, config.k_groups, std, QKV_AXES),
                value=_conv("value", h, h, config.v_groups, std, QKV_AXES),
                num_heads=config.num_attention_heads,
                head_dim=config.head_dim,
                score_divisor=score_divisor(config.head_dim),
                dropout=config.attention_probs_dropout_prob,
                mask_fill="dtype_min",
                variant=FullAttention(),
                returns="scores",
                supports_head_mask=False,
            ),
            output=AddNorm(
                path="post_attention",
                dense=_conv("conv1d", h, h, config.post_attention_groups, std, ("heads", "embed")),
                dropout=config.hidden_dropout_prob,
                norm=LayerNorm(path="layernorm", features=h, eps=ENCODER_LAYER_NORM_EPS),
            ),
        ),
        intermediate=_conv("intermediate.conv1d", h, i, config.intermediate_groups, std, MLP_IN_AXES),
        activation=config.hidden_act,
        output=AddNorm(
            path="output",
            dense=_conv("conv1d", i, h, config.output_groups, std, ("mlp", "embed")),
            dropout=config.hidden_dropout_prob,
            norm=LayerNorm(path="layernorm", features=h, eps=ENCODER_LAYER_NORM_EPS),
        ),
    )


def _lm_head(config: SqueezeBertConfig, prefix: str, output: str) -> LMHead:
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


def _dropout(config: SqueezeBertConfig) -> float:
    return config.hidden_dropout_prob


# SqueezeBERT always has a pooler, whatever the head.
TASKS: dict[str, Task] = {
    "base": Task("SqueezeBertModel", base_heads),
    "masked_lm": Task("SqueezeBertForMaskedLM", masked_lm_heads(_lm_head)),
    "sequence_classification": Task(
        "SqueezeBertForSequenceClassification", shared_heads("sequence_classification", _dropout)
    ),
    "multiple_choice": Task("SqueezeBertForMultipleChoice", shared_heads("multiple_choice", _dropout)),
    "token_classification": Task("SqueezeBertForTokenClassification", shared_heads("token_classification", _dropout)),
    "question_answering": Task(
        "SqueezeBertForQuestionAnswering", shared_heads("question_answering", lambda config: 0.0)
    ),
}


def _backbone(config: SqueezeBertConfig, prefix: str, pooled: bool) -> Backbone:
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
            sum_order=("word", "position", "token_type"),
        ),
        encoder=layer_stack([_layer(config, i) for i in range(config.num_hidden_layers)]),
        pooler=Pooler(path="pooler", dense=linear("dense", h, h, std), activation="tanh"),
    )


def build_squeezebert(config: SqueezeBertConfig, task: str) -> ModelGraph:
    """Compile a :class:`SqueezeBertConfig` and a task name into the layer graph of HF's matching class."""
    return build_task_graph("squeezebert", TASKS, config, task, "transformer", _backbone)
