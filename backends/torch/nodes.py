"""One torch implementation per node kind, as functions over a flat ``{HF key: tensor}`` param dict.

Nothing here knows a model family: each function receives its node (sizes and numeric choices), the
node's full path (to find its parameters) and its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core import nodes as n
from ...core.block_sparse import random_blocks
from ...core.call import CrossInputs, EncoderOutput, HeadInputs, LayerOutput, lookup
from .block_sparse import block_sparse_attention
from .glu import glu
from .local_attention import banded_attention, window_bias
from .losses import LOSSES
from .pooling import sentence_pooling
from .prediction import prediction_head
from .rotary import project_part, rotate

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_new(x: Tensor) -> Tensor:
    """HF's NewGELU, ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``. Without autograd the same float
    operations run in place on one buffer: bitwise the same numbers (scaling by 0.5 is exact), a fifth of
    the time on a (4096, 3072) activation, where each fresh temporary of HF's chain is page-faulted in."""
    if torch.is_grad_enabled() and x.requires_grad:
        return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3.0))))
    y = torch.pow(x, 3.0).mul_(0.044715).add_(x).mul_(_SQRT_2_OVER_PI).tanh_().add_(1.0)
    return y.mul_(x).mul_(0.5)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),  # HF's GELUTanh: torch's fused kernel
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}


def _run_directly(fn: Callable[..., LayerOutput], *args: Any) -> LayerOutput:
    return fn(*args)


@dataclass
class Context:
    """Per-call state: the parameters, the mode and what to record."""

    params: dict[str, Tensor]
    training: bool
    output_attentions: bool
    output_hidden_states: bool
    block_sparse: bool = False  # this call runs block-sparse layers (decided by the backbone's policy)
    block_sparse_seed: int = 0  # seeds the random-block plan in training
    positions: Tensor | None = None  # the call's position ids (B, S), recorded by the embeddings (rotary)
    # A sharded model (sharding.py) runs each layer through its module, so that FSDP's hooks gather its
    # parameters, and projections through its registry (tensor-parallel matmuls).
    run_layer: Callable[..., LayerOutput] = _run_directly
    impls: Mapping[type, Callable[..., Any]] | None = None
    _biases: dict[tuple[Any, ...], Tensor] = field(default_factory=dict)

    def get(self, path: str, name: str) -> Tensor:
        return self.params[n.join(path, name)]

    def mask_bias(self, node: n.Attention, mask: Tensor, query_len: int, dtype: torch.dtype) -> Tensor:
        """:func:`mask_bias`, built once per call for each mask and attention kind (the layers share it)."""
        key = (id(mask), query_len, dtype, node.variant, node.mask_fill)
        if key not in self._biases:
            self._biases[key] = mask_bias(node, mask, query_len, dtype)
        return self._biases[key]

    def maybe(self, path: str, name: str) -> Tensor | None:
        return self.params.get(n.join(path, name))


def linear(node: n.Linear, path: str, x: Tensor, ctx: Context) -> Tensor:
    return F.linear(x, ctx.get(path, "weight"), ctx.maybe(path, "bias") if node.bias else None)


