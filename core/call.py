"""The call plan: what one model call does, decided once and framework-free, then run by any backend.

A call goes through three steps, the same in every backend:

1. :func:`plan_call` reads the call's inputs as shapes and dtype kinds (never values) and the graph, checks
   them (names, shapes, which inputs go together) and decides everything that does not depend on array
   values: multiple-choice flattening, default token types and positions, the question mask, block-sparse
   padding, head-mask rows, cross-attention and the KV cache, the loss terms and their problem types. The
   result, a :class:`CallPlan`, is small and hashable, so a JAX backend can make it a static argument.
2. :func:`run_call` executes the plan on the backend's arrays: it prepares the inputs (with a handful of
   array primitives, :class:`Ops`), then calls the node kinds of the graph through the backend's registry
   (:class:`Runtime`): embeddings, encoder, pooler, heads, losses. Which function runs a node is decided by
   its type alone.
3. The backend wraps the returned fields in a :class:`~tandem.core.outputs.ModelOutput`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from .nodes import ATTENTION_MASK, ClassificationLoss, Loss, ModelGraph, SentencePooling, SkipPaddingPositions, join
from .validation import check_positions, check_shapes

Array = Any  # a torch.Tensor or a jax.Array: core never looks inside

INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


class ArraySpec(NamedTuple):
    """What the plan knows of an input array: its shape and its dtype kind (``"int"``, ``"float"``,
    ``"bool"`` or ``"complex"``)."""

    shape: tuple[int, ...]
    kind: str


@dataclass(frozen=True)
class CallPlan:
    """Everything a call decides before it runs (see the module docstring). Hashable."""

    batch: int  # rows the backbone runs (multiple-choice rows flattened)
    length: int  # positions of this call
    key_length: int  # positions the attention mask covers (cached ones included)
    num_choices: int | None  # multiple choice: logits are reshaped to (batch, num_choices)
    block_sparse: bool  # block-sparse layers run (else they compute dense attention)
    pad: int  # block-sparse padding appended to every row
    pad_token_id: int
    token_types: Literal["given", "zeros", "after_question"]
    question_mask: Literal["lengths", "ids"] | None  # where a masked span head finds the question
    mask_given: bool
    positions_given: bool
    head_mask: tuple[int, int] | None  # (rows, heads) of the normalised head mask
    cross: Literal["states", "cached"] | None  # what cross-attention reads
    use_cache: bool
    losses: tuple[Loss, ...]  # the terms summed into ``loss``, problem types resolved
    output_attentions: bool = False
    output_hidden_states: bool = False
    training: bool = False

    @property
    def full_length(self) -> int:
        """Positions the backbone runs: the call's plus the block-sparse padding."""
        return self.length + self.pad


def describe(shape: Any, kind: str) -> ArraySpec:
    return ArraySpec(tuple(int(d) for d in shape), kind)


def check_input_names(graph: ModelGraph, extra: Mapping[str, Any]) -> None:
    """Keyword arguments besides the common ones must be the task's labels or extra inputs."""
    accepted = graph.label_names() + graph.extra_inputs()
    unknown = sorted(set(extra) - set(accepted))
    if unknown:
        raise TypeError(
            f"{graph.family} {graph.task} got unexpected keyword argument(s) {unknown}; it accepts {list(accepted)}"
        )


def resolve_use_cache(graph: ModelGraph, use_cache: bool | None, has_past: bool, has_labels: bool) -> bool:
    """Whether a call returns ``past_key_values``, following HF PyTorch.

    Unset: the graph's default (``config.use_cache`` for decoders), or True when a cache is passed in.
    Calls with labels (training) return no cache, as HF's causal-LM heads do. A cache on a model whose
    self-attention is not causal is an error: later positions would change earlier ones.
    """
    if (use_cache or has_past) and not graph.is_decoder:
        raise ValueError(
            f"{graph.family} {graph.task} is not a decoder (its self-attention is not causal), so it cannot use a "
            "KV cache (use_cache / past_key_values); build it with is_decoder=True to decode incrementally"
        )
    if has_labels:
        return False
    if use_cache is None:
        return graph.use_cache or has_past
    return use_cache


