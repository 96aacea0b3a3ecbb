"""The PyTorch adapter: graph + weights -> ``torch.nn.Module``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.config import FamilyConfig
from ...core.nodes import ModelGraph
from ...core.params import param_entries
from . import relative  # noqa: F401  (registers its node kinds in IMPLS)
from .generation import decoder_session, to_numpy
from .model import TorchModel

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def create(
    graph: ModelGraph,
    config: FamilyConfig,
    weights: Mapping[str, np.ndarray],
    dtype: str,
    mesh: Any = None,
    rules: Any = None,
) -> TorchModel:
    """A :class:`TorchModel` holding ``weights`` (canonical HF PyTorch keys), in eval mode; with ``mesh`` (a
    ``DeviceMesh``), sharded on it by ``rules`` (``sharding.py``)."""
    if mesh is not None:
        from . import sharding  # torch.distributed only when asked for

        return sharding.create(graph, config, weights, _DTYPES[dtype], mesh, rules)
    model = TorchModel(graph, config, weights)
    if dtype != "float32":
        model = model.to(_DTYPES[dtype])
    return model.eval()


def export(model: TorchModel) -> dict[str, np.ndarray]:
    """The canonical weights of ``model`` (no tied aliases) as float32-or-native numpy arrays."""
    out = {}
    for entry in param_entries(model.graph):
        tensor = model.get_parameter(entry.key).detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        out[entry.key] = tensor.numpy()
    return out


def save_sharded(model: TorchModel, path: str | Path, task: str, format: str, max_shard_size: Any) -> None:
    """Write the full checkpoint of a sharded model: every rank calls it, rank 0 writes (``sharding.save``)."""
    from . import sharding

    sharding.save(model, path, task, format, max_shard_size)


__all__ = ["TorchModel", "create", "decoder_session", "export", "save_sharded", "to_numpy"]