def conv1x1(node: n.GroupedConv1x1, path: str, x: Tensor, ctx: Context) -> Tensor:
    """Grouped 1x1 convolution on channels-last data: a block-diagonal matmul per position."""
    weight = ctx.get(path, "weight")[:, :, 0]  # (out, in/groups)
    bias = ctx.get(path, "bias") if node.bias else None
    if node.groups == 1:
        return F.linear(x, weight, bias)
    g = node.groups
    xg = x.reshape(*x.shape[:-1], g, node.in_features // g)  # (..., g, in/g)
    wg = weight.reshape(g, node.out_features // g, node.in_features // g)  # (g, out/g, in/g)
    y = torch.einsum("...gi,goi->...go", xg, wg).reshape(*x.shape[:-1], node.out_features)
    return y if bias is None else y + bias


def project(node: n.Projection, path: str, x: Tensor, ctx: Context) -> Tensor:
    """A position-wise projection of any registered kind (dense, grouped 1x1 convolution)."""
    return lookup(ctx.impls or IMPLS, "torch", node, path)(node, path, x, ctx)


def layer_norm(node: n.LayerNorm, path: str, x: Tensor, ctx: Context) -> Tensor:
    return F.layer_norm(x, (node.features,), ctx.get(path, "weight"), ctx.maybe(path, "bias"), node.eps)


def dropout(x: Tensor, p: float, ctx: Context) -> Tensor:
    return F.dropout(x, p, training=True) if ctx.training and p > 0 else x


def embeddings(
    node: n.Embeddings,
    path: str,
    input_ids: Tensor | None,
    token_type_ids: Tensor,
    position_ids: Tensor,
    inputs_embeds: Tensor | None,
    ctx: Context,
) -> Tensor:
    ctx.positions = position_ids  # read by rotary attention
    word = inputs_embeds
    if word is None:
        # padding_idx: the padding row gets no gradient from lookups (HF PyTorch's nn.Embedding).
        word = F.embedding(input_ids, ctx.get(n.join(path, node.word.path), "weight"), node.word.padding_idx)
    if node.word_scale is not None:
        word = word * node.word_scale
    terms = {
        "word": lambda: word,
        "token_type": lambda: F.embedding(token_type_ids, _table(node.token_type, path, ctx)),
        # padding_idx: the padding row gets no gradient (a position table has one in some families, as in HF)
        "position": lambda: F.embedding(position_ids, _table(node.position, path, ctx), node.position.padding_idx),
    }
    out = terms[node.sum_order[0]]()
    for name in node.sum_order[1:]:
        out = out + terms[name]()
    if node.projection is not None:  # to the model width, before the norm
        out = project(node.projection, n.join(path, node.projection.path), out, ctx)
    if node.dropout_before_norm:
        return layer_norm(node.norm, n.join(path, node.norm.path), dropout(out, node.dropout, ctx), ctx)
    return dropout(layer_norm(node.norm, n.join(path, node.norm.path), out, ctx), node.dropout, ctx)


def _table(node: n.Embed, path: str, ctx: Context) -> Tensor:
    """An embedding table; a fixed (sinusoidal) one passes no gradient, as HF's ``requires_grad=False``."""
    weight = ctx.get(n.join(path, node.path), "weight")
    return weight.detach() if node.table == "sinusoidal" else weight


def mask_bias(node: n.Attention, mask: Tensor, query_len: int, dtype: torch.dtype) -> Tensor:
    """Additive bias (B, 1, 1|Sq, Sk) from a (B, Sk) 0/1 mask: ``(1 - m) * fill`` as HF PyTorch."""
    m = mask[:, None, None, :].to(dtype)  # (B, 1, 1, Sk)
    if node.causal:
        key_len = mask.shape[-1]
        past = key_len - query_len
        rows = torch.arange(query_len, device=mask.device)[:, None] + past
        causal = (torch.arange(key_len, device=mask.device)[None, :] <= rows).to(dtype)
        m = m * causal[None, None]  # (B, 1, Sq, Sk)
    fill = torch.finfo(dtype).min if node.mask_fill == "dtype_min" else node.mask_fill
    return window_bias(node, (1.0 - m) * fill, query_len)


def _heads(node: n.Attention, part: str, path: str, x: Tensor, ctx: Context) -> Tensor:
    """(B, S, H) -> the projection ``part`` (query, key, value), split into heads (B, h, S, d), rotated."""
    y = project_part(node, part, path, x, ctx, project)
    y = y.view(x.shape[0], x.shape[1], node.num_heads, node.head_dim).transpose(1, 2)
    return rotate(node, part, y, ctx.positions)


def keys_values(node: n.Attention, path: str, states: Tensor, ctx: Context) -> tuple[Tensor, Tensor]:
    """The keys and values (B, h, S, d) that ``states`` (B, S, H) give."""
    return _heads(node, "key", path, states, ctx), _heads(node, "value", path, states, ctx)


def attention(
    node: n.Attention,
    path: str,
    x: Tensor,
    mask: Tensor,
    head_mask: Tensor | None,
    ctx: Context,
    kv: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Queries from ``x`` attend to ``kv`` (default: the keys and values of ``x``); ``mask`` (B, Sk) covers
    the keys, e.g. a decoder's cached positions followed by the current ones."""
    b, s, _ = x.shape
    h, d = node.num_heads, node.head_dim
    q = _heads(node, "query", path, x, ctx)
    k, v = kv if kv is not None else keys_values(node, path, x, ctx)
    variant = node.variant
    p_drop = node.dropout if ctx.training else 0.0
    if isinstance(variant, n.SlidingWindowAttention) and head_mask is None:
        banded = banded_attention(node, q, k, v, mask, p_drop, ctx.output_attentions)
        if banded is not None:
            return banded, None
    if isinstance(variant, n.BlockSparseAttention) and ctx.block_sparse:
        plan = random_blocks(
            s // variant.block_size, h, variant.num_random_blocks, ctx.training, ctx.block_sparse_seed, variant.layer
        )
        context, probs = block_sparse_attention(
            q, k, v, mask, plan, variant.block_size, 1.0 / node.score_divisor, variant.penalty, ctx.output_attentions
        )
        return context.transpose(1, 2).reshape(b, s, h * d), probs
    bias = ctx.mask_bias(node, mask, s, q.dtype)
    # The fused kernel equals the eager formula up to float rounding, but its backward is wrong for rows whose
    # keys are all masked (every score at the fill value: HF's uniform softmax), which left padding makes in
    # causal layers; so it runs only when no gradient is recorded.
    recording = torch.is_grad_enabled() and q.requires_grad
    if not ctx.output_attentions and head_mask is None and not recording:
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=p_drop, scale=1.0 / node.score_divisor
        )
        probs = None
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) / node.score_divisor + bias  # (B, h, S, S)
        probs = torch.softmax(scores, dim=-1)
        probs = F.dropout(probs, p_drop, training=True) if p_drop > 0 else probs
        if head_mask is not None:
            probs = probs * head_mask
        context = torch.matmul(probs, v)
        if node.returns == "scores":
            probs = scores
    return context.transpose(1, 2).reshape(b, s, h * d), probs


def add_norm(node: n.AddNorm, path: str, x: Tensor, residual: Tensor, ctx: Context) -> Tensor:
    y = dropout(project(node.dense, n.join(path, node.dense.path), x, ctx), node.dropout, ctx) + residual
    return y if node.norm is None else layer_norm(node.norm, n.join(path, node.norm.path), y, ctx)


def pre_norm(node: n.LayerNorm | None, path: str, x: Tensor, ctx: Context) -> Tensor:
    """A pre-LN sublayer's input: ``x`` normalised by the norm at ``path``'s child, or as is without one."""
    return x if node is None else layer_norm(node, n.join(path, node.path), x, ctx)


# One layer run's KV cache entry: its self-attention (key, value), then its cross-attention (key, value)
# when it ran one; each (B, heads, length, head_dim). A model's cache is a tuple of entries, one per layer
# run: HF PyTorch's legacy ``past_key_values`` format.
CacheEntry = tuple[Tensor, ...]


def transformer_layer(
    node: n.TransformerLayer,
    path: str,
    x: Tensor,
    mask: Tensor,
    head_mask: Tensor | None,
    ctx: Context,
    cross: CrossInputs | None = None,
    past: CacheEntry | None = None,
) -> LayerOutput:
    """``past``: this run's cache entry; new self-attention keys/values are appended to it, cached
    cross-attention keys/values are reused as they are (computed once per sequence)."""
    block = node.attention
    block_path = n.join(path, block.path)
    attn_path = n.join(block_path, block.attention.path)
    normed = pre_norm(block.norm, block_path, x, ctx)
    k, v = keys_values(block.attention, attn_path, normed, ctx)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    context, probs = attention(block.attention, attn_path, normed, mask, head_mask, ctx, kv=(k, v))
    x = add_norm(block.output, n.join(block_path, block.output.path), context, x, ctx)
    cache: CacheEntry = (k, v)
    cross_probs = None
    cached_cross = past[2:] if past is not None and len(past) == 4 else None
    block = node.crossattention
    if block is not None and cross is not None and (cached_cross or cross.states is not None):
        block_path = n.join(path, block.path)
        attn_path = n.join(block_path, block.attention.path)
        ck, cv = cached_cross or keys_values(block.attention, attn_path, cross.states, ctx)
        normed = pre_norm(block.norm, block_path, x, ctx)
        context, cross_probs = attention(block.attention, attn_path, normed, cross.mask, head_mask, ctx, kv=(ck, cv))
        x = add_norm(block.output, n.join(block_path, block.output.path), context, x, ctx)
        cache = (k, v, ck, cv)
    normed = pre_norm(node.ffn_norm, path, x, ctx)
    inner = project(node.intermediate, n.join(path, node.intermediate.path), normed, ctx)
    inner = dropout(glu(node.gated, ACTIVATIONS[node.activation], inner), node.inner_dropout, ctx)
    x = add_norm(node.output, n.join(path, node.output.path), inner, x, ctx)
    return LayerOutput(hidden=x, attention=probs, cross_attention=cross_probs, cache=cache)


def encoder(
    node: n.Encoder,
    path: str,
    x: Tensor,
    mask: Tensor,
    head_mask: Tensor | None,
    cross: CrossInputs | None,
    past: tuple[CacheEntry, ...] | None,
    ctx: Context,
) -> EncoderOutput:
    """Run the schedule; ``past`` holds one cache entry per layer run (see :attr:`Encoder.runs`)."""
    if node.input_projection is not None:
        x = linear(node.input_projection, n.join(path, node.input_projection.path), x, ctx)
    out = EncoderOutput(hidden=x, hidden_states=[x] if ctx.output_hidden_states else [])
    for step, rows in zip(node.schedule, node.head_mask_index, strict=True):
        for index, row in zip(step, rows, strict=True):
            layer = node.layers[index]
            run = ctx.run_layer(
                transformer_layer,
                layer,
                n.join(path, layer.path),
                x,
                mask,
                None if head_mask is None else head_mask[row],
                ctx,
                cross,
                None if past is None else past[len(out.cache)],
            )
            x = run.hidden
            out.cache.append(run.cache)
            if ctx.output_attentions:
                out.attentions.append(run.attention)
                if run.cross_attention is not None:
                    out.cross_attentions.append(run.cross_attention)
        if ctx.output_hidden_states:
            out.hidden_states.append(x)
    out.hidden = x
    return out


def pooler(node: n.Pooler, path: str, x: Tensor, ctx: Context) -> Tensor:
    return ACTIVATIONS[node.activation](linear(node.dense, n.join(path, node.dense.path), x[:, 0], ctx))


def lm_head(node: n.LMHead, path: str, inputs: HeadInputs, ctx: Context) -> Tensor:
    x = ACTIVATIONS[node.activation](linear(node.transform, n.join(path, node.transform.path), inputs.sequence, ctx))
    x = layer_norm(node.norm, n.join(path, node.norm.path), x, ctx)
    decoder = node.decoder
    weight = ctx.get(decoder.tied_to if decoder.tied_to is not None else n.join(path, decoder.path), "weight")
    return F.linear(x, weight, None if node.bias_path is None else ctx.get(n.join(path, node.bias_path), "bias"))


def dense_head(node: n.DenseHead, path: str, inputs: HeadInputs, ctx: Context) -> Tensor:
    x = inputs.pooled if node.source == "pooled" else inputs.sequence
    return linear(node.dense, n.join(path, node.dense.path), dropout(x, node.dropout, ctx), ctx)


_POOL: dict[str, Callable[[Tensor], Tensor]] = {
    "first": lambda x: x[:, 0],
    "last": lambda x: x[:, -1],
    "mean": lambda x: x.mean(dim=1),
    "none": lambda x: x,
}


def classification_head(node: n.ClassificationHead, path: str, inputs: HeadInputs, ctx: Context) -> Tensor:
    first = node.dropout if node.input_dropout is None else node.input_dropout
    y = dropout(_POOL[node.pool](inputs.sequence), first, ctx)
    y = ACTIVATIONS[node.activation](linear(node.dense, n.join(path, node.dense.path), y, ctx))
    return linear(node.out_proj, n.join(path, node.out_proj.path), dropout(y, node.dropout, ctx), ctx)


def span_head(node: n.SpanHead, path: str, inputs: HeadInputs, ctx: Context) -> Tensor:
    x = inputs.sequence
    y = dropout(x, node.dropout, ctx)
    y = ACTIVATIONS[node.activation](linear(node.intermediate, n.join(path, node.intermediate.path), y, ctx))
    y = add_norm(node.output, n.join(path, node.output.path), y, x, ctx)
    logits = linear(node.qa_outputs, n.join(path, node.qa_outputs.path), y, ctx)
    if node.question_mask is None or inputs.question_mask is None:
        return logits
    return logits - inputs.question_mask[:, :, None] * node.question_mask.penalty


# The registry: node kind -> implementation, for every kind that is dispatched by its type (see core.call):
# what run_call calls, projections of either kind and loss terms. A composite's own parts (its LayerNorm,
# attention, layers) are called by its function directly.
IMPLS: dict[type, Callable[..., Any]] = {
    n.Linear: linear,
    n.GroupedConv1x1: conv1x1,
    n.Embeddings: embeddings,
    n.Encoder: encoder,
    n.LayerNorm: layer_norm,  # a backbone's final norm
    n.Pooler: pooler,
    n.LMHead: lm_head,
    n.DenseHead: dense_head,
    n.ClassificationHead: classification_head,
    n.SpanHead: span_head,
    n.SentencePooling: sentence_pooling,
    n.PredictionHead: prediction_head,
    **LOSSES,
}