def plan_call(
    graph: ModelGraph,
    inputs: Mapping[str, ArraySpec | None],
    labels: Mapping[str, ArraySpec],
    *,
    past_length: int | None = None,
    cache_slots: int | None = None,
    cached_cross: bool = False,
    use_cache: bool = False,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
    training: bool = False,
) -> CallPlan:
    """Check a call's inputs and decide how it runs.

    ``inputs``: the specs of the array keywords of the call (:data:`INPUTS`, ``head_mask``,
    ``encoder_hidden_states``, ``encoder_attention_mask`` and the task's extra inputs; None where not
    given); ``labels``: the label keywords given. With a KV cache, ``past_length`` is its filled length (the
    attention mask then covers the cached and the new positions) or, for a fixed-size cache, ``cache_slots``
    its size (the mask covers every slot).
    ``use_cache`` is already resolved (:func:`resolve_use_cache`).
    """
    ids, embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
    head_mask = inputs.get("head_mask")
    encoder_states, encoder_mask = inputs.get("encoder_hidden_states"), inputs.get("encoder_attention_mask")
    rows_shape = input_rows(None if ids is None else ids.shape, None if embeds is None else embeds.shape)
    mask = inputs.get("attention_mask")
    key_length = cache_slots if cache_slots is not None else (past_length or 0) + rows_shape[-1]
    check_shapes(graph, inputs, labels, rows_shape, key_length)
    num_choices = None
    if graph.multiple_choice:
        if len(rows_shape) != 3:
            raise ValueError(f"multiple_choice inputs must be (batch, choices, length), got {rows_shape}")
        num_choices = rows_shape[1]
        rows_shape = (rows_shape[0] * rows_shape[1], rows_shape[2])
    batch, length = rows_shape[0], rows_shape[-1]

    if mask is not None and mask.shape[-1] != key_length:
        past = key_length - length
        raise ValueError(
            f"attention_mask must cover the {past} cached and {length} new positions "
            f"(length {key_length}), got shape {mask.shape}"
        )

    backbone = graph.backbone
    policy = backbone.block_sparse
    block_sparse = policy is not None and length > policy.min_length
    pad = (-length) % policy.block_size if block_sparse else 0
    check_positions(graph, (past_length or 0) + length + pad, inputs.get("position_ids") is not None)

    question = _question_mask_source(graph, ids is not None, inputs.get("question_lengths") is not None)
    if inputs.get("token_type_ids") is not None:
        token_types = "given"
    else:
        token_types = "after_question" if question is not None else "zeros"

    if encoder_states is not None and not graph.has_cross_attention:
        raise ValueError(
            f"encoder_hidden_states were given but {graph.family} {graph.task} has no cross-attention layers; "
            "build the decoder with add_cross_attention=True"
        )
    if encoder_mask is not None and not (encoder_states is not None or cached_cross):
        raise ValueError("encoder_attention_mask was given without encoder_hidden_states")
    cross = "cached" if cached_cross else ("states" if encoder_states is not None else None)
    if key_length != length and any(isinstance(head, SentencePooling) for head in graph.heads):
        raise ValueError(
            f"{graph.family} {graph.task} pools the whole sequence: it cannot continue a KV cache (past_key_values)"
        )

    return CallPlan(
        batch=batch,
        length=length,
        key_length=key_length,
        num_choices=num_choices,
        block_sparse=block_sparse,
        pad=pad,
        pad_token_id=policy.pad_token_id if policy is not None else 0,
        token_types=token_types,
        question_mask=question,
        mask_given=mask is not None,
        positions_given=inputs.get("position_ids") is not None,
        head_mask=None if head_mask is None else _head_mask_rows(graph, head_mask),
        cross=cross,
        use_cache=use_cache,
        losses=tuple(_resolve_problem(term, labels) for term in graph.loss_terms(labels)),
        output_attentions=output_attentions,
        output_hidden_states=output_hidden_states,
        training=training,
    )


