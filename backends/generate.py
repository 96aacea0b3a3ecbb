"""Text generation for tandem decoders, the same algorithm for both backends.

The loop, the token choice and the random numbers live here, on the host, in numpy: a backend only turns
(ids, mask, positions) into next-token logits (``decoder_session`` in each backend package). So greedy
decoding picks the same tokens in torch and flax, and sampling with the same ``seed`` draws the same
uniform numbers and therefore the same tokens (the logits of the two backends agree to ~1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.nodes import LMHead
from . import load_backend


def generate(
    model: Any,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    encoder_hidden_states: Any = None,
    encoder_attention_mask: Any = None,
) -> Any:
    """Extend each row of ``input_ids`` by up to ``max_new_tokens`` tokens, as HF's ``generate``.

    ``model`` is a tandem decoder with a language-model head (``task="causal_lm"``, ``is_decoder=True``)
    in either backend; the result is ``(batch, prompt + generated)`` ids in that backend's array type.

    - Greedy by default; ``do_sample=True`` samples from the softmax of ``logits / temperature``, keeping
      the ``top_k`` most likely tokens and then the smallest set whose probability exceeds ``top_p`` (HF's
      rules). The uniform numbers come from ``numpy.random.default_rng(seed)``, one per row and step, so a
      seed gives the same tokens in torch and flax.
    - Left padding: ``attention_mask`` marks the prompt's real tokens; positions count real tokens only
      (``cumsum(mask) - 1``), as HF PyTorch's ``generate`` does.
    - ``eos_token_id`` (default: the config's, if any): a row that produced it is finished and continues
      with ``pad_token_id`` (default: the config's); generation stops early once every row has finished.
    - ``use_cache``: decode one token per step from a KV cache (torch grows it; flax preallocates
      ``prompt + max_new_tokens`` slots so the step compiles once). ``False`` recomputes the whole
      sequence each step.
    - ``encoder_hidden_states``/``encoder_attention_mask``: for a decoder with cross-attention (encoder-decoder);
      their keys and values are computed once.

    Example:
        >>> config = tandem.config_from_hf("decoder/config.json")  # is_decoder=True
        >>> model = tandem.build(config, task="causal_lm", backend="flax")
        >>> tandem.generate(model, np.array([[101, 2023]]), max_new_tokens=8).shape
        (1, 10)
    """
    graph = model.graph
    if not graph.is_decoder:
        raise ValueError(
            f"generate needs a decoder: {graph.family} {graph.task} has no causal self-attention "
            "(build it with is_decoder=True)"
        )
    if not any(isinstance(head, LMHead) and head.output == "logits" for head in graph.heads):
        raise ValueError(f"generate needs a language-model head producing logits; {graph.family} {graph.task} has none")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    _check_sampling(do_sample, temperature, top_k, top_p)
    backend = load_backend(model.backend)
    ids = backend.to_numpy(input_ids).astype(np.int64)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else backend.to_numpy(attention_mask).astype(np.int64)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {ids.shape}, got {mask.shape}")
    positions = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)  # HF PyTorch's generate
    table = graph.backbone.embeddings.position.num_embeddings
    if int(mask.sum(axis=1).max()) + max_new_tokens > table:
        raise ValueError(
            f"a prompt of {int(mask.sum(axis=1).max())} tokens plus max_new_tokens={max_new_tokens} exceeds the "
            f"{table} positions of the model's position table"
        )
    eos = _eos_ids(model.config, eos_token_id)
    pad = pad_token_id if pad_token_id is not None else getattr(model.config, "pad_token_id", None)
    if eos is not None and pad is None:
        pad = int(eos[0])  # HF's fallback
    rng = np.random.default_rng(seed) if do_sample else None

    session = backend.decoder_session(
        model, ids.shape[1] + max_new_tokens, use_cache, encoder_hidden_states, encoder_attention_mask
    )
    logits = session.prefill(ids, mask, positions)
    unfinished = np.ones(ids.shape[0], dtype=bool)
    for step in range(max_new_tokens):
        tokens = _next_tokens(logits, rng, temperature or 1.0, top_k, top_p)
        if eos is not None:
            tokens = np.where(unfinished, tokens, pad)
            unfinished &= ~np.isin(tokens, eos)
        ids = np.concatenate([ids, tokens[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones_like(tokens)[:, None]], axis=1)
        positions = np.concatenate([positions, mask.sum(axis=1, keepdims=True) - 1], axis=1)
        if step + 1 == max_new_tokens or not unfinished.any():
            break
        logits = session.step(ids, mask, positions)
    return session.to_native(ids)


def _check_sampling(do_sample: bool, temperature: float | None, top_k: int | None, top_p: float | None) -> None:
    if not do_sample:
        given = [
            name for name, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)) if v is not None
        ]
        if given:
            raise ValueError(f"{', '.join(given)} only apply when sampling: pass do_sample=True")
        return
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _eos_ids(config: Any, eos_token_id: int | Sequence[int] | None) -> np.ndarray | None:
    value = eos_token_id if eos_token_id is not None else getattr(config, "eos_token_id", None)
    if value is None:
        return None
    return np.atleast_1d(np.asarray(value, dtype=np.int64))


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _next_tokens(
    logits: np.ndarray, rng: np.random.Generator | None, temperature: float, top_k: int | None, top_p: float | None
) -> np.ndarray:
    """The next token per row from (B, V) logits: argmax, or a draw by inverse CDF (float64, on the host)."""
    if rng is None:
        return np.argmax(logits, axis=-1)
    scores = logits.astype(np.float64) / temperature
    vocab = scores.shape[-1]
    if top_k is not None and top_k < vocab:
        kth = np.sort(scores, axis=-1)[:, -top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)  # ties with the k-th stay, as in HF
    if top_p is not None and top_p < 1.0:
        order = np.argsort(scores, axis=-1, kind="stable")  # ascending, as HF's TopPLogitsWarper
        ranked = np.take_along_axis(scores, order, axis=-1)
        drop = np.cumsum(_softmax(ranked), axis=-1) <= 1.0 - top_p
        drop[:, -1] = False  # the most likely token always stays
        np.put_along_axis(scores, order, np.where(drop, -np.inf, ranked), axis=-1)
    cdf = np.cumsum(_softmax(scores), axis=-1)
    u = rng.random(scores.shape[0])[:, None] * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=-1), vocab - 1)
