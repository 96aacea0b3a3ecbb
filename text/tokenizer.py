"""``tandem.Tokenizer``: a checkpoint's tokenizer over the ``tokenizers`` library, giving what HF's returns.

The tokenizer is the checkpoint's own ``tokenizer.json``, or one built from its vocabulary files as HF's
converters build it (WordPiece from ``vocab.txt``, byte-level BPE from ``vocab.json`` + ``merges.txt``, a
SentencePiece model in ``sentencepiece.py``), with
the special tokens, ``model_max_length`` and padding side of ``tokenizer_config.json`` /
``special_tokens_map.json``. A call sets padding and truncation on the ``tokenizers`` object the way HF's
fast tokenizers do (``PreTrainedTokenizerFast.set_truncation_and_padding``), so the ids are HF's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.hub import resolve
from . import sentencepiece
from .methods import Encoding, TokenizerMethods, tokenizer_folder

Padding = bool | Literal["longest", "max_length", "do_not_pad"]
Truncation = bool | Literal["longest_first", "only_first", "only_second", "do_not_truncate"] | None
TensorType = Literal["np", "pt", "jax"] | None

_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_LARGE = int(1e20)  # HF: a model_max_length above this means "no limit" (tokenizer_config writes 1e30)
# HF tokenizer classes whose model inputs have no token_type_ids (PreTrainedTokenizerBase's default has them),
# and the model types whose tokenizers are those (read from config.json when tokenizer_class is not given).
_NO_TOKEN_TYPES = {
    "RobertaTokenizer",
    "GPT2Tokenizer",
    "BartTokenizer",
    "LongformerTokenizer",
    "BigBirdTokenizer",
    "XLMRobertaTokenizer",
    "CamembertTokenizer",
    "DistilBertTokenizer",
    "MPNetTokenizer",
}
_NO_TOKEN_TYPE_MODELS = {
    "roberta",
    "roberta-prelayernorm",
    "xlm-roberta",
    "camembert",
    "distilbert",
    "big_bird",
    "mpnet",
    "longformer",
    "bart",
}
# Special-token defaults of the HF classes whose vocabulary files tandem builds a tokenizer from.
_WORDPIECE_DEFAULTS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_BPE_DEFAULTS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"))
_CLEANUP += ((" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as error:
        raise ImportError(
            "tandem.Tokenizer needs the tokenizers library: pip install 'tandem[text]' (or pip install tokenizers)"
        ) from error
    return tokenizers


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read it as JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _content(token: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or an ``AddedToken`` dict."""
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


