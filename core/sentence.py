"""Sentence embeddings: the ``sentence_embedding`` task, which any family's base model can take, and how a
sentence-transformers directory configures it.

A sentence-transformers directory is an HF checkpoint plus ``modules.json``, which lists the pipeline: a
``Transformer`` (the checkpoint, usually at the top of the directory), a ``Pooling`` module
(``1_Pooling/config.json``: which modes) and optionally ``Normalize``. ``sentence_bert_config.json`` gives the
length inputs are truncated to. tandem reads them into a :class:`SentenceSpec`, and the graph is the family's
base model with a :class:`~tandem.core.nodes.SentencePooling` head that returns ``embeddings``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from .nodes import POOLING_MODES, ModelGraph, PoolingMode, SentencePooling
from .nodes.base import _Frozen

SENTENCE_TASK = "sentence_embedding"

# sentence-transformers' older pooling config: one flag per mode, concatenated in this order when several are set.
_LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


class SentenceSpec(_Frozen):
    """How ``task="sentence_embedding"`` pools: its modes (concatenated in order, see
    :class:`~tandem.core.nodes.SentencePooling`), whether it normalises to unit length, and the length
    sentence-transformers truncates inputs to (None: the tokenizer's own limit)."""

    modes: tuple[PoolingMode, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some_mode(self) -> SentenceSpec:
        if not self.modes:
            raise ValueError(f"pooling needs at least one mode of {', '.join(POOLING_MODES)}")
        return self

    def head(self, hidden_size: int) -> SentencePooling:
        return SentencePooling(hidden_size=hidden_size, **self.model_dump())


def sentence_spec(
    pooling: str | Sequence[str] | None = None, normalize: bool | None = None, base: SentenceSpec | None = None
) -> SentenceSpec:
    """``base`` (default: mean pooling, not normalised) with the arguments that are given replacing its fields.
    ``pooling``: one mode or several (concatenated), from :data:`~tandem.core.nodes.POOLING_MODES`."""
    base = base or SentenceSpec()
    update: dict[str, Any] = {}
    if pooling is not None:
        modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        bad = [m for m in modes if not isinstance(m, str) or m not in POOLING_MODES]
        if bad or not modes:
            raise ValueError(f"pooling must be one or more of {', '.join(POOLING_MODES)}; got {pooling!r}")
        update["modes"] = modes
    if normalize is not None:
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
        update["normalize"] = normalize
    return base.model_copy(update=update)


def sentence_embedding_graph(base: ModelGraph, spec: SentenceSpec, hidden_size: int) -> ModelGraph:
    """The base-task graph ``base`` with a pooling head: the ``sentence_embedding`` task. Its weights are the
    base model's, so any checkpoint of the family loads into it."""
    if base.task != "base":
        raise ValueError(f"sentence embeddings pool a base model's output, got a {base.task} graph")
    return base.model_copy(
        update={"task": SENTENCE_TASK, "heads": [spec.head(hidden_size)], "expose": ("last_hidden_state",)}
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read it as JSON ({error})") from error


def _modes(path: Path) -> tuple[str, ...]:
    """The pooling modes of a ``Pooling`` module's ``config.json`` (current or legacy keys)."""
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    mode = config.get("pooling_mode")
    if mode is not None:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:  # as sentence-transformers: the flags set, in their fixed order; none set means mean
        modes = tuple(m for flag, m in _LEGACY_FLAGS.items() if config.get(flag)) or ("mean",)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise ValueError(f"{path}: pooling mode(s) {bad} not supported; tandem pools {', '.join(POOLING_MODES)}")
    return modes


def transformer_folder(directory: Path) -> Path:
    """The folder of a sentence-transformers directory's ``Transformer`` module (``0_Transformer/`` in the older
    layout), whatever its other modules are; ``directory`` itself without ``modules.json`` or such a module."""
    listing = directory / "modules.json"
    modules = _read_json(listing) if listing.is_file() else []
    for module in modules if isinstance(modules, list) else ():
        if isinstance(module, dict) and str(module.get("type", "")).endswith(".Transformer"):
            return directory / str(module.get("path", ""))
    return directory


def read_sentence_transformers(directory: str | Path) -> tuple[SentenceSpec, Path] | None:
    """The pooling a sentence-transformers directory declares and the folder of its ``Transformer`` module
    (the HF checkpoint), or None when ``directory`` has no ``modules.json``.

    Supported pipelines are ``Transformer -> Pooling [-> Normalize]``; any other module (``Dense``,
    ``LayerNorm``, ...) is an error naming it, since embeddings without it would be wrong.
    """
    directory = Path(directory)
    listing = directory / "modules.json"
    if not listing.is_file():
        return None
    modules = _read_json(listing)
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise ValueError(f"{listing}: expected a list of modules, each with a 'type'")
    kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
    unsupported = [
        f"{m['type']} (at {m.get('path', '')!r})"
        for m, kind in zip(modules, kinds, strict=True)
        if kind not in _SUPPORTED_MODULES
    ]
    if unsupported or kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise ValueError(
            f"{listing}: tandem runs sentence-transformers pipelines Transformer -> Pooling [-> Normalize]; "
            f"this one is {' -> '.join(kinds)}"
            + (f" (unsupported: {', '.join(unsupported)})" if unsupported else "")
            + "; pass task='base' to load the transformer alone"
        )
    transformer = directory / str(modules[0].get("path", ""))
    modes = _modes(directory / str(modules[1].get("path", "")) / "config.json")
    max_length = None
    settings = transformer / "sentence_bert_config.json"
    if settings.is_file():
        max_length = _read_json(settings).get("max_seq_length")
    try:
        spec = SentenceSpec(modes=modes, normalize=kinds[2:] == ["Normalize"], max_seq_length=max_length)
    except ValidationError as error:
        raise ValueError(f"{settings}: max_seq_length must be a positive int, got {max_length!r}") from error
    return spec, transformer


def write_sentence_transformers(directory: str | os.PathLike[str], head: SentencePooling) -> list[str]:
    """Make the checkpoint in ``directory`` a sentence-transformers directory pooled as ``head``:
    ``1_Pooling/config.json``, ``sentence_bert_config.json`` (when ``max_seq_length`` is set), an empty
    ``2_Normalize/`` when normalising, then ``modules.json``. Each file is written to a temporary name and
    moved into place, ``modules.json`` last, so a directory is never listed with a half-written module.
    Returns the files written."""
    directory = Path(directory)
    legacy = tuple(m for m in _LEGACY_FLAGS.values() if m in head.modes) == head.modes
    pooling: dict[str, Any] = {"word_embedding_dimension": head.hidden_size}
    if legacy:  # the flags every sentence-transformers version reads
        pooling.update({flag: mode in head.modes for flag, mode in _LEGACY_FLAGS.items()})
    else:  # an order the flags cannot say
        pooling["pooling_mode"] = list(head.modes)
    files = {"1_Pooling/config.json": pooling}
    if head.max_seq_length is not None:
        files["sentence_bert_config.json"] = {"max_seq_length": head.max_seq_length, "do_lower_case": False}
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if head.normalize:
        (directory / "2_Normalize").mkdir(exist_ok=True)
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    files["modules.json"] = modules
    for name, content in files.items():
        target = directory / name
        target.parent.mkdir(exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".tandem-", dir=target.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(content, out, indent=2)
                out.write("\n")
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return list(files)


def sentence_task(
    directory: Path | None, task: str | None, pooling: str | Sequence[str] | None, normalize: bool | None
) -> tuple[Path | None, str | None, SentenceSpec | None]:
    """What a load or build with these arguments makes: the checkpoint folder, the task and the pooling.

    A sentence-transformers ``directory`` loaded with no task (or ``task="sentence_embedding"``) is the
    ``sentence_embedding`` task, pooled as its modules say; ``pooling``/``normalize`` override them. They
    belong to that task only: given with another task they are an error.
    """
    found = read_sentence_transformers(directory) if directory is not None and task in (None, SENTENCE_TASK) else None
    if found is not None:
        directory, task = found[1], task or SENTENCE_TASK
    if task == SENTENCE_TASK:
        return directory, task, sentence_spec(pooling, normalize, found[0] if found else None)
    if directory is not None:  # another task of a sentence-transformers directory: its transformer
        directory = transformer_folder(directory)
    if pooling is not None or normalize is not None:
        raise ValueError(f"pooling and normalize apply to task={SENTENCE_TASK!r}, not to task={task!r}")
    return directory, task, None


__all__ = [
    "SENTENCE_TASK",
    "SentenceSpec",
    "read_sentence_transformers",
    "sentence_embedding_graph",
    "sentence_spec",
    "sentence_task",
    "transformer_folder",
    "write_sentence_transformers",
]
