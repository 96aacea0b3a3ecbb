"""Pydantic configs with HF's field names and defaults, validated on construction."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .nodes import ACTIVATIONS


class FamilyConfig(BaseModel):
    """Fields and checks every BERT-family config shares.

    Unknown HF fields (``bos_token_id``, ``transformers_version``...) are kept and written back by
    :meth:`to_hf_dict`; fields that change the computation and that tandem does not implement are
    rejected, never ignored.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)

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
            if value is not None and not 0 < value <= _MAX_SIZE:
                raise ValueError(f"{name} must be a positive integer of at most {_MAX_SIZE}, got {value}")
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
        if self.initializer_range < 0:
            raise ValueError(f"initializer_range must be >= 0, got {self.initializer_range}")
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

    @property
    def id2label(self) -> dict[int, str]:
        """The label names by class index, as HF's ``config.id2label``: int keys, ``LABEL_<i>`` by default."""
        names = (self.model_extra or {}).get("id2label")
        if not isinstance(names, dict) or len(names) != self.num_labels:  # as config.json is written
            names = _default_id2label(self.num_labels)
        return {int(k): v for k, v in names.items()}

    @property
    def label2id(self) -> dict[str, int]:
        """The class index of each label name, as HF's ``config.label2id``."""
        given = (self.model_extra or {}).get("label2id")
        if isinstance(given, dict) and len(given) == self.num_labels:
            return given
        return {v: k for k, v in self.id2label.items()}

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` contents (``model_type``, ``id2label``/``label2id`` included)."""
        data = self.model_dump(by_alias=True)  # HF's field names where a family's differ from ours
        num_labels = data.pop("num_labels")
        id2label = data.get("id2label")
        if not isinstance(id2label, dict) or len(id2label) != num_labels:
            data["id2label"] = _default_id2label(num_labels)
            label2id = data.get("label2id")  # given alone (HF keeps it beside the placeholder names)
            if not isinstance(label2id, dict) or len(label2id) != num_labels:
                data["label2id"] = {name: int(i) for i, name in data["id2label"].items()}
        data["model_type"] = self.model_type
        return data

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "config overrides") -> FamilyConfig:
        """This config with some fields replaced, validated as a ``config.json`` is (HF's
        ``from_pretrained(path, num_labels=5)``). Any declared field, ``id2label``/``label2id`` and the HF
        fields the config already holds may be given; an unknown name is a ValueError naming it. As in HF,
        ``id2label`` sets ``num_labels`` (and ``label2id``) and a new ``num_labels`` drops the old label names.
        """
        known = set(type(self).model_fields) | set(self.model_extra or {}) | {"id2label", "label2id"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            hints = [
                f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
                for name in unknown
                for close in [difflib.get_close_matches(name, sorted(known), n=1)]
            ]
            raise ValueError(
                f"{source}: unknown config field{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for "
                f"{type(self).__name__}; the fields are {', '.join(sorted(type(self).model_fields))}"
            )
        data = self.to_hf_dict()
        updates = dict(overrides)
        id2label = updates.get("id2label")
        if isinstance(id2label, Mapping):
            updates["id2label"] = {str(k): v for k, v in id2label.items()}
            updates.setdefault("num_labels", len(id2label))
            updates.setdefault("label2id", {v: int(k) for k, v in updates["id2label"].items() if str(k).isdigit()})
            if updates["num_labels"] != len(id2label):
                raise ValueError(
                    f"{source}: num_labels={updates['num_labels']} but id2label names {len(id2label)} labels"
                )
        elif "num_labels" in updates:
            data.pop("id2label", None)
            data.pop("label2id", None)
        return type(self).from_hf_dict({**data, **updates}, source)

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "config") -> FamilyConfig:
        """The config of an HF ``config.json``'s contents, its types checked strictly (JSON has no ``"12"``
        for 12); a ValueError naming ``source`` and every bad field otherwise."""
        data = dict(data)
        data.pop("model_type", None)
        _check_hf_fields(data, source)
        id2label = data.get("id2label")
        if isinstance(id2label, dict):
            data.setdefault("num_labels", len(id2label))
            if id2label == _default_id2label(len(id2label)):  # HF's placeholder names carry nothing
                data.pop("id2label")
                if data.get("label2id") == {name: int(i) for i, name in id2label.items()}:
                    data.pop("label2id")
        try:
            return cls.model_validate(data, strict=True)
        except ValidationError as err:
            raise ValueError(f"{source}: {describe(err)}") from None


# Sizes are array dimensions and token ids, which JAX holds as int32.
_MAX_SIZE = 2**31 - 1


def describe(err: ValidationError) -> str:
    """A pydantic error as one line: ``field: problem (got value)`` per error, the field named in each."""
    problems = []
    for error in err.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            where = ".".join(str(part) for part in error["loc"])
            message = f"{where}: {message} (got {_short(error['input'])})"
        problems.append(message)
    return "; ".join(problems)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_hf_fields(data: dict[str, Any], source: str) -> None:
    """HF fields that tandem keeps without a type of its own, checked as HF reads them."""
    architectures = data.get("architectures")
    if architectures is not None and not (
        isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)
    ):
        raise ValueError(f"{source}: architectures must be a list of class names, got {_short(architectures)}")
    for name, key_kind, value_kind in (("id2label", "label id", str), ("label2id", "label name", int)):
        mapping = data.get(name)
        if mapping is None:
            continue
        keys_ok = isinstance(mapping, dict) and all(_is_label_key(k, key_kind) for k in mapping)
        if not keys_ok or not all(isinstance(v, value_kind) and not isinstance(v, bool) for v in mapping.values()):
            raise ValueError(
                f"{source}: {name} must map each {key_kind} to a {value_kind.__name__}, got {_short(mapping)}"
            )


def _is_label_key(key: Any, kind: str) -> bool:
    if kind == "label name":
        return isinstance(key, str)
    return (isinstance(key, int) and not isinstance(key, bool)) or (isinstance(key, str) and key.isdigit())


def _default_id2label(num_labels: int) -> dict[str, str]:
    return {str(i): f"LABEL_{i}" for i in range(num_labels)}


def parse_hf_config(
    path_or_dict: str | os.PathLike[str] | Mapping[str, Any], classes: Mapping[str, type[FamilyConfig]]
) -> FamilyConfig:
    """An HF ``config.json`` (a path, a checkpoint directory or its contents) as the config class that its
    ``model_type`` names in ``classes``. Any problem is a ValueError naming the file and the field."""
    data, source = _read_config(path_or_dict)
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in classes:
        raise ValueError(
            f"{source}: model_type={_short(model_type)} is not supported; tandem knows {', '.join(sorted(classes))}"
        )
    return classes[model_type].from_hf_dict(data, source)


def _read_config(path_or_dict: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The contents of a ``config.json`` as a dict, and the name of where they came from."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict), "config"
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise TypeError(
            f"expected a path to config.json or a checkpoint directory, or a dict, got {type(path_or_dict).__name__}"
        )
    path = Path(path_or_dict)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{path} is not a config: its JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of config fields, got a JSON {_json_kind(data)}")
    return data, str(path)


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds[type(value)]
