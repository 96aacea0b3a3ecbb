"""ALBERT, SqueezeBERT and BigBird parity: HF PyTorch checkpoint -> tandem torch and flax, every HF output.

One case table per family and one call per case, on the shared harness' batches and comparisons. Each HF
model is made by HF itself (its own init under a fixed seed, every parameter then perturbed so that no bias
or norm sits at its trivial init value), saved with ``save_pretrained`` and loaded with
:func:`tandem.from_pretrained`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import jax
import numpy as np
import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tandem
from tandem.backends.flax import nodes as flax_nodes


@dataclass(frozen=True)
class Family:
    config_class: str
    classes: dict[str, str]
    tiny: dict[str, Any]


FAMILIES: dict[str, Family] = {
    "albert": Family(
        "AlbertConfig",
        {
            "base": "AlbertModel",
            "pretraining": "AlbertForPreTraining",
            "masked_lm": "AlbertForMaskedLM",
            "sequence_classification": "AlbertForSequenceClassification",
            "multiple_choice": "AlbertForMultipleChoice",
            "token_classification": "AlbertForTokenClassification",
            "question_answering": "AlbertForQuestionAnswering",
        },
        {
            "vocab_size": 91,
            "embedding_size": 20,
            "hidden_size": 36,
            "num_attention_heads": 3,
            "intermediate_size": 47,
            "num_hidden_layers": 4,
            "num_hidden_groups": 2,
            "inner_group_num": 2,
            "max_position_embeddings": 40,
            "initializer_range": 0.2,
        },
    ),
    "squeezebert": Family(
        "SqueezeBertConfig",
        {
            "base": "SqueezeBertModel",
            "masked_lm": "SqueezeBertForMaskedLM",
            "sequence_classification": "SqueezeBertForSequenceClassification",
            "multiple_choice": "SqueezeBertForMultipleChoice",
            "token_classification": "SqueezeBertForTokenClassification",
            "question_answering": "SqueezeBertForQuestionAnswering",
        },
        {
            "vocab_size": 91,
            "embedding_size": 32,
            "hidden_size": 32,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "q_groups": 4,
            "k_groups": 2,
            "v_groups": 1,
            "post_attention_groups": 2,
            "intermediate_groups": 4,
            "output_groups": 8,
            "layer_norm_eps": 1e-5,  # the encoder norms must still use 1e-12 (HF's quirk)
            "max_position_embeddings": 40,
            "initializer_range": 0.2,
        },
    ),
    "big_bird": Family(
        "BigBirdConfig",
        {
            "base": "BigBirdModel",
            "pretraining": "BigBirdForPreTraining",
            "masked_lm": "BigBirdForMaskedLM",
            "sequence_classification": "BigBirdForSequenceClassification",
            "multiple_choice": "BigBirdForMultipleChoice",
            "token_classification": "BigBirdForTokenClassification",
            "question_answering": "BigBirdForQuestionAnswering",
        },
        {
            "vocab_size": 91,
            "hidden_size": 32,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "block_size": 4,
            "num_random_blocks": 1,
            "max_position_embeddings": 64,
            "sep_token_id": 5,
            "initializer_range": 0.2,
        },
    ),
}


def make_hf(family: str, task: str, seed: int = 0, perturb: float = 0.05, **overrides: Any) -> torch.nn.Module:
    spec = FAMILIES[family]
    config = getattr(transformers, spec.config_class)(**{**spec.tiny, **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    with harness.quiet():
        model = getattr(transformers, spec.classes[task])(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(perturb * torch.randn(param.shape, generator=generator))
    return model.eval()


def load(family: str, task: str, directory: Path, **overrides: Any) -> tuple[torch.nn.Module, Any, Any]:
    """HF model (a fresh copy per call: HF BigBird mutates itself on short inputs), tandem torch, flax."""
    hf = make_hf(family, task, **overrides)
    hf.save_pretrained(directory, safe_serialization=True)
    with harness.quiet():
        ours_torch = tandem.from_pretrained(directory, backend="torch")
        ours_flax = tandem.from_pretrained(directory, backend="flax")
    assert ours_torch.task == task and ours_flax.task == task
    return hf, ours_torch, ours_flax


def batch_for(family: str, task: str, length: int, seed: int = 0, **overrides: Any) -> harness.Batch:
    config = {**FAMILIES[family].tiny, **overrides}
    # BigBird's block-sparse scores of a fully masked row sit at -10000, where float32 steps are ~1e-3: its
    # (unused, zero-context) attention map is rounding noise in any implementation, so it is left out.
    patterns = (0, 1, 2, 4) if family == "big_bird" else None
    batch = harness.make_batch(task, config, seed=seed, batch=4, length=length, mask_patterns=patterns)
    if family == "albert" and task == "pretraining":  # ALBERT's second label is the sentence order
        batch.labels["sentence_order_label"] = batch.labels.pop("next_sentence_label")
    if family == "big_bird" and task == "question_answering":
        ids = batch.inputs["input_ids"]
        ids[:, 3] = config["sep_token_id"]  # question = first 4 tokens (the -1e6 logits mask)
        ids[1, 3] = 7  # row 1 has its first separator later
        ids[1, 6] = config["sep_token_id"]
        del batch.inputs["token_type_ids"]  # token types then come from the question mask
    return batch


def check_parity(hf: torch.nn.Module, ours_torch: Any, ours_flax: Any, batch: harness.Batch) -> None:
    flags = {"output_hidden_states": True, "output_attentions": True}
    reference = harness.run_torch(hf, batch, **flags)
    got_torch = harness.run_torch(ours_torch, batch, **flags)
    got_flax = harness.run_flax(ours_flax, batch, **flags)
    harness.same_fields("family torch vs HF torch", got_torch, reference)
    harness.same_fields("family flax vs HF torch", got_flax, reference)
    harness.compare("family torch vs HF torch", got_torch, reference)
    harness.compare("family flax vs HF torch", got_flax, reference)
    harness.compare("family torch vs flax", got_torch, got_flax)
    plain = harness.run_torch(ours_torch, batch)
    harness.compare("family torch vs HF torch", plain, harness.run_torch(hf, batch))


# family, task, HF config overrides, sequence length
CASES: list[tuple[str, str, dict[str, Any], int]] = [
    *((("albert", task, {}, 9)) for task in FAMILIES["albert"].classes),
    # layers not divisible by groups, one inner layer, E == H, gelu
    (
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
        9,
    ),
    ("albert", "masked_lm", {"tie_word_embeddings": False}, 9),
    *((("squeezebert", task, {}, 9)) for task in FAMILIES["squeezebert"].classes),
    ("squeezebert", "token_classification", {"q_groups": 1, "k_groups": 8, "output_groups": 1, "num_labels": 3}, 9),
    # block-sparse: length 30 > (5 + 2) * 4 runs sparse, padded to 32
    *((("big_bird", task, {}, 30)) for task in FAMILIES["big_bird"].classes),
    ("big_bird", "masked_lm", {}, 12),  # short: dense attention for this call
    ("big_bird", "question_answering", {"block_size": 2, "num_random_blocks": 2}, 29),
    ("big_bird", "sequence_classification", {"attention_type": "original_full", "use_bias": False}, 30),
    ("big_bird", "base", {"rescale_embeddings": True, "hidden_act": "relu"}, 33),
]


@pytest.mark.parametrize(
    ("family", "task", "overrides", "length"), CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)]
)
def test_family_parity(family: str, task: str, overrides: dict[str, Any], length: int, tmp_path: Path) -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf, ours_torch, ours_flax = load(family, task, tmp_path, **overrides)
    check_parity(hf, ours_torch, ours_flax, batch_for(family, task, length, **overrides))


@pytest.mark.parametrize("task", ["base", "masked_lm", "question_answering"])
def test_albert_matches_hf_flax(task: str, tmp_path: Path) -> None:
    """HF Flax ALBERT agrees with HF PyTorch in eval mode: tandem flax and torch match it too."""
    _, ours_torch, ours_flax = load("albert", task, tmp_path)
    cls = getattr(transformers, "Flax" + FAMILIES["albert"].classes[task])
    with harness.quiet():
        hf_flax = cls.from_pretrained(tmp_path, from_pt=True)
    batch = batch_for("albert", task, 9)
    flags = {"output_hidden_states": True, "output_attentions": True}
    reference = harness.run_hf_flax(hf_flax, batch, **flags)
    harness.compare("family torch vs HF flax", harness.run_torch(ours_torch, batch, **flags), reference)
    harness.compare("family flax vs HF flax", harness.run_flax(ours_flax, batch, **flags), reference)


@pytest.mark.parametrize(
    ("family", "task", "overrides", "length"),
    [
        ("albert", "pretraining", {}, 9),  # shared groups: gradients accumulate over every use
        ("squeezebert", "sequence_classification", {}, 9),
        ("big_bird", "masked_lm", {}, 30),  # block-sparse
        ("big_bird", "question_answering", {}, 30),
    ],
)
def test_family_gradients(family: str, task: str, overrides: dict[str, Any], length: int, tmp_path: Path) -> None:
    """Loss and the gradient of every parameter agree between backends and with HF PyTorch."""
    hf, ours_torch, ours_flax = load(family, task, tmp_path, **overrides)
    batch = batch_for(family, task, length, **overrides)
    loss_t, grads_t = harness.torch_grads(ours_torch, batch)
    loss_f, grads_f = harness.flax_grads(ours_flax, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(hf, batch, list(grads_t))
    assert abs(loss_t - loss_f) <= 1e-5 * max(1.0, abs(loss_t))
    assert abs(loss_t - loss_hf) <= 1e-5 * max(1.0, abs(loss_hf))
    harness.compare_grads("family grads flax vs torch", grads_f, grads_t)
    harness.compare_grads("family grads torch vs HF torch", grads_t, grads_hf)


def test_albert_shares_parameters_by_identity() -> None:
    config = tandem.AlbertConfig(**FAMILIES["albert"].tiny)
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
    hf, ours_torch, ours_flax = load("albert", "masked_lm", tmp_path_factory.mktemp("albert"), **overrides)
    check_parity(hf, ours_torch, ours_flax, batch_for("albert", "masked_lm", length, **overrides))


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
    hf, ours_torch, ours_flax = load("squeezebert", "base", tmp_path_factory.mktemp("sq"), **overrides)
    check_parity(hf, ours_torch, ours_flax, batch_for("squeezebert", "base", 7, **overrides))


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.sampled_from([2, 3, 4]), random_blocks=st.integers(1, 2), extra=st.integers(-6, 9))
def test_big_bird_block_sizes(
    block: int, random_blocks: int, extra: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Block sizes, random-block counts and lengths around the dense/sparse threshold (multiples of the
    block size and not) match HF PyTorch."""
    length = max(2, (5 + 2 * random_blocks) * block + extra)
    overrides = {"block_size": block, "num_random_blocks": random_blocks}
    hf, ours_torch, ours_flax = load("big_bird", "base", tmp_path_factory.mktemp("bb"), **overrides)
    check_parity(hf, ours_torch, ours_flax, batch_for("big_bird", "base", length, **overrides))


