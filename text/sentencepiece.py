"""A ``tokenizers.Tokenizer`` built from a SentencePiece model file, as HF's fast tokenizers build it.

Checkpoints of ALBERT and BigBird (``spiece.model``), XLM-RoBERTa and CamemBERT (``sentencepiece.bpe.model``) and
DeBERTa-v2/v3 (``spm.model``) may ship only the SentencePiece model. HF's fast tokenizer of each family converts
it (``transformers.convert_slow_tokenizer``): a Unigram (or BPE) model over the pieces, a normalizer around the
model's precompiled character map, a Metaspace pre-tokenizer and decoder, and the family's template of special
tokens. :data:`FAMILIES` writes down what differs between the families; :func:`build` assembles the rest. The
model file is read with the ``sentencepiece`` package's protobuf message (a plain protobuf parse: nothing is
unpickled or executed). Like HF's converters, it uses the normaliser spec's precompiled character map but not
its ``add_dummy_prefix`` / ``remove_extra_whitespaces`` switches: the Metaspace pre-tokenizer always puts a
"▁" before the text and each family's normalizer collapses spaces its own way (where HF's slow,
sentencepiece-run tokenizers therefore differ, tandem gives the fast ones' ids).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNIGRAM, BPE = 1, 2  # TrainerSpec.ModelType
CONTROL, USER_DEFINED = 3, 4  # ModelProto.SentencePiece.Type: the pieces HF adds as added tokens
METASPACE = "\u2581"  # the "▁" SentencePiece writes for a space
FILES = ("spiece.model", "sentencepiece.bpe.model", "spm.model")


@dataclass(frozen=True)
class Family:
    """What HF's converter and tokenizer classes of one family do differently from SentencePiece's defaults.

    ``head`` pieces (fairseq's ids) replace the first ``skip`` pieces of the model and ``tail`` pieces follow
    it; ``unk_id`` is then the unknown token's id (None: the model's own). ``normalizer`` names one of
    :data:`NORMALIZERS`; ``template`` is ``"bert"`` (``CLS A SEP (B SEP)``, token types 0/1) or ``"roberta"``
    (``<s> A </s> (</s> B </s>)``, all 0). ``special`` is the special-token defaults of HF's class,
    ``additional`` its default ``additional_special_tokens``, ``options`` its ``tokenizer_config.json``
    switches with their defaults, ``flags`` the ``AddedToken`` flags its fast class gives special tokens (by
    role; the others are matched whole, before normalisation).
    """

    tokenizer_class: str
    file: str
    special: dict[str, str]
    normalizer: str = "spm"
    template: str = "bert"
    head: tuple[tuple[str, float], ...] = ()
    skip: int = 0
    tail: tuple[str, ...] = ()
    unk_id: int | None = None
    number_comma: bool = False  # ALBERT: pieces ending in digit + "," scored 100 lower
    additional: tuple[str, ...] = ()
    options: dict[str, bool] = field(default_factory=dict)
    flags: dict[str, dict[str, bool]] = field(default_factory=dict)


_ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_BERT_STYLE = {"bos_token": "[CLS]", "eos_token": "[SEP]", "sep_token": "[SEP]", "cls_token": "[CLS]"}
_ROBERTA_STYLE = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
# Keyed by config.json's model_type; tokenizer_config.json's tokenizer_class maps onto the same entries.
FAMILIES = {
    "albert": Family(
        "AlbertTokenizer",
        "spiece.model",
        {**_BERT_STYLE, "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "[MASK]"},
        normalizer="albert",
        number_comma=True,
        options={"do_lower_case": True, "keep_accents": False},
        flags={"mask_token": {"lstrip": True, "normalized": False}},
    ),
    "big_bird": Family(
        "BigBirdTokenizer",
        "spiece.model",
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "sep_token": "[SEP]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        },
        # BigBirdTokenizerFast makes every special token an AddedToken matched after normalisation
        flags={**{role: {"normalized": True} for role in _ROLES}, "mask_token": {"lstrip": True, "normalized": True}},
    ),
    "xlm-roberta": Family(
        "XLMRobertaTokenizer",
        "sentencepiece.bpe.model",
        _ROBERTA_STYLE,
        template="roberta",
        head=(("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)),
        skip=3,  # fairseq: <s> <pad> </s> <unk>, then SentencePiece's pieces from id 3 shifted by one
        tail=("<mask>",),
        unk_id=3,
        flags={"mask_token": {"lstrip": True}},
    ),
    "camembert": Family(
        "CamembertTokenizer",
        "sentencepiece.bpe.model",
        _ROBERTA_STYLE,
        template="roberta",
        # SentencePiece's own <unk> (id 0) becomes <unk>NOTUSED, scored so low that the model never picks it
        head=(("<s>NOTUSED", 0.0), ("<pad>", 0.0), ("</s>NOTUSED", 0.0), ("<unk>", 0.0), ("<unk>NOTUSED", -100.0)),
        skip=1,
        tail=("<mask>",),
        unk_id=3,
        additional=("<s>NOTUSED", "</s>NOTUSED", "<unk>NOTUSED"),
        flags={"mask_token": {"lstrip": True}},
    ),
    "deberta-v2": Family(
        "DebertaV2Tokenizer",
        "spm.model",
        {**_BERT_STYLE, "unk_token": "[UNK]", "pad_token": "[PAD]", "mask_token": "[MASK]"},
        normalizer="deberta",
        options={"do_lower_case": False, "split_by_punct": False},
        flags={"unk_token": {"normalized": True}},
    ),
}
_BY_CLASS = {family.tokenizer_class: name for name, family in FAMILIES.items()}


def family_of(directory: Path, tokenizer_class: str | None, model_type: Any) -> Family:
    """The family of a checkpoint's SentencePiece model: ``tokenizer_config.json``'s ``tokenizer_class``,
    else ``config.json``'s ``model_type``, else the only family that names its model file so."""
    if tokenizer_class is not None:
        if tokenizer_class not in _BY_CLASS:
            raise ValueError(
                f"{directory / 'tokenizer_config.json'}: tokenizer_class {tokenizer_class!r} has a SentencePiece "
                f"model but tandem builds SentencePiece tokenizers only for {', '.join(sorted(_BY_CLASS))}; "
                "add the tokenizer.json HF writes for it"
            )
        return FAMILIES[_BY_CLASS[tokenizer_class]]
    if model_type is not None:
        if model_type not in FAMILIES:
            raise ValueError(
                f"{directory / 'config.json'}: model_type {model_type!r} has a SentencePiece model but tandem builds "
                f"SentencePiece tokenizers only for {', '.join(FAMILIES)}; add the tokenizer.json HF writes for it"
            )
        return FAMILIES[model_type]
    present = [name for name in FILES if (directory / name).is_file()]
    owners = [name for name, family in FAMILIES.items() if family.file in present]
    if len(owners) == 1:
        return FAMILIES[owners[0]]
    raise ValueError(
        f"{directory}: {' and '.join(present)} can belong to {' or '.join(owners)}; say which with tokenizer_class "
        "in tokenizer_config.json or model_type in config.json"
    )


