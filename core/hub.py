"""Where a model's files are: a local directory, or an HF Hub id resolved through ``huggingface_hub``'s cache.

Framework-free; ``huggingface_hub`` is optional (the ``hub`` extra) and imported only when a Hub id is given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import ModuleType

# The files every loader reads besides the weights: configs (config.json, tokenizer_config.json,
# special_tokens_map.json, sentence-transformers' modules.json and sentence_bert_config.json), the
# vocabularies (vocab.txt, vocab.json + merges.txt, spiece.model) and the pooling module's folder.
META_PATTERNS = ("*.json", "*.txt", "*.model", "1_Pooling/*")

# Weights, in the order HF PyTorch prefers them: only the first kind the repository holds is fetched.
WEIGHT_PATTERNS = (
    ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"),
    ("flax_model.msgpack", "flax_model.msgpack.index.json", "flax_model-*-of-*.msgpack"),
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of an HF Hub repository id (``org/name`` or ``name``)."""
    return bool(_HUB_ID.match(name)) and ".." not in name and not name.endswith((".", "-"))


def hub_offline() -> bool:
    """HF's offline switch, read when called (``HF_HUB_OFFLINE`` or the older ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache() -> str | None:
    """The HF Hub cache folder HF uses, read when called: ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, then
    ``$HF_HOME/hub``; None leaves ``huggingface_hub``'s default (``~/.cache/huggingface/hub``)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.environ[name]
    return os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None


def resolve(
    path_or_id: str | os.PathLike[str], revision: str | None = None, weights: bool = True, argument: str = "path"
) -> Path:
    """The local directory holding a model's files.

    ``path_or_id`` is a directory (returned as is; ``revision`` must then be None) or an HF Hub id such as
    ``"sentence-transformers/all-MiniLM-L6-v2"``, resolved as HF transformers does: with ``huggingface_hub``
    (the ``hub`` extra) into its cache (``HF_HUB_CACHE``, ``HF_HOME``), at ``revision`` (a branch, tag or
    commit; default ``main``). When ``HF_HUB_OFFLINE=1`` nothing is downloaded: the cached snapshot is used,
    or the error says it is not cached. Online, only the files a loader reads are fetched: the JSON configs,
    the vocabularies, ``1_Pooling/`` and, when ``weights`` is true, one kind of weights (safetensors, else
    ``pytorch_model.bin``, else ``flax_model.msgpack``); without a connection the cache is used.

    Reused by every loader (``tandem.from_pretrained`` and the tokenizer's ``from_pretrained``): a loader that
    reads no weights passes ``weights=False``. ``argument`` names the caller's argument in error messages.

    Example:
        >>> directory = resolve("sentence-transformers/all-MiniLM-L6-v2", weights=False)
        >>> (directory / "tokenizer.json").is_file()
        True
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(
            f"{argument} must be a str or os.PathLike naming a directory, or an HF Hub id, "
            f"got {type(path_or_id).__name__}"
        )
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"revision must be a str (branch, tag or commit), got {type(revision).__name__}")
    local = Path(path_or_id)
    if local.exists() or not isinstance(path_or_id, str) or not is_hub_id(path_or_id):
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to an HF Hub id; {argument}={str(path_or_id)!r} is local")
        return local
    return _from_hub(path_or_id, revision, weights, argument)


def _from_hub(repo_id: str, revision: str | None, weights: bool, argument: str) -> Path:
    how = (
        f"download it yourself (`hf download {repo_id}` or `git clone https://huggingface.co/{repo_id}`) "
        "and pass the directory"
    )
    try:
        import huggingface_hub as hub
        from huggingface_hub import errors
    except ImportError:
        raise FileNotFoundError(
            f"{argument}={repo_id!r} is not a local directory. To load it from the Hugging Face Hub, "
            f"install huggingface_hub (pip install 'tandem-encoders[hub]'), or {how}"
        ) from None
    cache, offline = hub_cache(), hub_offline()
    try:
        if offline:
            return Path(hub.snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
        patterns = list(META_PATTERNS)
        if weights:
            patterns += _weight_patterns(hub, errors, repo_id, revision)
        return Path(hub.snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=patterns))
    except errors.LocalEntryNotFoundError:
        where = cache or "huggingface_hub's default cache"
        reason = "HF_HUB_OFFLINE is set and it" if offline else "the Hub could not be reached and it"
        raise FileNotFoundError(
            f"{argument}={repo_id!r}"
            + (f" at revision {revision!r}" if revision else "")
            + f" is not a local directory; {reason} is not in the HF cache ({where}). Unset HF_HUB_OFFLINE to "
            f"download it, point HF_HUB_CACHE at a cache that holds it, or {how}"
        ) from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"{argument}={repo_id!r} has no revision {revision!r} on the Hub") from None
    except errors.RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{argument}={repo_id!r} is neither a local directory nor a Hub repository you can access "
            "(check the name; a private or gated repository needs `hf auth login`)"
        ) from None


def _weight_patterns(hub: ModuleType, errors: ModuleType, repo_id: str, revision: str | None) -> list[str]:
    """The file patterns of the first weights kind the repository holds (one Hub listing); all kinds when the
    Hub cannot be listed (``snapshot_download`` then falls back to the cache)."""
    try:
        files = set(hub.list_repo_files(repo_id, revision=revision))
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
        raise
    except (OSError, ValueError):  # no connection: let snapshot_download find the cached snapshot
        return [p for kind in WEIGHT_PATTERNS for p in kind]
    for single, index, shards in WEIGHT_PATTERNS:
        if single in files or index in files:
            return [single, index, shards]
    return []
