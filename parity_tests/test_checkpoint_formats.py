"""Checkpoint formats and ``tandem convert``: every HF format x family x direction, loaded back in HF.

Sources are written by HF itself: ``save_pretrained`` of HF PyTorch models (safetensors and
``pytorch_model.bin``, single and sharded), ``torch.save``'s legacy layout, and HF Flax's
``save_pretrained`` (msgpack single and sharded, and HF Flax's safetensors) of params made by HF's own
PyTorch -> Flax conversion. SqueezeBERT has no HF Flax class: its flax format is checked through our own
round trip. Conversions are loaded back with HF PyTorch and HF Flax and compared bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
import subprocess
import sys
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file, save_file
from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

import tandem
from tandem.backends import load_backend
from tandem.core import build_graph, config_from_hf, param_entries
from tandem.core import io as fmt
from tandem.core.checkpoint import match_weights, read_weights, save_checkpoint
from tandem.core.io import _tensors
from tandem.tools.cli import main
from tandem.tools.convert import ProgressBar, convert

SMALL = {
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 24,
    "max_position_embeddings": 24,
}
GROUPS = {f"{name}_groups": 2 for name in ("q", "k", "v", "post_attention", "intermediate", "output")}


@dataclass(frozen=True)
class FamilyCase:
    config: type[transformers.PretrainedConfig]
    kwargs: dict[str, Any]
    torch_class: str  # the masked-LM head class: prefixed base, head params and tied aliases
    flax_class: str | None  # None: HF has no Flax implementation


FAMILY_CASES = {
    "bert": FamilyCase(transformers.BertConfig, {}, "BertForMaskedLM", "FlaxBertForMaskedLM"),
    "albert": FamilyCase(
        transformers.AlbertConfig, {"embedding_size": 8}, "AlbertForMaskedLM", "FlaxAlbertForMaskedLM"
    ),
    "big_bird": FamilyCase(
        transformers.BigBirdConfig,
        {"block_size": 2, "num_random_blocks": 1},
        "BigBirdForMaskedLM",
        "FlaxBigBirdForMaskedLM",
    ),
    "squeezebert": FamilyCase(
        transformers.SqueezeBertConfig, {"embedding_size": 16, **GROUPS}, "SqueezeBertForMaskedLM", None
    ),
}
TORCH_SOURCES = ("safetensors", "safetensors-sharded", "bin", "bin-sharded", "bin-legacy")
FLAX_SOURCES = ("msgpack", "msgpack-sharded", "flax-safetensors")
SHARD = "3KB"
pytestmark = pytest.mark.filterwarnings("ignore:TensorFlow and JAX classes are deprecated")


@dataclass
class Source:
    """One family's HF model and its checkpoint in every format HF writes."""

    family: str
    hf: torch.nn.Module
    state: dict[str, np.ndarray]  # HF PyTorch's state dict, aliases and buffers included
    flax: dict[str, np.ndarray] = field(default_factory=dict)  # HF Flax params ("/" paths), when HF has Flax
    flax_absent: set[str] = field(default_factory=set)  # our keys HF Flax's class lacks (BigBird MLM: pooler)
    dirs: dict[str, Path] = field(default_factory=dict)


