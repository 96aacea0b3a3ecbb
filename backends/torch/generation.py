"""The torch side of ``tandem.generate``: ids in, next-token logits out, the KV cache kept in between."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .model import TorchModel


def to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


class DecoderSession:
    """One generation run: the prompt, then one call per new token.

    With ``use_cache`` each step feeds only the newest token and the cache grows by one position (HF
    PyTorch's cache); without it each step runs the whole sequence again.
    """

    def __init__(
        self, model: TorchModel, use_cache: bool, encoder_states: Any = None, encoder_mask: Any = None
    ) -> None:
        self.model = model
        self.use_cache = use_cache
        self.device = next(model.parameters()).device
        self.encoder_states = None if encoder_states is None else self._tensor(encoder_states)
        self.encoder_mask = None if encoder_mask is None else self._tensor(encoder_mask)
        self.past: tuple[tuple[Tensor, ...], ...] | None = None

    def _tensor(self, value: Any) -> Tensor:
        return (
            value.to(self.device) if isinstance(value, Tensor) else torch.from_numpy(np.asarray(value)).to(self.device)
        )

    def _logits(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cached: bool) -> np.ndarray:
        new = slice(-1, None) if cached else slice(None)
        with torch.no_grad():
            out = self.model(
                input_ids=self._tensor(ids[:, new]),
                attention_mask=self._tensor(mask),
                position_ids=self._tensor(positions[:, new]),
                # Cached cross-attention keys/values replace the encoder states after the first call.
                encoder_hidden_states=None if cached else self.encoder_states,
                encoder_attention_mask=self.encoder_mask,
                past_key_values=self.past if cached else None,
                use_cache=self.use_cache,
            )
        if self.use_cache:
            self.past = out.past_key_values
        return out.logits[:, -1].float().cpu().numpy()

    def prefill(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Next-token logits (B, V) after the prompt."""
        return self._logits(ids, mask, positions, cached=False)

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Next-token logits (B, V) after the sequence so far (whose last column is new)."""
        return self._logits(ids, mask, positions, cached=self.use_cache)

    def to_native(self, ids: np.ndarray) -> Tensor:
        return torch.from_numpy(ids).to(self.device)


def decoder_session(
    model: TorchModel, max_length: int, use_cache: bool, encoder_states: Any = None, encoder_mask: Any = None
) -> DecoderSession:
    """A :class:`DecoderSession` (``max_length`` is not needed: the torch cache grows)."""
    del max_length
    return DecoderSession(model, use_cache, encoder_states, encoder_mask)
