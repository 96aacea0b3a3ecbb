"""``tandem.Tokenizer`` from a SentencePiece model file alone (issue 14): ALBERT and BigBird (``spiece.model``),
XLM-RoBERTa and CamemBERT (``sentencepiece.bpe.model``), DeBERTa-v2/v3 (``spm.model``).

Tiny Unigram and BPE models are trained here with ``sentencepiece`` (one per special-token layout, once per
session), saved in each family's layout by HF's own slow tokenizer (``save_pretrained`` writes the model file,
``tokenizer_config.json`` and ``special_tokens_map.json``, no ``tokenizer.json``), and tandem's ids are compared
with HF's fast tokenizer converted from the same files and with HF's slow (sentencepiece) tokenizer. Where the
two HF tokenizers disagree tandem follows the fast one; each such case is listed in ``SLOW_DIFFERS`` /
``_slow_truncates_otherwise`` and checked to still differ.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import transformers
from sentencepiece import sentencepiece_model_pb2

import tandem

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

TEXTS = [
    "Hello World, the QUICK brown fox.",  # lower-casing (ALBERT, DeBERTa with do_lower_case)
    "Café naïve résumé Über STRASSE straße",  # accents: stripped by ALBERT unless keep_accents
    "  leading and trailing   ",
    "repeated    spaces\tand a tab",
    "ＡＢＣ ｶﾀｶﾅ ① ﬁ full-width",  # noqa: RUF001 (NFKC through the model's precompiled character map)
    "unknown 你好 ☃ chars",  # characters the models never saw
    "numbers 1,000 and 2,500, 3.14, 5, 6, 7,",  # ALBERT's "digit," pieces
    "``quoted'' text don't",  # ALBERT's `` and '' -> "
    "a [MASK] token <mask> here",  # the mask token takes the space before it
    "x",
    "the lazy dog jumps over the quick brown fox again and again and again",  # truncated below
]
PAIRS = [
    "second",
    " ".join(["pair text with more words in it"] * 8),
    " ",
    "y",
    "Ünïcödé",
    "1,000,000",
    "z z z",
    "[SEP] in pair",
]
PAIRS += ["<s> and </s>", "w", "fox"]
# Special tokens written so that normalisation makes them, and around spaces: matched or not by each added token's
# flags. Compared with HF's fast tokenizer only: the slow ones split added tokens out before SentencePiece's
# normalisation but let SentencePiece match its user-defined pieces after it, which no fast tokenizer does.
SPECIAL_TEXTS = [
    "full-width ［ＭＡＳＫ］ and ＜mask＞ ［ＣＬＳ］",  # noqa: RUF001
    "<s> [CLS] x [SEP] </s> <pad>y<unk> [UNK] [PAD] <s>NOTUSED",
    "a  [MASK]  b <mask>   c",
]
CALLS = [
    ({}, False),
    ({"padding": True}, False),
    ({"padding": True, "truncation": True, "max_length": 8}, False),
    ({"padding": "max_length", "truncation": True, "max_length": 40}, False),
    ({"max_length": 6}, False),  # truncation implied, as HF
    ({"padding": True}, True),
    ({"padding": True, "truncation": "longest_first", "max_length": 12}, True),
    ({"padding": True, "truncation": "only_second", "max_length": 50}, True),
    ({"padding": True, "pad_to_multiple_of": 8}, True),
]
# The special pieces of each family's released models, as SentencePiece trainer options
LAYOUTS = {
    "albert": {"pad_id": 0, "unk_id": 1, "bos_id": -1, "eos_id": -1, "control_symbols": ["[CLS]", "[SEP]"]},
    "bigbird": {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3},
    "fairseq": {},  # <unk> <s> </s>: XLM-RoBERTa's and CamemBERT's models
    # [MASK] is an added token past the model; no character map (the identity rule)
    "deberta": {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3, "normalization_rule_name": "identity"},
    "bytes": {"byte_fallback": True, "vocab_size": 400},  # fairseq's, with the 256 byte pieces
}
LAYOUTS["albert"]["user_defined_symbols"] = ["[MASK]"]
LAYOUTS["bigbird"]["user_defined_symbols"] = ["[CLS]", "[SEP]", "[MASK]"]
LAYOUTS["deberta"].update(pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]")
# (HF slow class, layout, tokenizer settings)
FAMILIES = {
    "albert": ("AlbertTokenizer", "albert", {}),
    "albert-cased-accents": ("AlbertTokenizer", "albert", {"do_lower_case": False, "keep_accents": True}),
    "bigbird": ("BigBirdTokenizer", "bigbird", {}),
    "xlm-roberta": ("XLMRobertaTokenizer", "fairseq", {}),
    "camembert": ("CamembertTokenizer", "fairseq", {}),
    "deberta-v2": ("DebertaV2Tokenizer", "deberta", {}),
    "deberta-v2-lower-punct": ("DebertaV2Tokenizer", "deberta", {"do_lower_case": True, "split_by_punct": True}),
}
# Texts on which HF's slow tokenizer disagrees with its fast one (and so with tandem), by family:
# - ALBERT: the slow one strips the text (remove_space); AlbertConverter's normalizer does not, so the fast one
#   keeps a "▁" for trailing spaces and for a text of spaces only.
# - DeBERTa-v2 with split_by_punct: the slow one encodes each punctuation-separated word alone; the fast one
#   (Punctuation, then Metaspace on each piece) keeps a "▁" for the space before a punctuation mark.
_CLS_SEP = {"AlbertTokenizer", "BigBirdTokenizer", "DebertaV2Tokenizer"}  # [CLS] A [SEP] B [SEP]
# - ALBERT with a BPE model (ALBERT's own models are Unigram): the slow one splits every piece ending in
#   "digit," before the comma; the fast one only scores such pieces 100 lower, which reorders BPE's merges
#   but still makes "▁2," from "2,500".
_ALBERT_SPACES = {"  leading and trailing   ", " "}
SLOW_DIFFERS = {
    ("albert", "unigram"): _ALBERT_SPACES,
    ("albert", "bpe"): {*_ALBERT_SPACES, "numbers 1,000 and 2,500, 3.14, 5, 6, 7,"},
    ("albert-cased-accents", "unigram"): _ALBERT_SPACES,
    ("albert-cased-accents", "bpe"): {*_ALBERT_SPACES, "numbers 1,000 and 2,500, 3.14, 5, 6, 7,"},
    ("deberta-v2-lower-punct", "unigram"): {"a [MASK] token <mask> here", "<s> and </s>"},
    ("deberta-v2-lower-punct", "bpe"): {"a [MASK] token <mask> here", "<s> and </s>"},
}


def _corpus() -> list[str]:
    rng = random.Random(0)
    syllables = ["ka", "ri", "to", "ne", "su", "ma", "lo", "pe", "di", "ba", "zu", "qui", "ver", "str", "ing"]
    # the test's words, less those of the NFKC and unknown-character texts
    words = [w.strip(",.") for text in TEXTS + PAIRS for w in text.split() if all(ord(c) < 0x2000 for c in w)]
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(200)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    numbers = [f"{rng.randint(1, 9)}, {rng.randint(1, 9)},000 and {rng.randint(1, 9)}," for _ in range(100)]
    return lines + [line.upper() for line in lines[:50]] + numbers  # numbers: pieces ending in "digit,"


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``trained(layout, model_type)``: a tiny SentencePiece model file, trained once per session."""
    root = tmp_path_factory.mktemp("spm")
    (root / "corpus.txt").write_text("\n".join(_corpus()), encoding="utf-8")
    models: dict[tuple[str, str], Path] = {}

    def train(layout: str, model_type: str) -> Path:
        if (layout, model_type) not in models:
            prefix = root / f"{layout}-{model_type}"
            spm.SentencePieceTrainer.train(
                input=str(root / "corpus.txt"),
                model_prefix=str(prefix),
                model_type=model_type,
                minloglevel=2,
                **{"vocab_size": 300, **LAYOUTS[layout]},
            )
            models[layout, model_type] = prefix.with_suffix(".model")
        return models[layout, model_type]

    return train


