"""bfloat16 parity: ``dtype="bfloat16"`` in both backends against the float32 torch model.

Bound: for every output tensor ``y`` (logits, loss, every hidden state, every attention map),
``max|y_bf16 - y_fp32| <= 0.08 * max(1, max|y_fp32|)``.

Why this number: bfloat16 keeps 8 significant bits, so one rounding costs up to 2**-8 = 0.0039 relative,
and activations are rounded after every matmul, LayerNorm, softmax and residual add. Measured on the
suite's tiny config (2 layers, hidden 36, 3 heads, HF init plus perturbation), over all eight BERT tasks
and both backends, the largest error is 0.035 (the base model's pooler output, torch; flax 0.016);
masked-LM logits reach 0.025 of their scale (0.132 absolute on logits of magnitude 5.3), hidden states
0.02 of theirs and attention probabilities 0.02 absolute. Torch and flax in bf16 differ from each other
by as much as either differs from fp32 (each rounds in its own order). The bound gives 2.3x headroom over
the worst case, about 20 bf16 ulps of the output scale. It holds for shallow models: the error grows
with depth and width, so deeper models need their own measurement.

The test also checks that the computation really runs in bfloat16 (outputs are bf16 and differ from fp32
by more than fp32 round-off), so a backend that silently computes in fp32 fails it.
"""

from __future__ import annotations

import harness
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tandem

BF16_BOUND = 0.08
FLAGS = {"output_hidden_states": True, "output_attentions": True}


def _scaled_errors(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    assert sorted(ours) == sorted(reference)
    return {k: harness.max_abs_diff(ours[k], v) / max(1.0, float(np.max(np.abs(v)))) for k, v in reference.items()}


# Every head kind once (LM + pooled NSP, multiple-choice reshape, span split, bare backbone with pooler):
# each flax bf16 model is one more compile. The measurements above cover all eight tasks.
@pytest.mark.parametrize("task", ["base", "pretraining", "multiple_choice", "question_answering"])
def test_bfloat16_within_bound(task: str, checkpoints: harness.CheckpointCache) -> None:
    loaded = checkpoints.get(task)
    batch = harness.make_batch(task, loaded.config, seed=0)
    reference = harness.run_torch(loaded.torch, batch, **FLAGS)
    torch_bf16 = tandem.from_pretrained(loaded.directory, backend="torch", dtype="bfloat16")
    flax_bf16 = tandem.from_pretrained(loaded.directory, backend="flax", dtype="bfloat16")

    raw_torch = torch_bf16(**batch.torch(), **FLAGS)
    raw_flax = flax_bf16(**batch.numpy(), **FLAGS)
    field = next(k for k in reference if k.endswith("logits") or k == "last_hidden_state")
    assert raw_torch[field].dtype == torch.bfloat16
    assert raw_flax[field].dtype == jnp.bfloat16
    # Flax keeps float32 params and computes in bfloat16 (HF Flax's convention).
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(flax_bf16.params))

    for name, output in (("torch", harness.flatten_outputs(raw_torch)), ("flax", harness.flatten_outputs(raw_flax))):
        errors = _scaled_errors(output, reference)
        harness.record(f"bf16 {name} vs fp32 torch (scaled)", max(errors.values()))
        bad = {k: e for k, e in errors.items() if not e <= BF16_BOUND}
        assert not bad, f"bf16 {name}: error above {BF16_BOUND} of scale: {bad}"
        assert errors[field] > 1e-4, f"bf16 {name} {field} is within fp32 round-off: not computed in bf16?"
