"""Layer node kinds: projections, embeddings, LayerNorm, attention, transformer layers, the backbone."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .base import Activation, FlaxRule, Node, NormalInit, OnesInit, ParamSpec, SinusoidalInit, ZerosInit, _Frozen
from .variants import (
    BlockSparseAttention,
    DisentangledAttention,
    FullAttention,
    Rotary,
    SlidingWindowAttention,
)


# ----------------------------------------------------------------------------------------- leaves
class Linear(Node):
    """y = x W^T + b. Torch weight (out, in); flax kernel (in, out)."""

    kind: Literal["linear"] = "linear"
    in_features: int
    out_features: int
    bias: bool = True
    init_std: float = 0.02
    axes: tuple[str, str] = ("embed", "embed")  # logical axes of the input and the output features

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="kernel", permutation=(1, 0))}

    def param_specs(self) -> list[ParamSpec]:
        n_in, n_out = self.axes
        specs = [
            ParamSpec(
                name="weight",
                shape=(self.out_features, self.in_features),
                axes=(n_out, n_in),
                init=NormalInit(std=self.init_std),
            )
        ]
        if self.bias:
            specs.append(ParamSpec(name="bias", shape=(self.out_features,), axes=(n_out,), init=ZerosInit()))
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
    axes: tuple[str, str] = ("embed", "embed")  # logical axes of the input and the output channels

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="kernel", permutation=(2, 1, 0))}

    @model_validator(mode="after")
    def _divisible(self) -> GroupedConv1x1:
        for name in ("in_features", "out_features"):
            if getattr(self, name) % self.groups:
                raise ValueError(f"{name}={getattr(self, name)} is not divisible by groups={self.groups}")
        return self

    def param_specs(self) -> list[ParamSpec]:
        n_out = self.axes[1]
        specs = [
            ParamSpec(
                name="weight",
                shape=(self.out_features, self.in_features // self.groups, 1),
                axes=(n_out, "group_in", "conv_width"),  # a group's input channels are not sharded
                init=NormalInit(std=self.init_std),
            )
        ]
        if self.bias:
            specs.append(ParamSpec(name="bias", shape=(self.out_features,), axes=(n_out,), init=ZerosInit()))
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
    axes: tuple[str, str] = ("vocab", "embed")  # logical axes of the rows and the features
    # sinusoidal: a fixed table (SinusoidalInit), still a checkpoint parameter, that no gradient reaches (HF: frozen)
    table: Literal["learned", "sinusoidal"] = "learned"

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="embedding")}

    def param_specs(self) -> list[ParamSpec]:
        return [
            ParamSpec(
                name="weight",
                shape=(self.num_embeddings, self.features),
                axes=self.axes,
                init=SinusoidalInit() if self.table == "sinusoidal" else NormalInit(std=self.init_std),
                zero_row=self.padding_idx,
            )
        ]


class LayerNorm(Node):
    """LayerNorm over the last axis with a two-pass variance (HF PyTorch's), eps explicit. ``bias=False``:
    no additive bias (``nn.LayerNorm(bias=False)``)."""

    kind: Literal["layer_norm"] = "layer_norm"
    features: int
    eps: float
    axis: str = "embed"  # logical axis of the features
    bias: bool = True

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="scale")}

    def param_specs(self) -> list[ParamSpec]:
        return [
            ParamSpec(
                name="weight", shape=(self.features,), axes=(self.axis,), init=OnesInit(), legacy_names=("gamma",)
            ),
            ParamSpec(name="bias", shape=(self.features,), axes=(self.axis,), init=ZerosInit(), legacy_names=("beta",)),
        ][: 2 if self.bias else 1]


# ------------------------------------------------------------------------------------- composites
class SkipPaddingPositions(_Frozen):
    """Default position ids that skip padding (fairseq's ``make_positions``; HF PyTorch's
    ``create_position_ids_from_input_ids``): the ``n``-th non-pad token of a row is at ``padding_idx + past + n``
    (``past``: the cached length), every ``padding_idx`` token at ``padding_idx``, whose table row is the pad row.
    From ``inputs_embeds`` (no ids to find the padding in) positions are ``padding_idx + 1, padding_idx + 2, ...``
    whatever the cached length, as HF PyTorch's ``create_position_ids_from_inputs_embeds``."""

    kind: Literal["skip_padding"] = "skip_padding"
    padding_idx: int = Field(ge=0)


class Embeddings(Node):
    """Token + token-type + position embeddings, summed in ``sum_order``, then LayerNorm and dropout.
    ``default_positions``: the position ids of a call that gives none (None: ``past, past + 1, ...``)."""

    kind: Literal["embeddings"] = "embeddings"
    word: Embed
    position: Embed | None  # None: no absolute positions (relative attention only)
    token_type: Embed | None  # None: token types are ignored (no table)
    norm: LayerNorm
    dropout: float
    # The order of the floating-point sum matters for bitwise parity within a backend.
    sum_order: tuple[Literal["word", "token_type", "position"], ...] = ("word", "token_type", "position")
    projection: Linear | None = None  # maps the summed embeddings to the model width before the norm
    word_scale: float | None = None  # multiply word embeddings (BigBird's rescale_embeddings)
    dropout_before_norm: bool = False
    default_positions: SkipPaddingPositions | None = None
    # Tensors a checkpoint may hold under these embeddings that HF's class drops on load (its
    # ``_keys_to_ignore_on_load_unexpected``): ignored, as buffers are.
    ignored: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _terms_exist(self) -> Embeddings:
        missing = [name for name in self.sum_order if name != "word" and getattr(self, name) is None]
        if missing:
            raise ValueError(f"sum_order names {missing} but the embeddings have no such table")
        return self

    def buffers(self) -> tuple[str, ...]:
        return ("position_ids", "token_type_ids", *self.ignored)  # HF PyTorch's registered index buffers


# The parameter names of an attention's own per-part biases (``Attention.part_biases``), as HF's DeBERTa.
PART_BIAS_NAMES: dict[str, str] = {"query": "q_bias", "key": "k_bias", "value": "v_bias"}

AttentionVariant = Annotated[
    FullAttention | BlockSparseAttention | DisentangledAttention | SlidingWindowAttention,
    Field(discriminator="kind"),
]


class Attention(Node):
    """Multi-head attention core: Q/K/V projections, scaled scores, additive mask, softmax, dropout.

    Scores are ``(Q @ K^T) / score_divisor`` (applied after the product, as HF PyTorch eager). Masked keys
    get ``(1 - m) * fill`` added, where ``fill`` is ``mask_fill`` or, for ``"dtype_min"``, the most
    negative finite value of the computation dtype.

    Q/K/V come from ``query``/``key``/``value`` or one fused ``qkv``, whose output rows are laid out by
    ``qkv_layout``: ``"blocks"`` (query, key, value, each heads x head_dim) or ``"per_head"`` (per head, its
    query, key and value rows: HF's ``view(B, S, heads, 3 * head_dim)`` then ``chunk(3)``). ``part_biases``
    adds a bias of the attention's own (``q_bias``, ``k_bias``, ``v_bias``, heads x head_dim) to those parts
    after their projection. ``rotary`` rotates queries and keys by the call's positions after the head split.

    Talking heads (``head_logits``, ``head_weights``: heads x heads maps without bias) mix the heads' scores
    before the mask and the softmax, and their probabilities after the dropout; the mixed probabilities are
    what ``output_attentions`` reports. Only disentangled attention implements them.

    ``source`` says what the keys and values read: the layer's own input (``"self"``) or the states of a
    separate encoder (``"encoder"``, cross-attention, masked by the encoder's mask and never causal). With a
    KV cache, self-attention keys/values are appended step by step while encoder keys/values are computed
    once per sequence and reused.
    """

    kind: Literal["attention"] = "attention"
    query: Projection | None = None  # None: the rows of the fused ``qkv`` projection
    key: Projection | None = None
    value: Projection | None = None
    qkv: Linear | None = None  # fused: output features are (query, key, value) x heads x head_dim
    rotary: Rotary | None = None
    num_heads: int
    head_dim: int
    score_divisor: float
    dropout: float
    mask_fill: Literal["dtype_min"] | float = "dtype_min"
    variant: AttentionVariant = FullAttention()
    returns: Literal["probs", "scores"] = "probs"  # what output_attentions reports: softmax or masked scores
    supports_head_mask: bool = True
    source: Literal["self", "encoder"] = "self"
    pos_query: Projection | None = None  # disentangled attention: projects relative embeddings to queries
    pos_key: Projection | None = None  # ... and to keys (when they are not shared with query/key)
    qkv_layout: Literal["blocks", "per_head"] = "blocks"
    part_biases: tuple[Literal["query", "key", "value"], ...] = ()
    head_logits: Linear | None = None  # talking heads: mixes the scores over heads before the softmax
    head_weights: Linear | None = None  # ... and the probabilities after it

    @model_validator(mode="after")
    def _cross_is_full(self) -> Attention:
        if (self.qkv is None) != (self.query is not None and self.key is not None and self.value is not None):
            raise ValueError("attention needs either query, key and value projections or one fused qkv, not both")
        if len(set(self.part_biases)) != len(self.part_biases):
            raise ValueError(f"{self.path}: part_biases {self.part_biases} names a part twice")
        for proj in (self.head_logits, self.head_weights):
            if proj is None:
                continue
            if not isinstance(self.variant, DisentangledAttention):
                raise ValueError(f"{self.path}: talking heads ({proj.path}) are implemented for disentangled attention")
            if (proj.in_features, proj.out_features) != (self.num_heads, self.num_heads):
                raise ValueError(f"{self.path}: {proj.path} must map {self.num_heads} heads to {self.num_heads}")
        if self.rotary is not None and self.source != "self":
            raise ValueError("rotary position embeddings apply to self-attention only")
        if self.source == "encoder" and (not isinstance(self.variant, FullAttention) or self.variant.causal):
            raise ValueError("cross-attention (source='encoder') must use non-causal full attention")
        variant = self.variant
        if isinstance(variant, DisentangledAttention) and variant.relative and variant.share_keys and self.qkv:
            raise ValueError(f"{self.path}: shared position keys need separate query and key projections")
        if isinstance(variant, DisentangledAttention) and variant.relative and not variant.share_keys:
            for term, proj in (("c2p", "pos_key"), ("p2c", "pos_query")):
                if getattr(variant, term) != (getattr(self, proj) is not None):
                    raise ValueError(f"disentangled attention has {proj} exactly when it has {term} terms")
        return self

    def param_specs(self) -> list[ParamSpec]:
        width = self.num_heads * self.head_dim
        return [
            ParamSpec(name=PART_BIAS_NAMES[part], shape=(width,), axes=("heads",), init=ZerosInit())
            for part in self.part_biases
        ]

    @property
    def causal(self) -> bool:
        """Whether each position attends only to itself and earlier ones (a decoder's self-attention)."""
        return isinstance(self.variant, FullAttention) and self.variant.causal


class AddNorm(Node):
    """``norm(dropout(dense(x)) + residual)``: the post-LN residual block. Without ``norm`` (a pre-LN layer,
    whose norms sit before its sublayers: :class:`TransformerLayer`) it is ``dropout(dense(x)) + residual``."""

    kind: Literal["add_norm"] = "add_norm"
    dense: Projection
    dropout: float
    norm: LayerNorm | None


class AttentionBlock(Node):
    """Attention, then its residual ``output``. ``norm`` (pre-LN) normalises the block's input before the
    attention reads it; the residual stays the un-normalised input. Cross-attention normalises its queries
    only (encoder states are read as they are), as HF PyTorch's pre-LN attention modules do."""

    kind: Literal["attention_block"] = "attention_block"
    attention: Attention
    output: AddNorm
    norm: LayerNorm | None = None


class TransformerLayer(Node):
    """Self-attention block, an optional cross-attention block, then the feed-forward
    ``output(act(intermediate(ffn_norm(x))), residual=x)``.

    ``crossattention`` (a decoder paired with an encoder) runs on the self-attention output with keys and
    values from the encoder states, and only in calls that give encoder states (or a cache holding their
    keys/values), as in HF PyTorch. It receives the same head-mask row as self-attention.

    Post-LN (BERT) and pre-LN layers are the same node with their LayerNorms in other places. Post-LN: each
    :class:`AddNorm` has a ``norm``, ``AttentionBlock.norm`` and ``ffn_norm`` are None. Pre-LN
    (``x + f(norm(x))``): ``AttentionBlock.norm`` and ``ffn_norm`` are set, at whatever paths the family's
    checkpoints use (``attention.LayerNorm`` and ``intermediate.LayerNorm``, or ``attn_norm`` and
    ``mlp_norm``), and the ``AddNorm``s have ``norm=None``; a pre-LN stack usually ends in a final norm,
    ``Backbone.final_norm``. Each norm is applied where it is present, so mixed layers (a first layer
    without an attention norm) are expressed the same way.
    """

    kind: Literal["layer"] = "layer"
    attention: AttentionBlock
    crossattention: AttentionBlock | None = None
    ffn_norm: LayerNorm | None = None  # pre-LN: normalises the feed-forward's input (not its residual)
    # Gated (GLU) feed-forward: ``intermediate`` gives (input, gate) halves and the inner state is
    # ``act(input) * gate`` (HF's ``chunk(2)``), so ``output`` reads half of ``intermediate``'s features.
    gated: bool = False
    intermediate: Projection
    activation: Activation
    # Dropout on that inner state, before ``output.dense`` (HF's ModernBERT ``Wo(drop(act(input) * gate))``);
    # ``output.dropout`` drops ``output.dense``'s result (BERT's ``hidden_dropout_prob``).
    inner_dropout: float = 0.0
    output: AddNorm

    @model_validator(mode="after")
    def _gate_halves(self) -> TransformerLayer:
        if self.gated and self.intermediate.out_features != 2 * self.output.dense.in_features:
            raise ValueError(f"{self.path}: a gated intermediate gives twice the features its output reads")
        return self


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


class Conv1d(Node):
    """A grouped convolution along the sequence, ``kernel_size`` wide (odd), zero-padded to keep the length.
    Torch weight (out, in/groups, k); flax kernel (k, in/groups, out), an NWC conv kernel."""

    kind: Literal["conv1d"] = "conv1d"
    features: int
    kernel_size: int
    groups: int = 1
    init_std: float = 0.02

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="kernel", permutation=(2, 1, 0))}

    @model_validator(mode="after")
    def _shape(self) -> Conv1d:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size={self.kernel_size} must be odd (an even kernel changes the length)")
        if self.features % self.groups:
            raise ValueError(f"hidden_size={self.features} is not divisible by conv_groups={self.groups}")
        return self

    def param_specs(self) -> list[ParamSpec]:
        return [
            ParamSpec(
                name="weight",
                shape=(self.features, self.features // self.groups, self.kernel_size),
                axes=("embed", "group_in", "conv_width"),
                init=NormalInit(std=self.init_std),
            ),
            ParamSpec(name="bias", shape=(self.features,), axes=("embed",), init=ZerosInit()),
        ]


class ConvLayer(Node):
    """A convolution beside the first layer: ``norm(residual + act(dropout(conv(x) * m))) * m``, where ``x``
    is the first layer's input, ``residual`` its output and ``m`` the (B, S) attention mask."""

    kind: Literal["conv_layer"] = "conv_layer"
    conv: Conv1d
    activation: Activation
    norm: LayerNorm
    dropout: float


class RelativeEncoder(Node):
    """Layers that share one table of relative-position embeddings (their attention is
    :class:`DisentangledAttention`), each run once, in order.

    The input is first multiplied by the (B, S) mask (``mask_input``). ``rel_embeddings`` (2 * span rows),
    normalised by ``norm`` when present, is what every layer's attention projects to position queries and
    keys (with ``dropout`` applied per layer). ``conv`` runs beside the first layer (:class:`ConvLayer`).
    """

    kind: Literal["relative_encoder"] = "relative_encoder"
    layers: list[TransformerLayer]
    rel_embeddings: Embed | None
    norm: LayerNorm | None = None
    dropout: float = 0.0
    conv: ConvLayer | None = None
    mask_input: bool = True

    @model_validator(mode="after")
    def _disentangled(self) -> RelativeEncoder:
        for layer in self.layers:
            variant = layer.attention.attention.variant
            if not isinstance(variant, DisentangledAttention):
                raise ValueError(f"{layer.path}: a relative encoder's layers use disentangled attention")
            if variant.relative and (
                self.rel_embeddings is None or self.rel_embeddings.num_embeddings != 2 * variant.span
            ):
                raise ValueError(f"{layer.path}: relative attention needs rel_embeddings of 2 * span rows")
        return self

    # The Encoder interface the call plan and tools read: each layer runs once, no head mask.
    input_projection: ClassVar[None] = None

    @property
    def schedule(self) -> list[tuple[int, ...]]:
        return [(i,) for i in range(len(self.layers))]

    @property
    def runs(self) -> list[int]:
        return list(range(len(self.layers)))

    @property
    def head_mask_index(self) -> list[tuple[int | None, ...]]:
        return [(None,) for _ in self.layers]

    @property
    def num_head_mask_rows(self) -> int:
        return 0


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
    """Embeddings -> encoder -> optional final norm -> optional pooler. ``path`` is the base-model prefix
    ('' for base). ``final_norm`` (pre-LN stacks) normalises the encoder's output into ``last_hidden_state``
    and the pooler's input; ``hidden_states`` keep the encoder's un-normalised outputs, as in HF PyTorch."""

    kind: Literal["backbone"] = "backbone"
    embeddings: Embeddings
    encoder: Annotated[Encoder | RelativeEncoder, Field(discriminator="kind")]
    final_norm: LayerNorm | None = None
    pooler: Pooler | None = None
    block_sparse: BlockSparsePolicy | None = None


def score_divisor(head_dim: int) -> float:
    """HF PyTorch divides attention scores by sqrt(head_dim) after the product."""
    return math.sqrt(head_dim)