def _saved(trained: Callable[[str, str], Path], root: Path, family: str, model_type: str) -> Path:
    """The family's checkpoint files as HF's slow tokenizer saves them (no tokenizer.json)."""
    cls, layout, settings = FAMILIES[family]
    getattr(transformers, cls)(str(trained(layout, model_type)), **settings).save_pretrained(root)
    assert not (root / "tokenizer.json").exists()
    return root


def _same(ours: dict, theirs: dict, where: str) -> None:
    assert list(ours) == list(theirs), where
    for key, value in theirs.items():
        if isinstance(value, list):  # no return_tensors: (nested) lists
            assert ours[key] == value, f"{where}: {key}"
            continue
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(value), err_msg=f"{where}: {key}")


def _same_pipeline(ours: tandem.Tokenizer, fast: object) -> None:
    """The tokenizers pipeline HF's fast tokenizer built, part by part: every added token with its id and
    flags, the normalizer, pre-tokenizer, model (Unigram pieces and scores, or BPE vocabulary and merges),
    post-processor and decoder."""
    theirs = {i: repr(t) for i, t in fast.backend_tokenizer.get_added_tokens_decoder().items()}
    assert {i: repr(t) for i, t in ours.backend.get_added_tokens_decoder().items()} == theirs
    mine, reference = json.loads(ours.backend.to_str()), json.loads(fast.backend_tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "model", "post_processor", "decoder"):
        assert mine[part] == reference[part], part


