"""The methods HF's models have that every backend's model shares: ``num_parameters``, ``save_pretrained``;
and sentence-transformers' ``encode``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.io import Format
from ..core.nodes import Embed
from ..core.params import param_entries


class PretrainedMethods:
    """Mixed into each backend's model class, which provides ``graph``, ``config`` and ``backend``."""

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters, a shared one counted once, as HF's ``num_parameters``.

        ``only_trainable``: those that take gradients (in torch, ``requires_grad``; every parameter in JAX);
        ``exclude_embeddings``: without the embedding tables (word, position, token type).
        """
        entries = param_entries(self.graph)  # type: ignore[attr-defined]
        return sum(
            int(np.prod(e.spec.shape))
            for e in entries
            if not (exclude_embeddings and isinstance(e.node, Embed)) and not (only_trainable and self._frozen(e.key))
        )

    def _frozen(self, key: str) -> bool:
        """Whether the parameter at HF PyTorch ``key`` is excluded from training (a backend may override)."""
        return False

    def save_pretrained(
        self, path: str | os.PathLike[str], format: Format = "safetensors", max_shard_size: int | str | None = None
    ) -> None:
        """:func:`tandem.save_pretrained` of this model: ``model.save_pretrained(path)``, as in HF."""
        from .api import save_pretrained

        save_pretrained(self, path, format=format, max_shard_size=max_shard_size)

    def encode(
        self,
        texts_or_tokenizer: Any,
        texts: str | Sequence[str] | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
    ) -> Any:
        """:func:`tandem.encode` with this model (a ``sentence_embedding`` one), with sentence-transformers'
        arguments (``normalize_embeddings``, ``convert_to_tensor``...): ``model.encode(texts)`` tokenizes
        with the tokenizer of the directory the model was loaded from; ``model.encode(tok, texts)`` with
        ``tok``."""
        from ..text import encode

        if texts is not None and not isinstance(texts, (str, list, tuple)):
            raise TypeError(
                f"model.encode(texts, ...) or model.encode(tokenizer, texts, ...): the second argument is the texts, "
                f"got {type(texts).__name__}; pass batch_size and the other options by keyword"
            )
        tokenizer, texts = (None, texts_or_tokenizer) if texts is None else (texts_or_tokenizer, texts)
        return encode(
            self,
            tokenizer,
            texts,
            batch_size=batch_size,
            max_length=max_length,
            show_progress_bar=show_progress_bar,
            normalize_embeddings=normalize_embeddings,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
        )
