"""DistilBERT parity: HF PyTorch checkpoint -> tandem torch and flax (and HF Flax), every output; gradients;
the sinusoidal position table; HF's config names. One case table and one call per case on the shared harness."""

from __future__ import annotations

from pathlib import Path

import harness
import numpy as np
import pytest
from harness import REFERENCES, Case

import tandem
from tandem.core.params import param_entries, sinusoidal_table
from tandem.tools.references import hf_torch_model

SINUSOIDAL = {"sinusoidal_pos_embds": True}

# HF Flax runs on one case per task. The sinusoidal table: HF Flax recomputes it while HF PyTorch reads the
# checkpoint's (perturbed, as every parameter of these checkpoints) values, so only HF PyTorch is the reference
# there. Behind -m slow (suite time): an untied relu LM head, regression, inputs_embeds.
SLOW = pytest.mark.slow
CASES: list = [
    *(Case("distilbert", task) for task in REFERENCES["distilbert"].tasks),
    Case("distilbert", "masked_lm", SINUSOIDAL, hf_flax=False),
    pytest.param(
        Case("distilbert", "masked_lm", {"tie_word_embeddings": False, "activation": "relu"}, hf_flax=False),
        marks=SLOW,
    ),
    pytest.param(Case("distilbert", "sequence_classification", {"num_labels": 1}, hf_flax=False), marks=SLOW),
    pytest.param(Case("distilbert", "base", SINUSOIDAL, inputs_embeds=True, hf_flax=False), marks=SLOW),
]


def _case(entry: object) -> Case:
    return entry.values[0] if hasattr(entry, "values") else entry


@pytest.mark.parametrize("case", CASES, ids=[f"{_case(c).task}-{i}" for i, c in enumerate(CASES)])
def test_parity(case: Case, checkpoints: harness.CheckpointCache) -> None:
    harness.run_case(case, checkpoints.load(case.family, case.task, case.config))


def test_every_registered_task_has_a_case() -> None:
    assert set(REFERENCES["distilbert"].tasks) <= {c.task for c in CASES if isinstance(c, Case)}


@pytest.mark.parametrize("overrides", [pytest.param({}, marks=SLOW), SINUSOIDAL], ids=["learned", "sinusoidal"])
def test_gradients(overrides: dict, checkpoints: harness.CheckpointCache) -> None:
    """Loss and every gradient: torch vs flax vs NNX vs HF PyTorch. A sinusoidal table gets none (HF freezes it)."""
    loaded = checkpoints.load("distilbert", "masked_lm", overrides)
    batch = harness.case_batch(loaded)
    loss_t, grads_t = harness.torch_grads(loaded.torch, batch)
    loss_f, grads_f = harness.flax_grads(loaded.flax, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(loaded.hf, batch, list(grads_t))
    assert abs(loss_t - loss_f) <= 1e-5 * max(1.0, abs(loss_t))
    assert abs(loss_t - loss_hf) <= 1e-5 * max(1.0, abs(loss_hf))
    harness.compare_grads("distilbert grads flax vs torch", grads_f, grads_t)
    harness.compare_grads("distilbert grads torch vs HF torch", grads_t, grads_hf)
    loss_n, grads_n = harness.nnx_grads(loaded.nnx, batch)
    assert abs(loss_t - loss_n) <= 1e-5 * max(1.0, abs(loss_t))
    harness.compare_grads("distilbert grads nnx vs torch", grads_n, grads_t)
    table = "distilbert.embeddings.position_embeddings.weight"
    assert all(not np.any(grads[table]) for grads in (grads_t, grads_f, grads_n)) == bool(overrides)


def test_sinusoidal_table_is_hf_and_a_parameter() -> None:
    """The table is HF's values exactly, initialised so by tandem, saved as a parameter (HF PyTorch keeps it
    in its checkpoints), and absent from the HF Flax tree only as the graph declares."""
    config = tandem.DistilBertConfig(**REFERENCES["distilbert"].tiny, **SINUSOIDAL)
    hf = harness.make_hf_model("distilbert", "base", SINUSOIDAL, perturb=0.0)
    table = hf.embeddings.position_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(table, sinusoidal_table(config.max_position_embeddings, config.hidden_size))
    model = tandem.build(config, task="base", backend="torch")
    np.testing.assert_array_equal(model.state_dict()["embeddings.position_embeddings.weight"].numpy(), table)
    graph = tandem.build_graph(config, "masked_lm")
    assert graph.flax_absent == ("distilbert.embeddings.position_embeddings",)
    learned = tandem.build_graph(tandem.DistilBertConfig(**REFERENCES["distilbert"].tiny), "masked_lm")
    assert learned.flax_absent == ()
    assert [e.key for e in param_entries(graph)] == [e.key for e in param_entries(learned)]


def test_config_takes_hf_names() -> None:
    """HF's names in and out (``dim``, ``n_layers``...), the shared names as aliases, no token types."""
    config = tandem.DistilBertConfig(dim=24, n_layers=3, n_heads=4, hidden_dim=40, dropout=0.2, activation="relu")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (24, 3, 4)
    assert (config.intermediate_size, config.hidden_dropout_prob, config.hidden_act) == (40, 0.2, "relu")
    written = config.to_hf_dict()
    assert {"dim", "n_layers", "n_heads", "hidden_dim", "dropout", "activation"} <= set(written)
    assert not {"hidden_size", "type_vocab_size", "layer_norm_eps"} & set(written)
    assert tandem.config_from_hf(written) == config
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        tandem.DistilBertConfig(dim=24, n_heads=5)
    with pytest.raises(ValueError, match=r"seq_classif_dropout must be in \[0, 1\)"):
        tandem.DistilBertConfig(seq_classif_dropout=1.0)
    with pytest.raises(ValueError, match="question_answering needs num_labels == 2"):
        tandem.build_graph(tandem.DistilBertConfig(num_labels=3), "question_answering")


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_our_save_loads_in_hf(backend: str, tmp_path: Path, checkpoints: harness.CheckpointCache) -> None:
    """tandem's save_pretrained of a loaded model (from either backend) is a checkpoint HF PyTorch loads and
    runs to the same outputs."""
    loaded = checkpoints.load("distilbert", "masked_lm", SINUSOIDAL)
    model = loaded.torch if backend == "torch" else loaded.flax
    tandem.save_pretrained(model, tmp_path)
    batch = harness.case_batch(loaded)
    ours = harness.run_torch(hf_torch_model(tmp_path, "distilbert", "masked_lm"), batch)
    harness.compare("distilbert HF torch on our save", ours, harness.run_torch(loaded.hf, batch))
