"""Loading behaviour: base <-> head checkpoints, bad checkpoints, invalid configs, unknown tasks and labels."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import harness
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import tandem
from tandem.core.params import from_flax_tree

BACKENDS = ("torch", "flax")


def _copy(loaded: harness.Loaded, tmp_path: Path) -> Path:
    target = tmp_path / "checkpoint"
    shutil.copytree(loaded.directory, target)
    return target


def _listed(message: str, keys: list[str]) -> list[str]:
    """The keys of ``keys`` that ``message`` does not name."""
    return [k for k in keys if not re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", message)]


# ------------------------------------------------------------------------------------ base <-> heads
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("task", ["sequence_classification", "masked_lm", "question_answering"])
def test_base_checkpoint_into_head_warns_with_initialised_weights(
    task: str, backend: str, checkpoints: harness.CheckpointCache
) -> None:
    base = checkpoints.get("base")
    with pytest.warns(UserWarning, match="initialised") as record:
        model = tandem.from_pretrained(base.directory, backend=backend, task=task)
    message = " ".join(str(w.message) for w in record)
    head_only = sorted(
        set(harness.make_hf_model("bert", task, perturb=0.0).state_dict())
        - {"bert." + k for k in base.hf.state_dict()}
        - {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}  # tied aliases of other params
    )
    assert head_only, "the head task should have weights the base checkpoint lacks"
    assert not _listed(message, head_only), f"warning does not name {_listed(message, head_only)}: {message}"
    # No base weight is reported as initialised, and every base weight is the checkpoint's own.
    assert not re.search(r"bert\.(embeddings|encoder)", message), message
    state = _canonical_torch_state(model)
    base_state = {k: v.numpy() for k, v in base.hf.state_dict().items()}
    for key, value in base_state.items():
        if "bert." + key in state:
            np.testing.assert_array_equal(state["bert." + key], value, err_msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("task", ["pretraining", "masked_lm"])
def test_head_checkpoint_into_base_warns_with_unused_weights(
    task: str, backend: str, checkpoints: harness.CheckpointCache
) -> None:
    head = checkpoints.get(task)
    with pytest.warns(UserWarning, match="not used") as record:
        model = tandem.from_pretrained(head.directory, backend=backend, task="base")
    message = " ".join(str(w.message) for w in record)
    unused = [k for k in head.hf.state_dict() if k.startswith("cls.") and "decoder" not in k]
    assert not _listed(message, unused), f"warning does not name {_listed(message, unused)}: {message}"
    if task == "masked_lm":  # BertForMaskedLM has no pooler: the base model initialises it
        assert "pooler.dense.weight" in message
    # The encoder is the checkpoint's: compare with HF's own BertModel loaded from the same directory.
    with harness.quiet():
        reference_model = transformers.BertModel.from_pretrained(head.directory, attn_implementation="eager").eval()
    batch = harness.make_batch("base", head.config, seed=5)
    flags = {"output_hidden_states": True, "output_attentions": True}
    reference = harness.run_torch(reference_model, batch, **flags)
    ours = harness.run_flax(model, batch, **flags) if backend == "flax" else harness.run_torch(model, batch, **flags)
    fields = [f for f in reference if f != "pooler_output" or task == "pretraining"]
    harness.compare(f"{backend} vs HF torch", ours, reference, fields=fields)


def _canonical_torch_state(model: Any) -> dict[str, np.ndarray]:
    if model.backend == "torch":
        return {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return from_flax_tree(model.graph, model.params)


# ------------------------------------------------------------------------------------ bad checkpoints
@pytest.mark.parametrize("backend", BACKENDS)
def test_unexpected_key_raises_naming_it(backend: str, checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    directory = _copy(checkpoints.get("sequence_classification"), tmp_path)
    weights = load_file(directory / "model.safetensors")
    weights["bert.encoder.layer.0.attention.self.extra.weight"] = np.zeros((3, 3), np.float32)
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(tandem.CheckpointError, match=r"bert\.encoder\.layer\.0\.attention\.self\.extra\.weight"):
        tandem.from_pretrained(directory, backend=backend)
    # strict=False loads it and reports the key instead.
    with pytest.warns(UserWarning, match=r"extra\.weight"):
        tandem.from_pretrained(directory, backend=backend, strict=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mis_shaped_tensor_raises_naming_key_and_shapes(
    backend: str, checkpoints: harness.CheckpointCache, tmp_path: Path
) -> None:
    directory = _copy(checkpoints.get("token_classification"), tmp_path)
    weights = load_file(directory / "model.safetensors")
    key = "bert.encoder.layer.1.attention.self.query.weight"
    h = harness.TINY["hidden_size"]
    weights[key] = np.zeros((h, h - 1), np.float32)
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(tandem.CheckpointError) as info:
        tandem.from_pretrained(directory, backend=backend)
    message = str(info.value)
    assert key in message
    assert f"({h}, {h})" in message and f"({h}, {h - 1})" in message, message


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_weight_raises_naming_it(backend: str, checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    directory = _copy(checkpoints.get("question_answering"), tmp_path)
    weights = load_file(directory / "model.safetensors")
    del weights["bert.encoder.layer.1.output.LayerNorm.bias"]
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(tandem.CheckpointError, match=r"bert\.encoder\.layer\.1\.output\.LayerNorm\.bias"):
        tandem.from_pretrained(directory, backend=backend)


def test_legacy_buffers_are_ignored(checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """Old HF checkpoints carry ``embeddings.position_ids``; it is a buffer, not a weight."""
    directory = _copy(checkpoints.get("masked_lm"), tmp_path)
    weights = load_file(directory / "model.safetensors")
    weights["bert.embeddings.position_ids"] = np.arange(harness.TINY["max_position_embeddings"])[None]
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    model = tandem.from_pretrained(directory, backend="torch")
    assert "bert.embeddings.position_ids" not in model.state_dict()


# ------------------------------------------------------------------------------------ config validation
H = harness.TINY


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, ["hidden_size", "num_attention_heads"]),
        ({"hidden_act": "gelu_plus"}, ["hidden_act"]),
        ({"hidden_size": 0}, ["hidden_size"]),
        ({"num_hidden_layers": 0}, ["num_hidden_layers"]),
        ({"num_attention_heads": -2}, ["num_attention_heads"]),
        ({"intermediate_size": 0}, ["intermediate_size"]),
        ({"vocab_size": 0}, ["vocab_size"]),
        ({"max_position_embeddings": 0}, ["max_position_embeddings"]),
        ({"type_vocab_size": 0}, ["type_vocab_size"]),
        ({"num_labels": 0}, ["num_labels"]),
        ({"hidden_dropout_prob": 1.0}, ["hidden_dropout_prob"]),
        ({"hidden_dropout_prob": -0.1}, ["hidden_dropout_prob"]),
        ({"attention_probs_dropout_prob": 1.5}, ["attention_probs_dropout_prob"]),
        ({"classifier_dropout": 1.0}, ["classifier_dropout"]),
        ({"layer_norm_eps": 0.0}, ["layer_norm_eps"]),
        ({"position_embedding_type": "relative_key"}, ["position_embedding_type"]),
        ({"position_embedding_type": "relative_key_query"}, ["position_embedding_type"]),
        ({"pruned_heads": {"0": [1]}}, ["pruned_heads"]),
    ],
    ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) if isinstance(v, dict) else None,
)
def test_invalid_config_names_the_field(overrides: dict[str, Any], fields: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        tandem.BertConfig(**{**H, **overrides})
    assert not _listed(str(info.value), fields), f"message does not name {fields}: {info.value}"
    # The same config.json read from HF's dict form fails the same way.
    data = {**transformers.BertConfig(**H).to_dict(), **overrides}
    with pytest.raises(ValueError) as info:
        tandem.config_from_hf(data)
    assert not _listed(str(info.value), fields), f"message does not name {fields}: {info.value}"


def test_unsupported_checkpoint_config_fails_on_load(checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    directory = _copy(checkpoints.get("base"), tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["position_embedding_type"] = "relative_key"
    (directory / "config.json").write_text(json.dumps(config))
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="position_embedding_type"):
            tandem.from_pretrained(directory, backend=backend)


def test_unknown_model_type_fails() -> None:
    with pytest.raises(ValueError, match="model_type"):
        tandem.config_from_hf({**transformers.BertConfig(**H).to_dict(), "model_type": "gpt2"})


# ------------------------------------------------------------------------------------ tasks and labels
@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_task_errors(backend: str, checkpoints: harness.CheckpointCache) -> None:
    config = tandem.BertConfig(**H)
    with pytest.raises(ValueError, match=r"'summarization'.*masked_lm"):
        tandem.build(config, task="summarization", backend=backend)
    with pytest.raises(ValueError, match="summarization"):
        tandem.from_pretrained(checkpoints.get("base").directory, backend=backend, task="summarization")
    with pytest.raises(ValueError, match="summarization"):
        tandem.build_graph(config, "summarization")


def test_unknown_backend_errors() -> None:
    with pytest.raises(ValueError, match="tensorflow"):
        tandem.build(tandem.BertConfig(**H), backend="tensorflow")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("task", "wrong"),
    [
        ("masked_lm", "label"),
        ("question_answering", "labels"),
        ("pretraining", "next_sentence_labels"),
        ("base", "labels"),
    ],
)
def test_unknown_label_kwarg_errors(task: str, wrong: str, backend: str, checkpoints: harness.CheckpointCache) -> None:
    loaded = checkpoints.get(task)
    model = loaded.torch if backend == "torch" else loaded.flax
    ids = np.ones((1, 4), np.int64)
    kwargs: dict[str, Any] = {"input_ids": torch.from_numpy(ids) if backend == "torch" else ids}
    kwargs[wrong] = kwargs["input_ids"]
    with pytest.raises(TypeError, match=re.escape(wrong)):
        model(**kwargs)
