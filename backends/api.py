"""The public entry points: build, from_pretrained, save_pretrained."""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.checkpoint import match_weights, read_weights, save_checkpoint, task_for_checkpoint
from ..core.config import FamilyConfig
from ..core.families import build_graph, config_from_hf
from ..core.hub import resolve
from ..core.io import FORMATS, Format, checkpoint_directory, parse_size
from ..core.params import init_params, param_entries
from ..core.sentence import SENTENCE_TASK, sentence_task, write_sentence_transformers
from ..core.sharding import Rules
from . import load_backend

Backend = Literal["torch", "flax", "nnx"]
DType = Literal["float32", "bfloat16", "float16"] | Any  # or a framework's dtype object
_DTYPES = ("float32", "bfloat16", "float16")


# Keywords HF's from_pretrained takes that are neither config fields nor tandem arguments: what to do instead.
_HF_LOADER_ARGUMENTS = {
    "output_hidden_states": "pass it to the call: model(..., output_hidden_states=True)",
    "output_attentions": "pass it to the call: model(..., output_attentions=True)",
    "return_dict": "pass it to the call: model(..., return_dict=False)",
    "attn_implementation": "tandem computes attention as HF's eager implementation does, in every backend",
    "local_files_only": "set HF_HUB_OFFLINE=1 to read the HF cache only",
    "cache_dir": "set HF_HUB_CACHE (or HF_HOME) to choose the HF cache",
    "device_map": "move a torch model with model.to(device); shard with mesh= (docs/scale-out.md)",
    "trust_remote_code": "tandem runs no code from a checkpoint",
    "ignore_mismatched_sizes": "a head whose shape an override changes is re-initialised (and named in a warning)",
}


def _dtype_name(dtype: Any) -> str:
    """``dtype`` as one of :data:`_DTYPES`: a name, or a framework's dtype object as HF takes one
    (``torch.float16``, ``jnp.bfloat16``, ``np.float32``), read by name so that no framework is imported."""
    name = dtype if isinstance(dtype, str) else str(getattr(dtype, "__name__", dtype)).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES} (or the torch / jax / numpy dtype of one), got {dtype!r}")
    return name


def _check_names(task: str | None, backend: str) -> None:
    """``task`` and ``backend`` are names (their values are checked where they are looked up)."""
    if task is not None and not isinstance(task, str):
        raise TypeError(f"task must be a str such as 'masked_lm', got {type(task).__name__}")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str such as 'torch', got {type(backend).__name__}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be a non-negative int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")


def build(
    config: FamilyConfig,
    task: str = "base",
    backend: Backend = "torch",
    seed: int = 0,
    dtype: DType = "float32",
    pooling: str | Sequence[str] | None = None,
    normalize: bool | None = None,
    mesh: Any = None,
    rules: str | Rules | None = None,
) -> Any:
    """A fresh model of ``config`` for ``task`` with HF's initialisation, drawn from ``seed``.

    The weights depend only on ``seed``, not on the backend: the same seed gives the same weights in torch,
    flax and nnx. The model is in eval mode (torch, nnx) / called with ``train=False`` by default (flax);
    an nnx model's dropout stream (``nnx.Rngs``) is seeded by ``seed`` too. ``task="sentence_embedding"``:
    the base model with a pooling head (``pooling``: ``"mean"`` (default), ``"cls"``, ``"max"``,
    ``"lasttoken"``, ... or several; ``normalize``: unit length), returning ``embeddings``.

    Example:
        >>> model = tandem.build(config, task="masked_lm", backend="flax")
    """
    dtype = _dtype_name(dtype)
    _check_names(task, backend)
    _check_seed(seed)
    _, task, sentence = sentence_task(None, task, pooling, normalize)
    graph = build_graph(config, task, sentence)
    adapter = load_backend(backend)
    sharded = {} if mesh is None else {"mesh": mesh, "rules": rules}
    weights = init_params(graph, seed) if mesh is None else _Fresh(graph, seed)
    if backend == "nnx":  # the module owns its dropout randomness
        return adapter.create(graph, config, weights, dtype, seed=seed, **sharded)
    return adapter.create(graph, config, weights, dtype, **sharded)


