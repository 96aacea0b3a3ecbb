"""tandem's parameter names and shapes against golden manifests generated from HF (golden/make_golden.py).

The manifests come from HF PyTorch ``BertFor<Task>.state_dict()`` and HF Flax ``FlaxBertFor<Task>.params``;
tandem's torch ``state_dict`` (tied aliases included) and flax params tree must list exactly the same
(key, shape) pairs, so a rename, a missing alias or a transposed kernel fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import harness
import jax
import numpy as np
import pytest

import tandem

GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFESTS = sorted(GOLDEN.glob("bert_*.json"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _as_pairs(entries: list[list[Any]]) -> list[tuple[str, list[int]]]:
    return sorted((key, list(shape)) for key, shape in entries)


def test_every_task_has_a_manifest() -> None:
    tasks = {_load(p)["task"] for p in MANIFESTS}
    assert tasks == set(harness.TASKS), f"golden manifests cover {sorted(tasks)}"


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_torch_state_dict_matches_hf(path: Path) -> None:
    golden = _load(path)
    model = tandem.build(tandem.BertConfig(**golden["config"]), task=golden["task"], backend="torch")
    ours = harness.torch_state_shapes(model.state_dict())
    assert ours == _as_pairs(golden["torch"]), _diff(ours, _as_pairs(golden["torch"]))


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_flax_params_match_hf(path: Path) -> None:
    golden = _load(path)
    model = tandem.build(tandem.BertConfig(**golden["config"]), task=golden["task"], backend="flax")
    ours = harness.flax_param_shapes(model.params)
    assert ours == _as_pairs(golden["flax"]), _diff(ours, _as_pairs(golden["flax"]))


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_flax_module_init_matches_hf(path: Path) -> None:
    """``model.module.init`` (what a flax user calls) declares HF Flax's tree too, not only ``.params``."""
    golden = _load(path)
    model = tandem.build(tandem.BertConfig(**golden["config"]), task=golden["task"], backend="flax")
    ids = np.ones((1, 2, 4) if golden["task"] == "multiple_choice" else (1, 4), np.int32)
    inputs = {"input_ids": ids.reshape(-1, 4), "attention_mask": None, "token_type_ids": None}
    inputs |= {"position_ids": None, "inputs_embeds": None}
    shapes = jax.eval_shape(lambda: model.module.init(jax.random.key(0), inputs))
    ours = harness.flax_param_shapes(shapes["params"])
    assert ours == _as_pairs(golden["flax"]), _diff(ours, _as_pairs(golden["flax"]))


def test_tied_aliases_share_storage() -> None:
    """HF's tied decoder: ``decoder.weight`` is the word embedding and ``decoder.bias`` the head bias."""
    golden = _load(GOLDEN / "bert_masked_lm.json")
    model = tandem.build(tandem.BertConfig(**golden["config"]), task="masked_lm", backend="torch")
    params = dict(model.named_parameters(remove_duplicate=False))
    assert params["cls.predictions.decoder.weight"] is params["bert.embeddings.word_embeddings.weight"]
    assert params["cls.predictions.decoder.bias"] is params["cls.predictions.bias"]


def _diff(ours: list[tuple[str, list[int]]], golden: list[tuple[str, list[int]]]) -> str:
    a, b = {k: tuple(s) for k, s in ours}, {k: tuple(s) for k, s in golden}
    lines = [f"  only in tandem: {k} {a[k]}" for k in sorted(set(a) - set(b))]
    lines += [f"  only in HF:     {k} {b[k]}" for k in sorted(set(b) - set(a))]
    lines += [f"  shape {k}: tandem {a[k]} HF {b[k]}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return "parameter manifest differs from HF:\n" + "\n".join(lines)
