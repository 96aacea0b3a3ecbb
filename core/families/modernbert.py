"""ModernBERT: its config and its builder (config -> layer graph).

A pre-LN encoder (``x + Wo(attn(attn_norm(x)))``, ``x + mlp(mlp_norm(x))``, a final norm) with rotary
positions, a fused ``Wqkv`` projection, a GeGLU feed-forward, no biases by default, and attention that is
global every ``global_attn_every_n_layers`` layers and a sliding window of ``local_attention`` positions
otherwise. Every piece is a generic node option; this module only says where each one goes.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import field_validator, model_validator

from ..config import FamilyConfig
from ..nodes import (
    ACTIVATIONS,
    AddNorm,
    Attention,
    AttentionBlock,
    Backbone,
    ClassificationLoss,
    CrossEntropyLoss,
    Embed,
    Embeddings,
    Encoder,
    FullAttention,
    LayerNorm,
    LMDecoder,
    LMHead,
    ModelGraph,
    PredictionHead,
    Rotary,
    SlidingWindowAttention,
    SpanLoss,
    TransformerLayer,
    join,
    score_divisor,
)
from .common import CLASSES_AXES, MLP_IN_AXES, QKV_AXES, linear
from .tasks import Task, TaskHeads, base_heads, build_task_graph, masked_lm_heads

# FamilyConfig fields that ModernBERT's config does not have: fixed, unused, never written to config.json.
_NOT_MODERNBERT = ("hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size")


class ModernBertConfig(FamilyConfig):
    """HF ``ModernBertConfig``: same field names, same defaults."""

    model_type: ClassVar[str] = "modernbert"
    positive_fields: ClassVar[tuple[str, ...]] = (
        *FamilyConfig.positive_fields,
        "local_attention",
        "global_attn_every_n_layers",
    )
    dropout_fields: ClassVar[tuple[str, ...]] = (
        "attention_dropout",
        "embedding_dropout",
        "mlp_dropout",
        "classifier_dropout",
    )

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: int | None = 50283
    eos_token_id: int | None = 50282
    bos_token_id: int | None = 50281
    cls_token_id: int | None = 50281
    sep_token_id: int | None = 50282
    global_rope_theta: float = 160000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    global_attn_every_n_layers: int = 3
    local_attention: int = 128
    local_rope_theta: float | None = 10000.0
    embedding_dropout: float = 0.0
    mlp_bias: bool = False
    mlp_dropout: float = 0.0
    decoder_bias: bool = True
    classifier_pooling: Literal["cls", "mean"] = "cls"
    classifier_dropout: float = 0.0
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    deterministic_flash_attn: bool = False  # flash-attention only; the numbers do not depend on it
    sparse_prediction: bool = False
    sparse_pred_ignore_index: int = -100
    reference_compile: bool | None = None  # torch.compile of HF's modules: same numbers
    repad_logits_with_grad: bool = False  # flash-attention only
    rope_scaling: dict[str, Any] | None = None

    # Shared fields ModernBERT names differently (or lacks): see _NOT_MODERNBERT.
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0

    @field_validator("hidden_activation", "classifier_activation")
    @classmethod
    def _activation(cls, value: str) -> str:
        if value not in ACTIVATIONS:
            raise ValueError(f"{value!r} is not a supported activation; choose one of {', '.join(ACTIVATIONS)}")
        return value

    @model_validator(mode="after")
    def _check_modernbert(self) -> ModernBertConfig:
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")
        for name in ("global_rope_theta", "local_rope_theta"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.sparse_prediction:
            raise ValueError(
                "sparse_prediction=True is not supported: it returns logits for the labelled positions only "
                "(a shape that depends on the labels); tandem returns every position's logits"
            )
        if self.rope_scaling is not None:
            raise ValueError(f"rope_scaling={self.rope_scaling} is not supported: tandem implements default RoPE")
        return self

    def to_hf_dict(self) -> dict[str, Any]:
        data = super().to_hf_dict()
        for name in (*_NOT_MODERNBERT, "layer_norm_eps", "reference_compile"):  # HF's to_dict drops the last
            data.pop(name, None)
        return data


def _norm(config: ModernBertConfig, path: str) -> LayerNorm:
    return LayerNorm(path=path, features=config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


def _out_std(config: ModernBertConfig) -> float:
    """HF's init of output projections: ``initializer_range / sqrt(2 * num_hidden_layers)``."""
    return config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers)


def _attention(config: ModernBertConfig, index: int) -> Attention:
    """``attn``: fused ``Wqkv``, rotary; global (``global_rope_theta``) on every n-th layer from layer 0,
    else a window of ``local_attention // 2`` positions each side (``local_rope_theta``), as HF PyTorch."""
    h, std = config.hidden_size, config.initializer_range
    local = index % config.global_attn_every_n_layers != 0
    if local:
        theta = config.local_rope_theta if config.local_rope_theta is not None else config.global_rope_theta
        half = config.local_attention // 2
        # Banded from two windows' length on: below it the full masked product is as cheap.
        variant: Any = SlidingWindowAttention(half_width=half, band_min_length=max(4 * half, 1))
    else:
        theta, variant = config.global_rope_theta, FullAttention()
    return Attention(
        path="attn",
        qkv=linear("Wqkv", h, 3 * h, std, bias=config.attention_bias, axes=QKV_AXES),
        rotary=Rotary(theta=theta),
        num_heads=config.num_attention_heads,
        head_dim=config.head_dim,
        score_divisor=score_divisor(config.head_dim),
        dropout=config.attention_dropout,
        mask_fill="dtype_min",
        variant=variant,
        supports_head_mask=False,  # HF's ModernBERT takes no head mask
    )