class Tokenizer(TokenizerMethods):
    """A checkpoint's tokenizer, called as HF's: ``tok(texts, text_pair=None, padding=..., truncation=...,
    max_length=..., return_tensors=...)`` returns ``input_ids``, ``token_type_ids`` (when the model uses them)
    and ``attention_mask``, as HF's tokenizer of the checkpoint does.

    Example:
        >>> tok = tandem.Tokenizer.from_pretrained("path/to/all-MiniLM-L6-v2")
        >>> batch = tok(["A man is eating food.", "Hi"], padding=True, truncation=True, return_tensors="np")
        >>> model(**batch).embeddings.shape
        (2, 384)
    """

    def __init__(
        self,
        backend: Any,
        special_tokens: dict[str, str],
        model_max_length: int | None = None,
        padding_side: Literal["right", "left"] = "right",
        truncation_side: Literal["right", "left"] = "right",
        token_type_ids: bool = True,
        clean_up_tokenization_spaces: bool = False,
        additional_special_tokens: Sequence[str] = (),
    ) -> None:
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("right", "left"):
                raise ValueError(f"{name} must be 'right' or 'left', got {side!r}")
        self.backend = backend  # the tokenizers.Tokenizer
        self.special_tokens = dict(special_tokens)
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.model_input_names = ["input_ids", *(["token_type_ids"] if token_type_ids else []), "attention_mask"]
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.additional_special_tokens = list(dict.fromkeys(additional_special_tokens))
        known = {t.content for t in backend.get_added_tokens_decoder().values()}
        wanted = [*self.special_tokens.values(), *additional_special_tokens]
        missing = [t for t in dict.fromkeys(wanted) if t not in known]
        if missing:  # as HF's fast tokenizers: special tokens are matched whole, before normalisation
            tk = _tokenizers()
            backend.add_special_tokens([tk.AddedToken(t, special=True, normalized=False) for t in missing])
        backend.no_padding()
        backend.no_truncation()

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike[str], revision: str | None = None) -> Tokenizer:
        """The tokenizer of a checkpoint directory or HF Hub id (through ``huggingface_hub``'s cache, as
        :func:`tandem.from_pretrained`). Reads ``tokenizer.json``, else builds WordPiece from ``vocab.txt``
        (``do_lower_case``, ``tokenize_chinese_chars``, ``strip_accents`` from ``tokenizer_config.json``) or a
        byte-level BPE from ``vocab.json`` + ``merges.txt`` (``add_prefix_space``), or the tokenizer HF's fast
        class builds from a SentencePiece model (``spiece.model``, ``sentencepiece.bpe.model``, ``spm.model``:
        ALBERT, BigBird, XLM-RoBERTa, CamemBERT, DeBERTa-v2/v3; :mod:`tandem.text.sentencepiece`)."""
        directory = tokenizer_folder(resolve(path_or_hub_id, revision, weights=False, argument="path_or_hub_id"))
        if not directory.is_dir():
            raise FileNotFoundError(f"no tokenizer files at {directory}: path_or_hub_id names no directory")
        config = _read_json(directory / "tokenizer_config.json")
        tokens_map = _read_json(directory / "special_tokens_map.json")
        tk = _tokenizers()
        kind = config.get("tokenizer_class")
        kind = kind.removesuffix("Fast") if isinstance(kind, str) else None
        model_type = _read_json(directory / "config.json").get("model_type")
        family = None
        if (directory / "tokenizer.json").is_file():
            backend = tk.Tokenizer.from_file(str(directory / "tokenizer.json"))
            defaults: dict[str, str] = {}
        elif (directory / "vocab.txt").is_file():
            defaults = _WORDPIECE_DEFAULTS
            backend = None
        elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            defaults = _BPE_DEFAULTS
            backend = None
        elif any((directory / name).is_file() for name in sentencepiece.FILES):
            family = sentencepiece.family_of(directory, kind, model_type)
            defaults = family.special
            backend = None
        else:
            raise FileNotFoundError(
                f"no tokenizer in {directory}: expected tokenizer.json, vocab.txt, vocab.json and merges.txt, or a "
                f"SentencePiece model ({', '.join(sentencepiece.FILES)})"
            )
        special = dict(defaults)
        for name in _SPECIAL:
            for source in (tokens_map, config):  # tokenizer_config.json wins, as in HF
                value = _content(source.get(name))
                if value is not None:
                    special[name] = value
        cleanup = defaults is _WORDPIECE_DEFAULTS
        extra = [_content(t) for source in (tokens_map, config) for t in source.get("additional_special_tokens") or ()]
        extra = [t for t in extra if t is not None]
        if backend is not None:
            _match_bert_normalizer(backend, config)
        elif family is not None:
            extra = extra or list(family.additional)
            model = next(directory / n for n in (family.file, *sentencepiece.FILES) if (directory / n).is_file())
            files = {"tokenizer_config.json": config, "special_tokens_map.json": tokens_map}
            files["added_tokens.json"] = _read_json(directory / "added_tokens.json")
            backend = sentencepiece.build(tk, model, family, files, special, extra)
        elif defaults is _WORDPIECE_DEFAULTS:
            backend = _build_wordpiece(directory, config, special)
        else:
            backend = _build_bpe(directory, config, special)
        limit = config.get("model_max_length")
        names = config.get("model_input_names")
        if isinstance(names, list):
            token_types = "token_type_ids" in names
        elif kind is not None:
            token_types = kind not in _NO_TOKEN_TYPES
        elif model_type is not None:  # as HF's AutoTokenizer: the tokenizer class of config.json's model_type
            token_types = model_type not in _NO_TOKEN_TYPE_MODELS
        elif family is not None:  # the family its SentencePiece model file's name belongs to
            token_types = family.tokenizer_class not in _NO_TOKEN_TYPES
        else:  # the class whose files these are: BertTokenizer, or RobertaTokenizer for vocab.json + merges.txt
            token_types = defaults is not _BPE_DEFAULTS
        return cls(
            backend,
            special,
            model_max_length=int(limit) if isinstance(limit, (int, float)) and limit < _LARGE else None,
            padding_side=config.get("padding_side", "right"),
            truncation_side=config.get("truncation_side", "right"),
            token_type_ids=token_types,
            # HF's default: False, except when it converts BertTokenizer's files (that class defaults to True)
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", cleanup)),
            additional_special_tokens=extra,
        )

    # ----------------------------------------------------------------------------------------- encode
    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        padding: Padding = False,
        truncation: Truncation = None,
        max_length: int | None = None,
        return_tensors: TensorType = None,
        pad_to_multiple_of: int | None = None,
        add_special_tokens: bool = True,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        is_split_into_words: bool = False,
        padding_side: Literal["right", "left"] | None = None,
    ) -> Encoding:
        """Tokenize one text (or pair) or a batch, with HF's argument semantics: ``padding`` True/"longest"
        (to the longest row), "max_length" (to ``max_length``, else ``model_max_length``) or False;
        ``truncation`` True/"longest_first", "only_first", "only_second" or False, to ``max_length`` (else
        ``model_max_length``; ``max_length`` alone with no padding truncates longest-first, as HF).
        ``return_tensors``: "np", "pt", "jax", or None for lists (a single text then gives flat lists).
        ``is_split_into_words``: a text is a list of words (a batch, a list of such lists); the result's
        ``word_ids(i)`` then maps each token to its word. ``padding_side`` overrides the tokenizer's for this call."""
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
        read = _words if is_split_into_words else _texts
        single = isinstance(text, str) or (is_split_into_words and isinstance(text, (list, tuple)) and _flat(text))
        if single and is_split_into_words:  # one list of words
            text, text_pair = [text], None if text_pair is None else [text_pair]
        texts = read(text, "text")
        pairs = None if text_pair is None else read(text_pair, "text_pair")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"text has {len(texts)} texts but text_pair has {len(pairs)}")
        pad, cut, length = self._strategies(padding, truncation, max_length, pad_to_multiple_of)
        backend = self.backend
        if cut is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(length, stride=0, strategy=cut, direction=self.truncation_side)
        if pad is None:
            backend.no_padding()
        else:
            backend.enable_padding(
                length=length if pad == "max_length" else None,
                direction=side,
                pad_id=self.pad_token_id,
                pad_type_id=0,
                pad_token=self.special_tokens["pad_token"],
                pad_to_multiple_of=pad_to_multiple_of,
            )
        try:
            batch = texts if pairs is None else list(zip(texts, pairs, strict=True))
            encodings = backend.encode_batch(
                batch, is_pretokenized=is_split_into_words, add_special_tokens=add_special_tokens
            )
        finally:
            backend.no_padding()
            backend.no_truncation()
        fields = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids if return_token_type_ids is not None else "token_type_ids" in self.model_input_names:
            fields["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask is not False:
            fields["attention_mask"] = [e.attention_mask for e in encodings]
        if return_special_tokens_mask:
            fields["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_offsets_mapping:
            fields["offset_mapping"] = [e.offsets for e in encodings]
        rows = {k: v[0] for k, v in fields.items()} if single and return_tensors is None else fields
        if return_tensors is not None:
            rows = {k: _tensor(v, return_tensors, k) for k, v in fields.items()}
        if return_length:  # HF: each row's length, padding included (a list even for one text)
            lengths = [len(e.ids) for e in encodings]
            rows["length"] = lengths if return_tensors is None else _tensor([lengths], return_tensors, "length")[0]
        return Encoding(rows, encodings)

    def _strategies(
        self, padding: Padding, truncation: Truncation, max_length: int | None, multiple: int | None
    ) -> tuple[str | None, str | None, int | None]:
        """HF's ``_get_padding_truncation_strategies``: (padding, truncation strategy, length)."""
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
            raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
        if max_length is not None and max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        pads = {True: "longest", False: None, "longest": "longest", "max_length": "max_length", "do_not_pad": None}
        cuts = {True: "longest_first", False: None, None: None, "do_not_truncate": None}
        cuts.update({s: s for s in ("longest_first", "only_first", "only_second")})
        if not isinstance(padding, (bool, str)) or padding not in pads:
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if not isinstance(truncation, (bool, str, type(None))) or truncation not in cuts:
            raise ValueError(
                "truncation must be True, False, 'longest_first', 'only_first', 'only_second' or 'do_not_truncate', "
                f"got {truncation!r}"
            )
        pad, cut = pads[padding], cuts[truncation]
        if max_length is None and (pad == "max_length" or cut is not None):
            max_length = self.model_max_length
            if max_length is None:  # HF: no limit known, so no padding to it and no truncation
                pad = None if pad == "max_length" else pad
                cut = None
        if pad is not None and self.pad_token_id is None:
            raise ValueError("padding was asked for but this tokenizer has no pad_token")
        if cut and pad and multiple is not None and max_length is not None and max_length % multiple:
            raise ValueError(f"truncation length ({max_length}) is not a multiple of pad_to_multiple_of ({multiple})")
        return pad, cut, max_length

    # ----------------------------------------------------------------------------------------- decode
    def decode(
        self, token_ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> str:
        """The text of one sequence of ids (a list, a numpy/torch/jax array or an int), as HF's ``decode``."""
        ids = np.asarray(token_ids).reshape(-1).tolist()
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        cleanup = (
            self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        )
        if cleanup:
            for before, after in _CLEANUP:
                text = text.replace(before, after)
        return text

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> list[str]:
        """:meth:`decode` of each row of ``sequences`` ((B, S) ids)."""
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in sequences]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"padding_side={self.padding_side!r}, model_input_names={self.model_input_names})"
        )


def _texts(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(t, str) for t in value):
        return list(value)
    raise TypeError(f"{name} must be a str or a non-empty list of str, got {type(value).__name__}")


def _is_words(words: Any) -> bool:
    return isinstance(words, (list, tuple)) and all(isinstance(w, str) for w in words)


def _flat(words: Sequence[Any]) -> bool:
    """Whether pre-tokenized input is one text (a list of str) rather than a batch (a list of lists)."""
    return bool(words) and isinstance(words[0], str)


def _words(value: Any, name: str) -> list[list[str]]:
    """Pre-tokenized input (``is_split_into_words``): a non-empty list of lists of str."""
    if isinstance(value, (list, tuple)) and value and all(_is_words(words) for words in value):
        return [list(words) for words in value]
    raise TypeError(f"{name} must be a list of words, or a list of lists of words, with is_split_into_words=True")


def _tensor(rows: list[list[int]], kind: str, name: str) -> Any:
    if len({len(row) for row in rows}) > 1:
        raise ValueError(
            f"{name} rows have different lengths; pass padding=True (and truncation=True) to make a tensor"
        )
    if kind == "np":
        return np.array(rows, dtype=np.int64)
    if kind == "pt":
        import torch

        return torch.tensor(rows, dtype=torch.int64)
    if kind == "jax":
        import jax.numpy as jnp

        return jnp.array(rows)
    raise ValueError(f"return_tensors must be 'np', 'pt', 'jax' or None, got {kind!r}")


def _match_bert_normalizer(backend: Any, config: dict[str, Any]) -> None:
    """HF's BertTokenizerFast: ``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars`` of
    ``tokenizer_config.json`` replace what ``tokenizer.json``'s BertNormalizer says."""
    tk = _tokenizers()
    if backend.normalizer is None or config.get("tokenizer_class") not in ("BertTokenizer", "BertTokenizerFast"):
        return
    state = json.loads(backend.normalizer.__getstate__())
    if state.get("type") != "BertNormalizer":
        return
    wanted = {
        "lowercase": config.get("do_lower_case", True),
        "strip_accents": config.get("strip_accents"),
        "handle_chinese_chars": config.get("tokenize_chinese_chars", True),
    }
    if any(state.get(k, v) != v for k, v in wanted.items()):
        backend.normalizer = tk.normalizers.BertNormalizer(clean_text=state.get("clean_text", True), **wanted)


def _build_wordpiece(directory: Path, config: dict[str, Any], special: dict[str, str]) -> Any:
    """HF's BertConverter: WordPiece over ``vocab.txt`` (one token a line, as BertTokenizer reads it)."""
    tk = _tokenizers()
    lines = (directory / "vocab.txt").read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {token: i for i, token in enumerate(lines)}
    for name in ("unk_token", "cls_token", "sep_token"):
        if special.get(name) not in vocab:
            raise ValueError(f"{directory / 'vocab.txt'}: the {name} {special.get(name)!r} is not in the vocabulary")
    backend = tk.Tokenizer(tk.models.WordPiece(vocab, unk_token=special["unk_token"]))
    backend.normalizer = tk.normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    backend.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    cls, sep = special["cls_token"], special["sep_token"]
    backend.post_processor = tk.processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    backend.decoder = tk.decoders.WordPiece(prefix="##")
    return backend


def _build_bpe(directory: Path, config: dict[str, Any], special: dict[str, str]) -> Any:
    """HF's RobertaConverter: byte-level BPE over ``vocab.json`` and ``merges.txt`` (its first line, the
    ``#version`` header, and its trailing newline skipped, as RobertaTokenizer reads it)."""
    tk = _tokenizers()
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    lines = (directory / "merges.txt").read_text(encoding="utf-8").split("\n")[1:-1]
    merges = [tuple(line.split()) for line in lines]
    backend = tk.Tokenizer(
        tk.models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    prefix = bool(config.get("add_prefix_space", False))
    backend.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    backend.decoder = tk.decoders.ByteLevel()
    cls, sep = special["cls_token"], special["sep_token"]
    for name, token in (("cls_token", cls), ("sep_token", sep)):
        if token not in vocab:
            raise ValueError(f"{directory / 'vocab.json'}: the {name} {token!r} is not in the vocabulary")
    backend.post_processor = tk.processors.RobertaProcessing(
        sep=(sep, vocab[sep]), cls=(cls, vocab[cls]), add_prefix_space=prefix, trim_offsets=True
    )
    mask = special.get("mask_token")
    if mask is not None:  # RobertaTokenizerFast: the mask token takes the space before it
        backend.add_special_tokens([tk.AddedToken(mask, lstrip=True, rstrip=False, normalized=False, special=True)])
    return backend


__all__ = ["Encoding", "Tokenizer"]