class _Fresh(Mapping[str, np.ndarray]):
    """Fresh weights made one parameter at a time when read: a sharded model copies its slice of each and
    drops it, so no rank holds all of them."""

    def __init__(self, graph: Any, seed: int) -> None:
        self.graph, self.seed = graph, seed
        self.keys_ = [entry.key for entry in param_entries(graph)]

    def __getitem__(self, key: str) -> np.ndarray:
        return init_params(self.graph, self.seed, only={key})[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


def from_pretrained(
    path: str | Path,
    backend: Backend = "torch",
    task: str | None = None,
    dtype: DType = "float32",
    strict: bool = True,
    revision: str | None = None,
    pooling: str | Sequence[str] | None = None,
    normalize: bool | None = None,
    mesh: Any = None,
    rules: str | Rules | None = None,
    **config_overrides: Any,
) -> Any:
    """Load an HF checkpoint directory into ``backend``: ``config.json`` plus weights in any HF format
    (``model.safetensors``, ``pytorch_model.bin`` read without unpickling code, ``flax_model.msgpack``;
    single or sharded). Old TF-era LayerNorm names (``gamma``/``beta``) are accepted. ``path`` may also be
    an HF Hub id (``"org/name"``, at ``revision``), found through ``huggingface_hub``'s cache and offline
    mode as HF does (:func:`tandem.core.hub.resolve`; the ``hub`` extra).

    ``task`` defaults to ``sentence_embedding`` for a sentence-transformers directory (``modules.json``: its
    pooling and normalisation, which ``pooling``/``normalize`` override; see :func:`build`), else to the one
    named by the config's ``architectures`` (``<Family>ForMaskedLM`` -> ``masked_lm``), else ``base``. Base
    weights load into head models and head checkpoints into base models; head weights the checkpoint lacks
    are initialised and listed in one warning. Unexpected or mis-shaped weights raise
    :class:`~tandem.CheckpointError` naming them (``strict=False``: report them in the warning instead).

    ``config_overrides`` replace fields of ``config.json`` (HF's ``from_pretrained(path, num_labels=5)``):
    any config field (``num_labels``, ``id2label``, dropouts...), validated as the config itself; an unknown
    name is a ValueError naming it. Head weights whose shape no longer fits (a classifier for a new
    ``num_labels``) are re-initialised and named in the warning, as HF's ``ignore_mismatched_sizes=True``
    does; a base-model weight that no longer fits (a new ``hidden_size``) is an error.
    """
    dtype = _dtype_name(dtype)
    _check_names(task, backend)
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    if "torch_dtype" in config_overrides:  # HF configs often hold a torch_dtype field, which changes nothing
        raise TypeError("from_pretrained takes dtype='float32'|'bfloat16'|'float16' (every backend), not torch_dtype")
    for name in sorted(config_overrides.keys() & _HF_LOADER_ARGUMENTS.keys()):
        raise TypeError(f"from_pretrained: {name} is not a config field; {_HF_LOADER_ARGUMENTS[name]}")
    root = checkpoint_directory(resolve(path, revision, argument="path"), "path")
    directory, task, sentence = sentence_task(root, task, pooling, normalize)
    config = config_from_hf(directory)
    if config_overrides:
        config = config.with_overrides(config_overrides, "from_pretrained")
    checkpoint_task = task_for_checkpoint(config)
    graph = build_graph(config, task or checkpoint_task or "base", sentence)
    adapter = load_backend(backend)
    checkpoint = read_weights(directory)
    resize = bool(config_overrides)  # a head resized by the overrides is re-initialised
    weights, _ = match_weights(graph, config, checkpoint, checkpoint_task, strict, reinitialise_mismatched_heads=resize)
    if mesh is not None:  # each rank reads its slices of the memory-mapped weights
        model = adapter.create(graph, config, weights, dtype, mesh=mesh, rules=rules)
    else:
        model = adapter.create(graph, config, weights, dtype)
    model.name_or_path = str(root)  # HF's attribute name; here the local folder (a Hub id: its snapshot)
    return model


def save_pretrained(
    model: Any, path: str | Path, format: Format = "safetensors", max_shard_size: int | str | None = None
) -> None:
    """Write ``config.json`` (with ``architectures``) and the weights that HF loads.

    ``format``: ``"safetensors"`` (``model.safetensors``, HF PyTorch), ``"bin"`` (``pytorch_model.bin``) or
    ``"msgpack"`` (``flax_model.msgpack``, HF Flax); ``max_shard_size`` (e.g. ``"200MB"``) shards with an
    index as HF does. The checkpoint is written into a staging folder and moved into place when complete,
    so a failure never leaves a half-written checkpoint; the move removes weights of any other format in
    ``path``, which then holds exactly this checkpoint (``docs/reliability.md``). A ``sentence_embedding``
    model writes its transformer's checkpoint and its pooling as sentence-transformers modules
    (``modules.json``, ``1_Pooling/``), so that sentence-transformers and ``from_pretrained`` read it back.

    A sharded model (``mesh=``): call it on every rank / process; the tensors are gathered one at a time and
    rank / process 0 writes the full checkpoint (``docs/scale-out.md``).
    """
    graph = getattr(model, "graph", None)
    if graph is None:
        raise TypeError(f"save_pretrained expects a tandem model, got {type(model).__name__}")
    if not isinstance(format, str) or format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    if max_shard_size is not None:
        parse_size(max_shard_size)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike naming a directory, got {type(path).__name__}")
    adapter = load_backend(model.backend)
    task = "base" if graph.task == SENTENCE_TASK else graph.task  # the pooling head has no weights
    if getattr(model, "sharding", None) is not None and hasattr(adapter, "save_sharded"):
        adapter.save_sharded(model, path, task, format, max_shard_size)  # every rank calls it; rank 0 writes
        return
    weights = adapter.export(model)
    save_checkpoint(path, model.config, task, weights, format=format, max_shard_size=max_shard_size)
    if graph.task == SENTENCE_TASK:  # the pooling as sentence-transformers modules, which from_pretrained reads
        write_sentence_transformers(path, graph.heads[0])
