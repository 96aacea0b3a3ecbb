"""Real text for ``tandem parity``: a batch tokenized from a text file with the checkpoint's own tokenizer, and the
reference of the ``sentence_embedding`` task (HF's base model, then sentence-transformers' pooling).

Example:
    >>> batch = texts_batch("models/all-MiniLM-L6-v2", "sentences.txt")  # one sentence a line
    >>> sorted(batch)
    ['attention_mask', 'input_ids', 'token_type_ids']
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import Tokenizer, config_from_hf, save_pretrained
from ..core import family_of
from ..core.nodes import SentencePooling
from ..core.sentence import read_sentence_transformers
from .references import hf_torch_model


def texts_batch(path: str | Path, texts: str | Path) -> dict[str, np.ndarray]:
    """The texts of the file ``texts`` (UTF-8, one a line; a tab splits a line into a pair; blank lines skipped)
    tokenized by the tokenizer of checkpoint ``path`` as HF's would be: padded to the longest, truncated
    longest-first to the tokenizer's ``model_max_length`` and at most the model's ``max_position_embeddings``."""
    file = Path(texts)
    if not file.is_file():
        raise FileNotFoundError(f"no texts file at {file}")
    try:
        lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise ValueError(f"{file}: not UTF-8 text ({error})") from None
    if not lines:
        raise ValueError(f"{file} holds no text: write one sentence a line (a tab separates a pair)")
    parts = [line.split("\t") for line in lines]
    if {len(p) for p in parts} not in ({1}, {2}):
        raise ValueError(f"{file}: every line must be one text, or every line a pair split by one tab")
    found = read_sentence_transformers(Path(path))
    directory = Path(path) if found is None else found[1]  # a sentence-transformers folder: its transformer's
    tokenizer = Tokenizer.from_pretrained(directory)
    positions = config_from_hf(directory).max_position_embeddings
    limit = min(tokenizer.model_max_length or positions, positions)
    first = [p[0] for p in parts]
    second = [p[1] for p in parts] if len(parts[0]) == 2 else None
    batch = tokenizer(first, second, padding=True, truncation=True, max_length=limit, return_tensors="np")
    return {name: np.asarray(value, dtype=np.int64) for name, value in batch.items()}


class SentenceReference(torch.nn.Module):
    """HF's base model followed by sentence-transformers' ``Pooling`` (and ``Normalize``) modules configured as
    ``head``: the independent reference of a ``sentence_embedding`` model. Returns the base model's outputs but
    the pooler's (which sentence-transformers does not read) and ``embeddings``."""

    def __init__(self, model: torch.nn.Module, head: SentencePooling) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the module path moved in v5
            from sentence_transformers.models import Normalize, Pooling
        self.model = model
        self.pooling = Pooling(head.hidden_size, pooling_mode=head.modes)
        self.normalize = Normalize() if head.normalize else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> dict:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        features = self.pooling({"token_embeddings": out.last_hidden_state, "attention_mask": mask})
        if self.normalize is not None:
            features = self.normalize(features)
        fields = {k: v for k, v in out.items() if k != "pooler_output"}
        return {**fields, "embeddings": features["sentence_embedding"]}


def sentence_reference(model: Any) -> SentenceReference | None:
    """The reference of tandem's torch ``sentence_embedding`` model ``model``, on its weights; None (and a
    warning: the backends are still compared with each other) when sentence-transformers is not installed."""
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        warnings.warn(
            "the sentence_embedding reference needs sentence-transformers (pip install sentence-transformers); "
            "comparing torch with flax only",
            stacklevel=2,
        )
        return None
    with tempfile.TemporaryDirectory(prefix="tandem-parity-") as tmp:
        save_pretrained(model, tmp)  # the transformer's weights as HF's base class reads them
        base = hf_torch_model(tmp, family_of(model.config).name, "base")
    return SentenceReference(base, model.graph.heads[0])
