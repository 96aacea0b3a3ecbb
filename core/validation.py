"""Input checks of the call plan: every backend raises the same error, naming the argument and the limit.

Shape and dtype checks (:func:`check_shapes`) read only :class:`~tandem.core.call.ArraySpec`, so they run
on traced arrays too (inside a user's ``jax.jit``). Value checks (:func:`check_values`) read a host-side
(min, max) per integer input that a backend computes from concrete arrays before it runs the model; traced
inputs have no values to check, so out-of-range ids inside a user's own ``jax.jit`` are not caught.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .nodes import BinaryCrossEntropyLoss, ClassificationLoss, CrossEntropyLoss, ModelGraph, SpanLoss

IntRange = tuple[int, int]  # (min, max) of an integer array

# Integer inputs and the embedding table each indexes.
_TABLES = {"input_ids": "word", "token_type_ids": "token_type", "position_ids": "position"}
_TABLE_FIELDS = {"word": "vocab_size", "token_type": "type_vocab_size", "position": "max_position_embeddings"}


def check_shapes(
    graph: ModelGraph, inputs: Mapping[str, Any], labels: Mapping[str, Any], rows: tuple[int, ...], key_length: int
) -> None:
    """Check the call's array specs: ranks, shapes that must agree, integer dtypes, non-empty rows.

    ``rows``: the token rows' shape as given ((batch, length), or (batch, choices, length) for multiple
    choice); ``key_length``: the positions the attention mask must cover.
    """
    expected_rank = 3 if graph.multiple_choice else 2
    what = "(batch, choices, length)" if graph.multiple_choice else "(batch, length)"
    source = "input_ids" if inputs.get("input_ids") is not None else "inputs_embeds"
    if len(rows) != expected_rank:
        shape = inputs[source].shape
        raise ValueError(f"{source} must be {what}{'' if source == 'input_ids' else ' + (features,)'}, got {shape}")
    if 0 in rows:
        raise ValueError(f"{source} must have at least one row and one position, got shape {inputs[source].shape}")
    emb = graph.backbone.embeddings
    for name in ("input_ids", "token_type_ids", "position_ids"):
        spec = inputs.get(name)
        if spec is None:
            continue
        if spec.kind != "int":
            raise TypeError(f"{name} must be an integer array, got {spec.kind} values of shape {spec.shape}")
        if spec.shape != rows:
            raise ValueError(f"{name} must have the shape of the token rows {rows}, got {spec.shape}")
    embeds = inputs.get("inputs_embeds")
    if embeds is not None:
        if embeds.kind != "float":
            raise TypeError(f"inputs_embeds must be a float array, got {embeds.kind} values")
        if embeds.shape[-1] != emb.word.features:
            raise ValueError(
                f"inputs_embeds must have {emb.word.features} features (the embedding width), got {embeds.shape}"
            )
    mask = inputs.get("attention_mask")
    if mask is not None:
        if len(mask.shape) != len(rows):
            keys = "(batch, choices, keys)" if graph.multiple_choice else "(batch, keys)"
            raise ValueError(
                f"attention_mask must be {keys} with 1 on positions to attend and 0 on padding, "
                f"got {len(mask.shape)}-D shape {mask.shape}; 3-D and 4-D (extended) masks are not supported: "
                "pass the 2-D padding mask"
            )
        if mask.shape[:-1] != rows[:-1]:
            raise ValueError(f"attention_mask rows {mask.shape[:-1]} do not match the token rows {rows[:-1]}")
        if mask.kind == "complex":
            raise TypeError("attention_mask must hold 0/1 values (integer, bool or float), got complex values")
    _check_encoder(graph, inputs, rows)
    _check_label_shapes(graph, labels, rows)


def _check_encoder(graph: ModelGraph, inputs: Mapping[str, Any], rows: tuple[int, ...]) -> None:
    states, mask = inputs.get("encoder_hidden_states"), inputs.get("encoder_attention_mask")
    if states is not None and graph.has_cross_attention:  # without it, the call plan refuses the states
        width = next(layer.crossattention for layer in graph.backbone.encoder.layers if layer.crossattention)
        features = width.attention.key.in_features
        if len(states.shape) != 3 or states.shape[0] != rows[0] or states.shape[-1] != features:
            raise ValueError(
                f"encoder_hidden_states must be (batch={rows[0]}, encoder_length, {features}), got {states.shape}"
            )
        if states.kind != "float":
            raise TypeError(f"encoder_hidden_states must be a float array, got {states.kind} values")
    if mask is not None and states is not None and mask.shape != states.shape[:2]:
        raise ValueError(f"encoder_attention_mask must be {states.shape[:2]} (the encoder's rows), got {mask.shape}")


def _label_size(graph: ModelGraph, logits: str, rows: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The labels' shape for the logits output ``logits`` and the number of classes they index."""
    if graph.multiple_choice and logits == "logits":
        return rows[:1], rows[1]
    per_token, classes = graph.outputs()[logits]
    return (rows if per_token else rows[:1]), classes


