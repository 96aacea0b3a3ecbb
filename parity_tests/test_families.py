"""ALBERT, SqueezeBERT and BigBird parity: HF PyTorch checkpoint -> tandem torch and flax, every HF output.

One case table and one call per case on the shared harness (:mod:`tandem.tools.harness`), whose reference
table holds each family's tiny config. Each HF model is made by HF itself (its own init under a fixed seed,
every parameter then perturbed so that no bias or norm sits at its trivial init value), saved with
``save_pretrained`` and loaded with :func:`tandem.from_pretrained`; HF Flax runs on the same checkpoint
wherever HF has the class and it can agree with HF PyTorch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import harness
import jax
import numpy as np
import pytest
import torch
from harness import REFERENCES, Case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tandem
from tandem.backends.flax import basics as flax_basics

SPARSE = 30  # BigBird: > (5 + 2 * 1) * 4 tokens run block-sparse attention, padded to 32 (then cut back)
# HF Flax BigBird raises on lengths that are not a multiple of the block size, runs a degenerate block-sparse
# attention on short inputs and returns no attention maps in block-sparse mode (docs/families/big_bird.md).
NO_SPARSE_MAPS = ("attentions",)

# HF Flax is left out of the variants after the one case per task only to save its compile per shape.
CASES: list[Case] = [
    *(Case("albert", task) for task in REFERENCES["albert"].tasks),
    # layers not divisible by groups, one inner layer, E == H, gelu
    Case(
        "albert",
        "sequence_classification",
        {
            "num_hidden_layers": 5,
            "num_hidden_groups": 3,
            "inner_group_num": 1,
            "embedding_size": 36,
            "hidden_act": "gelu",
            "num_labels": 3,
        },
        hf_flax=False,
    ),
    Case("albert", "masked_lm", {"tie_word_embeddings": False}, hf_flax=False),
    *(Case("squeezebert", task) for task in REFERENCES["squeezebert"].tasks),
    Case("squeezebert", "token_classification", {"q_groups": 1, "k_groups": 8, "output_groups": 1, "num_labels": 3}),
    # The decoder runs full causal attention (the family's task config): HF Flax takes any length there.
    *(Case("big_bird", task, length=SPARSE, hf_flax=task == "causal_lm") for task in REFERENCES["big_bird"].tasks),
    Case("big_bird", "pretraining", length=32, hf_flax_lacks=NO_SPARSE_MAPS),  # HF Flax in block-sparse mode
    Case("big_bird", "masked_lm", length=12, hf_flax=False),  # short: dense attention for this call
    Case("big_bird", "question_answering", {"block_size": 2, "num_random_blocks": 2}, length=29, hf_flax=False),
    # HF Flax's full attention always has a Q/K/V bias
    Case(
        "big_bird",
        "sequence_classification",
        {"attention_type": "original_full", "use_bias": False},
        length=SPARSE,
        hf_flax=False,
    ),
    Case("big_bird", "base", {"rescale_embeddings": True, "hidden_act": "relu"}, length=33, hf_flax=False),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.family}-{c.task}-{i}" for i, c in enumerate(CASES)])
def test_family_parity(case: Case, checkpoints: harness.CheckpointCache) -> None:
    harness.run_case(case, checkpoints.load(case.family, case.task, case.config))


def test_every_registered_task_has_a_case() -> None:
    """A task added to one of these families fails here until the table above checks it."""
    families = ("albert", "squeezebert", "big_bird")
    registered = {(family, task) for family in families for task in REFERENCES[family].tasks}
    assert registered <= {(case.family, case.task) for case in CASES}


@pytest.mark.parametrize(
    ("family", "task", "length"),
    [
        ("albert", "pretraining", 9),  # shared groups: gradients accumulate over every use
        ("squeezebert", "sequence_classification", 9),
        ("big_bird", "masked_lm", SPARSE),  # block-sparse
        ("big_bird", "question_answering", SPARSE),
    ],
)
def test_family_gradients(family: str, task: str, length: int, checkpoints: harness.CheckpointCache) -> None:
    """Loss and the gradient of every parameter agree between backends and with HF PyTorch."""
    loaded = checkpoints.load(family, task)
    batch = harness.case_batch(loaded, length)
    loss_t, grads_t = harness.torch_grads(loaded.torch, batch)
    loss_f, grads_f = harness.flax_grads(loaded.flax, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(loaded.hf, batch, list(grads_t))
    assert abs(loss_t - loss_f) <= 1e-5 * max(1.0, abs(loss_t))
    assert abs(loss_t - loss_hf) <= 1e-5 * max(1.0, abs(loss_hf))
    harness.compare_grads(f"{family} grads flax vs torch", grads_f, grads_t)
    harness.compare_grads(f"{family} grads torch vs HF torch", grads_t, grads_hf)


def test_albert_shares_parameters_by_identity() -> None:
    config = tandem.AlbertConfig(**REFERENCES["albert"].tiny)
    model = tandem.build(config, task="base", backend="torch")
    flax_model = tandem.build(config, task="base", backend="flax")
    groups = config.num_hidden_groups * config.inner_group_num
    layer_keys = {
        re.search(r"albert_layer_groups\.\d+\.albert_layers\.\d+", k)[0]
        for k in model.state_dict()
        if ".albert_layers." in k
    }
    assert len(layer_keys) == groups  # 2 groups x 2 inner layers, not 4 layers x 2
    assert sorted(flax_model.params["encoder"]["albert_layer_groups"]) == ["0", "1"]


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layers=st.integers(1, 4),
    groups=st.integers(1, 3),
    inner=st.integers(1, 2),
    embedding=st.sampled_from([8, 12, 36]),
    length=st.integers(3, 10),
)
def test_albert_structures(
    layers: int, groups: int, inner: int, embedding: int, length: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Layer/group/inner-group combinations (incl. layers not divisible by groups) match HF PyTorch."""
    groups = min(groups, layers)
    inner = min(inner, max(1, layers // groups))  # HF PyTorch indexes past its head-mask list otherwise
    overrides = {
        "num_hidden_layers": layers,
        "num_hidden_groups": groups,
        "inner_group_num": inner,
        "embedding_size": embedding,
    }
    loaded = harness.load(tmp_path_factory.mktemp("albert"), "albert", "masked_lm", overrides)
    harness.check_parity(loaded, harness.case_batch(loaded, length), hf_flax=False)


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    q=st.sampled_from([1, 2, 4]),
    k=st.sampled_from([1, 4, 8]),
    pa=st.sampled_from([1, 2]),
    inter=st.sampled_from([1, 4]),
    out=st.sampled_from([1, 2, 8]),
    heads=st.sampled_from([2, 4]),
)
def test_squeezebert_groups(
    q: int, k: int, pa: int, inter: int, out: int, heads: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    overrides = {
        "q_groups": q,
        "k_groups": k,
        "post_attention_groups": pa,
        "intermediate_groups": inter,
        "output_groups": out,
        "num_attention_heads": heads,
    }
    loaded = harness.load(tmp_path_factory.mktemp("sq"), "squeezebert", "base", overrides)
    harness.check_parity(loaded, harness.case_batch(loaded, 7))


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.sampled_from([2, 3, 4]), random_blocks=st.integers(1, 2), extra=st.integers(-6, 9))
def test_big_bird_block_sizes(
    block: int, random_blocks: int, extra: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Block sizes, random-block counts and lengths around the dense/sparse threshold (multiples of the
    block size and not) match HF PyTorch."""
    length = max(2, (5 + 2 * random_blocks) * block + extra)
    overrides = {"block_size": block, "num_random_blocks": random_blocks}
    loaded = harness.load(tmp_path_factory.mktemp("bb"), "big_bird", "base", overrides)
    harness.check_parity(loaded, harness.case_batch(loaded, length), hf_flax=False)


def test_big_bird_train_mode_same_seed_same_blocks(tmp_path: Path) -> None:
    """In training, random blocks come from ``block_sparse_seed``: the same seed gives the same blocks (hence
    the same outputs, with dropout off) in both backends; another seed gives other blocks."""
    overrides = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "num_random_blocks": 2}
    loaded = harness.load(tmp_path, "big_bird", "base", overrides)
    ours_torch, ours_flax = loaded.torch, loaded.flax
    batch = harness.case_batch(loaded, 44)
    ours_torch.train()
    key = jax.random.key(0)
    outputs = {}
    for seed in (3, 4):
        got_torch = harness.run_torch(ours_torch, batch, block_sparse_seed=seed)
        got_flax = harness.flatten_outputs(
            ours_flax(**batch.numpy(), train=True, dropout_rng=key, block_sparse_seed=seed)
        )
        harness.compare("big_bird train torch vs flax", got_torch, got_flax)
        outputs[seed] = got_torch["last_hidden_state"]
    eval_out = harness.run_flax(ours_flax, batch)["last_hidden_state"]
    assert np.abs(outputs[3] - outputs[4]).max() > 1e-3  # other blocks, other outputs
    assert np.abs(outputs[3] - eval_out).max() > 1e-3  # training blocks are not the eval plan


@pytest.mark.parametrize("task", ["base", "question_answering"])
def test_big_bird_inputs_embeds_and_positions_are_padded_as_hf(task: str, checkpoints: harness.CheckpointCache) -> None:
    """Length 30 pads to 32: given ``inputs_embeds`` are padded with the embedding-module output of pad ids
    (embedded twice, HF PyTorch's quirk) and given ``position_ids`` with ``pad_token_id``; question
    lengths given explicitly (there are no ids to find the separator in)."""
    loaded = checkpoints.load("big_bird", task)
    batch = harness.case_batch(loaded, SPARSE)
    ids = batch.inputs.pop("input_ids")
    with torch.no_grad():
        batch.inputs["inputs_embeds"] = loaded.hf.get_input_embeddings()(torch.from_numpy(ids)).numpy()
    batch.inputs["position_ids"] = np.broadcast_to(np.arange(1, SPARSE + 1), ids.shape).copy()
    if task == "question_answering":
        batch.inputs["question_lengths"] = np.array([[4], [7], [4], [4]])
    harness.check_parity(loaded, batch, hf_flax=False)


@pytest.mark.parametrize(("task", "length"), [("masked_lm", 12), ("question_answering", 30)])
def test_flax_feed_forward_in_row_chunks(
    task: str, length: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long inputs run the flax feed-forward in row chunks (the last one padded): the outputs still match
    HF PyTorch. Tiny chunks make these small batches take that path (e.g. 4 x 32 rows of 37 features: 19
    chunks of 7 rows, the last one padded). A fresh load: the cached flax models were traced unchunked."""
    monkeypatch.setattr(flax_basics, "ROW_CHUNK_BYTES", 1024)
    loaded = harness.load(tmp_path, "big_bird", task)
    batch = harness.case_batch(loaded, length)
    if length < 20:  # dense attention: the only loop in the program is the chunked feed-forward's
        ids = jax.numpy.asarray(batch.inputs["input_ids"])
        flax_model = loaded.flax
        assert "scan" in str(jax.make_jaxpr(lambda p: flax_model.apply(p, input_ids=ids).logits)(flax_model.params))
    harness.check_parity(loaded, batch, hf_flax=False)


def test_squeezebert_rejects_head_mask(checkpoints: harness.CheckpointCache) -> None:
    loaded = checkpoints.load("squeezebert", "base")
    batch = harness.case_batch(loaded, 7)
    with pytest.raises(ValueError, match="head_mask is not supported"):
        loaded.torch(**batch.torch(), head_mask=torch.ones(4))
    with pytest.raises(ValueError, match="head_mask is not supported"):
        loaded.flax(**batch.numpy(), head_mask=np.ones(4, np.float32))


@pytest.mark.parametrize(
    ("config_class", "kwargs", "message"),
    [
        ("SqueezeBertConfig", {"embedding_size": 64, "hidden_size": 32, "num_attention_heads": 4}, "embedding_size"),
        (
            "SqueezeBertConfig",
            {"hidden_size": 32, "embedding_size": 32, "num_attention_heads": 4, "q_groups": 3},
            "q_groups",
        ),
        ("AlbertConfig", {"num_hidden_layers": 2, "num_hidden_groups": 3}, "num_hidden_groups"),
        ("AlbertConfig", {"embedding_size": 0}, "embedding_size"),
        ("AlbertConfig", {"classifier_dropout_prob": 1.5}, "classifier_dropout_prob"),
        ("BigBirdConfig", {"block_size": 0}, "block_size"),
        ("BigBirdConfig", {"attention_type": "sparse"}, "attention_type"),
    ],
)
def test_family_config_validation(config_class: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        getattr(tandem, config_class)(**kwargs)
