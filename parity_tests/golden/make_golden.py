"""Write the golden parameter manifests, one JSON file per (family, task) variant, FROM HF (never from tandem).

For a fixed small config per family, each file ``<family>_<name>.json`` lists the (key, shape) pairs of
- HF PyTorch ``<Class>``'s ``state_dict()`` (tied aliases such as ``cls.predictions.decoder.weight``
  included, non-persistent buffers excluded, as HF saves them), with the tied aliases named under
  ``torch_tied`` (alias -> the key it shares storage with), and
- HF Flax ``Flax<Class>``'s params tree, paths joined with ``/``; ``null`` (with ``flax_absent_reason``)
  when HF has no Flax class for it (SqueezeBERT).

Where HF Flax builds a head without the pooler that HF PyTorch gives it (BigBird's masked and causal LM,
token classification), ``flax_pooler_absent`` lists the pooler params that HF Flax's pretraining model of the
same family has at that path: the exact entries by which a tree that keeps HF PyTorch's pooler is larger.

``test_golden.py`` compares tandem's torch ``state_dict`` and flax params tree with these files, so an
accidental rename or reshape in tandem fails. Regenerate (needs transformers with Flax, no network):

    .venv/bin/python parity_tests/golden/make_golden.py
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Family:
    config_class: str  # HF's config class
    classes: dict[str, str]  # task -> HF PyTorch class
    flax_classes: dict[str, str | None]  # task -> HF Flax class, None when HF has none
    config: dict[str, Any]  # the small config, read by both HF's and tandem's config classes
    manifests: dict[str, tuple[str, dict[str, Any]]]  # manifest name -> (task, config overrides)


def _tasks(names: dict[str, str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """One manifest per task; question answering needs num_labels == 2 (start and end logits)."""
    return {task: (task, {"num_labels": 2} if task == "question_answering" else {}) for task in names}


def _flax(classes: dict[str, str], renamed: Mapping[str, str] | None = None) -> dict[str, str | None]:
    renamed = renamed or {}
    out: dict[str, str | None] = {}
    for task, name in classes.items():
        flax = renamed.get(task, "Flax" + name)
        out[task] = flax if hasattr(transformers, flax) else None
    return out


BERT_CLASSES = {
    "base": "BertModel",
    "pretraining": "BertForPreTraining",
    "masked_lm": "BertForMaskedLM",
    "next_sentence_prediction": "BertForNextSentencePrediction",
    "sequence_classification": "BertForSequenceClassification",
    "multiple_choice": "BertForMultipleChoice",
    "token_classification": "BertForTokenClassification",
    "question_answering": "BertForQuestionAnswering",
    "causal_lm": "BertLMHeadModel",
}
ALBERT_CLASSES = {
    "base": "AlbertModel",
    "pretraining": "AlbertForPreTraining",
    "masked_lm": "AlbertForMaskedLM",
    "sequence_classification": "AlbertForSequenceClassification",
    "multiple_choice": "AlbertForMultipleChoice",
    "token_classification": "AlbertForTokenClassification",
    "question_answering": "AlbertForQuestionAnswering",
}
BIG_BIRD_CLASSES = {
    "base": "BigBirdModel",
    "pretraining": "BigBirdForPreTraining",
    "masked_lm": "BigBirdForMaskedLM",
    "sequence_classification": "BigBirdForSequenceClassification",
    "multiple_choice": "BigBirdForMultipleChoice",
    "token_classification": "BigBirdForTokenClassification",
    "question_answering": "BigBirdForQuestionAnswering",
    "causal_lm": "BigBirdForCausalLM",
}
SQUEEZEBERT_CLASSES = {
    "base": "SqueezeBertModel",
    "masked_lm": "SqueezeBertForMaskedLM",
    "sequence_classification": "SqueezeBertForSequenceClassification",
    "multiple_choice": "SqueezeBertForMultipleChoice",
    "token_classification": "SqueezeBertForTokenClassification",
    "question_answering": "SqueezeBertForQuestionAnswering",
}


def _roberta_classes(name: str) -> dict[str, str]:
    """RoBERTa's classes as XLM-RoBERTa, CamemBERT and RoBERTa-PreLayerNorm copy them under their ``name``."""
    tasks = ("SequenceClassification", "MultipleChoice", "TokenClassification", "QuestionAnswering")
    return {
        "base": f"{name}Model",
        "masked_lm": f"{name}ForMaskedLM",
        "causal_lm": f"{name}ForCausalLM",
        **{_snake(task): f"{name}For{task}" for task in tasks},
    }


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


