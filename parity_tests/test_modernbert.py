"""ModernBERT parity: HF PyTorch checkpoint -> tandem torch, flax and nnx, every HF output, every task.

The tiny config (``REFERENCES["modernbert"]``) has three layers, global at 0 and a sliding window of two
positions each side at 1 and 2, so the batches of 9 positions reach past the window; every bias is on (the
variants turn them off, HF's default). Inputs from ``band_min_length`` (8) positions on run the banded kernel
of the window layers when no attention maps are asked for (the harness's plain call, and the long-input test
below, against HF PyTorch's full masked computation, eager and SDPA, with padding runs longer than the
window: rows whose window holds no unmasked key); with attention maps the full masked product runs.
"""

from __future__ import annotations

import copy

import harness
import jax
import numpy as np
import pytest
import torch
from harness import REFERENCES, Case

import tandem
from tandem.backends.flax import long_attention
from tandem.backends.flax import nodes as flax_nodes
from tandem.core.families.modernbert import ModernBertConfig
from tandem.tools.references import quiet

NO_BIASES = {"attention_bias": False, "mlp_bias": False, "norm_bias": False, "classifier_bias": False}
LONG = 37  # several windows (and blocks of the banded kernel), not a multiple of the block

# One case per task, the variants folded in: mean pooling, no biases, an untied decoder without a bias, the
# local theta falling back to the global one, a long input (banded kernel in the call without attention maps).
CASES: list[Case] = [
    Case("modernbert", "base", inputs_embeds=True),
    Case("modernbert", "masked_lm"),
    Case("modernbert", "masked_lm", {**NO_BIASES, "tie_word_embeddings": False, "decoder_bias": False}),
    Case("modernbert", "sequence_classification", {"classifier_pooling": "mean", "num_labels": 3}),
    Case("modernbert", "multiple_choice"),  # "cls": the first position the mask keeps
    Case("modernbert", "token_classification", {**NO_BIASES, "local_rope_theta": None, "num_labels": 5}, length=LONG),
    Case("modernbert", "question_answering"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.task}-{i}" for i, c in enumerate(CASES)])
def test_modernbert_parity(case: Case, checkpoints: harness.CheckpointCache) -> None:
    harness.run_case(case, checkpoints.load(case.family, case.task, case.config))


def test_every_registered_task_has_a_case() -> None:
    """A task added to ModernBERT fails here until the table above checks it."""
    assert set(REFERENCES["modernbert"].tasks) <= {case.task for case in CASES}


def _long_batch(loaded: harness.Loaded, length: int = 64) -> harness.Batch:
    """Rows of ``length``: full, long right padding, long left padding, a long hole, fully masked; positions
    from 3. Padding runs are longer than the window, so some rows see no unmasked key (uniform weights in the
    full computation)."""
    batch = harness.make_batch(loaded.task, loaded.config, seed=5, batch=5, length=length)
    mask = np.ones((5, length), np.int64)
    mask[1, length - 20 :] = 0
    mask[2, :23] = 0
    mask[3, 20:31] = 0
    mask[4] = 0
    ids = np.where(mask == 1, batch.inputs["input_ids"], 0)
    positions = np.tile(np.arange(3, 3 + length), (5, 1))  # given positions reach the rotary embeddings
    batch.inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    return batch


def test_banded_local_attention_matches_hf(
    checkpoints: harness.CheckpointCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long padded inputs with shifted ``position_ids`` and without attention maps (the banded kernel in every
    backend) against HF PyTorch's full masked computation, eager and SDPA: every hidden state, the logits.
    The flax global layers run their long-input path too (query chunks, from 32 positions here)."""
    monkeypatch.setattr(long_attention, "MIN_LENGTH", 32)
    monkeypatch.setattr(long_attention, "QUERY_CHUNK", 24)  # not a divisor of the length
    loaded = checkpoints.load("modernbert", "masked_lm")
    batch = _long_batch(loaded)
    ours = {
        "torch": harness.run_torch(loaded.torch, batch, output_hidden_states=True),
        "flax": harness.run_flax(loaded.flax, batch, output_hidden_states=True),
        "nnx": harness.run_flax(loaded.nnx, batch, output_hidden_states=True),
    }
    for attn in ("eager", "sdpa"):
        with quiet():
            hf = type(loaded.hf).from_pretrained(str(loaded.directory), attn_implementation=attn).eval()
        reference = harness.run_torch(hf, batch, output_hidden_states=True)
        for name, outputs in ours.items():
            harness.same_fields(f"modernbert banded {name} vs HF {attn}", outputs, reference)
            harness.compare(f"modernbert banded {name} vs HF {attn}", outputs, reference)


def test_gradients_match_hf(checkpoints: harness.CheckpointCache) -> None:
    """Masked-LM loss and every parameter's gradient: tandem torch and flax against HF PyTorch, padded rows
    and a window shorter than the batch included."""
    loaded = checkpoints.load("modernbert", "masked_lm")
    batch = harness.make_batch("masked_lm", loaded.config, seed=3, mask_patterns=(0, 1, 2, 4))
    batch.inputs.pop("token_type_ids")
    loss_t, grads_t = harness.torch_grads(loaded.torch, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(copy.deepcopy(loaded.hf), batch, list(grads_t))
    loss_f, grads_f = harness.flax_grads(loaded.flax, batch)
    assert abs(loss_t - loss_hf) <= harness.ATOL and abs(loss_f - loss_hf) <= harness.ATOL
    harness.compare_grads("modernbert torch vs HF torch grads", grads_t, grads_hf)
    harness.compare_grads("modernbert flax vs HF torch grads", grads_f, grads_hf)


def test_banded_gradients_of_rows_without_keys_match_hf(checkpoints: harness.CheckpointCache) -> None:
    """The long padded batch (banded kernel; rows whose window holds no unmasked key, whose full-computation
    weights are uniform over every key): the loss and every parameter's gradient in torch and flax against HF
    PyTorch eager autograd. Such rows give the queries and keys gradients there (softmax's derivative at
    uniform weights), which a constant mean of the values would not."""
    loaded = checkpoints.load("modernbert", "masked_lm")
    batch = _long_batch(loaded)
    with quiet():
        hf = type(loaded.hf).from_pretrained(str(loaded.directory), attn_implementation="eager")
    loss_t, grads_t = harness.torch_grads(loaded.torch, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(hf, batch, list(grads_t))
    loss_f, grads_f = harness.flax_grads(loaded.flax, batch)
    assert abs(loss_t - loss_hf) <= harness.ATOL and abs(loss_f - loss_hf) <= harness.ATOL
    harness.compare_grads("modernbert banded torch vs HF torch grads", grads_t, grads_hf)
    harness.compare_grads("modernbert banded flax vs HF torch grads", grads_f, grads_hf)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sparse_prediction", True, "sparse_prediction=True is not supported"),
        ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "rope_scaling"),
        ("hidden_activation", "gelu_bogus", "not a supported activation"),
        ("norm_eps", 0.0, "norm_eps must be positive"),
        ("local_rope_theta", -1.0, "local_rope_theta must be positive"),
        ("classifier_pooling", "max", "classifier_pooling"),
    ],
)
def test_config_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModernBertConfig(**{field: value})


def test_config_round_trips_hf_fields() -> None:
    """config.json holds HF's ModernBERT fields only (not the shared BERT names it does not have)."""
    config = ModernBertConfig(hidden_size=48, num_attention_heads=4, local_attention=16)
    data = config.to_hf_dict()
    for absent in ("hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps"):
        assert absent not in data
    assert tandem.config_from_hf(data) == config
    import transformers

    assert transformers.ModernBertConfig(**data).local_attention == 16


def test_no_head_mask() -> None:
    """HF's ModernBERT takes no head mask: a clear error, the same in every backend."""
    config = ModernBertConfig(
        vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, pad_token_id=0
    )
    ids = np.ones((1, 4), np.int64)
    for backend in ("torch", "flax"):
        model = tandem.build(config, "base", backend=backend, seed=0)
        with pytest.raises(ValueError, match="head_mask is not supported"):
            model(input_ids=ids if backend == "flax" else torch.from_numpy(ids), head_mask=np.ones(2, np.float32))


def test_gated_layer_needs_two_halves() -> None:
    """A gated feed-forward's intermediate gives input and gate: twice what its output reads."""
    graph = tandem.build_graph(ModernBertConfig(**REFERENCES["modernbert"].tiny), "base")
    layer = graph.backbone.encoder.layers[1]
    wrong = layer.intermediate.model_copy(update={"out_features": layer.intermediate.out_features - 2})
    with pytest.raises(ValueError, match="gated intermediate gives twice"):
        type(layer).model_validate({**dict(layer), "intermediate": wrong})


def _fixed_keep(shape: tuple[int, ...]) -> np.ndarray:
    """A dropout mask that depends on the shape only (about 30% dropped), so that HF PyTorch's ``F.dropout``
    and each backend's dropout can be made to draw the same one."""
    return (np.arange(int(np.prod(shape))).reshape(shape) * 7919 % 10 >= 3).astype(np.float32)


def test_mlp_dropout_sits_before_wo(checkpoints: harness.CheckpointCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF's ``Wo(drop(act(input) * gate))`` in training: the torch backend draws HF's masks from the same seed
    (same places, same shapes), and with a shape-determined mask in place of every dropout, torch, linen and
    NNX give HF's training-mode outputs. A dropout after ``Wo`` (its old place) draws (B, S, hidden) masks
    and fails both."""
    loaded = checkpoints.load("modernbert", "masked_lm", {"mlp_dropout": 0.3})
    batch = harness.make_batch("masked_lm", loaded.config, seed=6, mask_patterns=(0, 1, 2))
    batch.inputs.pop("token_type_ids")
    hf = copy.deepcopy(loaded.hf).train()
    ours = tandem.from_pretrained(loaded.directory, backend="torch").train()
    torch.manual_seed(7)
    reference = harness.run_torch(hf, batch)
    torch.manual_seed(7)
    harness.compare("modernbert mlp dropout torch vs HF (same seed)", harness.run_torch(ours, batch), reference)
    evaluated = harness.run_torch(ours.eval(), batch)
    assert not np.allclose(evaluated["logits"], reference["logits"], atol=1e-3), "no dropout was drawn"

    def torch_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        return x * torch.from_numpy(_fixed_keep(tuple(x.shape))) / (1 - p) if training and p > 0 else x

    def jax_dropout(x: jax.Array, p: float, ctx: object) -> jax.Array:
        return x if ctx.deterministic or p == 0 else x * _fixed_keep(x.shape) / (1 - p)  # type: ignore[attr-defined]

    monkeypatch.setattr(torch.nn.functional, "dropout", torch_dropout)
    monkeypatch.setattr(flax_nodes, "dropout", jax_dropout)
    jax.clear_caches()  # no train-mode program traced with the real dropout
    reference = harness.run_torch(hf, batch)
    nnx_model = tandem.from_pretrained(loaded.directory, backend="nnx")
    nnx_model.train()
    outputs = {
        "torch": harness.run_torch(ours.train(), batch),
        "flax": harness.run_flax(loaded.flax, batch, train=True, dropout_rng=jax.random.key(0)),
        "nnx": harness.run_flax(nnx_model, batch),
    }
    for name, out in outputs.items():
        harness.compare(f"modernbert mlp dropout {name} vs HF (fixed masks)", out, reference)
    jax.clear_caches()
