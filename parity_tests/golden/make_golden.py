"""Write the golden parameter manifests, one JSON file per BERT task, FROM HF (never from tandem).

For a fixed small config, each file lists the (key, shape) pairs of
- HF PyTorch ``BertFor<Task>``'s ``state_dict()`` (tied aliases such as ``cls.predictions.decoder.weight``
  included, non-persistent buffers excluded, as HF saves them), and
- HF Flax ``FlaxBertFor<Task>``'s params tree, paths joined with ``/``.

``test_golden.py`` compares tandem's torch ``state_dict`` and flax params tree with these files, so an
accidental rename or reshape in tandem fails. Regenerate (needs transformers with Flax, no network):

    .venv/bin/python parity_tests/golden/make_golden.py
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

HERE = Path(__file__).resolve().parent

# Distinct sizes everywhere, so that a transposed or swapped tensor cannot keep its shape by accident.
CONFIG: dict[str, Any] = {
    "vocab_size": 101,
    "hidden_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 40,
    "max_position_embeddings": 33,
    "type_vocab_size": 3,
    "num_labels": 5,
}
# Manifest name -> (task, config overrides). question_answering needs num_labels == 2 (start and end); the
# untied MLM pins the one layout difference tying makes (torch decoder.weight is its own tensor, flax gains
# cls/predictions/decoder/kernel).
MANIFESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("base", {}),
    "pretraining": ("pretraining", {}),
    "masked_lm": ("masked_lm", {}),
    "masked_lm_untied": ("masked_lm", {"tie_word_embeddings": False}),
    "next_sentence_prediction": ("next_sentence_prediction", {}),
    "sequence_classification": ("sequence_classification", {}),
    "multiple_choice": ("multiple_choice", {}),
    "token_classification": ("token_classification", {}),
    "question_answering": ("question_answering", {"num_labels": 2}),
}

TASKS: dict[str, str] = {
    "base": "BertModel",
    "pretraining": "BertForPreTraining",
    "masked_lm": "BertForMaskedLM",
    "next_sentence_prediction": "BertForNextSentencePrediction",
    "sequence_classification": "BertForSequenceClassification",
    "multiple_choice": "BertForMultipleChoice",
    "token_classification": "BertForTokenClassification",
    "question_answering": "BertForQuestionAnswering",
}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


def manifest(task: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    config_kwargs = {**CONFIG, **overrides}
    config = transformers.BertConfig(**config_kwargs)
    torch.manual_seed(0)
    torch_model = getattr(transformers, TASKS[task])(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HF's Flax deprecation notice
        flax_model = getattr(transformers, "Flax" + TASKS[task])(config, seed=0)
    return {
        "task": task,
        "hf_torch_class": TASKS[task],
        "hf_flax_class": "Flax" + TASKS[task],
        "config": config_kwargs,
        "torch": sorted([k, list(v.shape)] for k, v in torch_model.state_dict().items()),
        "flax": sorted([k, list(np.shape(v))] for k, v in _flatten(flax_model.params).items()),
    }


def dumps(data: Mapping[str, Any]) -> str:
    """JSON with one (key, shape) entry per line, so a diff of a manifest reads as a list of renames."""
    lines = ["{"]
    items = list(data.items())
    for i, (name, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if name in ("torch", "flax"):
            entries = ",\n".join(f"    {json.dumps(entry)}" for entry in value)
            lines.append(f'  "{name}": [\n{entries}\n  ]{comma}')
        else:
            lines.append(f"  {json.dumps(name)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    for name, (task, overrides) in MANIFESTS.items():
        path = HERE / f"bert_{name}.json"
        path.write_text(dumps(manifest(task, overrides)))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