def _check_label_shapes(graph: ModelGraph, labels: Mapping[str, Any], rows: tuple[int, ...]) -> None:
    for term in graph.losses:
        if isinstance(term, SpanLoss):
            for name in (term.start_positions, term.end_positions):
                _need(labels, name, rows[:1], int_only=True)
        elif isinstance(term, CrossEntropyLoss):
            shape, _ = _label_size(graph, term.logits, rows)
            _need(labels, term.labels, shape, int_only=True)
        elif isinstance(term, BinaryCrossEntropyLoss):  # 0/1 targets of any real dtype, one per logit
            shape, _ = _label_size(graph, term.logits, rows)
            _need(labels, term.labels, shape, int_only=False)
        elif isinstance(term, ClassificationLoss) and term.labels in labels:
            spec = labels[term.labels]
            integer = spec.kind in ("int", "bool") and term.num_labels > 1 and term.problem_type != "regression"
            shape = rows[:1] if integer and term.problem_type != "multi_label_classification" else None
            _need(labels, term.labels, shape or (rows[0], term.num_labels), int_only=False)


def _need(labels: Mapping[str, Any], name: str, shape: tuple[int, ...], int_only: bool) -> None:
    spec = labels.get(name)
    if spec is None:
        return
    if int_only and spec.kind != "int":
        raise TypeError(f"{name} must be an integer array (class indices), got {spec.kind} values")
    if math.prod(spec.shape) != math.prod(shape):
        raise ValueError(f"{name} must have shape {shape} (or as many elements), got {spec.shape}")


def value_ranges(
    arrays: Mapping[str, Any], range_of: Callable[[Any], IntRange | None]
) -> dict[str, IntRange]:
    """(min, max) of every non-empty integer array, as the backend's ``range_of`` reads it on the host
    (None: no values to read, e.g. a tracer)."""
    out = {}
    for name, x in arrays.items():
        if x is not None and math.prod(x.shape) and "int" in str(x.dtype):
            found = range_of(x)
            if found is not None:
                out[name] = found
    return out


def check_values(graph: ModelGraph, ranges: Mapping[str, IntRange], num_choices: int | None = None) -> None:
    """Check integer inputs and labels against the tables and classes they index, from host-side ranges.

    ``ranges``: (min, max) of each integer input or label given with concrete values (:func:`value_ranges`);
    ``num_choices``: the choices of a multiple-choice call, which its labels index.
    """
    emb = graph.backbone.embeddings
    for name, table in _TABLES.items():
        if name not in ranges:
            continue
        if getattr(emb, table) is None:  # a table the model does not have: the input is ignored, as HF does
            continue
        low, high = ranges[name]
        size = getattr(emb, table).num_embeddings
        if low < 0 or high >= size:
            bad = low if low < 0 else high
            raise ValueError(
                f"{name} holds {bad}, outside the {size}-entry {table} embedding table "
                f"({_TABLE_FIELDS[table]}={size}): values must be in [0, {size})"
            )
    for term in graph.losses:
        if isinstance(term, CrossEntropyLoss) and term.labels in ranges:
            multiple = graph.multiple_choice and term.logits == "logits"
            classes = num_choices if multiple else graph.outputs()[term.logits][1]
            _check_range(term.labels, ranges[term.labels], classes, term.ignore_index)
        elif (
            isinstance(term, ClassificationLoss)
            and term.labels in ranges
            and term.num_labels > 1
            and term.problem_type in (None, "single_label_classification")
        ):
            _check_range(term.labels, ranges[term.labels], term.num_labels, -100)


def _check_range(name: str, value_range: IntRange, classes: int, ignore: int) -> None:
    low, high = value_range
    if (low < 0 and low != ignore) or high >= classes:
        bad = high if high >= classes else low
        raise ValueError(f"{name} holds {bad}: labels must be in [0, {classes}) or the ignore index {ignore}")


def check_positions(graph: ModelGraph, key_length: int, positions_given: bool) -> None:
    """Default positions run up to the cached plus new length: it must fit the position table."""
    if graph.backbone.embeddings.position is None:  # relative positions only: no table to outgrow
        return
    size = graph.backbone.embeddings.position.num_embeddings
    rule = graph.backbone.embeddings.default_positions
    first = 0 if rule is None else rule.padding_idx + 1  # skip-padding positions start after the pad row
    if not positions_given and first + key_length > size:
        start = "" if rule is None else f", default positions starting at padding_idx + 1 = {first}"
        raise ValueError(
            f"the sequence is {key_length} positions long (cached positions included), but the position table "
            f"has {size} entries (max_position_embeddings={size}{start}); truncate the input to at most "
            f"{size - first} tokens"
        )
