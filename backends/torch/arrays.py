"""The torch side of the call plan: input specs and the array primitives of ``run_call``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.call import ArraySpec, describe


def spec(x: Tensor | None) -> ArraySpec | None:
    """A tensor's shape and dtype kind, for the call plan."""
    if x is None:
        return None
    if x.dtype == torch.bool:
        return describe(x.shape, "bool")
    return describe(x.shape, "float" if x.is_floating_point() else "complex" if x.is_complex() else "int")


class TorchOps:
    """The array primitives of :func:`~tandem.core.call.run_call` on ``device``; floats in ``dtype``."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype

    def ones(self, shape: tuple[int, ...]) -> Tensor:
        return torch.ones(shape, dtype=torch.long, device=self.device)

    def zeros(self, shape: tuple[int, ...]) -> Tensor:
        return torch.zeros(shape, dtype=torch.long, device=self.device)

    def full(self, shape: tuple[int, ...], value: int) -> Tensor:
        return torch.full(shape, value, dtype=torch.long, device=self.device)

    def arange(self, n: int) -> Tensor:
        return torch.arange(n, device=self.device)

    def to_int(self, x: Tensor) -> Tensor:
        return x.long()

    def compute(self, x: Tensor) -> Tensor:
        return x.to(self.dtype)

    def pad(self, x: Tensor, n: int, value: int) -> Tensor:
        return F.pad(x, (0, n), value=value)

    def concat(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b], dim=1)

    def first(self, ids: Tensor, value: int) -> Tensor:
        return torch.argmax(ids.eq(value).int(), dim=-1)

    def broadcast(self, x: Tensor, shape: tuple[int, ...]) -> Tensor:
        return x.expand(shape)

    def column(self, x: Tensor, index: int) -> Tensor:
        return x[..., index].contiguous()

    def cumsum(self, x: Tensor) -> Tensor:
        return torch.cumsum(x, dim=1)


def as_tensor(value: Any, device: torch.device) -> Tensor | None:
    """A tensor as given; a numpy array or nested list as a tensor on ``device`` (HF wants tensors; tandem
    takes what the flax backend takes too)."""
    if value is None or isinstance(value, Tensor):
        return value
    return torch.from_numpy(np.asarray(value)).to(device)
