"""Gradient parity in eval mode (no dropout): loss and the gradient of every parameter.

Tolerance (see ``harness.GRAD_RTOL``/``GRAD_FLOOR``): for each parameter tensor,
``max|g - g_ref| <= 1e-4 * max(max|g_ref|, 1e-2 * G)`` with ``G`` the largest gradient entry of the whole
model. The error of an fp32 backward pass is relative to the magnitudes being accumulated, so each tensor
is held to its own scale; the floor only matters for gradients that cancel (the multiple-choice classifier
bias is mathematically zero) or nearly vanish (embedding rows no token uses), whose computed value is
round-off of summands of size ~G. The loss itself must agree to ``harness.ATOL``.
"""

from __future__ import annotations

from typing import Any

import harness
import numpy as np
import pytest

from tandem.core.params import param_entries

CASES: dict[str, dict[str, Any]] = {
    "pretraining": {"task": "pretraining"},
    "masked_lm": {"task": "masked_lm"},
    "masked_lm_untied": {"task": "masked_lm", "config": {"tie_word_embeddings": False, "hidden_act": "gelu_new"}},
    "next_sentence_prediction": {"task": "next_sentence_prediction"},
    "sequence_classification": {"task": "sequence_classification", "config": {"num_labels": 3}},
    "sequence_classification_regression": {"task": "sequence_classification", "config": {"num_labels": 1}},
    "sequence_classification_multi_label": {
        "task": "sequence_classification",
        "config": {"num_labels": 4},
        "problem": "multi_label_classification",
    },
    "multiple_choice": {"task": "multiple_choice"},
    "token_classification": {"task": "token_classification", "config": {"num_labels": 5}},
    "question_answering": {"task": "question_answering"},
}


# Attention-mask row patterns (see harness.make_batch): full, right-padded, left-padded, a hole; then the
# same with a fully masked row, whose softmax is uniform over finfo.min-filled scores in every framework.
PADDINGS = {"padded": (0, 1, 2, 4), "with_fully_masked_row": (0, 1, 2, 3, 4)}


def _batch(case: dict[str, Any], loaded: harness.Loaded, padding: str) -> harness.Batch:
    return harness.make_batch(
        case["task"], loaded.config, seed=3, problem=case.get("problem"), mask_patterns=PADDINGS[padding]
    )


@pytest.mark.parametrize("padding", list(PADDINGS))
@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_torch_vs_jax_gradients(case: dict[str, Any], padding: str, checkpoints: harness.CheckpointCache) -> None:
    loaded = checkpoints.get(case["task"], **case.get("config", {}))
    batch = _batch(case, loaded, padding)
    loss_t, grads_t = harness.torch_grads(loaded.torch, batch)
    loss_f, grads_f = harness.flax_grads(loaded.flax, batch)
    assert np.isfinite(loss_t)
    harness.compare("loss torch vs flax", {"loss": np.float32(loss_f)}, {"loss": np.float32(loss_t)})
    # Every parameter the graph declares gets a gradient (no parameter silently outside the loss).
    assert set(grads_t) == {e.key for e in param_entries(loaded.torch.graph)}
    harness.compare_grads("grad flax vs torch", grads_f, grads_t)
    if padding == "with_fully_masked_row":  # NNX's differentiation is nnx.grad's; one padding is enough
        loss_n, grads_n = harness.nnx_grads(loaded.nnx, batch)
        harness.compare("loss nnx vs torch", {"loss": np.float32(loss_n)}, {"loss": np.float32(loss_t)})
        harness.compare_grads("grad nnx vs torch", grads_n, grads_t)


@pytest.mark.parametrize("padding", list(PADDINGS))
@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_torch_vs_hf_torch_gradients(case: dict[str, Any], padding: str, checkpoints: harness.CheckpointCache) -> None:
    """tandem torch's backward against HF PyTorch's (eager attention) on the same checkpoint and batch."""
    loaded = checkpoints.get(case["task"], **case.get("config", {}))
    batch = _batch(case, loaded, padding)
    loss_t, grads_t = harness.torch_grads(loaded.torch, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(loaded.hf, batch, list(grads_t))
    harness.compare("loss torch vs HF torch", {"loss": np.float32(loss_t)}, {"loss": np.float32(loss_hf)})
    harness.compare_grads("grad torch vs HF torch", grads_t, grads_hf)
