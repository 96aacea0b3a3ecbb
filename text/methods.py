"""The rest of HF's tokenizer surface on ``tandem.Tokenizer``: tokens and ids both ways, the special tokens by role,
``len``, ``get_vocab``, ``tokenize``, ``encode`` and ``save_pretrained``; and ``Encoding``, what a call returns.

A mixin of :class:`tandem.Tokenizer`, which provides ``backend`` (the ``tokenizers.Tokenizer``),
``special_tokens`` (role -> token), ``additional_special_tokens`` and the settings ``tokenizer_config.json`` holds.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.sentence import transformer_folder

# HF's SPECIAL_TOKENS_ATTRIBUTES order, which all_special_tokens follows
ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_NO_LIMIT = int(1e30)  # what HF writes as model_max_length when there is none


class Encoding(dict):
    """A tokenizer's output, like HF's ``BatchEncoding``: a dict (``model(**enc)``) readable as attributes,
    with ``word_ids(i)`` / ``tokens(i)`` of each row."""

    def __init__(self, fields: dict[str, Any], encodings: Sequence[Any] = ()) -> None:
        super().__init__(fields)
        self._encodings = list(encodings)  # the tokenizers library's Encoding of each row

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """The word of each token of row ``batch_index`` (None for special and padding tokens), as HF's."""
        return self._row(batch_index).word_ids

    def tokens(self, batch_index: int = 0) -> list[str]:
        """The tokens of row ``batch_index``, padding included, as HF's ``BatchEncoding.tokens``."""
        return self._row(batch_index).tokens

    def to(self, device: Any) -> Encoding:
        """The torch tensors moved to ``device``, as HF's ``BatchEncoding.to`` (other values are kept as they are)."""
        moved = {k: v.to(device) if hasattr(v, "to") and not isinstance(v, np.ndarray) else v for k, v in self.items()}
        return Encoding(moved, self._encodings)

    def _row(self, index: int) -> Any:
        if not -len(self._encodings) <= index < len(self._encodings):
            raise IndexError(f"batch_index {index} is out of range for {len(self._encodings)} rows")
        return self._encodings[index]

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no {name!r} in this encoding; it has {', '.join(self)}") from None


def _role_properties(role: str) -> tuple[property, property]:
    def token(self: TokenizerMethods) -> str | None:
        return self.special_tokens.get(role)

    def token_id(self: TokenizerMethods) -> int | None:
        return self.token_id(role)

    token.__doc__ = f"The {role.replace('_', ' ')} (None when the tokenizer has none), as HF's ``{role}``."
    token_id.__doc__ = f"The id of the {role.replace('_', ' ')}, as HF's ``{role}_id``."
    return property(token), property(token_id)


