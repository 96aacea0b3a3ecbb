"""ELECTRA parity: HF PyTorch checkpoint -> tandem torch and flax (and HF Flax), every output; gradients;
cached generation; config errors. One case table and one call per case on the shared harness."""

from __future__ import annotations

from pathlib import Path

import harness
import numpy as np
import pytest
import torch
from harness import REFERENCES, Case

import tandem
from tandem.tools.references import hf_torch_model

# HF Flax runs on one case per task. Variants: the multiple-choice summary's other pools, activation and first
# dropout (HF Flax's summary always takes the first position); behind -m slow (suite time): E == H (no
# embeddings_project) with hidden_act relu, where HF Flax's generator takes hidden_act and HF PyTorch's gelu
# (docs/families/electra.md); an untied generator; regression; the last-position summary; inputs_embeds.
SLOW = pytest.mark.slow
CASES: list = [
    *(Case("electra", task) for task in REFERENCES["electra"].tasks),
    Case(
        "electra",
        "multiple_choice",
        {"summary_type": "mean", "summary_activation": "tanh", "summary_first_dropout": 0.2},
        hf_flax=False,
    ),
    pytest.param(
        Case("electra", "pretraining", {"embedding_size": 36, "hidden_act": "relu"}, hf_flax=False), marks=SLOW
    ),
    pytest.param(
        Case("electra", "masked_lm", {"hidden_act": "relu", "tie_word_embeddings": False}, hf_flax=False), marks=SLOW
    ),
    pytest.param(
        Case("electra", "sequence_classification", {"num_labels": 1, "classifier_dropout": 0.3}, hf_flax=False),
        marks=SLOW,
    ),
    pytest.param(
        Case("electra", "multiple_choice", {"summary_type": "last", "summary_activation": None}, hf_flax=False),
        marks=SLOW,
    ),
    pytest.param(Case("electra", "base", {"embedding_size": 36}, inputs_embeds=True, hf_flax=False), marks=SLOW),
]


def _case(entry: object) -> Case:
    return entry.values[0] if hasattr(entry, "values") else entry


@pytest.mark.parametrize("case", CASES, ids=[f"{_case(c).task}-{i}" for i, c in enumerate(CASES)])
def test_parity(case: Case, checkpoints: harness.CheckpointCache) -> None:
    harness.run_case(case, checkpoints.load(case.family, case.task, case.config))


def test_every_registered_task_has_a_case() -> None:
    assert set(REFERENCES["electra"].tasks) <= {c.task for c in CASES if isinstance(c, Case)}


@pytest.mark.parametrize("task", ["pretraining", pytest.param("masked_lm", marks=SLOW)])
def test_gradients(task: str, checkpoints: harness.CheckpointCache) -> None:
    """Loss and every parameter's gradient: torch vs flax vs NNX vs HF PyTorch (the discriminator's masked BCE, the
    tied generator, the embedding projection)."""
    loaded = checkpoints.load("electra", task)
    batch = harness.case_batch(loaded)
    loss_t, grads_t = harness.torch_grads(loaded.torch, batch)
    loss_f, grads_f = harness.flax_grads(loaded.flax, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(loaded.hf, batch, list(grads_t))
    assert abs(loss_t - loss_f) <= 1e-5 * max(1.0, abs(loss_t))
    assert abs(loss_t - loss_hf) <= 1e-5 * max(1.0, abs(loss_hf))
    harness.compare_grads("electra grads flax vs torch", grads_f, grads_t)
    harness.compare_grads("electra grads torch vs HF torch", grads_t, grads_hf)
    loss_n, grads_n = harness.nnx_grads(loaded.nnx, batch)
    assert abs(loss_t - loss_n) <= 1e-5 * max(1.0, abs(loss_t))
    harness.compare_grads("electra grads nnx vs torch", grads_n, grads_t)


def test_discriminator_loss_without_mask(checkpoints: harness.CheckpointCache) -> None:
    """Without an attention mask HF averages the BCE over every position; with one, over those it keeps."""
    loaded = checkpoints.load("electra", "pretraining")
    batch = harness.case_batch(loaded)
    inputs = {k: v for k, v in batch.inputs.items() if k != "attention_mask"}
    unmasked = harness.Batch(inputs, batch.labels)
    reference = harness.run_torch(loaded.hf, unmasked)["loss"]
    for ours in (harness.run_torch(loaded.torch, unmasked)["loss"], harness.run_flax(loaded.flax, unmasked)["loss"]):
        harness.compare("electra unmasked BCE", {"loss": ours}, {"loss": reference})
    masked = harness.run_torch(loaded.hf, batch)["loss"]
    assert abs(float(masked) - float(reference)) > 1e-4  # the mask changes which positions count


def test_cached_generation_matches_hf(checkpoints: harness.CheckpointCache) -> None:
    """Greedy decoding with a KV cache gives HF PyTorch's tokens in every backend, from a left-padded batch."""
    loaded = checkpoints.load("electra", "causal_lm")
    ids = np.array([[0, 0, 5, 17, 42], [3, 9, 27, 8, 61]], np.int64)
    mask = (np.arange(5)[None, :] >= np.array([[2], [0]])).astype(np.int64)
    with torch.no_grad():
        expected = loaded.hf.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        ).numpy()
    for model in (loaded.torch, loaded.flax, loaded.nnx):
        out = tandem.generate(model, ids, attention_mask=mask, max_new_tokens=6)
        np.testing.assert_array_equal(np.asarray(out), expected)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"summary_type": "cls_index"}, "summary_type='cls_index' is not supported"),
        ({"summary_use_proj": False}, "summary_use_proj=False is not supported"),
        ({"summary_activation": "softmax"}, "summary_activation='softmax' is not supported"),
        ({"summary_proj_to_labels": True}, "summary_proj_to_labels=True is not supported"),
        ({"summary_first_dropout": 1.5}, r"summary_first_dropout must be a number in \[0, 1\)"),
        ({"summary_last_dropout": 1.0}, r"summary_last_dropout must be in \[0, 1\)"),
        ({"embedding_size": 0}, "embedding_size must be a positive integer"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key' is not supported"),
        ({"add_cross_attention": True}, "add_cross_attention=True needs is_decoder=True"),
    ],
)
def test_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tandem.ElectraConfig(**{**REFERENCES["electra"].tiny, **overrides})


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_discriminator_labels_must_be_per_token(backend: str) -> None:
    model = tandem.build(tandem.ElectraConfig(**REFERENCES["electra"].tiny), task="pretraining", backend=backend)
    with pytest.raises(ValueError, match=r"labels must have shape \(1, 3\)"):
        model(input_ids=np.array([[1, 2, 3]]), labels=np.array([[0, 1]]))


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_our_save_loads_in_hf(backend: str, tmp_path: Path, checkpoints: harness.CheckpointCache) -> None:
    """tandem's save_pretrained of a loaded model (from either backend) is a checkpoint HF PyTorch loads and
    runs to the same outputs."""
    loaded = checkpoints.load("electra", "pretraining", {})
    model = loaded.torch if backend == "torch" else loaded.flax
    tandem.save_pretrained(model, tmp_path)
    batch = harness.case_batch(loaded)
    ours = harness.run_torch(hf_torch_model(tmp_path, "electra", "pretraining"), batch)
    harness.compare("electra HF torch on our save", ours, harness.run_torch(loaded.hf, batch))
