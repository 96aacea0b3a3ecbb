"""tandem's parameter names and shapes against golden manifests generated from HF (golden/make_golden.py).

One manifest per registered (family, task), plus variants (untied LM heads, decoders with cross-attention).
Each comes from HF PyTorch ``<Class>.state_dict()`` and HF Flax ``Flax<Class>.params``; tandem's torch
``state_dict`` (tied aliases included) and flax params tree must list exactly the same (key, shape) pairs, so
a rename, a missing alias or a transposed kernel fails here. Two recorded exceptions, both asserted exactly:

- ``flax_pooler_absent``: HF Flax drops the pooler from some heads that HF PyTorch keeps it in (BigBird's
  LMs and token classification). tandem keeps HF PyTorch's pooler in both backends and declares the
  difference (``ModelGraph.flax_absent``: a flax checkpoint without it loads, the pooler initialised), so its
  flax tree is the HF Flax tree plus exactly these entries, and the graph declares exactly them.
- ALBERT's sentence-order head: HF Flax builds it as ``Dense(2)`` whatever ``num_labels`` says, HF PyTorch
  as ``Linear(hidden, num_labels)``; tandem follows HF PyTorch in both backends (:data:`FLAX_SHAPES`).
- ``"flax": null``: HF has no Flax class (SqueezeBERT). tandem's flax params, written out through tandem's
  own flax -> torch layout (``save_pretrained``), must then give the HF PyTorch checkpoint's keys and shapes.

HF is not needed at run time: the manifests are checked in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from safetensors import safe_open

import tandem
from tandem.core.families import FAMILIES
from tandem.core.params import param_entries

GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFESTS = sorted(GOLDEN.glob("*.json"))
IDS = [p.stem for p in MANIFESTS]

Entries = list[tuple[str, list[int]]]


@cache
def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _config(golden: Mapping[str, Any]) -> Any:
    return FAMILIES[golden["family"]].config_class(**golden["config"])


@cache
def _flax_model(path: Path) -> Any:
    """Built once per manifest, on first use, and shared by the flax tests."""
    golden = _load(path)
    return tandem.build(_config(golden), task=golden["task"], backend="flax")


def _as_pairs(entries: list[list[Any]]) -> Entries:
    return sorted((key, list(shape)) for key, shape in entries)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested flax tree as ``{"a/b/c": leaf}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


def _tree_shapes(tree: Mapping[str, Any]) -> Entries:
    return sorted((key, list(np.shape(leaf))) for key, leaf in _flatten(tree).items())


def _state_shapes(state: Mapping[str, Any]) -> Entries:
    return sorted((key, list(value.shape)) for key, value in state.items())


def _diff(ours: Entries, golden: Entries, what: str = "HF") -> str:
    a, b = {k: tuple(s) for k, s in ours}, {k: tuple(s) for k, s in golden}
    theirs = f"only in {what}:"
    width = max(len(theirs), len("only in tandem:"))
    lines = [f"  {'only in tandem:':<{width}} {k} {a[k]}" for k in sorted(set(a) - set(b))]
    lines += [f"  {theirs:<{width}} {k} {b[k]}" for k in sorted(set(b) - set(a))]
    lines += [f"  shape {k}: tandem {a[k]}, {what} {b[k]}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return f"parameter manifest differs from {what}:\n" + "\n".join(lines)


# Flax shapes where HF Flax departs from HF PyTorch and tandem follows HF PyTorch: (family, task) -> flax path
# -> the HF PyTorch shape's source in the torch manifest (see the module docstring).
FLAX_SHAPES: dict[tuple[str, str], dict[str, tuple[str, tuple[int, ...]]]] = {
    ("albert", "pretraining"): {
        "sop_classifier/classifier/kernel": ("sop_classifier.classifier.weight", (1, 0)),
        "sop_classifier/classifier/bias": ("sop_classifier.classifier.bias", (0,)),
    },
}


def _expected_flax(golden: Mapping[str, Any]) -> Entries:
    """HF Flax's tree plus the pooler HF Flax leaves out and tandem keeps, with the shapes of
    :data:`FLAX_SHAPES` taken from HF PyTorch (see the module docstring)."""
    torch_shapes = {key: shape for key, shape in golden["torch"]}
    overrides = FLAX_SHAPES.get((golden["family"], golden["task"]), {})
    entries = []
    for key, shape in golden["flax"] + golden["flax_pooler_absent"]:
        if key in overrides:
            source, order = overrides[key]
            shape = [torch_shapes[source][i] for i in order]
        entries.append([key, shape])
    return _as_pairs(entries)


@pytest.mark.parametrize("path", MANIFESTS, ids=IDS)
def test_graph_declares_what_hf_flax_lacks(path: Path) -> None:
    """The params HF Flax's class lacks are exactly those under the graph's ``flax_absent`` nodes."""
    golden = _load(path)
    graph = tandem.build_graph(_config(golden), golden["task"])
    nodes = tuple(p + "." for p in graph.flax_absent)
    declared = sorted(e.name("flax") for e in param_entries(graph) if e.key.startswith(nodes))
    assert declared == sorted(key for key, _ in golden.get("flax_pooler_absent") or [])


def test_every_registered_task_has_a_manifest() -> None:
    registered = {(name, task) for name, family in FAMILIES.items() for task in family.tasks}
    covered = {(_load(p)["family"], _load(p)["task"]) for p in MANIFESTS}
    missing, extra = sorted(registered - covered), sorted(covered - registered)
    assert not missing, f"registered tasks without a golden manifest (add them to golden/make_golden.py): {missing}"
    assert not extra, f"golden manifests for (family, task) that tandem does not register: {extra}"


@pytest.mark.parametrize("path", MANIFESTS, ids=IDS)
def test_manifest_names_the_registered_hf_classes(path: Path) -> None:
    golden = _load(path)
    family = FAMILIES[golden["family"]]
    assert family.architectures[golden["task"]] == golden["hf_torch_class"]
    if golden["hf_flax_class"] is not None:
        assert family.task_of(golden["hf_flax_class"]) == golden["task"]
    else:
        assert golden["flax"] is None and golden["flax_absent_reason"]


@pytest.mark.parametrize("path", MANIFESTS, ids=IDS)
def test_torch_state_dict_matches_hf(path: Path) -> None:
    golden = _load(path)
    model = tandem.build(_config(golden), task=golden["task"], backend="torch")
    ours, theirs = _state_shapes(model.state_dict()), _as_pairs(golden["torch"])
    assert ours == theirs, _diff(ours, theirs)
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = golden["torch_tied"]  # alias -> the key whose tensor it is
    untied = {alias: canonical for alias, canonical in tied.items() if params[alias] is not params[canonical]}
    assert untied == {}, f"HF ties these keys (alias -> canonical); tandem gives them their own tensors: {untied}"


@pytest.mark.parametrize("path", MANIFESTS, ids=IDS)
def test_flax_params_match_hf(path: Path, tmp_path: Path) -> None:
    golden = _load(path)
    model = _flax_model(path)
    if golden["flax"] is not None:
        ours, theirs = _tree_shapes(model.params), _expected_flax(golden)
        assert ours == theirs, _diff(ours, theirs)
        return
    # No HF Flax class: the flax params, converted by tandem's layout rules, must be the HF PyTorch checkpoint
    # (state_dict less HF's tied aliases, which HF does not save either).
    tandem.save_pretrained(model, tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="numpy") as f:
        ours = sorted((key, list(f.get_slice(key).get_shape())) for key in f.keys())  # noqa: SIM118
    theirs = [(k, s) for k, s in _as_pairs(golden["torch"]) if k not in golden["torch_tied"]]
    assert ours == theirs, _diff(ours, theirs, "HF PyTorch")


@pytest.mark.parametrize("path", MANIFESTS, ids=IDS)
def test_flax_module_init_matches_hf(path: Path) -> None:
    """``model.module.init`` (what a flax user calls) declares HF Flax's tree too, not only ``.params``."""
    golden = _load(path)
    model = _flax_model(path)
    ids = np.ones((1, 2, 4) if golden["task"] == "multiple_choice" else (1, 4), np.int32)  # (B, [C,] S)
    inputs = {"input_ids": ids, "attention_mask": None, "token_type_ids": None}
    inputs |= {"position_ids": None, "inputs_embeds": None}
    shapes = jax.eval_shape(lambda: model.module.init(jax.random.key(0), inputs))
    ours = _tree_shapes(shapes["params"])
    theirs = _tree_shapes(model.params) if golden["flax"] is None else _expected_flax(golden)
    assert ours == theirs, _diff(ours, theirs, "HF" if golden["flax"] is not None else ".params")