def _pick(rows: list[int], texts: list[str]) -> list[str]:
    return [texts[i] for i in rows]


def _slow_rows(ours: tandem.Tokenizer, args: dict, pair: bool, family: str, model_type: str) -> list[int]:
    """The rows of TEXTS (and PAIRS) on which HF's slow tokenizer is expected to agree with its fast one.

    Besides SLOW_DIFFERS: HF's slow longest_first truncation of a pair takes one token at a time from the
    longer sequence (the second on a tie), so when both are cut an odd budget leaves the extra token to the
    first; tokenizers' (fast) leaves it to the longer one. The budget is odd with the three special tokens of
    ``[CLS] A [SEP] B [SEP]``."""
    differs = SLOW_DIFFERS.get((family, model_type), set())
    rows = [i for i in range(len(TEXTS)) if TEXTS[i] not in differs and not (pair and PAIRS[i] in differs)]
    if pair and args.get("truncation") == "longest_first" and FAMILIES[family][0] in _CLS_SEP:
        half = (args["max_length"] - 3) // 2
        lengths = [[len(ours(t, add_special_tokens=False)["input_ids"]) for t in (TEXTS[i], PAIRS[i])] for i in rows]
        rows = [i for i, (a, b) in zip(rows, lengths, strict=True) if min(a, b) <= half]
    return rows


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_sentencepiece_matches_hf(trained: Callable, tmp_path: Path, family: str, model_type: str) -> None:
    """Every call of CALLS, one text, one pair, tensors and decoding against HF's fast tokenizer; the same
    calls against HF's slow one, apart from the recorded disagreements."""
    directory = _saved(trained, tmp_path, family, model_type)
    cls = FAMILIES[family][0]
    slow = getattr(transformers, cls).from_pretrained(directory)
    fast = getattr(transformers, cls + "Fast").from_pretrained(directory)
    ours = tandem.Tokenizer.from_pretrained(directory)
    assert (ours.model_max_length, ours.padding_side, ours.model_input_names) == (
        fast.model_max_length if fast.model_max_length < 1e20 else None,
        fast.padding_side,
        fast.model_input_names,
    )
    assert ours.backend.get_vocab_size(with_added_tokens=True) == len(fast)
    _same_pipeline(ours, fast)
    for args, pair in CALLS:
        second = PAIRS if pair else None
        _same(ours(TEXTS, second, **args), fast(TEXTS, second, **args), f"fast {args}, pairs={pair}")
        if args.get("padding"):
            _same(
                ours(TEXTS, second, return_tensors="np", **args),
                fast(TEXTS, second, return_tensors="np", **args),
                f"fast np {args}, pairs={pair}",
            )
        rows = _slow_rows(ours, args, pair, family, model_type)
        texts, pairs = _pick(rows, TEXTS), _pick(rows, PAIRS) if pair else None
        _same(ours(texts, pairs, **args), slow(texts, pairs, **args), f"slow {args}, pairs={pair}")
    # the recorded disagreements are real, and tandem is on the fast side
    for text in sorted(SLOW_DIFFERS.get((family, model_type), ())):
        assert ours(text)["input_ids"] == fast(text)["input_ids"] != slow(text)["input_ids"], text
    if cls in _CLS_SEP:  # a longer second sequence, both cut to an odd budget (12 - 3)
        first, second = "y " * 6, "y " * 8  # "▁y" is one piece: slow keeps 5 + 4 tokens, fast 4 + 5
        cut = {"truncation": "longest_first", "max_length": 12}
        assert ours(first, second, **cut) == fast(first, second, **cut) != slow(first, second, **cut)
    _same(ours(SPECIAL_TEXTS, padding=True), fast(SPECIAL_TEXTS, padding=True), "special tokens")
    _same(ours(TEXTS[1]), fast(TEXTS[1]), "one text")  # flat lists
    _same(ours(TEXTS[1], PAIRS[1]), fast(TEXTS[1], PAIRS[1]), "one pair")
    ids = fast(TEXTS, PAIRS, padding=True)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == fast.batch_decode(ids, skip_special_tokens=skip)
    # Saved as tokenizer.json and read back by tandem and by HF's AutoTokenizer: the same ids as HF's fast
    # tokenizer saved and read back. (Not always the ids before saving: the tokenizers library reads normalised
    # added tokens back differently, e.g. BigBird's "<s> and </s>" gains a "▁" before "</s>", in HF's too.)
    fast.save_pretrained(tmp_path / "hf-saved")
    fast_again = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf-saved")
    ours.save_pretrained(tmp_path / "saved")
    for again in (tandem.Tokenizer, transformers.AutoTokenizer):
        reloaded = again.from_pretrained(tmp_path / "saved")
        expected = fast_again(TEXTS, PAIRS, padding=True)
        _same(reloaded(TEXTS, PAIRS, padding=True), expected, f"saved, {again.__name__}")