def _layer(config: ModernBertConfig, index: int) -> TransformerLayer:
    """``layers.{index}``: pre-LN attention (layer 0 has no ``attn_norm``: HF's Identity) and GeGLU ``mlp``.

    HF applies ``mlp_dropout`` to the gated state before ``Wo`` (``inner_dropout``) and no dropout to ``Wo``'s
    output; the attention block drops ``attn.Wo``'s output (HF's ``out_drop``)."""
    h, inner = config.hidden_size, config.intermediate_size
    return TransformerLayer(
        path=f"layers.{index}",
        attention=AttentionBlock(
            path="",
            norm=None if index == 0 else _norm(config, "attn_norm"),
            attention=_attention(config, index),
            output=AddNorm(
                path="",
                dense=linear("attn.Wo", h, h, _out_std(config), bias=config.attention_bias, axes=("heads", "embed")),
                dropout=config.attention_dropout,
                norm=None,
            ),
        ),
        ffn_norm=_norm(config, "mlp_norm"),
        intermediate=linear("mlp.Wi", h, 2 * inner, config.initializer_range, bias=config.mlp_bias, axes=MLP_IN_AXES),
        activation=config.hidden_activation,
        gated=True,
        inner_dropout=config.mlp_dropout,
        output=AddNorm(
            path="",
            dense=linear("mlp.Wo", inner, h, _out_std(config), bias=config.mlp_bias, axes=("mlp", "embed")),
            dropout=0.0,
            norm=None,
        ),
    )


def _backbone(config: ModernBertConfig, prefix: str, pooled: bool) -> Backbone:
    """``embeddings`` (token table, norm), ``layers.*`` and ``final_norm`` under ``prefix``; no pooler."""
    steps = [(i,) for i in range(config.num_hidden_layers)]
    return Backbone(
        path=prefix,
        embeddings=Embeddings(
            path="embeddings",
            word=Embed(
                path="tok_embeddings",
                num_embeddings=config.vocab_size,
                features=config.hidden_size,
                init_std=config.initializer_range,
                padding_idx=config.pad_token_id,
            ),
            position=None,  # positions enter through rotary attention
            token_type=None,
            norm=_norm(config, "norm"),
            dropout=config.embedding_dropout,
            sum_order=("word",),
        ),
        encoder=Encoder(
            path="",
            layers=[_layer(config, i) for i in range(config.num_hidden_layers)],
            schedule=steps,
            head_mask_index=steps,
            num_head_mask_rows=config.num_hidden_layers,
        ),
        final_norm=_norm(config, "final_norm"),
    )


def _masked_lm(config: ModernBertConfig, prefix: str, output: str) -> LMHead:
    """``head`` (dense, act, norm) then ``decoder`` (tied to ``tok_embeddings``) with its own bias."""
    h = config.hidden_size
    return LMHead(
        path="",
        transform=linear("head.dense", h, h, _out_std(config), bias=config.classifier_bias),
        activation=config.classifier_activation,
        norm=_norm(config, "head.norm"),
        decoder=LMDecoder(
            path="decoder",
            in_features=h,
            vocab_size=config.vocab_size,
            tied_to=join(prefix, "embeddings.tok_embeddings") if config.tie_word_embeddings else None,
            init_std=_out_std(config),
            bias=config.decoder_bias,
        ),
        bias=False,
        output=output,
    )


def _prediction(task: str) -> Any:
    """``head`` then ``drop`` and ``classifier`` on the pooled (or per-token) output, as HF's task classes."""

    def heads(config: ModernBertConfig, prefix: str) -> TaskHeads:
        h = config.hidden_size
        classes = 1 if task == "multiple_choice" else config.num_labels
        if task == "question_answering" and classes != 2:
            raise ValueError(f"question_answering needs num_labels == 2 (start and end logits), got {classes}")
        pooling = {
            "sequence_classification": "first" if config.classifier_pooling == "cls" else "mean",
            # HF's multiple choice takes the first position the mask keeps (left padding), not position 0.
            "multiple_choice": "first_unmasked" if config.classifier_pooling == "cls" else "mean",
        }.get(task, "none")
        head = PredictionHead(
            pooling=pooling,
            dense=linear("head.dense", h, h, _out_std(config), bias=config.classifier_bias),
            activation=config.classifier_activation,
            norm=_norm(config, "head.norm"),
            dropout=config.classifier_dropout,
            classifier=linear("classifier", h, classes, h**-0.5, axes=CLASSES_AXES),
            output="logits",
            split=("start_logits", "end_logits") if task == "question_answering" else None,
        )
        loss: Any = {
            "sequence_classification": ClassificationLoss(
                logits="logits", labels="labels", num_labels=config.num_labels, problem_type=config.problem_type
            ),
            "question_answering": SpanLoss(),
        }.get(task, CrossEntropyLoss(logits="logits", labels="labels"))
        return TaskHeads([head], [loss])

    return heads


TASKS: dict[str, Task] = {
    "base": Task("ModernBertModel", base_heads, pooled=False),
    "masked_lm": Task("ModernBertForMaskedLM", masked_lm_heads(_masked_lm), pooled=False),
    "sequence_classification": Task(
        "ModernBertForSequenceClassification", _prediction("sequence_classification"), pooled=False
    ),
    "multiple_choice": Task("ModernBertForMultipleChoice", _prediction("multiple_choice"), pooled=False),
    "token_classification": Task(
        "ModernBertForTokenClassification", _prediction("token_classification"), pooled=False
    ),
    "question_answering": Task("ModernBertForQuestionAnswering", _prediction("question_answering"), pooled=False),
}


def build_modernbert(config: ModernBertConfig, task: str) -> ModelGraph:
    """Compile a :class:`ModernBertConfig` and a task name into the layer graph of HF's matching class."""
    return build_task_graph("modernbert", TASKS, config, task, "model", _backbone)