# pad_token_id 1 (RoBERTa's): the word and position tables both have a padding row.
ROBERTA_CONFIG = {
    "vocab_size": 97,
    "hidden_size": 36,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 53,
    "max_position_embeddings": 41,
    "type_vocab_size": 3,
    "num_labels": 5,
    "pad_token_id": 1,
}
ELECTRA_CLASSES = {
    "base": "ElectraModel",
    "pretraining": "ElectraForPreTraining",
    "masked_lm": "ElectraForMaskedLM",
    "causal_lm": "ElectraForCausalLM",
    "sequence_classification": "ElectraForSequenceClassification",
    "multiple_choice": "ElectraForMultipleChoice",
    "token_classification": "ElectraForTokenClassification",
    "question_answering": "ElectraForQuestionAnswering",
}
DISTILBERT_CLASSES = {
    "base": "DistilBertModel",
    "masked_lm": "DistilBertForMaskedLM",
    "sequence_classification": "DistilBertForSequenceClassification",
    "multiple_choice": "DistilBertForMultipleChoice",
    "token_classification": "DistilBertForTokenClassification",
    "question_answering": "DistilBertForQuestionAnswering",
}
MODERNBERT_CLASSES = {
    "base": "ModernBertModel",
    "masked_lm": "ModernBertForMaskedLM",
    "sequence_classification": "ModernBertForSequenceClassification",
    "multiple_choice": "ModernBertForMultipleChoice",
    "token_classification": "ModernBertForTokenClassification",
    "question_answering": "ModernBertForQuestionAnswering",
}
MODERNBERT_BIASES = {"attention_bias": True, "mlp_bias": True, "norm_bias": True, "classifier_bias": True}
DEBERTA_CLASSES = {
    "base": "DebertaModel",
    "masked_lm": "DebertaForMaskedLM",
    "sequence_classification": "DebertaForSequenceClassification",
    "token_classification": "DebertaForTokenClassification",
    "question_answering": "DebertaForQuestionAnswering",
}
# DeBERTa v1's other parameter sets: talking heads, absolute positions, token types and a narrower embedding
# width (embed_proj); one position term; the non-legacy masked-LM head (lm_predictions.lm_head).
DEBERTA_TALKING = {"talking_head": True, "position_biased_input": True, "type_vocab_size": 2, "embedding_size": 20}
DEBERTA_V2_CLASSES = {
    "base": "DebertaV2Model",
    "masked_lm": "DebertaV2ForMaskedLM",
    "sequence_classification": "DebertaV2ForSequenceClassification",
    "multiple_choice": "DebertaV2ForMultipleChoice",
    "token_classification": "DebertaV2ForTokenClassification",
    "question_answering": "DebertaV2ForQuestionAnswering",
}
# DeBERTa-v2's other parameter sets: separate position projections, the conv layer, absolute positions, token
# types and a narrower embedding width (embed_proj).
DEBERTA_V2_UNSHARED = {
    "share_att_key": False,
    "conv_kernel_size": 3,
    "position_biased_input": True,
    "type_vocab_size": 2,
    "embedding_size": 20,
}
DECODER = {"is_decoder": True}
CROSS = {"is_decoder": True, "add_cross_attention": True}
UNTIED = {"tie_word_embeddings": False}
SINUSOIDAL = {"sinusoidal_pos_embds": True}