def read_model(path: Path) -> Any:
    """The ``ModelProto`` of a SentencePiece model file."""
    try:
        from google.protobuf.message import DecodeError
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as error:
        raise ImportError(
            f"reading {path.name} needs the sentencepiece and protobuf packages: "
            "pip install 'tandem-encoders[text]' (or pip install sentencepiece protobuf)"
        ) from error
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as error:
        raise ValueError(f"{path}: not a SentencePiece model ({error})") from error
    if not proto.pieces:
        raise ValueError(f"{path}: the SentencePiece model has no pieces")
    if proto.trainer_spec.model_type not in (UNIGRAM, BPE):
        raise ValueError(
            f"{path}: SentencePiece model_type {proto.trainer_spec.model_type} is not supported; HF's fast "
            "tokenizers convert Unigram (1) and BPE (2) models only"
        )
    return proto


def _vocabulary(proto: Any, family: Family) -> list[tuple[str, float]]:
    """(piece, score) by id, as the family's converter lays the vocabulary out."""
    pieces = [(p.piece, p.score) for p in proto.pieces[family.skip :]]
    if family.number_comma:  # as AlbertConverter: "1," loses to "1" + "," so numbers split before the comma
        pieces = [(p, s - 100 if len(p) > 1 and p[-1] == "," and p[-2].isdigit() else s) for p, s in pieces]
    return [*family.head, *pieces, *((token, 0.0) for token in family.tail)]


def _merges(proto: Any, vocab: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """BPE merges recovered from the pieces, in HF's order: every split of a piece into two known pieces
    (ordered by the pieces' ids in the model), then all of them by the merged piece's score, the left and
    the right part's length, each from high to low (ties keep that order)."""
    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    candidates = []
    for piece, score in dict(vocab).items():
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in ids and piece[k:] in ids]
        splits.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        candidates += [(score, left, right) for left, right in splits]
    candidates.sort(key=lambda c: (c[0], len(c[1]), len(c[2])), reverse=True)
    return [(left, right) for _, left, right in candidates]


