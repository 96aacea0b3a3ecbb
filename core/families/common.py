"""Builder pieces several families share: projections, embeddings, the MLM head and the task heads.

Each function receives sizes and numeric choices, never a whole config, so a family builder reads as the
list of what makes its architecture different.
"""

from __future__ import annotations

from typing import Any, Literal

from ..nodes import (
    AddNorm,
    Attention,
    AttentionBlock,
    AttentionVariant,
    ClassificationLoss,
    CrossEntropyLoss,
    DenseHead,
    Embed,
    Embeddings,
    Encoder,
    Head,
    LayerNorm,
    Linear,
    LMDecoder,
    LMHead,
    Loss,
    SpanLoss,
    TransformerLayer,
    score_divisor,
)

# Logical axes of the projections (listed in tandem.core.params' docstring): queries, keys and values map the
# model width to the heads (heads x head_dim, fused as in the torch layout); the feed-forward goes to "mlp".
QKV_AXES = ("embed", "heads")
MLP_IN_AXES = ("embed", "mlp")
CLASSES_AXES = ("embed", "classes")

# Tasks whose head is the same shape in every family (their dropout is the family's choice).
SHARED_TASKS = ("sequence_classification", "multiple_choice", "token_classification", "question_answering")


# ----------------------------------------------------------------------------------------- config checks
# Checks several families' configs share (each takes the config, reads only the fields it names).
def check_absolute_positions(config: Any) -> None:
    if config.position_embedding_type != "absolute":
        raise ValueError(
            f"position_embedding_type={config.position_embedding_type!r} is not supported: tandem implements "
            "absolute position embeddings only (HF Flax has no relative ones either)"
        )


def check_decoder_fields(config: Any) -> None:
    """``classifier_dropout`` in [0, 1) and cross-attention only on a decoder."""
    if config.classifier_dropout is not None and not 0.0 <= config.classifier_dropout < 1.0:
        raise ValueError(f"classifier_dropout must be in [0, 1), got {config.classifier_dropout}")
    if config.add_cross_attention and not config.is_decoder:
        raise ValueError(
            "add_cross_attention=True needs is_decoder=True: cross-attention layers belong to a decoder "
            "(HF PyTorch raises the same error; HF Flax would build them anyway)"
        )


def linear(
    path: str, n_in: int, n_out: int, std: float, bias: bool = True, axes: tuple[str, str] = ("embed", "embed")
) -> Linear:
    """A dense projection; ``axes``: the logical axes of its input and output features."""
    return Linear(path=path, in_features=n_in, out_features=n_out, bias=bias, init_std=std, axes=axes)


def add_norm(
    path: str, n_in: int, features: int, *, dropout: float, eps: float, std: float, in_axis: str = "embed"
) -> AddNorm:
    """``LayerNorm(dropout(dense(x)) + residual)`` under BERT's names: ``{path}.dense``, ``{path}.LayerNorm``.
    ``in_axis``: the logical axis of the dense input (``heads`` after attention, ``mlp`` after the FFN)."""
    return AddNorm(
        path=path,
        dense=linear("dense", n_in, features, std, axes=(in_axis, "embed")),
        dropout=dropout,
        norm=LayerNorm(path="LayerNorm", features=features, eps=eps),
    )


def attention_block(
    path: str,
    *,
    features: int,
    num_heads: int,
    head_dim: int,
    attention_dropout: float,
    hidden_dropout: float,
    eps: float,
    std: float,
    variant: AttentionVariant,
    source: Literal["self", "encoder"] = "self",
    bias: bool = True,
) -> AttentionBlock:
    """BERT's post-LN attention block: ``{path}.self.{query,key,value}`` (finfo.min mask fill), then
    ``{path}.output``. ``source="encoder"``: cross-attention, keys and values from the encoder states."""
    return AttentionBlock(
        path=path,
        attention=Attention(
            path="self",
            query=linear("query", features, features, std, bias=bias, axes=QKV_AXES),
            key=linear("key", features, features, std, bias=bias, axes=QKV_AXES),
            value=linear("value", features, features, std, bias=bias, axes=QKV_AXES),
            num_heads=num_heads,
            head_dim=head_dim,
            score_divisor=score_divisor(head_dim),
            dropout=attention_dropout,
            mask_fill="dtype_min",
            variant=variant,
            source=source,
        ),
        output=add_norm("output", features, features, dropout=hidden_dropout, eps=eps, std=std, in_axis="heads"),
    )


def post_ln_layer(
    index: int,
    *,
    attention: AttentionBlock,
    crossattention: AttentionBlock | None,
    features: int,
    intermediate: int,
    activation: str,
    dropout: float,
    eps: float,
    std: float,
) -> TransformerLayer:
    """BERT's ``layer.{index}``: the attention block(s), ``intermediate.dense`` and its activation, ``output``."""
    return TransformerLayer(
        path=f"layer.{index}",
        attention=attention,
        crossattention=crossattention,
        intermediate=linear("intermediate.dense", features, intermediate, std, axes=MLP_IN_AXES),
        activation=activation,
        output=add_norm("output", intermediate, features, dropout=dropout, eps=eps, std=std, in_axis="mlp"),
    )