@pytest.mark.parametrize("tokens_map", [True, False], ids=["special_tokens_map", "no-special_tokens_map"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_sentencepiece_without_added_tokens_decoder(
    trained: Callable, tmp_path: Path, family: str, tokens_map: bool
) -> None:
    """Files written before HF listed ``added_tokens_decoder``: added tokens come from ``added_tokens.json``,
    special tokens take the flags of special_tokens_map.json's objects or, without them, of HF's fast class
    (the mask token's left strip, BigBird's and DeBERTa's normalised tokens)."""
    directory = _saved(trained, tmp_path, family, "unigram")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    del config["added_tokens_decoder"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    if tokens_map:  # an object there gives the mask token its flags (rstrip, not HF's class's lstrip)
        special = json.loads((directory / "special_tokens_map.json").read_text())
        mask = {"content": config["mask_token"], "lstrip": False, "rstrip": True, "normalized": False}
        (directory / "special_tokens_map.json").write_text(json.dumps({**special, "mask_token": mask}))
    else:  # plain strings in tokenizer_config.json only: the flags of HF's fast class
        (directory / "special_tokens_map.json").unlink()
    cls = FAMILIES[family][0]
    added = directory / "added_tokens.json"
    listed = json.loads(added.read_text()) if added.exists() else {}
    size = len(getattr(transformers, cls + "Fast").from_pretrained(directory))
    added.write_text(json.dumps({**listed, "zzword": size}))  # a user's token, not special: normalised
    fast = getattr(transformers, cls + "Fast").from_pretrained(directory)
    ours = tandem.Tokenizer.from_pretrained(directory)
    assert ours.backend.token_to_id("zzword") == size
    _same_pipeline(ours, fast)
    texts = [*TEXTS, *SPECIAL_TEXTS, "a zzword  b ZZWORD"]
    _same(ours(texts, padding=True), fast(texts, padding=True), "no added_tokens_decoder")


def test_sentencepiece_family_from_config_json_or_file_name(trained: Callable, tmp_path: Path) -> None:
    """No tokenizer_class: config.json's model_type picks the family; with neither, spm.model is DeBERTa-v2's
    (its defaults: [CLS] [SEP] [UNK] [PAD] [MASK], token types) and spiece.model is ambiguous."""
    directory = _saved(trained, tmp_path / "xlmr", "xlm-roberta", "unigram")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "config.json").write_text(json.dumps({"model_type": "xlm-roberta"}))
    fast = transformers.XLMRobertaTokenizerFast.from_pretrained(directory)
    _same(tandem.Tokenizer.from_pretrained(directory)(TEXTS, PAIRS), fast(TEXTS, PAIRS), "model_type xlm-roberta")

    alone = tmp_path / "deberta"
    alone.mkdir()
    shutil.copy(trained("deberta", "unigram"), alone / "spm.model")
    fast = transformers.DebertaV2TokenizerFast(vocab_file=str(alone / "spm.model"))
    ours = tandem.Tokenizer.from_pretrained(alone)
    _same(ours(TEXTS, PAIRS, padding=True), fast(TEXTS, PAIRS, padding=True), "spm.model alone")

    ambiguous = tmp_path / "ambiguous"
    ambiguous.mkdir()
    shutil.copy(trained("albert", "unigram"), ambiguous / "spiece.model")
    with pytest.raises(ValueError, match=r"spiece.model can belong to albert or big_bird; say which with"):
        tandem.Tokenizer.from_pretrained(ambiguous)
    (ambiguous / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    with pytest.raises(ValueError, match=r"tokenizer_class 'T5Tokenizer' has a SentencePiece model but tandem"):
        tandem.Tokenizer.from_pretrained(ambiguous)
    (ambiguous / "tokenizer_config.json").unlink()
    (ambiguous / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match=r"model_type 't5' has a SentencePiece model but tandem builds"):
        tandem.Tokenizer.from_pretrained(ambiguous)


def test_sentencepiece_deberta_v3_hub_layout(trained: Callable, tmp_path: Path) -> None:
    """microsoft/deberta-v3-*'s files: spm.model, a tokenizer_config.json without tokenizer_class,
    config.json's model_type, added_tokens.json putting [MASK] past the model, special tokens as strings;
    against what HF's AutoTokenizer makes of them (DebertaV2TokenizerFast)."""
    shutil.copy(trained("deberta", "unigram"), tmp_path / "spm.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "spm"}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deberta-v2"}))
    (tmp_path / "added_tokens.json").write_text(json.dumps({"[MASK]": 300}))
    roles = {"bos_token": "[CLS]", "cls_token": "[CLS]", "eos_token": "[SEP]", "mask_token": "[MASK]"}
    roles.update(pad_token="[PAD]", sep_token="[SEP]", unk_token="[UNK]")
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(roles))
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(fast).__name__ == "DebertaV2TokenizerFast"
    ours = tandem.Tokenizer.from_pretrained(tmp_path)
    _same_pipeline(ours, fast)
    texts = [*TEXTS, *SPECIAL_TEXTS]
    _same(ours(texts, padding=True), fast(texts, padding=True), "deberta-v3 layout")
    _same(ours(TEXTS, PAIRS, padding=True), fast(TEXTS, PAIRS, padding=True), "deberta-v3 layout, pairs")