def _hf_flax_params(case: FamilyCase, hf: torch.nn.Module) -> tuple[Any, dict[str, Any]]:
    """HF Flax's model (uninitialised) and the params HF's own PyTorch -> Flax conversion makes of ``hf``."""
    model = getattr(transformers, case.flax_class)(hf.config, _do_init=False)
    stand_in = types.SimpleNamespace(  # what the converter reads of a model: the shape tree stands in for params
        params=model.params_shape_tree, base_model_prefix=model.base_model_prefix, config=model.config
    )
    params = convert_pytorch_state_dict_to_flax({k: v for k, v in hf.state_dict().items()}, stand_in)
    expected = flatten_dict(model.params_shape_tree)
    # As HF's from_pretrained does, keep only the params the Flax model has (no tied decoder).
    kept = {key: np.asarray(value) for key, value in flatten_dict(params).items() if key in expected}
    return model, kept


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    root = tmp_path_factory.mktemp("formats")
    out = {}
    for family, case in FAMILY_CASES.items():
        torch.manual_seed(0)
        hf = getattr(transformers, case.torch_class)(case.config(**SMALL, **case.kwargs)).eval()
        source = Source(family, hf, {k: v.numpy().copy() for k, v in hf.state_dict().items()})
        base = root / family
        hf.save_pretrained(base / "safetensors")
        hf.save_pretrained(base / "safetensors-sharded", max_shard_size=SHARD)
        hf.save_pretrained(base / "bin", safe_serialization=False)
        hf.save_pretrained(base / "bin-sharded", safe_serialization=False, max_shard_size=SHARD)
        legacy = base / "bin-legacy"
        legacy.mkdir()
        shutil.copy(base / "bin" / "config.json", legacy)
        torch.save(hf.state_dict(), legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
        source.dirs = {name: base / name for name in TORCH_SOURCES}
        if case.flax_class is not None:
            model, params = _hf_flax_params(case, hf)
            tree = dict(sorted(params.items()))  # jax's pytree order, as HF's own from_pt params have it
            model.save_pretrained(base / "msgpack", params=unflatten_dict(tree))
            model.save_pretrained(base / "msgpack-sharded", params=unflatten_dict(tree), max_shard_size=SHARD)
            model.save_pretrained(base / "flax-safetensors", params=unflatten_dict(tree), safe_serialization=True)
            source.flax = {"/".join(k): v for k, v in params.items()}
            entries = param_entries(build_graph(config_from_hf(base / "safetensors"), "masked_lm"))
            source.flax_absent = {e.key for e in entries if "/".join(e.flax_path) not in source.flax}
            source.dirs |= {name: base / name for name in FLAX_SOURCES}
        else:  # no HF Flax: our own msgpack, checked by the round trips below
            convert(base / "safetensors", base / "msgpack", to="flax")
            convert(base / "safetensors", base / "msgpack-sharded", to="flax", max_shard_size=SHARD)
            source.dirs |= {"msgpack": base / "msgpack", "msgpack-sharded": base / "msgpack-sharded"}
        out[family] = source
    return out


def _cases(formats: tuple[str, ...]) -> list[tuple[str, str]]:
    return [
        (family, name)
        for family, case in FAMILY_CASES.items()
        for name in formats
        if case.flax_class is not None or name != "flax-safetensors"
    ]


ALL_SOURCES = _cases(TORCH_SOURCES + FLAX_SOURCES)


def _ids(cases: list[tuple[str, str]]) -> list[str]:
    return [f"{family}-{name}" for family, name in cases]


def _canonical(source: Source, source_format: str = "safetensors") -> dict[str, np.ndarray]:
    """HF PyTorch's weights under our canonical keys (no aliases, no buffers), as far as ``source_format``
    holds them (an HF Flax file lacks ``flax_absent``)."""
    graph = build_graph(config_from_hf(source.dirs["safetensors"]), "masked_lm")
    absent = source.flax_absent if source_format in FLAX_SOURCES else set()
    return {e.key: source.state[e.key] for e in param_entries(graph) if e.key not in absent}


def _assert_same(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert sorted(ours) == sorted(reference)
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype, key
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


def _hf_torch_state(directory: Path, source: Source, **kwargs: Any) -> dict[str, np.ndarray]:
    model = getattr(transformers, FAMILY_CASES[source.family].torch_class).from_pretrained(directory, **kwargs)
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in model.state_dict().items()}


def _hf_flax_params_loaded(directory: Path, source: Source) -> dict[str, np.ndarray]:
    """Params as HF Flax loads them from ``directory``, checked against the tree HF Flax expects."""
    cls = getattr(transformers, FAMILY_CASES[source.family].flax_class)
    model, params = cls.from_pretrained(directory, _do_init=False)
    loaded = {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}
    expected = {"/".join(k): v.shape for k, v in flatten_dict(model.params_shape_tree).items()}
    assert {k: v.shape for k, v in loaded.items()} == expected
    return loaded


# ------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize(("family", "source_format"), ALL_SOURCES, ids=_ids(ALL_SOURCES))
def test_reads_every_hf_format(family: str, source_format: str, sources: dict[str, Source]) -> None:
    """Each format HF writes loads to exactly HF PyTorch's weights (through from_pretrained's matching)."""
    source = sources[family]
    directory = source.dirs[source_format]
    config = config_from_hf(directory)
    graph = build_graph(config, "masked_lm")
    expected = _canonical(source, source_format)
    absent = sorted(set(_canonical(source)) - set(expected))  # the pooler HF Flax's class lacks
    with pytest.warns(UserWarning, match=r"newly initialised .*pooler") if absent else contextlib.nullcontext():
        weights, report = match_weights(graph, config, read_weights(directory), "masked_lm")
    assert not (report.unused or report.mismatched)
    assert sorted(report.initialised) == absent
    _assert_same({k: weights[k] for k in expected}, expected)


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_from_pretrained_loads_sharded_and_legacy_formats(backend: str, sources: dict[str, Source]) -> None:
    source = sources["bert"]
    for source_format in ("bin-legacy", "msgpack-sharded", "flax-safetensors"):
        model = tandem.from_pretrained(source.dirs[source_format], backend=backend)
        _assert_same(load_backend(backend).export(model), _canonical(source))


def test_tf_era_layer_norm_names_are_accepted(sources: dict[str, Source], tmp_path: Path) -> None:
    source = sources["bert"]
    shutil.copytree(source.dirs["safetensors"], tmp_path / "tf")
    state = load_file(tmp_path / "tf" / "model.safetensors")
    state = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
    }
    assert any(k.endswith("gamma") for k in state)
    save_file(state, tmp_path / "tf" / "model.safetensors", metadata={"format": "pt"})
    model = tandem.from_pretrained(tmp_path / "tf", backend="torch")
    np.testing.assert_array_equal(
        model.state_dict()["bert.embeddings.LayerNorm.weight"].numpy(), source.state["bert.embeddings.LayerNorm.weight"]
    )
    report = convert(tmp_path / "tf", tmp_path / "out", to="torch")
    assert report.tensors == len(_canonical(source))
    _assert_same(load_file(tmp_path / "out" / "model.safetensors"), _canonical(source))


