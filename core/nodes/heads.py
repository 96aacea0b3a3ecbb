"""Task heads and loss terms."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field, model_validator

from .base import Activation, FlaxRule, Node, NormalInit, ParamSpec, ZerosInit, _Frozen
from .layers import AddNorm, LayerNorm, Linear


class LMDecoder(Node):
    """Projection to the vocabulary. Tied: reuses the embedding at ``tied_to`` (no params of its own).

    Torch exposes ``decoder.weight`` (the embedding when tied) and ``decoder.bias`` (an alias of the
    enclosing head's ``bias``), as HF PyTorch does; flax has ``decoder/kernel`` only when untied.
    ``aliased=False``: HF's head has no decoder module (it multiplies by the embedding directly), so a tied
    decoder adds no torch keys.
    """

    kind: Literal["lm_decoder"] = "lm_decoder"
    in_features: int
    vocab_size: int
    tied_to: str | None
    init_std: float = 0.02
    feature_axis: str = "embed"
    bias: bool = False  # a bias of its own (``decoder.bias``), for heads that have none (``LMHead.bias=False``)
    aliased: bool = True

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="kernel", permutation=(1, 0))}

    def param_specs(self) -> list[ParamSpec]:
        specs = []
        if self.tied_to is None:
            specs.append(
                ParamSpec(
                    name="weight",
                    shape=(self.vocab_size, self.in_features),
                    axes=("vocab", self.feature_axis),
                    init=NormalInit(std=self.init_std),
                )
            )
        if self.bias:
            specs.append(ParamSpec(name="bias", shape=(self.vocab_size,), axes=("vocab",), init=ZerosInit()))
        return specs


class LMHead(Node):
    """``decoder(norm(act(transform(x)))) + bias`` over the sequence output."""

    kind: Literal["lm_head"] = "lm_head"
    transform: Linear
    activation: Activation
    norm: LayerNorm
    decoder: LMDecoder
    output: str
    bias: bool = True  # the head's vocabulary bias (``cls.predictions.bias``, aliased as ``decoder.bias``)

    @model_validator(mode="after")
    def _one_bias(self) -> LMHead:
        if self.bias and self.decoder.bias:
            raise ValueError("an LM head has one vocabulary bias: the head's or the decoder's, not both")
        return self

    @property
    def bias_path(self) -> str | None:
        """Where the vocabulary bias lives, relative to the head: the head itself, its decoder, or nowhere."""
        return "" if self.bias else (self.decoder.path if self.decoder.bias else None)

    def param_specs(self) -> list[ParamSpec]:
        if not self.bias:
            return []
        return [ParamSpec(name="bias", shape=(self.decoder.vocab_size,), axes=("vocab",), init=ZerosInit())]

    def outputs(self) -> dict[str, tuple[bool, int]]:
        return {self.output: (True, self.decoder.vocab_size)}


class DenseHead(Node):
    """``dropout -> dense`` on a backbone output; ``split`` cuts the last axis into named outputs."""

    kind: Literal["dense_head"] = "dense_head"
    source: Literal["pooled", "sequence"]
    dropout: float
    dense: Linear
    output: str
    split: tuple[str, ...] | None = None

    def outputs(self) -> dict[str, tuple[bool, int]]:
        per_token = self.source == "sequence"
        if self.split is not None:
            return {name: (per_token, 1) for name in self.split}
        return {self.output: (per_token, self.dense.out_features)}


class ClassificationHead(Node):
    """``out_proj(dropout(act(dense(input_dropout(pool(h))))))``: a two-layer head on the sequence output.

    ``pool`` reduces the sequence (B, S, H) first: ``first`` takes ``h[:, 0]``, ``last`` ``h[:, -1]``,
    ``mean`` averages every position (padding included, as HF's ``SequenceSummary``); ``none`` keeps every
    position (a per-token head). ``input_dropout`` is the dropout before ``dense`` (None: ``dropout``);
    ``split`` cuts the last axis into named outputs (``("logits",)`` drops a size-1 axis).
    """

    kind: Literal["classification_head"] = "classification_head"
    dropout: float
    dense: Linear
    activation: Activation
    out_proj: Linear
    output: str
    pool: Literal["first", "last", "mean", "none"] = "first"
    input_dropout: float | None = None
    split: tuple[str, ...] | None = None

    def outputs(self) -> dict[str, tuple[bool, int]]:
        per_token = self.pool == "none"
        if self.split is not None:
            return {name: (per_token, 1) for name in self.split}
        return {self.output: (per_token, self.out_proj.out_features)}


class QuestionMask(_Frozen):
    """Question tokens cannot be answers: positions before the first ``sep_token_id`` (inclusive; position 0
    stays allowed) get ``penalty`` subtracted from the span logits. Lengths come from ``question_lengths`` when
    given, else from ``input_ids``; token types default to 1 after the question."""

    sep_token_id: int
    penalty: float = 1e6


class SpanHead(Node):
    """Span logits through a residual feed-forward block:
    ``qa_outputs(output(act(intermediate(dropout(x))), residual=x))``, split into start/end logits."""

    kind: Literal["span_head"] = "span_head"
    dropout: float
    intermediate: Linear
    activation: Activation
    output: AddNorm
    qa_outputs: Linear
    split: tuple[str, ...] = ("start_logits", "end_logits")
    question_mask: QuestionMask | None = None

    def extra_inputs(self) -> tuple[str, ...]:
        return ("question_lengths",) if self.question_mask is not None else ()

    def outputs(self) -> dict[str, tuple[bool, int]]:
        return {name: (True, 1) for name in self.split}


class PredictionHead(Node):
    """``classifier(dropout(norm(act(dense(pool(x))))))``: a transform-and-classify head whose pooling is
    ``first`` (position 0), ``first_unmasked`` (the first position the attention mask keeps, 0 when none),
    ``mean`` (``sum(h * m) / sum(m)``: NaN for a row the mask keeps nothing of, as in HF PyTorch) or
    ``none`` (one prediction per token). ``split`` cuts the last axis into named outputs (span logits)."""

    kind: Literal["prediction_head"] = "prediction_head"
    pooling: Literal["first", "first_unmasked", "mean", "none"]
    dense: Linear
    activation: Activation
    norm: LayerNorm
    dropout: float
    classifier: Linear
    output: str
    split: tuple[str, ...] | None = None

    def outputs(self) -> dict[str, tuple[bool, int]]:
        per_token = self.pooling == "none"
        if self.split is not None:
            return {name: (per_token, 1) for name in self.split}
        return {self.output: (per_token, self.classifier.out_features)}


PoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
POOLING_MODES: tuple[str, ...] = get_args(PoolingMode)


class SentencePooling(Node):
    """A sentence embedding from the sequence output, as sentence-transformers' ``Pooling`` (then its
    ``Normalize``) computes it: one (B, H) vector per mode, concatenated in the order of ``modes``, over the
    positions the attention mask keeps (mask values weight the positions, as there):

    - ``cls``: the first kept position (left padding included); ``lasttoken``: the last one (zeros when a row
      keeps none); ``max``: the maximum over kept positions (-inf when none);
    - ``mean``: ``sum(h * m) / max(sum(m), 1e-9)``; ``mean_sqrt_len_tokens``: divided by the square root of
      that count instead; ``weightedmean``: positions weighted 1, 2, ..., S.

    ``normalize``: then ``x / max(||x||_2, 1e-12)`` (torch's ``F.normalize``). ``max_seq_length``: the length
    sentence-transformers truncates inputs to (``sentence_bert_config.json``), which ``tandem.encode`` uses.
    """

    kind: Literal["sentence_pooling"] = "sentence_pooling"
    hidden_size: int
    modes: tuple[PoolingMode, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = Field(default=None, gt=0)
    output: str = "embeddings"

    @model_validator(mode="after")
    def _some_mode(self) -> SentencePooling:
        if not self.modes:
            raise ValueError(f"sentence pooling needs at least one mode of {', '.join(POOLING_MODES)}")
        return self

    def outputs(self) -> dict[str, tuple[bool, int]]:
        return {self.output: (False, self.hidden_size * len(self.modes))}


Head = Annotated[
    LMHead | DenseHead | ClassificationHead | SpanHead | SentencePooling | PredictionHead, Field(discriminator="kind")
]


# ------------------------------------------------------------------------------------------ losses
class CrossEntropyLoss(_Frozen):
    """Mean cross-entropy of ``logits`` viewed as (-1, classes) against ``labels``, skipping -100.

    ``shift`` (causal language modelling): position ``t`` predicts label ``t + 1``, i.e. ``logits[:, :-1]``
    against ``labels[:, 1:]``, in float32 as HF PyTorch's causal-LM loss.
    """

    kind: Literal["cross_entropy"] = "cross_entropy"
    logits: str
    labels: str
    ignore_index: int = -100
    optional: bool = False  # added to the loss when its labels are given, never required
    shift: bool = False


class ClassificationLoss(_Frozen):
    """HF's sequence-classification loss, its problem type inferred per call when not fixed."""

    kind: Literal["classification"] = "classification"
    logits: str
    labels: str
    num_labels: int
    problem_type: (
        Literal["regression", "single_label_classification", "multi_label_classification", "soft_label_classification"]
        | None
    )
    # problem_type unset and labels (B, num_labels): a soft-target cross-entropy ``-(log_softmax(logits) *
    # labels).sum(-1).mean()`` instead of multi-label BCE, whatever the labels' dtype (HF's DeBERTa rule)
    soft_labels: bool = False
    # set by the call plan: with soft_labels, an inferred regression returns its logits flattened to (B,), as HF
    flatten_logits: bool = False


class SpanLoss(_Frozen):
    """Question answering: mean of start and end cross-entropy, positions clamped to [0, S]."""

    kind: Literal["span"] = "span"
    start_logits: str = "start_logits"
    end_logits: str = "end_logits"
    start_positions: str = "start_positions"
    end_positions: str = "end_positions"


class BinaryCrossEntropyLoss(_Frozen):
    """Mean binary cross-entropy with logits of per-token ``logits`` (B, S) against 0/1 ``labels`` (cast to
    float) over the positions whose attention mask is 1, or every position when the call gives no mask: HF
    PyTorch's replaced-token-detection loss. The mask comes in among the labels, under :data:`ATTENTION_MASK`."""

    kind: Literal["binary_cross_entropy"] = "binary_cross_entropy"
    logits: str
    labels: str


# Where run_call hands loss terms the call's attention mask, next to the labels (None when not given).
ATTENTION_MASK = "attention_mask"

Loss = Annotated[
    CrossEntropyLoss | ClassificationLoss | SpanLoss | BinaryCrossEntropyLoss, Field(discriminator="kind")
]


def loss_labels(loss: Loss) -> tuple[str, ...]:
    """The label keyword arguments a loss term reads."""
    if isinstance(loss, SpanLoss):
        return (loss.start_positions, loss.end_positions)
    return (loss.labels,)
