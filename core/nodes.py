"""The layer graph: typed, frozen nodes that a backend adapter compiles.

Every node has a ``path`` relative to its parent (possibly dotted, possibly empty), so that the full
path of a node is the HF module path and the full path of a parameter is the HF PyTorch checkpoint key.
Nodes declare their own parameters (:meth:`Node.param_specs`) and every numeric choice (activation,
LayerNorm eps, mask fill value, attention scale). Backends implement one function per ``kind``; they
never see a family or a config.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Activations implemented identically in both backends (the union of HF's torch and flax ACT2FN tables
# that BERT-family checkpoints use). Each name is one explicit formula; see docs/architecture.md.
ACTIVATIONS = (
    "gelu",  # exact erf GELU
    "gelu_new",  # tanh approximation, written out
    "gelu_pytorch_tanh",  # tanh approximation: torch runs its fused kernel, as HF's GELUTanh does; flax the formula
    "gelu_fast",  # 0.5x(1+tanh(0.7978845608x(1+0.044715x^2)))
    "quick_gelu",  # x*sigmoid(1.702x)
    "relu",
    "relu6",
    "silu",
    "swish",
    "mish",
    "tanh",
    "sigmoid",
    "linear",
)
Activation = Literal[
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "quick_gelu",
    "relu",
    "relu6",
    "silu",
    "swish",
    "mish",
    "tanh",
    "sigmoid",
    "linear",
]


def join(*parts: str) -> str:
    """Join path segments with '.', skipping empty ones."""
    return ".".join(p for p in parts if p)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------- init
class NormalInit(_Frozen):
    kind: Literal["normal"] = "normal"
    std: float


class ZerosInit(_Frozen):
    kind: Literal["zeros"] = "zeros"


class OnesInit(_Frozen):
    kind: Literal["ones"] = "ones"


Init = Annotated[NormalInit | ZerosInit | OnesInit, Field(discriminator="kind")]


class ParamSpec(_Frozen):
    """One parameter: its name inside the node (HF PyTorch's), shape, logical axes and init."""

    name: str
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    init: Init
    zero_row: int | None = None  # an embedding padding row that HF PyTorch initialises to zero


class FlaxRule(_Frozen):
    """How one torch-layout parameter appears in flax: its name there and the axis permutation."""

    name: str
    permutation: tuple[int, ...] | None = None


# -------------------------------------------------------------------------------------- node base
class Node(_Frozen):
    path: str = ""

    # The single declared torch <-> flax rule of a node kind: torch name -> flax name + permutation.
    # Parameters not listed keep their name and layout.
    flax_rules: ClassVar[dict[str, FlaxRule]] = {}

    def param_specs(self) -> list[ParamSpec]:
        """Parameters this node owns itself (not those of its children)."""
        return []

    def children(self) -> list[Node]:
        """Child nodes that own parameters, in declaration order (shared nodes appear once)."""
        out: list[Node] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Node):
                out.append(value)
            elif isinstance(value, (list, tuple)):
                out.extend(v for v in value if isinstance(v, Node))
        return out


# ----------------------------------------------------------------------------------------- leaves
class Linear(Node):
    """y = x W^T + b. Torch weight (out, in); flax kernel (in, out)."""

    kind: Literal["linear"] = "linear"
    in_features: int
    out_features: int
    bias: bool = True
    init_std: float = 0.02

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="kernel", permutation=(1, 0))}

    def param_specs(self) -> list[ParamSpec]:
        specs = [
            ParamSpec(
                name="weight",
                shape=(self.out_features, self.in_features),
                axes=("out", "in"),
                init=NormalInit(std=self.init_std),
            )
        ]
        if self.bias:
            specs.append(ParamSpec(name="bias", shape=(self.out_features,), axes=("out",), init=ZerosInit()))
        return specs