# ---------------------------------------------------------------------------------------- conversion
@pytest.mark.parametrize(("family", "source_format"), ALL_SOURCES, ids=_ids(ALL_SOURCES))
def test_convert_to_torch_loads_in_hf(
    family: str, source_format: str, sources: dict[str, Source], tmp_path: Path
) -> None:
    source = sources[family]
    assert main(["convert", str(source.dirs[source_format]), str(tmp_path / "out"), "--to", "torch", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    loaded = _hf_torch_state(tmp_path / "out", source)
    expected = _canonical(source, source_format)
    _assert_same({k: loaded[k] for k in expected}, expected)


@pytest.mark.parametrize(("family", "source_format"), ALL_SOURCES, ids=_ids(ALL_SOURCES))
def test_convert_to_flax_gives_hf_flax_params(
    family: str, source_format: str, sources: dict[str, Source], tmp_path: Path
) -> None:
    """Read back with flax's own reader: HF Flax's params (HF Flax loading them: the tests below)."""
    source = sources[family]
    report = convert(source.dirs[source_format], tmp_path / "out", to="flax")
    assert report.files == ["flax_model.msgpack", "config.json"]
    tree = serialization.msgpack_restore((tmp_path / "out" / "flax_model.msgpack").read_bytes())
    flat = {"/".join(k): v for k, v in flatten_dict(tree).items()}
    if source.flax:  # from a torch source, also the pooler HF Flax's class lacks (HF Flax ignores it)
        _assert_same({k: flat[k] for k in source.flax}, source.flax)
        absent = set() if source_format in FLAX_SOURCES else source.flax_absent
        entries = param_entries(build_graph(config_from_hf(tmp_path / "out"), "masked_lm"))
        assert set(flat) - set(source.flax) == {"/".join(e.flax_path) for e in entries if e.key in absent}
    else:  # no HF Flax class: the declared layout rules, applied back, give HF PyTorch's weights
        entries = param_entries(build_graph(config_from_hf(tmp_path / "out"), "masked_lm"))
        assert sorted(flat) == sorted("/".join(e.flax_path) for e in entries)
        _assert_same({e.key: e.from_flax(flat["/".join(e.flax_path)]) for e in entries}, _canonical(source))


TARGETS = [
    ("torch", "bin", None),
    ("torch", "bin", SHARD),
    ("torch", "safetensors", SHARD),
    ("flax", "msgpack", SHARD),
    ("flax", "safetensors", None),
]


@pytest.mark.parametrize("family", FAMILY_CASES)
@pytest.mark.parametrize(("to", "target", "shard"), TARGETS, ids=[f"{t}-{f}-{s or 'single'}" for t, f, s in TARGETS])
def test_convert_writes_every_format(
    family: str, to: str, target: str, shard: str | None, sources: dict[str, Source], tmp_path: Path
) -> None:
    source = sources[family]
    report = convert(source.dirs["safetensors"], tmp_path / "out", to=to, format=target, max_shard_size=shard)
    names = {"bin": "pytorch_model", "safetensors": "model", "msgpack": "flax_model"}
    weight_files = [f for f in report.files if f != "config.json"]
    assert len(weight_files) > 2 if shard else weight_files == [fmt.FORMATS[target].single]
    assert all(f.startswith(names[target]) for f in weight_files)
    if to == "torch":
        loaded = _hf_torch_state(tmp_path / "out", source)
        _assert_same({k: loaded[k] for k in _canonical(source)}, _canonical(source))
    elif source.flax:
        _assert_same(_hf_flax_params_loaded(tmp_path / "out", source), source.flax)
    # and it reads back in tandem, whatever the format
    config = config_from_hf(tmp_path / "out")
    weights, _ = match_weights(build_graph(config, "masked_lm"), config, read_weights(tmp_path / "out"), "masked_lm")
    _assert_same(weights, _canonical(source))


def test_bin_output_loads_with_torch_weights_only(sources: dict[str, Source], tmp_path: Path) -> None:
    source = sources["albert"]
    convert(source.dirs["msgpack"], tmp_path / "out", to="torch", format="bin")
    state = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True, mmap=True)
    _assert_same({k: v.numpy() for k, v in state.items()}, _canonical(source))


@pytest.mark.parametrize("family", FAMILY_CASES)
def test_round_trips_are_byte_identical(family: str, sources: dict[str, Source], tmp_path: Path) -> None:
    """torch -> flax -> torch gives HF's own safetensors file back, byte for byte; flax -> torch -> flax too."""
    source = sources[family]
    convert(source.dirs["safetensors"], tmp_path / "flax", to="flax")
    convert(tmp_path / "flax", tmp_path / "torch", to="torch")
    original = (source.dirs["safetensors"] / "model.safetensors").read_bytes()
    assert (tmp_path / "torch" / "model.safetensors").read_bytes() == original
    convert(tmp_path / "torch", tmp_path / "flax2", to="flax")
    flax_bytes = (tmp_path / "flax" / "flax_model.msgpack").read_bytes()
    assert (tmp_path / "flax2" / "flax_model.msgpack").read_bytes() == flax_bytes
    if source.flax and not source.flax_absent:  # and our flax file is exactly the one HF Flax writes
        assert (source.dirs["msgpack"] / "flax_model.msgpack").read_bytes() == flax_bytes


@pytest.mark.parametrize("family", ["bert", "squeezebert"])
def test_base_model_converts_without_prefix(family: str, tmp_path: Path) -> None:
    case = FAMILY_CASES[family]
    torch.manual_seed(1)
    base_class = case.torch_class.replace("ForMaskedLM", "Model")
    hf = getattr(transformers, base_class)(case.config(**SMALL, **case.kwargs)).eval()
    hf.save_pretrained(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "flax", to="flax")
    flat = fmt.read_checkpoint(tmp_path / "flax")
    assert "embeddings/word_embeddings/embedding" in flat  # a Flax base model holds its params at the root
    if case.flax_class is not None:
        model, params = transformers.FlaxBertModel.from_pretrained(tmp_path / "flax", _do_init=False)
        assert {k for k in flatten_dict(params)} == set(flatten_dict(model.params_shape_tree))
    convert(tmp_path / "flax", tmp_path / "torch", to="torch")
    back = getattr(transformers, base_class).from_pretrained(tmp_path / "torch").state_dict()
    for key, value in hf.state_dict().items():
        np.testing.assert_array_equal(back[key].numpy(), value.numpy(), err_msg=key)


def test_checkpoint_with_more_heads_than_its_class_converts_every_tensor(tmp_path: Path) -> None:
    """bert-base-uncased declares BertForMaskedLM but holds the pretraining heads: nothing is dropped."""
    torch.manual_seed(2)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**SMALL)).eval()
    hf.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    report = convert(tmp_path / "src", tmp_path / "flax", to="flax")
    assert report.task == "masked_lm" and not report.skipped  # the pretraining heads by their own task's rules
    flat = fmt.read_checkpoint(tmp_path / "flax")
    assert "cls/seq_relationship/kernel" in flat and "bert/pooler/dense/kernel" in flat
    convert(tmp_path / "flax", tmp_path / "torch", to="torch")
    back = transformers.BertForPreTraining.from_pretrained(tmp_path / "torch").state_dict()
    for key, value in hf.state_dict().items():
        np.testing.assert_array_equal(back[key].numpy(), value.numpy(), err_msg=key)


