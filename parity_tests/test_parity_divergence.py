"""``tandem parity`` names the first graph node where two implementations diverge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tandem
from tandem.core import FAMILIES, build_graph
from tandem.tools import parity
from tandem.tools.convert import convert

# family, task, the first output that differs, the node it must be reported at
CASES = {
    "embeddings": ("bert", "masked_lm", "hidden_states.0", "bert.embeddings"),
    "attention": ("bert", "base", "attentions.1", "encoder.layer.1 attention"),
    "layer": ("bert", "masked_lm", "hidden_states.2", "bert.encoder.layer.1"),
    "pooler": ("bert", "pretraining", "pooler_output", "bert.pooler"),
    "head": ("bert", "pretraining", "seq_relationship_logits", "cls.seq_relationship"),
    "split head": ("bert", "question_answering", "end_logits", "qa_outputs"),
    "embedding projection": ("albert", "base", "hidden_states.0", "encoder.embedding_hidden_mapping_in"),
    # 4 layers in 2 groups of 2 inner layers: hidden_states.2 is the output of group 0's second run
    "shared layer": ("albert", "base", "hidden_states.2", "encoder.albert_layer_groups.0.albert_layers.1 (run 2 of 2)"),
    "conv layer": ("squeezebert", "masked_lm", "attentions.0", "transformer.encoder.layers.0 attention"),
    "final norm": ("roberta-prelayernorm", "masked_lm", "last_hidden_state", "roberta_prelayernorm.LayerNorm"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_first_divergence_names_the_node(case: tuple[str, str, str, str]) -> None:
    """Every output from ``first`` on differs (as an error propagates); the report names ``first``'s node."""
    family, task, first, node = case
    graph = build_graph(parity.small_config(FAMILIES[family], task), task)
    order = [output for output, _ in parity.forward_order(graph)]
    a = {output: np.zeros(3, np.float32) for output in order}
    b = {output: np.full(3, 1e-3 if i >= order.index(first) else 0.0, np.float32) for i, output in enumerate(order)}
    found = parity.first_divergence(graph, a, b, 1e-5, "torch vs flax")
    assert found is not None and found.where == f"{node} ({first}, torch vs flax)"
    assert parity.first_divergence(graph, a, a, 1e-5, "torch vs flax") is None


def test_compare_reports_where_a_broken_weight_first_shows() -> None:
    config = parity.small_config(FAMILIES["bert"], "masked_lm")
    torch_model = tandem.build(config, task="masked_lm", backend="torch", seed=0)
    flax_model = tandem.build(config, task="masked_lm", backend="flax", seed=0)
    bias = np.array(flax_model.params["bert"]["encoder"]["layer"]["1"]["output"]["dense"]["bias"])
    bias[0] += 0.5  # one entry: a uniform shift would vanish in the LayerNorm that follows
    flax_model.params["bert"]["encoder"]["layer"]["1"]["output"]["dense"]["bias"] = bias
    with parity.strict_numerics():
        result = parity.compare(torch_model, flax_model, parity.make_batch(config, "masked_lm"), repeats=1)
    assert not result.ok
    assert result.diverges_at is not None
    assert result.diverges_at.where == "bert.encoder.layer.1 (hidden_states.2, torch vs flax)"
    assert result.to_dict()["first_divergence"]["output"] == result.diverges_at.where
    assert "first diverges at bert.encoder.layer.1" in parity.format_table([result], None)


def test_parity_of_a_flax_checkpoint_has_the_hf_reference(tmp_path: Path) -> None:
    """HF PyTorch does not read flax_model.msgpack: the reference gets the same weights another way."""
    config = parity.small_config(FAMILIES["bert"], "masked_lm")
    tandem.save_pretrained(tandem.build(config, task="masked_lm", backend="torch", seed=0), tmp_path / "pt")
    convert(tmp_path / "pt", tmp_path / "flax", to="flax")
    with parity.strict_numerics():
        result = parity.checkpoint_parity(tmp_path / "flax")
    assert result.ok and result.vs_reference is not None, result.to_dict()
