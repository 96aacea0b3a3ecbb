"""``tandem.encode``: sentence embeddings of a list of texts in one call, as sentence-transformers' ``encode``."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np

from ..backends import load_backend
from ..core.nodes import SentencePooling
from .tokenizer import Tokenizer

_PROGRESS_FROM = 8  # batches: with show_progress_bar=None, longer inputs show a bar (when tqdm is installed)


def _bar(texts: int, batches: int, progress: bool | None) -> Any:
    """A tqdm bar over ``texts``, or None: shown when asked, or by default from :data:`_PROGRESS_FROM` batches."""
    if progress is False or (progress is None and batches < _PROGRESS_FROM):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            warnings.warn(
                "show_progress_bar=True needs tqdm (pip install tqdm); encoding without a progress bar", stacklevel=3
            )
        return None
    return tqdm(total=texts, desc="encode", unit="text")


def _own_tokenizer(model: Any) -> Tokenizer:
    """The tokenizer of the directory ``model`` was loaded from, read afresh (a tokenizer saved there since is
    the one used, and no two calls share a mutable tokenizer)."""
    directory = getattr(model, "name_or_path", None)
    if directory is None:
        raise ValueError(
            "this model was not loaded from a directory, so it has no tokenizer of its own: pass one, "
            "model.encode(tokenizer, texts) with tokenizer = tandem.Tokenizer.from_pretrained(path)"
        )
    return Tokenizer.from_pretrained(directory)


def encode(
    model: Any,
    tokenizer: Tokenizer | None,
    texts: str | Sequence[str],
    batch_size: int = 32,
    max_length: int | None = None,
    show_progress_bar: bool | None = None,
    normalize_embeddings: bool = False,
    convert_to_numpy: bool = True,
    convert_to_tensor: bool = False,
) -> Any:
    """Sentence embeddings of ``texts`` as a float32 numpy array (N, D) in input order ((D,) for one str).

    ``model`` is a ``sentence_embedding`` model in any backend (``tandem.from_pretrained`` of a
    sentence-transformers directory is one). ``tokenizer`` None: the tokenizer of the directory the model was
    loaded from (``model.name_or_path``), as sentence-transformers' ``model.encode(texts)``.

    As sentence-transformers does, the texts are sorted by length (longest first), tokenized ``batch_size`` at
    a time with padding to the longest of the batch and truncation to ``max_length`` (default: the
    directory's ``max_seq_length``, else the smaller of the tokenizer's ``model_max_length`` and the model's
    ``max_position_embeddings``), and run without gradients.
    The other arguments are sentence-transformers' ``encode`` arguments: ``show_progress_bar``, a tqdm bar
    (None: only for inputs of 8 batches or more; needs tqdm); ``normalize_embeddings``, unit length (L2,
    as ``F.normalize``; a no-op on a model that normalises already); ``convert_to_tensor``, one float32 tensor
    of the model's framework (``torch.Tensor``; ``jax.Array`` for flax and nnx) instead of numpy;
    ``convert_to_numpy=False``, a list of such 1-D tensors (one tensor for one str).

    Example:
        >>> model = tandem.from_pretrained(path)  # a sentence-transformers directory
        >>> tok = tandem.Tokenizer.from_pretrained(path)
        >>> tandem.encode(model, tok, ["A man is eating food.", "A man eats."]).shape
        (2, 384)
    """
    graph = getattr(model, "graph", None)
    head = next((h for h in getattr(graph, "heads", ()) if isinstance(h, SentencePooling)), None)
    if head is None:
        task = getattr(graph, "task", type(model).__name__)
        raise ValueError(
            f"encode needs a sentence_embedding model, got {task}: load it with "
            "tandem.from_pretrained(path, task='sentence_embedding', pooling=..., normalize=...)"
        )
    if tokenizer is None:
        tokenizer = _own_tokenizer(model)
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(
            f"tokenizer must be a tandem.Tokenizer, got {type(tokenizer).__name__}: the call is "
            "encode(model, tokenizer, texts), model.encode(texts) or model.encode(tokenizer, texts)"
        )
    for name, flag in (
        ("normalize_embeddings", normalize_embeddings),
        ("convert_to_numpy", convert_to_numpy),
        ("convert_to_tensor", convert_to_tensor),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    single = isinstance(texts, str)
    items = [texts] if single else list(texts) if isinstance(texts, (list, tuple)) else None
    if items is None or not all(isinstance(t, str) for t in items):
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    if max_length is None:
        max_length = head.max_seq_length or min(
            tokenizer.model_max_length or model.config.max_position_embeddings, model.config.max_position_embeddings
        )
    width = head.hidden_size * len(head.modes)
    out = np.zeros((len(items), width), dtype=np.float32)
    order = np.argsort([-len(t) for t in items], kind="stable")  # longest first: less padding per batch
    backend = load_backend(model.backend)
    starts = range(0, len(items), batch_size)
    bar = _bar(len(items), len(starts), show_progress_bar)
    try:
        with _no_grad(model.backend), _evaluation(model):
            for start in starts:
                rows = order[start : start + batch_size]
                texts_in = [items[i] for i in rows]
                batch = tokenizer(
                    texts_in, padding=True, truncation="longest_first", max_length=max_length, return_tensors="np"
                )
                vectors = model(**batch).embeddings
                if model.backend == "torch":
                    vectors = vectors.float()  # numpy has no bfloat16
                out[rows] = backend.to_numpy(vectors).astype(np.float32)
                if bar is not None:
                    bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()
    if normalize_embeddings:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
    if convert_to_tensor or not convert_to_numpy:
        out = _framework_tensor(out, model.backend)
        if not convert_to_tensor:
            out = list(out)
    return out[0] if single else out


def _framework_tensor(array: np.ndarray, backend: str) -> Any:
    """``array`` as a tensor of the model's framework, as sentence-transformers' ``convert_to_tensor``."""
    if backend == "torch":
        import torch

        return torch.from_numpy(array)
    import jax.numpy as jnp

    return jnp.asarray(array)


@contextmanager
def _evaluation(model: Any) -> Iterator[None]:
    """The model in evaluation mode (no dropout) for the call, as sentence-transformers' ``encode`` runs it, then
    back in the mode it was in: torch's ``training`` flags, module by module; nnx's ``deterministic``. A linen
    model is called with ``train=False`` anyway."""
    if model.backend == "torch":
        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            yield
        finally:
            for module, training in modes.items():
                module.training = training
    elif model.backend == "nnx" and not model.deterministic:
        model.eval()
        try:
            yield
        finally:
            model.train()
    else:
        yield


def _no_grad(backend: str) -> Any:
    """torch records no graph for these calls (jax records none anyway)."""
    if backend != "torch":
        return nullcontext()
    import torch

    return torch.inference_mode()


__all__ = ["encode"]
