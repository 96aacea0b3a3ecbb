"""The output object both backends return: HF's field names, attribute and key access."""

from __future__ import annotations

from typing import Any

# Every field an HF output class of the supported families can carry; absent ones read as None.
FIELDS = (
    "loss",
    "logits",
    "prediction_logits",
    "seq_relationship_logits",
    "sop_logits",
    "start_logits",
    "end_logits",
    "embeddings",  # task sentence_embedding: one (pooled, possibly normalised) vector per row
    "last_hidden_state",
    "pooler_output",
    "past_key_values",
    "hidden_states",
    "attentions",
    "cross_attentions",
)


# HF's field order, which ``to_tuple`` and integer indexing follow: a base model's output
# (``BaseModelOutputWithPoolingAndCrossAttentions``) puts the hidden states before the cache, a head's output
# (``CausalLMOutputWithCrossAttentions``, ``SequenceClassifierOutput``...) the cache first.
_BASE_ORDER = ("last_hidden_state", "pooler_output", "hidden_states", "past_key_values", "attentions")
_HEAD_ORDER = (
    "loss",
    "logits",
    "prediction_logits",
    "seq_relationship_logits",
    "sop_logits",
    "start_logits",
    "end_logits",
    "past_key_values",
    "hidden_states",
    "attentions",
)


class ModelOutput(dict):
    """A dict of the outputs that were computed, readable as attributes (``out.logits``) and, as HF's
    ``ModelOutput``, by position over the fields that are set (``out[0]``, ``out[:2]``, ``out.to_tuple()``).

    Fields that were not computed are absent from the dict and read as ``None`` through attribute access.
    The position order is HF's for the output class of the call (the loss first when it was computed); a
    model called with ``return_dict=False`` returns ``to_tuple()``, as HF's do.

    Example:
        >>> out = model(input_ids=ids, labels=labels)
        >>> loss, logits = out[0], out[1]  # == out.loss, out.logits
    """

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        if name in FIELDS:
            return None
        raise AttributeError(f"{type(self).__name__} has no field {name!r}; fields: {', '.join(self)}")

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def names(self) -> list[str]:
        """The fields that are set, in HF's order for this output (fields HF's classes lack come last)."""
        order = _BASE_ORDER if "last_hidden_state" in self else _HEAD_ORDER
        names = [k for k in (*order, "cross_attentions") if k in self]
        return names + [k for k in self if k not in names]

    def to_tuple(self) -> tuple[Any, ...]:
        """The values that are set, in HF's order for this output (:meth:`names`)."""
        return tuple(dict.__getitem__(self, k) for k in self.names())


def finish(out: dict[str, Any], return_dict: bool | None) -> ModelOutput | tuple[Any, ...]:
    """A backend's return value: the :class:`ModelOutput`, or its ``to_tuple()`` for ``return_dict=False``
    (None, HF's "the config decides", is True: tandem's configs always return the dict)."""
    if return_dict is not None and not isinstance(return_dict, bool):
        raise TypeError(f"return_dict must be a bool, got {type(return_dict).__name__}")
    unordered = ModelOutput(out)
    result = ModelOutput((name, out[name]) for name in unordered.names())  # keys in HF's order, as to_tuple
    return result if return_dict is not False else result.to_tuple()
