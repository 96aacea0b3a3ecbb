"""Pydantic configs with HF's field names and defaults, validated on construction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .nodes import ACTIVATIONS


class FamilyConfig(BaseModel):
    """Fields and checks every BERT-family config shares.

    Unknown HF fields (``bos_token_id``, ``transformers_version``...) are kept and written back by
    :meth:`to_hf_dict`; fields that change the computation and that tandem does not implement are
    rejected, never ignored.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    model_type: ClassVar[str]
    positive_fields: ClassVar[tuple[str, ...]] = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "num_labels",
    )
    dropout_fields: ClassVar[tuple[str, ...]] = ("hidden_dropout_prob", "attention_probs_dropout_prob")

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    max_position_embeddings: int
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    num_labels: int = 2
    problem_type: str | None = None
    pruned_heads: dict[str, list[int]] = Field(default_factory=dict)

    @field_validator("hidden_act")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        if value not in ACTIVATIONS:
            raise ValueError(f"hidden_act={value!r} is not supported; choose one of {', '.join(ACTIVATIONS)}")
        return value

    @field_validator("problem_type")
    @classmethod
    def _known_problem_type(cls, value: str | None) -> str | None:
        allowed = ("regression", "single_label_classification", "multi_label_classification")
        if value is not None and value not in allowed:
            raise ValueError(f"problem_type={value!r} is not one of {allowed}")
        return value

    @model_validator(mode="after")
    def _check(self) -> FamilyConfig:
        for name in self.positive_fields:
            value = getattr(self, name, None)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        for name in self.dropout_fields:
            value = getattr(self, name, None)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.pruned_heads:
            raise ValueError(
                f"pruned_heads={self.pruned_heads} is not supported: tandem does not implement head "
                "pruning; use a checkpoint without pruned heads"
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` contents (``model_type``, ``id2label``/``label2id`` included)."""
        data = self.model_dump()
        num_labels = data.pop("num_labels")
        id2label = data.get("id2label")
        if not isinstance(id2label, dict) or len(id2label) != num_labels:
            data["id2label"] = _default_id2label(num_labels)
            data["label2id"] = {name: int(i) for i, name in data["id2label"].items()}
        data["model_type"] = self.model_type
        return data

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> FamilyConfig:
        data = dict(data)
        data.pop("model_type", None)
        id2label = data.get("id2label")
        if isinstance(id2label, dict):
            data.setdefault("num_labels", len(id2label))
            if id2label == _default_id2label(len(id2label)):  # HF's placeholder names carry nothing
                data.pop("id2label")
                data.pop("label2id", None)
        return cls(**data)


def _default_id2label(num_labels: int) -> dict[str, str]:
    return {str(i): f"LABEL_{i}" for i in range(num_labels)}


def read_config_dict(path_or_dict: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict)
    path = Path(path_or_dict)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
