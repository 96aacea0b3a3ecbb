"""The sharding rules of tandem.core.sharding: presets, user rules, divisibility fallback, both layouts."""

from __future__ import annotations

import math
import warnings

import pytest

from tandem.core.families import build_graph
from tandem.core.families.albert import AlbertConfig
from tandem.core.families.bert import BertConfig
from tandem.core.families.squeezebert import SqueezeBertConfig
from tandem.core.params import param_entries
from tandem.core.sharding import ShardingWarning, bytes_per_device, parallel_style, resolve

# Sizes chosen so that everything divides 2 and 4 except the vocabulary (30 = 2 x 15).
BERT = BertConfig(
    vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
    max_position_embeddings=32, type_vocab_size=2,
)  # fmt: skip
MESH = {"data": 2, "model": 4}
LAYER = "bert.encoder.layer.0."


def _resolve(config: object, task: str, rules: object, mesh: dict[str, int] = MESH) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShardingWarning)
        return resolve(param_entries(build_graph(config, task)), mesh, rules)


def test_tp_is_megatron_column_then_row() -> None:
    specs = _resolve(BERT, "masked_lm", "tp")
    for name in ("query", "key", "value"):
        assert specs[f"{LAYER}attention.self.{name}.weight"].torch == ("model", None)  # column-parallel
        assert specs[f"{LAYER}attention.self.{name}.bias"].torch == ("model",)
    assert specs[f"{LAYER}attention.output.dense.weight"].torch == (None, "model")  # row-parallel
    assert specs[f"{LAYER}attention.output.dense.bias"].torch == (None,)
    assert specs[f"{LAYER}intermediate.dense.weight"].torch == ("model", None)
    assert specs[f"{LAYER}output.dense.weight"].torch == (None, "model")
    assert specs[f"{LAYER}output.LayerNorm.weight"].torch == (None,)
    # flax kernels are (in, out): the same split, transposed
    assert specs[f"{LAYER}attention.self.query.weight"].flax == (None, "model")
    assert specs[f"{LAYER}output.dense.weight"].flax == ("model", None)


def test_vocabulary_parallel_only_where_the_size_divides() -> None:
    with pytest.warns(ShardingWarning) as record:
        specs = resolve(param_entries(build_graph(BERT, "masked_lm")), MESH, "tp")
    assert len(record) == 1  # once per call, listing every parameter
    message = str(record[0].message)
    assert "bert.embeddings.word_embeddings.weight (30, 16) over model" in message
    assert "cls.predictions.bias (30,) over model" in message
    assert specs["bert.embeddings.word_embeddings.weight"].torch == (None, None)
    divisible = BERT.model_copy(update={"vocab_size": 32})
    specs = _resolve(divisible, "masked_lm", "tp")
    assert specs["bert.embeddings.word_embeddings.weight"].torch == ("model", None)
    assert specs["cls.predictions.bias"].torch == ("model",)


def test_fsdp_splits_the_first_dimension_that_divides() -> None:
    specs = _resolve(BERT, "masked_lm", "fsdp", {"data": 4})
    assert specs[f"{LAYER}attention.self.query.weight"].torch == ("data", None)
    assert specs[f"{LAYER}attention.self.query.weight"].flax == (None, "data")
    assert specs["bert.embeddings.token_type_embeddings.weight"].torch == (None, "data")  # 2 rows, 16 features
    assert specs["bert.embeddings.word_embeddings.weight"].torch == (None, "data")  # 30 rows
    assert specs[f"{LAYER}output.LayerNorm.bias"].torch == ("data",)


def test_fsdp_tp_uses_both_axes_once_per_parameter() -> None:
    specs = _resolve(BERT, "masked_lm", "fsdp_tp")
    assert specs[f"{LAYER}attention.self.query.weight"].torch == ("model", "data")
    assert specs[f"{LAYER}attention.output.dense.weight"].torch == ("data", "model")
    assert specs[f"{LAYER}intermediate.dense.weight"].flax == ("data", "model")
    assert specs["bert.embeddings.word_embeddings.weight"].torch == ("data", None)  # 30 % 4: vocab falls to data
    for spec in specs.values():
        named = [axis for axis in spec.torch if axis is not None]
        assert len(named) == len(set(named)), spec