def _spm_normalizer(tk: Any, charsmap: bytes, options: dict[str, Any]) -> list[Any]:
    """SpmConverter's: the character map, then trailing spaces stripped, runs of spaces made one "▁"."""
    del options
    head = [tk.normalizers.Precompiled(charsmap)] if charsmap else []
    return [*head, tk.normalizers.Strip(left=False, right=True), tk.normalizers.Replace(tk.Regex(" {2,}"), METASPACE)]


def _albert_normalizer(tk: Any, charsmap: bytes, options: dict[str, Any]) -> list[Any]:
    """AlbertConverter's: `` and '' to ", accents removed unless keep_accents, lower case when do_lower_case,
    the character map, runs of spaces made one space (no strip: ALBERT's remove_space is the slow one's only)."""
    steps = [tk.normalizers.Replace("``", '"'), tk.normalizers.Replace("''", '"')]
    if not options["keep_accents"]:
        steps += [tk.normalizers.NFKD(), tk.normalizers.StripAccents()]
    if options["do_lower_case"]:
        steps.append(tk.normalizers.Lowercase())
    if charsmap:
        steps.append(tk.normalizers.Precompiled(charsmap))
    return [*steps, tk.normalizers.Replace(tk.Regex(" {2,}"), " ")]


def _deberta_normalizer(tk: Any, charsmap: bytes, options: dict[str, Any]) -> list[Any]:
    """DebertaV2Converter's: lower case when do_lower_case, stripped both sides, the character map, runs of
    spaces made one space."""
    steps = [tk.normalizers.Lowercase()] if options["do_lower_case"] else []
    steps.append(tk.normalizers.Strip())
    if charsmap:
        steps.append(tk.normalizers.Precompiled(charsmap))
    return [*steps, tk.normalizers.Replace(tk.Regex(" {2,}"), " ")]


NORMALIZERS: dict[str, Callable[[Any, bytes, dict[str, Any]], list[Any]]] = {
    "spm": _spm_normalizer,
    "albert": _albert_normalizer,
    "deberta": _deberta_normalizer,
}


def _added_token(tk: Any, spec: Any, where: str) -> Any:
    """An ``AddedToken`` from ``tokenizer_config.json``'s ``added_tokens_decoder`` entry."""
    if not isinstance(spec, dict) or not isinstance(spec.get("content"), str):
        raise ValueError(f"{where}: expected an object with a 'content' string, got {spec!r}")
    flags = ("single_word", "lstrip", "rstrip", "normalized", "special")
    return tk.AddedToken(spec["content"], **{k: bool(spec[k]) for k in flags if k in spec})


def build(
    tk: Any,
    path: Path,
    family: Family,
    files: dict[str, dict[str, Any]],
    special: dict[str, str],
    additional: list[str],
) -> Any:
    """The ``tokenizers.Tokenizer`` HF's fast tokenizer of ``family`` builds from the model at ``path``.

    ``files`` holds the checkpoint's ``tokenizer_config.json``, ``special_tokens_map.json`` and
    ``added_tokens.json`` (read as dicts, empty when absent); ``special`` the special tokens by role and
    ``additional`` the additional special tokens. Added tokens go in HF's order: the model's control and
    user-defined pieces, then the listed added tokens by id, then the special tokens left out."""
    proto = read_model(path)
    if proto.trainer_spec.byte_fallback:
        warnings.warn(
            f"{path}: the SentencePiece model uses byte_fallback, which HF's fast tokenizers (and tandem) do not: "
            "characters outside the vocabulary become the unknown token instead of byte pieces",
            stacklevel=3,
        )
    vocab = _vocabulary(proto, family)
    if proto.trainer_spec.model_type == UNIGRAM:
        unk = proto.trainer_spec.unk_id if family.unk_id is None else family.unk_id
        backend = tk.Tokenizer(tk.models.Unigram(vocab, unk_id=unk, byte_fallback=False))
    else:
        ids = {piece: i for i, (piece, _) in enumerate(vocab)}
        unk_piece = proto.trainer_spec.unk_piece
        backend = tk.Tokenizer(
            tk.models.BPE(ids, _merges(proto, vocab), unk_token=unk_piece, fuse_unk=True, byte_fallback=False)
        )
    # as SpmConverter: control pieces are special added tokens, user-defined ones plain added tokens
    backend.add_tokens(
        [
            tk.AddedToken(p.piece, normalized=False, special=p.type == CONTROL)
            for p in proto.pieces
            if p.type in (CONTROL, USER_DEFINED)
        ]
    )
    config = files["tokenizer_config.json"]
    options = {name: bool(config.get(name, default)) for name, default in family.options.items()}
    backend.normalizer = tk.normalizers.Sequence(
        NORMALIZERS[family.normalizer](tk, proto.normalizer_spec.precompiled_charsmap, options)
    )
    metaspace = tk.pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
    if "split_by_punct" in options:  # DebertaV2Converter: a Sequence, punctuation isolated first when asked
        punctuation = [tk.pre_tokenizers.Punctuation(behavior="isolated")] if options["split_by_punct"] else []
        metaspace = tk.pre_tokenizers.Sequence([*punctuation, metaspace])
    backend.pre_tokenizer = metaspace
    backend.decoder = tk.decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    _add_tokens(tk, backend, path.parent, files, special, additional, family)
    backend.post_processor = _template(tk, backend, family, path)
    return backend