class TokenizerMethods:
    """HF's tokenizer methods and properties beyond the call and ``decode``."""

    backend: Any
    special_tokens: dict[str, str]
    additional_special_tokens: list[str]
    model_max_length: int | None
    padding_side: str
    truncation_side: str
    model_input_names: list[str]
    clean_up_tokenization_spaces: bool

    bos_token, bos_token_id = _role_properties("bos_token")
    eos_token, eos_token_id = _role_properties("eos_token")
    unk_token, unk_token_id = _role_properties("unk_token")
    sep_token, sep_token_id = _role_properties("sep_token")
    pad_token, pad_token_id = _role_properties("pad_token")
    cls_token, cls_token_id = _role_properties("cls_token")
    mask_token, mask_token_id = _role_properties("mask_token")

    def token_id(self, name: str) -> int | None:
        """The id of a special token by role (``"pad_token"``, ``"cls_token"``...), None when it has none."""
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """The size of the base vocabulary, without added tokens (HF's ``vocab_size``; ``len(tok)`` counts them)."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """The vocabulary with the added tokens, as HF's ``len(tokenizer)``."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """token -> id over the whole vocabulary, added tokens included."""
        return self.backend.get_vocab(with_added_tokens=True)

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        """role -> token, and ``additional_special_tokens`` when there are any, as HF's ``special_tokens_map``."""
        roles: dict[str, Any] = {r: self.special_tokens[r] for r in ROLES if r in self.special_tokens}
        if self.additional_special_tokens:
            roles["additional_special_tokens"] = list(self.additional_special_tokens)
        return roles

    @property
    def all_special_tokens(self) -> list[str]:
        """Every special token once, roles first (HF's order), then the additional ones."""
        tokens = [self.special_tokens[r] for r in ROLES if r in self.special_tokens]
        return list(dict.fromkeys([*tokens, *self.additional_special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def convert_ids_to_tokens(self, ids: int | Sequence[int] | Any, skip_special_tokens: bool = False) -> Any:
        """The token of one id (an int gives a str) or of each id of a sequence / 1-D array (a list)."""
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            return self.backend.id_to_token(int(ids))
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.backend.id_to_token(int(i)) for i in _ids(ids) if int(i) not in special]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> Any:
        """The id of one token (a str gives an int) or of each token of a list; unknown tokens give the
        unknown token's id (None when there is none), as HF's."""
        if isinstance(tokens, str):
            found = self.backend.token_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """The text of a list of tokens, through the tokenizer's decoder (HF's fast tokenizers')."""
        decoder = self.backend.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """The tokens of ``text`` (and ``pair``), without special tokens unless asked, as HF's ``tokenize``."""
        if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
            raise TypeError(f"tokenize takes a str (and a str pair), got {type(text).__name__}")
        return self.backend.encode(text, pair, add_special_tokens=add_special_tokens).tokens

    def encode(self, text: str, text_pair: str | None = None, **kwargs: Any) -> Any:
        """The ``input_ids`` of one text (or pair): ``tok(text, text_pair, **kwargs)["input_ids"]``, as HF's
        ``encode`` (a list, or a (1, S) tensor with ``return_tensors``)."""
        if not isinstance(text, str) or (text_pair is not None and not isinstance(text_pair, str)):
            raise TypeError(f"encode takes one str (and a str pair), got {type(text).__name__}; call tok(texts)")
        return self(text, text_pair, **kwargs)["input_ids"]  # type: ignore[operator]

    def encode_plus(self, text: str, text_pair: str | None = None, **kwargs: Any) -> Encoding:
        """HF's older name for a call on one text (or pair): ``tok(text, text_pair, **kwargs)``."""
        if not isinstance(text, str) or (text_pair is not None and not isinstance(text_pair, str)):
            raise TypeError(f"encode_plus takes one str (and a str pair), got {type(text).__name__}")
        return self(text, text_pair, **kwargs)  # type: ignore[operator]

    def batch_encode_plus(self, batch_text_or_text_pairs: Sequence[str | Sequence[str]], **kwargs: Any) -> Encoding:
        """HF's older name for a batch call: a list of texts, or of (text, pair) tuples."""
        items = list(batch_text_or_text_pairs) if isinstance(batch_text_or_text_pairs, (list, tuple)) else []
        if items and all(isinstance(i, (list, tuple)) and len(i) == 2 for i in items):
            return self([i[0] for i in items], [i[1] for i in items], **kwargs)  # type: ignore[operator]
        if not items or not all(isinstance(i, str) for i in items):
            raise TypeError("batch_encode_plus takes a non-empty list of str, or of (text, pair) tuples")
        return self(items, **kwargs)  # type: ignore[operator]

    def pad(
        self,
        encoded_inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
    ) -> Encoding:
        """HF's ``pad``: unpadded rows (a dict of lists of rows, or one dict per row as a data collator such as
        HF's ``DataCollatorWithPadding`` hands them) padded as a call pads them: ``input_ids`` with the pad id,
        ``token_type_ids`` with 0, ``attention_mask`` with 0 (made when missing), ``special_tokens_mask`` with 1,
        on ``padding_side``. Other fields (``labels``) are kept as they are; ``return_tensors`` converts all."""
        if isinstance(encoded_inputs, (list, tuple)):
            if not encoded_inputs or not all(isinstance(row, Mapping) for row in encoded_inputs):
                raise TypeError("pad takes a dict of lists of rows, or a non-empty list of dicts (one per row)")
            encoded_inputs = {k: [row[k] for row in encoded_inputs] for k in encoded_inputs[0]}
        if not isinstance(encoded_inputs, Mapping) or "input_ids" not in encoded_inputs:
            raise ValueError("pad needs input_ids (a list of rows of ids)")
        pad, _, length = self._strategies(padding, False, max_length, pad_to_multiple_of)  # type: ignore[attr-defined]
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
        fields = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in encoded_inputs.items()}
        single = not fields["input_ids"] or isinstance(fields["input_ids"][0], int)
        fill = {"input_ids": self.pad_token_id, "token_type_ids": 0, "attention_mask": 0, "special_tokens_mask": 1}
        if single:
            fields = {k: [v] for k, v in fields.items()}
        fields = {k: [_ids(row) for row in v] if k in fill else list(v) for k, v in fields.items()}
        mask = "attention_mask" in self.model_input_names if return_attention_mask is None else return_attention_mask
        if mask and "attention_mask" not in fields:
            fields["attention_mask"] = [[1] * len(row) for row in fields["input_ids"]]
        if pad == "longest":
            length = max(len(row) for row in fields["input_ids"])
        if pad is not None and pad_to_multiple_of and length % pad_to_multiple_of:
            length += pad_to_multiple_of - length % pad_to_multiple_of
        missing = [0 if pad is None else max(length - len(row), 0) for row in fields["input_ids"]]  # type: ignore[operator]
        for name in (n for n in fill if n in fields):
            extra = [[fill[name]] * count for count in missing]
            fields[name] = [r + e if side == "right" else e + r for r, e in zip(fields[name], extra, strict=True)]
        if return_tensors is not None:
            return Encoding({k: _as_tensor(v, return_tensors) for k, v in fields.items()})
        return Encoding({k: v[0] for k, v in fields.items()} if single else fields)

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> tuple[str, ...]:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into
        ``save_directory``, which ``Tokenizer.from_pretrained``, HF's ``AutoTokenizer`` (as a
        ``PreTrainedTokenizerFast``, giving the same ids) and sentence-transformers read back. Each file is
        moved into place when complete. Returns the paths written, as HF does."""
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"save_directory must be a str or os.PathLike, got {type(save_directory).__name__}")
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"save_directory={str(directory)!r} is a file")
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",  # tokenizer.json holds every rule, as this class reads it
            "model_max_length": _NO_LIMIT if self.model_max_length is None else self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "model_input_names": list(self.model_input_names),
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            **self.special_tokens_map,
        }
        paths = []
        for name, write in (
            ("tokenizer.json", lambda path: self.backend.save(path)),
            ("tokenizer_config.json", lambda path: _write_json(path, config)),
            ("special_tokens_map.json", lambda path: _write_json(path, self.special_tokens_map)),
        ):
            handle, staged = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
            os.close(handle)
            try:
                write(staged)
                os.replace(staged, directory / name)
            finally:
                if os.path.exists(staged):
                    os.unlink(staged)
            paths.append(str(directory / name))
        return tuple(paths)


def tokenizer_folder(directory: Path) -> Path:
    """Where a checkpoint's tokenizer files are: ``directory``, or, for a sentence-transformers folder whose
    ``Transformer`` module sits in a subfolder (``0_Transformer/``, the older layout) and that has no tokenizer
    files of its own, that subfolder (where sentence-transformers reads them)."""
    if any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return directory
    return transformer_folder(directory)


def _ids(ids: Any) -> list[int]:
    """A sequence or 1-D array of ids of any framework as a list of ints."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or any(isinstance(i, (list, tuple)) for i in ids):
        raise TypeError(f"expected an id or a 1-D sequence of ids, got {type(ids).__name__}")
    return list(ids)


def _as_tensor(values: Any, kind: str) -> Any:
    """A field of :meth:`TokenizerMethods.pad` as HF's ``BatchEncoding`` converts it (ids as int64)."""
    if kind == "np":
        return np.asarray(values)
    if kind == "pt":
        import torch

        return torch.tensor(values)
    if kind == "jax":
        import jax.numpy as jnp

        return jnp.asarray(values)
    raise ValueError(f"return_tensors must be 'np', 'pt', 'jax' or None, got {kind!r}")


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, ensure_ascii=False)
        file.write("\n")
