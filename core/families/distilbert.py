"""DistilBERT: a BERT without token types under its own parameter names, optionally on a fixed sinusoidal
position table, as one spec."""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict, Field

from ..config import FamilyConfig
from ..nodes import (
    AddNorm,
    Attention,
    AttentionBlock,
    Backbone,
    ClassificationHead,
    ClassificationLoss,
    CrossEntropyLoss,
    DenseHead,
    Embed,
    Embeddings,
    Encoder,
    FullAttention,
    LayerNorm,
    LMDecoder,
    LMHead,
    ModelGraph,
    SpanLoss,
    TransformerLayer,
    join,
    score_divisor,
)
from .common import CLASSES_AXES, MLP_IN_AXES, QKV_AXES, linear
from .tasks import Task, TaskHeads, base_heads, build_task_graph, shared_heads

# HF DistilBERT's every LayerNorm, whatever the config says.
EPS = 1e-12


class DistilBertConfig(FamilyConfig):
    """HF ``DistilBertConfig``: HF's field names (``dim``, ``n_layers``, ``n_heads``, ``hidden_dim``,
    ``dropout``, ``attention_dropout``, ``activation``) and defaults.

    Each of those is also reachable under the name the other families use (``config.hidden_size`` is
    ``dim``), as HF's ``attribute_map`` does; ``config.json`` is written with HF's names. DistilBERT has no
    token types and no ``layer_norm_eps`` (its norms use 1e-12): those shared fields are fixed and not written.
    """

    model_type: ClassVar[str] = "distilbert"
    model_config = ConfigDict(populate_by_name=True)
    positive_fields: ClassVar[tuple[str, ...]] = FamilyConfig.positive_fields
    dropout_fields: ClassVar[tuple[str, ...]] = (
        *FamilyConfig.dropout_fields,
        "qa_dropout",
        "seq_classif_dropout",
    )

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    num_hidden_layers: int = Field(6, alias="n_layers")
    num_attention_heads: int = Field(12, alias="n_heads")
    hidden_size: int = Field(768, alias="dim")
    intermediate_size: int = Field(4 * 768, alias="hidden_dim")
    hidden_dropout_prob: float = Field(0.1, alias="dropout")
    attention_probs_dropout_prob: float = Field(0.1, alias="attention_dropout")
    hidden_act: str = Field("gelu", alias="activation")
    initializer_range: float = 0.02
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    pad_token_id: int | None = 0
    type_vocab_size: int = Field(1, exclude=True, frozen=True)  # no token types
    layer_norm_eps: float = Field(EPS, exclude=True, frozen=True)  # HF hard-codes 1e-12


def _layer(config: DistilBertConfig, index: int) -> TransformerLayer:
    """``layer.{index}``: ``attention.{q,k,v,out}_lin``, ``sa_layer_norm``, ``ffn.lin1/lin2``,
    ``output_layer_norm``. Post-LN, no dropout after ``out_lin`` (HF applies none), dropout after ``lin2``."""
    h, i, std = config.hidden_size, config.intermediate_size, config.initializer_range
    return TransformerLayer(
        path=f"layer.{index}",
        attention=AttentionBlock(
            path="",
            attention=Attention(
                path="attention",
                query=linear("q_lin", h, h, std, axes=QKV_AXES),
                key=linear("k_lin", h, h, std, axes=QKV_AXES),
                value=linear("v_lin", h, h, std, axes=QKV_AXES),
                num_heads=config.num_attention_heads,
                head_dim=config.head_dim,
                score_divisor=score_divisor(config.head_dim),
                dropout=config.attention_probs_dropout_prob,
                mask_fill="dtype_min",  # HF fills masked scores with finfo.min
                variant=FullAttention(),
            ),
            output=AddNorm(
                path="",
                dense=linear("attention.out_lin", h, h, std, axes=("heads", "embed")),
                dropout=0.0,
                norm=LayerNorm(path="sa_layer_norm", features=h, eps=EPS),
            ),
        ),
        intermediate=linear("ffn.lin1", h, i, std, axes=MLP_IN_AXES),
        activation=config.hidden_act,
        output=AddNorm(
            path="",
            dense=linear("ffn.lin2", i, h, std, axes=("mlp", "embed")),
            dropout=config.hidden_dropout_prob,
            norm=LayerNorm(path="output_layer_norm", features=h, eps=EPS),
        ),
    )


