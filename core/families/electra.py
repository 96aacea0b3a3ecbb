"""ELECTRA: BERT's encoder on narrower embeddings, with the discriminator and generator heads, as one spec."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import model_validator

from ..config import FamilyConfig
from ..nodes import (
    ACTIVATIONS,
    Backbone,
    BinaryCrossEntropyLoss,
    ClassificationHead,
    ClassificationLoss,
    CrossEntropyLoss,
    Encoder,
    FullAttention,
    LayerNorm,
    LMDecoder,
    LMHead,
    ModelGraph,
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
    linear,
)
from .tasks import Task, TaskHeads, base_heads, build_task_graph, causal_lm_heads, shared_heads


class ElectraConfig(FamilyConfig):
    """HF ``ElectraConfig``: same field names, same defaults (ELECTRA-small's discriminator).

    HF reads two more multiple-choice fields when a config has them, ``summary_first_dropout`` (default 0)
    and ``summary_proj_to_labels``; tandem keeps them as extra fields and reads them the same way.
    """

    model_type: ClassVar[str] = "electra"
    positive_fields: ClassVar[tuple[str, ...]] = (*FamilyConfig.positive_fields, "embedding_size")
    dropout_fields: ClassVar[tuple[str, ...]] = (*FamilyConfig.dropout_fields, "summary_last_dropout")

    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    summary_type: Literal["last", "first", "mean", "cls_index", "attn"] = "first"
    summary_use_proj: bool = True
    summary_activation: str | None = "gelu"
    summary_last_dropout: float = 0.1
    position_embedding_type: Literal["absolute", "relative_key", "relative_key_query"] = "absolute"
    use_cache: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    classifier_dropout: float | None = None
    chunk_size_feed_forward: int = 0  # torch-only memory option; values are unchanged (up to GEMM ulps)

    @model_validator(mode="after")
    def _check_electra(self) -> ElectraConfig:
        check_absolute_positions(self)
        check_decoder_fields(self)
        if self.summary_type in ("cls_index", "attn"):
            raise ValueError(
                f"summary_type={self.summary_type!r} is not supported: tandem's multiple-choice summary takes the "
                "first or last position or the mean (HF PyTorch has no 'attn' summary either)"
            )
        if not self.summary_use_proj:
            raise ValueError("summary_use_proj=False is not supported: the multiple-choice summary has a projection")
        if self.summary_activation is not None and self.summary_activation not in ACTIVATIONS:
            raise ValueError(
                f"summary_activation={self.summary_activation!r} is not supported; choose one of "
                f"{', '.join(ACTIVATIONS)} or None"
            )
        if self._extra("summary_proj_to_labels", False):
            raise ValueError(
                "summary_proj_to_labels=True is not supported: the summary projects to hidden_size, as the "
                "multiple-choice classifier after it reads"
            )
        first = self._extra("summary_first_dropout", 0.0)
        if isinstance(first, bool) or not isinstance(first, (int, float)) or not 0.0 <= first < 1.0:
            raise ValueError(f"summary_first_dropout must be a number in [0, 1), got {first!r}")
        return self

    def _extra(self, name: str, default: Any) -> Any:
        """An HF field ``ElectraConfig`` does not declare but HF's summary reads when present."""
        return (self.model_extra or {}).get(name, default)


def _layer(config: ElectraConfig, index: int) -> TransformerLayer:
    def block(path: str, source: Literal["self", "encoder"]) -> Any:
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

    cross = block("crossattention", "encoder") if config.add_cross_attention else None
    layer = config_layer(config, index, block("attention", "self"), cross)
    return layer.model_copy(update={"path": f"encoder.{layer.path}"})


def _factorised(config: ElectraConfig) -> bool:
    """HF adds ``embeddings_project`` (E -> H) only when the widths differ."""
    return config.embedding_size != config.hidden_size


def _axis(config: ElectraConfig) -> str:
    return "embed_factor" if _factorised(config) else "embed"


def _backbone(config: ElectraConfig, prefix: str, pooled: bool) -> Backbone:
    """``embeddings`` (E wide), ``embeddings_project`` when E != H, then ``encoder.layer.*``; no pooler.

    The encoder node sits at the base model's own path, so that its input projection is HF's
    ``electra.embeddings_project`` (a sibling of ``electra.encoder``), run after the embeddings' norm and
    dropout as in HF; hidden_states[0] is then the projected embeddings, as HF's encoder records them.
    """
    e, h, std = config.embedding_size, config.hidden_size, config.initializer_range
    steps = [(i,) for i in range(config.num_hidden_layers)]
    project = None
    if _factorised(config):
        project = linear("embeddings_project", e, h, std, axes=("embed_factor", "embed"))
    return Backbone(
        path=prefix,
        embeddings=embeddings(
            vocab_size=config.vocab_size,
            max_positions=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            features=e,
            pad_token_id=config.pad_token_id,
            eps=config.layer_norm_eps,
            dropout=config.hidden_dropout_prob,
            std=std,
            axis=_axis(config),
        ),
        encoder=Encoder(
            path="",
            input_projection=project,
            layers=[_layer(config, i) for i in range(config.num_hidden_layers)],
            schedule=steps,
            head_mask_index=steps,
            num_head_mask_rows=len(steps),
        ),
    )


def _generator(config: ElectraConfig, prefix: str, output: str) -> LMHead:
    """``generator_lm_head(LayerNorm(gelu(dense(x))))``: H -> E -> vocab, the vocabulary bias on the
    ``generator_lm_head`` Linear, whose weight is the word embedding when tied."""
    e, std, axis = config.embedding_size, config.initializer_range, _axis(config)
    return LMHead(
        path="",
        transform=linear("generator_predictions.dense", config.hidden_size, e, std, axes=("embed", axis)),
        # HF PyTorch's generator uses exact gelu whatever hidden_act says (HF Flax uses hidden_act).
        activation="gelu",
        norm=LayerNorm(path="generator_predictions.LayerNorm", features=e, eps=config.layer_norm_eps, axis=axis),
        decoder=LMDecoder(
            path="generator_lm_head",
            in_features=e,
            vocab_size=config.vocab_size,
            tied_to=join(prefix, "embeddings.word_embeddings") if config.tie_word_embeddings else None,
            init_std=std,
            feature_axis=axis,
            bias=True,
        ),
        bias=False,
        output=output,
    )


def _masked_lm(config: ElectraConfig, prefix: str) -> TaskHeads:
    return TaskHeads([_generator(config, prefix, "logits")], [CrossEntropyLoss(logits="logits", labels="labels")])


def _discriminator(config: ElectraConfig, prefix: str) -> TaskHeads:
    """Replaced-token detection: ``dense_prediction(act(dense(h)))`` per token, logits (B, S), and HF's BCE
    over the positions the attention mask keeps."""
    h, std = config.hidden_size, config.initializer_range
    head = ClassificationHead(
        path="discriminator_predictions",
        pool="none",
        dropout=0.0,
        dense=linear("dense", h, h, std),
        activation=config.hidden_act,
        out_proj=linear("dense_prediction", h, 1, std, axes=CLASSES_AXES),
        output="logits",
        split=("logits",),
    )
    return TaskHeads([head], [BinaryCrossEntropyLoss(logits="logits", labels="labels")])


def _classifier_dropout(config: ElectraConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def _sequence_classification(config: ElectraConfig, prefix: str) -> TaskHeads:
    """``ElectraClassificationHead``: dropout, dense, gelu (HF's fixed choice, not hidden_act), dropout,
    ``out_proj``, on the first token."""
    h, std = config.hidden_size, config.initializer_range
    head = ClassificationHead(
        path="classifier",
        dropout=_classifier_dropout(config),
        dense=linear("dense", h, h, std),
        activation="gelu",
        out_proj=linear("out_proj", h, config.num_labels, std, axes=CLASSES_AXES),
        output="logits",
    )
    loss = ClassificationLoss(
        logits="logits", labels="labels", num_labels=config.num_labels, problem_type=config.problem_type
    )
    return TaskHeads([head], [loss])


def _multiple_choice(config: ElectraConfig, prefix: str) -> TaskHeads:
    """``sequence_summary`` (HF's ``SequenceSummary``: pool by ``summary_type``, first dropout, ``summary``
    projection, ``summary_activation``, last dropout), then ``classifier`` to one logit per choice."""
    h, std = config.hidden_size, config.initializer_range
    head = ClassificationHead(
        path="",
        pool=config.summary_type,
        input_dropout=float(config._extra("summary_first_dropout", 0.0)),
        dense=linear("sequence_summary.summary", h, h, std),
        activation=config.summary_activation or "linear",
        dropout=config.summary_last_dropout,
        out_proj=linear("classifier", h, 1, std, axes=CLASSES_AXES),
        output="logits",
    )
    return TaskHeads([head], [CrossEntropyLoss(logits="logits", labels="labels")])


# ELECTRA has no pooler in any class.
TASKS: dict[str, Task] = {
    "base": Task("ElectraModel", base_heads, pooled=False),
    "pretraining": Task("ElectraForPreTraining", _discriminator, pooled=False),
    "masked_lm": Task("ElectraForMaskedLM", _masked_lm, pooled=False),
    "causal_lm": Task("ElectraForCausalLM", causal_lm_heads(_generator), pooled=False),
    "sequence_classification": Task("ElectraForSequenceClassification", _sequence_classification, pooled=False),
    "multiple_choice": Task("ElectraForMultipleChoice", _multiple_choice, pooled=False),
    "token_classification": Task(
        "ElectraForTokenClassification", shared_heads("token_classification", _classifier_dropout), pooled=False
    ),
    "question_answering": Task(
        "ElectraForQuestionAnswering", shared_heads("question_answering", lambda config: 0.0), pooled=False
    ),
}


def build_electra(config: ElectraConfig, task: str) -> ModelGraph:
    """Compile an :class:`ElectraConfig` and a task name into the layer graph of HF's matching class."""
    return build_task_graph(
        "electra", TASKS, config, task, "electra", _backbone, use_cache=config.use_cache and config.is_decoder
    )
