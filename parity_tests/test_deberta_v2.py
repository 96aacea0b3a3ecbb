"""DeBERTa-v2/v3 parity: HF PyTorch checkpoint -> tandem torch, flax and nnx, every HF output, every task.

The tiny config (``REFERENCES["deberta-v2"]``) is DeBERTa-v3-like (relative attention with c2p and p2c,
shared keys, a normalised relative table, no absolute positions, no token types) with small log buckets
(4: distances from 2 on are bucketed, and batches of 9 reach them) and the convolution beside the first layer.
The variants cover the other switches: no buckets, separate position projections, one position term,
absolute positions and token types, a narrower embedding width, relative attention off, grouped convolution.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import harness
import numpy as np
import pytest
import torch
from harness import REFERENCES, Case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position, make_log_bucket_position

import tandem
from tandem.core.families.deberta_v2 import DebertaV2Config
from tandem.core.relative import log_buckets, relative_positions

UNSHARED = {"share_att_key": False}
V2 = {"position_biased_input": True, "type_vocab_size": 2, "position_buckets": -1, "max_relative_positions": 6}

# One case per task, the variants folded in: separate position projections, one position term or none,
# no buckets or wider ones, absolute positions and token types, a narrower embedding width (embed_proj) with an
# untied decoder, grouped convolution, no convolution, relative attention off.
CASES: list[Case] = [
    Case("deberta-v2", "base", inputs_embeds=True),
    Case(
        "deberta-v2",
        "masked_lm",
        {**V2, **UNSHARED, "tie_word_embeddings": False, "embedding_size": 20, "conv_groups": 3, "conv_act": "gelu"},
        length=13,
    ),
    Case(
        "deberta-v2",
        "sequence_classification",
        {**UNSHARED, "pos_att_type": "p2c", "norm_rel_ebd": "none", "conv_kernel_size": 0, "num_labels": 3},
    ),
    # num_labels=1, labels given: HF returns the logits flattened to (B,) (its regression branch)
    Case(
        "deberta-v2", "sequence_classification", {"num_labels": 1, "position_buckets": 2, "max_relative_positions": 3}
    ),
    Case("deberta-v2", "multiple_choice", {"relative_attention": False, "position_biased_input": True}),
    Case(
        "deberta-v2",
        "token_classification",
        {**UNSHARED, "pos_att_type": "c2p", "position_buckets": 8, "max_relative_positions": 32, "num_labels": 5},
    ),
    Case("deberta-v2", "question_answering", {**V2, "pooler_hidden_act": "tanh"}),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.task}-{i}" for i, c in enumerate(CASES)])
def test_deberta_v2_parity(case: Case, checkpoints: harness.CheckpointCache) -> None:
    harness.run_case(case, checkpoints.load(case.family, case.task, case.config))


def test_every_registered_task_has_a_case() -> None:
    """A task added to DeBERTa-v2 fails here until the table above checks it."""
    assert set(REFERENCES["deberta-v2"].tasks) <= {case.task for case in CASES}


@pytest.mark.parametrize(("buckets", "max_distance"), [(-1, 12), (2, 5), (4, 12), (8, 32), (256, 512), (64, 100)])
def test_relative_positions_match_hf(buckets: int, max_distance: int) -> None:
    """The host-side (numpy) relative positions are HF PyTorch's, long distances included."""
    states = torch.zeros(1, 700, 1)
    expected = build_relative_position(states, states, bucket_size=buckets, max_position=max_distance)[0].numpy()
    np.testing.assert_array_equal(relative_positions(700, buckets, max_distance), expected)


# Settings whose raw log buckets differed from HF PyTorch's on this machine (the bucket value of one distance
# >= 25 is an integer in exact arithmetic, x = b**k, and the two float32 logs round it to either side): the
# rows the model reads are clamped to the table there, so the outputs never differed.
TIE_SETTINGS = [(16, 13), (17, 13), (18, 16), (19, 16), (32, 25), (32, 37)]


def _rows(bucket: np.ndarray, span: int) -> np.ndarray:
    """The table rows c2p (and, negated, p2c) read: distances clamped to the table, as HF's
    ``clamp(relative_pos + att_span, 0, 2 * att_span - 1)``."""
    return np.clip(bucket, -span, span - 1)


def _explained(distance: np.ndarray, buckets: int, max_distance: int) -> np.ndarray:
    """Where torch's float32 log on this machine is not correctly rounded at one of the two logs HF takes for a
    distance (``log(|distance| / mid)``, ``log((max_distance - 1) / mid)``): the only place tandem's correctly
    rounded logs and HF's may part."""
    mid = buckets // 2
    ratio = np.abs(distance).astype(np.float32) / np.float32(mid)
    base = np.float32((max_distance - 1) / mid)
    with np.errstate(divide="ignore"):  # log(0) at distance 0 when mid is 1, -inf in both
        off = torch.log(torch.from_numpy(ratio)).numpy() != np.log(ratio.astype(np.float64)).astype(np.float32)
    return off | (torch.log(torch.tensor(base)).item() != np.float32(np.log(np.float64(base))))