def _listed_tokens(
    tk: Any, directory: Path, files: dict[str, dict[str, Any]], specials: set[str]
) -> list[tuple[int, Any]]:
    """(id, AddedToken) of ``tokenizer_config.json``'s ``added_tokens_decoder``; without one, as HF's legacy
    loading, of ``added_tokens.json`` (special tokens unnormalised, the others normalised)."""
    config = files["tokenizer_config.json"]
    if "added_tokens_decoder" in config:
        where, listed = directory / "tokenizer_config.json", config["added_tokens_decoder"]
    else:
        where, listed = directory / "added_tokens.json", files["added_tokens.json"]
    if not isinstance(listed, dict):
        raise ValueError(f"{where}: expected an object of added tokens, got {listed!r}")
    entries = []
    for key, value in listed.items():
        index = value if where.name == "added_tokens.json" else key
        try:
            index = int(index)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {key!r} has no integer id ({error})") from error
        if where.name == "added_tokens.json":
            value = {"content": key, "special": key in specials, "normalized": key not in specials}
        entries.append((index, _added_token(tk, value, f"{where}: {key}")))
    return sorted(entries, key=lambda entry: entry[0])


def _add_tokens(
    tk: Any,
    backend: Any,
    directory: Path,
    files: dict[str, dict[str, Any]],
    special: dict[str, str],
    additional: list[str],
    family: Family,
) -> None:
    """The listed added tokens (each id checked against the vocabulary), then the special tokens: those in
    ``added_tokens_decoder`` as listed there; the others (and all of them in older files) with the flags the
    files give them as objects or, failing that, the flags HF's fast class gives them (re-added, so they
    replace a piece's own); else added only if they are not added tokens yet."""
    entries = _listed_tokens(tk, directory, files, {*special.values(), *additional})
    for index, token in entries:
        backend.add_tokens([token])
        if backend.token_to_id(token.content) != index:
            raise ValueError(
                f"{directory}: the added token {token.content!r} has the id {index}, but the SentencePiece "
                f"model's vocabulary puts it at {backend.token_to_id(token.content)}"
            )
    config = files["tokenizer_config.json"]
    legacy = "added_tokens_decoder" not in config
    # HF reads special_tokens_map.json only for files without added_tokens_decoder, and then it wins
    declared = {**config, **files["special_tokens_map.json"]} if legacy else config
    listed = {token.content for _, token in entries}
    for role, content in special.items():
        if content in listed and not legacy:  # added_tokens_decoder's flags are final
            continue
        if isinstance(declared.get(role), dict):
            token = _added_token(tk, {**declared[role], "special": True}, f"{directory}: {role}")
        elif role in family.flags:
            token = tk.AddedToken(content, special=True, **family.flags[role])
        elif content in {t.content for t in backend.get_added_tokens_decoder().values()}:
            continue
        else:
            token = tk.AddedToken(content, special=True, normalized=False)
        backend.add_tokens([token])


def _template(tk: Any, backend: Any, family: Family, path: Path) -> Any:
    """The family's post-processor, over the converter's own tokens (``[CLS]``/``[SEP]`` or ``<s>``/``</s>``)."""
    cls, sep = ("[CLS]", "[SEP]") if family.template == "bert" else ("<s>", "</s>")
    ids = {token: backend.token_to_id(token) for token in (cls, sep)}
    for token, index in ids.items():
        if index is None:
            raise ValueError(f"{path}: {token!r}, which {family.tokenizer_class} puts around texts, is not in it")
    if family.template == "bert":
        single, pair = f"{cls}:0 $A:0 {sep}:0", f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1"
    else:
        single, pair = f"{cls} $A {sep}", f"{cls} $A {sep} {sep} $B {sep}"
    return tk.processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(ids.items()))
