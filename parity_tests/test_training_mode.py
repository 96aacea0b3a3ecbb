"""Training mode: dropout is active in both backends (and only there), and flax needs an explicit key."""

from __future__ import annotations

from typing import Any

import harness
import jax
import numpy as np
import pytest
import torch

import tandem

TASKS = ("pretraining", "sequence_classification", "multiple_choice")
# The parity tests' flags, so the eval forward reuses their compiled function.
FLAGS = {"output_hidden_states": True, "output_attentions": True}


def _fresh(loaded: harness.Loaded, backend: str) -> Any:
    """A separate model from the cached checkpoint, so switching modes leaves the cache alone."""
    return tandem.from_pretrained(loaded.directory, backend=backend)


def _differs(a: dict[str, np.ndarray], b: dict[str, np.ndarray], field: str) -> bool:
    return not np.allclose(a[field], b[field], rtol=0, atol=1e-6)


def _dropped_fraction(train: dict[str, np.ndarray], evaluated: dict[str, np.ndarray]) -> float:
    """The share of attention probabilities zeroed by dropout (among those that are non-zero in eval)."""
    dropped = kept = 0
    for name in (k for k in evaluated if k.startswith("attentions.")):
        live = evaluated[name] > 0
        dropped += int(np.sum(train[name][live] == 0))
        kept += int(np.sum(live))
    return dropped / kept


@pytest.mark.parametrize("task", TASKS)
def test_torch_dropout_active_in_train_mode(task: str, checkpoints: harness.CheckpointCache) -> None:
    loaded = checkpoints.get(task)
    model = _fresh(loaded, "torch")
    batch = harness.make_batch(task, loaded.config, seed=4)
    evaluated = harness.run_torch(model, batch, **FLAGS)
    model.train()
    torch.manual_seed(0)
    first = harness.run_torch(model, batch, **FLAGS)
    second = harness.run_torch(model, batch, **FLAGS)
    field = "seq_relationship_logits" if task == "pretraining" else "logits"
    assert np.isfinite(first["loss"]) and np.isfinite(second["loss"])
    assert _differs(first, evaluated, field) and _differs(first, second, field)
    # Attention dropout (p = 0.1 here) zeroes about a tenth of the probabilities.
    assert 0.05 < _dropped_fraction(first, evaluated) < 0.15
    torch.manual_seed(0)
    assert all(np.array_equal(v, first[k]) for k, v in harness.run_torch(model, batch, **FLAGS).items())
    model.eval()
    again = harness.run_torch(model, batch, **FLAGS)
    assert all(np.array_equal(again[k], evaluated[k]) for k in evaluated), "eval() is not deterministic again"


# One task: each compiles a train-mode forward, whose dropout RNG makes XLA compiles slow (~10 s on CPU).
@pytest.mark.parametrize("task", ["multiple_choice"])
def test_flax_dropout_active_in_train_mode(task: str, checkpoints: harness.CheckpointCache) -> None:
    loaded = checkpoints.get(task)
    model = loaded.flax
    batch = harness.make_batch(task, loaded.config, seed=4)
    evaluated = harness.run_flax(model, batch, **FLAGS)
    first = harness.run_flax(model, batch, train=True, dropout_rng=jax.random.key(0), **FLAGS)
    repeat = harness.run_flax(model, batch, train=True, dropout_rng=jax.random.key(0), **FLAGS)
    other = harness.run_flax(model, batch, train=True, dropout_rng=jax.random.key(1), **FLAGS)
    field = "seq_relationship_logits" if task == "pretraining" else "logits"
    assert np.isfinite(first["loss"]) and np.isfinite(other["loss"])
    assert _differs(first, evaluated, field) and _differs(first, other, field)
    assert all(np.array_equal(v, first[k]) for k, v in repeat.items()), "same dropout_rng, different outputs"
    assert 0.05 < _dropped_fraction(first, evaluated) < 0.15


def test_flax_train_without_dropout_rng_raises(checkpoints: harness.CheckpointCache) -> None:
    loaded = checkpoints.get("masked_lm")
    batch = harness.make_batch("masked_lm", loaded.config)
    with pytest.raises(ValueError, match="dropout_rng"):
        loaded.flax(**batch.numpy(), train=True)
    with pytest.raises(ValueError, match="dropout_rng"):
        loaded.flax.apply(loaded.flax.params, **batch.numpy(), train=True)
