"""tandem: one declarative spec per BERT-family model, compiled to PyTorch or Flax with equal numerics.

Example:
    >>> import tandem
    >>> config = tandem.BertConfig(num_hidden_layers=2)
    >>> torch_model = tandem.build(config, task="masked_lm", backend="torch", seed=0)
    >>> flax_model = tandem.build(config, task="masked_lm", backend="flax", seed=0)  # same weights
"""

from importlib import metadata as _metadata

# Absolute imports: this file is also the repository root's __init__.py, which pytest imports under the
# checkout folder's name; they resolve to the installed package whatever that folder is called.
from tandem.backends.api import build, from_pretrained, save_pretrained
from tandem.backends.cache import convert_cache
from tandem.backends.generate import generate
from tandem.core import (
    AlbertConfig,
    BertConfig,
    BigBirdConfig,
    CamembertConfig,
    CheckpointError,
    DebertaConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    FamilyConfig,
    ModelGraph,
    ModernBertConfig,
    RobertaConfig,
    RobertaPreLayerNormConfig,
    SqueezeBertConfig,
    XLMRobertaConfig,
    build_graph,
    config_from_hf,
    summary,
)
from tandem.core.outputs import ModelOutput
from tandem.text import Tokenizer, encode

try:  # the installed distribution's version (the import name is tandem, the distribution tandem-encoders)
    __version__ = _metadata.version("tandem-encoders")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AlbertConfig",
    "BertConfig",
    "BigBirdConfig",
    "CamembertConfig",
    "DebertaConfig",
    "DebertaV2Config",
    "CheckpointError",
    "DistilBertConfig",
    "ElectraConfig",
    "FamilyConfig",
    "ModelGraph",
    "ModelOutput",
    "ModernBertConfig",
    "RobertaConfig",
    "RobertaPreLayerNormConfig",
    "SqueezeBertConfig",
    "Tokenizer",
    "XLMRobertaConfig",
    "build",
    "build_graph",
    "config_from_hf",
    "convert_cache",
    "encode",
    "from_pretrained",
    "generate",
    "save_pretrained",
    "summary",
]
