"""The ``tandem`` command: parity (small models and checkpoints), inspect, and its error handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tandem
from tandem.core import FAMILIES
from tandem.core.params import count_params
from tandem.tools import parity
from tandem.tools.cli import main

SMALL = parity.small_config(FAMILIES["bert"])  # max_position_embeddings 40


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "mlm"
    tandem.save_pretrained(tandem.build(SMALL, task="masked_lm", seed=3), path)
    return path


def test_parity_small_model_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parity", "--family", "bert", "--task", "token_classification"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("bert "))
    assert row[:2] == ["bert", "token_classification"]
    assert row[-1] == "ok"
    assert float(row[2]) <= 1e-5  # torch vs flax
    assert row[3] == "n/a" or float(row[3]) <= 1e-5  # vs HF PyTorch, when transformers<5 is installed
    assert "1/1 within tolerance" in out


def test_parity_checkpoint_json_exits_1_beyond_tolerance(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["parity", str(checkpoint), "--json", "--batch", "3", "--length", "12", "--tol", "1e-30"]
    assert main(argv) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    (result,) = report["results"]
    assert (result["family"], result["task"], result["ok"], result["error"]) == ("bert", "masked_lm", False, None)
    assert 0 < result["torch_vs_flax"]["max_abs_diff"] <= 1e-5
    assert set(result["ms_per_forward"]) >= {"torch", "flax"}


def test_table_reports_failures_and_errors() -> None:
    results = [
        parity.ParityResult("bert", "base", 1e-5, parity.Diff(2e-5, "hidden_states.1"), None, {"torch": 1.0}),
        parity.failed("bert", "masked_lm", 1e-5, ValueError("bad config\nsecond line")),
        parity.ParityResult("bert", "causal_lm", 1e-5, parity.Diff(1e-6, "logits"), parity.Diff(2e-6, "logits")),
    ]
    table = parity.format_table(results, None)
    assert "FAIL bert base: 2.00e-05 at hidden_states.1" in table
    assert "FAIL bert masked_lm: ValueError: bad config" in table
    assert "1/3 within tolerance" in table
    assert parity.json_report(results, None)["ok"] is False


def test_max_abs_diff_names_the_worst_output_and_missing_ones() -> None:
    a = {"logits": np.zeros((2, 3), np.float32), "hidden_states.0": np.ones(4, np.float32)}
    b = {"logits": np.full((2, 3), 0.5, np.float32), "hidden_states.0": np.ones(4, np.float32)}
    assert parity.max_abs_diff(a, b) == parity.Diff(0.5, "logits")
    assert parity.max_abs_diff(a, {"logits": a["logits"]}).value == float("inf")
    nan = {**b, "logits": np.full((2, 3), np.nan, np.float32)}
    assert parity.max_abs_diff(a, nan) == parity.Diff(float("inf"), "logits")


def test_make_batch_pads_rows_and_has_two_segments() -> None:
    batch = parity.make_batch(SMALL, "masked_lm", batch=3, length=12)
    assert batch["attention_mask"].sum(axis=1).tolist() == [12, 10, 8]
    assert set(np.unique(batch["token_type_ids"])) == {0, 1}
    assert (batch["input_ids"][batch["attention_mask"] == 0] == SMALL.pad_token_id).all()
    assert parity.make_batch(SMALL, "multiple_choice", batch=3, length=12)["input_ids"].shape == (3, 2, 12)


def test_inspect_checkpoint(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    graph = tandem.build_graph(tandem.config_from_hf(checkpoint), "masked_lm")
    assert '"architectures": [\n    "BertForMaskedLM"' in out
    assert "cls.predictions" in out
    assert f"total parameters: {count_params(graph):,}" in out


def test_inspect_config_file_with_task(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(checkpoint / "config.json"), "--task", "question_answering"]) == 0
    assert "qa_outputs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["parity", "{missing}"],
        ["inspect", "{missing}"],
        ["inspect", "{checkpoint}", "--task", "no_such_task"],
        ["parity", "{checkpoint}", "--length", "65"],  # beyond max_position_embeddings
        ["parity", "--family", "bert", "--task", "no_such_task"],
    ],
)
def test_errors_are_one_message_and_exit_2(
    argv: list[str], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(missing=tmp_path / "missing", checkpoint=checkpoint) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"tandem {argv[0]}: error: ")
    assert "Traceback" not in captured.err
    assert captured.out == ""