@pytest.mark.parametrize(("buckets", "max_distance"), TIE_SETTINGS)
def test_tie_settings_read_hf_rows(buckets: int, max_distance: int) -> None:
    """At the settings whose raw buckets differ, every (query, key) pair reads HF's table row (c2p and p2c)."""
    states = torch.zeros(1, 160, 1)
    hf = build_relative_position(states, states, bucket_size=buckets, max_position=max_distance)[0].numpy()
    ours = relative_positions(160, buckets, max_distance)
    np.testing.assert_array_equal(_rows(ours, buckets), _rows(hf, buckets))
    np.testing.assert_array_equal(_rows(-ours, buckets), _rows(-hf, buckets))
    distance = np.arange(160)[:, None] - np.arange(160)[None, :]
    assert _explained(distance[ours != hf], buckets, max_distance).all()


SMALL_SWEEP = [(b, m) for b in range(2, 33) for m in range(b // 2 + 2, 130)]  # the tie settings lie in it
WIDE_SWEEP = [(b, m) for b in range(2, 65) for m in range(b // 2 + 2, 301)] + [
    (b, m) for b in (96, 128, 200, 256, 384, 512) for m in range(b // 2 + 2, b // 2 + 1200, 37)
]


@pytest.mark.parametrize(
    "settings", [SMALL_SWEEP, pytest.param(WIDE_SWEEP, marks=pytest.mark.slow)], ids=["buckets<=32", "wide"]
)
def test_log_buckets_sweep_matches_hf(settings: list[tuple[int, int]]) -> None:
    """Every valid (buckets, max_relative_positions) of the sweep (buckets 2-32 and the distance limit up to
    129; with -m slow buckets 2-64 up to 300 and larger buckets up to 512) against HF's
    ``make_log_bucket_position`` on every distance that reaches a table row: each raw bucket equals HF's unless
    torch's log is not correctly rounded at that distance on this machine (``_explained``), and for buckets
    <= 32 every row the model reads is HF's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of small ops: a second thread only waits (15x slower on a busy machine)
    try:
        unexplained, rows_off = _sweep(settings)
    finally:
        torch.set_num_threads(threads)
    assert not rows_off, f"rows the model reads differ from HF's at (buckets, max_distance) {rows_off[:10]}"
    assert not unexplained, f"(buckets, max_distance, distance) not explained by torch's log: {unexplained[:10]}"


def _sweep(settings: list[tuple[int, int]]) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """The (buckets, max_distance, distance) whose raw bucket differs from HF's where torch's log is correctly
    rounded, and the settings with buckets <= 32 where a row the model reads differs."""
    unexplained, rows_off = [], []
    for buckets, max_distance in settings:
        distance = np.arange(-1500, 1501)
        ours = log_buckets(distance, buckets, max_distance)
        reach = np.abs(ours) <= buckets + 1  # beyond, every bucket reads the table's last row
        distance, ours = distance[reach], ours[reach]
        hf = make_log_bucket_position(torch.from_numpy(distance), buckets, max_distance).to(torch.long).numpy()
        if buckets <= 32 and not np.array_equal(_rows(ours, buckets), _rows(hf, buckets)):
            rows_off.append((buckets, max_distance))
        off = ours != hf
        bad = off & ~_explained(distance, buckets, max_distance)
        unexplained += [(buckets, max_distance, int(d)) for d in distance[bad]]
    return unexplained, rows_off


@st.composite
def relative_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A relative-attention setting: buckets (none, or a few), a small distance limit, shared or separate
    position projections, either or both position terms, the conv layer on or off; a length past the buckets."""
    buckets = draw(st.sampled_from([-1, 2, 4, 6, 8]))
    limit = draw(st.integers(max(2, buckets // 2 + 2), 16))
    terms = draw(st.sampled_from([["c2p"], ["p2c"], ["p2c", "c2p"]]))
    return {
        "config": {
            "position_buckets": buckets,
            "max_relative_positions": limit,
            "pos_att_type": terms,
            "share_att_key": draw(st.booleans()),
            "conv_kernel_size": draw(st.sampled_from([0, 1, 5])),
            "norm_rel_ebd": draw(st.sampled_from(["none", "layer_norm"])),
        },
        "length": draw(st.integers(2, 12)),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=3, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=relative_configs())
def test_random_relative_settings_match_hf(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = harness.load(Path(tmp), "deberta-v2", "base", case["config"], seed=case["seed"])
    batch = harness.make_batch("base", loaded.config, seed=case["seed"], batch=3, length=case["length"])
    harness.check_parity(loaded, batch, hf_flax=False)


def test_gradients_match_hf(checkpoints: harness.CheckpointCache) -> None:
    """Masked-LM loss and every parameter's gradient (the relative table, its norm and the conv included):
    tandem torch and flax against HF PyTorch, padded rows included."""
    loaded = checkpoints.load("deberta-v2", "masked_lm")
    batch = harness.make_batch("masked_lm", loaded.config, seed=3, mask_patterns=(0, 1, 2, 4))
    loss_t, grads_t = harness.torch_grads(loaded.torch, batch)
    loss_hf, grads_hf = harness.hf_torch_grads(copy.deepcopy(loaded.hf), batch, list(grads_t))
    loss_f, grads_f = harness.flax_grads(loaded.flax, batch)
    assert abs(loss_t - loss_hf) <= harness.ATOL and abs(loss_f - loss_hf) <= harness.ATOL
    harness.compare_grads("deberta-v2 torch vs HF torch grads", grads_t, grads_hf)
    harness.compare_grads("deberta-v2 flax vs HF torch grads", grads_f, grads_hf)


def test_float_labels_are_soft_targets(checkpoints: harness.CheckpointCache) -> None:
    """Sequence classification with (B, num_labels) float labels and no problem type: HF's DeBERTa computes a
    soft-target cross-entropy (not BERT's multi-label BCE); so does every backend."""
    case = CASES[2]
    loaded = checkpoints.load(case.family, case.task, case.config)
    batch = harness.case_batch(loaded, problem="multi_label_classification")
    reference = harness.run_torch(loaded.hf, batch)
    for name, outputs in (
        ("torch", harness.run_torch(loaded.torch, batch)),
        ("flax", harness.run_flax(loaded.flax, batch)),
    ):
        harness.compare(f"deberta-v2 soft labels {name} vs HF torch", outputs, reference)


def test_head_mask_is_rejected(checkpoints: harness.CheckpointCache) -> None:
    """HF's DeBERTa takes no head mask: every backend says so instead of ignoring it."""
    loaded = checkpoints.load("deberta-v2", "base")
    ids = np.ones((1, 4), np.int64)
    for model in (loaded.torch, loaded.flax):
        with pytest.raises(ValueError, match="head_mask is not supported"):
            model(input_ids=ids, head_mask=np.ones(3, np.float32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pos_att_type": ["c2p", "p2p"]}, "not supported"),
        ({"norm_rel_ebd": "batch_norm"}, "norm_rel_ebd"),
        ({"conv_kernel_size": 2}, "must be odd"),
        ({"hidden_size": 36, "num_attention_heads": 3, "conv_kernel_size": 3, "conv_groups": 5}, "conv_groups"),
        ({"pooler_hidden_size": 7}, "pooler_hidden_size"),
        ({"legacy": False}, "legacy=False"),
        ({"relative_attention": True, "position_buckets": 8, "max_relative_positions": 5}, "log buckets"),
        ({"conv_act": "gelu_bogus"}, "conv_act"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tandem.build_graph(DebertaV2Config(**kwargs), "base")


def test_config_reads_hf_strings() -> None:
    """``pos_att_type`` as HF's ``"p2c|c2p"`` string, ``max_relative_positions`` -1 as the position limit."""
    config = DebertaV2Config(pos_att_type="P2C|c2p", relative_attention=True, max_relative_positions=-1)
    assert config.position_terms == ("p2c", "c2p") and config.span == config.max_position_embeddings


def test_config_defaults_are_hf() -> None:
    """Every field HF's config class sets defaults as there; the fields HF reads with ``getattr`` default to
    the values its modules fall back to; ``model_type`` is HF's."""
    import transformers

    ours, theirs = DebertaV2Config(), transformers.DebertaV2Config()
    assert DebertaV2Config.model_type == theirs.model_type
    fallbacks = {"position_buckets": -1, "share_att_key": False, "norm_rel_ebd": "none", "conv_kernel_size": 0}
    fallbacks |= {"conv_groups": 1, "conv_act": "tanh", "cls_dropout": None}
    for name in DebertaV2Config.model_fields:
        if name in ("embedding_size", "pooler_hidden_size"):  # None: hidden_size, as HF
            assert getattr(ours, name) is None and getattr(theirs, name, ours.hidden_size) == ours.hidden_size
        elif hasattr(theirs, name):
            assert getattr(ours, name) == getattr(theirs, name), name
        else:
            assert getattr(ours, name) == fallbacks[name], name