def test_a_1d_mesh_takes_the_presets_axes_it_has() -> None:
    assert _resolve(BERT, "base", "fsdp_tp", {"data": 8}) == _resolve(BERT, "base", "fsdp", {"data": 8})
    with pytest.raises(
        ValueError, match=r"rules='tp' shards over mesh axes \['model'\]; the mesh has axes \('data',\)"
    ):
        resolve(param_entries(build_graph(BERT, "base")), {"data": 8}, "tp")


def test_user_rules() -> None:
    rules = [("mlp", "model"), ("heads", None), ("embed", "data")]
    specs = _resolve(BERT, "masked_lm", rules)
    assert specs[f"{LAYER}intermediate.dense.weight"].torch == ("model", "data")
    assert specs[f"{LAYER}attention.self.query.weight"].torch == (None, "data")  # heads replicated explicitly
    assert specs["bert.embeddings.position_embeddings.weight"].torch == (None, "data")  # positions: no rule
    assert _resolve(BERT, "masked_lm", [])[f"{LAYER}intermediate.dense.weight"].torch == (None, None)


@pytest.mark.parametrize(
    ("rules", "error"),
    [
        ("zero", r"rules must be one of \['fsdp', 'fsdp_tp', 'tp'\]"),
        ([("hidden", "data")], r"rules\[0\]: unknown logical axis 'hidden'"),
        ([("mlp", "model"), ("embed", "x")], r"rules\[1\]: mesh axis 'x' is not an axis of the mesh"),
        ([("mlp",)], r"rules\[0\] must be a \(logical axis, mesh axis or None\) pair"),
        (3, "rules must be a preset name or a sequence of pairs, got int"),
    ],
)
def test_bad_rules_are_named(rules: object, error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        resolve(param_entries(build_graph(BERT, "base")), MESH, rules)


def test_shared_group_and_grouped_convolution() -> None:
    albert = AlbertConfig(
        vocab_size=32, embedding_size=8, hidden_size=16, num_hidden_layers=4, num_hidden_groups=1,
        num_attention_heads=4, intermediate_size=24, max_position_embeddings=32,
    )  # fmt: skip
    specs = _resolve(albert, "masked_lm", "fsdp_tp")
    shared = "albert.encoder.albert_layer_groups.0.albert_layers.0."
    assert specs[f"{shared}attention.query.weight"].torch == ("model", "data")
    assert specs[f"{shared}ffn_output.weight"].torch == ("data", "model")
    assert specs["albert.embeddings.word_embeddings.weight"].torch == ("model", "data")  # (vocab, embed_factor)
    squeeze = SqueezeBertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
        embedding_size=16, max_position_embeddings=32, q_groups=2, k_groups=2, v_groups=2, post_attention_groups=2,
        intermediate_groups=2, output_groups=2,
    )  # fmt: skip
    specs = _resolve(squeeze, "masked_lm", "tp")
    conv = "transformer.encoder.layers.0.attention.query.weight"
    assert specs[conv].torch == ("model", None, None)  # (out, in/groups, 1): output channels split
    assert specs[conv].flax == (None, None, "model")  # flax kernel (1, in/groups, out)


def test_parallel_style_and_bytes_per_device() -> None:
    divisible = BERT.model_copy(update={"vocab_size": 32})
    entries = {e.key: e for e in param_entries(build_graph(divisible, "masked_lm"))}
    specs = _resolve(divisible, "masked_lm", "tp")
    style = {key: parallel_style(entries[key], specs[key]) for key in entries}
    assert style[f"{LAYER}attention.self.query.weight"] == "colwise"
    assert style[f"{LAYER}output.dense.weight"] == "rowwise"
    assert style["bert.embeddings.word_embeddings.weight"] == "rowwise"  # vocabulary-parallel embedding
    assert style[f"{LAYER}attention.self.query.bias"] is None
    assert style["cls.predictions.transform.dense.weight"] is None
    expected = sum(
        math.prod(e.spec.shape) // math.prod(MESH[a] for a in specs[k].torch if a is not None)
        for k, e in entries.items()
    )
    assert bytes_per_device(list(entries.values()), specs, MESH, itemsize=2) == 2 * expected
    replicated = _resolve(BERT, "masked_lm", [])
    assert bytes_per_device(list(entries.values()), replicated, MESH) == 4 * sum(
        math.prod(e.spec.shape) for e in entries.values()
    )