def _backbone(config: DistilBertConfig, prefix: str, pooled: bool) -> Backbone:
    """``embeddings`` (word + position, no token types), ``transformer.layer.*``; no pooler."""
    h, std = config.hidden_size, config.initializer_range
    steps = [(i,) for i in range(config.num_hidden_layers)]
    return Backbone(
        path=prefix,
        embeddings=Embeddings(
            path="embeddings",
            word=Embed(
                path="word_embeddings",
                num_embeddings=config.vocab_size,
                features=h,
                init_std=std,
                padding_idx=config.pad_token_id,
                axes=("vocab", "embed"),
            ),
            position=Embed(
                path="position_embeddings",
                num_embeddings=config.max_position_embeddings,
                features=h,
                init_std=std,
                axes=("positions", "embed"),
                table="sinusoidal" if config.sinusoidal_pos_embds else "learned",
            ),
            token_type=None,
            norm=LayerNorm(path="LayerNorm", features=h, eps=EPS),
            dropout=config.hidden_dropout_prob,
            sum_order=("word", "position"),
        ),
        encoder=Encoder(
            path="transformer",
            layers=[_layer(config, i) for i in range(config.num_hidden_layers)],
            schedule=steps,
            head_mask_index=steps,
            num_head_mask_rows=len(steps),
        ),
    )


def _masked_lm(config: DistilBertConfig, prefix: str) -> TaskHeads:
    """``vocab_projector(vocab_layer_norm(act(vocab_transform(x))))``; the vocabulary bias is the
    ``vocab_projector`` Linear's, its weight the word embedding when tied."""
    h, std = config.hidden_size, config.initializer_range
    head = LMHead(
        path="",
        transform=linear("vocab_transform", h, h, std),
        activation=config.hidden_act,
        norm=LayerNorm(path="vocab_layer_norm", features=h, eps=EPS),
        decoder=LMDecoder(
            path="vocab_projector",
            in_features=h,
            vocab_size=config.vocab_size,
            tied_to=join(prefix, "embeddings.word_embeddings") if config.tie_word_embeddings else None,
            init_std=std,
            bias=True,
        ),
        bias=False,
        output="logits",
    )
    return TaskHeads([head], [CrossEntropyLoss(logits="logits", labels="labels")])


def _classifier(config: DistilBertConfig, classes: int) -> ClassificationHead:
    """``classifier(dropout(relu(pre_classifier(h[:, 0]))))``: ReLU whatever ``activation`` says, no dropout
    before ``pre_classifier``, ``seq_classif_dropout`` after it."""
    h, std = config.hidden_size, config.initializer_range
    return ClassificationHead(
        path="",
        input_dropout=0.0,
        dense=linear("pre_classifier", h, h, std),
        activation="relu",
        dropout=config.seq_classif_dropout,
        out_proj=linear("classifier", h, classes, std, axes=CLASSES_AXES),
        output="logits",
    )


def _sequence_classification(config: DistilBertConfig, prefix: str) -> TaskHeads:
    loss = ClassificationLoss(
        logits="logits", labels="labels", num_labels=config.num_labels, problem_type=config.problem_type
    )
    return TaskHeads([_classifier(config, config.num_labels)], [loss])


def _multiple_choice(config: DistilBertConfig, prefix: str) -> TaskHeads:
    return TaskHeads([_classifier(config, 1)], [CrossEntropyLoss(logits="logits", labels="labels")])


def _question_answering(config: DistilBertConfig, prefix: str) -> TaskHeads:
    """``qa_outputs(dropout(x))`` with ``qa_dropout``, split into start and end logits."""
    if config.num_labels != 2:
        raise ValueError(
            f"question_answering needs num_labels == 2 (start and end logits), got num_labels={config.num_labels}"
        )
    head = DenseHead(
        source="sequence",
        dropout=config.qa_dropout,
        dense=linear("qa_outputs", config.hidden_size, 2, config.initializer_range, axes=CLASSES_AXES),
        output="logits",
        split=("start_logits", "end_logits"),
    )
    return TaskHeads([head], [SpanLoss()])


# DistilBERT has no pooler in any class.
TASKS: dict[str, Task] = {
    "base": Task("DistilBertModel", base_heads, pooled=False),
    "masked_lm": Task("DistilBertForMaskedLM", _masked_lm, pooled=False),
    "sequence_classification": Task(
        "DistilBertForSequenceClassification", _sequence_classification, pooled=False
    ),
    "multiple_choice": Task("DistilBertForMultipleChoice", _multiple_choice, pooled=False),
    "token_classification": Task(
        "DistilBertForTokenClassification",
        shared_heads("token_classification", lambda config: config.hidden_dropout_prob),
        pooled=False,
    ),
    "question_answering": Task("DistilBertForQuestionAnswering", _question_answering, pooled=False),
}


def build_distilbert(config: DistilBertConfig, task: str) -> ModelGraph:
    """Compile a :class:`DistilBertConfig` and a task name into the layer graph of HF's matching class.

    With ``sinusoidal_pos_embds`` HF Flax has no position table (it computes the same values on the fly)
    while HF PyTorch keeps it as a frozen parameter: the graph declares it absent from HF Flax's tree.
    """
    graph = build_task_graph("distilbert", TASKS, config, task, "distilbert", _backbone)
    if not config.sinusoidal_pos_embds:
        return graph
    table = join(graph.backbone.path, "embeddings.position_embeddings")
    return graph.model_copy(update={"flax_absent": (*graph.flax_absent, table)})