class GroupedConv1x1(Node):
    """A grouped 1x1 convolution over channels: a block-diagonal linear map applied per position.

    Output channel ``o`` belongs to group ``g = o // (out/groups)`` and reads input channels
    ``[g*in/groups, (g+1)*in/groups)``. Torch layout: ``Conv1d.weight`` (out, in/groups, 1); flax layout:
    an NWC conv kernel (1, in/groups, out). Data stays channels-last in both backends (a transpose does not
    change values), so this node is a drop-in for :class:`Linear`.
    """

    kind: Literal["conv1x1"] = "conv1x1"
    in_features: int
    out_features: int
    groups: int = 1
    bias: bool = True
    init_std: float = 0.02

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="kernel", permutation=(2, 1, 0))}

    @model_validator(mode="after")
    def _divisible(self) -> GroupedConv1x1:
        for name in ("in_features", "out_features"):
            if getattr(self, name) % self.groups:
                raise ValueError(f"{name}={getattr(self, name)} is not divisible by groups={self.groups}")
        return self

    def param_specs(self) -> list[ParamSpec]:
        specs = [
            ParamSpec(
                name="weight",
                shape=(self.out_features, self.in_features // self.groups, 1),
                axes=("out", "in_per_group", "width"),
                init=NormalInit(std=self.init_std),
            )
        ]
        if self.bias:
            specs.append(ParamSpec(name="bias", shape=(self.out_features,), axes=("out",), init=ZerosInit()))
        return specs


# A position-wise projection: dense, or grouped 1x1 convolution (SqueezeBERT-style).
Projection = Annotated[Linear | GroupedConv1x1, Field(discriminator="kind")]


class Embed(Node):
    """A lookup table (num_embeddings, features); flax calls it ``embedding``."""

    kind: Literal["embed"] = "embed"
    num_embeddings: int
    features: int
    init_std: float = 0.02
    padding_idx: int | None = None

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="embedding")}

    def param_specs(self) -> list[ParamSpec]:
        return [
            ParamSpec(
                name="weight",
                shape=(self.num_embeddings, self.features),
                axes=("vocab", "embed"),
                init=NormalInit(std=self.init_std),
                zero_row=self.padding_idx,
            )
        ]


class LayerNorm(Node):
    """LayerNorm over the last axis with a two-pass variance (HF PyTorch's), eps explicit."""

    kind: Literal["layer_norm"] = "layer_norm"
    features: int
    eps: float

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="scale")}

    def param_specs(self) -> list[ParamSpec]:
        return [
            ParamSpec(name="weight", shape=(self.features,), axes=("embed",), init=OnesInit()),
            ParamSpec(name="bias", shape=(self.features,), axes=("embed",), init=ZerosInit()),
        ]


# ------------------------------------------------------------------------------------- composites
class Embeddings(Node):
    """Token + token-type + position embeddings, summed in ``sum_order``, then LayerNorm and dropout."""

    kind: Literal["embeddings"] = "embeddings"
    word: Embed
    position: Embed
    token_type: Embed
    norm: LayerNorm
    dropout: float
    # The order of the floating-point sum matters for bitwise parity within a backend.
    sum_order: tuple[Literal["word", "token_type", "position"], ...] = ("word", "token_type", "position")
    word_scale: float | None = None  # multiply word embeddings (BigBird's rescale_embeddings)
    dropout_before_norm: bool = False


class FullAttention(_Frozen):
    """Dense softmax attention. ``causal`` adds a lower-triangular mask (decoders)."""

    kind: Literal["full"] = "full"
    causal: bool = False


class BlockSparseAttention(_Frozen):
    """BigBird's block-sparse pattern (global first/last blocks, a three-block sliding window and
    ``num_random_blocks`` random blocks per query block), scores masked with ``(1 - m) * penalty``.

    It runs only when the backbone's :class:`BlockSparsePolicy` says the call's length allows it; otherwise
    the node computes dense attention (with the node's ``mask_fill``, dropout and head mask). ``layer`` seeds
    this layer's random-block plan in training (see ``tandem.core.block_sparse``). In block-sparse mode there is
    no attention dropout and no head mask, as in HF PyTorch.
    """

    kind: Literal["block_sparse"] = "block_sparse"
    block_size: int
    num_random_blocks: int
    layer: int
    penalty: float = -10000.0
    causal: Literal[False] = False


AttentionVariant = Annotated[FullAttention | BlockSparseAttention, Field(discriminator="kind")]


class Attention(Node):
    """Multi-head attention core: Q/K/V projections, scaled scores, additive mask, softmax, dropout.

    Scores are ``(Q @ K^T) / score_divisor`` (applied after the product, as HF PyTorch eager). Masked keys
    get ``(1 - m) * fill`` added, where ``fill`` is ``mask_fill`` or, for ``"dtype_min"``, the most
    negative finite value of the computation dtype.

    ``source`` says what the keys and values read: the layer's own input (``"self"``) or the states of a
    separate encoder (``"encoder"``, cross-attention, masked by the encoder's mask and never causal). With a
    KV cache, self-attention keys/values are appended step by step while encoder keys/values are computed
    once per sequence and reused.
    """

    kind: Literal["attention"] = "attention"
    query: Projection
    key: Projection
    value: Projection
    num_heads: int
    head_dim: int
    score_divisor: float
    dropout: float
    mask_fill: Literal["dtype_min"] | float = "dtype_min"
    variant: AttentionVariant = FullAttention()
    returns: Literal["probs", "scores"] = "probs"  # what output_attentions reports: softmax or masked scores
    supports_head_mask: bool = True
    source: Literal["self", "encoder"] = "self"

    @model_validator(mode="after")
    def _cross_is_full(self) -> Attention:
        if self.source == "encoder" and (not isinstance(self.variant, FullAttention) or self.variant.causal):
            raise ValueError("cross-attention (source='encoder') must use non-causal full attention")
        return self

    @property
    def causal(self) -> bool:
        """Whether each position attends only to itself and earlier ones (a decoder's self-attention)."""
        return isinstance(self.variant, FullAttention) and self.variant.causal