def test_big_bird_train_mode_same_seed_same_blocks(tmp_path: Path) -> None:
    """In training, random blocks come from ``block_sparse_seed``: the same seed gives the same blocks (hence
    the same outputs, with dropout off) in both backends; another seed gives other blocks."""
    overrides = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "num_random_blocks": 2}
    _, ours_torch, ours_flax = load("big_bird", "base", tmp_path, **overrides)
    batch = batch_for("big_bird", "base", 44, **overrides)
    ours_torch.train()
    key = jax.random.key(0)
    outputs = {}
    for seed in (3, 4):
        got_torch = harness.run_torch(ours_torch, batch, block_sparse_seed=seed)
        got_flax = harness.flat_outputs(ours_flax(**batch.numpy(), train=True, dropout_rng=key, block_sparse_seed=seed))
        harness.compare("big_bird train torch vs flax", got_torch, got_flax)
        outputs[seed] = got_torch["last_hidden_state"]
    eval_out = harness.run_flax(ours_flax, batch)["last_hidden_state"]
    assert np.abs(outputs[3] - outputs[4]).max() > 1e-3  # other blocks, other outputs
    assert np.abs(outputs[3] - eval_out).max() > 1e-3  # training blocks are not the eval plan


@pytest.mark.parametrize("task", ["base", "question_answering"])
def test_big_bird_inputs_embeds_and_positions_are_padded_as_hf(task: str, tmp_path: Path) -> None:
    """Length 30 pads to 32: given ``inputs_embeds`` are padded with the embedding-module output of pad ids
    (embedded twice, HF PyTorch's quirk) and given ``position_ids`` with ``pad_token_id``; question
    lengths given explicitly (there are no ids to find the separator in)."""
    hf, ours_torch, ours_flax = load("big_bird", task, tmp_path)
    batch = batch_for("big_bird", task, 30)
    ids = batch.inputs.pop("input_ids")
    with torch.no_grad():
        batch.inputs["inputs_embeds"] = hf.get_input_embeddings()(torch.from_numpy(ids)).numpy()
    batch.inputs["position_ids"] = np.broadcast_to(np.arange(1, 31), ids.shape).copy()
    if task == "question_answering":
        batch.inputs["question_lengths"] = np.array([[4], [7], [4], [4]])
    check_parity(hf, ours_torch, ours_flax, batch)


