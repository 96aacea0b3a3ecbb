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
    CrossEntropyLoss,
    Encoder,
    FullAttention,
    GroupedConv1x1,
    Head,
    LayerNorm,
    Loss,
    ModelGraph,
    Pooler,
    TransformerLayer,
    score_divisor,
)
from .common import embeddings, linear, lm_head, shared_task_head

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


ARCHITECTURES = {
    "base": "SqueezeBertModel",
    "masked_lm": "SqueezeBertForMaskedLM",
    "sequence_classification": "SqueezeBertForSequenceClassification",
    "multiple_choice": "SqueezeBertForMultipleChoice",
    "token_classification": "SqueezeBertForTokenClassification",
    "question_answering": "SqueezeBertForQuestionAnswering",
}


def _conv(path: str, n_in: int, n_out: int, groups: int, std: float) -> GroupedConv1x1:
    return GroupedConv1x1(path=path, in_features=n_in, out_features=n_out, groups=groups, init_std=std)


def _layer(config: SqueezeBertConfig, index: int) -> TransformerLayer:
    h, i, std = config.hidden_size, config.intermediate_size, config.initializer_range
    return TransformerLayer(
        path=f"layers.{index}",
        attention=AttentionBlock(
            path="",
            attention=Attention(
                path="attention",
                query=_conv("query", h, h, config.q_groups, std),
                key=_conv("key", h, h, config.k_groups, std),
                value=_conv("value", h, h, config.v_groups, std),
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
                dense=_conv("conv1d", h, h, config.post_attention_groups, std),
                dropout=config.hidden_dropout_prob,
                norm=LayerNorm(path="layernorm", features=h, eps=ENCODER_LAYER_NORM_EPS),
            ),
        ),
        intermediate=_conv("intermediate.conv1d", h, i, config.intermediate_groups, std),
        activation=config.hidden_act,
        output=AddNorm(
            path="output",
            dense=_conv("conv1d", i, h, config.output_groups, std),
            dropout=config.hidden_dropout_prob,
            norm=LayerNorm(path="layernorm", features=h, eps=ENCODER_LAYER_NORM_EPS),
        ),
    )


def build_squeezebert(config: SqueezeBertConfig, task: str) -> ModelGraph:
    """Compile a :class:`SqueezeBertConfig` and a task name into the layer graph of HF's matching class."""
    if task not in ARCHITECTURES:
        raise ValueError(f"unknown task {task!r} for squeezebert; choose one of {', '.join(ARCHITECTURES)}")
    prefix = "" if task == "base" else "transformer"
    h, std, layers = config.hidden_size, config.initializer_range, config.num_hidden_layers
    heads: list[Head] = []
    losses: list[Loss] = []
    expose: tuple[str, ...] = ()
    if task == "base":
        expose = ("last_hidden_state", "pooler_output")
    elif task == "masked_lm":
        heads = [
            lm_head(
                path="cls.predictions",
                transform_path="transform.dense",
                norm_path="transform.LayerNorm",
                hidden=h,
                features=h,
                vocab_size=config.vocab_size,
                activation=config.hidden_act,
                eps=config.layer_norm_eps,
                std=std,
                tied_to=f"{prefix}.embeddings.word_embeddings" if config.tie_word_embeddings else None,
                output="logits",
            )
        ]
        losses = [CrossEntropyLoss(logits="logits", labels="labels")]
    else:
        heads, losses = shared_task_head(
            task,
            hidden=h,
            num_labels=config.num_labels,
            problem_type=config.problem_type,
            std=std,
            dropout=0.0 if task == "question_answering" else config.hidden_dropout_prob,
        )
    return ModelGraph(
        family="squeezebert",
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
                sum_order=("word", "position", "token_type"),
            ),
            encoder=Encoder(
                path="encoder",
                layers=[_layer(config, i) for i in range(layers)],
                schedule=[(i,) for i in range(layers)],
                head_mask_index=[(i,) for i in range(layers)],
                num_head_mask_rows=layers,
            ),
            # SqueezeBERT always has a pooler, whatever the head.
            pooler=Pooler(path="pooler", dense=linear("dense", h, h, std), activation="tanh"),
        ),
        heads=heads,
        losses=losses,
        expose=expose,
        multiple_choice=task == "multiple_choice",
    )