def _edit_model(source: Path, target: Path, edit: Callable[[object], None]) -> None:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(source.read_bytes())
    edit(proto)
    target.write_bytes(proto.SerializeToString())


def test_sentencepiece_errors(trained: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _saved(trained, tmp_path, "albert", "unigram")
    model = directory / "spiece.model"
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "sentencepiece", None)  # not installed
        with pytest.raises(ImportError, match=r"reading spiece.model needs the sentencepiece and protobuf packages"):
            tandem.Tokenizer.from_pretrained(directory)
    original = model.read_bytes()
    model.write_bytes(b"\x00not a model")
    with pytest.raises(ValueError, match=r"spiece.model: not a SentencePiece model"):
        tandem.Tokenizer.from_pretrained(directory)

    def word_model(proto: object) -> None:
        proto.trainer_spec.model_type = 3  # WORD

    model.write_bytes(original)
    _edit_model(model, model, word_model)
    with pytest.raises(ValueError, match=r"SentencePiece model_type 3 is not supported"):
        tandem.Tokenizer.from_pretrained(directory)

    model.write_bytes(original)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["7"] = config["added_tokens_decoder"].pop("4")  # [MASK] is piece 4
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"the added token '\[MASK\]' has the id 7, but the SentencePiece model"):
        tandem.Tokenizer.from_pretrained(directory)


def test_sentencepiece_byte_fallback_as_hf_fast(trained: Callable, tmp_path: Path) -> None:
    """A model trained with byte_fallback: HF's fast tokenizers do not fall back to byte pieces (HF warns),
    so unknown characters give <unk> where the slow one gives bytes; tandem warns and gives <unk>."""
    transformers.XLMRobertaTokenizer(str(trained("bytes", "unigram"))).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"byte_fallback, which HF's fast tokenizers \(and tandem\) do not"):
        ours = tandem.Tokenizer.from_pretrained(tmp_path)
    fast = transformers.XLMRobertaTokenizerFast.from_pretrained(tmp_path)
    slow = transformers.XLMRobertaTokenizer.from_pretrained(tmp_path)
    _same(ours(TEXTS, PAIRS, padding=True), fast(TEXTS, PAIRS, padding=True), "byte_fallback")
    unknown = "unknown 你好 ☃ chars"
    assert ours.token_id("unk_token") in ours(unknown)["input_ids"]
    assert ours(unknown)["input_ids"] != slow(unknown)["input_ids"]