class AddNorm(Node):
    """``norm(dropout(dense(x)) + residual)``: the post-LN residual block."""

    kind: Literal["add_norm"] = "add_norm"
    dense: Projection
    dropout: float
    norm: LayerNorm


class AttentionBlock(Node):
    kind: Literal["attention_block"] = "attention_block"
    attention: Attention
    output: AddNorm


class TransformerLayer(Node):
    """Self-attention block, an optional cross-attention block, then the feed-forward
    ``output(act(intermediate(x)), residual=x)``.

    ``crossattention`` (a decoder paired with an encoder) runs on the self-attention output with keys and
    values from the encoder states, and only in calls that give encoder states (or a cache holding their
    keys/values), as in HF PyTorch. It receives the same head-mask row as self-attention.
    """

    kind: Literal["layer"] = "layer"
    attention: AttentionBlock
    crossattention: AttentionBlock | None = None
    intermediate: Projection
    activation: Activation
    output: AddNorm


class Encoder(Node):
    """A stack of layers run by ``schedule``.

    ``schedule[s]`` lists the layers (indices into ``layers``) run at step ``s``; hidden states are
    recorded after each step and attentions after each layer run. ``head_mask_index[s][j]`` is the row of
    a ``(num_head_mask_rows, heads)`` head mask applied to the j-th layer run of step s (None: that run has
    no row, so a head mask cannot be given). A layer referenced by several steps shares its parameters
    (sharing by identity).
    """

    kind: Literal["encoder"] = "encoder"
    input_projection: Linear | None = None  # factorised embeddings: E -> H before the first layer
    layers: list[TransformerLayer]
    schedule: list[tuple[int, ...]]
    head_mask_index: list[tuple[int | None, ...]]
    num_head_mask_rows: int

    @property
    def runs(self) -> list[int]:
        """The layer index of every layer run, in order (a KV cache holds one entry per run)."""
        return [index for step in self.schedule for index in step]


class Pooler(Node):
    kind: Literal["pooler"] = "pooler"
    dense: Linear
    activation: Activation = "tanh"


class BlockSparsePolicy(_Frozen):
    """When block-sparse layers run: only for calls whose unpadded length exceeds ``min_length`` (HF
    PyTorch's rule; shorter calls use dense attention, decided per call). Inputs are then padded to a multiple
    of ``block_size`` (ids with ``pad_token_id``, mask and token types with 0) and ``last_hidden_state`` is cut
    back; hidden states and attention maps stay padded, as in HF PyTorch."""

    block_size: int
    min_length: int
    pad_token_id: int


class Backbone(Node):
    """Embeddings -> encoder -> optional pooler. ``path`` is the base-model prefix ('' for base)."""

    kind: Literal["backbone"] = "backbone"
    embeddings: Embeddings
    encoder: Encoder
    pooler: Pooler | None = None
    block_sparse: BlockSparsePolicy | None = None


class LMDecoder(Node):
    """Projection to the vocabulary. Tied: reuses the embedding at ``tied_to`` (no params of its own).

    Torch exposes ``decoder.weight`` (the embedding when tied) and ``decoder.bias`` (an alias of the
    enclosing head's ``bias``), as HF PyTorch does; flax has ``decoder/kernel`` only when untied.
    """

    kind: Literal["lm_decoder"] = "lm_decoder"
    in_features: int
    vocab_size: int
    tied_to: str | None
    init_std: float = 0.02

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="kernel", permutation=(1, 0))}

    def param_specs(self) -> list[ParamSpec]:
        if self.tied_to is not None:
            return []
        return [
            ParamSpec(
                name="weight",
                shape=(self.vocab_size, self.in_features),
                axes=("vocab", "embed"),
                init=NormalInit(std=self.init_std),
            )
        ]