def input_rows(ids: tuple[int, ...] | None, embeds: tuple[int, ...] | None) -> tuple[int, ...]:
    """The shape of the token rows of a call (ids' shape, or the embeddings' without the feature axis)."""
    if (ids is None) == (embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    return ids if ids is not None else embeds[:-1]


def _question_mask_source(graph: ModelGraph, has_ids: bool, has_lengths: bool) -> Literal["lengths", "ids"] | None:
    """A masked span head finds question lengths in ``question_lengths``, else in ``input_ids``."""
    if graph.question_mask() is None:
        return None
    if has_lengths:
        return "lengths"
    return "ids" if has_ids else None


def _head_mask_rows(graph: ModelGraph, spec: ArraySpec) -> tuple[int, int]:
    """HF's ``get_head_mask`` rules: a (heads,) or (rows, heads) mask; every layer run must have a row."""
    encoder = graph.backbone.encoder
    unsupported = [layer.path for layer in encoder.layers if not layer.attention.attention.supports_head_mask]
    if unsupported:
        raise ValueError(f"head_mask is not supported by this model (layers {', '.join(unsupported)}); pass None")
    if any(row is None for rows in encoder.head_mask_index for row in rows):
        raise ValueError("head_mask is not supported for this configuration: some layer runs have no head-mask row")
    heads = encoder.layers[0].attention.attention.num_heads
    rows = encoder.num_head_mask_rows
    if spec.shape not in ((heads,), (rows, heads)):
        raise ValueError(f"head_mask must be ({heads},) or ({rows}, {heads}), got {spec.shape}")
    return rows, heads


def _resolve_problem(term: Loss, labels: Mapping[str, ArraySpec]) -> Loss:
    """HF's sequence-classification problem type, when not fixed: from the number of labels and the
    labels' dtype (integers: single-label, else multi-label)."""
    if not isinstance(term, ClassificationLoss) or term.problem_type is not None:
        return term
    spec = labels[term.labels]
    if term.num_labels == 1:
        problem = "regression"
    elif term.soft_labels:
        problem = "single_label_classification" if spec.shape[1:] in ((), (1,)) else "soft_label_classification"
    elif spec.kind == "int":
        problem = "single_label_classification"
    else:
        problem = "multi_label_classification"
    flatten = term.soft_labels and problem == "regression"
    return term.model_copy(update={"problem_type": problem, "flatten_logits": flatten})


# ------------------------------------------------------------------------------------- execution
class Ops(Protocol):
    """The array primitives a backend gives :func:`run_call` (integer arrays unless said otherwise)."""

    def ones(self, shape: tuple[int, ...]) -> Array: ...

    def zeros(self, shape: tuple[int, ...]) -> Array: ...

    def full(self, shape: tuple[int, ...], value: int) -> Array: ...

    def arange(self, n: int) -> Array: ...

    def to_int(self, x: Array) -> Array: ...

    def compute(self, x: Array) -> Array:
        """``x`` in the model's computation dtype (a float array)."""

    def pad(self, x: Array, n: int, value: int) -> Array:
        """``x`` (B, S, ...) with ``n`` positions of ``value`` appended along axis 1."""

    def concat(self, a: Array, b: Array) -> Array:
        """``a`` and ``b`` joined along axis 1."""

    def first(self, ids: Array, value: int) -> Array:
        """Per row of ``ids`` (B, S), the index of the first position equal to ``value`` (0 if none)."""

    def broadcast(self, x: Array, shape: tuple[int, ...]) -> Array: ...

    def column(self, x: Array, index: int) -> Array:
        """``x[..., index]``, contiguous."""

    def cumsum(self, x: Array) -> Array:
        """The running sum of ``x`` (B, S) along axis 1."""


@dataclass
class CrossInputs:
    """What cross-attention reads in one call: the encoder states (None when the cache holds their keys
    and values) and the encoder's (B, Se) mask."""

    states: Array | None
    mask: Array


@dataclass
class LayerOutput:
    hidden: Array
    attention: Array | None
    cross_attention: Array | None
    cache: tuple[Array, ...]  # the keys/values this run attended to: (k, v) or (k, v, cross k, cross v)


@dataclass
class EncoderOutput:
    hidden: Array  # the last hidden state
    hidden_states: list[Array] = field(default_factory=list)  # after the input and each step, when asked for
    attentions: list[Array] = field(default_factory=list)  # one per layer run, when asked for
    cross_attentions: list[Array] = field(default_factory=list)  # one per cross-attention run, when asked for
    cache: list[tuple[Array, ...]] = field(default_factory=list)  # one entry per layer run


@dataclass
class HeadInputs:
    """What a head reads: the sequence output (B, S, H), the pooled output (B, H) when the backbone has a
    pooler, the question mask (B, S) of a masked span head (1 on positions that cannot be answers) and the
    attention mask (B, S) over this call's positions (None for a call that continues a KV cache)."""

    sequence: Array
    pooled: Array | None
    question_mask: Array | None
    mask: Array | None = None


@dataclass
class Runtime:
    """A backend's side of a call: its registry of node kinds, its array primitives and its per-call
    context (parameters, mode, dropout keys), which every node function receives last."""

    backend: str
    impls: Mapping[type, Callable[..., Any]]
    ops: Ops
    ctx: Any

    def __call__(self, node: Any, path: str, *args: Any) -> Any:
        """Run ``node`` (at full ``path``) through the function registered for its type."""
        return lookup(self.impls, self.backend, node, path)(node, path, *args, self.ctx)


def lookup(impls: Mapping[type, Callable[..., Any]], backend: str, node: Any, path: str) -> Callable[..., Any]:
    """The function ``impls`` registers for the type of ``node``; a clear error naming the kind and path."""
    impl = impls.get(type(node))
    if impl is None:
        raise NotImplementedError(
            f"the {backend} backend has no implementation of node kind {node.kind!r} "
            f"({type(node).__name__}) at {path or '<root>'}"
        )
    return impl


def run_call(
    graph: ModelGraph,
    plan: CallPlan,
    inputs: Mapping[str, Array | None],
    labels: Mapping[str, Array],
    rt: Runtime,
    *,
    head_mask: Array | None = None,
    encoder_states: Array | None = None,
    encoder_mask: Array | None = None,
    past: tuple[tuple[Array, ...], ...] | None = None,
    position_start: Any = 0,
) -> dict[str, Any]:
    """The forward pass of ``graph`` as ``plan`` says: backbone, heads, exposed outputs and the loss.

    ``past``: the KV cache, one entry per layer run; ``position_start``: the cached length, where default
    positions start (an int, or a traced scalar for a fixed-size cache). Returns the output fields; a
    returned cache is the list of per-run entries, which the backend wraps in its own cache type.
    """
    ops = rt.ops
    if plan.num_choices is not None:
        inputs = {k: None if v is None else v.reshape(-1, *v.shape[2:]) for k, v in inputs.items()}
    x, mask, question = _embed(graph, plan, inputs, rt, position_start)
    cross = None
    if plan.cross is not None:
        mask_e = encoder_mask
        if mask_e is None:
            reference = encoder_states if plan.cross == "states" else past[0][2]
            mask_e = ops.ones((reference.shape[0], reference.shape[-2]))
        cross = CrossInputs(states=encoder_states if plan.cross == "states" else None, mask=mask_e)
    if head_mask is not None:
        rows, heads = plan.head_mask
        head_mask = ops.compute(ops.broadcast(head_mask, (rows, heads)).reshape(rows, 1, heads, 1, 1))
    backbone = graph.backbone
    encoder = backbone.encoder
    encoded = rt(encoder, join(backbone.path, encoder.path), x, mask, head_mask, cross, past)
    if backbone.final_norm is not None:  # pre-LN stacks; hidden_states keep the un-normalised outputs
        encoded.hidden = rt(backbone.final_norm, join(backbone.path, backbone.final_norm.path), encoded.hidden)
    pooled = None
    if backbone.pooler is not None:
        pooled = rt(backbone.pooler, join(backbone.path, backbone.pooler.path), encoded.hidden)
    sequence = encoded.hidden[:, : plan.length]  # cut block-sparse padding; hidden states and attentions keep it
    token_mask = mask[:, : plan.length] if plan.key_length == plan.length else None
    out: dict[str, Any] = {}
    for head in graph.heads:
        logits = rt(head, head.path, HeadInputs(sequence, pooled, question, token_mask))
        split = getattr(head, "split", None)  # the last axis cut into named outputs (span logits)
        if split is None:
            out[head.output] = logits
        else:
            out.update({name: ops.column(logits, i) for i, name in enumerate(split)})
    if plan.num_choices is not None:
        out["logits"] = out["logits"].reshape(-1, plan.num_choices)
    if "last_hidden_state" in graph.expose:
        out["last_hidden_state"] = sequence
    if "pooler_output" in graph.expose and pooled is not None:
        out["pooler_output"] = pooled
    if plan.use_cache:
        out["past_key_values"] = encoded.cache
    if plan.output_hidden_states:
        out["hidden_states"] = tuple(encoded.hidden_states)
    if plan.output_attentions:
        out["attentions"] = tuple(encoded.attentions)
        if encoded.cross_attentions:
            out["cross_attentions"] = tuple(encoded.cross_attentions)
    if plan.losses:
        # Loss terms read their labels and, for a term that weighs positions, the attention mask as given.
        given = {**labels, ATTENTION_MASK: inputs["attention_mask"] if plan.mask_given else None}
        for term in plan.losses:
            if isinstance(term, ClassificationLoss) and term.flatten_logits:
                out[term.logits] = out[term.logits].reshape(-1)
        out = {"loss": sum(rt(term, "", out, given) for term in plan.losses), **out}
    return out


def _embed(
    graph: ModelGraph, plan: CallPlan, inputs: Mapping[str, Array | None], rt: Runtime, position_start: Any
) -> tuple[Array, Array, Array | None]:
    """Default token types and positions, block-sparse padding, then the embeddings node. Returns the
    embedded input (B, S + pad, E), the attention mask (B, keys) and the question mask (B, S) or None."""
    ops = rt.ops
    batch, length = plan.batch, plan.length
    ids, embeds = inputs["input_ids"], inputs["inputs_embeds"]
    mask = inputs["attention_mask"] if plan.mask_given else ops.ones((batch, plan.key_length))
    question = None
    if plan.question_mask is not None:
        spec = graph.question_mask()
        if plan.question_mask == "lengths":
            lengths = inputs["question_lengths"].reshape(-1, 1)
        else:
            lengths = (ops.first(ids, spec.sep_token_id) + 1)[:, None]
        question = ops.to_int(ops.arange(length)[None, :] < lengths)  # 1 before and at the first separator
    token_type_ids = {
        "given": lambda: inputs["token_type_ids"],
        "zeros": lambda: ops.zeros((batch, length)),
        "after_question": lambda: 1 - question,  # as HF does for question answering
    }[plan.token_types]()
    if question is not None:
        question = question * ops.to_int(ops.arange(length)[None, :] > 0)  # position 0 stays allowed
    positions = inputs["position_ids"] if plan.positions_given else None
    emb = graph.backbone.embeddings
    emb_path = join(graph.backbone.path, emb.path)
    if plan.pad:
        pad, pad_id = plan.pad, plan.pad_token_id
        mask = ops.pad(mask, pad, 0)
        token_type_ids = ops.pad(token_type_ids, pad, 0)
        if positions is not None:
            positions = ops.pad(positions, pad, pad_id)
        if ids is not None:
            ids = ops.pad(ids, pad, pad_id)
        else:
            # HF PyTorch pads given embeddings with the embedding-module output of pad tokens.
            pad_ids = ops.full((batch, pad), pad_id)
            pad_rows = rt(emb, emb_path, pad_ids, ops.zeros((batch, pad)), ops.arange(pad)[None], None)
            embeds = ops.concat(embeds, pad_rows)
    if positions is None:
        positions = _default_positions(emb.default_positions, plan, ids, ops, position_start)
    return rt(emb, emb_path, ids, token_type_ids, positions, embeds), mask, question


def _default_positions(
    rule: SkipPaddingPositions | None, plan: CallPlan, ids: Array | None, ops: Ops, position_start: Any
) -> Array:
    """HF PyTorch's position ids when the call gives none: offset by the cached length, or as the embeddings'
    ``default_positions`` rule says."""
    shape = (plan.batch, plan.full_length)
    if rule is None:
        return ops.broadcast(ops.arange(plan.full_length)[None] + position_start, shape)
    if ids is None:  # HF's create_position_ids_from_inputs_embeds: from padding_idx + 1, the cache ignored
        return ops.broadcast(ops.arange(plan.full_length)[None] + (rule.padding_idx + 1), shape)
    real = ops.to_int(ids != rule.padding_idx)
    return (ops.cumsum(real) + position_start) * real + rule.padding_idx


__all__ = [
    "INPUTS",
    "ArraySpec",
    "CallPlan",
    "CrossInputs",
    "EncoderOutput",
    "HeadInputs",
    "LayerOutput",
    "Ops",
    "Runtime",
    "check_input_names",
    "input_rows",
    "lookup",
    "plan_call",
    "resolve_use_cache",
    "run_call",
]
