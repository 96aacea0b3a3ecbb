"""JAX scale-out (linen and NNX) on 8 host CPU devices: sharded loading, calls, gradients, an AdamW step and
saving equal the unsharded model's.

XLA's host device count is fixed when jax starts, so every check runs in one subprocess
(``sharding_jax_checks.py``, its cases listed there) and this module asserts on what it records.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-5

# What the presets give the sampled parameters (flax layout: kernels are (in, out)), written by hand from
# the Megatron scheme: q/k/v column-parallel, attention output row-parallel, the embedding table split by
# vocabulary where the size divides, otherwise over "data" by fsdp.
EXPECTED = {
    "bert-2x4-fsdp": {"query": [None, "data"], "attention_output": [None, "data"], "word_embeddings": ["data", None]},
    "bert-2x4-tp": {"query": [None, "model"], "attention_output": ["model", None], "word_embeddings": ["model", None]},
    "bert-2x4-fsdp_tp": {
        "query": ["data", "model"],
        "attention_output": ["model", "data"],
        "word_embeddings": ["model", "data"],
    },
    # 63 rows divide neither axis: the table is split by its features over "data" instead
    "big_bird-4x2-fsdp_tp": {
        "query": ["data", "model"],
        "attention_output": ["model", "data"],
        "word_embeddings": [None, "data"],
    },
    # the shared group's parameters; ALBERT's table is (vocab, embedding_size)
    "albert-8-fsdp": {"query": [None, "data"], "attention_output": [None, "data"], "word_embeddings": ["data", None]},
    "albert-4x2-tp": {
        "query": [None, "model"],
        "attention_output": ["model", None],
        "word_embeddings": ["model", None],
    },
}


# The default run: linen on jax's default (Explicit) mesh, BigBird's block-sparse attention on Auto axes with a
# fallback, NNX with ALBERT's shared group under tp. The other cases run with -m slow.
DEFAULT = ["flax-bert-2x4-fsdp_tp-explicit", "flax-big_bird-4x2-fsdp_tp-auto", "nnx-albert-4x2-tp-auto"]
SLOW = ["flax-bert-2x4-fsdp-auto", "flax-bert-2x4-tp-auto", "flax-albert-8-fsdp-auto", "nnx-bert-2x4-fsdp_tp-explicit"]


def _run(tmp_path_factory: pytest.TempPathFactory, cases: list[str]) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sharding") / "results.json"
    done = subprocess.run(
        [sys.executable, str(HERE / "sharding_jax_checks.py"), str(out), *cases], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-5000:]
    results = json.loads(out.read_text())
    assert results["devices"] == 8
    assert [case["case"] for case in results["cases"]] == cases
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(tmp_path_factory, DEFAULT)


def check_case(case: dict[str, Any]) -> None:
    assert case["param_types"] == ["ArrayImpl"]  # jax.Arrays
    assert case["param_specs_wrong"] == []  # each on the mesh with its rules' spec
    assert case["shard_shapes_wrong"] == []  # 8 device blocks of the split shape
    assert case["samples"] == EXPECTED[case["case"].split("-", 1)[1].rsplit("-", 1)[0]]
    assert case["logits"] <= TOLERANCE
    assert case["logits_batch_split"]
    assert case["grads"] <= TOLERANCE
    assert case["grad_specs_wrong"] == []  # gradients sharded like the parameters
    assert case["step"] <= TOLERANCE
    assert case["step_specs_wrong"] == [] and case["moment_specs_wrong"] == []
    assert case["roundtrip"] == 0.0  # save_pretrained gathers the exact values


@pytest.mark.parametrize("index", range(len(DEFAULT)), ids=DEFAULT)
def test_sharded_model_equals_unsharded(results: dict[str, Any], index: int) -> None:
    check_case(results["cases"][index])


def test_fallback_to_replication_is_reported_once(results: dict[str, Any]) -> None:
    """The 63-row vocabulary of the block-sparse case divides no mesh axis: one warning per load, naming the
    table and the LM bias; sizes that divide give none."""
    for case in results["cases"]:
        if "big_bird" in case["case"]:
            assert len(case["fallbacks"]) == 1, case["case"]
            assert "embeddings.word_embeddings.weight (63, 16) over model" in case["fallbacks"][0]
            assert "cls.predictions.bias (63,) over data, model" in case["fallbacks"][0]
        else:
            assert case["fallbacks"] == [], case["case"]


def test_build_on_a_mesh_draws_the_unsharded_weights(results: dict[str, Any]) -> None:
    assert results["built"] == {"flax": 0.0, "nnx": 0.0}


@pytest.mark.slow
def test_more_meshes_and_presets(tmp_path_factory: pytest.TempPathFactory) -> None:
    """(2, 4) under fsdp and tp on Auto axes, ALBERT on an (8,) mesh, NNX on jax's default Explicit mesh."""
    for case in _run(tmp_path_factory, SLOW)["cases"]:
        check_case(case)
        assert case["fallbacks"] == [], case["case"]
