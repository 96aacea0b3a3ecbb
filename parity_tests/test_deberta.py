"""DeBERTa (v1) parity: HF PyTorch checkpoint -> tandem torch, flax and nnx, every HF output, every task.

The tiny config (``REFERENCES["deberta"]``) is microsoft/deberta-base's layout (relative attention with c2p
and p2c, no absolute positions, no token types) with a small clamp (``max_relative_positions=6``: batches of 9
reach past it) and talking heads on. The variants cover the other switches: talking heads off, one position
term, absolute positions and token types, a narrower embedding width (embed_proj) with an untied decoder, the
non-legacy masked-LM head, relative attention off, the clamp at ``max_position_embeddings``.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import harness
import numpy as np
import pytest
import torch
import transformers
from harness import REFERENCES, Case
from safetensors.numpy import load_file, save_file

import tandem
from tandem.core import nodes as n
from tandem.core.families.deberta import DebertaConfig
from tandem.tools.cli import main

PLAIN = {"talking_head": False}
ABSOLUTE = {"position_biased_input": True, "type_vocab_size": 2}

# One case per task, the variants folded in.
CASES: list[Case] = [
    Case("deberta", "base", inputs_embeds=True),
    Case(
        "deberta",
        "masked_lm",
        {**ABSOLUTE, "tie_word_embeddings": False, "embedding_size": 20},
        length=13,
    ),
    Case("deberta", "masked_lm", {"legacy": False, "tie_word_embeddings": False, "pos_att_type": "p2c|c2p"}),
    Case(
        "deberta",
        "sequence_classification",
        {**PLAIN, "pos_att_type": "p2c", "num_labels": 3, "pooler_hidden_act": "tanh"},
    ),
    # num_labels=1, labels given: HF returns the logits flattened to (B,) (its regression branch)
    Case("deberta", "sequence_classification", {"num_labels": 1, "pos_att_type": "c2p", "max_relative_positions": 3}),
    Case("deberta", "token_classification", {**PLAIN, "max_relative_positions": -1, "num_labels": 5}, length=12),
    Case("deberta", "question_answering", {**ABSOLUTE, "relative_attention": False}),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.task}-{i}" for i, c in enumerate(CASES)])
def test_deberta_parity(case: Case, checkpoints: harness.CheckpointCache) -> None:
    harness.run_case(case, checkpoints.load(case.family, case.task, case.config))


def test_every_registered_task_has_a_case() -> None:
    """A task added to DeBERTa fails here until the table above checks it; HF 4.57 has no multiple choice."""
    assert set(REFERENCES["deberta"].tasks) <= {case.task for case in CASES}
    assert not hasattr(transformers, "DebertaForMultipleChoice")


@pytest.mark.parametrize(
    "config",
    [CASES[1].config, pytest.param(CASES[2].config, marks=pytest.mark.slow)],
    ids=["untied-absolute-embed-proj", "non-legacy"],
)
def test_gradients_match_hf(config: dict, checkpoints: harness.CheckpointCache) -> None:
    """Masked-LM loss and every parameter's gradient (in_proj, q_bias/v_bias, the position projections, talking
    heads, the relative table, both LM heads): tandem torch, linen and NNX against HF PyTorch, padded rows
    included."""
    loaded = checkpoints.load("deberta", "masked_lm", config)
    batch = harness.make_batch("masked_lm", loaded.config, seed=3, length=11, mask_patterns=(0, 1, 2, 4))
    loss_t, grads_t = harness.torch_grads(loaded.torch, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(copy.deepcopy(loaded.hf), batch, list(grads_t))
    loss_f, grads_f = harness.flax_grads(loaded.flax, batch)
    loss_n, grads_n = harness.nnx_grads(loaded.nnx, batch)
    assert max(abs(loss_t - loss_hf), abs(loss_f - loss_hf), abs(loss_n - loss_hf)) <= harness.ATOL
    assert any(key.endswith("q_bias") for key in grads_hf) and any("in_proj" in key for key in grads_hf)
    harness.compare_grads("deberta torch vs HF torch grads", grads_t, grads_hf)
    harness.compare_grads("deberta flax vs HF torch grads", grads_f, grads_hf)
    harness.compare_grads("deberta nnx vs HF torch grads", grads_n, grads_hf)


def test_float_labels_are_soft_targets(checkpoints: harness.CheckpointCache) -> None:
    """Sequence classification with (B, num_labels) float labels and no problem type: HF's DeBERTa computes a
    soft-target cross-entropy (not BERT's multi-label BCE); so does every backend."""
    case = CASES[3]
    loaded = checkpoints.load(case.family, case.task, case.config)
    batch = harness.case_batch(loaded, problem="multi_label_classification")
    reference = harness.run_torch(loaded.hf, batch)
    for name, outputs in (
        ("torch", harness.run_torch(loaded.torch, batch)),
        ("flax", harness.run_flax(loaded.flax, batch)),
        ("nnx", harness.run_flax(loaded.nnx, batch)),
    ):
        harness.compare(f"deberta soft labels {name} vs HF torch", outputs, reference)


@pytest.mark.parametrize(
    ("case", "backend"),
    [(CASES[1], "torch"), (CASES[2], "flax"), (CASES[3], "nnx")],
    ids=["legacy-torch", "non-legacy-flax", "classifier-nnx"],
)
def test_hf_loads_what_we_save(case: Case, backend: str, checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """HF checkpoint -> tandem.from_pretrained -> save_pretrained -> HF from_pretrained: no missing or unexpected
    keys, every tensor the original one bit for bit, the same outputs."""
    loaded = checkpoints.load(case.family, case.task, case.config)
    tandem.save_pretrained(getattr(loaded, backend), tmp_path)
    cls = getattr(transformers, REFERENCES["deberta"].torch_class(case.task))
    with harness.quiet():
        hf, info = cls.from_pretrained(tmp_path, output_loading_info=True, attn_implementation="eager")
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}, info
    original, saved = loaded.hf.state_dict(), hf.state_dict()
    assert sorted(saved) == sorted(original)
    assert [k for k in original if not torch.equal(saved[k], original[k])] == []
    batch = harness.case_batch(loaded, seed=5)
    harness.compare(
        "deberta HF(our checkpoint) vs HF", harness.run_torch(hf.eval(), batch), harness.run_torch(loaded.hf, batch)
    )


def test_convert_to_flax_and_back(checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """``tandem convert`` to the flax layout (declared rules: in_proj -> kernel transposed, q_bias kept, talking
    heads' kernels, rel_embeddings -> embedding) and back gives HF's checkpoint bit for bit; the flax file loads
    in the flax backend with the same outputs."""
    loaded = checkpoints.load("deberta", "base")
    flax_dir, torch_dir = tmp_path / "flax", tmp_path / "torch"
    assert main(["convert", str(loaded.directory), str(flax_dir), "--to", "flax", "--quiet"]) == 0
    assert main(["convert", str(flax_dir), str(torch_dir), "--to", "torch", "--quiet"]) == 0
    original, back = load_file(loaded.directory / "model.safetensors"), load_file(torch_dir / "model.safetensors")
    assert sorted(back) == sorted(original)
    assert all(np.array_equal(back[k], original[k]) for k in original)
    model = tandem.from_pretrained(flax_dir, backend="flax")
    params = model.params["encoder"]["layer"]["0"]["attention"]["self"]
    h = loaded.config["hidden_size"]
    assert params["in_proj"]["kernel"].shape == (h, 3 * h) and params["q_bias"].shape == (h,)
    assert params["head_logits_proj"]["kernel"].shape == (3, 3)
    np.testing.assert_array_equal(
        params["in_proj"]["kernel"], original["encoder.layer.0.attention.self.in_proj.weight"].T
    )
    batch = harness.case_batch(loaded)
    harness.compare(
        "deberta flax(converted) vs flax", harness.run_flax(model, batch), harness.run_flax(loaded.flax, batch)
    )


def test_position_table_is_ignored_as_hf(checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """``position_biased_input=False`` and a checkpoint that still holds ``position_embeddings``: HF drops it
    silently (``_keys_to_ignore_on_load_unexpected``), so does tandem, and the outputs are unchanged."""
    loaded = checkpoints.load("deberta", "base")
    weights = load_file(loaded.directory / "model.safetensors")
    weights["embeddings.position_embeddings.weight"] = np.ones((40, 36), np.float32)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((loaded.directory / "config.json").read_text())
    with harness.quiet():
        _, info = transformers.DebertaModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == [] and info["missing_keys"] == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tandem.from_pretrained(tmp_path, backend="torch")
    batch = harness.case_batch(loaded)
    harness.compare(
        "deberta torch (extra table) vs torch", harness.run_torch(model, batch), harness.run_torch(loaded.torch, batch)
    )


def test_head_mask_is_rejected(checkpoints: harness.CheckpointCache) -> None:
    """HF's DeBERTa takes no head mask: every backend says so instead of ignoring it."""
    loaded = checkpoints.load("deberta", "base")
    ids = np.ones((1, 4), np.int64)
    for model in (loaded.torch, loaded.flax, loaded.nnx):
        with pytest.raises(ValueError, match="head_mask is not supported"):
            model(input_ids=ids, head_mask=np.ones(3, np.float32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pos_att_type": ["c2p", "p2p"]}, "not supported"),
        ({"legacy": False}, "tie_word_embeddings=False"),
        ({"legacy": False, "tie_word_embeddings": False, "embedding_size": 20}, "embedding_size"),
        ({"pooler_hidden_size": 7}, "pooler_hidden_size"),
        ({"pooler_hidden_act": "gelu_bogus"}, "pooler_hidden_act"),
        ({"type_vocab_size": -1}, "type_vocab_size"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tandem.build_graph(DebertaConfig(**kwargs), "base")


def test_config_defaults_are_hf() -> None:
    """Every field HF's config class sets defaults as there; the fields HF reads with ``getattr`` default to
    the values its modules fall back to; ``model_type`` is HF's; ``"c2p|p2c"`` reads as HF's list."""
    ours, theirs = DebertaConfig(), transformers.DebertaConfig()
    assert DebertaConfig.model_type == theirs.model_type
    fallbacks = {"talking_head": False, "cls_dropout": None}
    for name in DebertaConfig.model_fields:
        if name in ("embedding_size", "pooler_hidden_size"):  # None: hidden_size, as HF
            assert getattr(ours, name) is None and getattr(theirs, name, ours.hidden_size) == ours.hidden_size
        elif hasattr(theirs, name):
            assert getattr(ours, name) == getattr(theirs, name), name
        else:
            assert getattr(ours, name) == fallbacks[name], name
    assert DebertaConfig(pos_att_type="C2P|p2c").position_terms == tuple(
        transformers.DebertaConfig(pos_att_type="C2P|p2c").pos_att_type
    )


def _attention(**fields: object) -> n.Attention:
    qkv = n.Linear(path="in_proj", in_features=6, out_features=18, bias=False)
    variant = n.DisentangledAttention(
        relative=False, c2p=False, p2c=False, span=4, buckets=-1, max_distance=4, share_keys=False
    )
    base = {"path": "self", "qkv": qkv, "num_heads": 2, "head_dim": 3, "score_divisor": 1.0, "dropout": 0.0}
    return n.Attention(**{**base, "variant": variant, **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"variant": n.FullAttention(), "head_logits": n.Linear(path="mix", in_features=2, out_features=2)},
            "talking heads",
        ),
        ({"head_weights": n.Linear(path="mix", in_features=3, out_features=3)}, "must map 2 heads"),
        ({"part_biases": ("query", "query")}, "names a part twice"),
        (
            {
                "variant": n.DisentangledAttention(
                    relative=True, c2p=True, p2c=False, span=4, buckets=-1, max_distance=4, share_keys=True
                )
            },
            "shared position keys",
        ),
    ],
)
def test_attention_node_errors(fields: dict, message: str) -> None:
    """The generic options DeBERTa v1 uses (talking heads, per-part biases) are checked on the node."""
    with pytest.raises(ValueError, match=message):
        _attention(**fields)