def config_layer(
    config: Any, index: int, attention: AttentionBlock, crossattention: AttentionBlock | None = None
) -> TransformerLayer:
    """:func:`post_ln_layer` sized by a BERT-style config's fields (``hidden_size``, ``intermediate_size``,
    ``hidden_act``, ``hidden_dropout_prob``, ``layer_norm_eps``, ``initializer_range``)."""
    return post_ln_layer(
        index,
        attention=attention,
        crossattention=crossattention,
        features=config.hidden_size,
        intermediate=config.intermediate_size,
        activation=config.hidden_act,
        dropout=config.hidden_dropout_prob,
        eps=config.layer_norm_eps,
        std=config.initializer_range,
    )


def layer_stack(layers: list[TransformerLayer]) -> Encoder:
    """``encoder.layer.*``: each layer runs once, in order, with its own head-mask row."""
    steps = [(i,) for i in range(len(layers))]
    return Encoder(path="encoder", layers=layers, schedule=steps, head_mask_index=steps, num_head_mask_rows=len(layers))


def embeddings(
    *,
    vocab_size: int,
    max_positions: int,
    type_vocab_size: int,
    features: int,
    pad_token_id: int | None,
    eps: float,
    dropout: float,
    std: float,
    sum_order: tuple[str, ...] = ("word", "token_type", "position"),
    axis: str = "embed",
) -> Embeddings:
    """HF's ``embeddings`` module: word/position/token-type tables, ``LayerNorm``, dropout. ``axis``: the
    logical axis of the embedding features (``embed_factor`` where they are narrower than the model)."""
    return Embeddings(
        path="embeddings",
        word=Embed(
            path="word_embeddings",
            num_embeddings=vocab_size,
            features=features,
            init_std=std,
            padding_idx=pad_token_id,
            axes=("vocab", axis),
        ),
        position=Embed(
            path="position_embeddings",
            num_embeddings=max_positions,
            features=features,
            init_std=std,
            axes=("positions", axis),
        ),
        token_type=Embed(
            path="token_type_embeddings",
            num_embeddings=type_vocab_size,
            features=features,
            init_std=std,
            axes=("token_types", axis),
        ),
        norm=LayerNorm(path="LayerNorm", features=features, eps=eps, axis=axis),
        dropout=dropout,
        sum_order=sum_order,
    )


def lm_head(
    *,
    path: str,
    transform_path: str,
    norm_path: str,
    hidden: int,
    features: int,
    vocab_size: int,
    activation: str,
    eps: float,
    std: float,
    tied_to: str | None,
    output: str,
    axis: str = "embed",
) -> LMHead:
    """``decoder(norm(act(transform(x)))) + bias``: hidden -> features -> vocab, decoder tied or not.
    ``axis``: the logical axis of ``features`` (the embedding's, so that a tied decoder shares its layout)."""
    return LMHead(
        path=path,
        transform=linear(transform_path, hidden, features, std, axes=("embed", axis)),
        activation=activation,
        norm=LayerNorm(path=norm_path, features=features, eps=eps, axis=axis),
        decoder=LMDecoder(
            path="decoder",
            in_features=features,
            vocab_size=vocab_size,
            tied_to=tied_to,
            init_std=std,
            feature_axis=axis,
        ),
        output=output,
    )


def shared_task_head(
    task: str,
    *,
    hidden: int,
    num_labels: int,
    problem_type: str | None,
    std: float,
    dropout: float,
) -> tuple[list[Head], list[Loss]]:
    """The head and loss of one of :data:`SHARED_TASKS` (``classifier`` / ``qa_outputs``, as HF names them).

    ``dropout`` is applied before the classifier (the family decides its value; question answering has none).
    """
    if task == "sequence_classification":
        head = DenseHead(
            source="pooled",
            dropout=dropout,
            dense=linear("classifier", hidden, num_labels, std, axes=CLASSES_AXES),
            output="logits",
        )
        loss: Loss = ClassificationLoss(
            logits="logits", labels="labels", num_labels=num_labels, problem_type=problem_type
        )
        return [head], [loss]
    if task == "multiple_choice":
        head = DenseHead(
            source="pooled",
            dropout=dropout,
            dense=linear("classifier", hidden, 1, std, axes=CLASSES_AXES),
            output="logits",
        )
        return [head], [CrossEntropyLoss(logits="logits", labels="labels")]
    if task == "token_classification":
        head = DenseHead(
            source="sequence",
            dropout=dropout,
            dense=linear("classifier", hidden, num_labels, std, axes=CLASSES_AXES),
            output="logits",
        )
        return [head], [CrossEntropyLoss(logits="logits", labels="labels")]
    if task == "question_answering":
        if num_labels != 2:
            raise ValueError(
                f"question_answering needs num_labels == 2 (start and end logits), got num_labels={num_labels}"
            )
        head = DenseHead(
            source="sequence",
            dropout=0.0,
            dense=linear("qa_outputs", hidden, 2, std, axes=CLASSES_AXES),
            output="logits",
            split=("start_logits", "end_logits"),
        )
        return [head], [SpanLoss()]
    raise ValueError(f"{task!r} is not a shared task ({', '.join(SHARED_TASKS)})")
