"""The Flax NNX backend: every family and task against HF PyTorch, gradients, NNX's transforms, decoding.

Each HF checkpoint is the shared harness's (HF's class with its own init plus a perturbation, saved with
``save_pretrained``; the session cache shares it with the other parity files) and is loaded with
``tandem.from_pretrained(..., backend="nnx")``, once per file. Outputs are whole tensors within
``harness.ATOL`` (fp32, highest matmul precision), gradients per tensor within ``harness.GRAD_RTOL``; the
NNX params must be the linen backend's tree exactly and generated tokens torch's exactly.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from harness import REFERENCES, Case

import tandem
from tandem.core.params import flatten_tree, from_flax_tree

SPARSE = 30  # BigBird: block-sparse attention (> 28 tokens), padded to 32 and cut back
FLAGS = {"output_hidden_states": True, "output_attentions": True}
BATCH = 3
CASES = [Case(family, task) for family, reference in REFERENCES.items() for task in reference.tasks]
ROOT = Path(__file__).resolve().parents[1]
# DROPOUT_KEYS: models that run in training mode get "rbg" keys (nnx.Rngs keeps the implementation of its
# seed key): XLA:CPU compiles dropout masks from threefry keys 3-4x slower (15 s vs 4 s for one tiny BERT
# training step); the semantics under test do not depend on the generator.


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {"/".join(path): np.asarray(value) for path, value in flatten_tree(tree).items()}


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(value.detach()) if isinstance(value, torch.Tensor) else np.asarray(value)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.family}-{c.task}" for c in CASES])
def test_params_are_the_linen_tree(case: Case, checkpoints: harness.CheckpointCache) -> None:
    """An ``nnx.Module`` whose Param state is the linen backend's params tree, exactly. (Every output of every
    case is compared with HF PyTorch, linen and HF Flax by the shared harness: test_families.py and
    test_bert_parity.py.)"""
    loaded = checkpoints.load(case.family, case.task, case.config)
    model = loaded.nnx
    assert isinstance(model, nnx.Module) and model.task == case.task
    ours_params, linen_params = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))), _flat(loaded.flax.params)
    assert sorted(ours_params) == sorted(linen_params)
    assert all(np.array_equal(ours_params[k], linen_params[k]) for k in linen_params)


def test_same_numbers_as_linen(checkpoints: harness.CheckpointCache) -> None:
    """Both JAX backends run the same kernels on the same tree: equal outputs, bit for bit."""
    loaded = checkpoints.load("bert", "pretraining")
    batch = harness.case_batch(loaded, 9, BATCH)
    ours = harness.flatten_outputs(loaded.nnx(**batch.numpy(), **FLAGS))
    linen = harness.run_flax(loaded.flax, batch, **FLAGS)
    harness.compare("bert nnx vs linen", ours, linen, atol=0.0)


# A backward pass takes XLA:CPU seconds to compile even at this size: ALBERT (shared groups, whose gradients
# accumulate over every run, and a tied decoder) always, one case per other family with -m slow.
GRADIENTS = [
    ("albert", "pretraining", 9),
    pytest.param("squeezebert", "sequence_classification", 9, marks=pytest.mark.slow),  # grouped convolutions
    pytest.param("bert", "pretraining", 9, marks=pytest.mark.slow),
    pytest.param("big_bird", "question_answering", SPARSE, marks=pytest.mark.slow),  # block-sparse attention
]


@pytest.mark.parametrize(("family", "task", "length"), GRADIENTS)
def test_gradients_match_hf(family: str, task: str, length: int, checkpoints: harness.CheckpointCache) -> None:
    """``nnx.value_and_grad`` under ``nnx.jit`` against HF PyTorch autograd, per HF Flax param path."""
    loaded = checkpoints.load(family, task)
    model = loaded.nnx
    batch = harness.case_batch(loaded, length, BATCH)
    loss, grads = nnx.jit(nnx.value_and_grad(lambda m: m(**batch.numpy()).loss))(model)
    ours = from_flax_tree(model.graph, nnx.to_pure_dict(grads))
    loss_hf, grads_hf = harness.hf_torch_grads(copy.deepcopy(loaded.hf), batch, list(ours))
    harness.compare(f"{family} nnx loss vs HF torch", {"loss": np.float32(loss)}, {"loss": np.float32(loss_hf)})
    harness.compare_grads(f"{family} nnx grads vs HF torch", ours, grads_hf)


def test_shared_groups_are_counted_once(checkpoints: harness.CheckpointCache) -> None:
    """ALBERT's layer groups run twice each but are one set of Params: the state holds HF's parameter count."""
    loaded = checkpoints.load("albert", "pretraining")
    model = loaded.nnx
    state = nnx.state(model, nnx.Param)
    assert sum(x.size for x in jax.tree_util.tree_leaves(state)) == sum(p.numel() for p in loaded.hf.parameters())
    groups = state["albert"]["encoder"]["albert_layer_groups"]
    assert sorted(groups) == ["0", "1"] and all(sorted(g["albert_layers"]) == ["0", "1"] for g in groups.values())
    assert len(model.graph.backbone.encoder.schedule) == 4  # each group is referenced by two schedule steps
    # The repeats of a group run as one scan, under NNX's transforms as under jax.jit.
    ids = jnp.ones((1, 5), jnp.int32)
    program = nnx.jit(lambda m, i: m(input_ids=i).prediction_logits).lower(model, ids).as_text()
    assert program.count("stablehlo.while") == 2


def test_transforms_split_merge_and_optimizer(checkpoints: harness.CheckpointCache) -> None:
    """``nnx.jit`` equals the eager call; ``nnx.split``/``nnx.merge`` round-trips; ``nnx.Optimizer`` steps
    update every Param and lower the loss, and the trained model saves as an HF checkpoint HF PyTorch reads."""
    loaded = checkpoints.load("bert", "sequence_classification")
    model = tandem.from_pretrained(loaded.directory, backend="nnx")  # trained below: not the shared one
    batch = harness.case_batch(loaded, 9, BATCH)
    eager = model(**batch.numpy(), **FLAGS)  # the parity test's program: equal specs share compilations
    for options in ({}, {"graph_updates": False}):  # the default, and returning only changed Variables
        jitted = nnx.jit(lambda m, arrays: m(**arrays, **FLAGS), **options)(model, batch.numpy())
        harness.compare("bert nnx.jit vs eager", harness.flatten_outputs(jitted), harness.flatten_outputs(eager), 0.0)

    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, state)
    assert merged.graph == model.graph and merged.config == model.config and merged.deterministic
    merged_out = harness.flatten_outputs(merged(**batch.numpy(), **FLAGS))
    harness.compare("bert nnx merged", merged_out, harness.flatten_outputs(eager), 0.0)
    assert nnx.split(merged)[0] == graphdef  # static metadata (graph, config, dtype) hashes and compares by value
    hash(graphdef)

    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model: Any, optimizer: nnx.Optimizer, arrays: dict[str, Any]) -> jax.Array:
        loss, grads = nnx.value_and_grad(lambda m: m(**arrays).loss)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, batch.numpy())) for _ in range(3)]
    assert losses[0] == pytest.approx(float(eager.loss), abs=1e-5)
    assert losses[2] < losses[0], losses
    before, after = _flat(loaded.flax.params), _flat(model.params)
    assert all(not np.array_equal(before[k], after[k]) for k in before)  # every Param was updated
    assert int(optimizer.step[...]) == 3

    out = loaded.directory.parent / "nnx_trained"
    tandem.save_pretrained(model, out)
    hf = type(loaded.hf).from_pretrained(out, attn_implementation="eager").eval()
    trained = harness.flatten_outputs(model(**batch.numpy(), **FLAGS))
    harness.compare("bert trained nnx vs HF torch", trained, harness.run_torch(hf, batch, **FLAGS))


def test_train_and_eval_switch_dropout(checkpoints: harness.CheckpointCache) -> None:
    """``model.train()`` turns dropout on, with keys from ``model.rngs`` (seeded: equal seeds, equal draws;
    the stream advances from call to call); ``model.eval()`` turns it off again."""
    loaded = checkpoints.load("bert", "masked_lm")
    inputs = harness.case_batch(loaded, 9, BATCH).numpy(with_labels=False)
    with jax.default_prng_impl("rbg"):  # see DROPOUT_KEYS
        model = tandem.from_pretrained(loaded.directory, backend="nnx")  # put in train mode: not the shared one
    evaluated = np.asarray(model(**inputs, **FLAGS).logits)
    assert model.deterministic
    model.train()
    assert not model.deterministic
    twin = nnx.clone(model)  # the same rng stream state
    first, second = (np.asarray(model(**inputs, **FLAGS).logits) for _ in range(2))
    assert np.array_equal(first, np.asarray(twin(**inputs, **FLAGS).logits))
    assert not np.allclose(first, evaluated) and not np.allclose(first, second)
    model.eval()
    assert np.array_equal(np.asarray(model(**inputs, **FLAGS).logits), evaluated)


def test_build_gives_the_weights_of_every_backend() -> None:
    config = tandem.BertConfig(**REFERENCES["bert"].tiny)
    model = tandem.build(config, task="masked_lm", backend="nnx", seed=3)
    linen = tandem.build(config, task="masked_lm", backend="flax", seed=3)
    ours, theirs = _flat(model.params), _flat(linen.params)
    assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in theirs)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(model.params))
    with pytest.raises(ValueError, match="'torch', 'flax', 'nnx'"):
        tandem.build(config, backend="keras")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        model(input_ids=np.ones((1, 3), np.int64), label=np.ones((1, 3), np.int64))


def test_msgpack_round_trip(checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """An HF Flax msgpack written from the NNX model loads back into the same Params."""
    model = checkpoints.load("squeezebert", "masked_lm").nnx
    tandem.save_pretrained(model, tmp_path, format="msgpack")
    assert (tmp_path / "flax_model.msgpack").exists()
    again, before = _flat(tandem.from_pretrained(tmp_path, backend="nnx").params), _flat(model.params)
    assert sorted(again) == sorted(before) and all(np.array_equal(again[k], before[k]) for k in before)


@pytest.mark.parametrize("cross", [False, True], ids=["decoder", "cross_attention"])
def test_generate_and_cache_as_torch(cross: bool, checkpoints: harness.CheckpointCache) -> None:
    """Greedy and seeded-sampling tokens equal the torch backend's (both decode from their KV caches); a step
    from a torch cache converted with ``tandem.convert_cache`` equals torch's call on the whole sequence."""
    loaded = checkpoints.load("bert", "causal_lm", {"add_cross_attention": True} if cross else {})
    model = loaded.nnx
    rng = np.random.default_rng(0)
    ids = rng.integers(1, loaded.config["vocab_size"], size=(2, 5))
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # left padding
    encoder = {}
    if cross:
        states = rng.standard_normal((2, 4, loaded.config["hidden_size"])).astype(np.float32)
        encoder = {"encoder_hidden_states": states, "encoder_attention_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0]])}
    encoder_torch = {k: torch.from_numpy(v) for k, v in encoder.items()}
    for sampling in ({}, {"do_sample": True, "top_k": 20, "temperature": 0.7, "seed": 5}):
        ours = tandem.generate(model, ids, mask, max_new_tokens=6, **sampling, **encoder)
        theirs = tandem.generate(
            loaded.torch, torch.from_numpy(ids), torch.from_numpy(mask), max_new_tokens=6, **sampling, **encoder_torch
        )
        assert np.array_equal(np.asarray(ours), theirs.numpy())

    # One more token from a cache, against the torch backend's full call on the whole sequence.
    full_ids, full_mask = np.concatenate([ids, ids[:, :1]], 1), np.concatenate([mask, np.ones((2, 1), int)], 1)
    with torch.no_grad():
        full = loaded.torch(
            input_ids=torch.from_numpy(full_ids), attention_mask=torch.from_numpy(full_mask), **encoder_torch
        ).logits[:, -1]
        torch_prompt = loaded.torch(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), use_cache=True, **encoder_torch
        )
    step_inputs = {"input_ids": ids[:, :1], "attention_mask": full_mask}
    if cross:  # cached cross-attention keys and values; the encoder mask is given at every step, as in HF
        step_inputs["encoder_attention_mask"] = encoder["encoder_attention_mask"]
    cache = tandem.convert_cache(torch_prompt.past_key_values, to="flax", max_length=8)
    step = model(**step_inputs, past_key_values=cache)
    assert int(step.past_key_values.length) == ids.shape[1] + 1
    harness.compare(
        "bert nnx step from a torch cache", {"logits": np.asarray(step.logits[:, -1])}, {"logits": full.numpy()}
    )


def _doc_example(marker: str) -> str:
    """The python block of docs/nnx.md that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "nnx.md").read_text(), re.S)
    matching = [block for block in blocks if marker in block]
    assert len(matching) == 1, f"docs/nnx.md should have one python block with {marker!r}"
    return matching[0]


def test_documented_fine_tuning_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/nnx.md's optax example, as written: the loss falls and the saved checkpoint loads in HF."""
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    with jax.default_prng_impl("rbg"):  # see DROPOUT_KEYS
        exec(compile(_doc_example("nnx.Optimizer"), "docs/nnx.md", "exec"), scope)
    assert scope["losses"][-1] < scope["losses"][0], scope["losses"]
    reloaded = tandem.from_pretrained(tmp_path / "finetuned", backend="torch")
    with torch.no_grad():
        theirs = reloaded(**{k: torch.from_numpy(np.asarray(v)) for k, v in scope["batch"].items()}).logits
    harness.compare(
        "nnx fine-tuned vs its torch reload",
        {"logits": _numpy(scope["model"](**scope["batch"]).logits)},
        {"logits": theirs.numpy()},
    )
