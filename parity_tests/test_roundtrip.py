"""Round trips: checkpoints across backends and back to HF, graph JSON, and config dicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import harness
import jax
import numpy as np
import pytest
import torch
import transformers

import tandem
from tandem.core.params import flatten_tree


def _json(data: dict[str, Any]) -> dict[str, Any]:
    """As written to config.json (label ids become strings)."""
    return json.loads(json.dumps(data))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("task", harness.TASKS)
def test_torch_flax_torch_is_bit_identical(task: str, checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """torch -> save -> flax -> save -> torch gives back every tensor bit for bit (and the flax tree too)."""
    loaded = checkpoints.get(task)
    original = _state(loaded.torch)
    tandem.save_pretrained(loaded.torch, tmp_path / "from_torch")
    flax_model = tandem.from_pretrained(tmp_path / "from_torch", backend="flax")
    tandem.save_pretrained(flax_model, tmp_path / "from_flax")
    back = tandem.from_pretrained(tmp_path / "from_flax", backend="torch")
    state = _state(back)
    assert sorted(state) == sorted(original)
    unequal = [k for k in original if not torch.equal(state[k], original[k])]
    assert not unequal, f"not bit-identical after the round trip: {unequal}"
    # The flax tree made from our own checkpoint equals the one made from HF's.
    ours = flatten_tree(jax.device_get(flax_model.params))
    theirs = flatten_tree(jax.device_get(loaded.flax.params))
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)
    # Every weight equals the HF checkpoint's own tensor.
    hf_state = loaded.hf.state_dict()
    assert sorted(hf_state) == sorted(state)
    assert all(torch.equal(state[k], hf_state[k]) for k in hf_state)


@pytest.mark.parametrize("backend", ["torch", "flax"])
@pytest.mark.parametrize("task", harness.TASKS)
def test_hf_loads_what_we_save(task: str, backend: str, checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """HF PyTorch loads our checkpoint with no missing/unexpected keys and computes the same outputs."""
    loaded = checkpoints.get(task)
    model = loaded.torch if backend == "torch" else loaded.flax
    tandem.save_pretrained(model, tmp_path)
    hf_class = harness.REFERENCES["bert"].torch_class(task)
    cls = getattr(transformers, hf_class)
    hf, info = cls.from_pretrained(tmp_path, output_loading_info=True, attn_implementation="eager")
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}, info
    assert hf.config.architectures == [hf_class]
    hf.eval()
    batch = harness.make_batch(task, loaded.config, seed=11)
    flags = {"output_hidden_states": True, "output_attentions": True}
    reference = harness.run_torch(hf, batch, **flags)
    ours = harness.run_torch(loaded.torch, batch, **flags)
    harness.same_fields("HF(our checkpoint) vs torch", ours, reference)
    harness.compare("torch vs HF torch", ours, reference)


def test_hf_flax_loads_what_we_save(checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """HF Flax reads our safetensors checkpoint too (from_pt), giving the same logits."""
    loaded = checkpoints.get("pretraining")
    tandem.save_pretrained(loaded.flax, tmp_path)
    hf_flax = harness.hf_flax_model(tmp_path, "bert", "pretraining")
    batch = harness.make_batch("pretraining", loaded.config, seed=12)
    reference = harness.run_hf_flax(hf_flax, batch)
    harness.compare("flax vs HF flax", harness.run_flax(loaded.flax, batch, with_labels=False), reference)


@pytest.mark.parametrize("task", harness.TASKS)
def test_graph_json_round_trip(task: str) -> None:
    config = tandem.BertConfig(**harness.TINY)
    graph = tandem.build_graph(config, task)
    text = graph.model_dump_json()
    again = tandem.ModelGraph.model_validate_json(text)
    assert again == graph
    assert again.model_dump_json() == text
    assert tandem.summary(again) == tandem.summary(graph)


def test_summary_names_every_parameter() -> None:
    graph = tandem.build_graph(tandem.BertConfig(**harness.TINY), "pretraining")
    text = tandem.summary(graph)
    model = tandem.build(tandem.BertConfig(**harness.TINY), task="pretraining", backend="torch")
    total = sum(p.numel() for p in model.parameters())  # tied aliases counted once
    assert f"{total:,}" in text.splitlines()[-1]
    for leaf in ("query", "key", "value", "seq_relationship", "word_embeddings", "transform"):
        assert leaf in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_labels": 5},
        {"num_labels": 1, "problem_type": "regression"},
        {"hidden_act": "gelu_new", "layer_norm_eps": 1e-7, "tie_word_embeddings": False, "classifier_dropout": 0.3},
        {"id2label": {0: "neg", 1: "neutral", 2: "pos"}, "label2id": {"neg": 0, "neutral": 1, "pos": 2}},
    ],
    ids=["defaults", "num_labels", "regression", "numerics", "id2label"],
)
def test_config_round_trips_through_hf(kwargs: dict[str, Any], tmp_path: Path) -> None:
    """HF config -> tandem -> to_hf_dict -> HF config keeps every field HF reads (num_labels via id2label)."""
    hf_config = transformers.BertConfig(**{**harness.TINY, **kwargs})
    hf_config.save_pretrained(tmp_path)
    ours = tandem.config_from_hf(tmp_path)  # the config.json HF writes (a diff against defaults)
    assert ours.num_labels == hf_config.num_labels
    again = transformers.BertConfig.from_dict(ours.to_hf_dict())
    reference, result = _json(hf_config.to_dict()), _json(again.to_dict())
    for key in ("transformers_version", "dtype", "torch_dtype"):
        reference.pop(key, None)
        result.pop(key, None)
    assert result == reference


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"num_labels": 4}, {"num_labels": 1, "hidden_act": "relu", "classifier_dropout": 0.2}],
    ids=["defaults", "num_labels", "fields"],
)
def test_config_round_trip_is_identity(kwargs: dict[str, Any]) -> None:
    """``config_from_hf(config.to_hf_dict()) == config`` for a config built in Python."""
    config = tandem.BertConfig(**kwargs)
    again = tandem.config_from_hf(config.to_hf_dict())
    assert again.num_labels == config.num_labels
    assert again == config, f"round trip changed the config:\n  {config!r}\n  {again!r}"


def test_config_defaults_are_hf_defaults() -> None:
    ours = _json(tandem.BertConfig().to_hf_dict())
    reference = _json(transformers.BertConfig().to_dict())
    shared = [k for k in ours if k in reference and k not in ("transformers_version",)]
    assert len(shared) >= 20
    assert {k: ours[k] for k in shared} == {k: reference[k] for k in shared}


def test_num_labels_from_id2label() -> None:
    data = transformers.BertConfig(**harness.TINY, num_labels=7).to_dict()
    data.pop("num_labels", None)
    assert tandem.config_from_hf(data).num_labels == 7
    assert len(tandem.BertConfig(num_labels=4).to_hf_dict()["id2label"]) == 4
