"""The architecture's invariants, checked on the source tree: what may import what, who knows families,
one registry per backend covering the same node kinds, files of a readable size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tandem.backends.flax import nodes as flax_nodes
from tandem.backends.torch import nodes as torch_nodes
from tandem.core import nodes as n
from tandem.core.call import Runtime
from tandem.core.families import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500


def test_core_imports_no_framework() -> None:
    code = (
        "import sys, tandem.core, tandem.core.call, tandem.core.checkpoint; "
        "print(sorted({'torch', 'jax', 'flax'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"tandem.core imported {out}"


def test_backends_name_no_family() -> None:
    names = set(FAMILIES) | {"bigbird", "big bird"}
    offenders = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in sorted((ROOT / "backends").rglob("*.py"))
        for i, line in enumerate(path.read_text().lower().splitlines(), 1)
        if any(name in line for name in names)
    ]
    assert not offenders, "family names in backends/:\n" + "\n".join(offenders)


def test_backends_register_the_same_node_kinds() -> None:
    assert set(torch_nodes.IMPLS) == set(flax_nodes.IMPLS)
    assert all(
        issubclass(kind, (n.Node, n.CrossEntropyLoss, n.ClassificationLoss, n.SpanLoss, n.BinaryCrossEntropyLoss))
        for kind in torch_nodes.IMPLS
    )


def test_every_head_and_loss_kind_is_registered() -> None:
    kinds = {*n.Head.__args__[0].__args__, *n.Loss.__args__[0].__args__}  # the discriminated unions' members
    assert kinds <= set(torch_nodes.IMPLS), sorted(k.__name__ for k in kinds - set(torch_nodes.IMPLS))


def test_every_head_kind_declares_its_outputs() -> None:
    """The call plan checks labels against the heads' outputs: a head kind without them would go unchecked."""
    heads = n.Head.__args__[0].__args__
    assert [h.__name__ for h in heads if h.outputs is n.Node.outputs] == []


def test_a_missing_node_kind_names_kind_and_path() -> None:
    runtime = Runtime("torch", {}, ops=None, ctx=None)
    node = n.Pooler(path="pooler", dense=n.Linear(in_features=2, out_features=2))
    with pytest.raises(
        NotImplementedError, match=r"torch backend has no implementation of node kind 'pooler' .*at bert\.pooler"
    ):
        runtime(node, "bert.pooler")


@pytest.mark.parametrize("folder", ["core", "backends"])
def test_files_stay_readable(folder: str) -> None:
    long = {
        str(path.relative_to(ROOT)): count
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("backend", ["torch", "flax", "nnx"])
def test_model_wrappers_are_thin(backend: str) -> None:
    lines = len((ROOT / "backends" / backend / "model.py").read_text().splitlines())
    assert lines < 200, f"backends/{backend}/model.py has {lines} lines: orchestration belongs in core/call.py"
