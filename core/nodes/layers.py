"""Layer node kinds: projections, embeddings, LayerNorm, attention, transformer layers, the backbone."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .base import Activation, FlaxRule, Node, NormalInit, OnesInit, ParamSpec, ZerosInit, _Frozen


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

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="embedding")}

    def param_specs(self) -> list[ParamSpec]:
        return [
            ParamSpec(
                name="weight",
                shape=(self.num_embeddings, self.features),
                axes=self.axes,
                init=NormalInit(std=self.init_std),
                zero_row=self.padding_idx,
            )
        ]


class LayerNorm(Node):
    """LayerNorm over the last axis with a two-pass variance (HF PyTorch's), eps explicit."""

    kind: Literal["layer_norm"] = "layer_norm"
    features: int
    eps: float
    axis: str = "embed"  # logical axis of the features

    flax_rules: ClassVar[dict[str, FlaxRule]] = {"weight": FlaxRule(name="scale")}

    def param_specs(self) -> list[ParamSpec]:
        return [
            ParamSpec(
                name="weight", shape=(self.features,), axes=(self.axis,), init=OnesInit(), legacy_names=("gamma",)
            ),
            ParamSpec(name="bias", shape=(self.features,), axes=(self.axis,), init=ZerosInit(), legacy_names=("beta",)),
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

    def buffers(self) -> tuple[str, ...]:
        return ("position_ids", "token_type_ids")  # HF PyTorch's registered index buffers


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


def score_divisor(head_dim: int) -> float:
    """HF PyTorch divides attention scores by sqrt(head_dim) after the product."""
    return math.sqrt(head_dim)
