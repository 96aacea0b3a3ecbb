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
    "last_hidden_state",
    "pooler_output",
    "past_key_values",
    "hidden_states",
    "attentions",
    "cross_attentions",
)


class ModelOutput(dict):
    """A dict of the outputs that were computed, readable as attributes (``out.logits``).

    Like HF's ``ModelOutput``, fields that were not computed are absent from the dict and read as
    ``None`` through attribute access; ``to_tuple()`` gives the present values in field order.
    """

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        if name in FIELDS:
            return None
        raise AttributeError(f"{type(self).__name__} has no field {name!r}; fields: {', '.join(self)}")

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self[k] for k in FIELDS if k in self)