# Distinct sizes everywhere, so that a transposed or swapped tensor cannot keep its shape by accident. The
# untied MLMs pin the one layout difference tying makes (torch decoder.weight is its own tensor, flax gains
# <head>/decoder/kernel); the causal LMs are decoders, with and without cross-attention.
FAMILIES: dict[str, Family] = {
    # microsoft/deberta-base's layout: relative attention (c2p, p2c) over a clamped table, no absolute positions,
    # no token types; HF has no Flax DeBERTa.
    "deberta": Family(
        "DebertaConfig",
        DEBERTA_CLASSES,
        _flax(DEBERTA_CLASSES),
        {
            "vocab_size": 97,
            "hidden_size": 36,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "intermediate_size": 53,
            "max_position_embeddings": 41,
            "relative_attention": True,
            "pos_att_type": ["c2p", "p2c"],
            "max_relative_positions": 24,
            "position_biased_input": False,
            "type_vocab_size": 0,
            "num_labels": 5,
        },
        {
            **_tasks(DEBERTA_CLASSES),
            "base_talking": ("base", DEBERTA_TALKING),
            "base_p2c": ("base", {"pos_att_type": ["p2c"]}),
            "masked_lm_talking_untied": ("masked_lm", {**DEBERTA_TALKING, **UNTIED}),
            "masked_lm_non_legacy": ("masked_lm", {"legacy": False, **UNTIED}),
            "sequence_classification_talking": ("sequence_classification", DEBERTA_TALKING),
        },
    ),
    # DeBERTa-v3's layout: relative attention (c2p, p2c) with shared keys, a normalised bucketed table, no
    # absolute positions, no token types; HF has no Flax DeBERTa.
    "deberta-v2": Family(
        "DebertaV2Config",
        DEBERTA_V2_CLASSES,
        _flax(DEBERTA_V2_CLASSES),
        {
            "vocab_size": 97,
            "hidden_size": 36,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "intermediate_size": 53,
            "max_position_embeddings": 41,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_buckets": 8,
            "max_relative_positions": 24,
            "share_att_key": True,
            "norm_rel_ebd": "layer_norm",
            "position_biased_input": False,
            "type_vocab_size": 0,
            "num_labels": 5,
        },
        {
            **_tasks(DEBERTA_V2_CLASSES),
            "base_unshared": ("base", DEBERTA_V2_UNSHARED),
            "masked_lm_unshared_untied": ("masked_lm", {**DEBERTA_V2_UNSHARED, **UNTIED}),
            "sequence_classification_unshared": ("sequence_classification", DEBERTA_V2_UNSHARED),
        },
    ),
    # HF's defaults have no biases but the decoder's; the "_biases" manifests switch every one on.
    "modernbert": Family(
        "ModernBertConfig",
        MODERNBERT_CLASSES,
        _flax(MODERNBERT_CLASSES),
        {
            "vocab_size": 97,
            "hidden_size": 36,
            "num_hidden_layers": 3,
            "num_attention_heads": 3,
            "intermediate_size": 53,
            "local_attention": 8,
            "max_position_embeddings": 41,
            "pad_token_id": 0,
            "num_labels": 5,
        },
        {
            **_tasks(MODERNBERT_CLASSES),
            "base_biases": ("base", MODERNBERT_BIASES),
            "masked_lm_biases_untied": ("masked_lm", {**MODERNBERT_BIASES, **UNTIED}),
            "masked_lm_no_decoder_bias": ("masked_lm", {"decoder_bias": False}),
            "sequence_classification_biases": ("sequence_classification", MODERNBERT_BIASES),
        },
    ),
    **{
        family: Family(
            f"{name}Config",
            _roberta_classes(name),
            _flax(_roberta_classes(name)),
            ROBERTA_CONFIG,
            {
                **_tasks(_roberta_classes(name)),
                "masked_lm_untied": ("masked_lm", UNTIED),
                "causal_lm": ("causal_lm", DECODER),
                "causal_lm_cross_attention": ("causal_lm", CROSS),
            },
        )
        for family, name in (
            ("roberta", "Roberta"),
            ("xlm-roberta", "XLMRoberta"),
            ("camembert", "Camembert"),
            ("roberta-prelayernorm", "RobertaPreLayerNorm"),
        )
    },
    "bert": Family(
        "BertConfig",
        BERT_CLASSES,
        _flax(BERT_CLASSES, {"causal_lm": "FlaxBertForCausalLM"}),
        {
            "vocab_size": 101,
            "hidden_size": 24,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 40,
            "max_position_embeddings": 33,
            "type_vocab_size": 3,
            "num_labels": 5,
        },
        {
            **_tasks(BERT_CLASSES),
            "masked_lm_untied": ("masked_lm", UNTIED),
            "causal_lm": ("causal_lm", DECODER),
            "causal_lm_cross_attention": ("causal_lm", CROSS),
        },
    ),
    "albert": Family(
        "AlbertConfig",
        ALBERT_CLASSES,
        _flax(ALBERT_CLASSES),
        # 3 layers over 2 groups of 2 inner layers: HF's group index truncates 3 / 2 (layers 0, 1 -> group 0).
        {
            "vocab_size": 97,
            "embedding_size": 20,
            "hidden_size": 36,
            "num_hidden_layers": 3,
            "num_hidden_groups": 2,
            "inner_group_num": 2,
            "num_attention_heads": 3,
            "intermediate_size": 53,
            "max_position_embeddings": 41,
            "type_vocab_size": 3,
            "num_labels": 5,
        },
        {**_tasks(ALBERT_CLASSES), "masked_lm_untied": ("masked_lm", UNTIED)},
    ),
    "big_bird": Family(
        "BigBirdConfig",
        BIG_BIRD_CLASSES,
        _flax(BIG_BIRD_CLASSES),
        # HF Flax initialises block-sparse models on 12 blocks: max_position_embeddings >= 12 * block_size.
        {
            "vocab_size": 97,
            "hidden_size": 36,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 53,
            "max_position_embeddings": 67,
            "type_vocab_size": 3,
            "num_labels": 5,
            "attention_type": "block_sparse",
            "block_size": 4,
            "num_random_blocks": 1,
            "sep_token_id": 5,
        },
        {
            **_tasks(BIG_BIRD_CLASSES),
            "causal_lm": ("causal_lm", DECODER),
            "causal_lm_cross_attention": ("causal_lm", CROSS),
        },
    ),
    "squeezebert": Family(
        "SqueezeBertConfig",
        SQUEEZEBERT_CLASSES,
        _flax(SQUEEZEBERT_CLASSES),
        # HF needs embedding_size == hidden_size; every grouped conv gets its own group count, so each
        # (out, in / groups, 1) weight has its own shape.
        {
            "vocab_size": 97,
            "embedding_size": 36,
            "hidden_size": 36,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 52,
            "q_groups": 4,
            "k_groups": 2,
            "v_groups": 1,
            "post_attention_groups": 3,
            "intermediate_groups": 2,
            "output_groups": 4,
            "max_position_embeddings": 41,
            "type_vocab_size": 3,
            "num_labels": 5,
        },
        _tasks(SQUEEZEBERT_CLASSES),
    ),
    "electra": Family(
        "ElectraConfig",
        ELECTRA_CLASSES,
        _flax(ELECTRA_CLASSES),
        # embedding_size != hidden_size: the embeddings_project Linear exists (the second base manifest pins
        # that it does not when they are equal).
        {
            "vocab_size": 97,
            "embedding_size": 20,
            "hidden_size": 36,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "intermediate_size": 53,
            "max_position_embeddings": 41,
            "type_vocab_size": 3,
            "num_labels": 5,
        },
        {
            **_tasks(ELECTRA_CLASSES),
            "base_unfactorised": ("base", {"embedding_size": 36}),
            "masked_lm_untied": ("masked_lm", UNTIED),
            "causal_lm": ("causal_lm", DECODER),
            "causal_lm_cross_attention": ("causal_lm", CROSS),
        },
    ),
    "distilbert": Family(
        "DistilBertConfig",
        DISTILBERT_CLASSES,
        _flax(DISTILBERT_CLASSES),
        {
            "vocab_size": 97,
            "dim": 36,
            "n_layers": 2,
            "n_heads": 3,
            "hidden_dim": 53,
            "max_position_embeddings": 41,
            "num_labels": 5,
        },
        {
            **_tasks(DISTILBERT_CLASSES),
            "masked_lm_untied": ("masked_lm", UNTIED),
            "base_sinusoidal": ("base", SINUSOIDAL),
            "masked_lm_sinusoidal": ("masked_lm", SINUSOIDAL),
        },
    ),
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


def _tied(model: torch.nn.Module) -> dict[str, str]:
    """HF's tied aliases: state_dict keys that share storage with another key and that HF names as tied."""
    tied_names = model._tied_weights_keys or []
    groups: dict[int, list[str]] = {}
    for key, value in model.state_dict().items():
        groups.setdefault(value.data_ptr(), []).append(key)
    out = {}
    for keys in groups.values():
        if len(keys) == 1:
            continue
        aliases = [k for k in keys if any(k == t or k.endswith("." + t) for t in tied_names)]
        canonical = [k for k in keys if k not in aliases]
        assert len(canonical) == 1, f"cannot tell the tied alias among {keys}"
        out |= {alias: canonical[0] for alias in aliases}
    return dict(sorted(out.items()))


def _flax_params(name: str, config: transformers.PretrainedConfig) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HF's Flax deprecation notice
        return _flatten(getattr(transformers, name)(config, seed=0).params)


def _hf_config(family: Family, overrides: Mapping[str, Any]) -> transformers.PretrainedConfig:
    """A fresh HF config per model: HF's BigBird decoders switch their config to full attention in place."""
    return getattr(transformers, family.config_class)(**{**family.config, **overrides})


def _pooler_absent(family: Family, torch_keys: list[str], flax_keys: list[str]) -> list[list[Any]]:
    """The pooler params HF Flax leaves out of this head while HF PyTorch keeps them, in HF Flax's naming."""
    reference = family.flax_classes.get("pretraining")
    if reference is None:
        return []
    flax_class = getattr(transformers, reference)
    prefix = flax_class.base_model_prefix
    if not any(k.startswith(f"{prefix}.pooler.") for k in torch_keys):
        return []
    if any(k.startswith(f"{prefix}/pooler/") for k in flax_keys):
        return []
    full = _flax_params(reference, _hf_config(family, {}))
    return sorted([k, list(np.shape(v))] for k, v in full.items() if k.startswith(f"{prefix}/pooler/"))


def _fixed_table_absent(family: Family, flax_class: str, overrides: Mapping[str, Any]) -> list[list[Any]]:
    """A sinusoidal position table (DistilBERT's ``sinusoidal_pos_embds``): HF PyTorch keeps it as a frozen
    parameter, HF Flax computes it; these are the entries of the learned table at the same path in HF Flax."""
    if not overrides.get("sinusoidal_pos_embds"):
        return []
    learned = _flax_params(flax_class, _hf_config(family, {**overrides, "sinusoidal_pos_embds": False}))
    return sorted([k, list(np.shape(v))] for k, v in learned.items() if k.endswith("/position_embeddings/embedding"))


def manifest(family_name: str, task: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    family = FAMILIES[family_name]
    config_kwargs = {**family.config, **overrides}
    torch.manual_seed(0)
    torch_model = getattr(transformers, family.classes[task])(_hf_config(family, overrides))
    torch_entries = sorted([k, list(v.shape)] for k, v in torch_model.state_dict().items())
    flax_class = family.flax_classes[task]
    out: dict[str, Any] = {
        "family": family_name,
        "task": task,
        "hf_torch_class": family.classes[task],
        "hf_flax_class": flax_class,
        "transformers": transformers.__version__,
        "config": config_kwargs,
        "torch_tied": _tied(torch_model),
    }
    if flax_class is None:
        out["flax_absent_reason"] = (
            f"transformers {transformers.__version__} has no Flax class for {family.classes[task]}: "
            "tandem's flax tree is checked against the torch manifest through tandem's own layout instead"
        )
        out["torch"] = torch_entries
        out["flax"] = None
        return out
    flax_params = _flax_params(flax_class, _hf_config(family, overrides))
    flax_entries = sorted([k, list(np.shape(v))] for k, v in flax_params.items())
    absent = _pooler_absent(family, [k for k, _ in torch_entries], [k for k, _ in flax_entries])
    fixed = _fixed_table_absent(family, flax_class, overrides)
    if fixed:
        absent = sorted(absent + fixed)
        out["flax_pooler_absent_reason"] = (
            f"HF Flax {flax_class} computes the sinusoidal position table while HF PyTorch "
            f"{family.classes[task]} keeps it as a frozen parameter; these are the learned table's params of HF "
            f"Flax {flax_class} at the same path"
        )
    elif absent:
        out["flax_pooler_absent_reason"] = (
            f"HF Flax {flax_class} has no pooler while HF PyTorch {family.classes[task]} has one; these are "
            f"the pooler params of HF Flax {family.flax_classes['pretraining']} at the same path"
        )
    out["torch"] = torch_entries
    out["flax"] = flax_entries
    out["flax_pooler_absent"] = absent
    return out


def dumps(data: Mapping[str, Any]) -> str:
    """JSON with one (key, shape) entry per line, so a diff of a manifest reads as a list of renames."""
    lines = ["{"]
    items = list(data.items())
    for i, (name, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, list) and value and isinstance(value[0], list):
            entries = ",\n".join(f"    {json.dumps(entry)}" for entry in value)
            lines.append(f"  {json.dumps(name)}: [\n{entries}\n  ]{comma}")
        else:
            lines.append(f"  {json.dumps(name)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    written = set()
    for family_name, family in FAMILIES.items():
        for name, (task, overrides) in family.manifests.items():
            path = HERE / f"{family_name}_{name}.json"
            path.write_text(dumps(manifest(family_name, task, overrides)))
            written.add(path)
            print(f"wrote {path}")
    for stale in sorted(set(HERE.glob("*.json")) - written):
        stale.unlink()
        print(f"removed {stale}")


if __name__ == "__main__":
    main()