def test_dtype_is_kept_unless_asked(sources: dict[str, Source], tmp_path: Path) -> None:
    source = sources["bert"]
    source.hf.half().save_pretrained(tmp_path / "fp16")
    source.hf.float()
    convert(tmp_path / "fp16", tmp_path / "flax16", to="flax")
    assert {v.dtype for v in fmt.read_checkpoint(tmp_path / "flax16").values()} == {np.dtype(np.float16)}
    report = convert(tmp_path / "fp16", tmp_path / "bf16", to="flax", dtype="bfloat16")
    assert {v.dtype for v in fmt.read_checkpoint(tmp_path / "bf16").values()} == {np.dtype(ml_dtypes.bfloat16)}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert report.bytes == sum(v.size * 2 for v in _canonical(source).values())
    convert(tmp_path / "bf16", tmp_path / "torch16", to="torch")
    loaded = transformers.BertForMaskedLM.from_pretrained(tmp_path / "torch16", torch_dtype=torch.bfloat16)
    embedding = loaded.state_dict()["bert.embeddings.word_embeddings.weight"]
    assert embedding.dtype == torch.bfloat16
    expected = source.state["bert.embeddings.word_embeddings.weight"].astype(np.float16).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(embedding.float().numpy(), expected.astype(np.float32))
    for backend in ("torch", "flax"):  # half-precision checkpoints load (as float32, HF's default)
        tandem.from_pretrained(tmp_path / "bf16", backend=backend)