@pytest.mark.parametrize(("task", "length"), [("masked_lm", 12), ("question_answering", 30)])
def test_flax_feed_forward_in_row_chunks(
    task: str, length: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long inputs run the flax feed-forward in row chunks (the last one padded): the outputs still match
    HF PyTorch. Tiny chunks make these small batches take that path (e.g. 4 x 32 rows of 37 features: 19
    chunks of 7 rows, the last one padded)."""
    monkeypatch.setattr(flax_nodes, "ROW_CHUNK_BYTES", 1024)
    hf, ours_torch, ours_flax = load("big_bird", task, tmp_path)
    batch = batch_for("big_bird", task, length)
    if length < 20:  # dense attention: the only loop in the program is the chunked feed-forward's
        ids = jax.numpy.asarray(batch.inputs["input_ids"])
        assert "scan" in str(jax.make_jaxpr(lambda p: ours_flax.apply(p, input_ids=ids).logits)(ours_flax.params))
    check_parity(hf, ours_torch, ours_flax, batch)


def test_squeezebert_rejects_head_mask(tmp_path: Path) -> None:
    _, ours_torch, ours_flax = load("squeezebert", "base", tmp_path)
    batch = batch_for("squeezebert", "base", 7)
    with pytest.raises(ValueError, match="head_mask is not supported"):
        ours_torch(**batch.torch(), head_mask=torch.ones(4))
    with pytest.raises(ValueError, match="head_mask is not supported"):
        ours_flax(**batch.numpy(), head_mask=np.ones(4, np.float32))


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
