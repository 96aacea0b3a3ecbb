"""The gated (GLU) feed-forward's inner state."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def glu(gated: bool, act: Callable[[Tensor], Tensor], y: Tensor) -> Tensor:
    """``act(y)``, or for a gated layer ``act(input) * gate`` of ``y``'s two halves (HF's ``chunk(2)``)."""
    if not gated:
        return act(y)
    value, gate = y.chunk(2, dim=-1)
    return act(value) * gate
