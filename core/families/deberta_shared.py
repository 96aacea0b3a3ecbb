"""What DeBERTa v1 and v2/v3 share: the config fields and checks, the embeddings, the relative-embedding table,
the legacy masked-LM head and the context-pooler classification heads (HF's DeBERTa modules that both
``modeling_deberta.py`` and ``modeling_deberta_v2.py`` define the same way).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import model_validator

from ..config import FamilyConfig
from ..nodes import (
    ACTIVATIONS,
    ClassificationHead,
    ClassificationLoss,
    Embed,
    Embeddings,
    LayerNorm,
    LMHead,
    join,
)
from .common import CLASSES_AXES, linear, lm_head
from .tasks import Task, TaskHeads, shared_heads

POSITION_TERMS = ("c2p", "p2c")


class DisentangledConfig(FamilyConfig):
    """The fields both DeBERTa configs have, with HF's names and defaults (including the ones HF reads with
    ``getattr``: ``embedding_size``, ``pooler_hidden_size``, ``cls_dropout``), and their checks."""

    positive_fields: ClassVar[tuple[str, ...]] = tuple(
        name for name in FamilyConfig.positive_fields if name != "type_vocab_size"
    )
    dropout_fields: ClassVar[tuple[str, ...]] = (*FamilyConfig.dropout_fields, "pooler_dropout")

    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_biased_input: bool = True
    pos_att_type: list[str] | str | None = None
    embedding_size: int | None = None
    pooler_hidden_size: int | None = None
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    cls_dropout: float | None = None
    legacy: bool = True

    @model_validator(mode="after")
    def _check_disentangled(self) -> DisentangledConfig:
        unknown = [term for term in self.position_terms if term not in POSITION_TERMS]
        if unknown:
            raise ValueError(f"pos_att_type={self.pos_att_type!r}: {unknown} not supported (use c2p and/or p2c)")
        if self.pooler_hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"pooler_hidden_act={self.pooler_hidden_act!r} is not supported; choose one of {', '.join(ACTIVATIONS)}"
            )
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
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
    def relative_distance(self) -> int:
        """``max_relative_positions``, or ``max_position_embeddings`` when it is below 1 (as HF)."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings


def embeddings(config: DisentangledConfig) -> Embeddings:
    """Word (+ position when ``position_biased_input``) (+ token type when ``type_vocab_size > 0``), summed in
    that order, ``embed_proj`` to the model width when ``embedding_size`` differs, LayerNorm, dropout (the mask is
    multiplied in by the relative encoder)."""
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
        # HF's DeBERTa classes ignore a position table in a checkpoint whose config turns absolute positions off
        # (``_keys_to_ignore_on_load_unexpected``); so does tandem.
        ignored=() if position else ("position_embeddings.weight",),
    )


def relative_table(config: DisentangledConfig, rows: int) -> Embed | None:
    """The encoder's ``rel_embeddings`` (``rows`` x hidden_size) when relative attention is on."""
    if not config.relative_attention:
        return None
    return Embed(
        path="rel_embeddings",
        num_embeddings=rows,
        features=config.hidden_size,
        init_std=config.initializer_range,
        axes=("positions", "embed"),
    )


def legacy_lm_head(config: DisentangledConfig, prefix: str, output: str) -> LMHead:
    """HF's legacy masked-LM head, ``cls.predictions``: transform to ``embedding_size``, LayerNorm, decoder."""
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


def pooled_head(config: DisentangledConfig, classes: int) -> ClassificationHead:
    """HF's ``ContextPooler`` (``pooler.dense`` on the first token, after ``pooler_dropout``) and
    ``classifier`` (after ``cls_dropout``, or ``hidden_dropout_prob`` without one)."""
    h, std = config.hidden_size, config.initializer_range
    return ClassificationHead(
        input_dropout=config.pooler_dropout,
        dropout=config.cls_dropout if config.cls_dropout is not None else config.hidden_dropout_prob,
        dense=linear("pooler.dense", h, h, std),
        activation=config.pooler_hidden_act,
        out_proj=linear("classifier", h, classes, std, axes=CLASSES_AXES),
        output="logits",
    )


def sequence_classification(config: DisentangledConfig, prefix: str) -> TaskHeads:
    """The pooled head and HF's DeBERTa loss (float labels without a problem type are soft targets)."""
    loss = ClassificationLoss(
        logits="logits",
        labels="labels",
        num_labels=config.num_labels,
        problem_type=config.problem_type,
        soft_labels=True,
    )
    return TaskHeads([pooled_head(config, config.num_labels)], [loss])


def per_token_tasks(class_prefix: str) -> dict[str, Task]:
    """Token classification (dropout ``hidden_dropout_prob``) and question answering (none), under HF's class
    names ``<class_prefix>ForTokenClassification`` and ``<class_prefix>ForQuestionAnswering``."""
    return {
        "token_classification": Task(
            f"{class_prefix}ForTokenClassification",
            shared_heads("token_classification", lambda config: config.hidden_dropout_prob),
            pooled=False,
        ),
        "question_answering": Task(
            f"{class_prefix}ForQuestionAnswering", shared_heads("question_answering", lambda config: 0.0), pooled=False
        ),
    }