class LMHead(Node):
    """``decoder(norm(act(transform(x)))) + bias`` over the sequence output."""

    kind: Literal["lm_head"] = "lm_head"
    transform: Linear
    activation: Activation
    norm: LayerNorm
    decoder: LMDecoder
    output: str

    def param_specs(self) -> list[ParamSpec]:
        return [ParamSpec(name="bias", shape=(self.decoder.vocab_size,), axes=("vocab",), init=ZerosInit())]


class DenseHead(Node):
    """``dropout -> dense`` on a backbone output; ``split`` cuts the last axis into named outputs."""

    kind: Literal["dense_head"] = "dense_head"
    source: Literal["pooled", "sequence"]
    dropout: float
    dense: Linear
    output: str
    split: tuple[str, ...] | None = None


class ClassificationHead(Node):
    """``out_proj(dropout(act(dense(dropout(h[:, 0])))))``: a two-layer head on the first token."""

    kind: Literal["classification_head"] = "classification_head"
    dropout: float
    dense: Linear
    activation: Activation
    out_proj: Linear
    output: str


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


Head = Annotated[LMHead | DenseHead | ClassificationHead | SpanHead, Field(discriminator="kind")]


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
    problem_type: Literal["regression", "single_label_classification", "multi_label_classification"] | None


class SpanLoss(_Frozen):
    """Question answering: mean of start and end cross-entropy, positions clamped to [0, S]."""

    kind: Literal["span"] = "span"
    start_logits: str = "start_logits"
    end_logits: str = "end_logits"
    start_positions: str = "start_positions"
    end_positions: str = "end_positions"


Loss = Annotated[CrossEntropyLoss | ClassificationLoss | SpanLoss, Field(discriminator="kind")]


def loss_labels(loss: Loss) -> tuple[str, ...]:
    """The label keyword arguments a loss term reads."""
    if isinstance(loss, SpanLoss):
        return (loss.start_positions, loss.end_positions)
    return (loss.labels,)


# ------------------------------------------------------------------------------------------- model
class ModelGraph(Node):
    """A whole model: backbone, task heads, losses and the output fields it returns.

    ``expose`` lists the backbone outputs returned to the user (``last_hidden_state``,
    ``pooler_output``); the loss is the sum of ``losses`` and is computed only when every label they read
    is given.

    A graph whose self-attention is causal is a decoder (:attr:`is_decoder`): calls can return a KV cache
    (``past_key_values``) and continue from one. ``use_cache`` is whether they do when a call does not say
    (HF's ``config.use_cache``, which HF PyTorch applies to decoders only).
    """

    kind: Literal["model"] = "model"
    family: str
    task: str
    backbone: Backbone
    heads: list[Head] = []
    losses: list[Loss] = []
    expose: tuple[str, ...] = ()
    multiple_choice: bool = False
    use_cache: bool = False

    @model_validator(mode="after")
    def _cache_needs_decoder(self) -> ModelGraph:
        if self.use_cache and not self.is_decoder:
            raise ValueError("use_cache=True needs a decoder: this graph's self-attention is not causal")
        return self

    @property
    def is_decoder(self) -> bool:
        """Whether self-attention is causal, so that the model can decode incrementally with a KV cache."""
        return any(layer.attention.attention.causal for layer in self.backbone.encoder.layers)

    @property
    def has_cross_attention(self) -> bool:
        """Whether layers can attend to the states of a separate encoder (``encoder_hidden_states``)."""
        return any(layer.crossattention is not None for layer in self.backbone.encoder.layers)

    def label_names(self) -> tuple[str, ...]:
        """Every label keyword argument the task's losses read."""
        names: list[str] = []
        for loss in self.losses:
            names.extend(n for n in loss_labels(loss) if n not in names)
        return tuple(names)

    def extra_inputs(self) -> tuple[str, ...]:
        """Task-specific keyword inputs besides the labels (``question_lengths`` for a masked span head)."""
        has_question_mask = any(isinstance(h, SpanHead) and h.question_mask is not None for h in self.heads)
        return ("question_lengths",) if has_question_mask else ()

    def loss_terms(self, given: Collection[str]) -> list[Loss]:
        """The loss terms to sum for a call given these labels: none unless every required label is given;
        optional terms only when their own labels are given too."""
        required = [t for t in self.losses if not getattr(t, "optional", False)]
        if not required or not all(n in given for t in required for n in loss_labels(t)):
            return []
        return [t for t in self.losses if all(n in given for n in loss_labels(t))]


def score_divisor(head_dim: int) -> float:
    """HF PyTorch divides attention scores by sqrt(head_dim) after the product."""
    return math.sqrt(head_dim)