def test_companion_files_are_copied(sources: dict[str, Source], tmp_path: Path) -> None:
    shutil.copytree(sources["bert"].dirs["safetensors"], tmp_path / "src")
    (tmp_path / "src" / "vocab.txt").write_text("[PAD]\n")
    (tmp_path / "src" / "tf_model.h5").write_bytes(b"not copied")
    report = convert(tmp_path / "src", tmp_path / "out", to="flax")
    assert sorted(report.files) == ["config.json", "flax_model.msgpack", "vocab.txt"]
    assert (tmp_path / "out" / "config.json").read_bytes() == (tmp_path / "src" / "config.json").read_bytes()


# -------------------------------------------------------------------------------------------- errors
def _edited(source: Path, tmp_path: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> Path:
    target = tmp_path / "edited"
    shutil.copytree(source, target)
    state = load_file(target / "model.safetensors")
    edit(state)
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    return target


KEY_ERRORS = {
    "missing": (
        lambda s: s.pop("bert.encoder.layer.1.output.dense.bias"),
        r"missing from the checkpoint:\s+bert\.encoder\.layer\.1\.output\.dense\.bias",
    ),
    "unexpected": (
        lambda s: s.__setitem__("bert.encoder.layer.0.extra.weight", np.zeros(3, np.float32)),
        r"unexpected in the checkpoint .*:\s+bert\.encoder\.layer\.0\.extra\.weight",
    ),
    "shape": (
        lambda s: s.__setitem__("bert.encoder.layer.0.attention.self.query.weight", np.zeros((16, 8), np.float32)),
        r"bert\.encoder\.layer\.0\.attention\.self\.query\.weight: expected \(16, 16\), checkpoint has \(16, 8\)",
    ),
}


@pytest.mark.parametrize("kind", KEY_ERRORS)
def test_key_errors_name_the_key(kind: str, sources: dict[str, Source], tmp_path: Path) -> None:
    edit, message = KEY_ERRORS[kind]
    bad = _edited(sources["bert"].dirs["safetensors"], tmp_path, edit)
    with pytest.raises(tandem.CheckpointError, match=message):
        convert(bad, tmp_path / "out", to="flax")
    with pytest.raises(tandem.CheckpointError, match=message):
        tandem.from_pretrained(bad, backend="torch")
    assert not (tmp_path / "out").exists()


def test_flax_key_errors_name_the_flax_path(sources: dict[str, Source], tmp_path: Path) -> None:
    target = tmp_path / "bad"
    shutil.copytree(sources["bert"].dirs["msgpack"], target)
    tree = serialization.msgpack_restore((target / "flax_model.msgpack").read_bytes())
    tree["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"] = np.zeros((16, 4), np.float32)
    (target / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    message = r"bert/encoder/layer/0/attention/self/query/kernel: expected \(16, 16\), checkpoint has \(16, 4\)"
    with pytest.raises(tandem.CheckpointError, match=message):
        convert(target, tmp_path / "out", to="torch")
    with pytest.raises(tandem.CheckpointError, match=message):
        tandem.from_pretrained(target, backend="flax")


def test_not_strict_converts_what_fits_and_reports_the_rest(sources: dict[str, Source], tmp_path: Path) -> None:
    bad = _edited(
        sources["bert"].dirs["safetensors"],
        tmp_path,
        lambda s: (s.pop("bert.encoder.layer.1.output.dense.bias"), s.__setitem__("extra.weight", np.zeros(2))),
    )
    with pytest.warns(UserWarning, match=r"extra\.weight.*missing from the checkpoint: bert\.encoder\.layer\.1"):
        report = convert(bad, tmp_path / "out", to="flax", strict=False)
    assert report.skipped == ["extra.weight"]
    assert report.missing == ["bert.encoder.layer.1.output.dense.bias"]
    flat = fmt.read_checkpoint(tmp_path / "out")
    assert "bert/encoder/layer/1/output/dense/bias" not in flat and len(flat) == report.tensors
    with pytest.warns(
        UserWarning, match=r"newly initialised .*layer\.1\.output\.dense\.bias.*not used .*extra\.weight"
    ):
        tandem.from_pretrained(bad, backend="torch", strict=False)


def test_config_of_another_family_is_named(sources: dict[str, Source], tmp_path: Path) -> None:
    target = tmp_path / "mixed"
    shutil.copytree(sources["bert"].dirs["safetensors"], target)
    shutil.copy(sources["albert"].dirs["safetensors"] / "config.json", target / "config.json")
    message = r"model_type is 'albert', but \d+ of the checkpoint's \d+ tensors are not albert parameters"
    with pytest.raises(tandem.CheckpointError, match=message):
        convert(target, tmp_path / "out", to="flax")
    with pytest.raises(tandem.CheckpointError, match=message):
        tandem.from_pretrained(target, backend="torch")


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


CORRUPTIONS = {
    "safetensors-truncated": ("safetensors", "model.safetensors", _truncate, r"model\.safetensors is truncated"),
    "safetensors-garbage": (
        "safetensors",
        "model.safetensors",
        lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(64)),
        r"model\.safetensors has a corrupt safetensors header",
    ),
    "safetensors-empty": (
        "safetensors",
        "model.safetensors",
        lambda p: p.write_bytes(b""),
        r"model\.safetensors is empty",
    ),
    "bin-truncated": ("bin", "pytorch_model.bin", _truncate, r"pytorch_model\.bin is truncated or corrupt"),
    "bin-not-torch": (
        "bin",
        "pytorch_model.bin",
        lambda p: p.write_bytes(b"GIF89a" + bytes(100)),
        r"pytorch_model\.bin is not a torch\.save file",
    ),
    "legacy-truncated": ("bin-legacy", "pytorch_model.bin", _truncate, r"pytorch_model\.bin is truncated or corrupt"),
    "msgpack-truncated": ("msgpack", "flax_model.msgpack", _truncate, r"flax_model\.msgpack is truncated"),
    "msgpack-garbage": (
        "msgpack",
        "flax_model.msgpack",
        lambda p: p.write_bytes(b"\xc1" + bytes(10)),
        r"flax_model\.msgpack is not a flax msgpack checkpoint",
    ),
    "shard-missing": (
        "safetensors-sharded",
        "model-00002-of-*.safetensors",
        lambda p: p.unlink(),
        r"lists the shard model-00002-of-\d+\.safetensors, which is missing",
    ),
    "index-corrupt": (
        "msgpack-sharded",
        "flax_model.msgpack.index.json",
        lambda p: p.write_text("{"),
        r"flax_model\.msgpack\.index\.json is not a valid checkpoint index",
    ),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_files_are_named(kind: str, sources: dict[str, Source], tmp_path: Path) -> None:
    source_format, file, damage, message = CORRUPTIONS[kind]
    target = tmp_path / "damaged"
    shutil.copytree(sources["bert"].dirs[source_format], target)
    damage(next(target.glob(file)))
    with pytest.raises(tandem.CheckpointError, match=message):
        convert(target, tmp_path / "out", to="flax" if source_format.startswith(("safetensors", "bin")) else "torch")
    with pytest.raises(tandem.CheckpointError, match=message):
        tandem.from_pretrained(target, backend="torch")


def test_unknown_formats_are_named(sources: dict[str, Source], tmp_path: Path) -> None:
    (tmp_path / "tf").mkdir()
    shutil.copy(sources["bert"].dirs["safetensors"] / "config.json", tmp_path / "tf")
    (tmp_path / "tf" / "tf_model.h5").write_bytes(b"\x89HDF")
    with pytest.raises(tandem.CheckpointError, match=r"format tandem does not read \(tf_model\.h5\)"):
        convert(tmp_path / "tf", tmp_path / "out", to="flax")
    (tmp_path / "tf" / "tf_model.h5").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model weights in .*model\.safetensors"):
        tandem.from_pretrained(tmp_path / "tf", backend="torch")
    with pytest.raises(ValueError, match="unknown checkpoint format 'onnx'"):
        read_weights(sources["bert"].dirs["safetensors"], "onnx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flax checkpoints are written as msgpack or safetensors, not bin"):
        convert(sources["bert"].dirs["safetensors"], tmp_path / "out", to="flax", format="bin")


class _Marker:
    """Unpickling this would call ``print``: a .bin must never get that far."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("code ran",))


def test_bin_that_would_run_code_is_refused(sources: dict[str, Source], tmp_path: Path, capsys: Any) -> None:
    target = tmp_path / "evil"
    shutil.copytree(sources["bert"].dirs["bin"], target)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": _Marker()}, protocol=2))
        archive.writestr("archive/version", "3\n")
    (target / "pytorch_model.bin").write_bytes(buffer.getvalue())
    with pytest.raises(tandem.CheckpointError, match=r"pytorch_model\.bin refers to (__builtin__|builtins)\.print"):
        read_weights(target)
    assert "code ran" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- atomicity
def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["failure", "interrupt"])
@pytest.mark.parametrize("target", ["safetensors", "msgpack", "bin"])
def test_a_failed_write_leaves_nothing_behind(
    error: BaseException, target: str, sources: dict[str, Source], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = sources["bert"]
    to = "flax" if target == "msgpack" else "torch"
    existing = tmp_path / "existing"
    convert(source.dirs["safetensors-sharded"], existing, to=to, format=target, max_shard_size=SHARD)
    before = _snapshot(existing)
    written = []
    real = _tensors.materialise

    def failing(name: str, tensor: Any) -> np.ndarray:
        if len(written) == 5:  # mid-file, after some tensors were written
            raise error
        written.append(name)
        return real(name, tensor)

    monkeypatch.setattr(_tensors, "materialise", failing)
    with pytest.raises(type(error)):
        convert(source.dirs["safetensors"], existing, to=to, format=target)
    assert _snapshot(existing) == before  # the old sharded checkpoint is untouched, no temporary left
    written.clear()
    with pytest.raises(type(error)):
        convert(source.dirs["safetensors"], tmp_path / "new" / "dir", to=to, format=target)
    assert not (tmp_path / "new").exists()


def test_overwriting_replaces_an_older_checkpoint(sources: dict[str, Source], tmp_path: Path) -> None:
    source = sources["bert"]
    convert(source.dirs["safetensors"], tmp_path / "out", to="torch", max_shard_size=SHARD)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    convert(source.dirs["safetensors"], tmp_path / "out", to="torch")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]


def test_save_pretrained_writes_every_format(sources: dict[str, Source], tmp_path: Path) -> None:
    model = tandem.from_pretrained(sources["albert"].dirs["safetensors"], backend="torch")
    weights = load_backend("torch").export(model)
    for target in ("safetensors", "bin", "msgpack"):
        save_checkpoint(tmp_path / target, model.config, "masked_lm", weights, format=target, max_shard_size=SHARD)
        config = config_from_hf(tmp_path / target)
        back, _ = match_weights(build_graph(config, "masked_lm"), config, read_weights(tmp_path / target), None)
        _assert_same(back, _canonical(sources["albert"]))


# ----------------------------------------------------------------------------------------- command line
def test_cli_convert_reports_and_fails_cleanly(sources: dict[str, Source], tmp_path: Path, capsys: Any) -> None:
    source = sources["bert"].dirs["safetensors"]
    assert main(["convert", str(source), str(tmp_path / "out"), "--to", "flax"]) == 0
    out = capsys.readouterr()
    assert "42 tensors" in out.out and out.err == ""
    assert main(["convert", str(source), str(tmp_path / "out2"), "--to", "flax", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out3"), "--to", "torch"]) == 2
    assert "tandem convert: error: no config.json" in capsys.readouterr().err
    assert not (tmp_path / "out3").exists()


def test_progress_bar_draws_to_the_end() -> None:
    stream = io.StringIO()
    bar = ProgressBar(4_000_000, stream, width=10)
    bar("a", 2_000_000)
    bar("b", 2_000_000)
    assert stream.getvalue().endswith("[##########]      4.0 / 4.0 MB\n")
    assert stream.getvalue().startswith("\r[#####.....]")


@pytest.mark.parametrize(
    ("text", "size"), [("500MB", 500 * 10**6), ("5GB", 5 * 10**9), ("2GiB", 2 * 2**30), ("1.5KB", 1500), (7, 7)]
)
def test_parse_size(text: str | int, size: int) -> None:
    assert fmt.parse_size(text) == size


def test_conversion_imports_no_framework(sources: dict[str, Source], tmp_path: Path) -> None:
    code = (
        "import sys\nfrom tandem.tools.convert import convert\n"
        f"convert({str(sources['bert'].dirs['bin'])!r}, {str(tmp_path / 'out')!r}, to='flax')\n"
        "assert not {'torch', 'jax', 'flax', 'transformers'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
