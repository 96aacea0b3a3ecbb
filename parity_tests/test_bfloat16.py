"""Half precision: ``dtype="bfloat16"`` and ``dtype="float16"`` in every backend against the float32 torch model.

One meaning of ``dtype`` everywhere: the parameters are stored in it and the computation runs in it, with
the upcasts where HF PyTorch has them. HF's BERT code upcasts nothing itself: its LayerNorm and softmax run
torch's kernels, which accumulate a bfloat16/float16 input in float32 and round the output once, so tandem's
flax kernels compute LayerNorm and softmax in float32 and round once too. Losses follow HF's dtypes:
cross-entropy in the logits' dtype, regression and BCE in float32 (torch promotes the logits to the float32
labels).

Bound: for every output tensor ``y`` (logits, loss, every hidden state, every attention map),
``max|y_half - y_fp32| <= bound * max(1, max|y_fp32|)``, with bound 0.08 for bfloat16 and 0.01 for float16.

Why these numbers: bfloat16 keeps 8 significant bits (one rounding costs up to 2**-8 = 0.0039 relative),
float16 11 bits (2**-11 = 0.00049), and activations are rounded after every matmul, LayerNorm, softmax and
residual add. Measured on the suite's tiny config (2 layers, hidden 36, 3 heads, HF init plus
perturbation) over all eight BERT tasks, the largest scaled error is, in bfloat16, 0.035 in torch and
0.047 in flax and nnx (the base model's pooler output; masked-LM logits 0.025, hidden states 0.02), and
in float16 0.0036 in torch and 0.0030 in flax and nnx. The JAX backends in half precision differ from
torch by about as much as either differs from fp32 (each rounds its GEMMs in its own order). The bounds
give 1.7x (bfloat16) and 2.8x (float16) headroom. They hold for shallow models: the error grows with depth
and width, so deeper models need their own measurement (``docs/performance.md`` has all-MiniLM-L6-v2's).

The test also checks that the parameters are stored in the dtype and that the computation really runs in
it (outputs are in the dtype and differ from fp32 by more than fp32 round-off), so a backend that silently
keeps or computes in float32 fails it.
"""

from __future__ import annotations

import harness
import jax
import numpy as np
import pytest
import torch

import tandem

BOUNDS = {"bfloat16": 0.08, "float16": 0.01}
FLAGS = {"output_hidden_states": True, "output_attentions": True}


def _scaled_errors(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    assert sorted(ours) == sorted(reference)
    return {k: harness.max_abs_diff(ours[k], v) / max(1.0, float(np.max(np.abs(v)))) for k, v in reference.items()}


# Every head kind once (LM + pooled NSP, multiple-choice reshape, span split, bare backbone with pooler) in
# bfloat16, two in float16: each flax half-precision model is one more compile (nnx shares it). The
# measurements above cover all eight tasks.
CASES = [(task, "bfloat16") for task in ("base", "pretraining", "multiple_choice", "question_answering")] + [
    (task, "float16") for task in ("base", "pretraining")
]


@pytest.mark.parametrize(("task", "dtype"), CASES, ids=[f"{t}-{d}" for t, d in CASES])
def test_half_precision_within_bound(task: str, dtype: str, checkpoints: harness.CheckpointCache) -> None:
    loaded = checkpoints.get(task)
    batch = harness.make_batch(task, loaded.config, seed=0)
    reference = harness.run_torch(loaded.torch, batch, **FLAGS)
    field = next(k for k in reference if k.endswith("logits") or k == "last_hidden_state")
    for backend in ("torch", "flax", "nnx"):
        model = tandem.from_pretrained(loaded.directory, backend=backend, dtype=dtype)
        if backend == "torch":
            params = [p.dtype for p in model.parameters()]
            raw = model(**batch.torch(), **FLAGS)
        else:
            params = [leaf.dtype for leaf in jax.tree_util.tree_leaves(model.params)]
            raw = model(**batch.numpy(), **FLAGS)
        expected = getattr(torch, dtype) if backend == "torch" else np.dtype(getattr(jax.numpy, dtype))
        assert set(params) == {expected}, f"{backend} params {set(params)}, not {dtype}"
        assert raw[field].dtype == expected
        errors = _scaled_errors(harness.flatten_outputs(raw), reference)
        harness.record(f"{dtype} {backend} vs fp32 torch (scaled)", max(errors.values()))
        bad = {k: e for k, e in errors.items() if not e <= BOUNDS[dtype]}
        assert not bad, f"{dtype} {backend}: error above {BOUNDS[dtype]} of scale: {bad}"
        assert errors[field] > 1e-5, f"{dtype} {backend} {field} is within fp32 round-off: not computed in {dtype}?"
